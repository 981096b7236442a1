"""MaskGIT over video tokens, and the Token-Critic that guides its sampling.

`MaskGit` is a bidirectional transformer over the flattened C-ViViT token grid `(t, h, w)`: some tokens are
replaced by a mask token and it predicts them all at once, with cross-attention to the text (learned null
key/values, so a dropped condition has something to attend to; that path is the unconditional branch of
classifier-free guidance) and a continuous 3D relative position bias.

`TokenCritic` (or `SelfCritic`, a head on MaskGit's own embeddings) scores every token of a filled-in sequence
with the logit of "this token was generated, not real"; sampling re-masks the tokens it distrusts most.
`CriticTrainer(maskgit, critic)` trains a critic on a frozen MaskGit's samples.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, overload

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from synthesis_core.attention import ContinuousPositionBias, Transformer
from synthesis_core.checkpoint import PretrainedMixin
from synthesis_core.checks import (
    check_batch_match,
    check_device,
    check_embeddings,
    check_guidance_scale,
    check_in_range,
    check_not_empty,
    check_positive_int,
    check_temperature,
    check_tensor,
)
from synthesis_core.diffusion import cfg_combine
from synthesis_core.protocol import sample_tokens
from synthesis_core.utils import default, exists, prob_mask_like

__all__ = [
    "MaskGit",
    "TokenCritic",
    "SelfCritic",
    "CriticScoring",
    "CriticTrainer",
    "cosine_schedule",
    "mask_by_ratio",
    "gumbel_sample",
]


# masking schedule and sampling helpers


@overload
def cosine_schedule(t: Tensor) -> Tensor: ...
@overload
def cosine_schedule(t: float) -> float: ...
def cosine_schedule(t: Tensor | float) -> Tensor | float:
    """MaskGIT's cosine schedule: the fraction of tokens still masked at progress `t` in [0, 1] (1 -> 0)."""
    if isinstance(t, Tensor):
        return torch.cos(t * math.pi * 0.5)
    return math.cos(t * math.pi * 0.5)


def num_masked_at_step(step: int, steps: int, num_tokens: int) -> int:
    """Tokens left masked after sampling step `step` (0-based) of `steps` for `num_tokens` generated tokens:
    `floor(cos(pi/2 * (step + 1) / steps) * num_tokens)`, so the last step leaves none."""
    return int(math.floor(cosine_schedule((step + 1) / steps) * num_tokens))


def mask_by_ratio(
    shape: tuple[int, int], mask_ratio: Tensor, device: torch.device | None = None, can_mask: Tensor | None = None
) -> Tensor:
    """A bool mask `(b, n)` with exactly `max(1, round(mask_ratio[i] * m_i))` True entries per row, chosen uniformly
    among the positions where `can_mask` (default all; `m_i` = their count)."""
    batch, seq_len = shape
    scores = torch.rand(shape, device=device)
    if exists(can_mask):
        scores = scores.masked_fill(~can_mask, -1.0)  # never chosen before a maskable position
        maskable = can_mask.sum(dim=-1)
    else:
        maskable = torch.full((batch,), seq_len, device=device)
    num_masked = (mask_ratio * maskable).round().long().clamp(min=1)
    num_masked = torch.minimum(num_masked, maskable.long())
    # rank of each position by its random score, highest first: the top num_masked are masked
    ranks = scores.argsort(dim=-1, descending=True).argsort(dim=-1)
    return ranks < rearrange(num_masked, "b -> b 1")


def gumbel_sample(
    logits: Tensor, temperature: float = 1.0, dim: int = -1, generator: torch.Generator | None = None
) -> Tensor:
    """Sample from `softmax(logits / temperature)` along `dim` with the Gumbel-max trick (the core's
    `sample_tokens`, shared with NUWA); greedy when `temperature == 0`."""
    return sample_tokens(logits.movedim(dim, -1), temperature, generator=generator)


# the shared token transformer


