"""Several LoRA adapters on one frozen base model, trained in one batched forward pass.

Each targeted `nn.Linear` of the base is wrapped in a `MultiLoraLinear`. A
combined batch holds each adapter's rows one group after another; a shared
`Routing` says which adapter owns which rows. The base's own product runs once
over the whole batch. The LoRA part runs in one of two ways:

- `stacked` (the default on GPUs): the adapters' A and B matrices are stacked
  along the rank axis, so the whole batch costs two extra products however
  many adapters share it:

      h   = dropout_per_row(x) @ concat(A_1..A_n)^T     (rows x sum of ranks)
      h  *= mask               (a row keeps only its own adapter's columns, times its alpha / rank)
      out = base(x) + h @ concat(B_1..B_n)^T

- `segments` (the default on CPUs): two small products per adapter over its
  own rows; n times fewer LoRA flops, 2n operations instead of 2.

Both are peft's `base(x) + B(A(dropout(x))) * alpha / r` for every row, with
different ranks, alphas, dropouts and target modules per adapter. Gradients
reach only the adapter that owns a row, so each adapter's parameters and
AdamW state are its own and adapters can join or leave between steps.

Randomness is per adapter (its initial weights from its seed, its dropout
masks from its own generator), so an adapter's run does not depend on which
other adapters share the base, up to float rounding (padding widths and
product shapes change with the company).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from loraplex.api.trainingjob import LoraHyperparameters
from loraplex.worker.trainer.data import IGNORE, Example
from loraplex.worker.trainer.failures import Reason, TrainingFailure

Kernel = Literal["stacked", "segments"]

_KEEP_RESOLUTION = 1 << 16


def dropout_keep(shape: torch.Size, p: float, generator: torch.Generator, device: torch.device) -> Tensor:
    """A boolean inverted-dropout mask: each element kept with probability 1 - p (to 1/65,536).

    Drawn as 16-bit slices of 64-bit random words: one generator call per four elements,
    several times faster on CPU than `bernoulli_`, which makes a call per element.
    """
    count = math.prod(shape)
    words = torch.empty((count + 3) // 4, dtype=torch.int64, device=device)
    words.random_(-(1 << 63), (1 << 63) - 1, generator=generator)
    threshold = round(p * _KEEP_RESOLUTION) - _KEEP_RESOLUTION // 2
    return words.view(torch.int16)[:count].view(shape) >= threshold


def _matches(path: str, target: str) -> bool:
    """peft's rule for a target module name: the whole path, or its last dotted parts."""
    return path == target or path.endswith("." + target)


@dataclass(eq=False)
class AdapterWeights:
    """One adapter's LoRA matrices (float32, trainable) and its dropout generator."""

    name: str
    lora: LoraHyperparameters
    lora_a: dict[str, nn.Parameter]  # module path -> (rank, in_features)
    lora_b: dict[str, nn.Parameter]  # module path -> (out_features, rank)
    generator: torch.Generator
    uid: int = field(default=0)

    @property
    def rank(self) -> int:
        return self.lora.rank

    @property
    def scaling(self) -> float:
        return self.lora.alpha / self.lora.rank

    def parameters(self) -> list[nn.Parameter]:
        return [p for path in sorted(self.lora_a) for p in (self.lora_a[path], self.lora_b[path])]

    def state_dict(self) -> dict[str, Tensor]:
        """Weights keyed `<module path>.lora_A.weight` / `.lora_B.weight` (peft's names, less the prefix)."""
        out: dict[str, Tensor] = {}
        for path in sorted(self.lora_a):
            out[f"{path}.lora_A.weight"] = self.lora_a[path].detach()
            out[f"{path}.lora_B.weight"] = self.lora_b[path].detach()
        return out

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, Tensor], mismatch: Reason = "CheckpointMismatch") -> None:
        """Copy `state` in; `mismatch` is the failure when its tensors are not this adapter's
        (other modules, or another rank)."""
        expected = self.state_dict()
        shapes = {key: tuple(value.shape) for key, value in state.items()}
        if shapes != {key: tuple(value.shape) for key, value in expected.items()}:
            raise TrainingFailure(
                mismatch,
                f"adapter {self.name}: the saved tensors differ from the adapter's modules or rank "
                f"(rank {self.rank}, {len(self.lora_a)} modules)",
            )
        for path in self.lora_a:
            self.lora_a[path].copy_(state[f"{path}.lora_A.weight"])
            self.lora_b[path].copy_(state[f"{path}.lora_B.weight"])


