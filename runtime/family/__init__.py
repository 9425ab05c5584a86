"""Mask families: masks that change every step, bound to that step's data on the GPU.

A **family** is a mask kind with its shape bounds but not its values: packed documents (per batch
row its own lengths), shared-prefix groups (DPO packing), token trees, query/key dropping and hash
buckets (Sparse Flash Attention, per head). Its decisions (tile size, variant, kernel
configuration) are made once; every step, **binding** turns the step's O(N) tensors into what the
interval kernels read, on the device: no host synchronisation, no data-dependent Python, output
shapes that depend only on the sizes (capturable in a CUDA graph), no recompilation.

The observation that makes it cheap: in every family above, for each mask slice and key column
``j``, the query rows that see the key are ONE run ``[start_j, end_j)`` — after sorting queries and
keys, per slice, for the bucket and dropping families. So binding is

1. a family binder computes the runs (:class:`Runs`; with ``perm_q``/``perm_k``, the caller's
   token at each sorted position): packed documents and shared-prefix groups (:func:`documents`,
   :func:`documents_from_position_ids`, :func:`documents_from_cu_seqlens`, :func:`shared_prefix`)
   in one Triton launch, token trees (:func:`token_tree`) and the sorted families
   (:func:`hash_buckets`, :func:`qk_dropping`) with torch gathers, scans, sorts and ``searchsorted``;
2. :func:`bind` turns runs into the canonical interval vectors (masked rows ``[0, start)`` and
   ``[end, q_len)``, exactly what the compiler writes for the same mask) and the tile lists, with
   an exact full/partial/empty class per tile, in three Triton launches.

``backend="reference"`` does both steps with torch operations only (the CPU reference backend, and
the oracle the Triton path is tested against); ``"auto"`` picks Triton for CUDA tensors.

The lists are in fixed-capacity **ELL** form (:class:`TileLists`): row list ``r = s * tiles_m + m``
holds the entries ``[row_lo[r], row_hi[r])`` of ``row_col``/``row_tile`` inside its own ``tiles_n``
slots, full tiles first, then partial ones, each by ascending key tile (tile id -1 full, -2
partial); the column lists likewise. They are entry for entry the CSR lists of the static interval
plan of the same mask, so a kernel that walks ``[lo, hi)`` instead of ``[ptr[r], ptr[r + 1])``
gives bitwise the same attention.

Binders check shapes, dtypes and devices always, and values only with ``check=True`` (a host
synchronisation): whatever the values, outputs stay in bounds and permutations are permutations.
"""

from maskc.runtime.family.binding import BACKENDS, Binding, bind
from maskc.runtime.family.buckets import hash_buckets, qk_dropping
from maskc.runtime.family.checks import BindError
from maskc.runtime.family.documents import documents, documents_from_cu_seqlens, documents_from_position_ids, shared_prefix
from maskc.runtime.family.lists import TileLists, lists_csr
from maskc.runtime.family.runs import Runs, intervals_from_runs
from maskc.runtime.family.trees import token_tree

__all__ = [
    "BACKENDS",
    "BindError",
    "Binding",
    "Runs",
    "TileLists",
    "bind",
    "documents",
    "documents_from_cu_seqlens",
    "documents_from_position_ids",
    "hash_buckets",
    "intervals_from_runs",
    "lists_csr",
    "qk_dropping",
    "shared_prefix",
    "token_tree",
]
