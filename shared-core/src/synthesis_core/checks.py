"""Validation of user input with errors that name the argument, what was received and what was expected.

Every public entry point of the project checks its inputs with these helpers instead of bare asserts, e.g.

    check_tensor('videos', videos, shape=('batch', 3, 8, 32, 32),
                 names=('batch', 'channels', 'frames', 'height', 'width'))

raises `ValueError: videos: expected shape (batch, 3, 8, 32, 32) (batch, channels, frames, height, width),
got (2, 3, 5, 32, 32)`.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "check_tensor",
    "check_batch_match",
    "check_in_range",
    "check_choice",
    "check_positive_int",
    "check_divisible",
]

ShapeEntry = int | str | None


def _format_shape(shape: Sequence[ShapeEntry]) -> str:
    parts = ["*" if entry is None else str(entry) for entry in shape]
    inner = ", ".join(parts)
    return f"({inner},)" if len(parts) == 1 else f"({inner})"


def _format_received(shape: Sequence[int]) -> str:
    return _format_shape(list(shape))


def check_tensor(
    name: str,
    x: Any,
    *,
    ndim: int | Sequence[int] | None = None,
    shape: Sequence[ShapeEntry] | None = None,
    names: Sequence[str] | None = None,
    dtype_floating: bool = False,
    value_range: tuple[float | None, float | None] | None = None,
) -> Tensor:
    """Check that `x` is a tensor of the expected rank / shape / dtype / value range and return it.

    `shape` entries are ints (must match), None (any size) or strings naming the dimension (any size; the name
    is used in the message). `names` optionally names every dimension for the message. `ndim` may be one int or a
    sequence of accepted ranks. `value_range=(low, high)` checks min/max inclusively (None = unbounded).
    Raises `TypeError` when `x` is not a tensor (or not floating when `dtype_floating`), `ValueError` otherwise.
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")

    expected_names = f" {_format_shape(list(names))}" if names is not None else ""

    if ndim is not None:
        accepted = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if x.ndim not in accepted:
            wanted = " or ".join(str(n) for n in accepted)
            raise ValueError(
                f"{name}: expected a {wanted}-dimensional tensor{expected_names}, "
                f"got {x.ndim} dimensions with shape {_format_received(x.shape)}"
            )

    if shape is not None:
        shape = tuple(shape)
        matches = len(shape) == x.ndim and all(
            not isinstance(expected, int) or expected == actual for expected, actual in zip(shape, x.shape)
        )
        if not matches:
            raise ValueError(
                f"{name}: expected shape {_format_shape(shape)}{expected_names}, got {_format_received(x.shape)}"
            )

    if dtype_floating and not (x.is_floating_point() or x.is_complex()):
        raise TypeError(f"{name}: expected a floating point tensor, got dtype {x.dtype}")

    if value_range is not None and x.numel() > 0:
        low, high = value_range
        # one synchronisation for both bounds; value checks are only used at public boundaries, never in hot paths
        values = x.detach()
        if values.is_floating_point() and not torch.isfinite(values).all():
            raise ValueError(f"{name}: expected finite values in [{low}, {high}], got NaN or inf")
        minimum, maximum = values.min().item(), values.max().item()
        if (low is not None and minimum < low) or (high is not None and maximum > high):
            raise ValueError(
                f"{name}: expected values in [{low}, {high}], got values in [{minimum:.4g}, {maximum:.4g}]"
            )
    return x


def _batch_size(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, Tensor):
        if value.ndim == 0:
            return None
        return value.shape[0]
    if isinstance(value, (list, tuple)):
        return len(value)
    raise TypeError(f"check_batch_match: expected tensors or lists, got {type(value).__name__}")


def check_batch_match(**named_tensors_or_lists: Any) -> int | None:
    """Check that every given tensor (first dim) or list (length) has the same batch size; returns it.

    None values are ignored (optional inputs). Raises `ValueError` naming each argument and its batch size.
    """
    sizes = {name: _batch_size(value) for name, value in named_tensors_or_lists.items()}
    sizes = {name: size for name, size in sizes.items() if size is not None}
    if len(set(sizes.values())) > 1:
        described = ", ".join(f"{name}={size}" for name, size in sizes.items())
        raise ValueError(f"batch sizes must match, got {described}")
    return next(iter(sizes.values()), None)


def check_in_range(name: str, value: Any, low: float | None, high: float | None) -> Any:
    """Check `low <= value <= high` (a None bound is open) for a Python number; returns the value."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name}: expected a number in [{low}, {high}], got {type(value).__name__} {value!r}")
    if value != value or (low is not None and value < low) or (high is not None and value > high):
        raise ValueError(f"{name}: expected a value in [{low}, {high}], got {value!r}")
    return value


def check_choice(name: str, value: Any, choices: Iterable[Any]) -> Any:
    """Check that `value` is one of `choices`; returns it."""
    choices = tuple(choices)
    if value not in choices:
        listed = ", ".join(repr(choice) for choice in choices)
        raise ValueError(f"{name}: expected one of {listed}, got {value!r}")
    return value


def check_positive_int(name: str, value: Any, *, allow_zero: bool = False) -> int:
    """Check that `value` is an int > 0 (>= 0 with `allow_zero`); returns it."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name}: expected an int, got {type(value).__name__} {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name}: expected an int {bound}, got {value}")
    return value


def check_divisible(name: str, value: int, divisor: int, *, divisor_name: str | None = None) -> int:
    """Check that `value` is divisible by `divisor`; returns it."""
    if value % divisor != 0:
        by = f"{divisor_name} ({divisor})" if divisor_name else str(divisor)
        raise ValueError(f"{name}: expected a multiple of {by}, got {value}")
    return value
