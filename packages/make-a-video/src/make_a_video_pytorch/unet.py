"""`SpaceTimeUnet`: the Make-A-Video denoiser, a text-conditioned U-Net built from pseudo-3D convolutions and
spatio-temporal attention that runs on images (time skipped) and on videos with the same weights.

Reading order: the resnet block (RMS-norm, FiLM from the time/text embedding, pseudo-3D convolutions), the U-Net
(levels of resnet blocks with optional attention, spatial down/upsampling with optional temporal compression,
a middle, skip connections) and its spatial/temporal parameter bookkeeping for the paper's recipe: train on
images, then switch the temporal layers on and fine-tune on videos, spatial layers optionally frozen.

Activations run in the channels-last-3d memory format by default: `(b, c, t, h, w)` stored as `(b, t, h, w, c)`,
so the per-frame convolutions see NHWC frames without any copy (the fast layout of cuDNN's bf16 kernels), the
spatial attention reads its tokens as a view, and the temporal convolutions are 3D convolutions on the same
tensor.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, cast

import torch
import torch.nn.functional as F
from einops import rearrange, reduce, repeat
from torch import Tensor, nn

from make_a_video_pytorch.blocks import (
    Pseudo3DConv,
    SpatioTemporalAttention,
    TemporalDownsample,
    TemporalUpsample,
    _check_features,
    check_attention_kernel_flag,
    is_temporal_parameter,
    video_conv2d,
)
from synthesis_core.checkpoint import CheckpointError, PretrainedMixin
from synthesis_core.checks import check_in_range, check_positive_int, check_tensor
from synthesis_core.diffusion import batched_cond_uncond, cfg_combine
from synthesis_core.layers import (
    Downsample,
    FrameEmbedding,
    LayerNorm,
    TimestepEmbedding,
    Upsample,
    position_grid,
)
from synthesis_core.protocol import resolve_alias
from synthesis_core.utils import cast_tuple, exists, prob_mask_like

__all__ = ["SpaceTimeUnet", "SpaceTimeResnetBlock", "ResnetBlock"]


class RMSNorm(nn.Module):
    """RMS norm over the last dimension with a learnable gain: `x / rms(x) * gamma`."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        # autocast runs norms in float32; casting back keeps bf16 activations (and their saved copies) half the size
        return F.rms_norm(x, (x.shape[-1],), self.gamma.to(x.dtype), eps=self.eps).to(x.dtype)


def channel_rms_norm(norm: RMSNorm, x: Tensor) -> Tensor:
    """`norm` over the channels of `(b, c, ...)`, computed in the activations' own dtype.

    Channels go to the last axis (a view in the channels-last layout, so the fused rms_norm kernel applies).
    Autocast would run the norm in float32 and keep a float32 copy of its input for the backward pass; the fused
    kernel accumulates in float32 anyway, so on bf16 activations it is as accurate and stores half as much.
    """
    with torch.autocast(x.device.type, enabled=False):
        return norm(x.movedim(1, -1)).movedim(-1, 1)


class _Block(nn.Module):
    """RMS norm over channels -> optional FiLM (scale, shift) -> SiLU -> pseudo-3D convolution."""

    def __init__(self, dim: int, dim_out: int, kernel_size: int = 3):
        super().__init__()
        self.norm = RMSNorm(dim)
        self.conv = Pseudo3DConv(dim, dim_out, kernel_size=kernel_size)

    def forward(self, x: Tensor, scale_shift: tuple[Tensor, Tensor] | None = None, enable_time: bool = True) -> Tensor:
        x = channel_rms_norm(self.norm, x)
        if exists(scale_shift):
            scale, shift = scale_shift
            x = torch.addcmul(shift, x, scale + 1)
        return self.conv(F.silu(x), enable_time=enable_time)


