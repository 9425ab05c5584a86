"""Argument checks of the binders: what can be checked without reading the data, and, on request,
what can only be checked by reading it.

A binder sees the step's tensors on the GPU. Their shapes, dtypes and devices are metadata and are
always checked (:func:`index_tensor`, :func:`flag_tensor`, :func:`same_device`), so a wrong call
fails at once with a :class:`BindError` naming the argument. Their values cannot be read without a
host synchronisation, so the binders never rely on them: whatever the values, every output index
stays in bounds and every permutation is a permutation (the values only change which mask is
bound). Checking the values themselves is opt-in (``check=True`` on the binders whose inputs have
rules, through :func:`first_violation`): it synchronises and is meant for debugging and tests.
"""

from __future__ import annotations

import torch


class BindError(ValueError):
    """A binder's argument is malformed: wrong type, rank, dtype, device or (with ``check=True``) value."""


def index_tensor(value: object, name: str, ndim: int) -> torch.Tensor:
    """``value`` as an integer tensor of ``ndim`` dimensions with at least one element per dimension."""
    tensor = _tensor(value, name, ndim)
    if tensor.dtype.is_floating_point or tensor.dtype.is_complex or tensor.dtype == torch.bool:
        raise BindError(f"{name} must hold integers, got dtype {tensor.dtype}")
    return tensor


def flag_tensor(value: object, name: str, ndim: int) -> torch.Tensor:
    """``value`` as a bool tensor of ``ndim`` dimensions with at least one element per dimension."""
    tensor = _tensor(value, name, ndim)
    if tensor.dtype != torch.bool:
        raise BindError(f"{name} must be a bool tensor, got dtype {tensor.dtype}")
    return tensor


def _tensor(value: object, name: str, ndim: int) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise BindError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if value.dim() != ndim or 0 in value.shape:
        raise BindError(f"{name} must have {ndim} non-empty dimensions, got shape {list(value.shape)}")
    return value


def same_shape(tensor: torch.Tensor, name: str, shape: torch.Size, like: str) -> None:
    """Refuse ``tensor`` unless it has ``shape`` (that of the argument ``like``)."""
    if tensor.shape != shape:
        raise BindError(f"{name} has shape {list(tensor.shape)}, but {like} has {list(shape)}")


def same_device(tensor: torch.Tensor, name: str, device: torch.device, like: str) -> None:
    """Refuse ``tensor`` unless it lives on ``device`` (that of the argument ``like``)."""
    if tensor.device != device:
        raise BindError(f"{name} is on {tensor.device}, but {like} is on {device}")


def positive(value: object, name: str) -> int:
    """``value`` as a positive Python int (a static bound of the family, never a tensor)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise BindError(f"{name} must be a positive integer, got {value!r}")
    return value


def first_violation(bad: torch.Tensor, name: str, rule: str, values: torch.Tensor) -> None:
    """Raise a BindError naming the first index where ``bad`` holds, with its value (a host sync)."""
    flat = bad.reshape(-1)
    if bool(flat.any()):
        index = int(flat.to(torch.int8).argmax())
        where = [int(i) for i in torch.unravel_index(torch.tensor(index), bad.shape)]
        raise BindError(f"{name}{where} = {int(values.reshape(-1)[index])}; {rule}")
