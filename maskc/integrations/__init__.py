"""Thin layers that put maskc's attention operator into other stacks.

- :mod:`maskc.integrations.transformers`: ``attn_implementation="maskc"`` for Hugging Face models
  (needs ``transformers``: ``pip install 'maskc[hf]'``).
- :mod:`maskc.integrations.varlen`: :func:`varlen_attention`, flash-attn's ``[total, H, D]`` call on
  packed documents.
- :mod:`maskc.integrations.families`: the documents family plans both bind, made once per process.
"""