class SpaceTimeResnetBlock(nn.Module):
    """Two norm-SiLU-pseudo-3D-conv layers with a residual; FiLM from the conditioning vector (time + text).

    On videos `(b, c, t, h, w)` and images `(b, c, h, w)` (time skipped); with `enable_time=False` a video goes
    through it frame by frame. Also importable as `ResnetBlock`, the published make-a-video name, whose
    spellings `timestep_cond_dim=` (for `cond_dim`) and `forward(x, timestep_emb=...)` (for `cond`) it accepts.
    """

    def __init__(self, dim: int, dim_out: int, cond_dim: int | None = None, *, timestep_cond_dim: int | None = None):
        super().__init__()
        cond_dim = resolve_alias("cond_dim", cond_dim, "timestep_cond_dim", timestep_cond_dim)
        check_positive_int("dim", dim)
        check_positive_int("dim_out", dim_out)
        if exists(cond_dim):
            check_positive_int("cond_dim", cond_dim)
        self.dim = dim
        self.cond_dim = cond_dim
        self.to_scale_shift = nn.Sequential(nn.SiLU(), nn.Linear(cond_dim, dim_out * 2)) if exists(cond_dim) else None
        self.block1 = _Block(dim, dim_out)
        self.block2 = _Block(dim_out, dim_out)
        self.res_conv = nn.Conv1d(dim, dim_out, 1) if dim != dim_out else None

    def forward(
        self, x: Tensor, cond: Tensor | None = None, enable_time: bool = True, *, timestep_emb: Tensor | None = None
    ) -> Tensor:
        """`cond (b, cond_dim)`: the conditioning vector (time embedding, pooled text) that FiLMs the block; for a
        video also `(b, frames, cond_dim)`, one vector per frame (the U-Net's frame embedding)."""
        cond = resolve_alias("cond", cond, "timestep_emb", timestep_emb)
        _check_features("x", x, self.dim)
        if exists(cond):
            if not exists(self.to_scale_shift):
                raise ValueError(
                    "cond: this block was built without cond_dim (timestep_cond_dim) and takes no conditioning vector"
                )
            if cond.ndim == 3 and x.ndim == 5:
                check_tensor(
                    "cond", cond, shape=(x.shape[0], x.shape[2], self.cond_dim), names=("batch", "frames", "cond_dim")
                )
            else:
                check_tensor("cond", cond, shape=(x.shape[0], self.cond_dim), names=("batch", "cond_dim"))
        is_image = x.ndim == 4
        if is_image:
            x = rearrange(x, "b c h w -> b c 1 h w")
            enable_time = False

        scale_shift = None
        if exists(cond) and self.to_scale_shift is not None:  # (checked above: cond needs to_scale_shift)
            film = self.to_scale_shift(cond).to(x.dtype)
            film = rearrange(film, "b t c -> b c t 1 1") if film.ndim == 3 else rearrange(film, "b c -> b c 1 1 1")
            scale_shift = film.chunk(2, dim=1)
        h = self.block1(x, enable_time=enable_time)
        h = self.block2(h, scale_shift=scale_shift, enable_time=enable_time)
        residual = video_conv2d(x, self.res_conv.weight, self.res_conv.bias) if exists(self.res_conv) else x
        out = h + residual
        return rearrange(out, "b c 1 h w -> b c h w") if is_image else out


# the published make-a-video-pytorch 0.4 name of the same block
ResnetBlock = SpaceTimeResnetBlock


def _per_level(name: str, value, num_levels: int) -> tuple:
    values = cast_tuple(value, num_levels)
    if len(values) != num_levels:
        raise ValueError(f"{name}: expected one value or {num_levels} (one per entry of dim_mults), got {value!r}")
    return values


