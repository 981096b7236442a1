"""Gaussian diffusion around a `Unet3D`: the training loss, sampling (DDPM, DDIM, DPM-Solver++) and interpolation.

A configuration of the core's diffusion wrapper (`synthesis_core.diffusion.DiffusionWrapper`: loss, guidance
closure, thresholding and the published DDPM internals `q_sample` ... `p_losses`); this module only adds the video
model's inputs (its condition, frames) and its sampling entry points. Videos are
`(batch, channels, frames, height, width)` floats in [0, 1] at the API and [-1, 1] inside;
`synthesis_core.checks.check_pixels` reads them by the rule every package shares ([-1, 1] batches with a warning
when clamped, uint8 divided by 255, other float dtypes cast to the model's; NaN / inf, 0-255 floats, another device
or an empty batch refused).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from synthesis_core.checkpoint import PretrainedMixin
from synthesis_core.checks import (
    check_choice,
    check_embeddings,
    check_image_size,
    check_in_range,
    check_pixel_batch,
    check_positive_int,
    check_steps,
)
from synthesis_core.diffusion import (
    BETA_SCHEDULES,
    LOSS_TYPES,
    VP_SAMPLERS,
    DiffusionWrapper,
    DiscreteSchedule,
    sample_vp,
    sampling_times,
)
from synthesis_core.protocol import resolve_alias, resolve_text
from synthesis_core.utils import default, eval_decorator, exists
from video_diffusion_pytorch.unet import Condition

__all__ = ["GaussianDiffusion", "LOSS_TYPES", "INPUT_RANGES"]

logger = logging.getLogger(__name__)

# how `forward` reads its videos: 'auto' takes [0, 1], and a batch with negative values as already in [-1, 1]
INPUT_RANGES = ("auto", "unit", "symmetric")


class GaussianDiffusion(PretrainedMixin, DiffusionWrapper, nn.Module):
    """Denoising diffusion (DDPM) of videos with a space-time U-Net.

    Args:
        model: the `Unet3D` (any module with its `forward` / `forward_with_cond_scale` interface);
            `denoise_fn=` is the published video-diffusion-pytorch 0.7 keyword for it (give one of them).
        image_size: frame size, an int or (height, width).
        num_frames: frames per video (1 trains an image model).
        text_use_bert_cls: captions are pooled by BERT's [CLS] token instead of the token mean.
        channels: video channels.
        timesteps: number of diffusion steps of the discrete schedule.
        loss_type: 'l1', 'l2' or 'huber' between the model output and its target.
        objective: what the model predicts: 'eps' (noise), 'x0' or 'v' (aliases as in the core).
        beta_schedule: 'cosine', 'linear' or 'sigmoid'.
        use_dynamic_thres, dynamic_thres_percentile: Imagen's dynamic thresholding of x0 when sampling
            (otherwise x0 is clamped to [-1, 1]).
        cond_drop_prob: probability of dropping the condition of each training sample (classifier-free guidance
            needs the null branch trained; 0 disables it). Default 0.1. `null_cond_prob` is the seed README's name
            for it (an alias).
        sampler: default sampler, 'ddpm', 'ddim' or 'dpmpp_2m'.
        sample_steps: default number of model calls when sampling (None: `timesteps`, i.e. full DDPM).
        input_range: 'auto' (videos in [0, 1]; a batch with negative values is taken as already in [-1, 1] and
            values outside it are clamped with a warning), 'unit' ([0, 1] only) or 'symmetric' (always [-1, 1]).
            uint8 videos are divided by 255; float16 / bfloat16 / float64 are cast to the model's dtype.
    """

    schedule: DiscreteSchedule  # the wrapper takes either kind; this model is always discrete (see __init__)

    def __init__(
        self,
        model: nn.Module | None = None,
        *,
        image_size: int | Sequence[int],
        num_frames: int,
        text_use_bert_cls: bool = False,
        channels: int = 3,
        timesteps: int = 1000,
        loss_type: str = "l1",
        objective: str = "eps",
        beta_schedule: str = "cosine",
        use_dynamic_thres: bool = False,
        dynamic_thres_percentile: float = 0.9,
        null_cond_prob: float | None = None,
        sampler: str = "ddpm",
        sample_steps: int | None = None,
        input_range: str = "auto",
        cond_drop_prob: float | None = None,
        denoise_fn: nn.Module | None = None,
    ):
        super().__init__()
        cond_drop_prob = resolve_alias("cond_drop_prob", cond_drop_prob, "null_cond_prob", null_cond_prob, 0.1)
        model = resolve_alias("model", model, "denoise_fn", denoise_fn)
        if model is None:
            raise TypeError(
                "model: missing, pass the Unet3D as GaussianDiffusion(unet, ...) or model=unet "
                "(denoise_fn=unet, the published video-diffusion-pytorch keyword, works too)"
            )
        if not isinstance(model, nn.Module):
            raise TypeError(f"model: expected an nn.Module such as Unet3D, got {type(model).__name__}")
        check_positive_int("num_frames", num_frames)
        check_positive_int("channels", channels)
        check_positive_int("timesteps", timesteps)
        check_choice("beta_schedule", beta_schedule, tuple(BETA_SCHEDULES))
        check_choice("input_range", input_range, INPUT_RANGES)
        check_in_range("dynamic_thres_percentile", dynamic_thres_percentile, 0.0, 1.0)
        if exists(sample_steps):
            check_positive_int("sample_steps", sample_steps)
            if sample_steps > timesteps:
                raise ValueError(f"sample_steps: expected at most timesteps={timesteps}, got {sample_steps}")
        model_channels = getattr(model, "channels", channels)
        if model_channels != channels:
            raise ValueError(f"channels: the model takes {model_channels} channels, got channels={channels}")

        self.model = model
        self.image_size = check_image_size("image_size", image_size)
        self.num_frames = num_frames
        self.channels = channels
        self.text_use_bert_cls = text_use_bert_cls
        self.configure_diffusion(
            schedule=DiscreteSchedule.from_name(beta_schedule, timesteps),
            objective=objective,
            loss_type=loss_type,
            dynamic_thresholding=use_dynamic_thres,
            dynamic_thresholding_percentile=dynamic_thres_percentile,
            input_range=input_range,
            cond_drop_prob=cond_drop_prob,
            sampler=sampler,
            sample_steps=sample_steps,
        )

    @property
    def network(self) -> nn.Module:
        return self.model

    @property
    def denoise_fn(self) -> nn.Module:
        """The published video-diffusion-pytorch name of `model`."""
        return self.model

    @property
    def null_cond_prob(self) -> float:
        """The seed README's name of `cond_drop_prob`."""
        return self.cond_drop_prob

    @property
    def use_dynamic_thres(self) -> bool:
        """The seed README's name of `dynamic_thresholding`."""
        return self.dynamic_thresholding

    @use_dynamic_thres.setter
    def use_dynamic_thres(self, value: bool) -> None:
        self.dynamic_thresholding = bool(value)

    @property
    def dynamic_thres_percentile(self) -> float:
        """The seed README's name of `dynamic_thresholding_percentile`."""
        return self.dynamic_thresholding_percentile

    @dynamic_thres_percentile.setter
    def dynamic_thres_percentile(self, value: float) -> None:
        self.dynamic_thresholding_percentile = check_in_range("dynamic_thres_percentile", value, 0.0, 1.0)

    # -- inputs ------------------------------------------------------------------------------------------------

    def check_videos(self, name: str, videos: Tensor, *, allow_images: bool = True) -> Tensor:
        """Validate a batch of videos (or images, as one-frame videos) and return it as `(b, c, t, h, w)`."""
        # a one-frame video stands for an image when images are allowed; otherwise the frame count is fixed
        one_frame = allow_images and isinstance(videos, Tensor) and videos.ndim == 5 and videos.shape[2] == 1
        check_pixel_batch(
            name,
            videos,
            channels=self.channels,
            image_size=self.image_size,
            frames=1 if one_frame else self.num_frames,
            allow_images=allow_images,
        )
        return videos.unsqueeze(2) if videos.ndim == 4 else videos

    def resolve_cond(
        self,
        cond: Condition = None,
        texts: Sequence[str] | str | None = None,
        text_embeds: Tensor | None = None,
        text_mask: Tensor | None = None,
    ) -> Condition:
        """The protocol's text arguments (and the seed's `cond=`, their alias) -> this model's condition: captions
        (for the BERT of `use_bert_text_cond`), or a `(batch, cond_dim)` vector. Token embeddings
        `(batch, tokens, cond_dim)` are pooled to that vector by their mean over `text_mask` (all tokens without
        one), as the captions are."""
        text = resolve_text(texts, text_embeds, text_mask, aliases={"cond": ("texts_or_embeds", cond)})
        if text.texts is not None:
            return text.texts
        embeds = text.text_embeds
        if embeds is None or embeds.ndim != 3:
            if text.text_mask is not None:
                raise ValueError(
                    "text_mask: only used with token embeddings (batch, tokens, cond_dim), got a "
                    "pooled condition (batch, cond_dim)"
                )
            return embeds
        mask = text.text_mask if text.text_mask is not None else torch.ones(embeds.shape[:2], dtype=torch.bool)
        weights = mask.to(device=embeds.device, dtype=embeds.dtype)[..., None]
        return (embeds * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)

    def prepare_cond(self, cond: Condition, batch: int | None = None) -> Tensor | None:
        """Captions -> vectors (pooled as configured by `text_use_bert_cls`), validated against the batch: finite,
        on the model's device, cast to its dtype."""
        if cond is None:
            return None
        if hasattr(self.model, "prepare_cond"):
            prepare = getattr(self.model, "prepare_cond")  # noqa: B009 (an nn.Module attribute to mypy)
            cond = prepare(cond, batch, use_cls=self.text_use_bert_cls)
        if isinstance(cond, Tensor):
            return check_embeddings("cond", cond, device=self.device, dtype=self.dtype)
        if cond is not None:
            raise TypeError(
                f"cond: captions need a model that encodes them (a Unet3D with use_bert_text_cond); "
                f"{type(self.model).__name__} has no prepare_cond, pass vectors (batch, cond_dim)"
            )
        return None

    # -- training -------------------------------------------------------------------------------------------

    def forward(
        self,
        videos: Tensor,
        cond: Condition = None,
        prob_focus_present: float = 0.0,
        focus_present_mask: Tensor | None = None,
        null_cond_prob: float | None = None,
        *,
        texts: Sequence[str] | str | None = None,
        text_embeds: Tensor | None = None,
        text_mask: Tensor | None = None,
        cond_drop_prob: float | None = None,
        noise: Tensor | None = None,
        times: Tensor | None = None,
    ) -> Tensor:
        """The denoising loss of a batch of videos `(b, c, num_frames, h, w)` (or images `(b, c, h, w)`, trained
        as one-frame videos with temporal attention off) in [0, 1].

        The condition is `texts` (captions, with `use_bert_text_cond`) or `text_embeds`: a `(b, cond_dim)` vector,
        or token embeddings `(b, tokens, cond_dim)` pooled by their mean over `text_mask`; `cond` is the seed
        README's name for either. It is dropped with probability `cond_drop_prob` (alias `null_cond_prob`;
        default: the one given at construction), so the null branch used by `cond_scale` is trained.
        `prob_focus_present` / `focus_present_mask` switch off temporal attention for a fraction / a chosen set of
        the videos (image-video co-training). `noise` and `times` may be given for reproducibility.
        """
        videos = self.check_videos("videos", videos)
        batch = videos.shape[0]
        x0 = self.to_model_range("videos", videos)
        cond = self.prepare_cond(self.resolve_cond(cond, texts, text_embeds, text_mask), batch)
        null_cond_prob = resolve_alias(
            "cond_drop_prob", cond_drop_prob, "null_cond_prob", null_cond_prob, self.cond_drop_prob
        )
        check_in_range("cond_drop_prob", null_cond_prob, 0.0, 1.0)
        check_in_range("prob_focus_present", prob_focus_present, 0.0, 1.0)
        return self.diffusion_loss(
            x0,
            times=times,
            noise=noise,
            cond=cond,
            null_cond_prob=null_cond_prob,
            focus_present_mask=focus_present_mask,
            prob_focus_present=prob_focus_present,
        )

    def model_output(
        self,
        x_t: Tensor,
        times: Tensor,
        *,
        cond_scale: float | Tensor | None = None,
        cond: Condition = None,
        **model_kwargs,
    ) -> Tensor:
        """The wrapper's network call, with captions given to the published internals (`p_sample(x, t, cond=[...])`)
        pooled to vectors first."""
        if cond is not None and not isinstance(cond, Tensor):
            cond = self.prepare_cond(cond, x_t.shape[0])
        return super().model_output(x_t, times, cond_scale=cond_scale, cond=cond, **model_kwargs)

    # -- sampling ---------------------------------------------------------------------------------------------

    def _times(self, steps: int | None, schedule: DiscreteSchedule, device: torch.device, start: int | None = None):
        steps = steps if exists(steps) else self.sample_steps
        if start is None:
            return schedule.timesteps.to(device) if steps is None else sampling_times(schedule, steps, device=device)
        # from a given time down to 0 (interpolation): every index, or `steps` evenly spaced ones
        if steps is None or steps > start + 1:
            return torch.arange(start, -1, -1, device=device)
        return torch.linspace(start, 0, steps, dtype=torch.float64).round().long().unique_consecutive().to(device)

    @torch.no_grad()
    @eval_decorator
    def sample(
        self,
        cond: Condition = None,
        cond_scale: float | None = None,
        batch_size: int | None = None,
        sampler: str | None = None,
        steps: int | None = None,
        *,
        texts: Sequence[str] | str | None = None,
        text_embeds: Tensor | None = None,
        text_mask: Tensor | None = None,
        num_frames: int | None = None,
        eta: float = 0.0,
        generator: torch.Generator | None = None,
        progress: bool = True,
    ) -> Tensor:
        """Generate videos `(batch, channels, num_frames, h, w)` in [0, 1].

        The condition (`texts`, `text_embeds` + `text_mask`, or the seed's `cond`; see `forward`) sets the batch
        size (else `batch_size`, default 16; a single condition is repeated to `batch_size`); `cond_scale > 1`
        (default 1) applies classifier-free guidance. `sampler`: 'ddpm', 'ddim' (with `eta`) or 'dpmpp_2m';
        `steps`: model calls (default: the constructor's `sample_steps`, else every timestep). `num_frames`
        defaults to the trained `num_frames`. `generator` makes it deterministic.
        """
        sampler = default(sampler, self.sampler)
        check_choice("sampler", sampler, VP_SAMPLERS)
        cond_scale = default(cond_scale, 1.0)
        num_frames = check_positive_int("num_frames", default(num_frames, self.num_frames))
        device = self.device
        cond = self.prepare_cond(self.resolve_cond(cond, texts, text_embeds, text_mask))
        batch_size, (cond,) = self.sampling_batch(batch_size, 16, cond)
        if exists(steps):
            check_steps("steps", steps, maximum=self.num_timesteps)

        schedule = self.schedule.to(device)
        times = self._times(steps, schedule, device)
        height, width = self.image_size
        x_T = self.initial_noise((batch_size, self.channels, num_frames, height, width), generator, device)
        x0 = sample_vp(
            self.denoiser(cond_scale, cond=cond),
            x_T,
            times,
            schedule,
            sampler=sampler,
            eta=eta,
            generator=generator,
            progress=progress,
        )
        return self.to_pixels(x0)

    @torch.no_grad()
    @eval_decorator
    def interpolate(
        self,
        x1: Tensor,
        x2: Tensor,
        t: int | None = None,
        lam: float = 0.5,
        *,
        cond: Condition = None,
        cond_scale: float = 1.0,
        sampler: str | None = None,
        steps: int | None = None,
        generator: torch.Generator | None = None,
        progress: bool = True,
    ) -> Tensor:
        """Blend two batches of videos in [0, 1]: both are noised to time `t` (default: the noisiest) with the same
        noise, mixed as `(1 - lam) x1 + lam x2`, and denoised back to time 0. Returns videos in [0, 1]."""
        x1 = self.check_videos("x1", x1, allow_images=False)
        x2 = self.check_videos("x2", x2, allow_images=False)
        if x1.shape != x2.shape:
            raise ValueError(f"x2: expected the shape of x1 {tuple(x1.shape)}, got {tuple(x2.shape)}")
        check_in_range("lam", lam, 0.0, 1.0)
        t = default(t, self.num_timesteps - 1)
        if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < self.num_timesteps:
            raise ValueError(f"t: expected an int time in [0, {self.num_timesteps - 1}], got {t!r}")
        sampler = default(sampler, self.sampler)
        check_choice("sampler", sampler, VP_SAMPLERS)
        if exists(steps):
            check_steps("steps", steps, maximum=self.num_timesteps)

        device = self.device
        x1 = self.to_model_range("x1", x1)
        x2 = self.to_model_range("x2", x2)
        cond = self.prepare_cond(cond, x1.shape[0])
        schedule = self.schedule.to(device)

        # a shared noise keeps the mixture at exactly the noise level of time t
        noise = self.initial_noise(tuple(x1.shape), generator, device)
        alpha, sigma = schedule.alpha_sigma(torch.tensor(t, device=device))
        x_t = alpha * ((1 - lam) * x1 + lam * x2) + sigma * noise

        times = self._times(steps, schedule, device, start=t)
        x0 = sample_vp(
            self.denoiser(cond_scale, cond=cond),
            x_t,
            times,
            schedule,
            sampler=sampler,
            generator=generator,
            progress=progress,
        )
        return self.to_pixels(x0)
