"""Mask sources: anything the compiler can read one block of query rows at a time.

The compiler never asks for the whole mask. A dense ``.npy`` is memory-mapped and checked block by
block, a sparse ``.npz`` is sliced by rows without densifying, and the built-in library computes its
rows from a formula, so a mask larger than memory still compiles. Structured sources also give
their column intervals directly (:meth:`MaskSource.intervals`), in O(kv_len), so a long-context
mask compiles without ever producing its rows. A JSON spec (``.json`` path or a dict) names a
library mask by its parameters (:mod:`maskc.spec`).
"""

from __future__ import annotations

import mmap
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from maskc.errors import MaskError
from maskc.runtime.format import Plan, bitmap_bits, mask_rows
from maskc.runtime.format import visible_rows

Shape4 = tuple[int, int, int, int]


class MaskSource:
    """A boolean attention mask of shape ``[batch, heads, q_len, kv_len]`` (``True`` = may attend).

    ``batch`` and ``heads`` are 1 where the mask is shared across that dimension. Subclasses
    implement :meth:`rows`; everything else is derived from it.
    """

    shape: Shape4
    name: str = "mask"

    def rows(self, b: int, h: int, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` of slice ``(b, h)`` as a bool array ``[stop - start, kv_len]``."""
        raise NotImplementedError

    def intervals(self) -> np.ndarray | None:
        """The mask in interval form, straight from its structure, or None when it has no such form.

        An int array ``[batch * heads, 4, kv_len]``: for slice ``s`` and key column ``j``, the masked
        query rows are ``[LTS, LTE) ∪ [UTS, UTE)`` with LTS, LTE, UTS, UTE = ``[s, 0..3, j]`` and
        ``0 <= start <= end <= q_len`` (any such pair; the compiler makes them canonical). Sources
        implement it only where it costs O(kv_len) per slice and is exact; None (the default) makes
        the compiler read the rows and detect the form itself.
        """
        return None

    @property
    def batch(self) -> int:
        return self.shape[0]

    @property
    def heads(self) -> int:
        return self.shape[1]

    @property
    def q_len(self) -> int:
        return self.shape[2]

    @property
    def kv_len(self) -> int:
        return self.shape[3]

    def to_dense(self, block_rows: int = 1024) -> np.ndarray:
        """The whole mask as one bool array ``[batch, heads, q_len, kv_len]``."""
        out = np.empty(self.shape, dtype=bool)
        self.write_into(out, block_rows)
        return out

    def write_into(self, out: np.ndarray, block_rows: int = 1024) -> None:
        """Fill ``out`` (an array or memmap of this shape) block of rows by block of rows."""
        for b in range(self.batch):
            for h in range(self.heads):
                for start in range(0, self.q_len, block_rows):
                    stop = min(start + block_rows, self.q_len)
                    out[b, h, start:stop] = self.rows(b, h, start, stop)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name}, shape={list(self.shape)})"


def as_shape4(shape: tuple[int, ...], where: str) -> Shape4:
    """Normalise a mask shape ``[Nq, Nk]``, ``[H, Nq, Nk]`` or ``[B, H, Nq, Nk]`` to four dimensions."""
    if len(shape) not in (2, 3, 4):
        raise MaskError(f"{where}: a mask must have 2, 3 or 4 dimensions ([Nq, Nk], [H, Nq, Nk] or [B, H, Nq, Nk]), got shape {list(shape)}")
    if any(d <= 0 for d in shape):
        raise MaskError(f"{where}: every mask dimension must be positive, got shape {list(shape)}")
    return tuple([1] * (4 - len(shape)) + [int(d) for d in shape])  # type: ignore[return-value]


def check_binary(block: np.ndarray, where: str) -> np.ndarray:
    """Turn a block of mask values into bools, refusing anything but 0 and 1 (and NaN)."""
    if block.dtype == bool:
        return block
    if block.dtype.kind not in "biuf":
        raise MaskError(f"{where}: mask dtype {block.dtype} is not boolean, integer or float")
    if block.dtype.kind == "f" and np.isnan(block).any():
        raise MaskError(f"{where}: mask holds NaN; a mask may hold only 0 and 1 (or True/False)")
    ok = (block == 0) | (block == 1)
    if not ok.all():
        bad = block[~ok].flat[0].item()
        raise MaskError(f"{where}: mask holds the value {bad!r}; a mask may hold only 0 and 1 (or True/False)")
    return block.astype(bool)


class ArraySource(MaskSource):
    """A dense array in memory or memory-mapped from a ``.npy`` file, checked block by block."""

    def __init__(self, array: np.ndarray, name: str = "array"):
        self.name = name
        self.shape = as_shape4(array.shape, name)
        if array.dtype != bool and array.dtype.kind not in "biuf":
            raise MaskError(f"{name}: mask dtype {array.dtype} is not boolean, integer or float")
        self._array = array.reshape(self.shape)

    def rows(self, b: int, h: int, start: int, stop: int) -> np.ndarray:
        block = check_binary(np.array(self._array[b, h, start:stop]), self.name)
        _release_pages(self._array)
        return block


def _release_pages(array: np.ndarray) -> None:
    """Let the kernel drop the file pages of a memory-mapped mask already read, so memory stays bounded."""
    mapping = getattr(array, "_mmap", None)
    if mapping is not None and hasattr(mmap, "MADV_DONTNEED"):
        mapping.madvise(mmap.MADV_DONTNEED)


class IntervalSource(MaskSource):
    """A mask given by its interval vectors ``[batch * heads, 4, kv_len]``; rows are rebuilt from them."""

    def __init__(self, intervals: np.ndarray, shape: Shape4, name: str):
        self.name, self.shape = name, shape
        self._intervals = np.ascontiguousarray(intervals, dtype=np.int64)

    def rows(self, b: int, h: int, start: int, stop: int) -> np.ndarray:
        if not (0 <= b < self.batch and 0 <= h < self.heads and 0 <= start <= stop <= self.q_len):
            raise MaskError(f"{self.name}: rows({b}, {h}, {start}, {stop}) is outside the mask of shape {list(self.shape)}")
        return visible_rows(self._intervals[b * self.heads + h], start, stop)

    def intervals(self) -> np.ndarray:
        return self._intervals


class PlanSource(MaskSource):
    """The mask a compiled plan stands for (in the original token order), read back one block of
    rows at a time (no dense copy)."""

    def __init__(self, plan: Plan, name: str = "plan"):
        self.plan, self.name = plan, name
        self.shape = (plan.batch, plan.heads, plan.q_len, plan.kv_len)
        self._bits = bitmap_bits(plan)

    def rows(self, b: int, h: int, start: int, stop: int) -> np.ndarray:
        if not (0 <= b < self.batch and 0 <= h < self.heads and 0 <= start <= stop <= self.q_len):
            raise MaskError(f"{self.name}: rows({b}, {h}, {start}, {stop}) is outside the mask of shape {list(self.shape)}")
        return mask_rows(self.plan, b * self.heads + h, start, stop, self._bits)


class SparseSource(MaskSource):
    """A 2-D ``scipy.sparse`` matrix whose stored non-zeros are the visible pairs."""

    def __init__(self, matrix: Any, name: str = "sparse"):
        import scipy.sparse as sp

        self.name = name
        csr = sp.csr_array(matrix)
        self.shape = as_shape4(csr.shape, name)
        check_binary(csr.data, name)
        csr.eliminate_zeros()
        self._csr = csr

    def rows(self, b: int, h: int, start: int, stop: int) -> np.ndarray:
        return self._csr[start:stop].toarray().astype(bool)


def open_mask(mask: Any) -> MaskSource:
    """Turn a path (``.npy``, ``.npz``, ``.json`` spec), a spec dict, an array, a tensor or a
    MaskSource into a MaskSource."""
    if isinstance(mask, MaskSource):
        return mask
    if isinstance(mask, dict):
        from maskc.spec import from_spec

        return from_spec(mask)
    if isinstance(mask, (str, os.PathLike)):
        return _open_path(Path(mask))
    if hasattr(mask, "tocsr") and hasattr(mask, "nnz"):
        return SparseSource(mask)
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
        try:
            array = np.load(path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:
            raise MaskError(f"{path}: not a readable .npy array ({e})") from None
        return ArraySource(array, name=str(path))
    if suffix == ".npz":
        return _open_npz(path)
    if suffix == ".json":
        from maskc.spec import load_spec

        return load_spec(path)
    raise MaskError(f"{path}: unknown mask file type {suffix!r}; use .npy (dense), .npz (scipy.sparse) or .json (a mask spec)")


def _open_npz(path: Path) -> MaskSource:
    import scipy.sparse as sp

    try:
        matrix = sp.load_npz(path)
    except (ValueError, OSError, KeyError, zipfile.BadZipFile, EOFError) as e:
        raise MaskError(f"{path}: not a sparse matrix written by scipy.sparse.save_npz ({e})") from None
    return SparseSource(matrix, name=str(path))
