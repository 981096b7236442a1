"""Text to video and audio (the NUWA paper's audio extension): two token streams generated jointly.

    nuwa = NUWAVideoAudio(vae=vae, dim=256, num_audio_tokens=1024, num_audio_tokens_per_video_frame=8,
                          max_video_frames=5, dec_depth=6, cross_modality_attn_every=2)
    loss = nuwa(text=text, video=video, audio=audio, return_loss=True)   # audio (b, frames * 8) token ids
    video, audio = nuwa.generate(text=text)        # (b, f, c, h, w) in [0, 1] and (b, f * 8) audio token ids

The audio is a sequence of discrete tokens (from any audio tokenizer, e.g. a neural codec), aligned with the video:
`num_audio_tokens_per_video_frame` audio tokens per video frame. Generation goes frame by frame: the tokens of video
frame `f` (one by one), then the audio tokens of frame `f`, then frame `f + 1`, ... Each stream has its own decoder
layers (video: 3D nearby attention + cross-attention to the text; audio: causal self-attention + cross-attention to
the text); every `cross_modality_attn_every` layers the streams attend to each other through
`CrossModalityCrossAttention`, restricted to what generation order makes known: the prediction of a video token of
frame `f` sees the audio positions of frames before `f`, that of an audio token of frame `f` the video positions of
frames up to `f` (a position predicts its own token from the tokens before it, so the last token of a chunk reaches
the other stream one chunk later). Training is teacher
forcing of both streams at once, the loss `video CE + audio_loss_weight * audio CE`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import Tensor, nn
from tqdm.auto import tqdm

from nuwa_pytorch.nuwa import (
    NUWA,
    CrossAttention,
    PreNormFeedForward,
    VideoAttention,
    VideoTokenDecoder,
    _check_common,
    _FrozenVAEVideoModel,
    embed_gradient_fraction,
    text_encoder_parts,
    token_shift,
)
from nuwa_pytorch.vqgan_vae import VQGanVAE
from synthesis_core.attention import Attention
from synthesis_core.checkpoint import PretrainedMixin
from synthesis_core.checks import (
    check_batch_match,
    check_device,
    check_guidance_scale,
    check_in_range,
    check_positive_int,
    check_temperature,
    check_tensor,
)
from synthesis_core.diffusion import cfg_combine
from synthesis_core.layers import LayerNorm
from synthesis_core.protocol import sample_tokens
from synthesis_core.utils import default, eval_decorator, exists, prob_mask_like

logger = logging.getLogger(__name__)

__all__ = ["CrossModalityCrossAttention", "NUWAVideoAudio"]


class CrossModalityCrossAttention(nn.Module):
    """Attention of one token stream (`seq`, grouped in chunks of `chunk_size` tokens: the tokens of one video frame)
    to another (`context`, chunks of `context_chunk_size`), restricted in time so it can run inside autoregressive
    generation of both.

    Position `p` of a stream belongs to chunk `p // chunk_size` (whether it holds token `p` or, in a stream shifted by
    a start token as `NUWAVideoAudio`'s, predicts it). `has_start_token` / `context_has_start_token` mean instead
    that position 0 is an extra start position outside the chunks (then `p` belongs to chunk `(p - 1) //
    chunk_size`): as a query its output is zero, as context it is never attended. A query of chunk `i` attends to
    the context positions of chunks before `i`, or up to `i` with `context_includes_current_chunk`, plus one learned
    null key/value (so that nothing visible is still well defined). With generation interleaved chunk by chunk
    (the query stream's chunk `i`, then the context's chunk `i`), these are exactly the context positions whose
    prediction comes earlier in generation, so stacked layers exchanging both ways never leak a token into its own
    prediction (a position's state holds only what was generated before the token it predicts).
    `mask (b, n)` zeroes the output at padded query positions; `context_mask (b, m)` hides context tokens.
    """

    def __init__(
        self,
        *,
        dim: int,
        chunk_size: int,
        context_chunk_size: int,
        heads: int = 8,
        dim_head: int = 64,
        context_dim: int | None = None,
        has_start_token: bool = False,
        context_has_start_token: bool = False,
        norm: bool = False,
        norm_context: bool = False,
        dropout: float = 0.0,
        context_includes_current_chunk: bool = False,
    ):
        super().__init__()
        check_positive_int("dim", dim)
        check_positive_int("chunk_size", chunk_size)
        check_positive_int("context_chunk_size", context_chunk_size)
        check_in_range("dropout", dropout, 0.0, 1.0)
        context_dim = default(context_dim, dim)
        self.chunk_size = chunk_size
        self.context_chunk_size = context_chunk_size
        self.has_start_token = has_start_token
        self.context_has_start_token = context_has_start_token
        self.context_includes_current_chunk = context_includes_current_chunk
        self.norm = LayerNorm(dim) if norm else nn.Identity()
        self.context_norm = LayerNorm(context_dim) if norm_context else nn.Identity()
        self.attn = Attention(
            dim, dim_head=dim_head, heads=heads, dim_context=context_dim, num_null_kv=1, dropout=dropout
        )

    def visibility(self, seq_len: int, context_len: int, device: torch.device | None = None) -> Tensor:
        """`(seq_len, context_len)` bool: which context positions each query position may attend to."""
        query_offset, context_offset = int(self.has_start_token), int(self.context_has_start_token)
        chunk = (torch.arange(seq_len, device=device) - query_offset).div(self.chunk_size, rounding_mode="floor")
        context_chunk = (torch.arange(context_len, device=device) - context_offset).div(
            self.context_chunk_size, rounding_mode="floor"
        )
        visible = context_chunk[None, :] < (chunk + int(self.context_includes_current_chunk))[:, None]
        if context_offset:
            visible[:, 0] = False  # the context's start position is no chunk's
        return visible

    def forward(
        self, seq: Tensor, context: Tensor, mask: Tensor | None = None, context_mask: Tensor | None = None
    ) -> Tensor:
        check_tensor("seq", seq, ndim=3, names=("batch", "seq", "dim"))
        check_tensor("context", context, ndim=3, names=("batch", "context_seq", "dim"))
        check_batch_match(seq=seq, context=context)
        batch, seq_len, context_len = seq.shape[0], seq.shape[1], context.shape[1]
        visible = repeat(self.visibility(seq_len, context_len, seq.device), "i j -> b i j", b=batch)
        if exists(context_mask):
            check_tensor("context_mask", context_mask, shape=(batch, context_len), names=("batch", "context_seq"))
            visible = visible & rearrange(context_mask.bool(), "b j -> b 1 j")
        # the learned null key/value is always visible (the attention adds it)
        out = self.attn(self.norm(seq), context=self.context_norm(context), mask=visible)
        if self.has_start_token:
            out = torch.cat((torch.zeros_like(out[:, :1]), out[:, 1:]), dim=1)  # the start position is no chunk's
        if exists(mask):
            out = out.masked_fill(~rearrange(mask.bool(), "b n -> b n 1"), 0.0)
        return out


class AudioAttention(nn.Module):
    """The attention half of an audio decoder layer: causal self-attention over the (token-shifted) audio tokens,
    then cross-attention to the text, `a + cross(norm(x + a))` with `a = attn(shift(norm(x)))`."""

    def __init__(self, dim: int, heads: int, dim_head: int, dropout: float, shift_tokens: bool):
        super().__init__()
        self.shift_tokens = shift_tokens
        self.norm = LayerNorm(dim)
        self.self_attn = Attention(dim, dim_head=dim_head, heads=heads, causal=True, dropout=dropout)
        self.cross_norm = LayerNorm(dim)
        self.cross_attn = CrossAttention(dim, heads=heads, dim_head=dim_head, dropout=dropout)

    def forward(self, x: Tensor, context: Tensor, context_mask: Tensor | None = None) -> Tensor:
        h = self.norm(x)
        if self.shift_tokens:
            h = token_shift(h, dims=(1,), fraction=0.5)  # half the channels from the previous audio token
        attended = self.self_attn(h)
        return attended + self.cross_attn(self.cross_norm(x + attended), context=context, context_mask=context_mask)


class DualModalityLayer(nn.Module):
    """One decoder layer of both streams, and optionally the exchange between them."""

    def __init__(
        self,
        dim: int,
        video_shape: tuple[int, int, int],
        audio_per_frame: int,
        *,
        heads: int,
        dim_head: int,
        attn_dropout: float,
        ff_dropout: float,
        ff_mult: float,
        ff_chunk_size: int | None,
        kernel_size: int | Sequence[int],
        dilation: tuple[int, int, int],
        query_num_frames_chunk: int | None,
        shift_video_tokens: bool,
        shift_audio_tokens: bool,
        cross_modality: bool,
    ):
        super().__init__()
        video_per_frame = video_shape[1] * video_shape[2]

        def feedforward(shape: tuple[int, int, int] | None = None) -> PreNormFeedForward:
            return PreNormFeedForward(
                dim, mult=ff_mult, dropout=ff_dropout, chunk_size=ff_chunk_size, video_shape=shape
            )

        self.video_attn = VideoAttention(
            dim,
            video_shape,
            heads=heads,
            dim_head=dim_head,
            dropout=attn_dropout,
            kernel_size=kernel_size,
            dilation=dilation,
            query_num_frames_chunk=query_num_frames_chunk,
            shift_tokens=shift_video_tokens,
        )
        self.video_ff = feedforward(video_shape if shift_video_tokens else None)
        self.audio_attn = AudioAttention(
            dim, heads=heads, dim_head=dim_head, dropout=attn_dropout, shift_tokens=shift_audio_tokens
        )
        self.audio_ff = feedforward()
        self.video_to_audio = self.audio_to_video = None
        if cross_modality:
            cross_kwargs: dict[str, Any] = dict(
                dim=dim, heads=heads, dim_head=dim_head, norm=True, norm_context=True, dropout=attn_dropout
            )
            # a video token of frame f: the audio of frames < f (generated before frame f's video)
            self.video_to_audio = CrossModalityCrossAttention(
                chunk_size=video_per_frame, context_chunk_size=audio_per_frame, **cross_kwargs
            )
            # an audio token of frame f: the video of frames <= f
            self.audio_to_video = CrossModalityCrossAttention(
                chunk_size=audio_per_frame,
                context_chunk_size=video_per_frame,
                context_includes_current_chunk=True,
                **cross_kwargs,
            )
            self.video_cross_ff = feedforward()
            self.audio_cross_ff = feedforward()

    def forward(self, video: Tensor, audio: Tensor, context: Tensor, context_mask: Tensor) -> tuple[Tensor, Tensor]:
        video = video + self.video_attn(video, context, context_mask)
        video = video + self.video_ff(video)
        audio = audio + self.audio_attn(audio, context, context_mask)
        audio = audio + self.audio_ff(audio)
        if self.video_to_audio is not None and self.audio_to_video is not None:  # (both or neither)
            video, audio = video + self.video_to_audio(video, audio), audio + self.audio_to_video(audio, video)
            video = video + self.video_cross_ff(video)
            audio = audio + self.audio_cross_ff(audio)
        return video, audio


class NUWAVideoAudio(PretrainedMixin, _FrozenVAEVideoModel):
    """Text to video + audio tokens (see the module docstring).

    Args (as `NUWA`, plus):
        num_audio_tokens: the audio vocabulary size.
        num_audio_tokens_per_video_frame: audio tokens per video frame (the alignment of the two streams).
        audio_tokens_per_timestep: audio tokens per time step (e.g. codec codebooks per frame); the audio position
            embedding is axial over (time step, token within the step); must divide the tokens per video frame.
        shift_audio_tokens: half the channels of each audio token come from the previous one (cheap positions).
        cross_modality_attn_every: the two streams exchange information after every this many layers.
        audio_loss_weight: weight of the audio cross entropy in the loss.
        cond_dropout_prob: probability to drop the text of a sample while training (for guidance).
    """

    def __init__(
        self,
        vae: VQGanVAE,
        dim: int,
        num_audio_tokens: int,
        num_audio_tokens_per_video_frame: int,
        image_size: int | None = None,
        audio_tokens_per_timestep: int = 1,
        max_video_frames: int = 5,
        text_num_tokens: int = 20000,
        text_max_seq_len: int = 256,
        text_enc_depth: int = 6,
        text_enc_dim_head: int = 64,
        text_enc_heads: int = 8,
        text_rotary_pos_emb: bool = True,
        enc_reversible: bool = False,
        dec_reversible: bool = False,
        dec_depth: int = 6,
        dec_dim_head: int = 64,
        dec_heads: int = 8,
        attn_dropout: float = 0.0,
        ff_dropout: float = 0.0,
        ff_mult: float = 4.0,
        ff_chunk_size: int | None = None,
        embed_gradient_frac: float = 0.2,
        shift_video_tokens: bool = True,
        shift_audio_tokens: bool = True,
        sparse_3dna_kernel_size: int | Sequence[int] = 3,
        sparse_3dna_query_num_frames_chunk: int | None = None,
        sparse_3dna_dilation: int | Sequence[int] | Sequence[Sequence[int]] = 1,
        sparse_3dna_rel_pos_bias: bool = True,
        sparse_2dna_kernel_size: int | None = None,
        sparse_2dna_dilation: int | None = None,
        sparse_2dna_rel_pos_bias: bool | None = None,
        audio_loss_weight: float = 1.0,
        cross_modality_attn_every: int = 3,
        cond_dropout_prob: float = 0.2,
    ):
        super().__init__()
        # nuwa-pytorch 0.7.8 keywords for designs this model does not have: refused when they ask for them
        if not text_rotary_pos_emb:
            raise ValueError("text_rotary_pos_emb=False: the text encoder uses rotary positions here; leave it out")
        if dec_reversible:
            raise ValueError(
                "dec_reversible=True: the two-stream decoder is a plain residual stack here; for "
                "memory use ff_chunk_size= and sparse_3dna_query_num_frames_chunk="
            )
        if not sparse_3dna_rel_pos_bias:
            raise ValueError(
                "sparse_3dna_rel_pos_bias=False: the video attention always learns its relative "
                "position bias here (zero at init); leave it out"
            )
        for name, value in (
            ("sparse_2dna_kernel_size", sparse_2dna_kernel_size),
            ("sparse_2dna_dilation", sparse_2dna_dilation),
            ("sparse_2dna_rel_pos_bias", sparse_2dna_rel_pos_bias),
        ):
            if value is not None:
                raise ValueError(
                    f"{name}: the audio stream uses full causal self-attention here, not a 2D nearby "
                    "window; leave it out"
                )
        _check_common(
            dim,
            attn_dropout,
            ff_dropout,
            embed_gradient_frac,
            num_audio_tokens=num_audio_tokens,
            num_audio_tokens_per_video_frame=num_audio_tokens_per_video_frame,
            audio_tokens_per_timestep=audio_tokens_per_timestep,
            text_num_tokens=text_num_tokens,
            text_max_seq_len=text_max_seq_len,
            text_enc_depth=text_enc_depth,
            text_enc_dim_head=text_enc_dim_head,
            text_enc_heads=text_enc_heads,
            dec_depth=dec_depth,
            dec_dim_head=dec_dim_head,
            dec_heads=dec_heads,
            cross_modality_attn_every=cross_modality_attn_every,
        )
        if num_audio_tokens_per_video_frame % audio_tokens_per_timestep != 0:
            raise ValueError(
                f"audio_tokens_per_timestep: {audio_tokens_per_timestep} must divide "
                f"num_audio_tokens_per_video_frame={num_audio_tokens_per_video_frame}"
            )
        check_in_range("audio_loss_weight", audio_loss_weight, 0.0, None)
        check_in_range("cond_dropout_prob", cond_dropout_prob, 0.0, 1.0)
        self._attach_vae(vae, image_size, max_video_frames)
        self.vae = vae
        self.text_num_tokens = text_num_tokens
        self.text_max_seq_len = text_max_seq_len
        self.embed_gradient_frac = embed_gradient_frac
        self.num_audio_tokens = num_audio_tokens
        self.audio_per_frame = num_audio_tokens_per_video_frame
        self.audio_tokens_per_timestep = audio_tokens_per_timestep
        self.audio_loss_weight = audio_loss_weight
        self.cond_dropout_prob = cond_dropout_prob

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
        self.text_pos_emb = None  # rotary text positions only; NUWA.encode_text (borrowed below) reads this

        frames, height, width = self.video_shape
        self.video_bos = nn.Parameter(torch.randn(dim) * 0.02)
        self.video_token_emb = nn.Embedding(self.num_video_tokens, dim)
        self.video_pos_emb = nn.ParameterDict(
            {
                axis: nn.Parameter(torch.randn(size, dim) * 0.02)
                for axis, size in (("frame", frames), ("row", height), ("col", width))
            }
        )
        self.audio_bos = nn.Parameter(torch.randn(dim) * 0.02)
        self.audio_token_emb = nn.Embedding(num_audio_tokens, dim)
        timesteps = frames * num_audio_tokens_per_video_frame // audio_tokens_per_timestep
        self.audio_pos_emb = nn.ParameterDict(
            {
                "time": nn.Parameter(torch.randn(timesteps, dim) * 0.02),
                "slot": nn.Parameter(torch.randn(audio_tokens_per_timestep, dim) * 0.02),
            }
        )

        dilations = VideoTokenDecoder._layer_dilations(sparse_3dna_dilation, dec_depth)
        self.layers = nn.ModuleList(
            DualModalityLayer(
                dim,
                self.video_shape,
                num_audio_tokens_per_video_frame,
                heads=dec_heads,
                dim_head=dec_dim_head,
                attn_dropout=attn_dropout,
                ff_dropout=ff_dropout,
                ff_mult=ff_mult,
                ff_chunk_size=ff_chunk_size,
                kernel_size=sparse_3dna_kernel_size,
                dilation=dilation,
                query_num_frames_chunk=sparse_3dna_query_num_frames_chunk,
                shift_video_tokens=shift_video_tokens,
                shift_audio_tokens=shift_audio_tokens,
                cross_modality=(index + 1) % cross_modality_attn_every == 0,
            )
            for index, dilation in enumerate(dilations)
        )
        self.video_norm = LayerNorm(dim)
        self.audio_norm = LayerNorm(dim)
        self.to_video_logits = nn.Linear(dim, self.num_video_tokens)
        self.to_audio_logits = nn.Linear(dim, num_audio_tokens)

    # the text encoder is NUWA's (same parts, same attribute names)
    # (typed as plain callables: these functions of NUWA only use the attributes both models have)
    _check_text = NUWA._check_text
    encode_text: Callable[..., tuple[Tensor, Tensor]] = NUWA.encode_text
    embed_text = NUWA.embed_text

    def encode_condition(self, condition: Tensor) -> tuple[Tensor, Tensor]:
        return self.encode_text(condition)

    @property
    def max_audio_len(self) -> int:
        return self.max_video_frames * self.audio_per_frame

    def _check_audio(self, audio: Tensor, frames: int) -> Tensor:
        check_tensor("audio", audio, ndim=2, names=("batch", "audio_seq"))
        if audio.is_floating_point() or audio.dtype == torch.bool:
            raise TypeError(f"audio: expected integer audio token ids, got dtype {audio.dtype}")
        check_device("audio", audio, self.audio_token_emb.weight.device)
        expected = frames * self.audio_per_frame
        if audio.shape[1] != expected:
            raise ValueError(
                f"audio: expected {expected} tokens ({frames} frames x num_audio_tokens_per_video_frame="
                f"{self.audio_per_frame}), got {audio.shape[1]}"
            )
        check_tensor("audio", audio, value_range=(0, self.num_audio_tokens - 1))
        return audio.long()

    # the two streams

    def _stream_inputs(self, video_prefix: Tensor, audio_prefix: Tensor) -> tuple[Tensor, Tensor]:
        """Decoder inputs: start token + embedded prefix + positions, for each stream; position `p` predicts token
        `p`. Lengths: `len(prefix) + 1` each."""
        batch = video_prefix.shape[0]
        _, height, width = self.video_shape
        video = torch.cat((repeat(self.video_bos, "d -> b 1 d", b=batch), self.video_token_emb(video_prefix)), dim=1)
        positions = torch.arange(video.shape[1], device=video.device)
        frame, rest = positions.div(height * width, rounding_mode="floor"), positions % (height * width)
        video = video + (
            self.video_pos_emb["frame"][frame]
            + self.video_pos_emb["row"][rest.div(width, rounding_mode="floor")]
            + self.video_pos_emb["col"][rest % width]
        )

        audio = torch.cat((repeat(self.audio_bos, "d -> b 1 d", b=batch), self.audio_token_emb(audio_prefix)), dim=1)
        positions = torch.arange(audio.shape[1], device=audio.device)
        per_step = self.audio_tokens_per_timestep
        audio = audio + (
            self.audio_pos_emb["time"][positions.div(per_step, rounding_mode="floor")]
            + self.audio_pos_emb["slot"][positions % per_step]
        )
        fraction = self.embed_gradient_frac
        return embed_gradient_fraction(video, fraction), embed_gradient_fraction(audio, fraction)

    def decode(
        self, video_prefix: Tensor, audio_prefix: Tensor, context: Tensor, context_mask: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Logits `(b, len(video_prefix) + 1, num_video_tokens)` and `(b, len(audio_prefix) + 1, num_audio_tokens)`
        of the next tokens of each stream, given the token prefixes and the encoded text."""
        video, audio = self._stream_inputs(video_prefix, audio_prefix)
        for layer in self.layers:
            video, audio = layer(video, audio, context, context_mask)
        return self.to_video_logits(self.video_norm(video)), self.to_audio_logits(self.audio_norm(audio))

    def forward(
        self,
        text: Tensor,
        video: Tensor | None = None,
        audio: Tensor | None = None,
        return_loss: bool = False,
        cond_dropout_prob: float | None = None,
        video_indices: Tensor | None = None,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Teacher-forced pass: `text (b, n)` ids, `video (b, f, c, h, w)` in [0, 1] (or its `video_indices`) and
        `audio (b, f * num_audio_tokens_per_video_frame)` token ids.

        Returns `(video_logits, audio_logits)`, or with `return_loss` the loss `video CE + audio_loss_weight * audio
        CE`. While training each sample's text is dropped with `cond_dropout_prob` (default: the constructor's).
        """
        if audio is None:
            raise ValueError("audio: expected the audio token ids (b, frames * num_audio_tokens_per_video_frame)")
        cond_dropout_prob = default(cond_dropout_prob, self.cond_dropout_prob)
        check_in_range("cond_dropout_prob", cond_dropout_prob, 0.0, 1.0)
        context, context_mask = self.encode_text(text)
        indices = self._video_indices(video, video_indices)
        audio = self._check_audio(audio, indices.shape[1] // self.tokens_per_frame)
        check_batch_match(text=context, video=indices, audio=audio)
        if self.training and cond_dropout_prob > 0:
            keep = ~prob_mask_like((context.shape[0],), cond_dropout_prob, device=context.device)
            context_mask = context_mask & rearrange(keep, "b -> b 1")

        video_logits, audio_logits = self.decode(indices[:, :-1], audio[:, :-1], context, context_mask)
        if not return_loss:
            return video_logits, audio_logits
        video_loss = F.cross_entropy(rearrange(video_logits.float(), "b n c -> b c n"), indices)
        audio_loss = F.cross_entropy(rearrange(audio_logits.float(), "b n c -> b c n"), audio)
        return video_loss + self.audio_loss_weight * audio_loss

    @torch.no_grad()
    @eval_decorator
    def generate_indices(
        self,
        text: Tensor,
        filter_thres: float = 0.9,
        temperature: float = 1.0,
        cond_scale: float = 1.0,
        num_frames: int | None = None,
        generator: torch.Generator | None = None,
        progress: bool = True,
    ) -> tuple[Tensor, Tensor]:
        """Samples `(video tokens (b, f * h' * w'), audio tokens (b, f * num_audio_tokens_per_video_frame))`, frame
        by frame: the video tokens of a frame, then its audio tokens. See `generate`."""
        check_in_range("filter_thres", filter_thres, 0.0, 1.0)
        check_temperature("temperature", temperature)
        check_guidance_scale("cond_scale", cond_scale)
        num_frames = default(num_frames, self.max_video_frames)
        self._check_num_frames("num_frames", num_frames)
        context, context_mask = self.encode_text(text)
        batch = context.shape[0]
        guided = cond_scale != 1
        if guided:  # the unconditional half sees the same tokens with the text masked out
            context = torch.cat((context, context))
            context_mask = torch.cat((context_mask, torch.zeros_like(context_mask)))

        video = torch.empty(batch, 0, dtype=torch.long, device=context.device)
        audio = torch.empty(batch, 0, dtype=torch.long, device=context.device)
        schedule = [True] * self.tokens_per_frame + [False] * self.audio_per_frame  # True: a video token
        steps = [is_video for _ in range(num_frames) for is_video in schedule]
        for is_video in tqdm(steps, desc="generating video and audio tokens", disable=not progress, leave=False):
            video_in, audio_in = (torch.cat((t, t)) if guided else t for t in (video, audio))
            video_logits, audio_logits = self.decode(video_in, audio_in, context, context_mask)
            logits = (video_logits if is_video else audio_logits)[:, -1].float()
            if guided:
                conditional, unconditional = logits.chunk(2)
                logits = cfg_combine(conditional, unconditional, cond_scale)
            sampled = rearrange(
                sample_tokens(logits, temperature, filter_thres=filter_thres, generator=generator), "b -> b 1"
            )
            if is_video:
                video = torch.cat((video, sampled), dim=1)
            else:
                audio = torch.cat((audio, sampled), dim=1)
        return video, audio

    def generate(
        self,
        text: Tensor,
        filter_thres: float = 0.9,
        temperature: float = 1.0,
        cond_scale: float = 1.0,
        num_frames: int | None = None,
        generator: torch.Generator | None = None,
        decode_frames_per_batch: int | None = 16,
        progress: bool = True,
    ) -> tuple[Tensor, Tensor]:
        """`(video (b, num_frames, c, h, w) in [0, 1], audio token ids (b, num_frames * audio tokens per frame))` for
        `text (b, n)`: top-k filtering (`filter_thres`), `temperature` (0: greedy), classifier-free guidance
        (`cond_scale`, 1: none), `generator` for reproducible sampling. The audio stays tokens: decode them with the
        audio tokenizer that made the training tokens."""
        video, audio = self.generate_indices(
            text,
            filter_thres=filter_thres,
            temperature=temperature,
            cond_scale=cond_scale,
            num_frames=num_frames,
            generator=generator,
            progress=progress,
        )
        return self._decode_video(video, decode_frames_per_batch), audio
