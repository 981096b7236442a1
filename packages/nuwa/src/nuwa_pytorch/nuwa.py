"""NUWA (Wu et al. 2021): text-to-video (and sketch-to-video) as autoregressive generation of VQGAN tokens.

    nuwa = NUWA(vae=vae, dim=512, text_num_tokens=20000, max_video_frames=10, dec_depth=12, ...)
    loss = nuwa(text=text, video=video, return_loss=True)   # text (b, n) ids, video (b, f, c, h, w) in [0, 1]
    video = nuwa.generate(text=text, cond_scale=3.)          # (b, f, c, h, w) in [0, 1]

A text encoder (token embeddings, rotary self-attention) feeds a video decoder whose layers are 3D nearby
self-attention (`Sparse3DNA`, dilations cycling over the layers) followed by cross-attention to the text, and a
feed-forward. Both stacks are reversible (memory independent of depth) or plain, with the same parameters.
The video is tokenised by the frozen `VQGanVAE`; the decoder predicts each token from the previous ones (a start
token shifts the sequence by one), so token `p` is predicted at position `p` from the tokens before it.

`NUWASketch` swaps the text encoder for an encoder of the tokens of a sketch (a second frozen VAE).

Generation samples token by token with a key/value cache (each step attends to the cached neighbourhood only),
optional classifier-free guidance (the unconditional half of the batch sees the same video tokens, with the text
masked out) and decodes the frames through the VAE in batches.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import Tensor, nn
from tqdm.auto import tqdm

from nuwa_pytorch.sparse_3dna import KVCache, Sparse3DNA, to_3d
from nuwa_pytorch.vqgan_vae import VQGanVAE
from synthesis_core.attention import Attention, RotaryEmbedding, Transformer, attend
from synthesis_core.checkpoint import PretrainedMixin
from synthesis_core.checks import (
    check_batch_match,
    check_device,
    check_guidance_scale,
    check_in_range,
    check_not_empty,
    check_pixels,
    check_positive_int,
    check_temperature,
    check_tensor,
)
from synthesis_core.chunked import ReversibleSequence, SequentialResidual
from synthesis_core.diffusion import cfg_combine
from synthesis_core.layers import FeedForward, LayerNorm
from synthesis_core.protocol import reject_argument, resolve_alias, resolve_text, sample_tokens
from synthesis_core.utils import cast_tuple, default, eval_decorator, exists, prob_mask_like

logger = logging.getLogger(__name__)

__all__ = ["NUWA", "NUWASketch", "VideoTokenDecoder", "sample_from_logits", "shift_video_tokens"]


# helpers


def residual_stack(blocks: Sequence[tuple[nn.Module, nn.Module]], reversible: bool) -> nn.Module:
    """Reversible or plain two-stream residual stack: the same blocks and parameter names either way."""
    return ReversibleSequence(blocks) if reversible else SequentialResidual(blocks)


def embed_gradient_fraction(x: Tensor, fraction: float) -> Tensor:
    """CogView's stability trick: only `fraction` of the gradient reaches the embeddings (same forward value)."""
    if fraction >= 1 or not torch.is_grad_enabled():
        return x
    return x * fraction + x.detach() * (1 - fraction)


def token_shift(x: Tensor, dims: Sequence[int] = (1,), fraction: float | None = None) -> Tensor:
    """Shift a fraction of the channels (last dim) of `x` by one step forward along each axis in `dims`.

    The channels are split in `len(dims) + 1` equal groups (or groups of `fraction * channels`): group i moves one
    position forward along `dims[i]` (zero-padded at the start, so it is causal), the rest stays in place.
    E.g. `token_shift(x, dims=(1, 2, 3))` on `(b, t, h, w, d)` mixes each token with its previous frame, row and
    column neighbours at no parameter cost.
    """
    dims = tuple(dims)
    channels = x.shape[-1]
    group = int(channels * fraction) if fraction is not None else channels // (len(dims) + 1)
    if group * len(dims) > channels:
        raise ValueError(f"fraction: {fraction} of {channels} channels times {len(dims)} axes exceeds the channels")
    if group == 0:
        return x
    shifted = []
    for index, dim in enumerate(dims):
        dim = dim if dim >= 0 else x.ndim + dim
        if dim == x.ndim - 1:
            raise ValueError("dims: cannot shift along the channel (last) dimension")
        part = x[..., index * group : (index + 1) * group]
        # pad one step at the start of `dim`, drop the last step
        length = part.shape[dim]
        part = part.narrow(dim, 0, length - 1)
        pad = [0, 0] * (x.ndim - 1 - dim) + [1, 0]
        shifted.append(F.pad(part, pad))
    rest = x[..., len(dims) * group :]
    return torch.cat((*shifted, rest), dim=-1)


