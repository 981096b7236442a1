"""Memory savers: chunked feed-forward / attention, slicing, reversible layers and activation checkpointing."""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["chunked_feedforward", "apply_in_slices"]


def chunked_feedforward(fn: Callable[[Tensor], Tensor], x: Tensor, chunk_size: int | None, dim: int = 1) -> Tensor:
    """`fn(x)` computed on chunks of `chunk_size` along `dim` and concatenated (for position-wise `fn` only)."""
    if chunk_size is None or x.shape[dim] <= chunk_size:
        return fn(x)
    return torch.cat([fn(chunk) for chunk in x.split(chunk_size, dim=dim)], dim=dim)


def apply_in_slices(fn: Callable[[Tensor], Tensor], x: Tensor, slice_size: int | None, dim: int = 0) -> Tensor:
    """`fn(x)` computed on slices of `slice_size` along `dim` (e.g. VAE-decoding many frames a few at a time)."""
    return chunked_feedforward(fn, x, slice_size, dim=dim)
