"""Reading ``.npy`` arrays from outside: the header first.

numpy's own loader answers a file that is not an array with advice to allow pickles, and allocates
whatever shape a header declares. Here the magic string and the header are read and checked before
any data: a file that is not a ``.npy`` array, or holds Python objects, is one clear MaskError, and
the caller bounds the declared size before anything is allocated.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import IO

import numpy as np

from maskc.errors import MaskError

MAGIC = b"\x93NUMPY"
_CHUNK = 1 << 24
_HEADERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


def read_header(fp: IO[bytes], where: str) -> tuple[tuple[int, ...], bool, np.dtype]:
    """The shape, Fortran order and dtype of the ``.npy`` array at ``fp`` (left at its first data
    byte), or a MaskError naming ``where``; an array of Python objects is refused."""
    if fp.read(len(MAGIC)) != MAGIC:
        raise MaskError(f"{where}: not a readable .npy array: it does not start with NumPy's magic string")
    version = tuple(fp.read(2))
    if version not in _HEADERS:
        raise MaskError(f"{where}: unsupported .npy format version {'.'.join(map(str, version))}; 1.0 and 2.0 are read")
    try:
        shape, fortran, dtype = _HEADERS[version](fp)
    except ValueError as e:
        raise MaskError(f"{where}: malformed .npy header ({e})") from None
    if dtype.hasobject:
        raise MaskError(f"{where}: the .npy array holds Python objects (dtype {dtype}); only plain numbers are read, never pickles")
    return shape, fortran, dtype


def open_npy(path: str | os.PathLike) -> np.ndarray:
    """The ``.npy`` array at ``path``, memory-mapped (read-only) once its header checks out."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            read_header(f, str(path))
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except MaskError:
        raise
    except (ValueError, OSError, EOFError) as e:
        raise MaskError(f"{path}: not a readable .npy array ({e})") from None


def read_data(fp: IO[bytes], shape: tuple[int, ...], fortran: bool, dtype: np.dtype, where: str) -> np.ndarray:
    """The data after a checked header: exactly ``prod(shape)`` items, read only as far as the
    stream holds them (a short stream is an error, not an allocation of the declared size)."""
    size = int(np.prod(shape, dtype=object)) * dtype.itemsize
    data = bytearray()  # grows with what is read (and stays writable, as scipy wants its arrays)
    while len(data) < size:
        chunk = fp.read(min(_CHUNK, size - len(data)))
        if not chunk:
            raise MaskError(f"{where}: the .npy data ends after {len(data)} of its {size} bytes")
        data += chunk
    return np.frombuffer(data, dtype=dtype).reshape(shape, order="F" if fortran else "C")
