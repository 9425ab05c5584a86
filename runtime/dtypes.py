"""The torch dtypes the runtime computes in, and their names.

Plans, profiles, the cost model and the command line name a dtype by one of
``maskc.runtime.format.DTYPES`` (``"bf16"``, ``"fp16"``, ``"fp32"``); this is the one map between
those names and torch's dtypes (the format package stays torch-free, so the map lives here).
"""

from __future__ import annotations

import torch

TORCH_DTYPES: dict[str, torch.dtype] = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}  # by format.DTYPES
DTYPE_NAMES: dict[torch.dtype, str] = {dtype: name for name, dtype in TORCH_DTYPES.items()}


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype of a dtype name; a ValueError naming the known names for any other."""
    try:
        return TORCH_DTYPES[name]
    except KeyError:
        raise ValueError(f"unknown dtype name {name!r}; the names are {', '.join(TORCH_DTYPES)}") from None


def dtype_name(dtype: torch.dtype) -> str | None:
    """The name of a torch dtype, or None for one the kernels do not take (float64, integers)."""
    return DTYPE_NAMES.get(dtype)
