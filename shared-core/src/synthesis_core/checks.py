"""Validation of user input with errors that name the argument, what was received and what was expected.

Every public entry point of the project checks its inputs with these helpers instead of bare asserts, e.g.

    check_tensor('videos', videos, shape=('batch', 3, 8, 32, 32),
                 names=('batch', 'channels', 'frames', 'height', 'width'))

raises `ValueError: videos: expected shape (batch, 3, 8, 32, 32) (batch, channels, frames, height, width),
got (2, 3, 5, 32, 32)`.
"""
from __future__ import annotations

import math
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
    "check_image_size",
    "check_pixel_batch",
    "pixels_to_symmetric",
    "PIXEL_INPUT_RANGES",
]

# how a model reads pixel batches: 'unit' = [0, 1], 'symmetric' = [-1, 1], 'auto' = [0, 1] unless a value is negative
PIXEL_INPUT_RANGES = ("unit", "symmetric", "auto")

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


def check_image_size(name: str, image_size: Any) -> tuple[int, int]:
    """An int `s` or a `(height, width)` pair of positive ints -> `(height, width)`."""
    if isinstance(image_size, int) and not isinstance(image_size, bool):
        check_positive_int(name, image_size)
        return image_size, image_size
    if isinstance(image_size, (tuple, list)) and len(image_size) == 2:
        for size in image_size:
            check_positive_int(name, size)
        return int(image_size[0]), int(image_size[1])
    raise TypeError(f"{name}: expected an int or a (height, width) pair, got {image_size!r}")


def check_pixel_batch(
    name: str,
    x: Any,
    *,
    channels: int,
    image_size: tuple[int, int],
    frames: int | None = None,
    allow_images: bool = True,
) -> Tensor:
    """Check a floating batch of videos `(b, channels, frames, h, w)` (any frame count when `frames` is None) or,
    with `allow_images`, of images `(b, channels, h, w)`, at `image_size = (h, w)`; returns it unchanged."""
    height, width = image_size
    check_tensor(name, x, ndim=(4, 5) if allow_images else 5, dtype_floating=True)
    if x.ndim == 4:
        return check_tensor(name, x, shape=("batch", channels, height, width),
                            names=("batch", "channels", "height", "width"))
    return check_tensor(name, x, shape=("batch", channels, "frames" if frames is None else frames, height, width),
                        names=("batch", "channels", "frames", "height", "width"))


def pixels_to_symmetric(
    name: str,
    x: Tensor,
    *,
    input_range: str = "unit",
    tolerance: float = 0.0,
) -> tuple[Tensor, bool]:
    """Pixels at a model's API -> `[-1, 1]` for the network, with a clear error when they are out of range.

    `input_range`: 'unit' reads `[0, 1]`, 'symmetric' reads `[-1, 1]`, 'auto' reads `[0, 1]` unless the batch
    holds a negative value (then `[-1, 1]`). Values up to `tolerance` outside the range (resampling overshoot) are
    accepted and clamped. Returns `(pixels in [-1, 1], whether the batch was read as [-1, 1])`.
    """
    check_choice("input_range", input_range, PIXEL_INPUT_RANGES)
    check_in_range("tolerance", tolerance, 0.0, None)
    check_tensor(name, x, dtype_floating=True)
    if input_range == "unit" and tolerance == 0:
        # the strict case is check_tensor's own range check (same message as every other value check)
        check_tensor(name, x, value_range=(0.0, 1.0))
        return x * 2 - 1, False
    if x.numel() == 0:
        return x * 2 - 1 if input_range != "symmetric" else x, input_range == "symmetric"
    low, high = torch.stack(x.detach().float().aminmax()).tolist()  # one synchronisation for both bounds
    if not (math.isfinite(low) and math.isfinite(high)):
        raise ValueError(f"{name}: expected finite pixel values, got NaN or inf")
    symmetric = input_range == "symmetric" or (input_range == "auto" and low < 0)
    lower_bound = -1.0 if symmetric else 0.0
    if low < lower_bound - tolerance or high > 1.0 + tolerance:
        expected = {"unit": "[0, 1]", "symmetric": "[-1, 1]", "auto": "[0, 1] (or [-1, 1])"}[input_range]
        raise ValueError(f"{name}: expected pixel values in {expected}, got values in [{low:.4g}, {high:.4g}]")
    if symmetric:
        return x.clamp(-1.0, 1.0), True
    return x.clamp(0.0, 1.0) * 2 - 1, False
