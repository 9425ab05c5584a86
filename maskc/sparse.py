"""Sparse masks: a 2-D ``scipy.sparse`` matrix whose stored entries are the visible pairs.

scipy trusts a matrix's index arrays: an index out of range makes its compiled routines read and
write outside their buffers (a wrong plan, a segmentation fault, a corrupted heap). So the structure
of every matrix, from a file or from a caller, is checked here before scipy converts or slices it:
index pointers start at 0 and never decrease, every index lies inside the shape, at most
:data:`MAX_STORED` entries. A ``.npz`` file is read member by member, each header checked and its
size bounded by the declared shape before its data is read; pickles are never loaded.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from maskc.errors import MaskError
from maskc.npy import read_data, read_header
from maskc.runtime.format import MAX_DIM
from maskc.sources import MaskSource, as_shape4, check_binary

MAX_STORED = (1 << 31) - 1  # stored entries of one sparse mask: the most int32 indices address
FORMATS = ("csr", "csc", "coo", "bsr", "dia", "lil", "dok")


class SparseSource(MaskSource):
    """A 2-D ``scipy.sparse`` matrix whose stored non-zeros are the visible pairs, structure checked."""

    def __init__(self, matrix: Any, name: str = "sparse"):
        self.name = name
        if len(matrix.shape) != 2:
            raise MaskError(f"{name}: a sparse mask is 2-D ([Nq, Nk]), got shape {list(matrix.shape)}")
        self.shape = as_shape4(tuple(matrix.shape), name)
        csr = to_csr(matrix, name)
        check_binary(csr.data, name)
        csr.eliminate_zeros()
        self._csr = csr

    def rows(self, b: int, h: int, start: int, stop: int) -> np.ndarray:
        return self._csr[start:stop].toarray().astype(bool)


def to_csr(matrix: Any, where: str) -> Any:
    """``matrix`` as a ``csr_array``, once its index arrays are known to lie inside its shape."""
    import scipy.sparse as sp

    fmt = getattr(matrix, "format", None)
    if fmt not in FORMATS:
        raise MaskError(f"{where}: unsupported sparse format {fmt!r}; one of {', '.join(FORMATS)}")
    m, n = matrix.shape
    if fmt in ("csr", "csc"):
        major, minor = (m, n) if fmt == "csr" else (n, m)
        _check_compressed(matrix.indptr, matrix.indices, matrix.data, major, minor, where)
    elif fmt == "bsr":
        _check_blocks(matrix, where)
    elif fmt == "coo":
        _check_entries(matrix.data.size, where)
        for axis, size, coords in zip(("row", "col"), matrix.shape, matrix.coords):
            if coords.shape != matrix.data.shape:
                raise MaskError(f"{where}: {coords.size} {axis} indices for {matrix.data.size} values; one each")
            _check_indices(coords, 0, size, axis, where)
    elif fmt == "dia":
        _check_diagonals(matrix.offsets, matrix.data, m, n, where)
    return sp.csr_array(matrix)


def _check_entries(count: int, where: str) -> None:
    if count > MAX_STORED:
        raise MaskError(f"{where}: {count} stored entries; a sparse mask holds at most {MAX_STORED} (maskc.sparse.MAX_STORED)")


def _check_indices(indices: np.ndarray, low: int, high: int, name: str, where: str) -> None:
    """Every entry of ``indices`` is an integer in ``[low, high)``."""
    if indices.ndim != 1 or (indices.size and indices.dtype.kind not in "iu"):
        raise MaskError(f"{where}: {name} must be a 1-D integer array, got {indices.dtype} of shape {list(indices.shape)}")
    bad = np.flatnonzero((indices < low) | (indices >= high))
    if bad.size:
        i = int(bad[0])
        raise MaskError(f"{where}: {name}[{i}] = {indices[i]} lies outside [{low}, {high})")


def _check_compressed(indptr: np.ndarray, indices: np.ndarray, data: np.ndarray, major: int, minor: int, where: str) -> None:
    """A compressed (CSR/CSC or block) structure: ``indptr`` of ``major + 1`` entries from 0, never
    decreasing, ending within the ``indices`` (as many as the stored values), each in ``[0, minor)``."""
    _check_entries(data.size, where)
    if indptr.ndim != 1 or indptr.dtype.kind not in "iu" or indptr.size != major + 1:
        raise MaskError(f"{where}: indptr must be {major + 1} integers, got {indptr.dtype} of shape {list(indptr.shape)}")
    steps = np.diff(indptr.astype(np.int64))  # unsigned steps would wrap around
    if indptr[0] != 0 or (steps.size and steps.min() < 0):
        i = 0 if indptr[0] != 0 else int(np.flatnonzero(steps < 0)[0]) + 1
        raise MaskError(f"{where}: indptr[{i}] = {indptr[i]}; indptr must start at 0 and never decrease")
    if indices.shape[:1] != data.shape[:1] or indptr[-1] > indices.size:
        raise MaskError(f"{where}: indptr ends at {indptr[-1]} with {indices.size} indices for {data.shape[:1]} values; they must agree")
    _check_indices(indices, 0, minor, "indices", where)


def _check_blocks(matrix: Any, where: str) -> None:
    """A BSR matrix: blocks that tile its shape, and a compressed structure over the block grid."""
    m, n = matrix.shape
    r, c = matrix.blocksize
    if matrix.data.ndim != 3 or matrix.data.shape[1:] != (r, c) or m % r or n % c:
        raise MaskError(f"{where}: blocks of {list(matrix.data.shape[1:])} do not tile the shape {[m, n]}")
    _check_compressed(matrix.indptr, matrix.indices, matrix.data, m // r, n // c, where)


def _check_diagonals(offsets: np.ndarray, data: np.ndarray, m: int, n: int, where: str) -> None:
    """A DIA matrix: distinct diagonals that cross the matrix, one data row each."""
    _check_entries(data.size, where)
    if offsets.ndim != 1 or data.ndim != 2 or data.shape[0] != offsets.size:
        raise MaskError(f"{where}: {offsets.size} offsets for data of shape {list(data.shape)}; one data row per offset")
    _check_indices(offsets, 1 - m, n, "offsets", where)
    if np.unique(offsets).size != offsets.size:
        raise MaskError(f"{where}: offsets repeat a diagonal")


# --- .npz files ----------------------------------------------------------------------------------


def load_npz(path: str | os.PathLike) -> SparseSource:
    """The sparse mask a ``scipy.sparse.save_npz`` file holds, read within bounds and checked."""
    import scipy.sparse as sp

    where = str(path)
    try:
        archive = zipfile.ZipFile(Path(path))
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise MaskError(f"{where}: not a sparse matrix written by scipy.sparse.save_npz ({e})") from None
    with archive:
        members = _Members(archive, where)
        fmt = members.format()
        m, n = members.shape()
        names = _MEMBERS[fmt] if fmt != "coo" or "coords.npy" not in archive.namelist() else ("data", "coords")
        limit = 2 * min(m * n, MAX_STORED) + max(m, n) + 1  # the coordinates of every stored entry, or an index pointer
        arrays = {name: members.array(name, limit, "biuf" if name == "data" else "iu") for name in names}
    data = arrays["data"]
    if fmt == "coo":
        parts: tuple = (data, tuple(arrays["coords"]) if "coords" in arrays else (arrays["row"], arrays["col"]))
    elif fmt == "dia":
        parts = (data, arrays["offsets"])
    else:
        parts = (data, arrays["indices"], arrays["indptr"])
    try:
        matrix = getattr(sp, f"{fmt}_array")(parts, shape=(m, n))
    except ValueError as e:
        raise MaskError(f"{where}: not a valid {fmt} matrix ({e})") from None
    return SparseSource(matrix, name=where)


_KIND_NAMES = {"biuf": "boolean, integer or float", "iu": "an integer type", "SU": "a string"}
_MEMBERS = {
    "csr": ("data", "indices", "indptr"),
    "csc": ("data", "indices", "indptr"),
    "bsr": ("data", "indices", "indptr"),
    "coo": ("data", "row", "col"),
    "dia": ("data", "offsets"),
}


class _Members:
    """The arrays of a ``.npz`` archive, each read after its header is checked and its size bounded."""

    def __init__(self, archive: zipfile.ZipFile, where: str):
        self.archive, self.where = archive, where

    def array(self, name: str, max_items: int, kinds: str) -> np.ndarray:
        """Member ``name``: at most ``max_items`` items of a dtype of one of ``kinds`` (numpy's letters)."""
        where = f"{self.where}[{name}]"
        try:
            with self.archive.open(f"{name}.npy") as fp:
                shape, fortran, dtype = read_header(fp, where)
                items = int(np.prod(shape, dtype=object))
                if items > max_items:
                    raise MaskError(f"{where}: {items} items, more than its matrix can hold ({max_items})")
                if dtype.kind not in kinds:
                    raise MaskError(f"{where}: dtype {dtype} is not {_KIND_NAMES[kinds]}")
                return read_data(fp, shape, fortran, dtype, where)
        except KeyError:
            raise MaskError(f"{self.where}: no {name!r} array; not a sparse matrix written by scipy.sparse.save_npz") from None
        except (zipfile.BadZipFile, OSError, EOFError) as e:
            raise MaskError(f"{where}: unreadable ({e})") from None

    def format(self) -> str:
        value = self.array("format", 1, "SU")
        text = value.item() if value.dtype.kind in "SU" and value.size == 1 else None
        text = text.decode("ascii", "replace") if isinstance(text, bytes) else text
        if text not in _MEMBERS:
            raise MaskError(f"{self.where}: sparse format {text!r} is not one save_npz writes ({', '.join(_MEMBERS)})")
        return text

    def shape(self) -> tuple[int, int]:
        shape = self.array("shape", 64, "iu")
        if shape.shape != (2,) or not all(1 <= d <= MAX_DIM for d in shape.tolist()):
            raise MaskError(f"{self.where}: the shape must be 2 integers in [1, {MAX_DIM}], got {shape.tolist()}")
        return int(shape[0]), int(shape[1])
