"""Write the golden plans of the current format version: a few library masks, compiled.

    python plans/golden/generate.py

Golden plans are frozen once released: every later maskc must load them and decode them to the
masks named in MANIFEST.json (tests/test_golden.py). Run this only to add the plans of a new
format version, never to rewrite old ones. From version 2 on, each case is written in every
variant it fits: ``v2-KIND.plan`` (block-sparse) and ``v2-KIND-intervals.plan``. From version 3 on,
the extra cases add the dense variants, a reordered plan and a plan compiled with ``block="auto"``
(without a profile, so its predictions record only why there are none): ``v3-KIND-SUFFIX.plan``.
From version 4 on, plans with dense pieces too.
"""

import json
from pathlib import Path

import maskc
from maskc import library
from maskc.errors import MaskError
from maskc.runtime.format import PLAN_VERSION as VERSION

HERE = Path(__file__).parent
CASES = [
    ("causal", {"n": 300}, [64, 64]),
    ("documents", {"lengths": [100, 37, 200, 63], "causal": True}, [32, 64]),
    ("prefix_lm", {"n": 257, "prefix": 90}, [128, 128]),
    ("sliding_window", {"n": 333, "window": 48, "causal": False}, [32, 32]),
    ("token_tree", {"parents": [-1, 0, 0, 1, 1, 2, 3, 3, 5, 8]}, [32, 32]),
    ("bigbird", {"n": 512, "window": 64, "global_tokens": [0, 1, 2], "random_blocks": 2, "block": 32, "seed": 3}, [64, 32]),
    ("causal_blockwise", {"n": 200, "block": 48}, [64, 32]),
    ("longformer", {"n": 190, "window": 20, "global_tokens": [0, 1, 189]}, [32, 64]),
]
# (kind, args, block, compile options, file name suffix); from version 3
EXTRA_CASES = [
    ("full", {"n": 200}, [64, 64], {"variant": "dense"}, "dense"),
    ("causal", {"n": 300}, [64, 64], {"variant": "dense_causal"}, "dense_causal"),
    ("hash_buckets", {"n": 256, "buckets": 4, "causal": True, "seed": 1}, [32, 32], {"reorder": "rcm"}, "rcm"),
    ("documents", {"lengths": [100, 37, 200, 63], "causal": True}, "auto", {"profile": "none"}, "auto"),
]
# from version 4: plans whose backward runs through their dense pieces
PIECES_CASES = [
    ("prefix_lm", {"n": 257, "prefix": 90}, [64, 64], {"backward": "pieces"}, "pieces"),
    ("shared_question", {"question": 40, "answers": [30, 50, 21]}, [32, 32], {"variant": "intervals", "backward": "pieces"}, "intervals-pieces"),
]


def main() -> None:
    manifest = json.loads((HERE / "MANIFEST.json").read_text()) if (HERE / "MANIFEST.json").exists() else []
    known = {entry["file"] for entry in manifest}
    for kind, args, block in CASES:
        source = getattr(library, kind)(**args)
        for variant in ("block_sparse", "intervals"):
            name = f"v{VERSION}-{kind}{'-intervals' if variant == 'intervals' else ''}.plan"
            if name in known:
                continue
            try:
                plan = maskc.compile(source, block=tuple(block), variant=variant)
            except MaskError:  # does not fit the interval form
                continue
            plan.save(HERE / name)
            manifest.append({"file": name, "kind": kind, "args": args, "block": block, "variant": variant,
                             "hash_of": plan.hash_of, "mask_sha256": plan.mask_sha256})
    for kind, args, block, options, suffix in (EXTRA_CASES if VERSION >= 3 else []) + (PIECES_CASES if VERSION >= 4 else []):
        name = f"v{VERSION}-{kind}-{suffix}.plan"
        if name in known:
            continue
        plan = maskc.compile(getattr(library, kind)(**args), block=block if block == "auto" else tuple(block), **options)
        plan.save(HERE / name)
        manifest.append({"file": name, "kind": kind, "args": args, "block": [plan.block_m, plan.block_n], "variant": plan.variant,
                         "options": options, "reordered": plan.reordered, "hash_of": plan.hash_of, "mask_sha256": plan.mask_sha256})
    (HERE / "MANIFEST.json").write_text(json.dumps(manifest, indent=1) + "\n")


if __name__ == "__main__":
    main()
