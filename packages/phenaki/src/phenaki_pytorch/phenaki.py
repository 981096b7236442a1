"""Phenaki: text-to-video with a frozen C-ViViT tokenizer and a text-conditioned MaskGIT (+ optional Token-Critic).

Training (`phenaki(videos, texts)`): tokenize the videos, mask a cosine-schedule fraction of the tokens and train
MaskGIT to predict them from the rest and the text; the text is dropped per sample with `cond_drop_prob`, which
trains the unconditional branch that classifier-free guidance needs.

Sampling (`phenaki.sample(text=..., num_frames=...)`): start from all tokens masked (or a primed prefix from the
tokens of earlier frames), then for `steps` steps: predict, fill, and re-mask the least trusted tokens
(lowest confidence, or highest Token-Critic score with annealed noise) following the cosine schedule. The token
grid is decoded by C-ViViT. A continuation (`prime_frames=`) returns only the new frames.

Long videos: `make_video` chains scenes, each primed with the tail of the video so far; `StorySampler` takes
`(prompt, seconds)` scenes and splits scenes longer than the model's context into primed chunks.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any, NamedTuple, Protocol, cast

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import Tensor, nn
from tqdm.auto import tqdm

from phenaki_pytorch.cvivit import CViViT
from phenaki_pytorch.maskgit import (
    MaskGit,
    SelfCritic,
    TokenCritic,
    cosine_schedule,
    critic_loss,
    mask_by_ratio,
    num_masked_at_step,
)
from synthesis_core.checkpoint import PretrainedMixin
from synthesis_core.checks import (
    check_choice,
    check_device,
    check_embeddings,
    check_guidance_scale,
    check_in_range,
    check_not_empty,
    check_positive_int,
    check_steps,
    check_temperature,
    check_tensor,
)
from synthesis_core.protocol import gumbel_noise, reject_argument, resolve_text, sample_tokens
from synthesis_core.text import DEFAULT_T5_NAME, TextEncoder
from synthesis_core.utils import default, eval_decorator, exists

logger = logging.getLogger(__name__)

__all__ = ["Phenaki", "PhenakiLosses", "make_video", "StorySampler", "Story"]

CRITIC_NOISE_SCHEDULES = ("decay", "increase", "fixed")


class _TextEncoderLike(Protocol):
    """What Phenaki uses of a text encoder (`TextEncoder`, `SimpleTextEncoder`)."""

    @property
    def dim(self) -> int: ...

    def encode(self, texts: Sequence[str], device: torch.device) -> tuple[Tensor, Tensor]: ...


class PhenakiLosses(NamedTuple):
    maskgit: Tensor
    critic: Tensor


class Phenaki(PretrainedMixin, nn.Module):
    """Text-to-video: `CViViT` tokenizer (frozen) + `MaskGit` (+ `TokenCritic` or a self-critic).

    ```
    phenaki = Phenaki(cvivit=cvivit, maskgit=maskgit)          # T5 text encoder by name (loaded lazily)
    loss = phenaki(videos, texts)                               # or texts=..., text_embeds=..., video_codebook_ids=...
    video = phenaki.sample(text='a squirrel examines an acorn', num_frames=17, cond_scale=5.)
    more = phenaki.sample(text='a cat watches', prime_frames=video[:, :, -3:], num_frames=14)  # new frames only
    ```
    The text encoder (`synthesis_core.text.TextEncoder`, `text_encoder_name` a hub name or a local folder) is
    owned by this object but not a submodule: its weights are never in the state dict, and nothing is loaded
    before the first text is encoded. With precomputed `text_embeds` only, pass `text_encoder_name=None` and
    `text_embed_dim`. A small trainable encoder (`text_encoder=SimpleTextEncoder(...)`, e.g. for offline demos)
    is a submodule instead, trained and saved with MaskGIT.
    """

    def __init__(
        self,
        cvivit: CViViT,
        maskgit: MaskGit,
        critic: TokenCritic | None = None,
        *,
        self_critic: bool = False,
        steps: int = 18,
        text_encoder_name: str | None = DEFAULT_T5_NAME,
        text_encoder: nn.Module | None = None,
        text_embed_dim: int | None = None,
        text_max_length: int = 256,
        cond_drop_prob: float = 0.25,
        self_cond_prob: float = 0.9,
        critic_noise_anneal_schedule: str = "decay",
        critic_loss_weight: float | None = None,
        critic_train_sample_temperature: float = 1.0,
        sample_temperature: float = 0.9,
        t5_name: str | None = None,
        max_text_len: int | None = None,
        self_token_critic: bool | None = None,
    ):
        super().__init__()
        # phenaki-pytorch 0.5 spellings of text_encoder_name, text_max_length and self_critic
        if exists(t5_name):
            if text_encoder_name not in (DEFAULT_T5_NAME, t5_name):
                raise ValueError(
                    f"t5_name: an alias of text_encoder_name; pass one of them, not both (got "
                    f"text_encoder_name={text_encoder_name!r}, t5_name={t5_name!r})"
                )
            text_encoder_name = t5_name
        if exists(max_text_len):
            if text_max_length not in (256, max_text_len):
                raise ValueError(
                    f"max_text_len: an alias of text_max_length; pass one of them, not both (got "
                    f"text_max_length={text_max_length}, max_text_len={max_text_len})"
                )
            text_max_length = max_text_len
        if exists(self_token_critic):
            if self_critic and not self_token_critic:
                raise ValueError("self_token_critic=False contradicts self_critic=True; pass only self_critic=")
            self_critic = bool(self_token_critic)
        check_temperature("sample_temperature", sample_temperature)
        if not isinstance(cvivit, CViViT):
            raise TypeError(f"cvivit: expected a CViViT, got {type(cvivit).__name__}")
        if not isinstance(maskgit, MaskGit):
            raise TypeError(f"maskgit: expected a MaskGit, got {type(maskgit).__name__}")
        if exists(critic) and self_critic:
            raise ValueError("critic: pass either a TokenCritic or self_critic=True, not both")
        if exists(critic) and not isinstance(critic, TokenCritic):
            raise TypeError(f"critic: expected a TokenCritic (or self_critic=True), got {type(critic).__name__}")
        if maskgit.num_tokens != cvivit.codebook_size:
            raise ValueError(
                f"maskgit: num_tokens={maskgit.num_tokens} must equal the tokenizer's codebook size "
                f"{cvivit.codebook_size}"
            )
        if exists(critic) and critic.num_tokens != maskgit.num_tokens:
            raise ValueError(f"critic: num_tokens={critic.num_tokens} must equal maskgit's {maskgit.num_tokens}")
        check_positive_int("steps", steps)
        check_in_range("cond_drop_prob", cond_drop_prob, 0.0, 1.0)
        check_in_range("self_cond_prob", self_cond_prob, 0.0, 1.0)
        check_choice("critic_noise_anneal_schedule", critic_noise_anneal_schedule, CRITIC_NOISE_SCHEDULES)

        # the tokenizer is trained beforehand (CViViTTrainer) and frozen here
        self.cvivit = cvivit.requires_grad_(False).eval()
        self.maskgit = maskgit
        self.critic: TokenCritic | SelfCritic | None = SelfCritic(maskgit) if self_critic else critic

        self.steps = steps
        self.cond_drop_prob = cond_drop_prob
        self.self_cond_prob = self_cond_prob
        self.critic_noise_anneal_schedule = critic_noise_anneal_schedule
        self.critic_loss_weight = default(critic_loss_weight, 1.0 if self_critic else 0.0)
        self.critic_train_sample_temperature = critic_train_sample_temperature
        self.sample_temperature = sample_temperature  # sample()'s default starting_temperature

        # text conditioning: the encoder object is owned, not registered (plain attribute; no weights loaded yet)
        self.text_encoder: _TextEncoderLike | None = None
        if exists(text_encoder) and not (hasattr(text_encoder, "encode") and hasattr(text_encoder, "dim")):
            raise TypeError(
                "text_encoder: expected an encoder with .encode(texts, device) and .dim, e.g. a "
                "synthesis_core.text.SimpleTextEncoder"
            )
        if not maskgit.unconditional:
            if exists(text_encoder):
                # a trainable encoder (e.g. SimpleTextEncoder) is a submodule: trained and saved with the model
                owned = cast(_TextEncoderLike, text_encoder)  # cast: has .encode and .dim (checked above)
                self.text_encoder = owned
                text_embed_dim = default(text_embed_dim, owned.dim)
            elif exists(text_encoder_name):
                named = TextEncoder(text_encoder_name, max_length=text_max_length)
                self.text_encoder = named
                text_embed_dim = default(text_embed_dim, named.dim)
            text_embed_dim = text_embed_dim if exists(text_embed_dim) else maskgit.dim_context
            if text_embed_dim != maskgit.dim_context:
                raise ValueError(
                    f"text_embed_dim: the text embeddings are {text_embed_dim} wide "
                    f"({text_encoder_name or 'given'}) but maskgit was built with "
                    f"dim_context={maskgit.dim_context}"
                )
        self.text_embed_dim = text_embed_dim

    def train(self, mode: bool = True) -> Phenaki:
        super().train(mode)
        self.cvivit.eval()  # frozen: no dropout, no codebook updates
        return self

    @property
    def device(self) -> torch.device:
        return self.maskgit.device

    # -- inputs ---------------------------------------------------------------------------------------------------

    def encode_texts(self, texts: Sequence[str]) -> tuple[Tensor, Tensor]:
        """Texts -> `(embeds (b, n, dim) float32, mask (b, n) bool)` with the owned text encoder."""
        if not exists(self.text_encoder):
            raise ValueError(
                "texts: this Phenaki has no text encoder (text_encoder_name=None or an unconditional "
                "maskgit); pass text_embeds= instead"
            )
        return self.text_encoder.encode(list(texts), self.device)

    def _text_condition(self, batch: int | None, texts, text_embeds, text_mask) -> tuple[Tensor | None, Tensor | None]:
        if isinstance(texts, str):
            texts = [texts]
        if exists(texts) and exists(text_embeds):
            raise ValueError("texts: pass texts or text_embeds, not both")
        if exists(texts):
            if not isinstance(texts, (list, tuple)) or not all(isinstance(t, str) for t in texts):
                raise TypeError("texts: expected a list of strings")
            if self.maskgit.unconditional:
                raise ValueError("texts: the maskgit is unconditional (unconditional=True), it takes no text")
            if exists(batch) and len(texts) != batch:
                raise ValueError(f"batch sizes must match, got videos={batch}, texts={len(texts)}")
            text_embeds, text_mask = self.encode_texts(texts)
        if exists(text_embeds):
            if self.maskgit.unconditional:
                raise ValueError("text_embeds: the maskgit is unconditional (unconditional=True), it takes no text")
            check_tensor(
                "text_embeds",
                text_embeds,
                ndim=3,
                shape=(None, None, self.maskgit.dim_context),
                names=("batch", "text_seq", "dim_context"),
                dtype_floating=True,
            )
            if exists(text_mask):
                check_tensor("text_mask", text_mask, shape=tuple(text_embeds.shape[:2]), names=("batch", "text_seq"))
            if exists(batch) and text_embeds.shape[0] != batch:
                what = "texts" if exists(texts) else "text_embeds"
                raise ValueError(f"batch sizes must match, got videos={batch}, {what}={text_embeds.shape[0]}")
            text_embeds = check_embeddings("text_embeds", text_embeds, device=self.device, dtype=self.maskgit.dtype)
            text_mask = text_mask.to(self.device).bool() if exists(text_mask) else None
        return text_embeds, text_mask

    @torch.no_grad()
    def tokenize(self, videos: Tensor) -> Tensor:
        """Videos `(b, c, 1 + k * tp, h, w)` in [0, 1] -> codebook ids `(b, 1 + k, h', w')` (frozen tokenizer)."""
        return self.cvivit(videos, return_only_codebook_ids=True)

    def _video_ids(self, videos: Tensor | None, video_codebook_ids: Tensor | None) -> Tensor:
        """The `(b, t, h, w)` token grid from videos or from given ids (validated)."""
        if exists(videos) and not exists(video_codebook_ids):
            # validate (pixels, frames, sizes, sequence length) before running the tokenizer
            videos = self.cvivit._check_video(videos, "videos")
            height, width = self.cvivit.patch_grid((videos.shape[-2], videos.shape[-1]))
            self._check_seq_len(self.cvivit.num_token_frames(videos.shape[2]) * height * width, "videos")
            return self.tokenize(videos)
        if exists(videos) or not exists(video_codebook_ids):
            raise ValueError("videos: pass exactly one of videos or video_codebook_ids")
        ids = video_codebook_ids
        check_tensor("video_codebook_ids", ids, ndim=(2, 4))
        if ids.dtype.is_floating_point or ids.dtype == torch.bool:
            raise TypeError(f"video_codebook_ids: expected integer ids, got dtype {ids.dtype}")
        check_device("video_codebook_ids", ids, self.device)
        check_not_empty("video_codebook_ids", ids)
        if ids.ndim == 2:
            height, width = self.cvivit.patch_grid()
            if ids.shape[1] % (height * width) != 0:
                raise ValueError(
                    f"video_codebook_ids: {ids.shape[1]} tokens are not whole frames of {height} x "
                    f"{width} tokens; pass the (batch, frames, height, width) grid instead"
                )
            ids = rearrange(ids, "b (t h w) -> b t h w", h=height, w=width)
        check_tensor("video_codebook_ids", ids, value_range=(0, self.maskgit.num_tokens - 1))
        return ids.to(self.device).long()

    def _check_seq_len(self, num_tokens: int, what: str) -> None:
        if num_tokens > self.maskgit.max_seq_len:
            raise ValueError(
                f"{what}: {num_tokens} video tokens exceed maskgit.max_seq_len={self.maskgit.max_seq_len};"
                " use fewer frames, a smaller image, or a MaskGit with a larger max_seq_len"
            )

    # -- training -------------------------------------------------------------------------------------------------

    def forward(
        self,
        videos: Tensor | None = None,
        texts: Sequence[str] | None = None,
        *,
        text_embeds: Tensor | None = None,
        text_mask: Tensor | None = None,
        video_codebook_ids: Tensor | None = None,
        cond_drop_prob: float | None = None,
        return_loss_breakdown: bool = False,
        text: str | Sequence[str] | None = None,
    ) -> Tensor | tuple[Tensor, PhenakiLosses]:
        """Masked-token loss on `videos (b, c, 1 + k * tp, h, w)` in [0, 1] (or their `video_codebook_ids`,
        `(b, t, h', w')` or flat `(b, n)`), conditioned on `texts` (alias `text`) or `text_embeds (b, m, dim)`
        (+ `text_mask`). The text is dropped per sample with `cond_drop_prob` (default: the model's) while
        training."""
        text_input = resolve_text(texts, text_embeds, text_mask, aliases={"text": ("texts", text)})
        texts, text_embeds, text_mask = text_input.texts, text_input.text_embeds, text_input.text_mask
        ids = self._video_ids(videos, video_codebook_ids)
        batch, frames, height, width = ids.shape
        text_embeds, text_mask = self._text_condition(batch, texts, text_embeds, text_mask)
        seq_len = frames * height * width
        self._check_seq_len(seq_len, "videos" if exists(videos) else "video_codebook_ids")
        cond_drop_prob = default(cond_drop_prob, self.cond_drop_prob) if self.training else 0.0
        check_in_range("cond_drop_prob", cond_drop_prob, 0.0, 1.0)
        patch_shape = (frames, height, width)
        ids = rearrange(ids, "b t h w -> b (t h w)")
        device = ids.device

        mask = mask_by_ratio((batch, seq_len), cosine_schedule(torch.rand(batch, device=device)), device=device)
        masked_ids = ids.masked_fill(mask, self.maskgit.mask_id)

        # the same condition dropout for the self-conditioning pass and the trained pass
        context, context_mask = self.maskgit.context_and_mask(batch, text_embeds, text_mask, cond_drop_prob, device)
        maskgit_kwargs: dict[str, Any] = dict(video_patch_shape=patch_shape)
        self_cond_embeds = None
        if self.maskgit.self_cond and self.training and torch.rand(()).item() < self.self_cond_prob:
            with torch.no_grad():
                _, self_cond_embeds = self.maskgit.logits(masked_ids, context, context_mask, **maskgit_kwargs)
        logits, _ = self.maskgit.logits(
            masked_ids, context, context_mask, self_cond_embeds=self_cond_embeds, **maskgit_kwargs
        )

        # cross-entropy on the masked positions only (ignore_index keeps shapes static: no boolean indexing)
        # (autocast runs cross_entropy in float32 by itself; flat rows keep the logits contiguous)
        labels = ids.masked_fill(~mask, -100)
        maskgit_loss = F.cross_entropy(
            rearrange(logits, "b n c -> (b n) c"), rearrange(labels, "b n -> (b n)"), ignore_index=-100
        )

        loss = maskgit_loss
        critic_loss_value = maskgit_loss.new_zeros(())
        if self.critic is not None and self.critic_loss_weight > 0:  # (`exists` would widen the union)
            critic_loss_value = critic_loss(
                self.critic,
                logits,
                ids,
                mask,
                text_embeds=context,
                text_mask=context_mask,
                video_patch_shape=patch_shape,
                temperature=self.critic_train_sample_temperature,
            )
            loss = loss + self.critic_loss_weight * critic_loss_value

        if return_loss_breakdown:
            return loss, PhenakiLosses(maskgit_loss.detach(), critic_loss_value.detach())
        return loss

    # -- sampling -------------------------------------------------------------------------------------------------

    def _critic_noise_scale(self, step: int, steps: int) -> float:
        progress = step / steps
        if self.critic_noise_anneal_schedule == "decay":
            return 1.0 - progress
        if self.critic_noise_anneal_schedule == "increase":
            return progress
        return 1.0

    @torch.no_grad()
    @eval_decorator
    def sample(
        self,
        *,
        num_frames: int | None = None,
        text: str | Sequence[str] | None = None,
        texts: Sequence[str] | str | None = None,
        text_embeds: Tensor | None = None,
        text_mask: Tensor | None = None,
        prime_frames: Tensor | None = None,
        cond_scale: float | None = None,
        starting_temperature: float | None = None,
        noise_K: float = 1.0,  # noqa: N803 (the paper's name)
        steps: int | None = None,
        batch_size: int | None = None,
        image_size: int | tuple[int, int] | None = None,
        return_codebook_ids: bool = False,
        sampler: str | None = None,
        generator: torch.Generator | None = None,
        progress: bool = True,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Generate `num_frames` frames `(b, c, num_frames, h, w)` in [0, 1].

        Without `prime_frames`, `num_frames` is `1 + k * temporal_patch_size` (default: the longest video whose
        tokens fit `maskgit.max_seq_len`). With `prime_frames` `(b, c, 1 + j * temporal_patch_size, h, w)` (e.g.
        the tail of an earlier sample), their tokens are kept fixed, `num_frames` (a multiple of
        `temporal_patch_size`) new frames are generated after them and only the new frames are returned. `text`
        (the seed's name) or `texts` (one prompt, repeated to the batch, or one per sample) or `text_embeds`
        condition the video; `batch_size` defaults to the condition's (else 1); `cond_scale` (default 3) is the
        classifier-free guidance scale; `steps` the unmasking steps (default: the constructor's); `noise_K` the
        critic noise (annealed by `critic_noise_anneal_schedule`); `generator` draws every random choice (same
        seed, same video). There is no diffusion `sampler`. `return_codebook_ids` also returns the
        `(b, t, h', w')` token grid (primed tokens included).
        """
        reject_argument(
            "sampler",
            sampler,
            "Phenaki generates by MaskGIT's iterative unmasking, it has no "
            "diffusion sampler (steps=... sets the number of unmasking steps)",
        )
        text_input = resolve_text(texts, text_embeds, text_mask, aliases={"text": ("texts", text)})
        cond_scale = default(cond_scale, 3.0)
        steps = default(steps, self.steps)
        starting_temperature = default(starting_temperature, self.sample_temperature)
        check_steps("steps", steps)
        if exists(num_frames):
            check_positive_int("num_frames", num_frames)
        check_guidance_scale("cond_scale", cond_scale)
        check_temperature("starting_temperature", starting_temperature)
        check_in_range("noise_K", noise_K, 0.0, None)
        cvivit, maskgit = self.cvivit, self.maskgit
        device = self.device

        # the batch size: from the texts, the embeddings, the prime frames or batch_size; a single one is repeated
        prime_ids = None
        if exists(prime_frames):
            prime_frames = cvivit._check_video(prime_frames, "prime_frames")
            image_size = (prime_frames.shape[-2], prime_frames.shape[-1])
            prime_ids = self.tokenize(prime_frames)
        if exists(batch_size):
            check_positive_int("batch_size", batch_size)
        sizes = {
            "texts" if exists(text_input.texts) else "text_embeds": text_input.batch_size,
            "prime_frames": prime_ids.shape[0] if exists(prime_ids) else None,
            "batch_size": batch_size,
        }
        given = {name: size for name, size in sizes.items() if exists(size) and (size != 1 or name == "batch_size")}
        if len(set(given.values())) > 1:
            raise ValueError(f"batch sizes must match, got {', '.join(f'{k}={v}' for k, v in given.items())}")
        batch = next(iter(given.values()), 1)
        text_input = text_input.repeat_to(batch)
        text_embeds, text_mask = self._text_condition(
            batch, text_input.texts, text_input.text_embeds, text_input.text_mask
        )
        if exists(prime_ids) and prime_ids.shape[0] != batch:
            prime_ids = repeat(prime_ids, "1 t h w -> b t h w", b=batch)

        # the token grid: primed token frames + new ones
        height, width = cvivit.patch_grid(image_size)
        num_prime_token_frames = prime_ids.shape[1] if exists(prime_ids) else 0
        if num_frames is None:
            # the longest video whose tokens fit the maskgit's context
            new_token_frames = self.maskgit.max_seq_len // (height * width) - num_prime_token_frames
            if new_token_frames < 1:
                raise ValueError("num_frames: no new frame fits maskgit.max_seq_len after the prime frames")
            num_frames = (
                new_token_frames * cvivit.temporal_patch_size
                if exists(prime_ids)
                else cvivit.num_frames_from_token_frames(new_token_frames)
            )
        new_token_frames = cvivit.num_token_frames(num_frames, include_first_frame=not exists(prime_ids))
        if new_token_frames == 0:
            raise ValueError(
                f"num_frames: expected at least temporal_patch_size ({cvivit.temporal_patch_size}) new "
                f"frames after the prime frames, got {num_frames}"
            )
        frames = num_prime_token_frames + new_token_frames
        tokens_per_frame = height * width
        seq_len = frames * tokens_per_frame
        self._check_seq_len(seq_len, "num_frames")
        num_prime = num_prime_token_frames * tokens_per_frame
        num_generated = seq_len - num_prime
        patch_shape = (frames, height, width)

        ids = torch.full((batch, seq_len), maskgit.mask_id, dtype=torch.long, device=device)
        if exists(prime_ids):
            ids[:, :num_prime] = rearrange(prime_ids, "b t h w -> b (t h w)")
        is_prime = rearrange(torch.arange(seq_len, device=device) < num_prime, "n -> 1 n")

        guidance: dict[str, Any] = dict(
            cond_scale=cond_scale, text_embeds=text_embeds, text_mask=text_mask, video_patch_shape=patch_shape
        )
        self_cond_embeds = None
        for step in tqdm(range(steps), desc="phenaki sampling", disable=not progress, leave=False):
            progress_fraction = step / steps
            temperature = starting_temperature * (1.0 - progress_fraction)
            logits, embeds = maskgit.guided_logits(ids, self_cond_embeds=self_cond_embeds, **guidance)
            if maskgit.self_cond:
                self_cond_embeds = embeds

            is_masked = ids == maskgit.mask_id
            sampled = sample_tokens(logits, temperature, generator=generator)
            ids = torch.where(is_masked, sampled, ids)

            num_to_mask = num_masked_at_step(step, steps, num_generated)
            if num_to_mask == 0:
                continue  # only the last step (or a tiny sequence) unmasks everything

            if exists(self.critic):
                # Token-Critic: re-mask the tokens the critic believes generated; any generated token may go back
                scores = self.critic.guided_scores(ids, **guidance).float().sigmoid()
                uniform = torch.rand(
                    scores.shape, generator=generator, device=generator.device if exists(generator) else scores.device
                )
                scores = scores + noise_K * self._critic_noise_scale(step, steps) * uniform.to(scores.device)
            else:
                # MaskGIT: re-mask the least confident of the tokens sampled at this step; earlier ones stay
                log_probs = logits.float().log_softmax(dim=-1)
                confidence = log_probs.gather(-1, rearrange(sampled, "b n -> b n 1")).squeeze(-1)
                confidence = confidence + temperature * gumbel_noise(confidence, generator)
                scores = torch.where(is_masked, -confidence, -math.inf)
            scores = scores.masked_fill(is_prime, -math.inf)

            remask_indices = scores.topk(num_to_mask, dim=-1).indices
            ids = ids.scatter(1, remask_indices, maskgit.mask_id)

        grid = rearrange(ids, "b (t h w) -> b t h w", t=frames, h=height)
        video = cvivit.decode_from_codebook_indices(grid)
        if exists(prime_ids):
            video = video[:, :, cvivit.num_frames_from_token_frames(num_prime_token_frames) :]
        return (video, grid) if return_codebook_ids else video

    def sample_images(self, **sample_kwargs) -> Tensor | tuple[Tensor, Tensor]:
        """Images `(b, c, h, w)` in [0, 1]: one-frame videos (the tokenizer's first frame is tokenized alone, so
        it is an image tokenizer too) sampled with `sample(**sample_kwargs)` (texts, cond_scale, batch_size, ...)."""
        if "num_frames" in sample_kwargs or "prime_frames" in sample_kwargs:
            raise ValueError("sample_images: samples single images; num_frames and prime_frames are for sample()")
        result = self.sample(num_frames=1, **sample_kwargs)
        if isinstance(result, tuple):  # return_codebook_ids=True
            images, grid = result
            return images[:, :, 0], grid
        return result[:, :, 0]


# long videos


def make_video(
    phenaki: Phenaki,
    texts: Sequence[str],
    num_frames: int | Sequence[int],
    prime_lengths: int | Sequence[int],
    **sample_kwargs,
) -> tuple[Tensor, list[Tensor]]:
    """Chain scenes into one video: scene 0 from `texts[0]` with `num_frames[0]` frames, scene i > 0 primed with
    the last `prime_lengths[i - 1]` frames of the video so far. Returns `(video, scenes)` where `scenes` holds each
    scene's new frames. `sample_kwargs` go to `Phenaki.sample` (cond_scale, steps, batch_size, ...)."""
    if isinstance(texts, str) or not isinstance(texts, (list, tuple)) or not texts:
        raise TypeError("texts: expected a non-empty list of prompts")
    num_scenes = len(texts)
    num_frames = [num_frames] * num_scenes if isinstance(num_frames, int) else list(num_frames)
    if len(num_frames) != num_scenes:
        raise ValueError(f"num_frames: expected one frame count per text ({num_scenes}), got {len(num_frames)}")
    prime_lengths = [prime_lengths] * (num_scenes - 1) if isinstance(prime_lengths, int) else list(prime_lengths)
    if len(prime_lengths) not in (num_scenes - 1, num_scenes):
        raise ValueError(
            f"prime_lengths: expected one prime length per scene after the first ({num_scenes - 1}), "
            f"got {len(prime_lengths)}"
        )
    if len(prime_lengths) == num_scenes:
        prime_lengths = prime_lengths[1:]  # the first scene has nothing to be primed with

    scenes: list[Tensor] = []
    video: Tensor | None = None
    for index, (prompt, frames) in enumerate(zip(texts, num_frames)):
        text = _scene_text(phenaki, prompt)
        if video is None:
            scene = _sample_video(phenaki, text=text, num_frames=frames, **sample_kwargs)
        else:
            prime_length = prime_lengths[index - 1]
            if prime_length > video.shape[2]:
                raise ValueError(
                    f"prime_lengths[{index - 1}]: {prime_length} frames requested but the video has "
                    f"only {video.shape[2]}"
                )
            scene = _sample_video(
                phenaki, text=text, prime_frames=video[:, :, -prime_length:], num_frames=frames, **sample_kwargs
            )
        scenes.append(scene)
        video = scene if video is None else torch.cat((video, scene), dim=2)
    if video is None:  # not reached (texts is not empty); narrows the Optional
        raise TypeError("texts: expected a non-empty list of prompts")
    return video, scenes


def _sample_video(phenaki: Phenaki, **sample_kwargs: Any) -> Tensor:
    """`phenaki.sample(**sample_kwargs)` for the scene chainers, which need the video alone."""
    video = phenaki.sample(**sample_kwargs)
    if isinstance(video, tuple):
        raise ValueError(
            "return_codebook_ids: not supported when chaining scenes (make_video, StorySampler); "
            "tokenize the returned video with phenaki.tokenize(video) instead"
        )
    return video


def _scene_text(phenaki: Phenaki, prompt: str) -> str | None:
    # an unconditional model samples every scene without text: the prompts then only name the scenes
    return None if phenaki.maskgit.unconditional else prompt


class Story(NamedTuple):
    """A stitched video `(b, c, frames, h, w)` and, per scene, its `(start, end)` frame range (end exclusive)."""

    video: Tensor
    boundaries: list[tuple[int, int]]


class StorySampler:
    """Samples one video from a story: a list of `(prompt, seconds)` scenes at `fps` frames per second.

    ```
    sampler = StorySampler(phenaki, fps=8)
    video, boundaries = sampler([('a whale breaching', 2.), ('fireworks over the sea', 1.5)])
    ```
    Each scene is conditioned on its prompt and primed with the last `prime_length` frames of the video so far
    (default `1 + temporal_patch_size`, or 1 when MaskGit's context is that short); its length is rounded to what the tokenizer can make (the first scene
    `1 + k * temporal_patch_size` frames, later ones multiples of `temporal_patch_size`). A scene longer than
    MaskGit's context is sampled in several primed chunks with the same prompt.
    """

    def __init__(
        self,
        phenaki: Phenaki,
        *,
        fps: float = 8.0,
        prime_length: int | None = None,
        image_size: int | tuple[int, int] | None = None,
        **sample_kwargs,
    ):
        if not isinstance(phenaki, Phenaki):
            raise TypeError(f"phenaki: expected a Phenaki, got {type(phenaki).__name__}")
        check_in_range("fps", fps, 1e-6, None)
        self.phenaki = phenaki
        self.fps = fps
        cvivit = phenaki.cvivit
        self.temporal_patch_size = tp = cvivit.temporal_patch_size
        self.image_size = image_size
        height, width = cvivit.patch_grid(image_size)
        self.max_token_frames = phenaki.maskgit.max_seq_len // (height * width)
        # default: the last 1 + tp frames (two token frames), or the last frame alone when the context is short
        self.prime_length = default(prime_length, 1 + tp if self.max_token_frames >= 3 else 1)
        cvivit.num_token_frames(self.prime_length)  # validates 1 + k * tp
        prime_token_frames = cvivit.num_token_frames(self.prime_length)
        if self.max_token_frames < prime_token_frames + 1:
            raise ValueError(
                f"prime_length: {self.prime_length} prime frames leave no room for new frames in "
                f"maskgit.max_seq_len={phenaki.maskgit.max_seq_len} tokens"
            )
        self.sample_kwargs = sample_kwargs

    def scene_frames(self, seconds: float, first: bool) -> int:
        """Frames for a scene of `seconds`, rounded to a length the tokenizer makes (at least one token frame)."""
        check_in_range("seconds", seconds, 0.0, None)
        tp = self.temporal_patch_size
        wanted = seconds * self.fps
        if first:
            return 1 + tp * max(0, round((wanted - 1) / tp))
        return tp * max(1, round(wanted / tp))

    def plan(self, scenes: Sequence[tuple[str, float]]) -> list[tuple[str, int]]:
        """The frame count of every scene."""
        if isinstance(scenes, (str, bytes)) or not scenes:
            raise TypeError("scenes: expected a non-empty list of (prompt, seconds) pairs")
        planned = []
        for index, scene in enumerate(scenes):
            if not (isinstance(scene, (tuple, list)) and len(scene) == 2 and isinstance(scene[0], str)):
                raise TypeError(f"scenes[{index}]: expected a (prompt, seconds) pair, got {scene!r}")
            planned.append((scene[0], self.scene_frames(float(scene[1]), first=index == 0)))
        return planned

    def __call__(self, scenes: Sequence[tuple[str, float]]) -> Story:
        phenaki, tp = self.phenaki, self.temporal_patch_size
        prime_token_frames = phenaki.cvivit.num_token_frames(self.prime_length)
        kwargs = dict(self.sample_kwargs, image_size=self.image_size)
        max_first_frames = 1 + (self.max_token_frames - 1) * tp
        max_continued_frames = (self.max_token_frames - prime_token_frames) * tp

        video: Tensor | None = None
        boundaries: list[tuple[int, int]] = []
        for prompt, frames in self.plan(scenes):
            text = _scene_text(phenaki, prompt)
            start = 0 if video is None else video.shape[2]
            remaining = frames
            while remaining > 0:
                if video is None:
                    chunk = min(remaining, max_first_frames)
                    new = _sample_video(phenaki, text=text, num_frames=chunk, **kwargs)
                else:
                    prime_length = min(self.prime_length, 1 + (video.shape[2] - 1) // tp * tp)
                    chunk = min(remaining, max_continued_frames)
                    new = _sample_video(
                        phenaki, text=text, prime_frames=video[:, :, -prime_length:], num_frames=chunk, **kwargs
                    )
                video = new if video is None else torch.cat((video, new), dim=2)
                remaining -= chunk
            # cast: plan() gives every scene at least one frame, so the video exists from here on
            boundaries.append((start, cast(Tensor, video).shape[2]))
        return Story(cast(Tensor, video), boundaries)  # cast: plan() refuses an empty story
