"""Gaussian diffusion around a `Unet3D`: the training loss, sampling (DDPM, DDIM, DPM-Solver++) and interpolation.

The schedule, parameterisations, guidance and samplers are the core's (`synthesis_core.diffusion`); this module
only wires them to the video model. Videos are `(batch, channels, frames, height, width)` floats in [0, 1] at the
API and [-1, 1] inside; `synthesis_core.checks.check_pixels` reads them by the rule every package shares ([-1, 1]
batches with a warning when clamped, uint8 divided by 255, other float dtypes cast to the model's; NaN / inf,
0-255 floats, another device or an empty batch refused).
"""
from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from synthesis_core.checkpoint import PretrainedMixin
from synthesis_core.checks import (
    check_choice,
    check_embeddings,
    check_guidance_scale,
    check_image_size,
    check_in_range,
    check_pixel_batch,
    check_pixels,
    check_positive_int,
    check_steps,
    check_tensor,
)
from synthesis_core.diffusion import (
    BETA_SCHEDULES,
    VP_SAMPLERS,
    DiscreteSchedule,
    dynamic_threshold,
    normalize_objective,
    pred_to_x0,
    right_pad_dims_to,
    sample_vp,
    sampling_times,
    static_threshold,
    x0_to_target,
)
from synthesis_core.utils import default, eval_decorator, exists
from video_diffusion_pytorch.unet import Condition

__all__ = ["GaussianDiffusion", "LOSS_TYPES", "INPUT_RANGES"]

logger = logging.getLogger(__name__)

LOSS_TYPES = ("l1", "l2", "huber")
# how `forward` reads its videos: 'auto' takes [0, 1], and a batch with negative values as already in [-1, 1]
INPUT_RANGES = ("auto", "unit", "symmetric")


