"""One training step of a ~100M-parameter Llama-style decoder on packed documents, through Hugging
Face transformers, with maskc, FlexAttention and SDPA as the attention, in one run.

    python benchmarks/hf_step.py [--tokens 16384] [--steps 10] [--out hf_step.json]
    python benchmarks/hf_step.py --device cpu --tokens 256 --layers 2 --hidden 128 --steps 2 --attn maskc sdpa   # smoke test

A decoder from a config (random init; 12 layers, hidden 768, 12 heads of 64, 4 key/value heads,
vocabulary 8192: about 100M parameters) trains on rows of ``--tokens`` tokens packed with
documents of log-normal lengths (mean ``--mean-length``), in bf16 with AdamW. Each step draws a new
packing (``examples/train_packed.py``'s synthetic documents) and runs forward, backward and the
optimizer step. The attention is:

- ``maskc``: ``attn_implementation="maskc"``, the packing given by ``position_ids`` (bound once per
  forward to a family plan of packed documents, every layer reusing it);
- ``flex_attention``: transformers' FlexAttention path, the same ``position_ids`` (transformers
  builds the document block mask from them every forward);
- ``sdpa``: SDPA with the dense block-diagonal causal mask ``[B, 1, N, N]``.

All three see the same weights and batches; step 0's losses are recorded so they can be compared.
Reported per method: the median step time over ``--steps`` timed steps after ``--warmup`` steps
(host clock, synchronised), tokens/s, and maskc's speed-up over each other method.
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import transformers
from transformers import LlamaConfig, LlamaForCausalLM

import maskc.integrations.transformers  # noqa: F401  (registers attn_implementation="maskc")
from maskc.runtime.format import atomic_write

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
from train_packed import block_diagonal, packed_batch  # noqa: E402


def step_times(attn: str, args, device: torch.device) -> dict:
    config = LlamaConfig(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=4 * args.hidden,
                         num_hidden_layers=args.layers, num_attention_heads=args.hidden // 64,
                         num_key_value_heads=max(1, args.hidden // 192), max_position_embeddings=args.tokens,
                         attn_implementation=attn)
    torch.manual_seed(0)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = LlamaForCausalLM(config).to(device, dtype)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    rng = np.random.default_rng(0)
    times, first_loss = [], None
    for step in range(args.warmup + args.steps):
        ids, positions, labels, docs = (t.to(device) for t in packed_batch(rng, args.rows, args.tokens, args.vocab, args.mean_length))
        mask = {"attention_mask": block_diagonal(docs)} if attn == "sdpa" else {}
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        loss = model(input_ids=ids, position_ids=positions, labels=labels, **mask).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if step >= args.warmup:
            times.append(1000 * (time.perf_counter() - start))
        if step == 0:
            first_loss = loss.item()
    ms = statistics.median(times)
    return {"parameters": sum(p.numel() for p in model.parameters()), "step_ms": round(ms, 2),
            "tokens_per_s": round(args.rows * args.tokens / ms * 1000), "first_loss": first_loss}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--attn", nargs="+", default=["maskc", "flex_attention", "sdpa"])
    parser.add_argument("--tokens", type=int, default=16384)
    parser.add_argument("--rows", type=int, default=1)
    parser.add_argument("--mean-length", type=float, default=350.0)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--out", default="hf_step.json")
    args = parser.parse_args()
    device = torch.device(args.device)
    record = {"gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu", "torch": torch.__version__,
              "transformers": transformers.__version__, "date": datetime.date.today().isoformat(),
              "config": {k: getattr(args, k) for k in ("tokens", "rows", "mean_length", "layers", "hidden", "vocab", "warmup", "steps")}}
    for attn in args.attn:
        try:
            record[attn] = step_times(attn, args, device)
        except Exception as e:  # a baseline this transformers or GPU cannot run is recorded, not fatal; maskc's errors are
            if attn == "maskc":
                raise
            record[attn] = {"error": f"{type(e).__name__}: {str(e).strip()[:300]}"}
        print(json.dumps({attn: record[attn]}), flush=True)
    ours = record.get("maskc", {}).get("step_ms")
    record["speedup"] = {attn: round(record[attn]["step_ms"] / ours, 3) for attn in args.attn
                         if attn != "maskc" and ours and "step_ms" in record[attn]}
    print(json.dumps({"speedup": record["speedup"]}))
    atomic_write(args.out, json.dumps(record, indent=1).encode())


if __name__ == "__main__":
    main()
