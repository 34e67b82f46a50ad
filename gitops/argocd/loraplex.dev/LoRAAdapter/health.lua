-- Argo CD health of a loraplex.dev LoRAAdapter, from its status as the operator writes it:
-- observedGeneration, and the conditions Ready, Reconciling and Stalled (docs/operator.md).
local hs = {}
local generation = obj.metadata.generation
if obj.status == nil or obj.status.conditions == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to report status"
  return hs
end
if generation ~= nil and obj.status.observedGeneration ~= generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. generation
  return hs
end
local found = {}
for _, condition in ipairs(obj.status.conditions) do
  found[condition.type] = condition
end
local function says(condition)
  local text = condition.reason or ""
  if condition.message ~= nil and condition.message ~= "" then
    text = text .. ": " .. condition.message
  end
  return text
end
local ready, reconciling, stalled = found["Ready"], found["Reconciling"], found["Stalled"]
if stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = says(stalled)
elseif ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = says(ready)
elseif reconciling ~= nil and reconciling.status == "True" then
  hs.status = "Progressing"
  hs.message = says(ready ~= nil and ready or reconciling) -- Ready carries the message for humans
elseif ready ~= nil and ready.status == "False" then
  hs.status = "Degraded"
  hs.message = says(ready)
else
  hs.status = "Progressing"
  hs.message = ready ~= nil and says(ready) or "Waiting for the Ready condition"
end
return hs