class Routing:
    """Which adapter owns which rows of the batch now going through the model."""

    def __init__(self) -> None:
        self.adapters: list[AdapterWeights] = []
        self.rows: list[int] = []
        self.training = False
        self.kernel: Kernel = "stacked"
        self._masks: dict[tuple[int | str, ...], Tensor] = {}

    def set(self, adapters: Sequence[AdapterWeights], rows: Sequence[int], training: bool) -> None:
        self.adapters, self.rows, self.training = list(adapters), list(rows), training
        self._masks = {}

    def mask(self, present: tuple[int, ...], like: Tensor) -> Tensor:
        """(rows, 1, sum of ranks): each row's own adapter's columns hold its scaling, the rest 0.

        `present` lists, in column order, the indexes into `adapters` of those that
        have LoRA matrices in the layer asking.
        """
        key: tuple[int | str, ...] = (*present, str(like.dtype))
        cached = self._masks.get(key)
        if cached is None:
            ranks = [self.adapters[i].rank for i in present]
            mask = torch.zeros(sum(self.rows), sum(ranks))
            starts = [0, *torch.tensor(self.rows).cumsum(0).tolist()]
            column = 0
            for index, rank in zip(present, ranks, strict=True):
                rows = slice(starts[index], starts[index + 1])
                mask[rows, column : column + rank] = self.adapters[index].scaling
                column += rank
            cached = self._masks[key] = mask.unsqueeze(1).to(like.device, like.dtype)
        return cached