def shift_video_tokens(x: Tensor, video_shape: tuple[int, int, int]) -> Tensor:
    """Token shift over the video grid for `x (b, n, d)`, `n <= frames * height * width` in raster order: a quarter of
    the channels come from the previous frame, a quarter from the row above, a quarter from the column to the left
    (zeros at the borders), so it stays causal. Cheap relative positions for the 3DNA layers."""
    _, height, width = video_shape
    seq_len = x.shape[1]
    frame_len = height * width
    num_frames = -(-seq_len // frame_len)
    x = F.pad(x, (0, 0, 0, num_frames * frame_len - seq_len))  # padding comes after every real position
    x = rearrange(x, "b (f y x) d -> b f y x d", y=height, x=width)
    x = token_shift(x, dims=(1, 2, 3))
    return rearrange(x, "b f y x d -> b (f y x) d")[:, :seq_len]


def shift_video_tokens_step(history: Tensor, position: int, video_shape: tuple[int, int, int]) -> Tensor:
    """`shift_video_tokens` for the token at `position` only, from the `history (b, n, d)` of unshifted inputs
    (which holds `position` and every earlier one). Returns `(b, 1, d)`."""
    _, height, width = video_shape
    channels = history.shape[-1]
    group = channels // 4
    current = history[:, position : position + 1]
    if group == 0:
        return current
    frame, rest = divmod(position, height * width)
    row, col = divmod(rest, width)
    parts = []
    for index, (coordinate, step) in enumerate(((frame, height * width), (row, width), (col, 1))):
        channel_slice = slice(index * group, (index + 1) * group)
        if coordinate > 0:
            parts.append(history[:, position - step : position - step + 1, channel_slice])
        else:
            parts.append(torch.zeros_like(current[..., channel_slice]))
    return torch.cat((*parts, current[..., 3 * group :]), dim=-1)


def sample_from_logits(
    logits: Tensor,
    filter_thres: float = 0.9,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
) -> Tensor:
    """One token per row of `logits (b, num_tokens)`: top-k filtering keeping the best `(1 - filter_thres)` fraction
    (at least one), then Gumbel-max sampling at `temperature` (0: greedy). Returns `(b,)` long. The core's
    `sample_tokens` (shared with Phenaki's MaskGIT) under NUWA's published name."""
    return sample_tokens(logits, temperature, filter_thres=filter_thres, generator=generator)


# blocks


class TextAttention(nn.Module):
    """Pre-norm self-attention of the text encoder with rotary positions and a padding mask."""

    def __init__(self, dim: int, heads: int, dim_head: int, dropout: float):
        super().__init__()
        self.norm = LayerNorm(dim)
        self.attn = Attention(dim, dim_head=dim_head, heads=heads, dropout=dropout)

    def forward(self, x: Tensor, mask: Tensor | None = None, rotary_emb: Tensor | None = None) -> Tensor:
        return self.attn(self.norm(x), mask=mask, rotary_emb=rotary_emb)


class PreNormFeedForward(nn.Module):
    """Pre-norm feed-forward; over video tokens (`video_shape` given) its input is token-shifted."""

    def __init__(
        self,
        dim: int,
        mult: float,
        dropout: float,
        chunk_size: int | None,
        video_shape: tuple[int, int, int] | None = None,
    ):
        super().__init__()
        self.norm = LayerNorm(dim)
        self.ff = FeedForward(dim, mult=mult, dropout=dropout, chunk_size=chunk_size)
        self.video_shape = video_shape

    def forward(self, x: Tensor) -> Tensor:
        x = self.norm(x)
        if exists(self.video_shape):
            x = shift_video_tokens(x, self.video_shape)
        return self.ff(x)

    def forward_step(self, x: Tensor, position: int, state: DecodingLayerState) -> Tensor:
        x = self.norm(x)
        history = state.ff_history  # kept exactly when the tokens are shifted (`new_decoding_state`)
        if exists(self.video_shape) and exists(history):
            history[:, position : position + 1] = x.to(history.dtype)
            x = shift_video_tokens_step(history, position, self.video_shape).to(x.dtype)
        return self.ff(x)


class CrossAttention(nn.Module):
    """Attention of video tokens to the text, with one learned null key/value that is never masked (so a fully
    masked text, e.g. the unconditional pass of classifier-free guidance, still has something to attend to).
    The text keys/values can be computed once (`context_kv`) and reused at every decoding step."""

    def __init__(self, dim: int, heads: int, dim_head: int, dropout: float):
        super().__init__()
        inner_dim = heads * dim_head
        self.heads = heads
        self.dropout = dropout
        self.to_q = nn.Linear(dim, inner_dim, bias=False)
        self.to_kv = nn.Linear(dim, inner_dim * 2, bias=False)
        self.null_kv = nn.Parameter(torch.randn(2, heads, 1, dim_head))
        self.to_out = nn.Linear(inner_dim, dim, bias=False)

    def context_kv(self, context: Tensor) -> tuple[Tensor, Tensor]:
        k, v = (rearrange(t, "b m (h d) -> b h m d", h=self.heads) for t in self.to_kv(context).chunk(2, dim=-1))
        null_k, null_v = (repeat(t.to(k.dtype), "h 1 d -> b h 1 d", b=k.shape[0]) for t in self.null_kv)
        return torch.cat((null_k, k), dim=-2), torch.cat((null_v, v), dim=-2)

    def forward(
        self,
        x: Tensor,
        context: Tensor | None = None,
        context_mask: Tensor | None = None,
        kv: tuple[Tensor, Tensor] | None = None,
    ) -> Tensor:
        if exists(kv):
            k, v = kv
        elif exists(context):
            k, v = self.context_kv(context)
        else:
            raise ValueError("context: pass the context (b, m, dim) or its precomputed keys and values (kv)")
        q = rearrange(self.to_q(x), "b n (h d) -> b h n d", h=self.heads)
        out = attend(
            q,
            k.to(q.dtype),
            v.to(q.dtype),
            key_mask=context_mask,
            num_null_kv=1,
            dropout_p=self.dropout if self.training else 0.0,
        )
        return self.to_out(rearrange(out, "b h n d -> b n (h d)"))


class VideoAttention(nn.Module):
    """The attention half of a decoder layer: 3D nearby self-attention over the (token-shifted) video tokens, then
    cross-attention to the text: `f(x) = a + cross(norm(x + a))` with `a = 3dna(shift(norm(x)))`."""

    def __init__(
        self,
        dim: int,
        video_shape: tuple[int, int, int],
        heads: int,
        dim_head: int,
        dropout: float,
        kernel_size: int | Sequence[int],
        dilation: int | Sequence[int],
        query_num_frames_chunk: int | None,
        shift_tokens: bool,
        rel_pos_bias: bool = True,
    ):
        super().__init__()
        self.video_shape = video_shape
        self.shift_tokens = shift_tokens
        self.norm = LayerNorm(dim)
        self.sparse_attn = Sparse3DNA(
            dim,
            video_shape,
            kernel_size=kernel_size,
            dilation=dilation,
            heads=heads,
            dim_head=dim_head,
            dropout=dropout,
            query_num_frames_chunk=query_num_frames_chunk,
            rel_pos_bias=rel_pos_bias,
        )
        self.cross_norm = LayerNorm(dim)
        self.cross_attn = CrossAttention(dim, heads=heads, dim_head=dim_head, dropout=dropout)

    def forward(self, x: Tensor, context: Tensor, context_mask: Tensor | None = None) -> Tensor:
        h = self.norm(x)
        if self.shift_tokens:
            h = shift_video_tokens(h, self.video_shape)
        attended = self.sparse_attn(h)
        return attended + self.cross_attn(self.cross_norm(x + attended), context=context, context_mask=context_mask)

    def forward_step(self, x: Tensor, position: int, state: DecodingLayerState) -> Tensor:
        h = self.norm(x)
        history = state.attn_history  # kept exactly when the tokens are shifted (`new_decoding_state`)
        if self.shift_tokens and exists(history):
            history[:, position : position + 1] = h.to(history.dtype)
            h = shift_video_tokens_step(history, position, self.video_shape).to(h.dtype)
        attended = self.sparse_attn.forward_step(h, position, state.kv, neighbours=state.neighbours)
        cross = self.cross_attn(self.cross_norm(x + attended), context_mask=state.context_mask, kv=state.context_kv)
        return attended + cross


@dataclass
class DecodingLayerState:
    """What one decoder layer keeps between decoding steps."""

    kv: KVCache
    context_kv: tuple[Tensor, Tensor]
    context_mask: Tensor
    attn_history: Tensor | None  # normed inputs of the attention, for the token shift
    ff_history: Tensor | None  # normed inputs of the feed-forward, for the token shift
    neighbours: tuple[Tensor, Tensor, Tensor] | None = None  # the 3DNA window of the current position


# the video token decoder shared by the models


class VideoTokenDecoder(nn.Module):
    """Autoregressive decoder of the video tokens of a `(frames, height, width)` grid, conditioned on a context
    sequence (text or sketch encodings) through cross-attention.

    Position `p` holds the start token (p = 0) or the embedding of token `p - 1`, plus axial position embeddings,
    and predicts token `p`. Layers: `VideoAttention` (3DNA with cycling dilations + cross-attention) and a
    feed-forward, as the two halves of a reversible (or plain, same parameters) residual block.
    """

    def __init__(
        self,
        dim: int,
        num_tokens: int,
        video_shape: tuple[int, int, int],
        depth: int,
        heads: int,
        dim_head: int,
        reversible: bool,
        attn_dropout: float,
        ff_dropout: float,
        ff_mult: float,
        ff_chunk_size: int | None,
        kernel_size: int | Sequence[int],
        dilation: int | Sequence[int] | Sequence[Sequence[int]],
        query_num_frames_chunk: int | None,
        shift_video_tokens: bool,
        embed_gradient_frac: float,
        rel_pos_bias: bool = True,
    ):
        super().__init__()
        frames, height, width = video_shape
        self.video_shape = video_shape
        self.num_tokens = num_tokens
        self.embed_gradient_frac = embed_gradient_frac
        self.bos = nn.Parameter(torch.randn(dim) * 0.02)
        self.token_emb = nn.Embedding(num_tokens, dim)
        self.frame_pos_emb = nn.Parameter(torch.randn(frames, dim) * 0.02)
        self.row_pos_emb = nn.Parameter(torch.randn(height, dim) * 0.02)
        self.col_pos_emb = nn.Parameter(torch.randn(width, dim) * 0.02)
        self.layers = residual_stack(
            [
                (
                    VideoAttention(
                        dim,
                        video_shape,
                        heads=heads,
                        dim_head=dim_head,
                        dropout=attn_dropout,
                        kernel_size=kernel_size,
                        dilation=layer_dilation,
                        query_num_frames_chunk=query_num_frames_chunk,
                        shift_tokens=shift_video_tokens,
                        rel_pos_bias=rel_pos_bias,
                    ),
                    PreNormFeedForward(
                        dim,
                        mult=ff_mult,
                        dropout=ff_dropout,
                        chunk_size=ff_chunk_size,
                        video_shape=video_shape if shift_video_tokens else None,
                    ),
                )
                for layer_dilation in self._layer_dilations(dilation, depth)
            ],
            reversible=reversible,
        )
        self.norm = LayerNorm(dim)
        self.to_logits = nn.Linear(dim, num_tokens)

    @staticmethod
    def _layer_dilations(dilation, depth: int) -> list[tuple[int, int, int]]:
        """One `(t, h, w)` dilation per layer: an int, a `(t, h, w)` triple, or a sequence of either, cycled."""
        if isinstance(dilation, int):
            per_layer = [dilation]
        else:
            per_layer = list(cast_tuple(dilation))
            if not per_layer:
                raise ValueError("sparse_3dna_dilation: expected an int or a non-empty sequence")
        return [to_3d("sparse_3dna_dilation", per_layer[i % len(per_layer)]) for i in range(depth)]

    @property
    def tokens_per_frame(self) -> int:
        return self.video_shape[1] * self.video_shape[2]

    @property
    def _blocks(self) -> Iterable[tuple[VideoAttention, PreNormFeedForward]]:
        """The (attention, feed-forward) pair of every layer."""
        # cast: the stack holds them as ModuleLists of two, built in __init__
        return cast("Iterable[tuple[VideoAttention, PreNormFeedForward]]", self.layers.blocks)

    def _position_emb(self, positions: Tensor) -> Tensor:
        _, height, width = self.video_shape
        frame, rest = positions.div(height * width, rounding_mode="floor"), positions % (height * width)
        row, col = rest.div(width, rounding_mode="floor"), rest % width
        return self.frame_pos_emb[frame] + self.row_pos_emb[row] + self.col_pos_emb[col]

    def forward(self, prefix: Tensor, context: Tensor, context_mask: Tensor | None = None) -> Tensor:
        """Logits `(b, len(prefix) + 1, num_tokens)` of the tokens at positions `0 .. len(prefix)`."""
        batch, length = prefix.shape
        bos = repeat(self.bos, "d -> b 1 d", b=batch)
        x = torch.cat((bos, self.token_emb(prefix)), dim=1)
        x = embed_gradient_fraction(x, self.embed_gradient_frac)
        x = x + self._position_emb(torch.arange(length + 1, device=prefix.device))
        x = self.layers(x, context=context, context_mask=context_mask)
        return self.to_logits(self.norm(x))

    # cached decoding

    def new_decoding_state(self, context: Tensor, context_mask: Tensor, max_len: int) -> list[DecodingLayerState]:
        batch, device = context.shape[0], context.device
        dtype = (
            torch.get_autocast_dtype(device.type)
            if torch.is_autocast_enabled(device.type)
            else self.to_logits.weight.dtype
        )
        dim = self.bos.shape[0]

        def history(enabled: bool) -> Tensor | None:
            return context.new_zeros(batch, max_len, dim, dtype=dtype) if enabled else None

        return [
            DecodingLayerState(
                kv=KVCache(
                    batch,
                    attention.sparse_attn.heads,
                    max_len,
                    attention.sparse_attn.dim_head,
                    device=device,
                    dtype=dtype,
                ),
                context_kv=attention.cross_attn.context_kv(context),
                context_mask=context_mask,
                attn_history=history(attention.shift_tokens),
                ff_history=history(exists(feedforward.video_shape)),
            )
            for attention, feedforward in self._blocks
        ]

    def step(self, previous: Tensor | None, position: int, states: list[DecodingLayerState]) -> Tensor:
        """Logits `(b, num_tokens)` at `position`, given the token decoded at `position - 1` (None at 0)."""
        batch = states[0].context_mask.shape[0]
        x: Tensor
        if previous is None:
            x = repeat(self.bos, "d -> b 1 d", b=batch)
        else:
            x = self.token_emb(rearrange(previous, "b -> b 1"))
        x = x + self._position_emb(torch.tensor([position], device=x.device))
        # layers with the same window share its neighbour lookup
        windows: dict[tuple, tuple[Tensor, Tensor, Tensor]] = {}
        for (attention, _), state in zip(self._blocks, states):
            sparse_attn = attention.sparse_attn
            key = (sparse_attn.kernel_size, sparse_attn.dilation)
            if key not in windows:
                windows[key] = sparse_attn.neighbours(position, device=x.device)
            state.neighbours = windows[key]
        # the two residual streams of the (reversible or plain) stack, one token at a time
        x1 = x2 = x
        for (attention, feedforward), state in zip(self._blocks, states):
            x1 = x1 + attention.forward_step(x2, position, state)
            x2 = x2 + feedforward.forward_step(x1, position, state)
        return self.to_logits(self.norm((x1 + x2) / 2))[:, 0]

    @torch.no_grad()
    def sample(
        self,
        context: Tensor,
        context_mask: Tensor,
        num_tokens: int,
        filter_thres: float = 0.9,
        temperature: float = 1.0,
        cond_scale: float = 1.0,
        use_cache: bool = True,
        generator: torch.Generator | None = None,
        progress: bool = True,
    ) -> Tensor:
        """Samples `(b, num_tokens)` video tokens for the context `(b, m, dim)`; classifier-free guidance when
        `cond_scale != 1`: the batch is doubled, the unconditional half has its context masked out (only the null
        key is attended) and is fed the same video tokens at every step."""
        batch = context.shape[0]
        guided = cond_scale != 1
        if guided:
            context = torch.cat((context, context))
            context_mask = torch.cat((context_mask, torch.zeros_like(context_mask)))

        tokens = torch.empty(batch, 0, dtype=torch.long, device=context.device)
        states = self.new_decoding_state(context, context_mask, num_tokens) if use_cache else None
        for position in tqdm(range(num_tokens), desc="generating video tokens", disable=not progress, leave=False):
            if exists(states):  # use_cache
                previous = tokens[:, -1] if position > 0 else None
                if exists(previous) and guided:
                    previous = torch.cat((previous, previous))
                logits = self.step(previous, position, states)
            else:
                prefix = torch.cat((tokens, tokens)) if guided else tokens
                logits = self(prefix, context, context_mask)[:, -1]
            if guided:
                cond_logits, uncond_logits = logits.float().chunk(2)
                logits = cfg_combine(cond_logits, uncond_logits, cond_scale)
            sampled = sample_from_logits(
                logits, filter_thres=filter_thres, temperature=temperature, generator=generator
            )
            tokens = torch.cat((tokens, rearrange(sampled, "b -> b 1")), dim=1)
        return tokens


# what NUWA and NUWASketch share: a frozen VAE, the video inputs, the loss and generation


class _FrozenVAEVideoModel(nn.Module):
    """Base of the models that generate the tokens of a frozen `VQGanVAE` with a `VideoTokenDecoder`
    (`self.decoder`) conditioned on an encoded input (`encode_condition`)."""

    vae: VQGanVAE
    decoder: VideoTokenDecoder

    def _attach_vae(self, vae: VQGanVAE, image_size: int | None, max_video_frames: int) -> None:
        if not isinstance(vae, VQGanVAE):
            raise TypeError(f"vae: expected a VQGanVAE, got {type(vae).__name__}")
        if exists(image_size) and image_size != vae.image_size:
            raise ValueError(
                f"image_size: {image_size} does not match the VAE's image_size {vae.image_size}; "
                "leave image_size out (it is taken from the VAE) or pass the VAE's"
            )
        check_positive_int("max_video_frames", max_video_frames)
        vae.requires_grad_(False)
        vae.eval()
        self.image_size = vae.image_size
        self.num_video_tokens = vae.codebook_size
        self.max_video_frames = max_video_frames
        self.video_shape = (max_video_frames, vae.fmap_size, vae.fmap_size)

    def train(self, mode: bool = True) -> _FrozenVAEVideoModel:
        super().train(mode)
        for module in self.children():
            if isinstance(module, VQGanVAE):
                module.eval()  # frozen: no dropout, no codebook updates
        return self

    @property
    def tokens_per_frame(self) -> int:
        return self.video_shape[1] * self.video_shape[2]

    def _check_num_frames(self, name: str, num_frames: int, limit_name: str = "max_video_frames") -> None:
        max_frames = getattr(self, limit_name)
        if not 1 <= num_frames <= max_frames:
            raise ValueError(f"{name}: expected between 1 and {limit_name}={max_frames} frames, got {num_frames}")

    def _video_indices(self, video: Tensor | None, video_indices: Tensor | None) -> Tensor:
        if exists(video) and not exists(video_indices):
            size, channels = self.image_size, self.vae.channels
            check_tensor(
                "video",
                video,
                shape=("batch", "frames", channels, size, size),
                names=("batch", "frames", "channels", "height", "width"),
            )
            self._check_num_frames("video", video.shape[1])
            return self.vae.get_video_indices(video)  # checks the pixels (`check_pixels`)
        if exists(video) or not exists(video_indices):
            raise ValueError("video: pass exactly one of video (b, f, c, h, w) or video_indices (b, f * h' * w')")
        check_tensor("video_indices", video_indices, ndim=(2, 4))
        if video_indices.is_floating_point():
            raise TypeError(f"video_indices: expected integer codebook indices, got {video_indices.dtype}")
        check_device("video_indices", video_indices, self.vae.device)
        check_not_empty("video_indices", video_indices)
        if video_indices.ndim == 4:
            _, height, width = self.video_shape
            check_tensor(
                "video_indices",
                video_indices,
                shape=("batch", "frames", height, width),
                names=("batch", "frames", "height", "width"),
            )
            video_indices = rearrange(video_indices, "b f h w -> b (f h w)")
        if video_indices.shape[1] % self.tokens_per_frame != 0:
            raise ValueError(
                f"video_indices: expected whole frames of {self.tokens_per_frame} tokens, "
                f"got {video_indices.shape[1]} tokens"
            )
        self._check_num_frames("video_indices", video_indices.shape[1] // self.tokens_per_frame)
        check_tensor("video_indices", video_indices, value_range=(0, self.num_video_tokens - 1))
        return video_indices.long()

    def encode_condition(self, condition: Tensor, /) -> tuple[Tensor, Tensor]:
        """The context `(b, m, dim)` and its mask `(b, m)` the decoder cross-attends to."""
        raise NotImplementedError

    def _loss_or_logits(
        self,
        condition: Tensor,
        condition_name: str,
        video: Tensor | None,
        video_indices: Tensor | None,
        return_loss: bool,
        cond_dropout_prob: float,
        condition_mask: Tensor | None = None,
    ) -> Tensor:
        check_in_range("cond_dropout_prob", cond_dropout_prob, 0.0, 1.0)
        mask_kwargs = {} if condition_mask is None else {"mask": condition_mask}
        context, context_mask = self.encode_condition(condition, **mask_kwargs)
        indices = self._video_indices(video, video_indices)
        check_batch_match(**{condition_name: context, "video": indices})
        if self.training and cond_dropout_prob > 0:
            keep = ~prob_mask_like((context.shape[0],), cond_dropout_prob, device=context.device)
            context_mask = context_mask & rearrange(keep, "b -> b 1")

        logits = self.decoder(indices[:, :-1], context, context_mask)
        if not return_loss:
            return logits
        return F.cross_entropy(rearrange(logits.float(), "b n c -> b c n"), indices)

    @torch.no_grad()
    @eval_decorator
    def _generate_video_indices(
        self,
        condition: Tensor,
        filter_thres: float,
        temperature: float,
        cond_scale: float,
        num_frames: int | None,
        use_cache: bool,
        generator: torch.Generator | None,
        progress: bool,
    ) -> Tensor:
        check_in_range("filter_thres", filter_thres, 0.0, 1.0)
        check_temperature("temperature", temperature)
        check_guidance_scale("cond_scale", cond_scale)
        num_frames = default(num_frames, self.max_video_frames)
        self._check_num_frames("num_frames", num_frames)
        context, context_mask = self.encode_condition(condition)
        return self.decoder.sample(
            context,
            context_mask,
            num_frames * self.tokens_per_frame,
            filter_thres=filter_thres,
            temperature=temperature,
            cond_scale=cond_scale,
            use_cache=use_cache,
            generator=generator,
            progress=progress,
        )

    @torch.no_grad()
    def _decode_video(self, tokens: Tensor, decode_frames_per_batch: int | None) -> Tensor:
        return self.vae.codebook_indices_to_video(tokens, frames_per_batch=decode_frames_per_batch)


def text_encoder_parts(
    dim: int,
    num_tokens: int,
    depth: int,
    heads: int,
    dim_head: int,
    *,
    attn_dropout: float,
    ff_mult: float,
    ff_dropout: float,
    ff_chunk_size: int | None,
    reversible: bool,
) -> tuple[nn.Embedding, RotaryEmbedding, nn.Module, nn.Module]:
    """The text encoder of the text-conditioned models (`NUWA.encode_text`): token embeddings, rotary positions,
    a (reversible or plain) stack of self-attention + feed-forward blocks, and the final norm."""
    token_emb, rotary_emb = nn.Embedding(num_tokens, dim), RotaryEmbedding(dim_head)  # built first: same init order
    stack = residual_stack(
        [
            (
                TextAttention(dim, heads=heads, dim_head=dim_head, dropout=attn_dropout),
                PreNormFeedForward(dim, mult=ff_mult, dropout=ff_dropout, chunk_size=ff_chunk_size),
            )
            for _ in range(depth)
        ],
        reversible=reversible,
    )
    return token_emb, rotary_emb, stack, LayerNorm(dim)


def _check_common(dim: int, attn_dropout: float, ff_dropout: float, embed_gradient_frac: float, **ints: int) -> None:
    check_positive_int("dim", dim)
    for name, value in ints.items():
        check_positive_int(name, value)
    check_in_range("attn_dropout", attn_dropout, 0.0, 1.0)
    check_in_range("ff_dropout", ff_dropout, 0.0, 1.0)
    check_in_range("embed_gradient_frac", embed_gradient_frac, 0.0, 1.0)


# text to video


class NUWA(PretrainedMixin, _FrozenVAEVideoModel):
    """Text-to-video transformer over the tokens of a frozen `VQGanVAE`.

    Args:
        vae: the trained `VQGanVAE` (frozen: NUWA's loss never trains it).
        dim: model dimension.
        image_size: frame size; optional, must equal `vae.image_size` when given.
        text_num_tokens: text vocabulary size (id 0 is padding).
        text_enc_depth, text_enc_heads, text_enc_dim_head: the text encoder.
        text_max_seq_len: longest text accepted.
        max_video_frames: longest video (frames).
        dec_depth, dec_heads, dec_dim_head: the video decoder.
        dec_reversible, enc_reversible: reversible stacks (memory independent of depth) instead of plain ones.
        attn_dropout, ff_dropout, ff_mult, ff_chunk_size: attention / feed-forward details (`ff_chunk_size` runs the
            feed-forward over chunks of the sequence, same result, less memory).
        sparse_3dna_kernel_size: int or `(t, h, w)` window of the 3D nearby attention.
        sparse_3dna_dilation: dilation per layer, cycled over the layers (ints, or `(t, h, w)` triples).
        sparse_3dna_query_num_frames_chunk: query frames per attention call (caps the attention memory).
        shift_video_tokens: token shift over frames, rows and columns in the decoder (cheap relative positions).
        embed_gradient_frac: fraction of the gradient that reaches the token embeddings (CogView stability).
        cond_drop_prob: probability of dropping each training sample's text (trains the unconditional branch of
            classifier-free guidance); the default of `forward`'s `cond_drop_prob` (alias `cond_dropout_prob`).
        text_rotary_pos_emb: rotary positions in the text encoder's attention (default); False: a learned absolute
            position embedding added to the text tokens instead.
        sparse_3dna_rel_pos_bias: a learned bias per head and window offset in the 3D nearby attention (default
            here; nuwa-pytorch 0.7.8 defaulted to False).
    """

    text_rotary_emb: RotaryEmbedding | None  # None with text_rotary_pos_emb=False

    def __init__(
        self,
        vae: VQGanVAE,
        dim: int,
        image_size: int | None = None,
        text_num_tokens: int = 20000,
        text_enc_depth: int = 6,
        text_enc_heads: int = 8,
        text_enc_dim_head: int = 64,
        text_max_seq_len: int = 256,
        max_video_frames: int = 5,
        dec_depth: int = 6,
        dec_heads: int = 8,
        dec_dim_head: int = 64,
        dec_reversible: bool = True,
        enc_reversible: bool = True,
        attn_dropout: float = 0.0,
        ff_dropout: float = 0.0,
        ff_mult: float = 4.0,
        ff_chunk_size: int | None = None,
        sparse_3dna_kernel_size: int | Sequence[int] = 3,
        sparse_3dna_dilation: int | Sequence[int] | Sequence[Sequence[int]] = 1,
        sparse_3dna_query_num_frames_chunk: int | None = None,
        shift_video_tokens: bool = True,
        embed_gradient_frac: float = 0.2,
        cond_drop_prob: float = 0.2,
        text_rotary_pos_emb: bool = True,
        sparse_3dna_rel_pos_bias: bool = True,
    ):
        super().__init__()
        check_in_range("cond_drop_prob", cond_drop_prob, 0.0, 1.0)
        self.cond_drop_prob = cond_drop_prob
        _check_common(
            dim,
            attn_dropout,
            ff_dropout,
            embed_gradient_frac,
            text_num_tokens=text_num_tokens,
            text_enc_depth=text_enc_depth,
            text_enc_heads=text_enc_heads,
            text_enc_dim_head=text_enc_dim_head,
            text_max_seq_len=text_max_seq_len,
            dec_depth=dec_depth,
            dec_heads=dec_heads,
            dec_dim_head=dec_dim_head,
        )
        self._attach_vae(vae, image_size, max_video_frames)
        self.vae = vae
        self.text_num_tokens = text_num_tokens
        self.text_max_seq_len = text_max_seq_len
        self.embed_gradient_frac = embed_gradient_frac

        # text encoder
        self.text_token_emb, self.text_rotary_emb, self.text_encoder, self.text_norm = text_encoder_parts(
            dim,
            text_num_tokens,
            text_enc_depth,
            text_enc_heads,
            text_enc_dim_head,
            attn_dropout=attn_dropout,
            ff_mult=ff_mult,
            ff_dropout=ff_dropout,
            ff_chunk_size=ff_chunk_size,
            reversible=enc_reversible,
        )
        # without rotary positions the text tokens carry learned absolute positions
        self.text_pos_emb = None if text_rotary_pos_emb else nn.Embedding(text_max_seq_len, dim)
        if not text_rotary_pos_emb:
            self.text_rotary_emb = None

        # video decoder
        self.decoder = VideoTokenDecoder(
            dim,
            self.num_video_tokens,
            self.video_shape,
            depth=dec_depth,
            heads=dec_heads,
            dim_head=dec_dim_head,
            reversible=dec_reversible,
            attn_dropout=attn_dropout,
            ff_dropout=ff_dropout,
            ff_mult=ff_mult,
            ff_chunk_size=ff_chunk_size,
            kernel_size=sparse_3dna_kernel_size,
            dilation=sparse_3dna_dilation,
            query_num_frames_chunk=sparse_3dna_query_num_frames_chunk,
            shift_video_tokens=shift_video_tokens,
            embed_gradient_frac=embed_gradient_frac,
            rel_pos_bias=sparse_3dna_rel_pos_bias,
        )

    def _check_text(self, text: Tensor) -> Tensor:
        check_tensor("text", text, ndim=2, names=("batch", "text_seq"))
        if text.is_floating_point() or text.dtype == torch.bool:
            raise TypeError(f"text: expected integer token ids, got dtype {text.dtype}")
        check_device("text", text, self.text_token_emb.weight.device)
        check_not_empty("text", text)
        if text.shape[1] > self.text_max_seq_len:
            raise ValueError(f"text: {text.shape[1]} tokens exceed text_max_seq_len={self.text_max_seq_len}")
        check_tensor("text", text, value_range=(0, self.text_num_tokens - 1))
        return text.long()

    def encode_text(self, text: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Text ids `(b, n)` -> `(embeddings (b, n, dim), mask (b, n) bool)`; the mask (True = attended) defaults to
        `text != 0` (id 0 is padding)."""
        text = self._check_text(text)
        if mask is None:
            mask = text != 0
        else:
            check_tensor("mask", mask, shape=tuple(text.shape), names=("batch", "text_seq"))
            if mask.dtype != torch.bool:
                raise TypeError(f"mask: expected a bool tensor (True = attended), got {mask.dtype}")
            check_device("mask", mask, text.device)
        x = embed_gradient_fraction(self.text_token_emb(text), self.embed_gradient_frac)
        rotary_emb = None
        if exists(self.text_rotary_emb):
            rotary_emb = self.text_rotary_emb(text.shape[1], device=text.device)
        if exists(self.text_pos_emb):
            x = x + self.text_pos_emb(torch.arange(text.shape[1], device=text.device))
        x = self.text_encoder(x, mask=mask, rotary_emb=rotary_emb)
        return self.text_norm(x), mask

    encode_condition = encode_text

    def embed_text(self, text: Tensor, mask: Tensor | None = None) -> Tensor:
        """nuwa-pytorch 0.7.8's name: the text encodings `(b, n, dim)` of `encode_text` (without the mask)."""
        return self.encode_text(text, mask=mask)[0]

    def forward(
        self,
        videos: Tensor | None = None,
        video: Tensor | None = None,
        return_loss: bool | None = None,
        cond_dropout_prob: float | None = None,
        video_indices: Tensor | None = None,
        *,
        text: Tensor | None = None,
        texts: Tensor | None = None,
        text_embeds: Tensor | None = None,
        text_mask: Tensor | None = None,
        cond_drop_prob: float | None = None,
    ) -> Tensor:
        """Teacher-forced pass over a video and its text `(b, n)` token ids (0 = padding).

        Two layouts, one computation:
        - the protocol's `model(videos, texts=ids)`: `videos (b, c, f, h, w)` in [0, 1]; returns the loss;
        - the seed README's `nuwa(text=ids, video=video, return_loss=True)`: `video (b, f, c, h, w)` in [0, 1]
          (or its `video_indices`); returns the logits `(b, f * h' * w', num_video_tokens)`, or with
          `return_loss` the cross entropy of every video token. A 2D integer tensor in first position is the
          seed's positional `text` (`nuwa(text, video)`).
        While training, each sample's text is dropped with `cond_drop_prob` (alias `cond_dropout_prob`; default:
        the constructor's) for classifier-free guidance at generation.
        """
        if isinstance(videos, Tensor) and videos.ndim == 2 and not videos.is_floating_point():
            text = resolve_alias("text", text, "text (positional)", videos)  # the seed's nuwa(text, video)
            videos = None
        if exists(videos):
            if exists(video):
                raise ValueError("videos: pass videos (b, c, f, h, w) or the seed's video (b, f, c, h, w), not both")
            size = self.image_size
            check_tensor(
                "videos",
                videos,
                shape=("batch", self.vae.channels, "frames", size, size),
                names=("batch", "channels", "frames", "height", "width"),
            )
            video = rearrange(videos, "b c f h w -> b f c h w")
            return_loss = default(return_loss, True)
        token_ids = self._text_token_ids(texts, text_embeds, text_mask, text)
        if not exists(token_ids):
            raise ValueError("texts: NUWA is conditioned on text; pass texts=(batch, tokens) token ids (alias text=)")
        cond_drop_prob = resolve_alias(
            "cond_drop_prob", cond_drop_prob, "cond_dropout_prob", cond_dropout_prob, self.cond_drop_prob
        )
        return self._loss_or_logits(token_ids, "text", video, video_indices, bool(return_loss), cond_drop_prob)

    @staticmethod
    def _text_token_ids(
        texts: Tensor | None, text_embeds: Tensor | None, text_mask: Tensor | None, text: Tensor | None
    ) -> Tensor | None:
        """The protocol's text arguments -> token ids: NUWA reads token ids only (it encodes them itself)."""
        if exists(text_embeds):
            raise ValueError(
                "text_embeds: NUWA encodes its own text from token ids; pass texts=(batch, tokens) token ids instead"
            )
        if exists(text_mask):
            raise ValueError("text_mask: NUWA masks its token ids by the padding id 0; leave text_mask out")
        resolved = resolve_text(
            texts,
            aliases={"text": ("texts", text)},
            token_ids=True,
            strings=False,
            strings_hint=" (integer ids (batch, tokens), 0 = padding); tokenize captions "
            "first, e.g. with nuwa_pytorch.WordTokenizer",
        )
        return resolved.token_ids

    @torch.no_grad()
    def sample(
        self,
        *,
        texts: Tensor | None = None,
        text_embeds: Tensor | None = None,
        text_mask: Tensor | None = None,
        num_frames: int | None = None,
        batch_size: int | None = None,
        cond_scale: float | None = None,
        steps: int | None = None,
        sampler: str | None = None,
        generator: torch.Generator | None = None,
        progress: bool = True,
        filter_thres: float = 0.9,
        temperature: float = 1.0,
        use_cache: bool = True,
        decode_frames_per_batch: int | None = 16,
        text: Tensor | None = None,
    ) -> Tensor:
        """The protocol's sampling entry: videos `(b, c, num_frames, h, w)` in [0, 1] for `texts (b, n)` token ids
        (alias `text`; a single row is repeated to `batch_size`). `generate` is the same in the seed's layout
        `(b, f, c, h, w)`; see it for `filter_thres`, `temperature`, `use_cache`, `decode_frames_per_batch`.
        `cond_scale` defaults to 1 (no guidance). NUWA samples one token after the other: `steps` (always one per
        video token) and `sampler` do not apply."""
        reject_argument("steps", steps, "NUWA samples one video token per step (num_frames sets how many)")
        reject_argument("sampler", sampler, "NUWA samples tokens autoregressively, it has no diffusion sampler")
        token_ids = self._text_token_ids(texts, text_embeds, text_mask, text)
        if not exists(token_ids):
            raise ValueError("texts: NUWA generates from text; pass texts=(batch, tokens) token ids (alias text=)")
        if exists(batch_size):
            check_positive_int("batch_size", batch_size)
            if token_ids.shape[0] != batch_size:
                if token_ids.shape[0] != 1:
                    raise ValueError(
                        f"batch_size: texts holds {token_ids.shape[0]} samples, got batch_size={batch_size}"
                    )
                token_ids = token_ids.expand(batch_size, -1)
        video = self.generate(
            token_ids,
            filter_thres=filter_thres,
            temperature=temperature,
            cond_scale=default(cond_scale, 1.0),
            num_frames=num_frames,
            use_cache=use_cache,
            generator=generator,
            decode_frames_per_batch=decode_frames_per_batch,
            progress=progress,
        )
        return rearrange(video, "b f c h w -> b c f h w")

    def generate_video_indices(
        self,
        text: Tensor,
        filter_thres: float = 0.9,
        temperature: float = 1.0,
        cond_scale: float = 1.0,
        num_frames: int | None = None,
        use_cache: bool = True,
        generator: torch.Generator | None = None,
        progress: bool = True,
    ) -> Tensor:
        """Samples the video tokens `(b, num_frames * h' * w')` for `text (b, n)`; see `generate`."""
        return self._generate_video_indices(
            text, filter_thres, temperature, cond_scale, num_frames, use_cache, generator, progress
        )

    def generate(
        self,
        text: Tensor,
        filter_thres: float = 0.9,
        temperature: float = 1.0,
        cond_scale: float = 1.0,
        num_frames: int | None = None,
        use_cache: bool = True,
        generator: torch.Generator | None = None,
        decode_frames_per_batch: int | None = 16,
        progress: bool = True,
    ) -> Tensor:
        """Generates videos `(b, num_frames, c, h, w)` in [0, 1] for `text (b, n)`.

        `filter_thres`: top-k filtering (keep the best `1 - filter_thres` of the vocabulary); `temperature` (0:
        greedy); `cond_scale`: classifier-free guidance scale (1: none; the unconditional pass sees the same video
        tokens with the text masked out); `num_frames` (default `max_video_frames`); `use_cache`: key/value cache
        (same result, each step attends to its cached window only); `generator` for reproducible sampling; the VAE
        decodes `decode_frames_per_batch` frames at a time.
        """
        tokens = self.generate_video_indices(
            text,
            filter_thres=filter_thres,
            temperature=temperature,
            cond_scale=cond_scale,
            num_frames=num_frames,
            use_cache=use_cache,
            generator=generator,
            progress=progress,
        )
        return self._decode_video(tokens, decode_frames_per_batch)


# sketch to video


class NUWASketch(PretrainedMixin, _FrozenVAEVideoModel):
    """Sketch-to-video: the video tokens are generated conditioned on the tokens of a sketch (e.g. segmentation
    maps, `(b, sketch_frames, sketch_channels, h, w)` in [0, 1]) encoded by a second frozen `VQGanVAE`.

    The sketch tokens (with axial position embeddings) go through a bidirectional transformer encoder; the video
    decoder is NUWA's (3DNA + cross-attention to the sketch encoding). Same training, guidance (the unconditional
    pass masks the sketch out) and cached generation as `NUWA`.
    """

    def __init__(
        self,
        vae: VQGanVAE,
        sketch_vae: VQGanVAE,
        dim: int,
        image_size: int | None = None,
        max_video_frames: int = 5,
        sketch_max_video_frames: int = 2,
        sketch_enc_depth: int = 2,
        sketch_enc_heads: int = 8,
        sketch_enc_dim_head: int = 64,
        dec_depth: int = 6,
        dec_heads: int = 8,
        dec_dim_head: int = 64,
        dec_reversible: bool = True,
        attn_dropout: float = 0.0,
        ff_dropout: float = 0.0,
        ff_mult: float = 4.0,
        ff_chunk_size: int | None = None,
        sparse_3dna_kernel_size: int | Sequence[int] = 3,
        sparse_3dna_dilation: int | Sequence[int] | Sequence[Sequence[int]] = 1,
        sparse_3dna_query_num_frames_chunk: int | None = None,
        shift_video_tokens: bool = True,
        embed_gradient_frac: float = 0.2,
        enc_reversible: bool = False,
        sketch_enc_use_sparse_3dna: bool = False,
        cross_2dna_kernel_size: int | None = None,
        cross_2dna_dilation: int | None = None,
    ):
        super().__init__()
        # nuwa-pytorch 0.7.8 keywords for designs this model does not have: refused when they ask for them
        if enc_reversible:
            raise ValueError(
                "enc_reversible=True: the sketch encoder is a plain transformer here (it is shallow; "
                "the video decoder is the deep part: dec_reversible=True)"
            )
        if sketch_enc_use_sparse_3dna:
            raise ValueError(
                "sketch_enc_use_sparse_3dna=True: the sketch encoder attends over all sketch tokens "
                "here (full attention); leave it out"
            )
        for name, value in (
            ("cross_2dna_kernel_size", cross_2dna_kernel_size),
            ("cross_2dna_dilation", cross_2dna_dilation),
        ):
            if value is not None:
                raise ValueError(
                    f"{name}: the video decoder attends to every sketch token (full cross-attention, "
                    "not a 2D nearby window) here; leave it out"
                )
        _check_common(
            dim,
            attn_dropout,
            ff_dropout,
            embed_gradient_frac,
            sketch_max_video_frames=sketch_max_video_frames,
            sketch_enc_depth=sketch_enc_depth,
            sketch_enc_heads=sketch_enc_heads,
            sketch_enc_dim_head=sketch_enc_dim_head,
            dec_depth=dec_depth,
            dec_heads=dec_heads,
            dec_dim_head=dec_dim_head,
        )
        self._attach_vae(vae, image_size, max_video_frames)
        if not isinstance(sketch_vae, VQGanVAE):
            raise TypeError(f"sketch_vae: expected a VQGanVAE, got {type(sketch_vae).__name__}")
        sketch_vae.requires_grad_(False)
        sketch_vae.eval()
        self.vae = vae
        self.sketch_vae = sketch_vae
        self.sketch_max_video_frames = sketch_max_video_frames
        self.embed_gradient_frac = embed_gradient_frac

        # sketch encoder
        fmap = sketch_vae.fmap_size
        self.sketch_shape = (sketch_max_video_frames, fmap, fmap)
        self.sketch_token_emb = nn.Embedding(sketch_vae.codebook_size, dim)
        self.sketch_pos_emb = nn.Parameter(torch.randn(sketch_max_video_frames * fmap * fmap, dim) * 0.02)
        self.sketch_encoder = Transformer(
            dim,
            sketch_enc_depth,
            dim_head=sketch_enc_dim_head,
            heads=sketch_enc_heads,
            ff_mult=ff_mult,
            attn_dropout=attn_dropout,
            ff_dropout=ff_dropout,
            ff_chunk_size=ff_chunk_size,
        )

        # video decoder
        self.decoder = VideoTokenDecoder(
            dim,
            self.num_video_tokens,
            self.video_shape,
            depth=dec_depth,
            heads=dec_heads,
            dim_head=dec_dim_head,
            reversible=dec_reversible,
            attn_dropout=attn_dropout,
            ff_dropout=ff_dropout,
            ff_mult=ff_mult,
            ff_chunk_size=ff_chunk_size,
            kernel_size=sparse_3dna_kernel_size,
            dilation=sparse_3dna_dilation,
            query_num_frames_chunk=sparse_3dna_query_num_frames_chunk,
            shift_video_tokens=shift_video_tokens,
            embed_gradient_frac=embed_gradient_frac,
        )

    def encode_sketch(self, sketch: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Sketches `(b, sketch_frames, c, h, w)` (or one sketch `(b, c, h, w)`) in [0, 1] -> `(encodings (b, m, dim),
        mask (b, m))`. `mask (b, sketch_frames)` bool marks the sketch frames that are present (False: padding,
        neither attended by the encoder nor by the video decoder); default: all."""
        if isinstance(sketch, Tensor) and sketch.ndim == 4:
            sketch = rearrange(sketch, "b c h w -> b 1 c h w")
        size, channels = self.sketch_vae.image_size, self.sketch_vae.channels
        check_tensor(
            "sketch",
            sketch,
            shape=("batch", "sketch_frames", channels, size, size),
            names=("batch", "sketch_frames", "channels", "height", "width"),
        )
        self._check_num_frames("sketch", sketch.shape[1], limit_name="sketch_max_video_frames")
        # checked here so that errors name the sketch (the sketch VAE would call it "video")
        sketch = check_pixels("sketch", sketch, device=self.sketch_vae.device, dtype=self.sketch_vae.dtype)
        indices = self.sketch_vae.get_video_indices(sketch)
        if mask is None:
            token_mask = torch.ones(indices.shape, dtype=torch.bool, device=indices.device)
        else:
            check_tensor("mask", mask, shape=tuple(sketch.shape[:2]), names=("batch", "sketch_frames"))
            if mask.dtype != torch.bool:
                raise TypeError(f"mask: expected a bool tensor (True = sketch frame present), got {mask.dtype}")
            check_device("mask", mask, indices.device)
            token_mask = repeat(mask, "b f -> b (f n)", n=indices.shape[1] // sketch.shape[1])
        x = embed_gradient_fraction(self.sketch_token_emb(indices), self.embed_gradient_frac)
        x = self.sketch_encoder(x + self.sketch_pos_emb[: indices.shape[1]], mask=token_mask)
        return x, token_mask

    encode_condition = encode_sketch

    def embed_sketch(self, sketch: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """nuwa-pytorch 0.7.8's name of `encode_sketch`: `(encodings (b, m, dim), mask (b, m))`."""
        return self.encode_sketch(sketch, mask=mask)

    def forward(
        self,
        sketch: Tensor,
        video: Tensor | None = None,
        return_loss: bool = False,
        cond_dropout_prob: float = 0.2,
        video_indices: Tensor | None = None,
        sketch_mask: Tensor | None = None,
    ) -> Tensor:
        """Teacher-forced pass on `sketch (b, sketch_frames, c, h, w)` and `video (b, f, c, h, w)` (or its
        `video_indices`): logits, or the cross entropy with `return_loss` (sketch dropped with `cond_dropout_prob`
        while training). `sketch_mask (b, sketch_frames)` bool marks the sketch frames present (False: padding,
        not attended; see `encode_sketch`)."""
        return self._loss_or_logits(
            sketch, "sketch", video, video_indices, return_loss, cond_dropout_prob, condition_mask=sketch_mask
        )

    def generate_video_indices(
        self,
        sketch: Tensor,
        filter_thres: float = 0.9,
        temperature: float = 1.0,
        cond_scale: float = 1.0,
        num_frames: int | None = None,
        use_cache: bool = True,
        generator: torch.Generator | None = None,
        progress: bool = True,
    ) -> Tensor:
        """Samples the video tokens `(b, num_frames * h' * w')` for `sketch (b, sketch_frames, c, h, w)`; see `generate`."""
        return self._generate_video_indices(
            sketch, filter_thres, temperature, cond_scale, num_frames, use_cache, generator, progress
        )

    def generate(
        self,
        sketch: Tensor,
        filter_thres: float = 0.9,
        temperature: float = 1.0,
        cond_scale: float = 1.0,
        num_frames: int | None = None,
        use_cache: bool = True,
        generator: torch.Generator | None = None,
        decode_frames_per_batch: int | None = 16,
        progress: bool = True,
    ) -> Tensor:
        """Generates videos `(b, num_frames, c, h, w)` in [0, 1] for `sketch (b, sketch_frames, c, h, w)`.

        `filter_thres`: top-k filtering (keep the best `1 - filter_thres` of the vocabulary); `temperature` (0:
        greedy); `cond_scale`: classifier-free guidance scale (1: none; the unconditional pass sees the same video
        tokens with the sketch masked out); `num_frames` (default `max_video_frames`); `use_cache`: key/value cache
        (same result, each step attends to its cached window only); `generator` for reproducible sampling; the VAE
        decodes `decode_frames_per_batch` frames at a time.
        """
        tokens = self.generate_video_indices(
            sketch,
            filter_thres=filter_thres,
            temperature=temperature,
            cond_scale=cond_scale,
            num_frames=num_frames,
            use_cache=use_cache,
            generator=generator,
            progress=progress,
        )
        return self._decode_video(tokens, decode_frames_per_batch)
