"""``attn_implementation="maskc"`` for Hugging Face transformers models.

Importing this module registers ``"maskc"`` in both of transformers' registries: the attention
function (``AttentionInterface``) and its mask function (``AttentionMaskInterface``; without one,
transformers builds no mask for an unknown implementation and the attention would see none).

What a forward may give, and what runs:

- **Packed batches by** ``position_ids`` (each document's positions restart at 0; no
  ``attention_mask``): the mask function returns no mask, and the attention binds the documents
  family (``maskc.integrations.families``: causal as the module is, cut to its ``sliding_window``
  if it has one) to ``position_ids`` and runs maskc's operator. In eager mode the binding is made
  once per forward and reused by every layer (the layers share the ``position_ids`` tensor); under
  ``torch.compile`` each layer binds (microseconds, on the device) inside the compiled graph.
  Without ``position_ids``, each row is one causal sequence.
- **An explicit mask** (a 2-D padding ``attention_mask``, or a 4-D boolean mask given as is): the
  mask function builds transformers' dense boolean mask ``[B, 1, Nq, Nk]`` and the attention runs
  ``scaled_dot_product_attention`` with it — exact, at dense cost (a fallback, not maskc's kernels).
  Rows that see no key give zeros, as everywhere in maskc.

Not supported (refused): attention dropout, and key/value caches whose lengths differ from the
queries' (decoding) on the packed path; mask overlays that transformers folds into the mask
function (``or_mask_function``/``and_mask_function``, e.g. image tokens) reach this path only as an
explicit mask.
"""

from __future__ import annotations

import torch
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from maskc.integrations import families
from maskc.runtime import ops
from maskc.runtime.bound import BoundPlan

NAME = "maskc"


def maskc_mask(batch_size: int, q_length: int, kv_length: int, q_offset: int = 0, kv_offset: int = 0,
               mask_function=None, attention_mask: torch.Tensor | None = None, **kwargs) -> torch.Tensor | None:
    """The mask function of ``attn_implementation="maskc"``: None where the attention makes the mask
    itself from ``position_ids`` (no padding mask, queries and keys alike), else transformers' exact
    dense boolean mask for the SDPA fallback."""
    if attention_mask is None and q_offset == 0 and kv_offset == 0 and q_length == kv_length:
        return None
    options = {} if mask_function is None else {"mask_function": mask_function}
    return sdpa_mask(batch_size=batch_size, q_length=q_length, kv_length=kv_length, q_offset=q_offset, kv_offset=kv_offset,
                     attention_mask=attention_mask, allow_is_causal_skip=False, **options, **kwargs)


def maskc_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                    attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0,
                    position_ids: torch.Tensor | None = None, sliding_window: int | None = None,
                    **kwargs) -> tuple[torch.Tensor, None]:
    """The attention function of ``attn_implementation="maskc"``: ``query [B, Hq, N, D]``, ``key``/``value``
    ``[B, Hkv, Nk, D]``; returns ``([B, N, Hq, D], None)`` as transformers' attention functions do."""
    if dropout:
        raise ValueError(f"attn_implementation='maskc' has no attention dropout (got {dropout}); set the config's attention_dropout to 0")
    if attention_mask is not None:
        out = masked_sdpa(query, key, value, attention_mask, scaling)
    else:
        if key.shape[2] != query.shape[2]:
            raise ValueError(f"attn_implementation='maskc' runs packed training and prefill: {query.shape[2]} queries over "
                             f"{key.shape[2]} keys (a key/value cache) need an explicit attention_mask")
        window = sliding_window if sliding_window is not None else getattr(module, "sliding_window", None)
        out = _bound(query, position_ids, getattr(module, "is_causal", True), window).attention(query, key, value, scale=scaling)
    return out.transpose(1, 2).contiguous(), None


def masked_sdpa(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor, scaling: float | None) -> torch.Tensor:
    """SDPA under a boolean mask (True = attend) broadcastable to ``[B, Hq, Nq, Nk]``, rows that see no
    key giving zeros (and zero gradients) instead of NaN."""
    if mask.dtype != torch.bool or mask.dim() != 4:
        raise ValueError(f"attn_implementation='maskc' takes a 4-D boolean attention mask (True = attend), got {mask.dtype} "
                         f"{list(mask.shape)}")
    seen = mask.any(-1, keepdim=True)
    out = torch.nn.functional.scaled_dot_product_attention(query, key, value, attn_mask=mask | ~seen, scale=scaling,
                                                           enable_gqa=query.shape[1] != key.shape[1])
    return out * seen


_last: list = []  # eager mode: (position_ids, its version, causal, window, the bound plan) of the last binding


def _bound(query: torch.Tensor, position_ids: torch.Tensor | None, causal: bool, window: int | None) -> BoundPlan:
    """The documents family bound to ``position_ids`` (``[B or 1, N]``), for a query ``[B, H, N, D]``;
    bound once for all layers of an eager forward (the same tensor, unchanged)."""
    b, n = query.shape[0], query.shape[2]
    if position_ids is None:
        position_ids = torch.arange(n, device=query.device)[None]
    if position_ids.dim() != 2 or position_ids.shape[-1] != n:
        raise ValueError(f"position_ids must be [B, {n}] for {n} tokens, got {list(position_ids.shape)}")
    traced = ops.traced(query)
    if not traced and _last and _last[0][0] is position_ids and _last[0][1:4] == (position_ids._version, causal, window):
        return _last[0][4]
    ids = position_ids.expand(b, n) if position_ids.shape[0] == 1 else position_ids
    bound = families.documents(causal, window, n).bind(position_ids=ids)
    if not traced:
        _last[:] = [(position_ids, position_ids._version, causal, window, bound)]
    return bound


def register(name: str = NAME) -> None:
    """Register the attention and mask functions as ``attn_implementation=name`` (done on import as ``"maskc"``)."""
    AttentionInterface.register(name, maskc_attention)
    AttentionMaskInterface.register(name, maskc_mask)


register()
