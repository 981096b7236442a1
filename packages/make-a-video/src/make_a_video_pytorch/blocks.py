"""The two Make-A-Video building blocks: the pseudo-3D convolution and the spatio-temporal attention.

Both factorise space and time: a 2D operation inside each frame, then a 1D operation across frames at each pixel.
The temporal half starts as the identity (a dirac temporal kernel, a zero output projection), so a layer trained
on images is, on videos, the same layer applied frame by frame until video training teaches it to mix frames.
Images `(b, c, h, w)` skip the temporal half; videos are `(b, c, t, h, w)`. No Python loop over frames: frames
are folded into the batch for the spatial half and the temporal half is one convolution / one SDPA call.

Every module here keeps its temporal parameters under attribute names starting with `temporal_`, which is how
`SpaceTimeUnet` tells spatial from temporal parameters (see `is_temporal_parameter`).
"""

from __future__ import annotations

from typing import Any, cast

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import Tensor, nn

from synthesis_core.attention import SpaceTimeAttention
from synthesis_core.checks import check_positive_int, check_tensor
from synthesis_core.layers import Downsample as SpaceDownsample
from synthesis_core.layers import FeedForward
from synthesis_core.utils import default, exists

__all__ = [
    "Pseudo3DConv",
    "PseudoConv3d",
    "SpatioTemporalAttention",
    "Downsample",
    "Upsample",
    "TemporalDownsample",
    "TemporalUpsample",
    "resolve_enable_time",
    "is_temporal_parameter",
    "video_conv2d",
    "TEMPORAL_PREFIX",
]

# attribute-name prefix of every temporal submodule in this package
TEMPORAL_PREFIX = "temporal_"


def is_temporal_parameter(name: str) -> bool:
    """Whether a (dotted) parameter name belongs to a temporal submodule (a path part starts with `temporal_`)."""
    return any(part.startswith(TEMPORAL_PREFIX) for part in name.split("."))


def resolve_enable_time(readme_name: str, readme_value: bool, enable_time: bool | None) -> bool:
    """Merge the README's switch (`convolve_across_time` / `attend_across_time`) with its alias `enable_time`.

    The alias wins when given; giving both with different values is an error rather than a silent choice.
    """
    if enable_time is None:
        return bool(readme_value)
    if readme_value is not True and bool(readme_value) != bool(enable_time):
        raise ValueError(
            f"enable_time: it is an alias of {readme_name}; got {readme_name}={readme_value} "
            f"and enable_time={enable_time}, pass only one"
        )
    return bool(enable_time)


def check_attention_kernel_flag(name: str, value: bool) -> bool:
    """The published packages' `flash` / `flash_attn` switch. It chose between an einsum attention and PyTorch's
    `F.scaled_dot_product_attention`; ours always calls SDPA, which picks the flash, memory-efficient or math
    kernel itself, so both values compute the same attention. Only a bool is accepted."""
    if not isinstance(value, bool):
        raise TypeError(
            f"{name}: expected a bool (it selects the attention kernel; ours always uses "
            f"F.scaled_dot_product_attention, which picks one itself), got {value!r}"
        )
    return value


def _check_features(name: str, x: Tensor, dim: int) -> None:
    check_tensor(name, x, ndim=(4, 5))
    if x.shape[1] != dim:
        names = "(batch, channels, height, width)" if x.ndim == 4 else "(batch, channels, frames, height, width)"
        raise ValueError(f"{name}: expected {dim} channels in dim 1 {names}, got shape {tuple(x.shape)}")


def video_conv2d(x: Tensor, weight: Tensor, bias: Tensor | None, stride: int = 1, padding: int = 0) -> Tensor:
    """A convolution along the frame axis of `(b, c, t, h, w)` (kernel `(k, 1)` over `(t, h*w)`) as one conv2d.

    `(b, c, t, h, w) -> (b, c, t, h*w)` is a view in both the contiguous and the channels-last-3d layouts (in the
    latter it is exactly an NHWC image), so no transpose to `(b h w, c, t)` and back is needed and the layout is
    kept. `weight` is a Conv1d weight `(out, in, k)`; k = 1 makes it a pointwise (1x1x1) convolution.
    """
    height = x.shape[-2]
    out = F.conv2d(x.flatten(3), rearrange(weight, "o i k -> o i k 1"), bias, stride=(stride, 1), padding=(padding, 0))
    return out.unflatten(3, (height, -1))


