"""attn_implementation="maskc" in a tiny randomly initialised Llama (Hugging Face transformers):
packed batches by position_ids and explicit 4-D masks give the logits and gradients of
attn_implementation="sdpa" with the equivalent dense mask. Skipped without transformers."""

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")

from maskc.integrations import transformers as maskc_hf  # noqa: E402  (registers "maskc")

N = 48


def tiny_llama(attn: str, seed: int = 0):
    config = transformers.LlamaConfig(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                                      attn_implementation=attn)
    torch.manual_seed(seed)
    return transformers.LlamaForCausalLM(config).float()


def packed(lengths_per_row: list[list[int]]):
    """position_ids restarting at 0 per document, and the dense block-diagonal causal mask [B, 1, N, N]."""
    position_ids = torch.stack([torch.cat([torch.arange(n) for n in row]) for row in lengths_per_row])
    doc = torch.stack([torch.cat([torch.full((n,), d) for d, n in enumerate(row)]) for row in lengths_per_row])
    causal = torch.ones(N, N, dtype=torch.bool).tril()
    return position_ids, ((doc[:, :, None] == doc[:, None, :]) & causal)[:, None]


def logits_and_grads(model, input_ids, **inputs):
    model.zero_grad()
    logits = model(input_ids=input_ids, **inputs).logits
    torch.manual_seed(1)
    (logits * torch.randn_like(logits)).sum().backward()
    return logits.detach(), {name: p.grad.clone() for name, p in model.named_parameters()}


def assert_close(got, want):
    logits, grads = got
    assert torch.allclose(logits, want[0], atol=1e-4, rtol=1e-4), (logits - want[0]).abs().max()
    for name, g in grads.items():
        assert torch.allclose(g, want[1][name], atol=1e-4, rtol=1e-3), (name, (g - want[1][name]).abs().max())


@pytest.fixture
def input_ids():
    return torch.from_numpy(np.random.default_rng(0).integers(0, 97, (2, N)))


def test_packed_position_ids_match_sdpa_with_the_block_diagonal_mask(input_ids):
    position_ids, mask = packed([[10, 30, 8], [48]])
    want = logits_and_grads(tiny_llama("sdpa"), input_ids, attention_mask=mask, position_ids=position_ids)
    got = logits_and_grads(tiny_llama("maskc"), input_ids, position_ids=position_ids)
    assert_close(got, want)


def test_an_explicit_4d_mask_runs_exactly(input_ids):
    """A 4-D boolean mask (documents with a bidirectional prefix) takes the exact SDPA fallback."""
    _, mask = packed([[20, 28], [5, 43]])
    mask = mask.clone()
    mask[:, :, :6, :6] = True
    want = logits_and_grads(tiny_llama("sdpa"), input_ids, attention_mask=mask)
    got = logits_and_grads(tiny_llama("maskc"), input_ids, attention_mask=mask)
    assert_close(got, want)


def test_rows_that_see_nothing_give_zeros():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 8, 4, generator=g, requires_grad=True) for _ in range(3))
    mask = torch.ones(1, 1, 8, 8, dtype=torch.bool).tril()
    mask[0, 0, 3] = False
    out = maskc_hf.masked_sdpa(q, k, v, mask, None)
    out.sum().backward()
    assert torch.equal(out[0, :, 3], torch.zeros(2, 4)) and torch.equal(q.grad[0, :, 3], torch.zeros(2, 4))
    assert torch.isfinite(k.grad).all() and torch.isfinite(v.grad).all()


def test_one_binding_serves_every_layer_of_an_eager_forward(input_ids, monkeypatch):
    position_ids, _ = packed([[16, 32], [40, 8]])
    family = maskc_hf.families.documents(True, None, N)
    binds = []
    original = type(family).bind
    monkeypatch.setattr(type(family), "bind", lambda self, *a, **k: binds.append(1) or original(self, *a, **k))
    tiny_llama("maskc")(input_ids=input_ids, position_ids=position_ids)
    assert len(binds) == 1


def test_dropout_is_refused(input_ids):
    model = tiny_llama("maskc")
    model.config.attention_dropout = 0.1
    for layer in model.model.layers:
        layer.self_attn.attention_dropout = 0.1
    with pytest.raises(ValueError, match="dropout"):
        model.train()(input_ids=input_ids)
