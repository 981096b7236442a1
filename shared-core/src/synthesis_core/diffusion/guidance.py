"""Classifier-free guidance and x0 thresholding (the sampling-time fixes a package's denoise closure applies)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from einops import rearrange
from torch import Tensor

from synthesis_core.checks import check_in_range
from synthesis_core.diffusion.schedules import right_pad_dims_to

__all__ = ["cfg_combine", "batched_cond_uncond", "static_threshold", "dynamic_threshold"]


def _per_sample_sum(x: Tensor) -> Tensor:
    return rearrange(x, "b ... -> b (...)").sum(dim=-1)


def cfg_combine(
    cond: Tensor,
    uncond: Tensor,
    scale: float | Tensor,
    remove_parallel_component: bool = False,
    rescale_phi: float = 0.0,
    eps: float = 1e-12,
) -> Tensor:
    """Classifier-free guidance: cond + (scale - 1) * (cond - uncond), i.e. uncond + scale * (cond - uncond).

    `scale` may be a float or a per-sample tensor (b,). `remove_parallel_component=True` removes from the guidance
    update (cond - uncond) its component parallel to `cond`, per sample over all non-batch dims (so the update
    only changes what `cond` does not already say). `rescale_phi` (Lin et al. 2023, CFG rescale) blends the result
    with a copy rescaled to the per-sample standard deviation of `cond`: phi * rescaled + (1 - phi) * guided.
    """
    if cond.shape != uncond.shape:
        raise ValueError(f"uncond: expected the shape of cond {tuple(cond.shape)}, got {tuple(uncond.shape)}")
    check_in_range("rescale_phi", rescale_phi, 0.0, 1.0)
    if isinstance(scale, Tensor):
        scale = right_pad_dims_to(cond, scale)

    update = cond - uncond
    if remove_parallel_component:
        # projection in float32: the dot products over a whole sample lose too much in bf16
        cond32, update32 = cond.float(), update.float()
        coefficient = _per_sample_sum(update32 * cond32) / _per_sample_sum(cond32 * cond32).clamp(min=eps)
        update = (update32 - right_pad_dims_to(cond32, coefficient) * cond32).to(update.dtype)

    guided = cond + (scale - 1) * update
    if rescale_phi == 0:
        return guided

    dims = tuple(range(1, cond.ndim))
    std_cond = cond.float().std(dim=dims, keepdim=True)
    std_guided = guided.float().std(dim=dims, keepdim=True).clamp(min=eps)
    rescaled = guided.float() * (std_cond / std_guided)
    return (rescale_phi * rescaled + (1 - rescale_phi) * guided.float()).to(guided.dtype)


def batched_cond_uncond(
    forward: Callable[..., Tensor], x: Tensor, time: Any, *, null_keyword: str = "drop_text", **kwargs: Any
) -> tuple[Tensor, Tensor]:
    """The conditional and the null-condition outputs of a network in one batch of twice the size: `x`, `time` and
    every keyword tensor whose first dim is the batch are repeated, and `forward` gets `null_keyword=` a bool mask
    (2b,) that is True on the second half (the network's "use the null condition" input). Returns (cond, uncond),
    for `cfg_combine`. A 0-d `time` is expanded to the batch; other values are passed as they are."""
    batch = x.shape[0]
    if isinstance(time, Tensor) and time.ndim == 0:
        time = time.expand(batch)

    def doubled(value: Any) -> Any:
        if isinstance(value, Tensor) and value.ndim > 0 and value.shape[0] == batch:
            return torch.cat((value, value), dim=0)
        return value

    null = torch.arange(2 * batch, device=x.device) >= batch
    out = forward(doubled(x), doubled(time), **{null_keyword: null}, **{k: doubled(v) for k, v in kwargs.items()})
    cond, uncond = out.chunk(2, dim=0)
    return cond, uncond


def static_threshold(x0: Tensor) -> Tensor:
    """Clamp an x0 prediction to the data range [-1, 1]."""
    return x0.clamp(-1.0, 1.0)


def dynamic_threshold(x0: Tensor, percentile: float = 0.95) -> Tensor:
    """Imagen's dynamic thresholding: per sample, s = the `percentile` quantile of |x0| (at least 1); the sample
    is clamped to [-s, s] then divided by s, so saturated pixels are pushed inwards instead of clipped."""
    check_in_range("percentile", percentile, 0.0, 1.0)
    flat = rearrange(x0.detach().abs().float(), "b ... -> b (...)")
    # torch.quantile's linear interpolation through two kthvalue selections: no size limit, no full sort
    position = percentile * (flat.shape[-1] - 1)
    lower = int(position)
    upper = min(lower + 1, flat.shape[-1] - 1)
    low_value = flat.kthvalue(lower + 1, dim=-1).values
    high_value = flat.kthvalue(upper + 1, dim=-1).values
    s = torch.lerp(low_value, high_value, position - lower).clamp(min=1.0)
    s = right_pad_dims_to(x0, s).to(x0.dtype)
    return torch.maximum(torch.minimum(x0, s), -s) / s
