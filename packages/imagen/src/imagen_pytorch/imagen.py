"""Imagen (Saharia et al. 2022): a cascade of U-Nets, each a continuous-time Gaussian diffusion model.

Every stage has its own log-SNR schedule over t in [0, 1] (`synthesis_core.diffusion.ContinuousSchedule`); the
U-Net receives t itself as its time input. Training draws t uniformly; sampling runs one of the core's VP samplers
(DPM-Solver++ 2M with 25 steps by default, DDIM or ancestral DDPM) through `sample_vp`, with classifier-free
guidance, dynamic thresholding and self-conditioning done in the denoiser closure below.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from imagen_pytorch.cascade import CascadeBase, per_unet
from synthesis_core.checkpoint import PretrainedMixin
from synthesis_core.checks import check_choice, check_in_range, check_positive_int
from synthesis_core.diffusion import (
    ContinuousSchedule,
    min_snr_weight,
    normalize_objective,
    p2_weight,
    pred_to_x0,
    right_pad_dims_to,
    sample_vp,
    sampling_times,
    x0_to_target,
)
from synthesis_core.text import DEFAULT_T5_NAME
from synthesis_core.utils import default, exists

__all__ = ["Imagen", "SAMPLERS", "DEFAULT_SAMPLE_STEPS"]

SAMPLERS = ("ddpm", "ddim", "dpmpp_2m")
# DPM-Solver++ (2M) converges in about 25 model calls; ancestral DDPM needs the full `timesteps`
DEFAULT_SAMPLE_STEPS = 25


class Imagen(PretrainedMixin, CascadeBase):
    """Cascading text-to-image (or, with `Unet3D`s, text-to-video) diffusion.

    ```
    imagen = Imagen(unets=(unet1, unet2), image_sizes=(64, 256), timesteps=1000, cond_drop_prob=0.1)
    loss = imagen(images, text_embeds=text_embeds, unet_number=1)   # images in [0, 1]
    images = imagen.sample(texts=['a whale breaching from afar'], cond_scale=3.)
    ```
    Per-unet arguments (`timesteps`, `noise_schedules`, `pred_objectives`, `random_crop_sizes`,
    `dynamic_thresholding`, `temporal_downsample_factor`, `sample_steps`) take one value or one per unet.
    `pred_objectives`: 'noise', 'x_start' or 'v'. `timesteps` sets the default number of sampling steps
    (all of them for 'ddpm', at most 25 for 'dpmpp_2m' and 'ddim'); training time is continuous.
    `karras_sampling_times` spaces the sampling times so their noise levels follow Karras et al. (finer steps
    at low noise), which makes few-step sampling noticeably more accurate than evenly spaced times.
    """

    def __init__(
        self,
        unets: nn.Module | Sequence[nn.Module],
        *,
        image_sizes: int | Sequence[int],
        text_encoder_name: str = DEFAULT_T5_NAME,
        text_embed_dim: int | None = None,
        channels: int = 3,
        timesteps: int | Sequence[int] = 1000,
        cond_drop_prob: float = 0.1,
        loss_type: str = "l2",
        noise_schedules: str | Sequence[str] = "cosine",
        pred_objectives: str | Sequence[str] = "noise",
        random_crop_sizes: int | Sequence[int | None] | None = None,
        lowres_noise_schedule: str = "linear",
        lowres_sample_noise_level: float = 0.2,
        per_sample_random_aug_noise_level: bool = False,
        condition_on_text: bool = True,
        auto_normalize_img: bool = True,
        dynamic_thresholding: bool | Sequence[bool] = True,
        dynamic_thresholding_percentile: float = 0.95,
        only_train_unet_number: int | None = None,
        temporal_downsample_factor: int | Sequence[int] = 1,
        resize_cond_video_frames: bool = True,
        resize_mode: str = "nearest",
        min_snr_loss_weight: bool = True,
        min_snr_gamma: float = 5,
        p2_loss_weight_gamma: float = 0.0,
        sampler: str = "dpmpp_2m",
        sample_steps: int | Sequence[int | None] | None = None,
        karras_sampling_times: bool = True,
    ):
        super().__init__(
            unets, image_sizes=image_sizes, text_encoder_name=text_encoder_name, text_embed_dim=text_embed_dim,
            channels=channels, cond_drop_prob=cond_drop_prob, loss_type=loss_type,
            random_crop_sizes=random_crop_sizes, lowres_noise_schedule=lowres_noise_schedule,
            lowres_sample_noise_level=lowres_sample_noise_level,
            per_sample_random_aug_noise_level=per_sample_random_aug_noise_level,
            condition_on_text=condition_on_text, auto_normalize_img=auto_normalize_img,
            dynamic_thresholding=dynamic_thresholding, dynamic_thresholding_percentile=dynamic_thresholding_percentile,
            only_train_unet_number=only_train_unet_number, temporal_downsample_factor=temporal_downsample_factor,
            resize_cond_video_frames=resize_cond_video_frames, resize_mode=resize_mode,
        )
        num_unets = self.num_unets
        self.timesteps = per_unet("timesteps", timesteps, num_unets)
        for index, steps in enumerate(self.timesteps):
            check_positive_int(f"timesteps[{index}]", steps)
        self.noise_schedules = tuple(ContinuousSchedule(kind)
                                     for kind in per_unet("noise_schedules", noise_schedules, num_unets))
        self.pred_objectives = tuple(normalize_objective(objective)
                                     for objective in per_unet("pred_objectives", pred_objectives, num_unets))
        self.min_snr_loss_weight = min_snr_loss_weight
        self.min_snr_gamma = check_in_range("min_snr_gamma", min_snr_gamma, 0.0, None)
        self.p2_loss_weight_gamma = check_in_range("p2_loss_weight_gamma", p2_loss_weight_gamma, 0.0, None)
        self.sampler = check_choice("sampler", sampler, SAMPLERS)
        self.sample_steps = per_unet("sample_steps", sample_steps, num_unets)
        self.karras_sampling_times = karras_sampling_times
        for index, steps in enumerate(self.sample_steps):
            if exists(steps):
                check_positive_int(f"sample_steps[{index}]", steps)

    # -- training ------------------------------------------------------------------------------------------

    def stage_loss(self, unet: nn.Module, index: int, x_start: Tensor, unet_kwargs: dict) -> Tensor:
        schedule, objective = self.noise_schedules[index], self.pred_objectives[index]
        batch = x_start.shape[0]
        times = schedule.sample_training_times(batch, device=x_start.device)
        alpha, sigma = schedule.alpha_sigma(times)
        noise = torch.randn_like(x_start)
        x_noisy = right_pad_dims_to(x_start, alpha) * x_start + right_pad_dims_to(x_start, sigma) * noise

        def predict(self_cond: Tensor | None) -> Tensor:
            return unet(x_noisy, times, **unet_kwargs, self_cond=self_cond, cond_drop_prob=self.cond_drop_prob)

        self_cond = self.self_cond_estimate(
            index, lambda: pred_to_x0(predict(None), x_noisy, alpha, sigma, objective))
        pred = predict(self_cond)

        target = x0_to_target(x_start, noise, alpha, sigma, objective)
        losses = self.reduce_loss(pred, target)
        snr = (alpha / sigma.clamp(min=1e-8)) ** 2
        if self.min_snr_loss_weight:
            losses = losses * min_snr_weight(snr, self.min_snr_gamma, objective)
        if self.p2_loss_weight_gamma > 0:
            losses = losses * p2_weight(snr, gamma=self.p2_loss_weight_gamma)
        return losses.mean()

    # -- sampling ------------------------------------------------------------------------------------------

    def default_sample_steps(self, index: int, sampler: str) -> int:
        """Steps used when neither `sample(steps=...)` nor `sample_steps` says: all `timesteps` for ancestral
        DDPM, min(timesteps, 25) for the fast solvers."""
        if exists(self.sample_steps[index]):
            return self.sample_steps[index]
        if sampler == "ddpm":
            return self.timesteps[index]
        return min(self.timesteps[index], DEFAULT_SAMPLE_STEPS)

    def sample_stage(
        self,
        unet: nn.Module,
        index: int,
        shape: tuple[int, ...],
        *,
        unet_kwargs: dict,
        cond_scale: float,
        inpaint: tuple[Tensor, Tensor] | None,
        inpaint_resample_times: int,
        init_images: Tensor | None,
        skip_steps: int | None,
        sampler: str | None,
        steps: int | None,
        use_tqdm: bool,
        device: torch.device,
    ) -> Tensor:
        schedule, objective = self.noise_schedules[index], self.pred_objectives[index]
        sampler = check_choice("sampler", default(sampler, self.sampler), SAMPLERS)
        steps = check_positive_int("steps", default(steps, lambda: self.default_sample_steps(index, sampler)))
        times = sampling_times(schedule, steps, karras=self.karras_sampling_times, device=device)

        x = torch.randn(shape, device=device)
        if exists(init_images):
            skip_steps = default(skip_steps, 0)
            if not 0 <= skip_steps < steps:
                raise ValueError(f"skip_steps: expected an int in [0, {steps}) for unet {index + 1}, got {skip_steps}")
            times = times[skip_steps:]
            alpha, sigma = schedule.alpha_sigma(times[:1].expand(shape[0]))
            x = right_pad_dims_to(x, alpha) * init_images + right_pad_dims_to(x, sigma) * x

        denoise = self._denoiser(unet, index, unet_kwargs, cond_scale, schedule, objective)
        return sample_vp(
            denoise, x, times, schedule, sampler=sampler, progress=use_tqdm, inpaint=inpaint,
            resample_times=inpaint_resample_times if exists(inpaint) else 1,
        )

    def _denoiser(self, unet, index, unet_kwargs, cond_scale, schedule, objective):
        """x_t, t -> x0 estimate: guided prediction, converted to x0, thresholded; remembers it for self-conditioning."""
        last_x0: list[Tensor | None] = [None]
        self_cond = getattr(unet, "self_cond", False)

        def denoise(x_t: Tensor, time: Tensor) -> Tensor:
            time = time.expand(x_t.shape[0]) if time.ndim == 0 else time
            pred = unet.forward_with_cond_scale(
                x_t, time.float(), **unet_kwargs, self_cond=last_x0[0] if self_cond else None, cond_scale=cond_scale)
            alpha, sigma = schedule.alpha_sigma(time)
            x0 = self.threshold(pred_to_x0(pred.float(), x_t, alpha, sigma, objective), index)
            last_x0[0] = x0
            return x0

        return denoise
