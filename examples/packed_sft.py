"""Supervised fine-tuning on packed documents: a family plan bound to each batch's ``position_ids``.

    python examples/packed_sft.py [--device cpu|cuda] [--steps 30] [--n 512] [--batch 4] [--plan FAMILY.maskc]

The mask changes every step (each row of a batch packs different documents), so nothing is compiled
per step: the family ``{"family": "documents", "max_len": N}`` is compiled once (or loaded from
``--plan``, written by ``maskc compile family.json``), and each attention call binds it to the
batch's Hugging Face ``position_ids`` (0 at the start of each document, -1 on padding) on the device:
no host synchronisation, no recompilation. A ``DataLoader`` yields packed batches: its collate
function packs random-length documents into rows of ``N`` tokens and builds their ``position_ids``
and next-token labels (none across a document boundary).

The model is a tiny causal transformer whose attention runs through
:meth:`maskc.runtime.LoadedFamily.attention`; its documents are arithmetic sequences of random start
and step, which it can continue only by attending within its own document. Each layer binds the
step's data again here, for brevity; a loop that cares binds once per step
(``bound = family.bind(position_ids=...)``) and calls ``bound.attention`` in every layer. On a
CPU the attention runs on the reference backend, on a GPU in the Triton kernels (bf16 autocast).
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

import maskc
from maskc.runtime import LoadedFamily, load_plan

IGNORE = -100  # a label the loss skips
VOCAB = 64


class Documents(Dataset):
    """Random documents: arithmetic sequences ``(a + i * d) mod VOCAB`` of random length, start ``a``
    and step ``d``: from its third token on, a token follows from the two before it, in its own
    document only."""

    def __init__(self, count: int, shortest: int, longest: int, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.docs = []
        for _ in range(count):
            start, step = rng.integers(0, VOCAB, 2)
            length = int(rng.integers(shortest, longest + 1))
            self.docs.append(torch.from_numpy((start + step * np.arange(length)) % VOCAB))

    def __len__(self) -> int:
        return len(self.docs)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.docs[i]


def pack(docs: list[torch.Tensor], rows: int, n: int) -> dict[str, torch.Tensor]:
    """Pack documents in order into ``rows`` rows of ``n`` tokens (a document that does not fit in
    what is left of a row starts the next one, cut to ``n``; those past the last row are dropped):
    ``input_ids``, ``position_ids`` (-1 on padding) and ``labels`` (the next token of the same
    document, else ``IGNORE``)."""
    input_ids = torch.zeros(rows, n, dtype=torch.long)
    position_ids = torch.full((rows, n), -1, dtype=torch.long)
    labels = torch.full((rows, n), IGNORE, dtype=torch.long)
    row, used = 0, 0
    for doc in docs:
        doc = doc[:n]
        if used + len(doc) > n:
            row, used = row + 1, 0
        if row == rows:
            break
        span = slice(used, used + len(doc))
        input_ids[row, span] = doc
        position_ids[row, span] = torch.arange(len(doc))
        labels[row, used: used + len(doc) - 1] = doc[1:]
        used += len(doc)
    return {"input_ids": input_ids, "position_ids": position_ids, "labels": labels}


class Block(nn.Module):
    """Pre-norm transformer block; the attention is the family's, bound to the batch's positions."""

    def __init__(self, family: LoadedFamily, dim: int, heads: int, kv_heads: int):
        super().__init__()
        self.family, self.heads, self.kv_heads, self.head_dim = family, heads, kv_heads, dim // heads
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.q = nn.Linear(dim, dim, bias=False)
        self.kv = nn.Linear(dim, 2 * kv_heads * self.head_dim, bias=False)
        self.out = nn.Linear(dim, dim, bias=False)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        h = self.norm1(x)
        q = self.q(h).view(b, n, self.heads, self.head_dim).transpose(1, 2)
        k, v = self.kv(h).view(b, n, 2, self.kv_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        o = self.family.attention(q, k, v, position_ids=position_ids)  # binds this step's documents
        x = x + self.out(o.transpose(1, 2).reshape(b, n, -1))
        return x + self.mlp(self.norm2(x))


class TinyLM(nn.Module):
    def __init__(self, family: LoadedFamily, n: int, dim: int = 64, heads: int = 4, kv_heads: int = 2, layers: int = 2):
        super().__init__()
        self.embed, self.position = nn.Embedding(VOCAB, dim), nn.Embedding(n, dim)
        self.blocks = nn.ModuleList(Block(family, dim, heads, kv_heads) for _ in range(layers))
        self.head = nn.Linear(dim, VOCAB)

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(input_ids) + self.position(position_ids.clamp(min=0))
        for block in self.blocks:
            x = block(x, position_ids)
        return self.head(x)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--n", type=int, default=512, help="tokens per packed row (the family's max_len)")
    parser.add_argument("--batch", type=int, default=4, help="packed rows per batch")
    parser.add_argument("--plan", help="a documents family plan (maskc compile family.json); default: compile one here")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)

    spec = {"family": "documents", "max_len": args.n, "causal": True}
    family = load_plan(args.plan if args.plan else maskc.compile_family(spec), device)
    if not isinstance(family, LoadedFamily) or family.plan.kind != "documents" or family.plan.max_len < args.n:
        raise SystemExit(f"--plan must be a documents family of max_len >= {args.n}, got {getattr(family, 'plan', family)!r}")
    per_batch = 8 * args.batch  # documents drawn per batch: about twice what fits, the rest dropped by pack
    docs = Documents(count=args.steps * per_batch, shortest=8, longest=args.n // 2)
    loader = DataLoader(docs, batch_size=per_batch, shuffle=True, collate_fn=lambda batch: pack(batch, args.batch, args.n))
    model = TinyLM(family, args.n).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    print(f"{family!r} on {device}, {sum(p.numel() for p in model.parameters())} parameters")

    for step, batch in zip(range(args.steps), loader):
        batch = {name: t.to(device, non_blocking=True) for name, t in batch.items()}
        with autocast:
            logits = model(batch["input_ids"], batch["position_ids"])
        loss = nn.functional.cross_entropy(logits.float().flatten(0, 1), batch["labels"].flatten(), ignore_index=IGNORE)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        documents = int((batch["position_ids"] == 0).sum())
        print(f"step {step:3d}  loss {loss.item():.3f}  documents {documents}")


if __name__ == "__main__":
    main()
