"""The family binders on random per-step data: documents (doc ids, position_ids, cu_seqlens; causal,
bidirectional, windows, prefixes, padding), shared-prefix groups, token trees (preorder and other
numberings), hash buckets and QK dropping. Each binding must equal, through both backends, the
compiler's static plan of the dense mask built here in numpy (in the binding's sorted order), and
the library's own kinds where there is one."""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

from functools import partial

import numpy as np
import pytest
import torch
from family_check import REFERENCE, TRITON, NoHostSync, assert_same_as_plan, bind_both, output_shapes, poison_outputs, static_plan

from maskc import library
from maskc.runtime import family
from maskc.runtime.family import BindError, bind
from maskc.runtime.format import TILE_SIZES

pytestmark = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="CPU tests run the kernels in the Triton interpreter")
SEEDS = range(3)


@pytest.fixture(autouse=True)
def _poison(monkeypatch):
    poison_outputs(monkeypatch)


def blocks(rng):
    return tuple(int(b) for b in rng.choice(TILE_SIZES, 2))


# --- dense references, from the definitions ------------------------------------------------------


def maximal_runs(*ids):
    """Per token ``[B, N]``, the number of the maximal run of equal values (of all ``ids`` together)."""
    new = np.zeros(ids[0].shape, dtype=bool)
    new[:, 0] = True
    for values in ids:
        new[:, 1:] |= values[:, 1:] != values[:, :-1]
    return np.cumsum(new, axis=1)


def same(run):
    return run[:, :, None] == run[:, None, :]


def order(n, causal, window=None):
    i, j = np.arange(n)[:, None], np.arange(n)[None, :]
    keep = (j <= i) if causal else np.ones((n, n), dtype=bool)
    if window is not None:
        keep &= (i - j < window) if causal else (np.abs(i - j) < window)
    return keep


def documents_mask(ids, causal, window=None, prefix=None):
    pad = ids < 0
    keep = order(ids.shape[1], causal, window)[None]
    if prefix is not None:
        keep = keep | prefix[:, None, :]
    return same(maximal_runs(ids)) & keep & ~pad[:, :, None] & ~pad[:, None, :]


def shared_prefix_mask(groups, segments):
    pad = groups < 0
    visible = (segments == 0)[:, None, :] | same(maximal_runs(groups, segments))
    return same(maximal_runs(groups)) & visible & order(groups.shape[1], True)[None] & ~pad[:, :, None] & ~pad[:, None, :]


def tree_mask(parents):
    batch, n = parents.shape
    mask = np.zeros((batch, n, n), dtype=bool)
    for b in range(batch):
        for i in range(n):
            node = i if parents[b, i] != -2 else -1
            while node >= 0:
                mask[b, i, node] = True
                node = parents[b, node]
    return mask


def buckets_mask(qb, kb, q_keep, k_keep, causal):
    n = qb.shape[-1]
    mask = (qb[..., :, None] == kb[..., None, :]) & q_keep[..., :, None] & k_keep[..., None, :] & order(n, causal)
    return mask.reshape(-1, n, n)


# --- random per-step data ------------------------------------------------------------------------


def segments(rng, n, longest):
    """Lengths of consecutive segments filling ``n`` tokens."""
    lengths = []
    while sum(lengths) < n:
        lengths.append(int(rng.integers(1, longest + 1)))
    lengths[-1] -= sum(lengths) - n
    return lengths


