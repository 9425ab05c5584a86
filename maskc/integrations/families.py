"""The documents family plans the integrations bind: one per (causal, window, length bound), made once.

A packed batch's mask is the documents family's (``maskc.family``): each token sees its own
document, causally or not, optionally cut to a sliding window. The integrations compile that family
once per process for each ``(causal, window)`` and length bound — the cost model chooses its tile
size then — and bind it to every call's ``position_ids`` or ``cu_seqlens`` on the device. Length
bounds are powers of two (at least :data:`MIN_LEN`), so a training run compiles a handful at most.
"""

from __future__ import annotations

import functools

from maskc.runtime import load_plan
from maskc.runtime.bound import LoadedFamily

MIN_LEN = 128


def documents(causal: bool, window: int | None, length: int) -> LoadedFamily:
    """The loaded documents family (``causal``, sliding ``window`` or None) that binds ``length`` tokens."""
    if window is not None and window < 1:
        raise ValueError(f"window must be at least 1 token (or None), got {window}")
    return _documents(bool(causal), window, max(MIN_LEN, 1 << max(0, length - 1).bit_length()))


@functools.lru_cache(maxsize=None)
def _documents(causal: bool, window: int | None, max_len: int) -> LoadedFamily:
    import maskc

    return load_plan(maskc.compile_family({"family": "documents", "max_len": max_len, "causal": causal, "window": window}))
