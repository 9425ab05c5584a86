"""maskc.measure: measurement on a GPU, above the compiler and the runtime.

``reference`` (the float64 reference attention and the error measure every accuracy number comes
from), the benchmark behind ``maskc bench`` (``bench``, with its mask set in ``masks``, timing in
``timing``, the FlexAttention and SDPA adapters in ``adapters``, output in ``report``),
calibration of the cost model's profile constants (``calibrate``, ``experiments``, the fits in
``fit``) and the kernels' GPU self-check (``selfcheck``, run as ``python -m
maskc.measure.selfcheck``). Nothing in the compiler or the runtime imports this package; the CLI
imports it inside the commands that need it.
"""