class GaussianDiffusion(PretrainedMixin, nn.Module):
    """Denoising diffusion (DDPM) of videos with a space-time U-Net.

    Args:
        model: the `Unet3D` (any module with its `forward` / `forward_with_cond_scale` interface).
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
        null_cond_prob: probability of dropping the condition of each training sample (classifier-free guidance
            needs the null branch trained; 0 disables it).
        sampler: default sampler, 'ddpm', 'ddim' or 'dpmpp_2m'.
        sample_steps: default number of model calls when sampling (None: `timesteps`, i.e. full DDPM).
        input_range: 'auto' (videos in [0, 1]; a batch with negative values is taken as already in [-1, 1] and
            values outside it are clamped with a warning), 'unit' ([0, 1] only) or 'symmetric' (always [-1, 1]).
            uint8 videos are divided by 255; float16 / bfloat16 / float64 are cast to the model's dtype.
    """

    def __init__(
        self,
        model: nn.Module,
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
        null_cond_prob: float = 0.1,
        sampler: str = "ddpm",
        sample_steps: int | None = None,
        input_range: str = "auto",
    ):
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"model: expected an nn.Module such as Unet3D, got {type(model).__name__}")
        check_positive_int("num_frames", num_frames)
        check_positive_int("channels", channels)
        check_positive_int("timesteps", timesteps)
        check_choice("loss_type", loss_type, LOSS_TYPES)
        check_choice("beta_schedule", beta_schedule, tuple(BETA_SCHEDULES))
        check_choice("sampler", sampler, VP_SAMPLERS)
        check_choice("input_range", input_range, INPUT_RANGES)
        check_in_range("null_cond_prob", null_cond_prob, 0.0, 1.0)
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
        self.loss_type = loss_type
        self.objective = normalize_objective(objective)
        self.use_dynamic_thres = use_dynamic_thres
        self.dynamic_thres_percentile = dynamic_thres_percentile
        self.null_cond_prob = null_cond_prob
        self.sampler = sampler
        self.sample_steps = sample_steps
        self.input_range = input_range
        self.schedule = DiscreteSchedule.from_name(beta_schedule, timesteps)

    @property
    def num_timesteps(self) -> int:
        return self.schedule.num_timesteps

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """The model's parameter dtype: inputs in another float dtype are cast to it."""
        return next(self.model.parameters()).dtype

    # -- inputs ------------------------------------------------------------------------------------------------

    def check_videos(self, name: str, videos: Tensor, *, allow_images: bool = True) -> Tensor:
        """Validate a batch of videos (or images, as one-frame videos) and return it as `(b, c, t, h, w)`."""
        # a one-frame video stands for an image when images are allowed; otherwise the frame count is fixed
        one_frame = allow_images and isinstance(videos, Tensor) and videos.ndim == 5 and videos.shape[2] == 1
        check_pixel_batch(name, videos, channels=self.channels, image_size=self.image_size,
                          frames=1 if one_frame else self.num_frames, allow_images=allow_images)
        return videos.unsqueeze(2) if videos.ndim == 4 else videos

    def normalize(self, name: str, videos: Tensor) -> Tensor:
        """Pixel values at the API -> [-1, 1] in the model's dtype (see `input_range` and `check_pixels`): clear
        errors for NaN / inf, 0-255 floats, another device or an empty batch."""
        return check_pixels(name, videos, device=self.device, dtype=self.dtype, input_range=self.input_range,
                            output_range="symmetric")

    def prepare_cond(self, cond: Condition, batch: int | None = None) -> Tensor | None:
        """Captions -> vectors (pooled as configured by `text_use_bert_cls`), validated against the batch: finite,
        on the model's device, cast to its dtype."""
        if cond is None:
            return None
        if hasattr(self.model, "prepare_cond"):
            cond = self.model.prepare_cond(cond, batch, use_cls=self.text_use_bert_cls)
        if isinstance(cond, Tensor):
            cond = check_embeddings("cond", cond, device=self.device, dtype=self.dtype)
        return cond

    # -- training -------------------------------------------------------------------------------------------

    def forward(
        self,
        videos: Tensor,
        cond: Condition = None,
        prob_focus_present: float = 0.0,
        focus_present_mask: Tensor | None = None,
        null_cond_prob: float | None = None,
        *,
        noise: Tensor | None = None,
        times: Tensor | None = None,
    ) -> Tensor:
        """The denoising loss of a batch of videos `(b, c, num_frames, h, w)` (or images `(b, c, h, w)`, trained
        as one-frame videos with temporal attention off) in [0, 1].

        The condition is dropped with probability `null_cond_prob` (default: the one given at construction), so
        the null branch used by `cond_scale` is trained. `prob_focus_present` / `focus_present_mask` switch off
        temporal attention for a fraction / a chosen set of the videos (image-video co-training).
        `noise` and `times` may be given for reproducibility (default: drawn here).
        """
        videos = self.check_videos("videos", videos)
        batch = videos.shape[0]
        x0 = self.normalize("videos", videos)
        cond = self.prepare_cond(cond, batch)
        null_cond_prob = default(null_cond_prob, self.null_cond_prob)
        check_in_range("null_cond_prob", null_cond_prob, 0.0, 1.0)
        check_in_range("prob_focus_present", prob_focus_present, 0.0, 1.0)

        schedule = self.schedule.to(x0.device)
        if times is None:
            times = schedule.sample_training_times(batch, device=x0.device)
        else:
            check_tensor("times", times, shape=(batch,), names=("batch",))
        if noise is None:
            noise = torch.randn_like(x0)
        else:
            check_tensor("noise", noise, shape=tuple(x0.shape))

        alpha, sigma = schedule.alpha_sigma(times)
        x_t = right_pad_dims_to(x0, alpha) * x0 + right_pad_dims_to(x0, sigma) * noise
        pred = self.model(x_t, times, cond=cond, null_cond_prob=null_cond_prob,
                          focus_present_mask=focus_present_mask, prob_focus_present=prob_focus_present)
        target = x0_to_target(x0, noise, alpha, sigma, self.objective)
        return self._loss(pred.float(), target.float())

    def _loss(self, pred: Tensor, target: Tensor) -> Tensor:
        if self.loss_type == "l1":
            return F.l1_loss(pred, target)
        if self.loss_type == "l2":
            return F.mse_loss(pred, target)
        return F.smooth_l1_loss(pred, target)

    # -- sampling ---------------------------------------------------------------------------------------------

    def _denoiser(self, cond: Tensor | None, cond_scale: float, schedule: DiscreteSchedule):
        """The closure the core's samplers call: model prediction (with guidance) -> thresholded x0."""

        def denoise(x_t: Tensor, time_batch: Tensor) -> Tensor:
            pred = self.model.forward_with_cond_scale(x_t, time_batch, cond=cond, cond_scale=cond_scale)
            alpha, sigma = schedule.alpha_sigma(time_batch)
            x0 = pred_to_x0(pred.float(), x_t, alpha, sigma, self.objective)
            if self.use_dynamic_thres:
                return dynamic_threshold(x0, self.dynamic_thres_percentile)
            return static_threshold(x0)

        return denoise

    def _times(self, steps: int | None, schedule: DiscreteSchedule, device: torch.device, start: int | None = None):
        steps = default(steps, self.sample_steps)
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
        cond_scale: float = 1.0,
        batch_size: int = 16,
        sampler: str | None = None,
        steps: int | None = None,
        *,
        eta: float = 0.0,
        generator: torch.Generator | None = None,
        progress: bool = True,
    ) -> Tensor:
        """Generate videos `(batch, channels, num_frames, h, w)` in [0, 1].

        `cond` (tensor or captions) sets the batch size (else `batch_size`); `cond_scale > 1` applies
        classifier-free guidance. `sampler`: 'ddpm', 'ddim' (with `eta`) or 'dpmpp_2m'; `steps`: model calls
        (default: the constructor's `sample_steps`, else every timestep). `generator` makes it deterministic.
        """
        sampler = default(sampler, self.sampler)
        check_choice("sampler", sampler, VP_SAMPLERS)
        check_guidance_scale("cond_scale", cond_scale)
        device = self.device
        cond = self.prepare_cond(cond)
        if exists(cond):
            batch_size = cond.shape[0]
        check_positive_int("batch_size", batch_size)
        if exists(steps):
            check_steps("steps", steps, maximum=self.num_timesteps)

        schedule = self.schedule.to(device)
        times = self._times(steps, schedule, device)
        height, width = self.image_size
        shape = (batch_size, self.channels, self.num_frames, height, width)
        x_T = torch.randn(shape, generator=generator, device=generator.device if generator else device).to(device)
        x0 = sample_vp(self._denoiser(cond, cond_scale, schedule), x_T, times, schedule, sampler=sampler,
                       eta=eta, generator=generator, progress=progress)
        return ((x0 + 1) / 2).clamp(0.0, 1.0)

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
        check_guidance_scale("cond_scale", cond_scale)
        if exists(steps):
            check_steps("steps", steps, maximum=self.num_timesteps)

        device = self.device
        x1 = self.normalize("x1", x1)
        x2 = self.normalize("x2", x2)
        cond = self.prepare_cond(cond, x1.shape[0])
        schedule = self.schedule.to(device)

        # a shared noise keeps the mixture at exactly the noise level of time t
        noise = torch.randn(x1.shape, generator=generator, device=generator.device if generator else device)
        alpha, sigma = schedule.alpha_sigma(torch.tensor(t, device=device))
        x_t = alpha * ((1 - lam) * x1 + lam * x2) + sigma * noise.to(device)

        times = self._times(steps, schedule, device, start=t)
        x0 = sample_vp(self._denoiser(cond, cond_scale, schedule), x_t, times, schedule, sampler=sampler,
                       generator=generator, progress=progress)
        return ((x0 + 1) / 2).clamp(0.0, 1.0)