class SpaceTimeUnet(PretrainedMixin, nn.Module):
    """A U-Net of pseudo-3D resnet blocks and spatio-temporal attention, for images and videos alike.

    ```
    unet = SpaceTimeUnet(dim=64, channels=3, dim_mults=(1, 2, 4, 8), text_embed_dim=768)
    noise_pred = unet(videos, timestep, text_embeds=embeds, text_mask=mask)   # videos (b, 3, 16, 64, 64)
    noise_pred = unet(images, timestep, text_embeds=embeds, text_mask=mask)   # images (b, 3, 64, 64), time skipped
    ```

    Args:
        dim: channels of the first level; level i has `dim * dim_mults[i]`.
        channels: channels of the images/videos (the output has as many).
        dim_mults: width multiplier per level; the frame size must be divisible by `2 ** (len(dim_mults) - 1)`.
        self_attns: per level, whether to add spatio-temporal attention (with cross-attention to the text);
            default: on the last level only.
        temporal_compression: per level, whether the downsampling into it also halves the frames (and the
            upsampling out of it doubles them); the first level's entry must be False. Videos need a frame count
            divisible by `2 ** sum(temporal_compression)`. Default: every level but the first.
        resnet_block_depths: resnet blocks per level (down path; the up path mirrors it); default: 2 per level.
        (These three defaults follow `len(dim_mults)`; with the default four levels they are the published
        `(False, False, False, True)`, `(False, True, True, True)` and `(2, 2, 2, 2)`.)
        attn_dim_head, attn_heads: attention head size and count.
        condition_on_timestep: embed the diffusion time (int or float) and FiLM every resnet block with it.
        text_embed_dim: width of the text embeddings to condition on (None: unconditional). The pooled text is
            added to the time embedding and every attention layer cross-attends to the tokens; a learned null
            condition stands in for dropped text (classifier-free guidance).
        cond_channels: extra input channels concatenated to the input (e.g. known frames + mask for frame
            interpolation), passed as `cond=`.
        mid_attn: attention in the middle of the U-Net.
        ff_mult: feed-forward width multiplier in the attention layers.
        attn_pos_bias: continuous relative position bias in the attention layers.
        causal_time_attn: frames attend to earlier frames only.
        channels_last: run activations in the channels-last-3d memory format (same results, faster convolutions).
        frame_embedding: tell every resnet block which frame of the clip it is working on, mixed with the
            conditioning vector (time + pooled text; `synthesis_core.layers.FrameEmbedding`, starting as the
            identity): what lets a caption such as "moving left" decide where the content of each frame goes, since
            the temporal layers alone see only distances between frames. Used on videos of more than one frame with
            the temporal layers on; images and `enable_time=False` get the plain vector, exactly as without it. A
            temporal part (`temporal_frame_embedding.*`): `freeze_spatial()` leaves it trainable,
            `load_spatial_state_dict` leaves it alone, `reset_temporal_parameters()` puts it back to the identity.
            Without time and text conditioning the vector it acts on is zero (images and frame-by-frame runs
            then get the FiLM of the zero vector, a learned constant).
        position_channels: two extra input channels holding each pixel's row and column in [-1, 1]
            (`synthesis_core.layers.position_grid`), added to every input, images included (the first convolution
            is shared, so images and videos see the same inputs). With `frame_embedding`, what lets the first
            denoising steps put content where the caption and the frame index say.
        dim_mult: the published make-a-video spelling of `dim_mults` (give one of them).
        flash_attn: the published package's choice of attention kernel. Attention here always runs on
            `F.scaled_dot_product_attention`, which picks the flash / memory-efficient / math kernel itself, so
            both values compute the same thing; only a bool is accepted.
    """

    # a config saved by 0.3 (before these arguments) describes the U-Net without them
    config_defaults_for_older_files = {"frame_embedding": False, "position_channels": False}

    def __init__(
        self,
        dim: int,
        channels: int = 3,
        dim_mults: Sequence[int] | None = None,
        self_attns: bool | Sequence[bool] | None = None,
        temporal_compression: bool | Sequence[bool] | None = None,
        resnet_block_depths: int | Sequence[int] | None = None,
        attn_dim_head: int = 64,
        attn_heads: int = 8,
        condition_on_timestep: bool = True,
        text_embed_dim: int | None = None,
        *,
        cond_channels: int = 0,
        mid_attn: bool = True,
        ff_mult: float = 4,
        attn_pos_bias: bool = True,
        causal_time_attn: bool = False,
        channels_last: bool = True,
        dim_mult: Sequence[int] | None = None,
        flash_attn: bool = False,
        frame_embedding: bool = True,
        position_channels: bool = True,
    ):
        super().__init__()
        check_positive_int("dim", dim)
        check_positive_int("channels", channels)
        check_positive_int("cond_channels", cond_channels, allow_zero=True)
        dim_mults = tuple(resolve_alias("dim_mults", dim_mults, "dim_mult", dim_mult, (1, 2, 4, 8)))
        check_attention_kernel_flag("flash_attn", flash_attn)
        if not dim_mults:
            raise ValueError("dim_mults: expected at least one level, got an empty sequence")
        for mult in dim_mults:
            check_positive_int("dim_mults", mult)
        num_levels = len(dim_mults)
        if self_attns is None:
            self_attns = (False,) * (num_levels - 1) + (True,)
        if temporal_compression is None:
            temporal_compression = (False,) + (True,) * (num_levels - 1)
        if resnet_block_depths is None:
            resnet_block_depths = 2
        self_attns = _per_level("self_attns", self_attns, num_levels)
        temporal_compression = _per_level("temporal_compression", temporal_compression, num_levels)
        resnet_block_depths = _per_level("resnet_block_depths", resnet_block_depths, num_levels)
        for depth in resnet_block_depths:
            check_positive_int("resnet_block_depths", depth)
        if temporal_compression[0]:
            raise ValueError(
                "temporal_compression: the first level has no downsampling into it, its entry must be "
                f"False, got {temporal_compression!r}"
            )
        if exists(text_embed_dim):
            check_positive_int("text_embed_dim", text_embed_dim)

        self.dim = dim
        self.channels = channels
        self.cond_channels = cond_channels
        self.text_embed_dim = text_embed_dim
        self.condition_on_timestep = condition_on_timestep
        self.temporal_compression = tuple(bool(c) for c in temporal_compression)
        self.temporal_factor = 2 ** sum(self.temporal_compression)
        self.spatial_factor = 2 ** (num_levels - 1)
        self.channels_last = channels_last

        for name, flag in (("frame_embedding", frame_embedding), ("position_channels", position_channels)):
            if not isinstance(flag, bool):
                raise TypeError(f"{name}: expected a bool, got {flag!r}")
        self.position_channels = position_channels

        # conditioning vector: time embedding + pooled text (+ the frame embedding, per frame), FiLMed into every
        # resnet block
        cond_dim = dim * 4 if (condition_on_timestep or exists(text_embed_dim) or frame_embedding) else None
        self.cond_dim = cond_dim
        self.time_embedding = TimestepEmbedding(dim, time_dim=cond_dim) if condition_on_timestep else None
        self.text_norm = None
        if exists(text_embed_dim) and cond_dim is not None:  # (cond_dim is set whenever there is text)
            self.text_norm = LayerNorm(text_embed_dim)
            self.text_to_cond = nn.Sequential(
                nn.Linear(text_embed_dim, cond_dim), nn.SiLU(), nn.Linear(cond_dim, cond_dim)
            )
            self.null_text_cond = nn.Parameter(torch.randn(cond_dim) * 0.02)
        # which frame of the clip each frame is, mixed with the time and the pooled text: without it no layer can
        # place the content of frame i according to the caption (the temporal layers see only frame distances).
        # Named `temporal_`: a temporal part, trained with the temporal layers and reset with them.
        self.temporal_frame_embedding = FrameEmbedding(cond_dim) if frame_embedding and cond_dim is not None else None

        def attention(level_dim: int) -> SpatioTemporalAttention:
            return SpatioTemporalAttention(
                level_dim,
                dim_head=attn_dim_head,
                heads=attn_heads,
                ff_mult=ff_mult,
                pos_bias=attn_pos_bias,
                causal_time_attn=causal_time_attn,
                dim_context=text_embed_dim,
                num_null_kv=1 if exists(text_embed_dim) else 0,
                flash=flash_attn,
            )

        dims = [dim * mult for mult in dim_mults]
        self.init_conv = Pseudo3DConv(channels + cond_channels + 2 * position_channels, dim, kernel_size=3)

        self.downs = nn.ModuleList([])
        for i, (level_dim, depth) in enumerate(zip(dims, resnet_block_depths)):
            level = nn.ModuleDict()
            if i > 0:
                level["downsample"] = Downsample(dims[i - 1], level_dim)
                if self.temporal_compression[i]:
                    level["temporal_down"] = TemporalDownsample(level_dim)
            level["blocks"] = nn.ModuleList(
                [SpaceTimeResnetBlock(level_dim, level_dim, cond_dim) for _ in range(depth)]
            )
            if self_attns[i]:
                level["attn"] = attention(level_dim)
            self.downs.append(level)

        self.mid_block1 = SpaceTimeResnetBlock(dims[-1], dims[-1], cond_dim)
        self.mid_attn = attention(dims[-1]) if mid_attn else None
        self.mid_block2 = SpaceTimeResnetBlock(dims[-1], dims[-1], cond_dim)

        # the up path mirrors the down path; its first block of each level takes the level's skip connection
        self.ups = nn.ModuleList([])
        for i in reversed(range(num_levels)):
            level_dim, depth = dims[i], resnet_block_depths[i]
            level = nn.ModuleDict()
            level["blocks"] = nn.ModuleList(
                [
                    SpaceTimeResnetBlock(level_dim * 2 if j == 0 else level_dim, level_dim, cond_dim)
                    for j in range(depth)
                ]
            )
            if self_attns[i]:
                level["attn"] = attention(level_dim)
            if i > 0:
                if self.temporal_compression[i]:
                    level["temporal_up"] = TemporalUpsample(level_dim)
                level["upsample"] = Upsample(level_dim, dims[i - 1])
            self.ups.append(level)

        self.final_block = SpaceTimeResnetBlock(dim * 2, dim, cond_dim)
        self.final_norm = RMSNorm(dim)
        self.final_conv = nn.Conv1d(dim, channels, 1)

    # -- parameter groups (the paper's recipe) --------------------------------------------------------------

    def temporal_parameters(self) -> Iterator[nn.Parameter]:
        """The parameters that mix frames: temporal convolutions, temporal attention, temporal resampling."""
        return (p for name, p in self.named_parameters() if is_temporal_parameter(name))

    def spatial_parameters(self) -> Iterator[nn.Parameter]:
        """Every other parameter: what image training learns (per-frame layers, time and text conditioning)."""
        return (p for name, p in self.named_parameters() if not is_temporal_parameter(name))

    def freeze_spatial(self, frozen: bool = True) -> SpaceTimeUnet:
        """Stop (or, with `frozen=False`, resume) training the spatial parameters; returns the U-Net."""
        for param in self.spatial_parameters():
            param.requires_grad_(not frozen)
        return self

    @torch.no_grad()
    def reset_temporal_parameters(self) -> SpaceTimeUnet:
        """Put every temporal part back to its identity initialisation; returns the U-Net."""
        for module in self.modules():
            if module is not self and hasattr(module, "reset_temporal_parameters"):
                cast(Any, module).reset_temporal_parameters()
        if exists(self.temporal_frame_embedding):
            # a fresh one's weights (zero outputs: the identity), copied in so optimizers keep their parameters
            fresh = FrameEmbedding(self.temporal_frame_embedding.motion.in_features)
            self.temporal_frame_embedding.load_state_dict(fresh.state_dict())
        return self

    def load_spatial_state_dict(self, state_dict: Mapping[str, Tensor]) -> SpaceTimeUnet:
        """Load the spatial weights of another U-Net of the same configuration (e.g. one trained on images); the
        temporal parts of this one are left as they are. Mismatching keys or shapes raise a `CheckpointError`."""
        spatial = {k: v for k, v in state_dict.items() if not is_temporal_parameter(k)}
        expected = {k: v for k, v in self.state_dict().items() if not is_temporal_parameter(k)}
        missing = sorted(set(expected) - set(spatial))
        unexpected = sorted(set(spatial) - set(expected))
        mismatched = [
            f"{k}: {tuple(spatial[k].shape)} vs {tuple(expected[k].shape)}"
            for k in expected
            if k in spatial and spatial[k].shape != expected[k].shape
        ]
        if missing or unexpected or mismatched:
            raise CheckpointError(
                "state_dict: the spatial weights do not fit this SpaceTimeUnet (was it built with the same dim, "
                f"dim_mults, self_attns, resnet_block_depths, text_embed_dim?): missing {missing[:5]}, unexpected "
                f"{unexpected[:5]}, shape mismatches {mismatched[:5]}"
            )
        # this U-Net's own temporal weights are loaded with the spatial ones: a partial load would let modules that
        # fill in keys missing from old checkpoints (the frame embedding's motion term) overwrite them
        merged = {k: v for k, v in self.state_dict().items() if is_temporal_parameter(k)}
        merged.update(spatial)
        self.load_state_dict(merged)
        return self

    # -- inputs -----------------------------------------------------------------------------------------------

    def _check_input(self, x: Tensor, enable_time: bool) -> None:
        check_tensor("x", x, ndim=(4, 5), dtype_floating=True)
        names = (
            ("batch", "channels", "height", "width")
            if x.ndim == 4
            else ("batch", "channels", "frames", "height", "width")
        )
        check_tensor("x", x, shape=("batch", self.channels, *(None,) * (x.ndim - 2)), names=names)
        height, width = x.shape[-2:]
        if height % self.spatial_factor or width % self.spatial_factor:
            raise ValueError(
                f"x: height and width must be divisible by {self.spatial_factor} (2 ** (levels - 1)), "
                f"got {height}x{width} in shape {tuple(x.shape)}"
            )
        if x.ndim == 5 and enable_time and x.shape[2] % self.temporal_factor:
            raise ValueError(
                f"x: the number of frames must be divisible by {self.temporal_factor}, the temporal compression of "
                f"this U-Net (temporal_compression={self.temporal_compression}), got {x.shape[2]} frames in shape "
                f"{tuple(x.shape)}; use a multiple of {self.temporal_factor} or enable_time=False"
            )

    def _timestep_batch(self, timestep: Tensor | float | int | None, batch: int, device: torch.device) -> Tensor | None:
        if timestep is None:
            if self.condition_on_timestep:
                raise ValueError(
                    "timestep: this U-Net was built with condition_on_timestep=True, pass the diffusion "
                    "time (an int or float, or a (batch,) tensor)"
                )
            return None
        if isinstance(timestep, bool) or not isinstance(timestep, (int, float, Tensor)):
            raise TypeError(f"timestep: expected an int, a float or a tensor, got {type(timestep).__name__}")
        timestep = torch.as_tensor(timestep, device=device)
        if timestep.ndim == 0:
            timestep = timestep.expand(batch)
        check_tensor("timestep", timestep, shape=(batch,), names=("batch",))
        return timestep

    def _text_condition(
        self,
        text_embeds: Tensor | None,
        text_mask: Tensor | None,
        batch: int,
        drop_text: Tensor,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """(pooled text conditioning (b, cond_dim), context tokens (b, n, d), context mask (b, n)).

        Dropped (or absent) text masks every token, so cross-attention sees only its null key/value, and the
        pooled conditioning becomes the learned null vector: the same path in training and in sampling.
        """
        if self.text_embed_dim is None or self.text_norm is None:
            raise ValueError("text_embeds: this U-Net was built without text_embed_dim and cannot condition on text")
        if text_embeds is None:
            if exists(text_mask):
                raise ValueError("text_mask: given without text_embeds")
            context = self.null_text_cond.new_zeros(batch, 1, self.text_embed_dim)
            context_mask = torch.zeros(batch, 1, dtype=torch.bool, device=context.device)
            pooled: Tensor = repeat(self.null_text_cond, "d -> b d", b=batch)
            return pooled, context, context_mask

        check_tensor(
            "text_embeds",
            text_embeds,
            ndim=3,
            shape=(batch, None, self.text_embed_dim),
            names=("batch", "tokens", "text_embed_dim"),
            dtype_floating=True,
        )
        if text_mask is None:
            text_mask = torch.ones(text_embeds.shape[:2], dtype=torch.bool, device=text_embeds.device)
        check_tensor("text_mask", text_mask, shape=tuple(text_embeds.shape[:2]), names=("batch", "tokens"))
        keep = text_mask.bool() & ~rearrange(drop_text, "b -> b 1")

        context = self.text_norm(text_embeds)
        weights = rearrange(keep.to(context.dtype), "b n -> b n 1")
        pooled_text = (context * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)
        pooled = self.text_to_cond(pooled_text)
        null = self.null_text_cond.to(pooled.dtype)
        pooled = torch.where(rearrange(keep.any(dim=1), "b -> b 1"), pooled, null)
        return pooled, context, keep

    def _frame_conditions(
        self, cond_vector: Tensor | None, frames: int, use_frames: bool
    ) -> Callable[[int], Tensor | None]:
        """`frame_count -> conditioning` for the resnet blocks: `(b, cond_dim)`, or `(b, frames, cond_dim)` with the
        frame embedding (videos of more than one frame with the temporal layers on).

        A level whose frames are halved by temporal compression gets the mean of each pair of frame vectors: its
        frame i stands for frames 2i and 2i+1 (the temporal downsampling starts as the same mean).
        """
        if cond_vector is None or not (use_frames and exists(self.temporal_frame_embedding)):
            return lambda _: cond_vector
        per_frame = rearrange(self.temporal_frame_embedding(cond_vector, frames), "(b t) d -> b t d", t=frames)
        by_frames: dict[int, Tensor] = {frames: per_frame}

        def at(count: int) -> Tensor:
            if count not in by_frames:
                by_frames[count] = reduce(per_frame, "b (t r) d -> b t d", "mean", t=count)
            return by_frames[count]

        return at

    def _memory_format(self, x: Tensor) -> Tensor:
        return x.contiguous(memory_format=torch.channels_last_3d) if self.channels_last else x

    # -- forward ----------------------------------------------------------------------------------------------

    def forward(
        self,
        x: Tensor,
        timestep: Tensor | float | int | None = None,
        *,
        text_embeds: Tensor | None = None,
        text_mask: Tensor | None = None,
        cond: Tensor | None = None,
        cond_drop_prob: float = 0.0,
        drop_text: Tensor | None = None,
        enable_time: bool = True,
    ) -> Tensor:
        """Predict from noisy images `(b, c, h, w)` or videos `(b, c, t, h, w)`; the output has the input's shape.

        `timestep`: an int/float (all items) or a `(b,)` tensor of ints or floats. `text_embeds (b, n, d)` with
        `text_mask (b, n)` (True = token) condition a text U-Net; `cond_drop_prob` drops the text of each item
        with that probability (classifier-free guidance training), `drop_text (b,)` bool drops it for chosen
        items. `cond (b, cond_channels, [t,] h, w)`: the extra input channels. `enable_time=False` runs a video
        frame by frame (temporal layers and temporal compression skipped), exactly like a batch of images.
        """
        self._check_input(x, enable_time)
        is_image = x.ndim == 4
        batch = x.shape[0]
        if self.cond_channels:
            if cond is None:
                raise ValueError(
                    f"cond: this U-Net takes {self.cond_channels} conditioning channels (cond_channels), pass cond="
                )
            check_tensor(
                "cond",
                cond,
                shape=(batch, self.cond_channels, *x.shape[2:]),
                names=("batch", "cond_channels", *(("frames",) if not is_image else ()), "height", "width"),
            )
            x = torch.cat((x, cond.to(x.dtype)), dim=1)
        elif exists(cond):
            raise ValueError("cond: this U-Net was built with cond_channels=0 and takes no conditioning channels")
        if exists(text_embeds) and not exists(self.text_embed_dim):
            raise ValueError("text_embeds: this U-Net was built without text_embed_dim and cannot condition on text")
        check_in_range("cond_drop_prob", cond_drop_prob, 0.0, 1.0)

        if is_image:
            # an image is a one-frame video whose temporal layers are skipped
            x = rearrange(x, "b c h w -> b c 1 h w")
            enable_time = False

        # conditioning vector: time embedding (+ pooled text)
        cond_vector = None
        timestep = self._timestep_batch(timestep, batch, x.device)
        if exists(self.time_embedding):
            cond_vector = self.time_embedding(timestep)
        context = context_mask = None
        if exists(self.text_embed_dim):
            if drop_text is None:
                drop_text = prob_mask_like((batch,), cond_drop_prob, device=x.device)
            else:
                check_tensor("drop_text", drop_text, shape=(batch,), names=("batch",))
                drop_text = drop_text.to(device=x.device, dtype=torch.bool)
            pooled, context, context_mask = self._text_condition(text_embeds, text_mask, batch, drop_text)
            cond_vector = pooled if cond_vector is None else cond_vector + pooled.to(cond_vector.dtype)
        if cond_vector is None and exists(self.cond_dim):
            # neither time nor text, only the frame embedding: it acts on a zero vector (images get its FiLM too)
            cond_vector = x.new_zeros(batch, self.cond_dim)
        frames = x.shape[2]
        conds = self._frame_conditions(cond_vector, frames, use_frames=enable_time and frames > 1)

        def attend(attn: nn.Module, h: Tensor) -> Tensor:
            return self._memory_format(attn(h, enable_time=enable_time, context=context, context_mask=context_mask))

        def film(h: Tensor) -> Tensor | None:
            # the conditioning at the frame rate of `h` (temporal compression halves it below the first level)
            return conds(h.shape[2])

        if self.position_channels:
            grid = position_grid(x[:, :, 0])
            x = torch.cat((x, repeat(grid, "b c h w -> b c t h w", t=frames)), dim=1)
        x = self._memory_format(x)
        x = self.init_conv(x, enable_time=enable_time)
        init_x = x

        skips = []
        for level in cast(Iterable[nn.ModuleDict], self.downs):
            if "downsample" in level:
                x = self._memory_format(level["downsample"](x))
                if "temporal_down" in level and enable_time:
                    x = level["temporal_down"](x)
            for block in cast(nn.ModuleList, level["blocks"]):
                x = block(x, film(x), enable_time=enable_time)
            if "attn" in level:
                x = attend(level["attn"], x)
            skips.append(x)

        x = self.mid_block1(x, film(x), enable_time=enable_time)
        if exists(self.mid_attn):
            x = attend(self.mid_attn, x)
        x = self.mid_block2(x, film(x), enable_time=enable_time)

        for level in cast(Iterable[nn.ModuleDict], self.ups):
            x = torch.cat((x, skips.pop()), dim=1)
            for block in cast(nn.ModuleList, level["blocks"]):
                x = block(x, film(x), enable_time=enable_time)
            if "attn" in level:
                x = attend(level["attn"], x)
            if "upsample" in level:
                if "temporal_up" in level and enable_time:
                    x = self._memory_format(level["temporal_up"](x))
                x = self._memory_format(level["upsample"](x))

        x = self.final_block(torch.cat((x, init_x), dim=1), film(x), enable_time=enable_time)
        x = F.silu(channel_rms_norm(self.final_norm, x))
        out = video_conv2d(x, self.final_conv.weight, self.final_conv.bias).contiguous()
        return rearrange(out, "b c 1 h w -> b c h w") if is_image else out

    def forward_with_cond_scale(
        self,
        x: Tensor,
        timestep: Tensor | float | int | None = None,
        *,
        cond_scale: float = 1.0,
        rescale_phi: float = 0.0,
        text_embeds: Tensor | None = None,
        text_mask: Tensor | None = None,
        **kwargs,
    ) -> Tensor:
        """Classifier-free guided prediction: `uncond + cond_scale * (cond - uncond)` (core `cfg_combine`).

        `cond_scale == 1` (or no text to guide with) is exactly the conditional forward; otherwise the conditional
        and unconditional passes run as one batch of twice the size.
        """
        check_in_range("cond_scale", cond_scale, 0.0, None)
        if cond_scale == 1 or not exists(self.text_embed_dim) or text_embeds is None:
            return self.forward(x, timestep, text_embeds=text_embeds, text_mask=text_mask, cond_drop_prob=0.0, **kwargs)

        cond_out, uncond_out = batched_cond_uncond(
            self.forward, x, timestep, null_keyword="drop_text", text_embeds=text_embeds, text_mask=text_mask, **kwargs
        )
        return cfg_combine(cond_out, uncond_out, cond_scale, rescale_phi=rescale_phi)
