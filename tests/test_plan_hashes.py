"""Plans are deterministic: these masks and options give exactly the bytes they gave when the hashes
were recorded. A change of compiler that changes one must be deliberate: bump
``maskc.compiler.COMPILER_REVISION`` (the plan cache keys on it) and record the new hash.

The model's cases use ``conftest.make_profile``'s made-up constants, so a new shipped profile does not
move them.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import scipy.sparse as sp
from conftest import make_profile

import maskc
from maskc import library


def masks(tmp_path) -> dict:
    rng = np.random.default_rng(7)
    rand = rng.random((300, 260)) < 0.3
    sparse = rng.random((400, 400)) < 0.02
    cross = rng.random((2, 200, 333)) < 0.4
    sp.save_npz(tmp_path / "sparse.npz", sp.csr_matrix(sparse.astype(np.int8)))
    i, order = np.arange(1024), np.random.default_rng(0).permutation(1024)
    band = (np.abs(i[:, None] - i[None, :]) < 16)[order][:, order]
    (tmp_path / "test.json").write_text(json.dumps(make_profile()))
    documents = library.documents([300, 120, 700, 200, 500, 228], causal=True)
    stack = library.stack([library.causal(500), library.sliding_window(500, 64), library.prefix_lm(500, 100)], dim="heads")
    test_profile = str(tmp_path / "test.json")
    return {
        "rand-32": (rand, {"block": 32}),
        "documents-64-intervals": (documents, {"block": 64, "variant": "intervals"}),
        "documents-128-pieces": (documents, {"block": 128, "backward": "pieces"}),
        "documents-auto-no-profile": (documents, {"profile": "none"}),
        "full-64-dense": (library.full(777), {"variant": "dense", "block": 64}),
        "hash-buckets-64-rcm": (library.hash_buckets(1024, 8, causal=True, seed=3), {"block": 64, "reorder": "rcm"}),
        "sparse-npz-32-rcm": (str(tmp_path / "sparse.npz"), {"reorder": "rcm", "block": 32}),
        "band-auto-model": (band, {"profile": test_profile}),
        "bigbird-auto-model": (library.bigbird(1024, 32, global_tokens=[0], random_blocks=2, block=32, seed=1), {"profile": test_profile}),
        "stack-heads-64": (stack, {"block": 64}),
        "cross-32x128": (cross, {"block": "32x128"}),
        "shared-question-64-intervals-pieces": (library.shared_question(300, [200, 150, 300]), {"variant": "intervals", "backward": "pieces", "block": 64}),
        "spec-131072-block_sparse": ({"kind": "documents", "lengths": [4096] * 32, "causal": True}, {"variant": "block_sparse", "block": 128}),
    }


EXPECTED = {
    "rand-32": "76c9c6b954fcc6ea2f971b6a1fc647b31f7e305e70831c1dc9ade78c7ee1e89d",
    "documents-64-intervals": "3dded178866d7c10b0e701a81c4b5884e311fb97af93c16f5b4109843942afac",
    "documents-128-pieces": "1427acb34474ff8f8315a1d6ceb961c50d5bdc5e3ea0bded24dc136a6289ee1d",
    "documents-auto-no-profile": "58b279305c42c8c0c36d42a116483b5b6c196391b61d83062541e326043c278e",
    "full-64-dense": "d066cd648af52a6a7052d8ec2587eed2b0347706eaee432bb484b7dbf52f9e3b",
    "hash-buckets-64-rcm": "f775a6c194d359c23b48e1cf2ed2251eb70279d644fbada91f1447c609a1f2c3",
    "sparse-npz-32-rcm": "280c9781b1bb4e031fce45360314dcb452933d0f3bae9d1c65cec21ae66eee23",
    "band-auto-model": "b15e0022f24fec11bca7163b1351f8b59e53db659c8bd51c4c71c53b623a43be",
    "bigbird-auto-model": "8536677a8f1d002973cd1a85b18d016afaec26a41954faab7b4ae59e1a652b10",
    "stack-heads-64": "cf35b1cf5a70f3230198bdec403a1abf24b21855a755f255bfb0e883b401cb07",
    "cross-32x128": "bdb828f9c621ea11da649376c9eff65ce7b129c75fac71657dab39c1e9af8c8a",
    "shared-question-64-intervals-pieces": "50fc2b3862dc972deca9dd2b7e946564ef9ff64698631f00b85f53f686eed7fc",
    "spec-131072-block_sparse": "23e7044c96b597bab1138b9136ab32ad136ac47492a02cfe08f38252995f6a15",
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_plan_bytes_are_as_recorded(tmp_path, name):
    mask, options = masks(tmp_path)[name]
    assert hashlib.sha256(maskc.compile(mask, **options).to_bytes()).hexdigest() == EXPECTED[name]