class VideoTokenTransformer(nn.Module):
    """Embeds a sequence of video token ids (plus a mask id), runs a bidirectional transformer with optional
    cross-attention to text, and returns the final embeddings `(b, n, dim)`. Heads are added by subclasses."""

    def __init__(
        self,
        *,
        num_tokens: int,
        max_seq_len: int,
        dim: int,
        depth: int,
        dim_context: int | None = None,
        unconditional: bool = False,
        heads: int = 8,
        dim_head: int = 64,
        ff_mult: float = 4.0,
        attn_dropout: float = 0.0,
        ff_dropout: float = 0.0,
        num_null_kv: int = 2,
        qk_norm: bool = False,
        self_cond: bool = False,
        gradient_shrink_alpha: float = 1.0,
    ):
        super().__init__()
        check_in_range("gradient_shrink_alpha", gradient_shrink_alpha, 0.0, 1.0)
        check_positive_int("num_tokens", num_tokens)
        check_positive_int("max_seq_len", max_seq_len)
        check_positive_int("dim", dim)
        check_positive_int("depth", depth)
        check_positive_int("num_null_kv", num_null_kv)  # at least one: the dropped-text (guidance) path needs it
        self.num_tokens = num_tokens
        self.mask_id = num_tokens
        self.max_seq_len = max_seq_len
        self.dim = dim
        self.unconditional = unconditional
        self.dim_context = None if unconditional else default(dim_context, dim)
        # CogView's stability trick: only this fraction of the gradient reaches the input embeddings
        self.gradient_shrink_alpha = gradient_shrink_alpha

        self.token_emb = nn.Embedding(num_tokens + 1, dim)
        self.pos_emb = nn.Embedding(max_seq_len, dim)
        self.rel_pos_bias = ContinuousPositionBias(dim=max(dim // 4, 32), heads=heads, num_dims=3)
        # self-conditioning: the previous prediction's embeddings are added to the input embeddings
        self.self_cond = self_cond
        self.self_cond_to_init_embed = nn.Linear(dim, dim) if self_cond else None

        self.transformer = Transformer(
            dim,
            depth,
            dim_head=dim_head,
            heads=heads,
            dim_context=self.dim_context,
            ff_mult=ff_mult,
            attn_dropout=attn_dropout,
            ff_dropout=ff_dropout,
            num_null_kv=num_null_kv,
            qk_norm=qk_norm,
        )

    @property
    def device(self) -> torch.device:
        return self.token_emb.weight.device

    @property
    def dtype(self) -> torch.dtype:
        """The parameter dtype: embeddings in another float dtype are cast to it."""
        return self.token_emb.weight.dtype

    # -- validation (public entry points only: it synchronises with the device) ----------------------------------

    def check_inputs(
        self,
        x: Tensor,
        text_embeds: Tensor | None = None,
        text_mask: Tensor | None = None,
        video_patch_shape: Sequence[int] | None = None,
        self_cond_embeds: Tensor | None = None,
    ) -> tuple[Tensor | None, Tensor | None]:
        """Validate the inputs of a public call; returns `(text_embeds, self_cond_embeds)` checked finite, on the
        model's device and cast to its dtype (None stays None)."""
        check_tensor("x", x, ndim=2, names=("batch", "seq"))
        if x.dtype.is_floating_point or x.dtype == torch.bool:
            raise TypeError(f"x: expected integer token ids, got dtype {x.dtype}")
        check_device("x", x, self.device)
        check_not_empty("x", x)
        seq_len = x.shape[1]
        if seq_len > self.max_seq_len:
            raise ValueError(
                f"x: {seq_len} tokens exceed max_seq_len={self.max_seq_len}; build the model with a "
                "larger max_seq_len or use fewer frames / a smaller image"
            )
        if x.numel() > 0:
            low, high = torch.stack((x.min(), x.max())).tolist()
            if low < 0 or high > self.num_tokens:
                raise ValueError(
                    f"x: expected token ids in [0, {self.num_tokens - 1}] (or the mask id "
                    f"{self.mask_id}), got values in [{low}, {high}]"
                )
        if exists(text_embeds):
            if self.unconditional:
                raise ValueError("text_embeds: this model is unconditional (unconditional=True)")
            check_tensor(
                "text_embeds",
                text_embeds,
                ndim=3,
                shape=(None, None, self.dim_context),
                names=("batch", "text_seq", "dim_context"),
                dtype_floating=True,
            )
            check_batch_match(x=x, text_embeds=text_embeds)
            text_embeds = check_embeddings("text_embeds", text_embeds, device=self.device, dtype=self.dtype)
        if exists(text_mask):
            if not exists(text_embeds):
                raise ValueError("text_mask: given without text_embeds")
            check_tensor("text_mask", text_mask, shape=tuple(text_embeds.shape[:2]), names=("batch", "text_seq"))
        if exists(video_patch_shape):
            self._check_patch_shape(video_patch_shape, seq_len)
        if exists(self_cond_embeds):
            check_tensor(
                "self_cond_embeds",
                self_cond_embeds,
                shape=(x.shape[0], seq_len, self.dim),
                names=("batch", "seq", "dim"),
            )
            self_cond_embeds = check_embeddings(
                "self_cond_embeds", self_cond_embeds, device=self.device, dtype=self.dtype
            )
        return text_embeds, self_cond_embeds

    @staticmethod
    def _check_patch_shape(video_patch_shape: Sequence[int], seq_len: int) -> None:
        if len(video_patch_shape) != 3 or math.prod(video_patch_shape) != seq_len:
            raise ValueError(
                f"video_patch_shape: expected (frames, height, width) with frames * height * width "
                f"equal to the {seq_len} tokens, got {tuple(video_patch_shape)}"
            )

    # -- the network ----------------------------------------------------------------------------------------------

    def context_and_mask(
        self,
        batch: int,
        text_embeds: Tensor | None,
        text_mask: Tensor | None,
        cond_drop_prob: float,
        device: torch.device,
    ) -> tuple[Tensor | None, Tensor | None]:
        """The cross-attention context and its mask, with classifier-free-guidance dropout applied per sample.

        A missing text or a dropped one masks every text token: only the learned null key/values remain, which
        is exactly the unconditional branch `forward_with_cond_scale` uses.
        """
        if self.unconditional or self.dim_context is None:  # (dim_context is None exactly when unconditional)
            return None, None
        if not exists(text_embeds):
            context = torch.zeros(batch, 1, self.dim_context, device=device)
            return context, torch.zeros(batch, 1, dtype=torch.bool, device=device)
        text_mask = default(text_mask, lambda: torch.ones(text_embeds.shape[:2], dtype=torch.bool, device=device))
        text_mask = text_mask.bool()
        if cond_drop_prob > 0:
            keep = prob_mask_like((batch,), 1.0 - cond_drop_prob, device=device)
            text_mask = text_mask & rearrange(keep, "b -> b 1")
        return text_embeds, text_mask

    def embed(
        self,
        x: Tensor,
        text_embeds: Tensor | None = None,
        text_mask: Tensor | None = None,
        *,
        cond_drop_prob: float = 0.0,
        video_patch_shape: Sequence[int] | None = None,
        self_cond_embeds: Tensor | None = None,
    ) -> Tensor:
        """Final embeddings `(b, n, dim)` of validated inputs (no device synchronisation)."""
        batch, seq_len = x.shape
        device = x.device
        video_patch_shape = tuple(default(video_patch_shape, (seq_len, 1, 1)))

        tokens = self.token_emb(x) + self.pos_emb(torch.arange(seq_len, device=device))
        if exists(self.self_cond_to_init_embed):
            # always applied (zeros when there is no previous prediction) so every parameter takes part each step
            self_cond_embeds = default(self_cond_embeds, lambda: torch.zeros_like(tokens))
            tokens = tokens + self.self_cond_to_init_embed(self_cond_embeds.to(tokens.dtype))
        if self.gradient_shrink_alpha < 1:
            alpha = self.gradient_shrink_alpha
            tokens = tokens * alpha + tokens.detach() * (1 - alpha)

        attn_bias = self.rel_pos_bias(*video_patch_shape, device=device)
        context, context_mask = self.context_and_mask(batch, text_embeds, text_mask, cond_drop_prob, device)
        return self.transformer(tokens, context=context, context_mask=context_mask, attn_bias=attn_bias)


class MaskGit(PretrainedMixin, VideoTokenTransformer):
    """Masked-token transformer over video tokens, conditioned on text by cross-attention.

    ```
    maskgit = MaskGit(num_tokens=5000, max_seq_len=1024, dim=512, dim_context=768, depth=6)
    logits = maskgit(ids, text_embeds=embeds, text_mask=mask, video_patch_shape=(t, h, w))  # (b, n, 5000)
    logits = maskgit.forward_with_cond_scale(ids, cond_scale=3., text_embeds=embeds)       # guided
    ```
    `ids` may contain `maskgit.mask_id` (== num_tokens). `dim_context` defaults to `dim`; `unconditional=True`
    drops the cross-attention. `self_cond=True` adds self-conditioning on the previous prediction's embeddings.
    """

    def __init__(
        self,
        *,
        num_tokens: int,
        max_seq_len: int,
        dim: int,
        depth: int = 6,
        dim_context: int | None = None,
        unconditional: bool = False,
        heads: int = 8,
        dim_head: int = 64,
        ff_mult: float = 4.0,
        attn_dropout: float = 0.0,
        ff_dropout: float = 0.0,
        num_null_kv: int = 2,
        qk_norm: bool = False,
        self_cond: bool = False,
        gradient_shrink_alpha: float = 1.0,
    ):
        super().__init__(
            num_tokens=num_tokens,
            max_seq_len=max_seq_len,
            dim=dim,
            depth=depth,
            dim_context=dim_context,
            unconditional=unconditional,
            heads=heads,
            dim_head=dim_head,
            ff_mult=ff_mult,
            attn_dropout=attn_dropout,
            ff_dropout=ff_dropout,
            num_null_kv=num_null_kv,
            qk_norm=qk_norm,
            self_cond=self_cond,
            gradient_shrink_alpha=gradient_shrink_alpha,
        )
        self.to_logits = nn.Linear(dim, num_tokens)

    def logits(
        self,
        x: Tensor,
        text_embeds: Tensor | None = None,
        text_mask: Tensor | None = None,
        *,
        cond_drop_prob: float = 0.0,
        video_patch_shape: Sequence[int] | None = None,
        self_cond_embeds: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """`(logits (b, n, num_tokens), embeds (b, n, dim))` for validated inputs (used in training/sampling loops)."""
        embeds = self.embed(
            x,
            text_embeds,
            text_mask,
            cond_drop_prob=cond_drop_prob,
            video_patch_shape=video_patch_shape,
            self_cond_embeds=self_cond_embeds,
        )
        return self.to_logits(embeds), embeds

    def forward(
        self,
        x: Tensor,
        text_embeds: Tensor | None = None,
        text_mask: Tensor | None = None,
        *,
        cond_drop_prob: float = 0.0,
        video_patch_shape: Sequence[int] | None = None,
        self_cond_embeds: Tensor | None = None,
        return_embeds: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Logits `(b, n, num_tokens)` for token ids `x (b, n)` (`mask_id` marks the tokens to predict).

        `text_embeds (b, m, dim_context)` / `text_mask (b, m)`: the condition (None: the unconditional path);
        `cond_drop_prob`: probability of dropping each sample's text (classifier-free guidance training);
        `video_patch_shape`: the `(frames, height, width)` token grid for the 3D position bias (default 1D).
        """
        check_in_range("cond_drop_prob", cond_drop_prob, 0.0, 1.0)
        text_embeds, self_cond_embeds = self.check_inputs(
            x, text_embeds, text_mask, video_patch_shape, self_cond_embeds
        )
        logits, embeds = self.logits(
            x,
            text_embeds,
            text_mask,
            cond_drop_prob=cond_drop_prob,
            video_patch_shape=video_patch_shape,
            self_cond_embeds=self_cond_embeds,
        )
        return (logits, embeds) if return_embeds else logits

    def guided_logits(
        self,
        x: Tensor,
        *,
        cond_scale: float = 3.0,
        text_embeds: Tensor | None = None,
        text_mask: Tensor | None = None,
        video_patch_shape: Sequence[int] | None = None,
        self_cond_embeds: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Classifier-free guidance `null + cond_scale * (cond - null)` on validated inputs, in one batched pass.
        Returns `(logits, conditional embeds)`."""
        guided = not self.unconditional and exists(text_embeds) and cond_scale != 1.0
        if not guided or text_embeds is None:
            return self.logits(
                x, text_embeds, text_mask, video_patch_shape=video_patch_shape, self_cond_embeds=self_cond_embeds
            )
        batch = x.shape[0]
        text_mask = default(text_mask, lambda: torch.ones(text_embeds.shape[:2], dtype=torch.bool, device=x.device))
        # the conditional and the null branch as one batch of 2b: one pass of the network instead of two
        doubled_self_cond = torch.cat((self_cond_embeds, self_cond_embeds)) if exists(self_cond_embeds) else None
        logits, embeds = self.logits(
            torch.cat((x, x)),
            torch.cat((text_embeds, text_embeds)),
            torch.cat((text_mask.bool(), torch.zeros_like(text_mask, dtype=torch.bool))),
            video_patch_shape=video_patch_shape,
            self_cond_embeds=doubled_self_cond,
        )
        cond_logits, null_logits = logits[:batch], logits[batch:]
        return cfg_combine(cond_logits, null_logits, cond_scale), embeds[:batch]

    def forward_with_cond_scale(
        self,
        x: Tensor,
        *,
        cond_scale: float = 3.0,
        text_embeds: Tensor | None = None,
        text_mask: Tensor | None = None,
        video_patch_shape: Sequence[int] | None = None,
        self_cond_embeds: Tensor | None = None,
        return_embeds: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Guided logits: `null + cond_scale * (cond - null)`, where null is the dropped-text prediction."""
        check_guidance_scale("cond_scale", cond_scale)
        text_embeds, self_cond_embeds = self.check_inputs(
            x, text_embeds, text_mask, video_patch_shape, self_cond_embeds
        )
        logits, embeds = self.guided_logits(
            x,
            cond_scale=cond_scale,
            text_embeds=text_embeds,
            text_mask=text_mask,
            video_patch_shape=video_patch_shape,
            self_cond_embeds=self_cond_embeds,
        )
        return (logits, embeds) if return_embeds else logits


class CriticScoring:
    """The public scoring methods shared by `TokenCritic` and `SelfCritic` (they implement `scores`)."""

    if TYPE_CHECKING:  # what the classes using this mixin provide
        unconditional: bool

        def check_inputs(
            self,
            x: Tensor,
            text_embeds: Tensor | None = None,
            text_mask: Tensor | None = None,
            video_patch_shape: Sequence[int] | None = None,
            self_cond_embeds: Tensor | None = None,
        ) -> tuple[Tensor | None, Tensor | None]: ...

        def scores(
            self,
            x: Tensor,
            text_embeds: Tensor | None = None,
            text_mask: Tensor | None = None,
            *,
            cond_drop_prob: float = 0.0,
            video_patch_shape: Sequence[int] | None = None,
        ) -> Tensor: ...

    def forward(
        self,
        x: Tensor,
        text_embeds: Tensor | None = None,
        text_mask: Tensor | None = None,
        *,
        cond_drop_prob: float = 0.0,
        video_patch_shape: Sequence[int] | None = None,
    ) -> Tensor:
        """Logits `(b, n)` that each token of `x (b, n)` was generated (higher = less trustworthy)."""
        check_in_range("cond_drop_prob", cond_drop_prob, 0.0, 1.0)
        text_embeds, _ = self.check_inputs(x, text_embeds, text_mask, video_patch_shape)
        return self.scores(
            x, text_embeds, text_mask, cond_drop_prob=cond_drop_prob, video_patch_shape=video_patch_shape
        )

    def guided_scores(
        self,
        x: Tensor,
        *,
        cond_scale: float = 3.0,
        text_embeds: Tensor | None = None,
        text_mask: Tensor | None = None,
        video_patch_shape: Sequence[int] | None = None,
    ) -> Tensor:
        """Classifier-free guided scores of validated inputs (conditional and null branch in one batch)."""
        guided = not self.unconditional and exists(text_embeds) and cond_scale != 1.0
        if not guided or text_embeds is None:
            return self.scores(x, text_embeds, text_mask, video_patch_shape=video_patch_shape)
        batch = x.shape[0]
        text_mask = default(text_mask, lambda: torch.ones(text_embeds.shape[:2], dtype=torch.bool, device=x.device))
        scores = self.scores(
            torch.cat((x, x)),
            torch.cat((text_embeds, text_embeds)),
            torch.cat((text_mask.bool(), torch.zeros_like(text_mask, dtype=torch.bool))),
            video_patch_shape=video_patch_shape,
        )
        cond, null = scores[:batch], scores[batch:]
        return cfg_combine(cond, null, cond_scale)

    def forward_with_cond_scale(
        self,
        x: Tensor,
        *,
        cond_scale: float = 3.0,
        text_embeds: Tensor | None = None,
        text_mask: Tensor | None = None,
        video_patch_shape: Sequence[int] | None = None,
    ) -> Tensor:
        check_guidance_scale("cond_scale", cond_scale)
        text_embeds, _ = self.check_inputs(x, text_embeds, text_mask, video_patch_shape)
        return self.guided_scores(
            x, cond_scale=cond_scale, text_embeds=text_embeds, text_mask=text_mask, video_patch_shape=video_patch_shape
        )


class TokenCritic(PretrainedMixin, CriticScoring, VideoTokenTransformer):
    """Token-Critic (Lezama et al. 2022): for a filled-in token sequence, the logit per token that it was
    generated by MaskGit rather than taken from a real video. Same trunk as `MaskGit`, a scalar head.

    ```
    critic = TokenCritic(num_tokens=5000, max_seq_len=1024, dim=512, dim_context=768, depth=6)
    scores = critic(ids, text_embeds=embeds)   # (b, n) logits
    ```
    """

    def __init__(
        self,
        *,
        num_tokens: int,
        max_seq_len: int,
        dim: int,
        depth: int = 6,
        dim_context: int | None = None,
        unconditional: bool = False,
        heads: int = 8,
        dim_head: int = 64,
        ff_mult: float = 4.0,
        attn_dropout: float = 0.0,
        ff_dropout: float = 0.0,
        num_null_kv: int = 2,
        qk_norm: bool = False,
        has_cross_attn: bool | None = None,
    ):
        # phenaki-pytorch 0.5 spelling: has_cross_attn is `not unconditional`
        if exists(has_cross_attn):
            if unconditional and has_cross_attn:
                raise ValueError("has_cross_attn=True contradicts unconditional=True; pass only one of them")
            unconditional = not has_cross_attn
        super().__init__(
            num_tokens=num_tokens,
            max_seq_len=max_seq_len,
            dim=dim,
            depth=depth,
            dim_context=dim_context,
            unconditional=unconditional,
            heads=heads,
            dim_head=dim_head,
            ff_mult=ff_mult,
            attn_dropout=attn_dropout,
            ff_dropout=ff_dropout,
            num_null_kv=num_null_kv,
            qk_norm=qk_norm,
        )
        self.to_logits = nn.Linear(dim, 1)

    def scores(
        self,
        x: Tensor,
        text_embeds: Tensor | None = None,
        text_mask: Tensor | None = None,
        *,
        cond_drop_prob: float = 0.0,
        video_patch_shape: Sequence[int] | None = None,
    ) -> Tensor:
        """Logits `(b, n)` of validated inputs (no device synchronisation)."""
        embeds = self.embed(
            x, text_embeds, text_mask, cond_drop_prob=cond_drop_prob, video_patch_shape=video_patch_shape
        )
        return rearrange(self.to_logits(embeds), "b n 1 -> b n")


class SelfCritic(CriticScoring, nn.Module):
    """A critic head on MaskGit's own final embeddings (the "self-critic" option): no second transformer.

    Build it through `Phenaki(..., self_critic=True)`, which trains it jointly with MaskGit (its loss also flows
    into the shared trunk); `CriticTrainer` can train it too.
    """

    def __init__(self, maskgit: MaskGit):
        super().__init__()
        if not isinstance(maskgit, MaskGit):
            raise TypeError(f"maskgit: expected a MaskGit, got {type(maskgit).__name__}")
        self.maskgit = maskgit
        self.to_logits = nn.Linear(maskgit.dim, 1)
        self.unconditional = maskgit.unconditional
        self.num_tokens = maskgit.num_tokens
        self.max_seq_len = maskgit.max_seq_len

    def check_inputs(self, *args, **kwargs) -> tuple[Tensor | None, Tensor | None]:
        return self.maskgit.check_inputs(*args, **kwargs)

    def scores(
        self,
        x: Tensor,
        text_embeds: Tensor | None = None,
        text_mask: Tensor | None = None,
        *,
        cond_drop_prob: float = 0.0,
        video_patch_shape: Sequence[int] | None = None,
    ) -> Tensor:
        embeds = self.maskgit.embed(
            x, text_embeds, text_mask, cond_drop_prob=cond_drop_prob, video_patch_shape=video_patch_shape
        )
        return rearrange(self.to_logits(embeds), "b n 1 -> b n")


# training a critic


def critic_loss(
    critic: TokenCritic | SelfCritic,
    maskgit_logits: Tensor,
    ids: Tensor,
    mask: Tensor,
    *,
    text_embeds: Tensor | None = None,
    text_mask: Tensor | None = None,
    cond_drop_prob: float = 0.0,
    video_patch_shape: Sequence[int] | None = None,
    temperature: float = 1.0,
) -> Tensor:
    """Token-Critic objective: fill the masked positions with MaskGit samples and classify each token as generated
    (a masked position) or real, with binary cross-entropy on the critic's logits."""
    with torch.no_grad():
        sampled = gumbel_sample(maskgit_logits.detach(), temperature=temperature)
        critic_input = torch.where(mask, sampled, ids)
    scores = critic.scores(
        critic_input, text_embeds, text_mask, cond_drop_prob=cond_drop_prob, video_patch_shape=video_patch_shape
    )
    return F.binary_cross_entropy_with_logits(scores.float(), mask.float())


class CriticTrainer(nn.Module):
    """Trains a `TokenCritic` on the samples of a frozen `MaskGit` (README: `loss = trainer(video_codes)`).

    Each call masks a cosine-schedule fraction of every sequence, lets MaskGit fill the masked positions (no
    gradients) and returns the critic's binary cross-entropy at telling generated tokens from real ones.
    """

    maskgit: MaskGit  # kept in __dict__, not registered as a submodule (see __init__)

    def __init__(
        self,
        maskgit: MaskGit,
        critic: TokenCritic | SelfCritic,
        *,
        temperature: float = 1.0,
        cond_drop_prob: float = 0.25,
    ):
        super().__init__()
        if not isinstance(maskgit, MaskGit):
            raise TypeError(f"maskgit: expected a MaskGit, got {type(maskgit).__name__}")
        if not isinstance(critic, (TokenCritic, SelfCritic)):
            raise TypeError(f"critic: expected a TokenCritic or SelfCritic, got {type(critic).__name__}")
        if critic.num_tokens != maskgit.num_tokens:
            raise ValueError(f"critic: num_tokens={critic.num_tokens} differs from maskgit's {maskgit.num_tokens}")
        check_temperature("temperature", temperature)
        check_in_range("cond_drop_prob", cond_drop_prob, 0.0, 1.0)
        # MaskGit is only a frozen sample generator here: kept out of this module's parameters (and optimizer)
        self.__dict__["maskgit"] = maskgit
        self.critic = critic
        self.temperature = temperature
        self.cond_drop_prob = cond_drop_prob

    def forward(
        self,
        video_codes: Tensor,
        text_embeds: Tensor | None = None,
        text_mask: Tensor | None = None,
        *,
        video_patch_shape: Sequence[int] | None = None,
    ) -> Tensor:
        maskgit = self.maskgit
        text_embeds, _ = maskgit.check_inputs(video_codes, text_embeds, text_mask, video_patch_shape)
        if exists(text_embeds) and self.critic.unconditional:
            text_embeds, text_mask = None, None
        batch, seq_len = video_codes.shape
        device = video_codes.device
        if int(video_codes.max()) >= maskgit.num_tokens:
            raise ValueError(f"video_codes: expected ids in [0, {maskgit.num_tokens - 1}], the mask id is not a code")

        mask_ratio = cosine_schedule(torch.rand(batch, device=device))
        mask = mask_by_ratio((batch, seq_len), mask_ratio, device=device)
        masked_input = video_codes.masked_fill(mask, maskgit.mask_id)
        with torch.no_grad():
            maskgit_logits, _ = maskgit.logits(
                masked_input, text_embeds, text_mask, video_patch_shape=video_patch_shape
            )
        return critic_loss(
            self.critic,
            maskgit_logits,
            video_codes,
            mask,
            text_embeds=text_embeds,
            text_mask=text_mask,
            cond_drop_prob=self.cond_drop_prob if self.training else 0.0,
            video_patch_shape=video_patch_shape,
            temperature=self.temperature,
        )
