"""Validation of user input with errors that name the argument, what was received and what was expected.

Every public entry point of the project checks its inputs with these helpers instead of bare asserts, e.g.

    check_tensor('videos', videos, shape=('batch', 3, 8, 32, 32),
                 names=('batch', 'channels', 'frames', 'height', 'width'))

raises `ValueError: videos: expected shape (batch, 3, 8, 32, 32) (batch, channels, frames, height, width),
got (2, 3, 5, 32, 32)`.

Model entry points (forward / loss, sample / generate, encode / decode of every package) check their tensors with
`check_pixels` and `check_embeddings` and their sampling settings with `check_guidance_scale`, `check_steps` and
`check_temperature`, so that one bad batch gives a clear error instead of a NaN loss or a poisoned codebook.

The pixel rule, the same in every package (`check_pixels`):

- dtypes: float32 is used as it is; float16, bfloat16 and float64 are cast to the model's parameter dtype; uint8
  is read as 0-255 and divided by 255; any other dtype (int64, bool, ...) is refused with a TypeError naming it.
- values: NaN or inf anywhere is refused (ValueError). Floats in [0, 1] are used as they are. A batch with
  negative values is read as the [-1, 1] convention: it is mapped to [0, 1] (or kept in [-1, 1] when the model
  works there) and values outside [-1, 1] (e.g. `torch.randn` input) are clamped, with one warning per call site.
  A batch without negatives whose values go above 1 (e.g. 0-255 floats), or any batch far outside [-1, 1]
  (|x| > 16), is refused with a ValueError saying to divide by 255 or to pass uint8. Overshoot up to
  `PIXEL_TOLERANCE` = 1e-3 (resampling) is clamped silently, and does not count as a negative value.
- the batch must be on the model's device (ValueError naming both devices) and hold at least one sample.
"""

from __future__ import annotations

import logging
import math
import warnings
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
    "PIXEL_DTYPES",
    "PIXEL_TOLERANCE",
    "check_device",
    "check_not_empty",
    "check_pixels",
    "check_embeddings",
    "check_guidance_scale",
    "check_steps",
    "check_temperature",
]

logger = logging.getLogger(__name__)

# how a model reads pixel batches: 'unit' = [0, 1], 'symmetric' = [-1, 1], 'auto' = [0, 1] unless a value is negative
PIXEL_INPUT_RANGES = ("unit", "symmetric", "auto")
# what `check_pixels` accepts: floats (cast to the model's dtype) and 0-255 bytes
PIXEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.uint8)
# pixels this far outside their range are resampling overshoot: clamped without a word
PIXEL_TOLERANCE = 1e-3
# beyond this magnitude a batch is no [-1, 1] data with noise on it but another scale (bytes, centred bytes)
_PIXEL_SCALE_LIMIT = 16.0

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
    """Check a batch of videos `(b, channels, frames, h, w)` (any frame count when `frames` is None) or, with
    `allow_images`, of images `(b, channels, h, w)`, at `image_size = (h, w)`, in one of the `PIXEL_DTYPES`;
    returns it unchanged (`check_pixels` then checks and converts its values)."""
    height, width = image_size
    check_tensor(name, x, ndim=(4, 5) if allow_images else 5)
    _check_pixel_dtype(name, x)
    if x.ndim == 4:
        return check_tensor(
            name, x, shape=("batch", channels, height, width), names=("batch", "channels", "height", "width")
        )
    return check_tensor(
        name,
        x,
        shape=("batch", channels, "frames" if frames is None else frames, height, width),
        names=("batch", "channels", "frames", "height", "width"),
    )


