"""The condition helpers, defined once in the contract layer (loraplex.api.conditions) for every writer."""

from loraplex.api.conditions import ConditionUpdate, Status, condition, merge_conditions, timestamp

__all__ = ["ConditionUpdate", "Status", "condition", "merge_conditions", "timestamp"]
