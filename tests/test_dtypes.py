"""The one map between torch dtypes and the plan format's dtype names."""

import pytest
import torch

from maskc.runtime.dtypes import DTYPE_NAMES, TORCH_DTYPES, dtype_name, torch_dtype
from maskc.runtime.format import DTYPES
from maskc.runtime.kernels import config


def test_dtype_names():
    assert tuple(TORCH_DTYPES) == DTYPES  # a torch dtype for each of the plan format's names, in its order
    assert [dtype_name(torch_dtype(name)) for name in DTYPES] == list(DTYPES)
    assert dtype_name(torch.float64) is None and DTYPE_NAMES[torch.float16] == "fp16"
    with pytest.raises(ValueError, match="unknown dtype name 'fp8'; the names are bf16, fp16, fp32"):
        torch_dtype("fp8")
    assert {key[3] for key in config.TABLE} <= set(TORCH_DTYPES)
