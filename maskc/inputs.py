"""What the compiler accepts as a mask, turned into a :class:`~maskc.sources.MaskSource`.

:func:`open_mask` takes a path (a dense ``.npy``, a ``scipy.sparse`` ``.npz``, a ``.json`` mask
spec), a spec dict, an array, a tensor, a sparse matrix or a MaskSource. It sits above the sources,
the library and the spec reader, so none of them needs to know about the others' inputs.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from maskc.errors import MaskError
from maskc.npy import open_npy
from maskc.sources import ArraySource, MaskSource
from maskc.sparse import SparseSource, load_npz
from maskc.spec import from_spec, load_spec


def open_mask(mask: Any) -> MaskSource:
    """Turn a path (``.npy``, ``.npz``, ``.json`` spec), a spec dict, an array, a tensor or a
    MaskSource into a MaskSource."""
    if isinstance(mask, MaskSource):
        return mask
    if hasattr(mask, "tocsr") and hasattr(mask, "nnz"):  # before dicts: a dok matrix is one
        return SparseSource(mask)
    if isinstance(mask, dict):
        return from_spec(mask)
    if isinstance(mask, (str, os.PathLike)):
        return _open_path(Path(mask))
    if hasattr(mask, "detach"):  # a torch tensor; the compiler never imports torch itself
        mask = mask.detach().cpu().numpy()
    array = np.asarray(mask)
    return ArraySource(array, name=f"array{list(array.shape)}")


def _open_path(path: Path) -> MaskSource:
    if not path.exists():
        raise MaskError(f"mask file not found: {path}")
    if path.is_dir():
        raise MaskError(f"mask path is a directory, not a file: {path}")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        return ArraySource(open_npy(path), name=str(path))
    if suffix == ".npz":
        return load_npz(path)
    if suffix == ".json":
        return load_spec(path)
    raise MaskError(f"{path}: unknown mask file type {suffix!r}; use .npy (dense), .npz (scipy.sparse) or .json (a mask spec)")
