"""Small helpers used everywhere in the project (the x-transformers idioms)."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeGuard, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

T = TypeVar("T")

__all__ = [
    "exists",
    "default",
    "identity",
    "cast_tuple",
    "prob_mask_like",
    "l2norm",
    "once",
    "eval_decorator",
    "frozen",
]


def exists(x: T | None) -> TypeGuard[T]:
    """True when `x` is not None (a type guard, so `if exists(x):` narrows `x` the way `x is not None` does)."""
    return x is not None


def default(x: T | None, d: T | Callable[[], T]) -> T:
    """`x` if it exists, else `d` (called first when it is a callable, so defaults can be lazy)."""
    if x is not None:
        return x
    return d() if callable(d) else d


def identity(t: T, *args: Any, **kwargs: Any) -> T:
    return t


def cast_tuple(x: Any, length: int = 1) -> tuple:
    """`x` as a tuple: tuples/lists are converted as they are, anything else is repeated `length` times."""
    if isinstance(x, tuple):
        return x
    if isinstance(x, list):
        return tuple(x)
    return (x,) * length


def prob_mask_like(shape: int | Sequence[int], prob: float, device: torch.device | str | None = None) -> Tensor:
    """A boolean tensor of `shape` where each entry is True with probability `prob` (exact for 0 and 1)."""
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    if prob == 1:
        return torch.ones(shape, device=device, dtype=torch.bool)
    if prob == 0:
        return torch.zeros(shape, device=device, dtype=torch.bool)
    return torch.zeros(shape, device=device).float().uniform_(0, 1) < prob


def l2norm(t: Tensor, dim: int = -1, eps: float = 1e-12) -> Tensor:
    """Unit-normalise `t` along `dim`."""
    return F.normalize(t, dim=dim, eps=eps)


def once(fn: Callable[..., T]) -> Callable[..., T | None]:
    """Wrap `fn` so that only its first call runs (e.g. a warning printed once per wrapped function object)."""
    called = False

    @functools.wraps(fn)
    def inner(*args: Any, **kwargs: Any) -> T | None:
        nonlocal called
        if called:
            return None
        called = True
        return fn(*args, **kwargs)

    return inner


def eval_decorator(fn: Callable[..., T]) -> Callable[..., T]:
    """Decorator for methods of `nn.Module`: run the call in eval mode and restore the previous mode after."""

    @functools.wraps(fn)
    def inner(model: nn.Module, *args: Any, **kwargs: Any) -> T:
        was_training = model.training
        model.eval()
        try:
            return fn(model, *args, **kwargs)
        finally:
            model.train(was_training)

    return inner


@contextlib.contextmanager
def frozen(module: nn.Module | None) -> Iterator[None]:
    """Turns off gradients for `module`'s parameters for the duration of the block, then restores each parameter's
    own `requires_grad` (so parameters frozen before stay frozen). A no-op for None.

    Why: in a GAN's generator step the loss flows *through* the discriminator into the generator but must leave no
    gradients on the discriminator; and an optimizer built inside the block skips the discriminator's parameters.
    """
    if module is None:
        yield
        return
    params = list(module.parameters())
    flags = [param.requires_grad for param in params]
    module.requires_grad_(False)
    try:
        yield
    finally:
        for param, flag in zip(params, flags):
            param.requires_grad_(flag)
