"""Imagen Video's space-time U-Net: the `Unet` of unet.py factorised over space and time (Ho et al. 2022).

Every 2D layer of `Unet` runs on each frame (frames are folded into the batch, `((b frames), c, h, w)`); temporal
layers are added between them:
- after each resnet block, a 1D convolution over time at every pixel, initialised to the identity (Make-A-Video's
  pseudo-3D convolution), so an image U-Net's behaviour is the starting point;
- after each level's spatial attention (and in the middle), attention over time at every pixel with a continuous
  relative position bias (an MLP over log-distances), so it runs on more frames than it was trained on;
- optional temporal strides at level transitions (learned averaging down, repetition up).
`ignore_time=True` skips every temporal layer, so each frame is processed independently (image co-training);
4D images `(b, c, h, w)` are one-frame videos with time ignored. Known frames (`cond_video_frames` before,
`post_cond_video_frames` after) are concatenated along time with the noisy frames and dropped from the output.
Two inputs tell the per-frame layers where they are (`frame_embedding`, `position_channels`): the temporal layers
see only distances between frames, so without them a model can hardly put the content of frame i where the
caption says ("moving left"); at high noise it predicts about the same average for every frame.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange, reduce, repeat
from torch import Tensor, nn

from imagen_pytorch.unet import Block, FrameLayout, Unet, _per_level, resize_spatial
from synthesis_core.attention import ContinuousPositionBias, SpaceTimeAttention
from synthesis_core.checks import check_choice, check_positive_int, check_tensor
from synthesis_core.layers import FrameEmbedding, position_grid
from synthesis_core.utils import exists

__all__ = ["Unet3D"]


@dataclass(frozen=True)
class TemporalSettings:
    """What the temporal layers of a `Unet3D` need while `Unet.__init__` builds the levels."""

    strides: tuple[int, ...]
    causal: bool
    rel_pos_bias_depth: int
    conv_kernel_size: int
    heads: int
    dim_head: int


# ---------------------------------------------------------------------------------------------------------------
# temporal layers on folded maps ((b frames), c, h, w)
# ---------------------------------------------------------------------------------------------------------------


def unfold_frames(x: Tensor, layout: FrameLayout) -> Tensor:
    """((b f), c, h, w) -> (b, c, f, h, w) (a view: no copy)."""
    return rearrange(x, "(b f) c h w -> b c f h w", f=layout.frames)


def fold_frames(x: Tensor) -> Tensor:
    """(b, c, f, h, w) -> ((b f), c, h, w)."""
    return rearrange(x, "b c f h w -> (b f) c h w")


class TemporalConv(nn.Module):
    """Convolution over time at every pixel, initialised to the identity. `causal=True` pads only the past."""

    def __init__(self, dim: int, kernel_size: int = 3, causal: bool = False):
        super().__init__()
        self.padding = (kernel_size - 1, 0) if causal else (kernel_size // 2, kernel_size // 2)
        self.conv = nn.Conv3d(dim, dim, (kernel_size, 1, 1))
        current = kernel_size - 1 if causal else kernel_size // 2  # the tap that sees the output's own frame
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.weight[:, :, current, 0, 0].copy_(torch.eye(dim))
            if exists(self.conv.bias):  # always (bias=True); narrows the Optional
                self.conv.bias.zero_()

    def forward(self, x: Tensor, layout: FrameLayout) -> Tensor:
        video = F.pad(unfold_frames(x, layout), (0, 0, 0, 0, *self.padding))
        return fold_frames(self.conv(video))


class SpaceTimeBlock(nn.Module):
    """A 2D resnet block on every frame followed by the identity-initialised temporal convolution.

    Its FiLM input `time_emb` holds one vector per frame of the clip given to the U-Net, `((b frames_in), d)`
    (`Unet3D` gives the frames different ones with `frame_embedding`); at a level where temporal strides merged
    `s` frames into one, that frame gets the mean of their vectors, as `TemporalDownsample` starts by averaging
    the frames themselves.
    """

    def __init__(self, dim_in: int, dim_out: int, *, kernel_size: int, causal: bool, **block_kwargs: Any):
        super().__init__()
        self.spatial = Block(dim_in, dim_out, **block_kwargs)
        self.temporal = TemporalConv(dim_out, kernel_size=kernel_size, causal=causal)

    def forward(self, x: Tensor, time_emb: Tensor, layout: FrameLayout) -> Tensor:
        merged = time_emb.shape[0] // x.shape[0]
        if merged > 1:
            time_emb = reduce(time_emb, "(n s) d -> n d", "mean", s=merged)
        # the resnet itself: Block.forward would repeat a per-video vector, these are already per frame
        x = self.spatial.resnet(x, time_emb)
        return self.temporal(x, layout) if layout.temporal else x


class SpaceTimeAttentionStage(nn.Module):
    """A level's spatial attention stage (per frame) followed by attention over time at every pixel."""

    def __init__(self, dim: int, spatial: nn.Module | None, settings: TemporalSettings):
        super().__init__()
        self.spatial = spatial
        self.temporal = SpaceTimeAttention(
            dim,
            axis="time",
            dim_head=settings.dim_head,
            heads=settings.heads,
            pos_bias="continuous",
            causal=settings.causal,
            zero_init_output=True,
        )
        # the time bias MLP with the depth asked for (SpaceTimeAttention builds a 2-layer one by default)
        self.temporal.pos_bias = ContinuousPositionBias(
            max(dim // 4, 16), settings.heads, num_dims=1, layers=settings.rel_pos_bias_depth
        )

    def forward(self, x: Tensor, context: Tensor, context_mask: Tensor | None, layout: FrameLayout) -> Tensor:
        if exists(self.spatial):
            x = self.spatial(x, context, context_mask, layout)
        if layout.temporal:
            x = x + fold_frames(self.temporal(unfold_frames(x, layout)))
        return x


class TemporalDownsample(nn.Module):
    """Time / `stride` by a strided temporal convolution initialised to averaging `stride` consecutive frames."""

    def __init__(self, dim: int, stride: int):
        super().__init__()
        self.stride = stride
        self.conv = nn.Conv3d(dim, dim, (stride, 1, 1), stride=(stride, 1, 1))
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.weight[:, :, :, 0, 0].copy_(repeat(torch.eye(dim) / stride, "o i -> o i s", s=stride))
            if exists(self.conv.bias):  # always (bias=True); narrows the Optional
                self.conv.bias.zero_()

    def forward(self, x: Tensor, layout: FrameLayout) -> tuple[Tensor, FrameLayout]:
        return fold_frames(self.conv(unfold_frames(x, layout))), layout.with_frames(layout.frames // self.stride)


class TemporalUpsample(nn.Module):
    """Time * `stride` by repeating every frame (nearest neighbour; the temporal convolutions smooth after it)."""

    def __init__(self, stride: int):
        super().__init__()
        self.stride = stride

    def forward(self, x: Tensor, layout: FrameLayout) -> tuple[Tensor, FrameLayout]:
        x = repeat(x, "(b f) c h w -> (b f s) c h w", f=layout.frames, s=self.stride)
        return x, layout.with_frames(layout.frames * self.stride)


class SpaceTimeResample(nn.Module):
    """Spatial resampling (per frame) and, for videos, temporal resampling."""

    def __init__(self, spatial: nn.Module, temporal: nn.Module | None, temporal_first: bool):
        super().__init__()
        self.spatial = spatial
        self.temporal = temporal
        self.temporal_first = temporal_first  # resample time where the maps are smallest

    def forward(self, x: Tensor, layout: FrameLayout) -> tuple[Tensor, FrameLayout]:
        temporal = self.temporal if layout.temporal else None  # decided on the input's layout
        if exists(temporal) and self.temporal_first:
            x, layout = temporal(x, layout)
        x, layout = self.spatial(x, layout)
        if exists(temporal) and not self.temporal_first:
            x, layout = temporal(x, layout)
        return x, layout


# ---------------------------------------------------------------------------------------------------------------
# the space-time U-Net
# ---------------------------------------------------------------------------------------------------------------


class Unet3D(Unet):
    """`Unet` for videos `(b, c, frames, h, w)` (and images `(b, c, h, w)`), same keyword arguments plus:

    - `temporal_strides`: time downsampling at each level transition (one int for all, or one per level with the
      last equal to 1); the frame count must then be divisible by their product;
    - `time_causal_attn`: frames only see earlier frames (temporal attention and convolutions; strictly causal
      with `temporal_strides=1`);
    - `time_rel_pos_bias_depth`: layers of the continuous time position-bias MLP;
    - `temporal_conv_kernel_size`: taps of the identity-initialised temporal convolutions;
    - `ff_time_token_shift`: imagen-pytorch 2.1's time token shift inside the feed-forwards is not built here (the
      temporal convolutions mix neighbouring frames instead); only False is accepted;
    - `frame_embedding` (default True): the conditioning vector that drives every resnet block's FiLM (noise
      level + pooled text, the learned null text for guidance-dropped samples) is mixed with each frame's place in
      the clip (`synthesis_core.layers.FrameEmbedding`), so a caption such as "moving left" can decide where the
      content of each frame goes. Only for videos of more than one frame with time not ignored (conditioning
      frames count as frames of the clip): images and `ignore_time=True` get the same vector for every frame,
      exactly as without it. With `time_causal_attn`, a frame's vector depends on the clip's length (its place in
      the clip), not on the content of later frames. It starts as the identity (zero-initialised outputs);
    - `position_channels` (default True): two input channels holding each pixel's row and column in [-1, 1]
      (`synthesis_core.layers.position_grid`), concatenated to every input of the stem, images included (they
      run through the same stem convolution, which takes 2 more input channels).
    A config saved before these keywords existed (imagen-pytorch 0.3) describes the older architecture and loads
    as it (`config_defaults_for_older_files`); in code, `frame_embedding=False, position_channels=False` builds it.
    `forward(..., ignore_time=False, cond_video_frames=None, post_cond_video_frames=None)`: the known frames are
    `(b, channels, n, h, w)` clean frames before / after the noisy ones. `lowres_cond_img` and `self_cond` are
    `(b, channels, frames, h, w)`; `cond_images` is `(b, c, h, w)` (every frame) or `(b, c, frames, h, w)`.
    """

    is_video = True
    # a config saved by 0.3 (before these arguments) describes the U-Net without them
    config_defaults_for_older_files = {"frame_embedding": False, "position_channels": False}

    def __init__(
        self,
        *,
        dim: int,
        dim_mults: Sequence[float] = (1, 2, 4, 8),
        temporal_strides: int | Sequence[int] = 1,
        time_causal_attn: bool = False,
        time_rel_pos_bias_depth: int = 2,
        temporal_conv_kernel_size: int = 3,
        attn_heads: int = 8,
        attn_dim_head: int = 64,
        ff_time_token_shift: bool = False,
        frame_embedding: bool = True,
        position_channels: bool = True,
        **kwargs: Any,
    ):
        if ff_time_token_shift is not False:
            raise ValueError(
                f"ff_time_token_shift: the time token shift inside the feed-forwards is not available, got "
                f"{ff_time_token_shift!r}; pass False (neighbouring frames are mixed by the temporal convolutions, "
                "temporal_conv_kernel_size=, and temporal attention)"
            )
        if not isinstance(dim_mults, (tuple, list)) or len(dim_mults) == 0:
            raise ValueError(f"dim_mults: expected a non-empty tuple of channel multipliers, got {dim_mults!r}")
        strides = _per_level("temporal_strides", temporal_strides, len(dim_mults))
        if isinstance(temporal_strides, int):
            strides = (*strides[:-1], 1)  # nothing follows the deepest level
        for stride in strides:
            check_positive_int("temporal_strides", stride)
        if strides[-1] != 1:
            raise ValueError(
                f"temporal_strides: the last level has no transition after it, its stride must be 1, got {strides}"
            )
        check_positive_int("time_rel_pos_bias_depth", time_rel_pos_bias_depth)
        check_positive_int("temporal_conv_kernel_size", temporal_conv_kernel_size)
        check_choice("frame_embedding", frame_embedding, (True, False))
        check_choice("position_channels", position_channels, (True, False))
        # read by the builder methods while Unet.__init__ runs, so it is set first (a plain attribute)
        self.temporal_settings = TemporalSettings(
            strides=strides,
            causal=time_causal_attn,
            rel_pos_bias_depth=time_rel_pos_bias_depth,
            conv_kernel_size=temporal_conv_kernel_size,
            heads=attn_heads,
            dim_head=attn_dim_head,
        )
        self.frames_divisor = math.prod(strides)
        self.position_channels = bool(position_channels)  # read by _extra_stem_channels while Unet.__init__ runs
        super().__init__(dim=dim, dim_mults=dim_mults, attn_heads=attn_heads, attn_dim_head=attn_dim_head, **kwargs)
        # acts on the FiLM vector, whose size Unet fixes at 4 * dim (its time_cond_dim)
        self.frame_embedding = FrameEmbedding(dim * 4) if frame_embedding else None

    def _extra_stem_channels(self) -> int:
        return 2 if self.position_channels else 0

    # -- builders: the 2D layers of Unet plus temporal ones ------------------------------------------------------

    def _make_resnet_block(self, dim_in: int, dim_out: int) -> nn.Module:
        settings = self.temporal_settings
        return SpaceTimeBlock(
            dim_in, dim_out, kernel_size=settings.conv_kernel_size, causal=settings.causal, **self._block_kwargs
        )

    def _make_attention_stage(
        self, dim: int, self_attn: str | None, cross_attn: str | None, global_context: bool, *, depth: int | None = None
    ) -> nn.Module:
        spatial = super()._make_attention_stage(dim, self_attn, cross_attn, global_context, depth=depth)
        return SpaceTimeAttentionStage(dim, spatial, self.temporal_settings)

    def _make_downsample(self, dim_in: int, dim_out: int, *, level: int) -> nn.Module:
        stride = self.temporal_settings.strides[level] if level >= 0 else 1
        temporal = TemporalDownsample(dim_out, stride) if stride > 1 else None
        return SpaceTimeResample(super()._make_downsample(dim_in, dim_out, level=level), temporal, temporal_first=False)

    def _make_upsample(self, dim_in: int, dim_out: int, *, level: int) -> nn.Module:
        stride = self.temporal_settings.strides[level - 1] if level > 0 else 1
        temporal = TemporalUpsample(stride) if stride > 1 else None
        return SpaceTimeResample(super()._make_upsample(dim_in, dim_out, level=level), temporal, temporal_first=True)

    # -- inputs ----------------------------------------------------------------------------------------------------

    def _resize_cond_images(self, cond_images: Tensor, x: Tensor) -> Tensor:
        batch, _, frames, height, width = x.shape
        check_tensor("cond_images", cond_images, ndim=(4, 5), dtype_floating=True)
        if cond_images.shape[:2] != (batch, self.cond_images_channels) or (
            cond_images.ndim == 5 and cond_images.shape[2] != frames
        ):
            raise ValueError(
                f"cond_images: expected shape ({batch}, {self.cond_images_channels}, height, width) or "
                f"({batch}, {self.cond_images_channels}, {frames}, height, width), got {tuple(cond_images.shape)}"
            )
        if cond_images.ndim == 4:
            cond_images = repeat(cond_images, "b c h w -> b c f h w", f=frames)
        if cond_images.shape[-2:] != (height, width):
            cond_images = resize_spatial(cond_images, (height, width), self.resize_mode)
        return cond_images

    def _per_frame_time_emb(self, time_emb: Tensor, frames: int, temporal: bool) -> Tensor:
        """`(b, d)` per-video FiLM vectors -> `((b frames), d)`: mixed with each frame's place in the clip
        (`frame_embedding`) for a clip of several frames whose frames interact, else repeated."""
        if exists(self.frame_embedding) and temporal and frames > 1:
            return self.frame_embedding(time_emb, frames)
        return repeat(time_emb, "b d -> (b f) d", f=frames)

    def _check_cond_frames(self, name: str, frames: Tensor | None, x: Tensor) -> None:
        if exists(frames):
            batch, channels, _, height, width = x.shape
            check_tensor(
                name,
                frames,
                shape=(batch, channels, "frames", height, width),
                names=("batch", "channels", "frames", "height", "width"),
                dtype_floating=True,
            )

    # -- public API ------------------------------------------------------------------------------------------------

    def forward(
        self,
        x: Tensor,
        time: Tensor,
        *,
        lowres_cond_img: Tensor | None = None,
        lowres_noise_times: Tensor | None = None,
        text_embeds: Tensor | None = None,
        text_mask: Tensor | None = None,
        cond_images: Tensor | None = None,
        self_cond: Tensor | None = None,
        cond_drop_prob: float = 0.0,
        ignore_time: bool = False,
        cond_video_frames: Tensor | None = None,
        post_cond_video_frames: Tensor | None = None,
    ) -> Tensor:
        """Model output for noisy videos `x` (b, channels, frames, h, w) or images (b, channels, h, w) at noise
        levels `time` (b,); same shape as `x` with `channels_out` channels. See the class docstring."""
        drop_text = self._drop_mask(x, cond_drop_prob)
        return self._forward(
            x,
            time,
            lowres_cond_img=lowres_cond_img,
            lowres_noise_times=lowres_noise_times,
            text_embeds=text_embeds,
            text_mask=text_mask,
            cond_images=cond_images,
            self_cond=self_cond,
            drop_text=drop_text,
            ignore_time=ignore_time,
            cond_video_frames=cond_video_frames,
            post_cond_video_frames=post_cond_video_frames,
        )

    def _forward(
        self,
        x: Tensor,
        time: Tensor,
        *,
        lowres_cond_img: Tensor | None = None,
        lowres_noise_times: Tensor | None = None,
        text_embeds: Tensor | None = None,
        text_mask: Tensor | None = None,
        cond_images: Tensor | None = None,
        self_cond: Tensor | None = None,
        drop_text: Tensor | None = None,
        ignore_time: bool = False,
        cond_video_frames: Tensor | None = None,
        post_cond_video_frames: Tensor | None = None,
    ) -> Tensor:
        check_tensor("x", x, ndim=(4, 5), names=("batch", "channels", "frames", "height", "width"), dtype_floating=True)
        is_image = x.ndim == 4
        if is_image:
            # a batch of images is a batch of one-frame videos whose frames never interact
            ignore_time = True
            x = rearrange(x, "b c h w -> b c 1 h w")
            lowres_cond_img, self_cond = (
                rearrange(t, "b c h w -> b c 1 h w") if exists(t) and t.ndim == 4 else t
                for t in (lowres_cond_img, self_cond)
            )
        names = ("batch", "channels", "frames", "height", "width")
        if x.shape[1] != self.channels:
            raise ValueError(f"x: expected {self.channels} channels, got shape {tuple(x.shape)} {names}")
        batch, _, frames, height, width = x.shape
        self._check_size(height, width)
        time = self._check_times("time", time, batch, x.device)
        self._check_text(batch, text_embeds, text_mask)
        inputs, lowres_noise_times = self._stem_inputs(
            x,
            lowres_cond_img=lowres_cond_img,
            lowres_noise_times=lowres_noise_times,
            cond_images=cond_images,
            self_cond=self_cond,
            names=names,
            batch=batch,
        )

        # known frames join the noisy ones along time; the other stem inputs are zero there
        self._check_cond_frames("cond_video_frames", cond_video_frames, x)
        self._check_cond_frames("post_cond_video_frames", post_cond_video_frames, x)
        num_pre = cond_video_frames.shape[2] if exists(cond_video_frames) else 0
        num_post = post_cond_video_frames.shape[2] if exists(post_cond_video_frames) else 0
        stem = torch.cat(inputs, dim=1)
        extra_channels = stem.shape[1] - self.channels

        def known(frames_: Tensor) -> Tensor:
            return F.pad(frames_.to(stem.dtype), (0, 0, 0, 0, 0, 0, 0, extra_channels))

        if num_pre or num_post:
            parts = [known(cond_video_frames)] if exists(cond_video_frames) and num_pre else []
            parts.append(stem)
            parts += [known(post_cond_video_frames)] if exists(post_cond_video_frames) and num_post else []
            stem = torch.cat(parts, dim=2)
        total_frames = frames + num_pre + num_post

        if not ignore_time and total_frames % self.frames_divisor:
            raise ValueError(
                f"x: the number of frames ({total_frames}, conditioning frames included) must be divisible by "
                f"{self.frames_divisor}, the product of temporal_strides {self.temporal_settings.strides}"
            )

        cond = self.condition(time, lowres_noise_times, text_embeds, text_mask, drop_text)
        # the resnet blocks take one FiLM vector per frame (SpaceTimeBlock), the other layers per-video ones
        cond = replace(cond, time_emb=self._per_frame_time_emb(cond.time_emb, total_frames, not ignore_time))
        stem = fold_frames(stem)
        if self.position_channels:
            stem = torch.cat((stem, position_grid(stem)), dim=1)
        layout = FrameLayout(frames=total_frames, temporal=not ignore_time)
        out = self._run_unet(stem, cond, layout)
        out = rearrange(out, "(b f) c h w -> b c f h w", f=total_frames)[:, :, num_pre : num_pre + frames]
        return rearrange(out, "b c 1 h w -> b c h w") if is_image else out