class Pseudo3DConv(nn.Module):
    """A 2D convolution inside each frame followed by a 1D convolution across frames (initialised to identity).

    ```
    conv = Pseudo3DConv(dim=256, kernel_size=3)
    conv(torch.randn(1, 256, 8, 16, 16))                              # (1, 256, 8, 16, 16)
    conv(torch.randn(1, 256, 16, 16))                                 # images: time skipped
    conv(torch.randn(1, 256, 8, 16, 16), convolve_across_time=False)  # spatial only, frame by frame
    ```
    `temporal_kernel_size` defaults to `kernel_size`; it must be odd (same-length output). With 1 there is no
    temporal convolution at all (a pointwise layer).
    """

    def __init__(
        self, dim: int, dim_out: int | None = None, kernel_size: int = 3, temporal_kernel_size: int | None = None
    ):
        super().__init__()
        dim_out = default(dim_out, dim)
        temporal_kernel_size = default(temporal_kernel_size, kernel_size)
        check_positive_int("dim", dim)
        check_positive_int("dim_out", dim_out)
        check_positive_int("kernel_size", kernel_size)
        check_positive_int("temporal_kernel_size", temporal_kernel_size)
        if kernel_size % 2 == 0:
            raise ValueError(f"kernel_size: expected an odd size (same-size output), got {kernel_size}")
        if temporal_kernel_size % 2 == 0:
            raise ValueError(
                f"temporal_kernel_size: expected an odd size (same-length output), got {temporal_kernel_size}"
            )
        self.dim = dim
        self.dim_out = dim_out

        self.spatial_conv = nn.Conv2d(dim, dim_out, kernel_size, padding=kernel_size // 2)
        self.temporal_conv = None
        if temporal_kernel_size > 1:
            self.temporal_conv = nn.Conv1d(dim_out, dim_out, temporal_kernel_size, padding=temporal_kernel_size // 2)
        self.reset_temporal_parameters()

    @torch.no_grad()
    def reset_temporal_parameters(self) -> None:
        """Temporal kernel back to identity: a dirac (1 at the centre tap, channel to itself), zero bias."""
        if self.temporal_conv is not None:
            nn.init.dirac_(self.temporal_conv.weight)
            if self.temporal_conv.bias is not None:
                nn.init.zeros_(self.temporal_conv.bias)

    def forward(self, x: Tensor, convolve_across_time: bool = True, enable_time: bool | None = None) -> Tensor:
        _check_features("x", x, self.dim)
        across_time = resolve_enable_time("convolve_across_time", convolve_across_time, enable_time)
        if x.ndim == 4:
            return self.spatial_conv(x)

        frames = x.shape[2]
        # frames folded into the batch: one conv2d for every frame of every video
        x = rearrange(x, "b c t h w -> (b t) c h w")
        x = self.spatial_conv(x)
        x = rearrange(x, "(b t) c h w -> b c t h w", t=frames)

        if not across_time or self.temporal_conv is None:
            return x
        return video_conv2d(
            x, self.temporal_conv.weight, self.temporal_conv.bias, padding=int(self.temporal_conv.padding[0])
        )


# the published make-a-video-pytorch 0.4 name of the same layer
PseudoConv3d = Pseudo3DConv


class SpatioTemporalAttention(nn.Module):
    """Attention inside each frame (over h*w), then across frames (over t at each pixel), then a feed-forward.

    Both attentions are pre-norm residual branches on SDPA with a continuous relative position bias (an MLP of
    the offsets, 2D in space, 1D in time) passed as `attn_mask`, so the fused kernels stay usable with the bias.
    The temporal attention's output projection starts at zero: a fresh module is identity across time.
    `causal_time_attn=True` lets frame i attend to frames <= i only. `dim_context` adds cross-attention to a
    context (text embeddings) after the spatial attention; `num_null_kv` learned null key/values keep it defined
    when the context is fully masked (classifier-free guidance drops the text that way). `flash` is the published
    package's choice of attention kernel; SDPA chooses its kernel itself here, so it changes nothing (and, unlike
    the published package, combines with `pos_bias`).

    `forward(x, attend_across_time=True, enable_time=None, context=None, context_mask=None)`; images skip time.
    """

    def __init__(
        self,
        dim: int,
        dim_head: int = 64,
        heads: int = 8,
        add_feed_forward: bool = True,
        ff_mult: float = 4,
        pos_bias: bool = True,
        causal_time_attn: bool = False,
        *,
        dim_context: int | None = None,
        num_null_kv: int = 0,
        flash: bool = False,
    ):
        super().__init__()
        check_positive_int("dim", dim)
        check_positive_int("dim_head", dim_head)
        check_positive_int("heads", heads)
        # the published package's kernel switch: SDPA always runs here (see check_attention_kernel_flag)
        self.flash = check_attention_kernel_flag("flash", flash)
        self.dim = dim
        bias_kind = "continuous" if pos_bias else None

        self.spatial_attn = SpaceTimeAttention(
            dim,
            axis="space",
            dim_head=dim_head,
            heads=heads,
            pos_bias=bias_kind,
            dim_context=dim_context,
            num_null_kv=num_null_kv,
            residual=True,
        )
        self.temporal_attn = SpaceTimeAttention(
            dim,
            axis="time",
            dim_head=dim_head,
            heads=heads,
            pos_bias=bias_kind,
            causal=causal_time_attn,
            zero_init_output=True,
            residual=True,
        )
        self.feed_forward = FeedForward(dim, mult=ff_mult, pre_norm=True) if add_feed_forward else None

    @torch.no_grad()
    def reset_temporal_parameters(self) -> None:
        """Temporal attention back to identity (zero output projection); its other weights are re-drawn."""
        for module in self.temporal_attn.modules():
            if module is not self.temporal_attn and hasattr(module, "reset_parameters"):
                cast(Any, module).reset_parameters()
            gamma = getattr(module, "gamma", None)
            if isinstance(gamma, nn.Parameter):
                nn.init.ones_(gamma)
        nn.init.zeros_(self.temporal_attn.attn.to_out.weight)

    def forward(
        self,
        x: Tensor,
        attend_across_time: bool = True,
        enable_time: bool | None = None,
        context: Tensor | None = None,
        context_mask: Tensor | None = None,
    ) -> Tensor:
        _check_features("x", x, self.dim)
        across_time = resolve_enable_time("attend_across_time", attend_across_time, enable_time)
        is_image = x.ndim == 4
        if is_image:
            x = rearrange(x, "b c h w -> b c 1 h w")

        x = self.spatial_attn(x, context=context, context_mask=context_mask)
        if across_time and not is_image:
            x = self.temporal_attn(x)
        if exists(self.feed_forward):
            # per position over channels: (b, c, ...) -> (b, ..., c) and back, a view for channels-last inputs
            x = x + self.feed_forward(x.movedim(1, -1)).movedim(-1, 1)

        return rearrange(x, "b c 1 h w -> b c h w") if is_image else x


class TemporalDownsample(nn.Module):
    """Halves the frames with a stride-2 temporal convolution (kernel 2), initialised to the mean of each pair.

    At initialisation a video whose frames are all equal maps to the same frames, so temporal compression
    does not disturb an image-pretrained U-Net on static content.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.temporal_conv = nn.Conv1d(dim, dim, 2, stride=2)
        self.reset_temporal_parameters()

    @torch.no_grad()
    def reset_temporal_parameters(self) -> None:
        weight = torch.zeros_like(self.temporal_conv.weight)
        eye = torch.eye(weight.shape[0], dtype=weight.dtype)
        weight[:, :, 0] = eye / 2
        weight[:, :, 1] = eye / 2
        self.temporal_conv.weight.copy_(weight)
        if self.temporal_conv.bias is not None:
            nn.init.zeros_(self.temporal_conv.bias)

    def forward(self, x: Tensor) -> Tensor:
        return video_conv2d(x, self.temporal_conv.weight, self.temporal_conv.bias, stride=2)


class TemporalUpsample(nn.Module):
    """Doubles the frames: a pointwise layer makes two frames from each, initialised to repeat it (nearest)."""

    def __init__(self, dim: int):
        super().__init__()
        self.temporal_conv = nn.Conv1d(dim, dim * 2, 1)
        self.reset_temporal_parameters()

    @torch.no_grad()
    def reset_temporal_parameters(self) -> None:
        dim = self.temporal_conv.in_channels
        eye = torch.eye(dim, dtype=self.temporal_conv.weight.dtype)
        # output channel (c, r) of the pair is channel c of frame r: both start as a copy of the input
        self.temporal_conv.weight.copy_(rearrange(torch.stack((eye, eye)), "r o i -> (o r) i 1"))
        if self.temporal_conv.bias is not None:
            nn.init.zeros_(self.temporal_conv.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = video_conv2d(x, self.temporal_conv.weight, self.temporal_conv.bias)
        return rearrange(x, "b (c r) t h w -> b c (t r) h w", r=2)


class Downsample(nn.Module):
    """Halves height and width and/or the frames, the published package's resampling block.

    Space: pixel-unshuffle (space-to-depth, nothing dropped) then a 1x1 convolution back to `dim` channels. Time:
    `TemporalDownsample`, a stride-2 temporal convolution that starts as the mean of each pair of frames. `nonlin`
    adds a SiLU after each. `forward(x, enable_time=True)` takes images `(b, c, h, w)` (time skipped) or videos
    `(b, c, t, h, w)`; `enable_time=False` skips time too.

    ```
    down = Downsample(64, downsample_time=True)
    down(torch.randn(1, 64, 8, 16, 16))     # (1, 64, 4, 8, 8)
    down(torch.randn(1, 64, 16, 16))        # (1, 64, 8, 8)
    ```
    """

    def __init__(self, dim: int, downsample_space: bool = True, downsample_time: bool = False, nonlin: bool = False):
        super().__init__()
        check_positive_int("dim", dim)
        if not (downsample_space or downsample_time):
            raise ValueError("downsample_space, downsample_time: at least one must be True, got both False")
        self.dim = dim
        self.spatial_down = SpaceDownsample(dim, dim) if downsample_space else None
        self.temporal_down = TemporalDownsample(dim) if downsample_time else None
        self.act = nn.SiLU() if nonlin else nn.Identity()

    def forward(self, x: Tensor, enable_time: bool = True) -> Tensor:
        _check_features("x", x, self.dim)
        if exists(self.spatial_down):
            x = self.act(self.spatial_down(x))
        if x.ndim == 5 and enable_time and exists(self.temporal_down):
            if x.shape[2] % 2:
                raise ValueError(
                    f"x: halving the frames needs an even number of them, got {x.shape[2]} in shape "
                    f"{tuple(x.shape)}; pass enable_time=False to downsample in space only"
                )
            x = self.act(self.temporal_down(x))
        return x


class Upsample(nn.Module):
    """Doubles height and width and/or the frames, the inverse of `Downsample`.

    Space: a 1x1 convolution to four times the channels then pixel shuffle (depth-to-space), initialised so the
    four sub-pixels of an output pixel start equal (a nearest-neighbour upsampling of a 1x1 convolution: no
    checkerboard). Time: `TemporalUpsample`, two frames from each, starting as a repeat. `nonlin` adds a SiLU
    after each. `forward(x, enable_time=True)` as in `Downsample`.
    """

    def __init__(self, dim: int, upsample_space: bool = True, upsample_time: bool = False, nonlin: bool = False):
        super().__init__()
        check_positive_int("dim", dim)
        if not (upsample_space or upsample_time):
            raise ValueError("upsample_space, upsample_time: at least one must be True, got both False")
        self.dim = dim
        self.spatial_up = nn.Conv2d(dim, dim * 4, 1) if upsample_space else None
        self.temporal_up = TemporalUpsample(dim) if upsample_time else None
        self.act = nn.SiLU() if nonlin else nn.Identity()
        self.reset_spatial_parameters()

    @torch.no_grad()
    def reset_spatial_parameters(self) -> None:
        """One random 1x1 kernel per output channel, shared by its four sub-pixels (ICNR initialisation)."""
        if self.spatial_up is not None:
            self.init_conv_(self.spatial_up, 4)

    @staticmethod
    @torch.no_grad()
    def init_conv_(conv: nn.Module, factor: int) -> None:
        """ICNR: draw one kernel per group of `factor` consecutive output channels and give it to all of them (the
        channels a pixel / frame shuffle spreads over the new positions), zero bias; the published name."""
        check_positive_int("factor", factor)
        conv_weight, conv_bias = conv.weight, getattr(conv, "bias", None)
        if not isinstance(conv_weight, Tensor):
            raise TypeError(f"conv: expected a convolution with a weight tensor, got {type(conv).__name__}")
        out_channels = conv_weight.shape[0]
        if out_channels % factor:
            raise ValueError(f"factor: the conv's {out_channels} output channels are not divisible by {factor}")
        weight = torch.empty(out_channels // factor, *conv_weight.shape[1:], dtype=conv_weight.dtype)
        nn.init.kaiming_uniform_(weight, a=5**0.5)
        # pixel_shuffle reads channel (o, r) as sub-pixel r of output channel o
        conv_weight.copy_(repeat(weight, "o ... -> (o r) ...", r=factor))
        if conv_bias is not None:
            nn.init.zeros_(conv_bias)

    def init_(self) -> None:
        """Back to the initialisation (the published name): ICNR in space, a repeat of each frame in time."""
        self.reset_spatial_parameters()
        if exists(self.temporal_up):
            self.temporal_up.reset_temporal_parameters()

    def _upsample_space(self, x: Tensor, spatial_up: nn.Module) -> Tensor:
        return F.pixel_shuffle(self.act(spatial_up(x)), 2)

    def forward(self, x: Tensor, enable_time: bool = True) -> Tensor:
        _check_features("x", x, self.dim)
        if self.spatial_up is not None:
            if x.ndim == 4:
                x = self._upsample_space(x, self.spatial_up)
            else:
                frames = x.shape[2]
                x = rearrange(x, "b c t h w -> (b t) c h w")
                x = rearrange(self._upsample_space(x, self.spatial_up), "(b t) c h w -> b c t h w", t=frames)
        if x.ndim == 5 and enable_time and exists(self.temporal_up):
            x = self.act(self.temporal_up(x))
        return x
