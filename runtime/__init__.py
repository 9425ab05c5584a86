"""maskc.runtime: load a compiled plan once, then run attention through it.

The plan format needs only numpy and msgpack; the torch-backed names (``load_plan``, ``attention``,
``LoadedPlan``, and ``LoadedFamily``/``BoundPlan`` for family plans) are imported on first use, so
the compiler and CLI never pay for torch.
"""

from maskc.runtime.format import Plan, PlanError

_LAZY = {
    "load_plan": "maskc.runtime.loaded",
    "LoadedPlan": "maskc.runtime.loaded",
    "attention": "maskc.runtime.loaded",
    "LoadedFamily": "maskc.runtime.bound",
    "BoundPlan": "maskc.runtime.bound",
}

__all__ = ["Plan", "PlanError", *_LAZY]


def __getattr__(name):
    if name not in _LAZY:
        raise AttributeError(f"module 'maskc.runtime' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value
