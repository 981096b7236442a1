"""The space-time factored 3D U-Net of Video Diffusion Models (Ho et al. 2022).

Every convolution, norm and spatial attention works on single frames; frames only meet in the temporal attention
layers (one per level, attending over time at each pixel with a T5 relative position bias). Turning those off for
chosen batch items (`focus_present_mask`) therefore makes their frames fully independent, which is what lets the
same network train on images and videos together.

Layout: the activations stay folded as `((batch frames), channels, height, width)` from the first convolution to
the last, so resnet blocks, linear attention and resampling run as plain 2D ops on one big batch without any
reshape; only the temporal attention unfolds a `(batch, channels, frames, height, width)` view of them.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from einops import rearrange, repeat
from torch import Tensor, nn

from synthesis_core.attention import LinearAttention, SpaceTimeAttention
from synthesis_core.checkpoint import PretrainedMixin
from synthesis_core.checks import check_choice, check_positive_int, check_tensor
from synthesis_core.chunked import checkpointed
from synthesis_core.diffusion import batched_cond_uncond, cfg_combine
from synthesis_core.layers import (
    ChannelLayerNorm,
    Downsample,
    FrameEmbedding,
    ResnetBlock,
    TimestepEmbedding,
    Upsample,
    position_grid,
)
from synthesis_core.text import DEFAULT_BERT_NAME, TextEncoder
from synthesis_core.utils import default, exists, prob_mask_like

__all__ = ["Unet3D", "ConvNextBlock", "Condition"]

logger = logging.getLogger(__name__)

BLOCK_TYPES = ("resnet", "convnext")
TIME_POS_BIASES = ("t5", "rotary", "continuous")

# what `cond` may be: a (batch, cond_dim) tensor, or captions for the built-in BERT
Condition = Tensor | Sequence[str] | None


class ConvNextBlock(nn.Module):
    """ConvNeXt-style block for 2D feature maps (the `block_type='convnext'` alternative to `ResnetBlock`):
    depthwise 7x7 conv, time embedding added per channel, channel LayerNorm, 1x1 expansion, GELU, 1x1 projection,
    plus a (1x1-projected) residual. Same call as the core's `ResnetBlock`: `forward(x (b, c, h, w), time_emb)`.
    """

    def __init__(self, dim: int, dim_out: int, time_emb_dim: int | None = None, mult: int = 2, **_unused):
        super().__init__()
        self.time_mlp = nn.Sequential(nn.SiLU(), nn.Linear(time_emb_dim, dim)) if exists(time_emb_dim) else None
        self.depthwise_conv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.net = nn.Sequential(
            ChannelLayerNorm(dim),
            nn.Conv2d(dim, dim_out * mult, 1),
            nn.GELU(),
            nn.Conv2d(dim_out * mult, dim_out, 1),
        )
        self.res_conv = nn.Conv2d(dim, dim_out, 1) if dim != dim_out else nn.Identity()

    def forward(self, x: Tensor, time_emb: Tensor | None = None) -> Tensor:
        h = self.depthwise_conv(x)
        if exists(self.time_mlp):
            if time_emb is None:
                raise ValueError("time_emb: this ConvNextBlock was built with time_emb_dim and needs a time embedding")
            h = h + rearrange(self.time_mlp(time_emb), "b c -> b c 1 1")
        return self.net(h) + self.res_conv(x)


class _Checkpointable(nn.Module):
    """A residual layer whose branch can be recomputed in backward instead of stored (`checkpoint = True`)."""

    checkpoint = False

    def branch(self, x: Tensor, *args, **kwargs) -> Tensor:
        raise NotImplementedError

    def forward(self, x: Tensor, *args, **kwargs) -> Tensor:
        return x + checkpointed(self.branch, x, *args, enabled=self.checkpoint and self.training, **kwargs)


class _TemporalAttention(_Checkpointable):
    """Residual attention over frames at each pixel of a folded `((b t), c, h, w)` feature map.

    Wraps the core's `SpaceTimeAttention(axis='time')`, which works on `(b, c, t, h, w)`: the folded tensor is
    viewed (not copied) in that layout. `skip_mask[i]=True` makes the layer the identity for batch item i.
    """

    def __init__(self, dim: int, heads: int, dim_head: int, pos_bias: str):
        super().__init__()
        self.attn = SpaceTimeAttention(dim, axis="time", dim_head=dim_head, heads=heads, pos_bias=pos_bias)

    def branch(self, x: Tensor, frames: int, skip_mask: Tensor | None = None) -> Tensor:
        out = self.attn(rearrange(x, "(b t) c h w -> b c t h w", t=frames), skip_mask=skip_mask)
        return rearrange(out, "b c t h w -> (b t) c h w")


class _SpatialAttention(_Checkpointable):
    """Residual full attention over the pixels of each frame (used at the lowest resolution)."""

    def __init__(self, dim: int, heads: int, dim_head: int):
        super().__init__()
        self.attn = SpaceTimeAttention(dim, axis="space", dim_head=dim_head, heads=heads)

    def branch(self, x: Tensor) -> Tensor:
        # every frame attends on its own: a folded batch of frames is a batch of one-frame videos
        out = self.attn(rearrange(x, "b c h w -> b c 1 h w"))
        return rearrange(out, "b c 1 h w -> b c h w")


class _LinearAttention(_Checkpointable):
    """Residual linear attention over the pixels of each frame (cheap enough for every resolution)."""

    def __init__(self, dim: int, heads: int, dim_head: int):
        super().__init__()
        self.attn = LinearAttention(dim, dim_head=dim_head, heads=heads)

    def branch(self, x: Tensor) -> Tensor:
        return self.attn(x)


class _Level(nn.Module):
    """One resolution of the U-Net: two blocks, spatial attention, temporal attention."""

    def __init__(
        self,
        dim_in: int,
        dim_out: int,
        *,
        block,
        time_dim: int,
        spatial_attn: nn.Module,
        temporal_attn: _TemporalAttention,
    ):
        super().__init__()
        self.block1 = block(dim_in, dim_out, time_dim)
        self.block2 = block(dim_out, dim_out, time_dim)
        self.spatial_attn = spatial_attn
        self.temporal_attn = temporal_attn

    def forward(self, x: Tensor, emb: Tensor, frames: int, time_enabled: bool, skip_mask: Tensor | None) -> Tensor:
        x = self.block1(x, emb)
        x = self.block2(x, emb)
        x = self.spatial_attn(x)
        if time_enabled:
            x = self.temporal_attn(x, frames, skip_mask)
        return x


class Unet3D(PretrainedMixin, nn.Module):
    """Space-time factored U-Net for video diffusion: `forward(x (b, c, t, h, w), time (b,)) -> (b, out_dim, t, h, w)`.

    Args:
        dim: base width; level i has `dim * dim_mults[i]` channels.
        cond_dim: width of a conditioning vector (e.g. a text embedding), or None for an unconditional model.
        out_dim: output channels (default: `channels`).
        channels: input channels.
        attn_heads, attn_dim_head: heads and head width of every attention layer.
        use_bert_text_cond: condition on captions encoded by BERT (through `synthesis_core.text.TextEncoder`);
            `cond_dim` is then the encoder's width. Strings passed as `cond` are encoded on the fly.
        text_encoder_name: hub name or local folder of the BERT model (loaded lazily, never at construction).
        init_dim, init_kernel_size: width and (odd) kernel of the first per-frame convolution.
        use_sparse_linear_attn: linear attention over the pixels of each frame at every level (full attention is
            always used at the middle).
        block_type: 'resnet' (the core's `ResnetBlock`) or 'convnext' (`ConvNextBlock`).
        resnet_groups: GroupNorm groups of the resnet blocks (each frame is normalised on its own).
        time_pos_bias: position information of the temporal attention: 't5' relative bias, 'rotary' or
            'continuous' (an MLP bias that extrapolates to more frames).
        text_max_length: maximum caption length in tokens for the BERT encoder.
        frame_embedding: tell every per-frame layer which frame of the clip it is working on, mixed with the
            condition (`synthesis_core.layers.FrameEmbedding`); what lets a caption such as "moving left" decide
            where the content of each frame goes. One-frame inputs (images) skip it.
        position_channels: two extra input channels holding each pixel's row and column in [-1, 1]. With
            `frame_embedding`, what lets the first denoising steps put content where the caption and the frame
            index say (zero padding alone tells the convolutions little about where they are).
        gradient_checkpointing: recompute activations in backward instead of storing them: True (or 'levels')
            for every level, 'attention' for the attention layers only (most of the activation memory at the
            high resolutions, a smaller share of the compute).
    """

    # a config saved by 0.1 (before these arguments) describes the U-Net without them
    config_defaults_for_older_files = {"frame_embedding": False, "position_channels": False}

    def __init__(
        self,
        dim: int,
        cond_dim: int | None = None,
        out_dim: int | None = None,
        dim_mults: Sequence[int] = (1, 2, 4, 8),
        channels: int = 3,
        attn_heads: int = 8,
        attn_dim_head: int = 32,
        use_bert_text_cond: bool = False,
        text_encoder_name: str = DEFAULT_BERT_NAME,
        init_dim: int | None = None,
        init_kernel_size: int = 7,
        use_sparse_linear_attn: bool = True,
        block_type: str = "resnet",
        resnet_groups: int = 8,
        time_pos_bias: str = "t5",
        text_max_length: int = 256,
        gradient_checkpointing: bool | str = False,
        frame_embedding: bool = True,
        position_channels: bool = True,
    ):
        super().__init__()
        check_positive_int("dim", dim)
        check_positive_int("channels", channels)
        check_positive_int("attn_heads", attn_heads)
        check_positive_int("attn_dim_head", attn_dim_head)
        check_choice("block_type", block_type, BLOCK_TYPES)
        check_choice("time_pos_bias", time_pos_bias, TIME_POS_BIASES)
        if not isinstance(dim_mults, (tuple, list)) or not dim_mults:
            raise TypeError(f"dim_mults: expected a non-empty tuple of ints, got {dim_mults!r}")
        for mult in dim_mults:
            check_positive_int("dim_mults", mult)
        if not isinstance(init_kernel_size, int) or init_kernel_size % 2 == 0:
            raise ValueError(f"init_kernel_size: expected an odd int, got {init_kernel_size!r}")

        self.channels = channels
        self.out_dim = default(out_dim, channels)
        self.num_levels = len(dim_mults)
        if gradient_checkpointing is True:
            gradient_checkpointing = "levels"
        check_choice("gradient_checkpointing", gradient_checkpointing, (False, None, "levels", "attention"))
        self.checkpoint_levels = gradient_checkpointing == "levels"

        # conditioning: a vector per sample (or captions through BERT), replaced by a learned null vector when
        # dropped, so classifier-free guidance has a trained unconditional branch
        self.text_encoder = None
        if use_bert_text_cond:
            self.text_encoder = TextEncoder(text_encoder_name, max_length=text_max_length)
            encoder_dim = self.text_encoder.dim
            if exists(cond_dim) and cond_dim != encoder_dim:
                raise ValueError(
                    f"cond_dim: with use_bert_text_cond=True the condition width is the text encoder's "
                    f"({text_encoder_name!r}: {encoder_dim}); got cond_dim={cond_dim} (leave it None)"
                )
            cond_dim = encoder_dim
        self.cond_dim = cond_dim
        self.has_cond = exists(cond_dim)

        time_dim = dim * 4
        self.time_embedding = TimestepEmbedding(dim, time_dim=time_dim)
        if cond_dim is not None:  # self.has_cond
            check_positive_int("cond_dim", cond_dim)
            self.null_cond_emb = nn.Parameter(torch.randn(cond_dim))
            self.cond_mlp = nn.Sequential(nn.Linear(cond_dim, time_dim), nn.SiLU(), nn.Linear(time_dim, time_dim))
        # which frame of the clip each folded frame is, mixed with the condition: without it no layer can place the
        # content of frame i according to the caption (only relative frame distances reach the temporal attention)
        self.frame_embedding = FrameEmbedding(time_dim) if frame_embedding else None

        if block_type == "resnet":

            def block(dim_in, dim_out, time_emb_dim):
                return ResnetBlock(dim_in, dim_out, time_emb_dim=time_emb_dim, groups=resnet_groups)
        else:

            def block(dim_in, dim_out, time_emb_dim):
                return ConvNextBlock(dim_in, dim_out, time_emb_dim=time_emb_dim)

        def temporal_attn(width):
            return _TemporalAttention(width, heads=attn_heads, dim_head=attn_dim_head, pos_bias=time_pos_bias)

        def spatial_attn(width):
            if not use_sparse_linear_attn:
                return nn.Identity()
            return _LinearAttention(width, heads=attn_heads, dim_head=attn_dim_head)

        init_dim = default(init_dim, dim)
        self.position_channels = position_channels
        self.init_conv = nn.Conv2d(
            channels + 2 * position_channels, init_dim, init_kernel_size, padding=init_kernel_size // 2
        )
        self.init_temporal_attn = temporal_attn(init_dim)

        dims = [init_dim, *(dim * mult for mult in dim_mults)]
        in_out = list(zip(dims[:-1], dims[1:]))

        self.downs = nn.ModuleList([])
        self.downsamples = nn.ModuleList([])
        for index, (dim_in, dim_out) in enumerate(in_out):
            is_last = index == len(in_out) - 1
            self.downs.append(
                _Level(
                    dim_in,
                    dim_out,
                    block=block,
                    time_dim=time_dim,
                    spatial_attn=spatial_attn(dim_out),
                    temporal_attn=temporal_attn(dim_out),
                )
            )
            self.downsamples.append(nn.Identity() if is_last else Downsample(dim_out))

        mid_dim = dims[-1]
        self.mid_block1 = block(mid_dim, mid_dim, time_dim)
        self.mid_spatial_attn = _SpatialAttention(mid_dim, heads=attn_heads, dim_head=attn_dim_head)
        self.mid_temporal_attn = temporal_attn(mid_dim)
        self.mid_block2 = block(mid_dim, mid_dim, time_dim)

        # the way up mirrors the way down; each level first concatenates the skip of its twin
        self.ups = nn.ModuleList([])
        self.upsamples = nn.ModuleList([])
        for index, (dim_in, dim_out) in reversed(list(enumerate(in_out))):
            self.ups.append(
                _Level(
                    dim_out * 2,
                    dim_in,
                    block=block,
                    time_dim=time_dim,
                    spatial_attn=spatial_attn(dim_in),
                    temporal_attn=temporal_attn(dim_in),
                )
            )
            self.upsamples.append(nn.Identity() if index == 0 else Upsample(dim_in))

        self.final_block = block(init_dim * 2, dim, time_dim)
        self.final_conv = nn.Conv2d(dim, self.out_dim, 1)

        if gradient_checkpointing == "attention":
            for module in self.modules():
                if isinstance(module, _Checkpointable):
                    module.checkpoint = True

    # -- conditioning --------------------------------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return self.init_conv.weight.device

    @torch.no_grad()
    def embed_text(self, texts: Sequence[str], use_cls: bool = False) -> Tensor:
        """Captions -> `(batch, cond_dim)` float32 vectors from the frozen BERT: the [CLS] token's embedding when
        `use_cls`, else the mean over the caption's tokens."""
        if self.text_encoder is None:
            raise ValueError(
                "cond: strings need a model built with use_bert_text_cond=True; pass a (batch, cond_dim) tensor instead"
            )
        if isinstance(texts, str) or not all(isinstance(text, str) for text in texts):
            raise TypeError("cond: expected a list of strings (one caption per sample)")
        embeds, mask = self.text_encoder.encode(list(texts), self.device)
        if use_cls:
            return embeds[:, 0].float()
        weights = mask.to(embeds.dtype)[..., None]
        return ((embeds * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)).float()

    def prepare_cond(self, cond: Condition, batch: int | None = None, use_cls: bool = False) -> Tensor | None:
        """Validate a condition and turn captions into vectors: returns a `(batch, cond_dim)` tensor or None."""
        if cond is None:
            return None
        if not self.has_cond:
            raise ValueError(
                "cond: this Unet3D is unconditional (built without cond_dim or use_bert_text_cond); "
                "build it with cond_dim=... to condition on vectors"
            )
        if not isinstance(cond, Tensor):
            cond = self.embed_text(cond, use_cls=use_cls)
        check_tensor("cond", cond, shape=("batch", self.cond_dim), names=("batch", "cond_dim"), dtype_floating=True)
        if exists(batch) and cond.shape[0] != batch:
            raise ValueError(f"cond: expected a batch of {batch} conditions (one per video), got {cond.shape[0]}")
        return cond

    def _embedding(self, time: Tensor, cond: Tensor | None, null_cond_mask: Tensor) -> Tensor:
        emb = self.time_embedding(time)
        if not self.has_cond:
            return emb
        null = self.null_cond_emb.to(emb.dtype)
        if cond is None:
            cond = repeat(null, "d -> b d", b=time.shape[0])
        else:
            cond = torch.where(rearrange(null_cond_mask, "b -> b 1"), null, cond.to(emb.dtype))
        return emb + self.cond_mlp(cond)

    # -- forward ---------------------------------------------------------------------------------------------------

    def _check_inputs(self, x: Tensor, time: Tensor | int | float) -> Tensor:
        check_tensor(
            "x",
            x,
            shape=("batch", self.channels, "frames", "height", "width"),
            names=("batch", "channels", "frames", "height", "width"),
            dtype_floating=True,
        )
        factor = 2 ** (self.num_levels - 1)
        height, width = x.shape[-2:]
        if height % factor or width % factor:
            raise ValueError(
                f"x: height and width must be multiples of {factor} (2 ** (levels - 1) for "
                f"{self.num_levels} levels), got {height}x{width}"
            )
        if not isinstance(time, Tensor):
            time = torch.tensor(time, device=x.device)
        if time.ndim == 0:
            time = time.expand(x.shape[0])
        check_tensor("time", time, shape=(x.shape[0],), names=("batch",))
        return time

    def forward(
        self,
        x: Tensor,
        time: Tensor,
        cond: Condition = None,
        null_cond_prob: float = 0.0,
        focus_present_mask: Tensor | None = None,
        prob_focus_present: float = 0.0,
        *,
        null_cond_mask: Tensor | None = None,
    ) -> Tensor:
        """Predict from noisy videos `x (b, c, t, h, w)` at diffusion times `time (b,)` (ints or floats).

        `cond`: `(b, cond_dim)` tensor, captions (with BERT) or None (the null condition, for conditional models).
        `null_cond_prob`: probability of replacing each sample's condition by the learned null (training dropout);
        `null_cond_mask (b,)` bool picks them explicitly instead. `focus_present_mask (b,)` bool, or
        `prob_focus_present`, turns off every temporal attention for those samples (their frames become
        independent). One-frame inputs (images) never use temporal attention.
        """
        time = self._check_inputs(x, time)
        batch, _, frames = x.shape[:3]
        device = x.device
        cond = self.prepare_cond(cond, batch)

        if exists(null_cond_mask):
            check_tensor("null_cond_mask", null_cond_mask, shape=(batch,), names=("batch",))
            null_cond_mask = null_cond_mask.to(device=device, dtype=torch.bool)
        else:
            null_cond_mask = prob_mask_like((batch,), null_cond_prob, device)

        time_enabled = frames > 1 and prob_focus_present < 1
        skip_mask = None
        if exists(focus_present_mask):
            check_tensor("focus_present_mask", focus_present_mask, shape=(batch,), names=("batch",))
            skip_mask = focus_present_mask.to(device=device, dtype=torch.bool)
        elif 0 < prob_focus_present < 1:
            skip_mask = prob_mask_like((batch,), prob_focus_present, device)

        # one embedding per frame, since the frames are folded into the batch
        emb = self._embedding(time, cond, null_cond_mask)
        if exists(self.frame_embedding) and time_enabled:
            emb = self.frame_embedding(emb, frames)
        else:
            emb = repeat(emb, "b d -> (b t) d", t=frames)
        x = rearrange(x, "b c t h w -> (b t) c h w")
        if self.position_channels:
            x = torch.cat((x, position_grid(x)), dim=1)

        x = self.init_conv(x)
        if time_enabled:
            x = self.init_temporal_attn(x, frames, skip_mask)
        init_residual = x

        def run(module, *args):
            return checkpointed(module, *args, enabled=self.checkpoint_levels and self.training)

        skips = []
        for level, downsample in zip(self.downs, self.downsamples):
            x = run(level, x, emb, frames, time_enabled, skip_mask)
            skips.append(x)
            x = downsample(x)

        x = self.mid_block1(x, emb)
        x = self.mid_spatial_attn(x)
        if time_enabled:
            x = self.mid_temporal_attn(x, frames, skip_mask)
        x = self.mid_block2(x, emb)

        for level, upsample in zip(self.ups, self.upsamples):
            x = torch.cat((x, skips.pop()), dim=1)
            x = run(level, x, emb, frames, time_enabled, skip_mask)
            x = upsample(x)

        x = torch.cat((x, init_residual), dim=1)
        x = self.final_conv(self.final_block(x, emb))
        return rearrange(x, "(b t) c h w -> b c t h w", t=frames)

    def forward_with_cond_scale(
        self,
        *args,
        cond_scale: float = 2.0,
        remove_parallel_component: bool = False,
        rescale_phi: float = 0.0,
        **kwargs,
    ) -> Tensor:
        """Classifier-free guidance: `null + cond_scale * (cond - null)`, conditional and null predictions computed
        in one batched forward. `cond_scale=1` (or an unconditional model) is a plain forward without dropout."""
        names = ("x", "time", "cond", "null_cond_prob", "focus_present_mask", "prob_focus_present")
        if len(args) > len(names):
            raise TypeError(
                f"forward_with_cond_scale: at most {len(names)} positional arguments ({', '.join(names)}), "
                f"got {len(args)}"
            )
        call = dict(zip(names, args))
        call.update(kwargs)
        call.pop("null_cond_mask", None)
        if cond_scale == 1 or not self.has_cond:
            call["null_cond_prob"] = 0.0
            return self.forward(**call)

        x, time = call.pop("x"), call.pop("time")
        time = self._check_inputs(x, time)
        batch = x.shape[0]
        cond = self.prepare_cond(call.pop("cond", None), batch)
        call.pop("null_cond_prob", None)
        # one batch of 2b: the focus mask and the condition are repeated, the second half uses the null condition
        conditional, unconditional = batched_cond_uncond(
            self.forward, x, time, null_keyword="null_cond_mask", cond=cond, **call
        )
        return cfg_combine(
            conditional,
            unconditional,
            cond_scale,
            remove_parallel_component=remove_parallel_component,
            rescale_phi=rescale_phi,
        )
