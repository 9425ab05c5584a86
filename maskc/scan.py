"""Reading a mask: one pass over its rows, block by block, and what the pass finds.

A pass hashes the mask's bits, counts its visible pairs, detects its interval form
(:class:`maskc.intervals.RunTracker`) and feeds every block of rows to its sinks (tile counters,
bitmap builders, the reordering's pattern), so that each thing the compiler needs of a mask is
found in the same read. Sources that give their interval vectors from their structure
(:func:`structured_intervals`) need no read for the form.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from typing import Any, Callable, Protocol

import numpy as np

from maskc.errors import MaskError
from maskc.intervals import RunTracker, canonical, intervals_sha256
from maskc.options import check_variant
from maskc.inputs import open_mask
from maskc.sources import MaskSource

Progress = Callable[[int, int], None]


class Sink(Protocol):
    def add(self, s: int, start: int, rows: np.ndarray) -> None:
        """Take rows ``start : start + len(rows)`` of mask slice ``s``."""


@dataclass(frozen=True)
class Scan:
    """What one pass over a source's rows found."""

    bits_sha256: str | None = None  # None when the pass stopped early
    intervals: np.ndarray | None = None  # the canonical vectors, when tracked and the mask fits
    failure: str | None = None  # why the mask does not fit, when tracked
    visible: int = 0  # visible pairs, when the pass read every row


