"""maskc: an ahead-of-time compiler for attention masks.

This module stays lazy: ``import maskc.runtime`` in a training job must not pay for scipy or the
compiler, so the compiler's names are imported on first use.
"""

__version__ = "0.1.0"

_LAZY = {
    "compile": ("maskc.compiler", "compile"),
    "compile_family": ("maskc.family", "compile_family"),
    "FamilyPlan": ("maskc.runtime.format", "FamilyPlan"),
    "compile_cached": ("maskc.cache", "compile_cached"),
    "PlanCache": ("maskc.cache", "PlanCache"),
    "open_mask": ("maskc.inputs", "open_mask"),
    "MaskSource": ("maskc.sources", "MaskSource"),
    "MaskError": ("maskc.errors", "MaskError"),
    "PlanError": ("maskc.runtime.format", "PlanError"),
    "Plan": ("maskc.runtime.format", "Plan"),
    "library": ("maskc.library", None),
    "varlen_attention": ("maskc.integrations.varlen", "varlen_attention"),
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name):
    if name not in _LAZY:
        raise AttributeError(f"module 'maskc' has no attribute {name!r}")
    import importlib

    module_name, attr = _LAZY[name]
    module = importlib.import_module(module_name)
    value = module if attr is None else getattr(module, attr)
    globals()[name] = value
    return value
