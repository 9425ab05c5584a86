"""The policy the compiler and the runtime share, decided from a plan's data alone (no torch).

One place for each rule both halves must agree on: the tile sizes a plan may have, the dtype names
a workload is written in, which calls run a plan's backward through its dense pieces, and the
traits of a plan's lists from which the compiler records launch orders
(``maskc.build.launch_orders``) and the kernels choose their grid
(``maskc.runtime.kernels.launches.heads_fast``).
"""

from __future__ import annotations

import numpy as np

TILE_SIZES = (32, 64, 128)
"""The sides a tile may have (``block_m`` and ``block_n`` each): every plan, compiler and kernel."""

DTYPES = ("bf16", "fp16", "fp32")
"""The dtype names a workload or a profile is written in (the runtime maps them to torch dtypes)."""

UNBALANCED = 4.0  # a longest list at least this many times the mean
SHARED = 0.25  # lists covering at least this fraction of the other side's tiles on average


def list_traits(ptr: np.ndarray, other_tiles: int) -> tuple[bool, bool]:
    """``(unbalanced, shared)`` of the lists with CSR pointers ``ptr``, each over ``other_tiles``
    tiles: whether the longest list is at least ``UNBALANCED`` × the mean, and whether the mean list
    covers at least ``SHARED`` of the tiles (rows then share most key tiles)."""
    lengths = np.diff(ptr.astype(np.int64))
    if lengths.size == 0 or lengths.sum() == 0:
        return False, False
    mean = lengths.mean()
    return bool(lengths.max() >= UNBALANCED * mean), bool(mean >= SHARED * other_tiles)


def pieces_take(dtype: str, head_dim: int) -> bool:
    """Whether a GPU call runs its backward through a plan's dense pieces (cuDNN's attention
    backward): half precision (``dtype`` "bf16" or "fp16") and a head dim that is a multiple of 8
    up to 128; other calls run the tile backward. The runtime applies it per call, the cost model
    to the workload it predicts. Grouped key/value heads are taken too (run as their query heads)."""
    return dtype in ("bf16", "fp16") and head_dim % 8 == 0 and head_dim <= 128
