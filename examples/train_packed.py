"""Train a small GPT on packed documents through Hugging Face with ``attn_implementation="maskc"``.

A Llama-style decoder (random init, from a config) learns synthetic documents (each an arithmetic
sequence of tokens modulo the vocabulary, with a random start and stride) packed into rows of
``--tokens`` tokens, their lengths log-normal. maskc sees the packing through ``position_ids``
(restarting at 0 per document); ``--attn sdpa`` trains the same model on the same batches with SDPA
and the dense block-diagonal causal mask instead, to compare the loss curves. Prints the loss and
tokens/s per step.

CPU (tiny): ``python examples/train_packed.py --device cpu --steps 5 --tokens 128 --layers 2 --hidden 64``
GPU:        ``python examples/train_packed.py --attn maskc`` and ``--attn sdpa``
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from transformers import LlamaConfig, LlamaForCausalLM

import maskc.integrations.transformers  # noqa: F401  (registers attn_implementation="maskc")


def packed_batch(rng: np.random.Generator, rows: int, tokens: int, vocab: int, mean_length: float):
    """input_ids, position_ids and labels ``[rows, tokens]`` of packed synthetic documents, and the
    document id of every token (for the dense mask)."""
    ids, positions, docs = (np.empty((rows, tokens), dtype=np.int64) for _ in range(3))
    for r in range(rows):
        filled, doc = 0, 0
        while filled < tokens:
            n = min(tokens - filled, max(2, int(rng.lognormal(np.log(mean_length), 0.8))))
            start, stride = rng.integers(vocab), rng.integers(1, 7)
            ids[r, filled:filled + n] = (start + stride * np.arange(n)) % vocab
            positions[r, filled:filled + n] = np.arange(n)
            docs[r, filled:filled + n] = doc
            filled, doc = filled + n, doc + 1
    labels = ids.copy()
    labels[positions == 0] = -100  # a document's first token is not predicted from the previous document
    return (torch.from_numpy(x) for x in (ids, positions, labels, docs))


def block_diagonal(docs: torch.Tensor) -> torch.Tensor:
    """The packed rows' dense causal mask ``[B, 1, N, N]`` (True = attend), for SDPA."""
    n = docs.shape[1]
    causal = torch.ones(n, n, dtype=torch.bool, device=docs.device).tril()
    return ((docs[:, :, None] == docs[:, None, :]) & causal)[:, None]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--attn", choices=("maskc", "sdpa"), default="maskc")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--rows", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--mean-length", type=float, default=300.0)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    args = parser.parse_args()

    config = LlamaConfig(vocab_size=1024, hidden_size=args.hidden, intermediate_size=4 * args.hidden, num_hidden_layers=args.layers,
                         num_attention_heads=max(1, args.hidden // 64), num_key_value_heads=max(1, args.hidden // 256),
                         max_position_embeddings=args.tokens, attn_implementation=args.attn)
    torch.manual_seed(0)
    dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
    model = LlamaForCausalLM(config).to(args.device, dtype)
    forward = torch.compile(model) if args.compile else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    rng = np.random.default_rng(0)
    for step in range(args.steps):
        ids, positions, labels, docs = (t.to(args.device) for t in packed_batch(rng, args.rows, args.tokens, config.vocab_size, args.mean_length))
        mask = {"attention_mask": block_diagonal(docs)} if args.attn == "sdpa" else {}
        start = time.perf_counter()
        loss = forward(input_ids=ids, position_ids=positions, labels=labels, **mask).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        print(f"step {step:4d}  loss {loss.item():.4f}  {ids.numel() / seconds:10.0f} tokens/s  ({args.attn})")


if __name__ == "__main__":
    main()