class MultiLoraLinear(nn.Module):
    """A frozen `nn.Linear` plus the LoRA deltas of whichever adapters the routing names."""

    def __init__(self, base: nn.Linear, path: str, routing: Routing) -> None:
        super().__init__()
        self.base = base
        self.path = path
        self.routing = routing

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.base(x)
        routing = self.routing
        present = tuple(i for i, w in enumerate(routing.adapters) if self.path in w.lora_a)
        if not present:
            return out
        # LoRA weights are float32. Under a float32 base the LoRA products run in float32, as
        # peft runs them; under a 16-bit base they run in its dtype, as under autocast, which
        # halves the activations kept for the backward pass.
        lora_x = x if x.dtype in (torch.bfloat16, torch.float16) else x.to(torch.float32)
        if routing.kernel == "segments":
            delta = self._segments(lora_x)
        else:
            if routing.training and any(w.lora.dropout > 0 for w in routing.adapters):
                lora_x = lora_x * self._dropout_mask(lora_x)
            delta = self._stacked(lora_x, present)
        return out + delta.to(out.dtype)

    def _stacked(self, x: Tensor, present: tuple[int, ...]) -> Tensor:
        """Two products for the whole batch over the adapters' A and B stacked along the rank."""
        adapters = [self.routing.adapters[i] for i in present]
        a: Tensor
        b: Tensor
        if len(adapters) == 1:
            a, b = adapters[0].lora_a[self.path], adapters[0].lora_b[self.path]
        else:
            a = torch.cat([w.lora_a[self.path] for w in adapters])
            b = torch.cat([w.lora_b[self.path] for w in adapters], dim=1)
        hidden = F.linear(x, a.to(x.dtype)) * self.routing.mask(present, x)
        return F.linear(hidden, b.to(x.dtype))

    def _segments(self, x: Tensor) -> Tensor:
        """Two products per adapter over its own rows: fewer flops, more (smaller) operations.

        Each adapter's dropout mask covers only its rows, and its scaling (with the dropout's
        1 / (1 - p)) is folded into the small B matrix, so no full-batch mask or scaled copy of
        the output is ever made. The rows are cut with one `split`, whose backward joins the
        adapters' input gradients in one `cat`; a slice per adapter would give each its own
        full-batch gradient to be summed, quadratic in the adapters.
        """
        parts = []
        for weights, part in zip(self.routing.adapters, torch.split(x, self.routing.rows), strict=True):
            if self.path in weights.lora_a:
                p = weights.lora.dropout
                scaling = weights.scaling
                if self.routing.training and p > 0:
                    part = part * dropout_keep(part.shape, p, weights.generator, part.device)
                    scaling /= 1 - p
                hidden = F.linear(part, weights.lora_a[self.path].to(x.dtype))
                parts.append(F.linear(hidden, (weights.lora_b[self.path] * scaling).to(x.dtype)))
            else:
                parts.append(part.new_zeros((*part.shape[:-1], self.base.out_features)))
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def _dropout_mask(self, x: Tensor) -> Tensor:
        """Per-row inverted-dropout masks, each adapter's rows drawn from its own generator."""
        parts = []
        for weights, rows in zip(self.routing.adapters, self.routing.rows, strict=True):
            shape = (rows, *x.shape[1:])
            p = weights.lora.dropout
            if p > 0 and self.path in weights.lora_a:
                keep = dropout_keep(torch.Size(shape), p, weights.generator, x.device)
                parts.append(keep.to(x.dtype) / (1 - p))
            else:
                parts.append(torch.ones(shape, device=x.device, dtype=x.dtype))
        return torch.cat(parts)


@dataclass(frozen=True)
class BatchLosses:
    """Per adapter (in batch order): mean loss over its trained tokens, and how many tokens."""

    losses: list[Tensor]
    trained_tokens: list[int]
    input_tokens: list[int]


