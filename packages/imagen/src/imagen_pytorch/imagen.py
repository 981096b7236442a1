"""Imagen (Saharia et al. 2022): a cascade of U-Nets, each a continuous-time Gaussian diffusion model.

Every stage has its own log-SNR schedule over t in [0, 1] (`synthesis_core.diffusion.ContinuousSchedule`); the
U-Net receives t itself as its time input. Each stage is the core's diffusion wrapper (`GaussianStage`, a
`synthesis_core.diffusion.DiffusionWrapper` around the stage's U-Net): training draws t uniformly; sampling runs one
of the core's VP samplers (DPM-Solver++ 2M with 25 steps by default, DDIM or ancestral DDPM) through `sample_vp`,
with classifier-free guidance, dynamic thresholding and self-conditioning done in the wrapper's denoiser closure.
The published imagen-pytorch internals (`p_losses`, `p_mean_variance`, `p_sample`, `p_sample_loop`, taking the
`unet`) run the wrapper's DDPM step on the stage's continuous-time schedule, from t to t_next.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import torch
from torch import Tensor, nn

from imagen_pytorch.cascade import CascadeBase, StageSampling, per_unet
from synthesis_core.checks import check_choice, check_in_range, check_positive_int
from synthesis_core.diffusion import (
    ContinuousSchedule,
    DiffusionWrapper,
    DiscreteSchedule,
    normalize_objective,
    right_pad_dims_to,
    sample_vp,
    sampling_times,
)
from synthesis_core.utils import default, exists

__all__ = ["Imagen", "GaussianStage", "SAMPLERS", "DEFAULT_SAMPLE_STEPS"]

SAMPLERS = ("ddpm", "ddim", "dpmpp_2m")
# DPM-Solver++ (2M) converges in about 25 model calls; ancestral DDPM needs the full `timesteps`
DEFAULT_SAMPLE_STEPS = 25


class GaussianStage(DiffusionWrapper):
    """One stage of the cascade as the core's diffusion wrapper: the stage's U-Net (or the trainer's distributed
    wrapper of it) with its schedule, objective, loss weighting and thresholding. Built per call by
    `Imagen.gaussian_stage`; holds no parameters (the U-Nets stay in `Imagen.unets`)."""

    def __init__(self, unet: nn.Module, *, timesteps: int, **diffusion_config: Any):
        self.unet = unet
        self.configure_diffusion(continuous_steps=timesteps, **diffusion_config)

    @property
    def network(self) -> nn.Module:
        return self.unet


class Imagen(CascadeBase):
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
    The arguments every cascade takes (`image_sizes`, `text_encoder_name`, `cond_drop_prob`, ...) are those of
    `CascadeBase.__init__`; `imagen_pytorch.configs.cascade_parameters(Imagen)` lists them all.
    """

    def __init__(
        self,
        unets: nn.Module | Sequence[nn.Module],
        *,
        timesteps: int | Sequence[int] = 1000,
        noise_schedules: str | Sequence[str] = "cosine",
        pred_objectives: str | Sequence[str] = "noise",
        min_snr_loss_weight: bool = True,
        min_snr_gamma: float = 5,
        p2_loss_weight_gamma: float = 0.0,
        sampler: str = "dpmpp_2m",
        sample_steps: int | Sequence[int | None] | None = None,
        karras_sampling_times: bool = True,
        **cascade_kwargs: Any,
    ):
        # the arguments every cascade takes (image_sizes, text_encoder_name, cond_drop_prob, ...) are written once,
        # in CascadeBase.__init__
        super().__init__(unets, **cascade_kwargs)
        num_unets = self.num_unets
        self.timesteps = per_unet("timesteps", timesteps, num_unets)
        for index, steps in enumerate(self.timesteps):
            check_positive_int(f"timesteps[{index}]", steps)
        self.noise_schedules = tuple(
            ContinuousSchedule(kind) for kind in per_unet("noise_schedules", noise_schedules, num_unets)
        )
        self.pred_objectives = tuple(
            normalize_objective(objective) for objective in per_unet("pred_objectives", pred_objectives, num_unets)
        )
        self.min_snr_loss_weight = min_snr_loss_weight
        self.min_snr_gamma = check_in_range("min_snr_gamma", min_snr_gamma, 0.0, None)
        self.p2_loss_weight_gamma = check_in_range("p2_loss_weight_gamma", p2_loss_weight_gamma, 0.0, None)
        self.sampler = check_choice("sampler", sampler, SAMPLERS)
        self.sample_steps = per_unet("sample_steps", sample_steps, num_unets)
        self.karras_sampling_times = karras_sampling_times
        for index, steps in enumerate(self.sample_steps):
            if exists(steps):
                check_positive_int(f"sample_steps[{index}]", steps)

    @property
    def noise_schedulers(self) -> tuple[ContinuousSchedule, ...]:
        """The published imagen-pytorch name of `noise_schedules` (one schedule per unet)."""
        return self.noise_schedules

    def gaussian_stage(self, index: int, unet: nn.Module | None = None) -> GaussianStage:
        """Stage `index` (0-based) as the core's diffusion wrapper around `unet` (default: the stage's U-Net)."""
        return GaussianStage(
            unet if exists(unet) else self.unets[index],
            timesteps=self.timesteps[index],
            schedule=self.noise_schedules[index],
            objective=self.pred_objectives[index],
            loss_type=self.loss_type,
            min_snr_gamma=self.min_snr_gamma if self.min_snr_loss_weight else 0.0,
            p2_loss_weight_gamma=self.p2_loss_weight_gamma,
            dynamic_thresholding=self.dynamic_thresholding[index],
            dynamic_thresholding_percentile=self.dynamic_thresholding_percentile,
        )

    # -- training ------------------------------------------------------------------------------------------

    def stage_loss(
        self, unet: nn.Module, index: int, x_start: Tensor, unet_kwargs: dict, cond_drop_prob: float | None = None
    ) -> Tensor:
        stage = self.gaussian_stage(index, unet)
        cond_drop_prob = default(cond_drop_prob, self.cond_drop_prob)

        def predict(x_noisy: Tensor, times: Tensor) -> Tensor:
            def forward(self_cond: Tensor | None) -> Tensor:
                return unet(x_noisy, times, **unet_kwargs, self_cond=self_cond, cond_drop_prob=cond_drop_prob)

            self_cond = self.self_cond_estimate(index, lambda: stage.predict_start(forward(None), x_noisy, times))
            return forward(self_cond)

        return stage.diffusion_loss(x_start, predict=predict)

    # -- sampling ------------------------------------------------------------------------------------------

    def default_sample_steps(self, index: int, sampler: str) -> int:
        """Steps used when neither `sample(steps=...)` nor `sample_steps` says: all `timesteps` for ancestral
        DDPM, min(timesteps, 25) for the fast solvers."""
        if exists(self.sample_steps[index]):
            return self.sample_steps[index]
        if sampler == "ddpm":
            return self.timesteps[index]
        return min(self.timesteps[index], DEFAULT_SAMPLE_STEPS)

    def sample_stage(self, unet: nn.Module, index: int, shape: tuple[int, ...], call: StageSampling) -> Tensor:
        stage = self.gaussian_stage(index, unet)
        schedule = stage.schedule
        sampler = check_choice("sampler", default(call.sampler, self.sampler), SAMPLERS)
        steps = check_positive_int("steps", default(call.steps, lambda: self.default_sample_steps(index, sampler)))
        times = sampling_times(schedule, steps, karras=self.karras_sampling_times, device=call.device)

        x = stage.initial_noise(shape, call.generator, call.device)
        if exists(call.init_images):
            # start from the init images noised to the first kept time
            times = times[call.first_step(steps, index) :]
            alpha, sigma = schedule.alpha_sigma(times[:1].expand(shape[0]))
            x = right_pad_dims_to(x, alpha) * call.init_images + right_pad_dims_to(x, sigma) * x

        denoise = stage.denoiser(call.cond_scale, self_condition=getattr(unet, "self_cond", False), **call.unet_kwargs)
        return sample_vp(
            denoise,
            x,
            times,
            schedule,
            sampler=sampler,
            generator=call.generator,
            progress=call.use_tqdm,
            inpaint=call.inpaint,
            resample_times=call.resample_times,
        )

    # -- the published imagen-pytorch internals ------------------------------------------------------------------

    def _published_stage(
        self,
        unet: nn.Module,
        unet_number: int | None,
        noise_scheduler: Any,
        pred_objective: str | None,
        dynamic_threshold: bool | None,
    ) -> GaussianStage:
        """The stage of `unet` (found in the cascade, or named by `unet_number`), with the published call's
        overrides of its schedule, objective and thresholding."""
        if exists(unet_number):
            index = self.check_unet_number("unet_number", unet_number) - 1
        else:
            matches = [
                i
                for i, stage_unet in enumerate(self.unets)
                if unet is stage_unet or getattr(unet, "module", None) is stage_unet
            ]
            if not matches:
                raise ValueError("unet: not one of this cascade's unets; pass unet_number= to say which stage it is")
            index = matches[0]
        stage = self.gaussian_stage(index, unet)
        if exists(noise_scheduler):
            if not isinstance(noise_scheduler, (ContinuousSchedule, DiscreteSchedule)):
                raise TypeError(
                    "noise_scheduler: expected a synthesis_core.diffusion ContinuousSchedule or "
                    f"DiscreteSchedule (e.g. imagen.noise_schedulers[0]), got {type(noise_scheduler).__name__}"
                )
            stage.schedule = noise_scheduler
        if exists(pred_objective):
            stage.objective = normalize_objective(pred_objective)
        if exists(dynamic_threshold):
            stage.dynamic_thresholding = bool(dynamic_threshold)
        return stage

    def p_losses(
        self,
        unet: nn.Module,
        x_start: Tensor,
        times: Tensor,
        *,
        noise_scheduler: Any = None,
        noise: Tensor | None = None,
        pred_objective: str | None = None,
        unet_number: int | None = None,
        **unet_kwargs: Any,
    ) -> Tensor:
        """The stage's training loss of `x_start` in [-1, 1] (already at the stage's size) at float `times` in
        [0, 1] with `noise` (default: drawn); `unet_kwargs` (`text_embeds`, `text_mask`, `lowres_cond_img`,
        `lowres_noise_times`, `cond_images`, `cond_drop_prob`, ...) go to the U-Net. No self-conditioning pass."""
        stage = self._published_stage(unet, unet_number, noise_scheduler, pred_objective, None)
        return stage.p_losses(x_start, times, noise=noise, **unet_kwargs)

    def p_mean_variance(
        self,
        unet: nn.Module,
        x: Tensor,
        t: Tensor,
        *,
        noise_scheduler: Any = None,
        t_next: Tensor | None = None,
        cond_scale: float = 1.0,
        pred_objective: str | None = None,
        dynamic_threshold: bool | None = None,
        unet_number: int | None = None,
        **unet_kwargs: Any,
    ) -> tuple[tuple[Tensor, Tensor, Tensor], Tensor]:
        """`((mean, variance, log_variance), x0)`: the reverse step x_t -> x_{t_next} (default t - 1 / timesteps)
        at the guided, thresholded x0 estimate, as the published imagen returns it."""
        stage = self._published_stage(unet, unet_number, noise_scheduler, pred_objective, dynamic_threshold)
        mean, variance, log_variance, x0 = stage.p_mean_variance(
            x, t, cond_scale=cond_scale, t_next=t_next, return_x_start=True, **unet_kwargs
        )
        return (mean, variance, log_variance), x0

    @torch.no_grad()
    def p_sample(
        self,
        unet: nn.Module,
        x: Tensor,
        t: Tensor,
        *,
        noise_scheduler: Any = None,
        t_next: Tensor | None = None,
        cond_scale: float = 1.0,
        pred_objective: str | None = None,
        dynamic_threshold: bool | None = None,
        unet_number: int | None = None,
        generator: torch.Generator | None = None,
        **unet_kwargs: Any,
    ) -> tuple[Tensor, Tensor]:
        """`(x_{t_next}, x0)`: one ancestral step of the stage (no noise on the step to t_next = 0)."""
        stage = self._published_stage(unet, unet_number, noise_scheduler, pred_objective, dynamic_threshold)
        # return_x_start=True: always the pair (x_{t_next}, x0)
        return cast(
            tuple[Tensor, Tensor],
            stage.p_sample(
                x, t, cond_scale=cond_scale, t_next=t_next, generator=generator, return_x_start=True, **unet_kwargs
            ),
        )

    @torch.no_grad()
    def p_sample_loop(
        self,
        unet: nn.Module,
        shape: tuple[int, ...],
        *,
        noise_scheduler: Any = None,
        cond_scale: float = 1.0,
        pred_objective: str | None = None,
        dynamic_threshold: bool | None = None,
        unet_number: int | None = None,
        generator: torch.Generator | None = None,
        use_tqdm: bool = True,
        **unet_kwargs: Any,
    ) -> Tensor:
        """Ancestral sampling of one stage over `timesteps` evenly spaced steps from t = 1 to 0; returns images
        (or videos) of `shape` in [0, 1]. `sample` is the cascade's entry point (fast samplers, every stage)."""
        stage = self._published_stage(unet, unet_number, noise_scheduler, pred_objective, dynamic_threshold)
        was_training = unet.training
        unet.eval()
        try:
            x = stage.p_sample_loop(shape, cond_scale=cond_scale, generator=generator, progress=use_tqdm, **unet_kwargs)
        finally:
            unet.train(was_training)
        return self.unnormalize_img(x * 2 - 1)