def doc_ids(rng, batch, n):
    """Documents with padding runs (id -1) anywhere and ids that repeat, but never next to each other."""
    rows = []
    for _ in range(batch):
        ids, last = [], -2
        for length in segments(rng, n, max(1, n // 4)):
            value = -1 if rng.random() < 0.2 else int(rng.integers(0, 4))
            value = value if value != last else last + 7
            ids += [value] * length
            last = value
        rows.append(ids)
    return np.array(rows)


def position_ids(ids, rng):
    """Hugging Face positions of ``ids``: 0 at each document's start, except (a continued document) the
    first document of a row or one right after padding, which may start anywhere; -1 on padding."""
    runs = maximal_runs(ids)
    pos = np.zeros_like(ids)
    for b in range(ids.shape[0]):
        for r in np.unique(runs[b]):
            where = np.flatnonzero(runs[b] == r)
            first = where[0]
            continued = first == 0 or ids[b, first - 1] < 0
            pos[b, where] = np.arange(where.size) + (int(rng.integers(0, 5)) if continued else 0)
    return np.where(ids < 0, -1, pos)


def forest(rng, n):
    """Parents of a random forest numbered so that a parent precedes its children (not in preorder)."""
    parents = np.array([-1] + [int(rng.integers(max(0, i - 6), i)) if rng.random() > 0.1 else -1 for i in range(1, n)])
    return parents


def renumber(parents, order_of_nodes):
    """``parents`` with node ``order_of_nodes[k]`` renumbered ``k``."""
    new = np.empty_like(order_of_nodes)
    new[order_of_nodes] = np.arange(order_of_nodes.size)
    return np.where(parents < 0, parents, new[np.maximum(parents, 0)])[order_of_nodes]


def children(parents):
    kids = [[] for _ in parents]
    for i, p in enumerate(parents):
        if p >= 0:
            kids[p].append(i)
    return kids, [i for i, p in enumerate(parents) if p < 0]


def preorder(parents):
    kids, roots = children(parents)
    out, stack = [], roots[::-1]
    while stack:
        node = stack.pop()
        out.append(node)
        stack += kids[node][::-1]
    return np.array(out)


def breadth_first(parents):
    kids, roots = children(parents)
    out = list(roots)
    for node in out:
        out += kids[node]
    return np.array(out)


def depth(parents):
    d = np.zeros(parents.size, dtype=int)
    for i, p in enumerate(parents):
        d[i] = d[p] + 1 if p >= 0 else 0
    return int(d.max())


# --- documents ----------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("causal,window", [(True, None), (False, None), (True, 9), (False, 5)])
def test_documents_from_doc_ids(seed, causal, window):
    rng = np.random.default_rng(seed)
    ids = doc_ids(rng, 2, int(rng.integers(1, 150)))
    runs = partial(family.documents, torch.from_numpy(ids), causal, window)
    bind_both(runs, *blocks(rng), documents_mask(ids, causal, window))


@pytest.mark.parametrize("seed", SEEDS)
def test_documents_with_prefixes(seed):
    rng = np.random.default_rng(seed)
    ids = doc_ids(rng, 2, 120)
    prefix = rng.random(ids.shape) < 0.3
    runs = partial(family.documents, torch.from_numpy(ids), prefix=torch.from_numpy(prefix))
    bind_both(runs, *blocks(rng), documents_mask(ids, True, prefix=prefix & (ids >= 0)))


@pytest.mark.parametrize("seed", SEEDS)
def test_documents_from_position_ids(seed):
    rng = np.random.default_rng(seed)
    ids = doc_ids(rng, 3, 110)
    runs = partial(family.documents_from_position_ids, torch.from_numpy(position_ids(ids, rng)))
    bind_both(runs, *blocks(rng), documents_mask(ids, True))


@pytest.mark.parametrize("seed", SEEDS)
def test_documents_from_cu_seqlens(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(20, 160))
    lengths = [length * (rng.random() > 0.2) for length in segments(rng, int(rng.integers(1, n)), n // 3)]
    cu = np.concatenate([[0], np.cumsum(lengths), [sum(lengths)] * int(rng.integers(0, 3))]).astype(np.int32)
    ids = np.full(n, -1)
    ids[: sum(lengths)] = np.repeat(np.arange(len(lengths)), lengths)
    runs = partial(family.documents_from_cu_seqlens, torch.from_numpy(cu), n, causal=bool(seed % 2), check=True)
    bind_both(runs, *blocks(rng), documents_mask(ids[None], bool(seed % 2)))


def shared_prefix_ids(rng, batch, n, longest):
    """Group ids (some groups padding, id -1) and segment ids (0: the shared prefix, then answers
    alternating 1 and 2) of ``batch`` rows of ``n`` tokens, groups of up to ``longest`` tokens."""
    groups, answers = [], []
    for _ in range(batch):
        g, a = [], []
        for number, length in enumerate(segments(rng, n, longest)):
            parts = segments(rng, length, max(1, length // 3))
            g += [-1 if rng.random() < 0.15 else number] * length
            a += sum(([0 if k == 0 else 1 + k % 2] * part for k, part in enumerate(parts)), [])
        groups.append(g)
        answers.append(a)
    return np.array(groups), np.array(answers)


@pytest.mark.parametrize("seed", SEEDS)
def test_shared_prefix_groups(seed):
    rng = np.random.default_rng(seed)
    groups, answers = shared_prefix_ids(rng, 2, 140, 50)
    runs = partial(family.shared_prefix, torch.from_numpy(groups), torch.from_numpy(answers))
    bind_both(runs, *blocks(rng), shared_prefix_mask(groups, answers))


def test_segments_longer_than_a_program_search_past_it(monkeypatch):
    """With 8-token programs searching 4 tokens a step, most documents leave their program's block."""
    from maskc.runtime.family import segment_kernels

    monkeypatch.setattr(segment_kernels, "BLOCK", 8)
    monkeypatch.setattr(segment_kernels, "SCAN", 4)
    rng = np.random.default_rng(4)
    ids = doc_ids(rng, 2, 70)
    prefix = rng.random(ids.shape) < 0.3
    t = torch.from_numpy(ids)
    bind_both(partial(family.documents, t, causal=False), 32, 32, documents_mask(ids, False))
    bind_both(partial(family.documents, t, prefix=torch.from_numpy(prefix)), 32, 32, documents_mask(ids, True, prefix=prefix & (ids >= 0)))
    answers = rng.integers(0, 3, ids.shape)
    bind_both(partial(family.shared_prefix, t, torch.from_numpy(answers)), 32, 32, shared_prefix_mask(ids, answers))


def test_library_kinds_compile_to_the_same_plans():
    """The structured library masks (compiled from their parameters, not their rows) bind identically."""
    lengths, n = [40, 7, 90, 33], 170
    ids = torch.from_numpy(np.repeat(np.arange(4), lengths))[None]
    j = torch.arange(n)[None]
    parents = np.array([-1, 0, 1, 1, 0, 4, -1, 6, 6, 8])
    cases = [
        (partial(family.documents, ids, causal=False), library.documents(lengths, causal=False)),
        (partial(family.documents, ids, window=16), library.intersection(library.documents(lengths), library.sliding_window(n, 16))),
        (partial(family.documents, torch.zeros_like(ids), prefix=j < 50), library.prefix_lm(n, 50)),
        (partial(family.shared_prefix, torch.zeros_like(ids), ids), library.shared_question(40, lengths[1:])),
        (lambda backend: family.token_tree(torch.from_numpy(parents)[None], max_depth=3, preorder=True), library.token_tree(parents)),
    ]
    for runs, source in cases:
        for backend in (REFERENCE, TRITON):
            assert_same_as_plan(bind(runs(backend=backend), 32, 64, backend), static_plan(source, 32, 64))


# --- token trees ---------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("numbering", ["random", "breadth_first", "preorder"])
def test_token_trees(seed, numbering):
    rng = np.random.default_rng(seed)
    rows = [forest(rng, 90) for _ in range(2)]
    if numbering != "random":
        rows = [renumber(p, (breadth_first if numbering == "breadth_first" else preorder)(p)) for p in rows]
    parents = np.array(rows)
    parents[1, 80:] = -2  # a padded row
    max_depth = max(depth(p) for p in rows) + int(rng.integers(0, 3))
    runs = family.token_tree(torch.from_numpy(parents), max_depth, check=True)
    bind_both(runs, *blocks(rng), tree_mask(parents))
    if numbering == "preorder":
        assert torch.equal(runs.perm_q, torch.arange(90, dtype=torch.int32).expand(2, 90))
        bind_both(family.token_tree(torch.from_numpy(parents), max_depth, preorder=True, check=True), *blocks(rng), tree_mask(parents))


def test_medusa_candidate_tree_in_breadth_first_order():
    parents = library.candidate_tree(60, depth=4, top_k=5, seed=2)
    bfs = renumber(parents, breadth_first(parents))
    runs = family.token_tree(torch.from_numpy(np.stack([parents, bfs])), max_depth=4, check=True)
    bind_both(runs, 32, 32, tree_mask(np.stack([parents, bfs])))


# --- hash buckets and dropping -------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("causal", [True, False])
def test_hash_buckets_with_dropping(seed, causal):
    rng = np.random.default_rng(seed)
    shape = (2, 2, int(rng.integers(1, 120)))
    qb, kb = rng.integers(0, 5, shape), rng.integers(0, 5, shape)
    q_keep, k_keep = rng.random(shape) < 0.8, rng.random(shape) < 0.8
    q_keep[0, 0] = False  # a slice whose queries are all dropped
    args = [torch.from_numpy(x) for x in (qb, kb, q_keep, k_keep)]
    runs = family.hash_buckets(*args, causal=causal, check=True)
    bind_both(runs, *blocks(rng), buckets_mask(qb, kb, q_keep, k_keep, causal))
    if seed == 0:
        kept = np.ones(shape, dtype=bool)
        bind_both(family.hash_buckets(*args[:2], causal=causal), *blocks(rng), buckets_mask(qb, kb, kept, kept, causal))


@pytest.mark.parametrize("seed", SEEDS)
def test_qk_dropping(seed):
    rng = np.random.default_rng(seed)
    shape = (1, 3, 100)
    q_keep, k_keep = rng.random(shape) < 0.6, rng.random(shape) < 0.6
    runs = family.qk_dropping(torch.from_numpy(q_keep), torch.from_numpy(k_keep))
    zeros = np.zeros(shape, dtype=int)
    bind_both(runs, *blocks(rng), buckets_mask(zeros, zeros, q_keep, k_keep, True))


# --- no host synchronisation, static shapes, value checks ----------------------------------------


def binders(rng, n, backend):
    """Every binder on fresh random data of ``n`` tokens (shapes fixed, values random)."""
    ids = doc_ids(rng, 2, n)
    shape = (2, 2, n)
    lengths = segments(rng, n // 2, 10)
    cu = torch.tensor(np.concatenate([[0], np.cumsum(lengths)]), dtype=torch.int32)
    keep = [torch.from_numpy(rng.random(shape) < 0.7) for _ in range(2)]
    return [
        family.documents(torch.from_numpy(ids), causal=False, window=7, backend=backend),
        family.documents(torch.from_numpy(ids), prefix=torch.from_numpy(rng.random(ids.shape) < 0.5), backend=backend),
        family.documents_from_position_ids(torch.from_numpy(position_ids(ids, rng)), backend=backend),
        family.documents_from_cu_seqlens(cu, n, backend=backend),
        family.shared_prefix(torch.from_numpy(ids), torch.from_numpy(rng.integers(0, 2, ids.shape)), backend=backend),
        family.token_tree(torch.from_numpy(np.stack([forest(rng, n) for _ in range(2)])), max_depth=n),
        family.hash_buckets(*(torch.from_numpy(rng.integers(0, 3, shape)) for _ in range(2)), *keep),
        family.qk_dropping(*keep),
    ]


@pytest.mark.parametrize("backend", [REFERENCE, TRITON])
def test_binders_never_sync_and_keep_their_shapes(backend):
    rng = np.random.default_rng(9)
    shapes = []
    for _ in range(2):
        with NoHostSync():
            shapes.append([output_shapes(bind(runs, 32, 32, backend)) for runs in binders(rng, 40, backend)])
    assert shapes[0] == shapes[1]


def test_value_checks_name_the_bad_value():
    with pytest.raises(BindError, match=r"cu_seqlens\[0\] = 3; it must start at 0"):
        family.documents_from_cu_seqlens(torch.tensor([3, 5]), 10, check=True)
    with pytest.raises(BindError, match=r"cu_seqlens\[2\] = 4; it must not be smaller"):
        family.documents_from_cu_seqlens(torch.tensor([0, 5, 4]), 10, check=True)
    with pytest.raises(BindError, match=r"cu_seqlens\[2\] = 11; it must not exceed n = 10"):
        family.documents_from_cu_seqlens(torch.tensor([0, 5, 11]), 10, check=True)
    with pytest.raises(BindError, match=r"parents\[0, 2\] = 2; it must be -1"):
        family.token_tree(torch.tensor([[-1, 0, 2]]), 4, check=True)
    with pytest.raises(BindError, match=r"parents\[0, 2\] = 1; it names a padding node"):
        family.token_tree(torch.tensor([[-1, -2, 1]]), 4, check=True)
    with pytest.raises(BindError, match=r"parents\[0, 3\] = 2; this node is deeper than max_depth = 2"):
        family.token_tree(torch.tensor([[-1, 0, 1, 2]]), 2, check=True)
    with pytest.raises(BindError, match=r"parents\[0, 2\] = 0; the nodes are not numbered in depth-first preorder"):
        family.token_tree(torch.tensor([[-1, 0, 0, 1]]), 2, preorder=True, check=True)
    with pytest.raises(BindError, match=r"k_buckets\[0, 0, 1\] = -1; bucket ids must be in"):
        family.hash_buckets(torch.zeros(1, 1, 3, dtype=torch.long), torch.tensor([[[0, -1, 0]]]), check=True)


def test_bad_arguments_are_named():
    ids = torch.zeros(2, 8, dtype=torch.long)
    with pytest.raises(BindError, match="doc_ids must hold integers"):
        family.documents(ids.float())
    with pytest.raises(BindError, match=r"doc_ids must have 2 non-empty dimensions, got shape \[8\]"):
        family.documents(ids[0])
    with pytest.raises(BindError, match="window must be a positive integer"):
        family.documents(ids, window=0)
    with pytest.raises(BindError, match="prefix is for causal documents without a window"):
        family.documents(ids, causal=False, prefix=ids > 0)
    with pytest.raises(BindError, match="prefix must be a bool tensor"):
        family.documents(ids, prefix=ids)
    with pytest.raises(BindError, match=r"segment_ids has shape \[2, 7\], but group_ids has \[2, 8\]"):
        family.shared_prefix(ids, ids[:, :7])
    with pytest.raises(BindError, match="max_depth must be a positive integer"):
        family.token_tree(ids, 0)
    with pytest.raises(BindError, match="k_keep is on meta"):
        family.qk_dropping(ids[None] > 0, (ids[None] > 0).to("meta"))
    with pytest.raises(BindError, match="q_keep must be a bool tensor"):
        family.hash_buckets(ids[None], ids[None], q_keep=ids[None])