class MultiLoraModel:
    """A frozen causal LM with any number of LoRA adapters trained side by side."""

    def __init__(self, model: Any, device: torch.device, kernel: Kernel | None = None) -> None:
        self.model = model
        self.device = device
        self.routing = Routing()
        # Stacked: fewest operations (GPUs, where launches cost most). Segments: fewest flops (CPUs).
        self.routing.kernel = kernel or ("stacked" if device.type == "cuda" else "segments")
        self.layers: dict[str, MultiLoraLinear] = {}
        self._next_uid = 0
        model.requires_grad_(False)
        model.eval()  # the base's own dropout stays off; LoRA dropout follows routing.training
        self._linears = {
            path: module for path, module in model.named_modules() if isinstance(module, nn.Linear)
        }
        self.pad_token_id = int(getattr(model.config, "pad_token_id", None) or 0)

    def _wrap(self, path: str) -> MultiLoraLinear:
        layer = self.layers.get(path)
        if layer is None:
            parent_path, _, child = path.rpartition(".")
            parent = self.model.get_submodule(parent_path) if parent_path else self.model
            layer = MultiLoraLinear(self._linears[path], path, self.routing)
            setattr(parent, child, layer)
            self.layers[path] = layer
        return layer

    def target_paths(self, lora: LoraHyperparameters) -> list[str]:
        paths = sorted(p for p in self._linears if any(_matches(p, t) for t in lora.target_modules))
        unmatched = [t for t in lora.target_modules if not any(_matches(p, t) for p in self._linears)]
        if unmatched:
            raise TrainingFailure(
                "ConfigInvalid",
                f"lora.targetModules {unmatched} match no linear layer of the base model",
            )
        return paths

    def new_adapter(self, name: str, lora: LoraHyperparameters, seed: int) -> AdapterWeights:
        """Fresh weights as peft makes them: A ~ kaiming-uniform(a=sqrt 5), B = 0; drawn from `seed`."""
        init = torch.Generator().manual_seed(seed)
        lora_a: dict[str, nn.Parameter] = {}
        lora_b: dict[str, nn.Parameter] = {}
        for path in self.target_paths(lora):
            base = self._linears[path]
            bound = 1 / math.sqrt(base.in_features)
            a = torch.empty(lora.rank, base.in_features).uniform_(-bound, bound, generator=init)
            lora_a[path] = nn.Parameter(a.to(self.device))
            lora_b[path] = nn.Parameter(torch.zeros(base.out_features, lora.rank, device=self.device))
            self._wrap(path)
        generator = torch.Generator(device=self.device).manual_seed(seed + 1)
        self._next_uid += 1
        return AdapterWeights(name, lora, lora_a, lora_b, generator, uid=self._next_uid)

    def collate(self, groups: Sequence[Sequence[Example]]) -> tuple[Tensor, Tensor | None, Tensor]:
        """Right-padded input ids, attention mask and labels for all groups, in order.

        The mask is None when no row is padded, so attention takes its plain causal path.
        """
        rows = [example for group in groups for example in group]
        width = max(len(example.input_ids) for example in rows)
        ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        attention = torch.zeros((len(rows), width), dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
        for row, example in enumerate(rows):
            n = len(example.input_ids)
            ids[row, :n] = torch.tensor(example.input_ids)
            attention[row, :n] = 1
            labels[row, :n] = torch.tensor(example.labels)
        padded = any(len(example.input_ids) < width for example in rows)
        mask = attention.to(self.device) if padded else None
        return ids.to(self.device), mask, labels.to(self.device)

    def logits(
        self, adapters: Sequence[AdapterWeights | None], groups: Sequence[Sequence[Example]], training: bool
    ) -> tuple[Tensor, Tensor]:
        """Logits of the combined batch (and its labels); `None` runs a group on the bare base."""
        ids, attention, labels = self.collate(groups)
        present = [(w, len(g)) for w, g in zip(adapters, groups, strict=True)]
        # A bare-base group is routed to no adapter: give it a stand-in that has no layers.
        routed = [w if w is not None else _NO_ADAPTER for w, _ in present]
        self.routing.set(routed, [n for _, n in present], training)
        try:
            out = self.model(input_ids=ids, attention_mask=attention, use_cache=False)
        finally:
            self.routing.set([], [], False)
        return out.logits, labels

    def losses(
        self, adapters: Sequence[AdapterWeights], groups: Sequence[Sequence[Example]], training: bool = True
    ) -> BatchLosses:
        """Each adapter's mean next-token loss over its own rows' trained tokens."""
        logits, labels = self.logits(adapters, groups, training)
        # Position t predicts token t + 1: shift the labels left (the last position predicts
        # nothing) rather than slice the logits, which would copy the largest tensor of the step.
        shifted = F.pad(labels[:, 1:], (0, 1), value=IGNORE)
        per_token = F.cross_entropy(
            logits.flatten(0, 1).float(), shifted.flatten(), ignore_index=IGNORE, reduction="none"
        ).view(shifted.shape)
        per_row = per_token.sum(dim=1)
        counts = (shifted != IGNORE).sum(dim=1)
        losses, trained, inputs = [], [], []
        start = 0
        for group in groups:
            end = start + len(group)
            count = int(counts[start:end].sum())
            losses.append(per_row[start:end].sum() / max(count, 1))
            trained.append(count)
            inputs.append(sum(len(example.input_ids) for example in group))
            start = end
        return BatchLosses(losses, trained, inputs)


_NO_ADAPTER = AdapterWeights(
    name="", lora=LoraHyperparameters(), lora_a={}, lora_b={}, generator=torch.Generator(), uid=-1
)
