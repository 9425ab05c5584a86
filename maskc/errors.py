"""The typed errors of the compiler side; PlanError lives with the plan format it guards."""

from maskc.runtime.format import PlanError


class MaskError(ValueError):
    """A mask source is missing, malformed, of the wrong shape, or holds values other than 0 and 1."""


__all__ = ["MaskError", "PlanError"]