def pixels_to_symmetric(
    name: str,
    x: Tensor,
    *,
    input_range: str = "unit",
    tolerance: float = 0.0,
) -> tuple[Tensor, bool]:
    """Pixels -> `[-1, 1]`, strictly: out-of-range values are refused, never clamped. Model entry points use
    `check_pixels` (the package-wide rule, which also converts dtypes and checks the device); this is for callers
    that must reject anything outside an explicit range.

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
    low, high = _finite_bounds(name, x, "pixel values")
    symmetric = input_range == "symmetric" or (input_range == "auto" and low < 0)
    lower_bound = -1.0 if symmetric else 0.0
    if low < lower_bound - tolerance or high > 1.0 + tolerance:
        expected = {"unit": "[0, 1]", "symmetric": "[-1, 1]", "auto": "[0, 1] (or [-1, 1])"}[input_range]
        raise ValueError(f"{name}: expected pixel values in {expected}, got values in [{low:.4g}, {high:.4g}]")
    if symmetric:
        return x.clamp(-1.0, 1.0), True
    return x.clamp(0.0, 1.0) * 2 - 1, False


# model entry points: pixels, embeddings and sampling settings


def _same_device(a: torch.device, b: torch.device) -> bool:
    # `torch.device("cuda")` (no index) stands for the current device, which is the one a model reports
    return a.type == b.type and (a.index is None or b.index is None or a.index == b.index)


def check_device(name: str, x: Tensor, device: torch.device | str | None) -> Tensor:
    """Check that tensor `x` is on `device` (None: no check); returns it.

    Inputs are not moved silently: a batch on the wrong device is usually a data-loading bug (and a copy per step
    would hide it), so the error names both devices and the fix.
    """
    if device is None:
        return x
    device = torch.device(device)
    if not _same_device(x.device, device):
        raise ValueError(
            f"{name}: expected a tensor on the model's device {device}, got one on {x.device}; "
            f"move it with {name}.to({str(device)!r})"
        )
    return x


def _check_pixel_dtype(name: str, x: Tensor) -> None:
    if x.dtype not in PIXEL_DTYPES:
        raise TypeError(
            f"{name}: expected a floating point tensor (float32, float16, bfloat16 or float64) with pixels "
            f"in [0, 1], or uint8 pixels in [0, 255], got dtype {x.dtype}"
        )


def check_not_empty(name: str, x: Tensor) -> Tensor:
    """Check that the batched tensor `x` holds at least one sample (an empty batch otherwise fails deep inside, e.g.
    as a ZeroDivisionError in einops); returns it."""
    if x.ndim == 0:
        raise ValueError(f"{name}: expected a batched tensor (batch, ...), got a scalar")
    if x.shape[0] == 0:
        raise ValueError(
            f"{name}: expected at least one sample, got an empty batch of shape {_format_received(x.shape)}"
        )
    return x


def _target_dtype(name: str, dtype: torch.dtype | None) -> torch.dtype:
    if dtype is None:
        return torch.get_default_dtype()
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"{name}: the model's dtype must be a floating torch.dtype, got {dtype!r}")
    return dtype


def _finite_bounds(name: str, x: Tensor, what: str) -> tuple[float, float]:
    """`(min, max)` of a non-empty tensor in one synchronisation; ValueError when it holds NaN or inf."""
    values = x.detach()
    finite, low, high = torch.stack(
        (torch.isfinite(values).all().float(), values.min().float(), values.max().float())
    ).tolist()
    if not finite:
        bad = int((~torch.isfinite(values)).sum())
        raise ValueError(f"{name}: expected finite {what}, got NaN or inf in {bad} of {values.numel()} values")
    return low, high


_OUT_OF_RANGE_HINT = "0-255 pixels must be divided by 255 (or passed as a uint8 tensor)"


def check_pixels(
    name: str,
    x: Any,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    input_range: str = "auto",
    output_range: str = "unit",
    tolerance: float = PIXEL_TOLERANCE,
) -> Tensor:
    """Check the pixel values of a batch at a model's API and convert them for the model (the rule of the module
    docstring); shapes are the caller's (`check_pixel_batch`, `check_tensor`). Returns the pixels in `dtype`
    (default: torch's default dtype), in [0, 1] with `output_range='unit'` or [-1, 1] with 'symmetric'.

    - `device`: the model's device; a batch elsewhere is refused (ValueError naming both devices).
    - `input_range`: 'auto' (the rule), 'unit' ([0, 1] only: negative values are refused) or 'symmetric' (the
      batch is always read as [-1, 1], e.g. `Imagen(auto_normalize_img=False)`).
    Raises TypeError for a non-tensor or another dtype than `PIXEL_DTYPES`, ValueError for an empty batch, NaN / inf,
    or values out of range as described. Warns (UserWarning, once per call site) when values were clamped.
    """
    check_choice("input_range", input_range, PIXEL_INPUT_RANGES)
    check_choice("output_range", output_range, ("unit", "symmetric"))
    check_tensor(name, x)
    _check_pixel_dtype(name, x)
    check_device(name, x, device)
    check_not_empty(name, x)
    dtype = _target_dtype("dtype", dtype)

    if x.dtype == torch.uint8:
        # bytes are always 0-255: exact, nothing to guess
        unit = x.to(dtype) / 255
        return unit if output_range == "unit" else unit * 2 - 1

    low, high = _finite_bounds(name, x, "pixel values")
    got = f"got values in [{low:.4g}, {high:.4g}]"
    symmetric = input_range == "symmetric" or (input_range == "auto" and low < -tolerance)
    if not symmetric:
        if low < -tolerance:
            raise ValueError(f"{name}: expected pixel values in [0, 1], {got}")
        if high > 1.0 + tolerance:
            also = " (or [-1, 1])" if input_range == "auto" else ""
            raise ValueError(f"{name}: expected pixel values in [0, 1]{also}, {got}; {_OUT_OF_RANGE_HINT}")
        unit = x.to(dtype).clamp(0.0, 1.0)
        return unit if output_range == "unit" else unit * 2 - 1

    if max(-low, high) > _PIXEL_SCALE_LIMIT:
        raise ValueError(
            f"{name}: expected pixel values in [0, 1] (or [-1, 1]), {got}, far outside both; {_OUT_OF_RANGE_HINT}"
        )
    if low < -1.0 - tolerance or high > 1.0 + tolerance:
        # a constant message: Python shows it once per call site (the model's entry point), not once per batch
        warnings.warn(
            f"{name}: pixel values outside [-1, 1] were clamped. Pixels are expected in [0, 1]; a batch "
            "with negative values is read as [-1, 1] (e.g. torch.randn input), and values outside that "
            "range are clamped to it.",
            UserWarning,
            stacklevel=2,
        )
    logger.debug("%s: negative pixel values, read as [-1, 1] (%s)", name, got)
    symmetric_pixels = x.to(dtype).clamp(-1.0, 1.0)
    return (symmetric_pixels + 1) * 0.5 if output_range == "unit" else symmetric_pixels


def check_embeddings(
    name: str,
    x: Any,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """Check conditioning vectors (text embeddings `(b, n, d)`, condition vectors `(b, d)`, quantized tokens) at a
    model's API: a floating tensor, on `device`, with at least one sample, all values finite. float16 / bfloat16 /
    float64 are cast to `dtype` (the model's parameter dtype; None keeps the dtype). Shapes are the caller's.
    Returns the (cast) tensor."""
    check_tensor(name, x)
    if not x.is_floating_point():
        raise TypeError(
            f"{name}: expected a floating point tensor (float32, float16, bfloat16 or float64), got dtype {x.dtype}"
        )
    check_device(name, x, device)
    check_not_empty(name, x)
    if x.numel() > 0:
        _finite_bounds(name, x, "values")
    if dtype is not None:
        x = x.to(_target_dtype("dtype", dtype))
    return x


def _check_real_number(name: str, value: Any, expected: str) -> float:
    if isinstance(value, Tensor) and value.numel() == 1 and not (value.is_complex() or value.dtype == torch.bool):
        value = value.item()  # a one-element tensor (e.g. a scheduled scale) is a number too
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name}: expected {expected}, got {type(value).__name__} {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name}: expected {expected}, got {value!r}")
    return value


def check_guidance_scale(name: str, value: Any) -> float:
    """A classifier-free guidance scale: a finite number >= 0 (0 = unconditional, 1 = conditional, > 1 = guided);
    returns it. A negative or NaN scale would silently push samples away from the prompt or poison them."""
    value = _check_real_number(name, value, "a finite guidance scale >= 0 (1 = no guidance)")
    if value < 0:
        raise ValueError(f"{name}: expected a finite guidance scale >= 0 (1 = no guidance), got {value!r}")
    return value


def check_steps(name: str, value: Any, *, maximum: int | None = None) -> int:
    """A number of sampling steps: an int >= 1 (and <= `maximum` when given); returns it."""
    check_positive_int(name, value)
    if maximum is not None and value > maximum:
        raise ValueError(f"{name}: expected at most {maximum} steps, got {value}")
    return value


def check_temperature(name: str, value: Any, *, allow_zero: bool = True) -> float:
    """A sampling temperature: a finite number >= 0 (0 = greedy, where `allow_zero`) or > 0; returns it."""
    bound = ">= 0 (0 = greedy)" if allow_zero else "> 0"
    value = _check_real_number(name, value, f"a finite temperature {bound}")
    if value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{name}: expected a finite temperature {bound}, got {value!r}")
    return value
