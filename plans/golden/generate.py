"""Write the golden plans of the current format version: a few library masks, compiled.

    python plans/golden/generate.py

Golden plans are frozen once released: every later maskc must load them and decode them to the
masks named in MANIFEST.json (tests/test_golden.py). Run this only to add the plans of a new
format version, never to rewrite old ones.
"""

import json
from pathlib import Path

import maskc
from maskc import library
from maskc.runtime.format import VERSION

HERE = Path(__file__).parent
CASES = [
    ("causal", {"n": 300}, [64, 64]),
    ("documents", {"lengths": [100, 37, 200, 63], "causal": True}, [32, 64]),
    ("prefix_lm", {"n": 257, "prefix": 90}, [128, 128]),
    ("sliding_window", {"n": 333, "window": 48, "causal": False}, [32, 32]),
    ("token_tree", {"parents": [-1, 0, 0, 1, 1, 2, 3, 3, 5, 8]}, [32, 32]),
    ("bigbird", {"n": 512, "window": 64, "global_tokens": [0, 1, 2], "random_blocks": 2, "block": 32, "seed": 3}, [64, 32]),
]


def main() -> None:
    manifest = json.loads((HERE / "MANIFEST.json").read_text()) if (HERE / "MANIFEST.json").exists() else []
    known = {entry["file"] for entry in manifest}
    for kind, args, block in CASES:
        name = f"v{VERSION}-{kind}.plan"
        if name in known:
            continue
        plan = maskc.compile(getattr(library, kind)(**args), block=tuple(block))
        plan.save(HERE / name)
        manifest.append({"file": name, "kind": kind, "args": args, "block": block, "mask_sha256": plan.mask_sha256})
    (HERE / "MANIFEST.json").write_text(json.dumps(manifest, indent=1) + "\n")


if __name__ == "__main__":
    main()