def read_rows(source: MaskSource, step: int, progress: Progress | None, sinks: tuple[Sink, ...] | list[Sink] = (), track: bool = True) -> Scan:
    """Read the mask once, ``step`` query rows at a time: hash its bits, count its visible pairs,
    feed each block to every sink, and with ``track`` detect its interval form. Without sinks, the
    pass stops as soon as the mask is known not to fit (nothing else needs the rest of its rows)."""
    B, H, nq, nk = source.shape
    steps_per_slice = -(-nq // step)
    hasher = _mask_hasher(source.shape)
    found: list[np.ndarray] = []
    failure = None
    visible = 0
    stop_early = track and not sinks
    for s in range(B * H):
        b, h = divmod(s, H)
        tracker = RunTracker(nq, nk) if track and failure is None else None
        for i, start in enumerate(range(0, nq, step)):
            stop = min(start + step, nq)
            rows = source.rows(b, h, start, stop)
            if rows.shape != (stop - start, nk):
                raise MaskError(f"{source.name}: rows {start}:{stop} came back with shape {list(rows.shape)}, expected {[stop - start, nk]}")
            hasher.update(np.packbits(rows, axis=-1, bitorder="little").tobytes())
            visible += int(np.count_nonzero(rows))
            if tracker is not None and not tracker.update(rows):
                failure, tracker = f"slice {s}: {tracker.failure}", None
                if stop_early:
                    return Scan(failure=failure)
            for sink in sinks:
                sink.add(s, start, rows)
            if progress is not None:
                progress(s * steps_per_slice + i + 1, B * H * steps_per_slice)
        if tracker is not None:
            vectors = tracker.finish()
            if vectors is None:
                failure = f"slice {s}: {tracker.failure}"
                if stop_early:
                    return Scan(failure=failure)
            found.append(vectors)
    return Scan(hasher.hexdigest(), np.stack(found) if track and failure is None else None, failure, visible)


def _mask_hasher(shape: tuple[int, int, int, int]) -> Any:
    """SHA-256 over the canonical bits: the shape as four uint64, then each row's bits packed LSB-first."""
    hasher = hashlib.sha256(b"maskc-mask-v1")
    hasher.update(struct.pack("<4Q", *shape))
    return hasher


def structured_intervals(source: MaskSource) -> np.ndarray | None:
    """The source's canonical interval vectors from its structure (never its rows), or None."""
    vectors = source.intervals()
    if vectors is None:
        return None
    vectors = np.asarray(vectors)
    expected = (source.batch * source.heads, 4, source.kv_len)
    if vectors.shape != expected:
        raise MaskError(f"{source.name}: intervals() gave shape {list(vectors.shape)}, expected {list(expected)}")
    ok = (vectors[:, 0::2] >= 0) & (vectors[:, 0::2] <= vectors[:, 1::2]) & (vectors[:, 1::2] <= source.q_len)
    if not ok.all():
        raise MaskError(f"{source.name}: intervals() gave a start or end outside 0 <= start <= end <= q_len={source.q_len}")
    return canonical(vectors, source.q_len)


def mask_sha256(mask: Any) -> str:
    """The canonical hash of a mask's bits, as recorded in a block-sparse plan, without compiling it."""
    return read_rows(open_mask(mask), 1024, None, track=False).bits_sha256


def detect_intervals(source: MaskSource, block_rows: int = 1024) -> tuple[np.ndarray | None, str | None]:
    """Read a source once to find its canonical interval vectors: ``(vectors, None)`` when it fits
    the interval form, ``(None, why not)`` otherwise."""
    scan = read_rows(source, block_rows, None)
    return scan.intervals, scan.failure


def fingerprint(mask: Any, variant: str = "auto") -> tuple[str, str]:
    """``(hash, hash_of)`` naming ``mask`` without compiling it: unless ``variant`` is
    ``"block_sparse"``, a mask that fits the interval form is named by its interval hash
    (``hash_of="intervals"``, the same from a spec and from a dense file), any other by its bit hash.
    A structured source costs O(kv_len); any other is read once."""
    source = open_mask(mask)
    if check_variant(variant) != "block_sparse":
        vectors = structured_intervals(source)
        if vectors is None:
            vectors = read_rows(source, 1024, None, sinks=(), track=True).intervals
        if vectors is not None:
            return intervals_sha256(source.shape, vectors), "intervals"
    return mask_sha256(source), "bits"


class TileCounter:
    """Tile classes of every slice at several tile sizes (0 empty, 1 full, 2 partial), from rows fed
    in blocks that start on a tile row of every size."""

    def __init__(self, shape: tuple[int, int, int, int], blocks: list[tuple[int, int]] | tuple[tuple[int, int], ...]):
        B, H, self.q_len, self.kv_len = shape
        self.classes = {b: np.zeros((B * H, -(-self.q_len // b[0]), -(-self.kv_len // b[1])), dtype=np.int8) for b in blocks}

    def add(self, s: int, start: int, rows: np.ndarray) -> None:
        height = rows.shape[0]
        for (bm, bn), out in self.classes.items():
            first, count, tiles_n = start // bm, -(-height // bm), out.shape[2]
            padded = np.zeros((count * bm, tiles_n * bn), dtype=bool)
            padded[:height, : self.kv_len] = rows
            visible = padded.reshape(count, bm, tiles_n, bn).sum(axis=(1, 3), dtype=np.int64)
            heights = np.minimum(bm, self.q_len - (first + np.arange(count)) * bm)
            widths = np.minimum(bn, self.kv_len - np.arange(tiles_n) * bn)
            out[s, first : first + count] = np.where(visible == 0, 0, np.where(visible == heights[:, None] * widths[None, :], 1, 2))


class Stages:
    """One progress callback over the passes of a compile: with ``n`` passes, pass ``k`` reports into
    its own ``1/n`` of the bar; with one, it reports as it goes."""

    SCALE = 1000

    def __init__(self, progress: Progress | None, n: int):
        self.progress, self.n = progress, n
        self.reported = False

    def stage(self, k: int) -> Progress | None:
        if self.progress is None:
            return None
        if self.n == 1:
            return self._report
        return lambda done, total: self._report(k * self.SCALE + self.SCALE * done // max(total, 1), self.n * self.SCALE)

    def _report(self, done: int, total: int) -> None:
        self.reported = True
        self.progress(done, total)

    def finish(self) -> None:
        """Fill the bar: every pass done (with one pass, only when it reported nothing: no row was read)."""
        if self.progress is not None and (self.n > 1 or not self.reported):
            total = self.n * self.SCALE if self.n > 1 else 1
            self._report(total, total)
