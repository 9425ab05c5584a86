"""How the tile kernels launch over a plan's lists, decided from the lists alone (no torch): the
traits that choose the launch order (:func:`maskc.compiler.launch_orders`) and the launch grid
(``maskc.runtime.kernels.common.heads_fast``)."""

from __future__ import annotations

import numpy as np

UNBALANCED = 4.0  # a longest list at least this many times the mean
SHARED = 0.25  # lists covering at least this fraction of the other side's tiles on average


def list_traits(ptr: np.ndarray, other_tiles: int) -> tuple[bool, bool]:
    """``(unbalanced, shared)`` of the lists with CSR pointers ``ptr``, each over ``other_tiles``
    tiles: whether the longest list is at least ``UNBALANCED`` × the mean, and whether the mean list
    covers at least ``SHARED`` of the tiles (rows then share most key tiles). The kernels read them
    to choose their launch grid (``maskc.runtime.kernels.common.heads_fast``)."""
    lengths = np.diff(ptr.astype(np.int64))
    if lengths.size == 0 or lengths.sum() == 0:
        return False, False
    mean = lengths.mean()
    return bool(lengths.max() >= UNBALANCED * mean), bool(mean >= SHARED * other_tiles)
