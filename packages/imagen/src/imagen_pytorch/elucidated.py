"""ElucidatedImagen: the Imagen cascade trained and sampled with the EDM formulation (Karras et al. 2022).

x_noisy = x0 + sigma * eps with log(sigma) ~ N(P_mean, P_std^2) in training; the U-Net F is wrapped by the
preconditioning D(x, sigma) = c_skip x + c_out F(c_in x, c_noise(sigma)) (`EDMPreconditioning`, c_noise = log(sigma)/4
is the U-Net's time input), the loss is lambda(sigma) ||D - x0||^2, and sampling is the stochastic Heun sampler
(`sample_edm`) over Karras-spaced noise levels. Every EDM hyperparameter is a scalar or one value per unet.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from imagen_pytorch.cascade import CascadeBase, per_unet
from synthesis_core.checkpoint import PretrainedMixin
from synthesis_core.checks import check_choice, check_in_range, check_positive_int
from synthesis_core.diffusion import EDMPreconditioning, karras_sigmas, right_pad_dims_to, sample_edm
from synthesis_core.text import DEFAULT_T5_NAME
from synthesis_core.utils import default, exists

__all__ = ["ElucidatedImagen", "EDM_SAMPLERS"]

EDM_SAMPLERS = ("heun", "euler")


class ElucidatedImagen(PretrainedMixin, CascadeBase):
    """Cascading text-to-image / text-to-video diffusion in the EDM formulation.

    ```
    imagen = ElucidatedImagen(unets=(unet1, unet2), image_sizes=(64, 128), num_sample_steps=(64, 32),
                              sigma_max=(80, 160), cond_drop_prob=0.1)
    ```
    Takes the cascade arguments of `Imagen` (sizes, text, crops, low-res noise augmentation, thresholding, video)
    plus the EDM ones: `num_sample_steps`, `sigma_min`, `sigma_max`, `sigma_data`, `rho` (sampling schedule),
    `P_mean`, `P_std` (training noise distribution) and `S_churn`, `S_tmin`, `S_tmax`, `S_noise` (stochastic
    sampling), each a scalar or one per unet. `sampler`: 'heun' (2nd order, the default) or 'euler'.
    """

    def __init__(
        self,
        unets: nn.Module | Sequence[nn.Module],
        *,
        image_sizes: int | Sequence[int],
        text_encoder_name: str = DEFAULT_T5_NAME,
        text_embed_dim: int | None = None,
        channels: int = 3,
        cond_drop_prob: float = 0.1,
        loss_type: str = "l2",
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
        num_sample_steps: int | Sequence[int] = 32,
        sigma_min: float | Sequence[float] = 0.002,
        sigma_max: float | Sequence[float] = 80,
        sigma_data: float | Sequence[float] = 0.5,
        rho: float | Sequence[float] = 7,
        P_mean: float | Sequence[float] = -1.2,  # noqa: N803 (the paper's names)
        P_std: float | Sequence[float] = 1.2,  # noqa: N803
        S_churn: float | Sequence[float] = 80,  # noqa: N803
        S_tmin: float | Sequence[float] = 0.05,  # noqa: N803
        S_tmax: float | Sequence[float] = 50,  # noqa: N803
        S_noise: float | Sequence[float] = 1.003,  # noqa: N803
        sampler: str = "heun",
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
        self.num_sample_steps = per_unet("num_sample_steps", num_sample_steps, num_unets)
        for index, steps in enumerate(self.num_sample_steps):
            check_positive_int(f"num_sample_steps[{index}]", steps)
        hyperparameters = dict(sigma_min=sigma_min, sigma_max=sigma_max, sigma_data=sigma_data, rho=rho,
                               P_mean=P_mean, P_std=P_std, S_churn=S_churn, S_tmin=S_tmin, S_tmax=S_tmax,
                               S_noise=S_noise)
        # one dict of EDM hyperparameters per unet
        per_stage = {name: per_unet(name, value, num_unets) for name, value in hyperparameters.items()}
        self.edm_hparams = tuple({name: float(values[index]) for name, values in per_stage.items()}
                                 for index in range(num_unets))
        for index, hparams in enumerate(self.edm_hparams):
            for name in ("sigma_min", "sigma_data", "rho", "P_std"):
                check_in_range(f"{name}[{index}]", hparams[name], 1e-12, None)
            if hparams["sigma_max"] <= hparams["sigma_min"]:
                raise ValueError(f"sigma_max[{index}]: expected more than sigma_min={hparams['sigma_min']}, "
                                 f"got {hparams['sigma_max']}")
        self.preconditionings = tuple(EDMPreconditioning(sigma_data=hparams["sigma_data"])
                                      for hparams in self.edm_hparams)
        self.sampler = check_choice("sampler", sampler, EDM_SAMPLERS)

    # -- the preconditioned denoiser D(x, sigma) ---------------------------------------------------------------

    def preconditioned(self, unet_call, index: int, x_noisy: Tensor, sigma: Tensor, **kwargs) -> Tensor:
        """D(x, sigma) = c_skip x + c_out F(c_in x, c_noise(sigma)) for `unet_call` = the U-Net (or its guided call)."""
        precond = self.preconditionings[index]
        padded = right_pad_dims_to(x_noisy, sigma)
        pred = unet_call(precond.c_in(padded) * x_noisy, precond.c_noise(sigma), **kwargs)
        return precond.c_skip(padded) * x_noisy + precond.c_out(padded) * pred.float()

    # -- training ------------------------------------------------------------------------------------------

    def stage_loss(self, unet: nn.Module, index: int, x_start: Tensor, unet_kwargs: dict) -> Tensor:
        hparams, precond = self.edm_hparams[index], self.preconditionings[index]
        batch = x_start.shape[0]
        sigmas = precond.sample_training_sigmas(batch, P_mean=hparams["P_mean"], P_std=hparams["P_std"],
                                                device=x_start.device)
        x_noisy = x_start + right_pad_dims_to(x_start, sigmas) * torch.randn_like(x_start)

        def denoised(self_cond: Tensor | None) -> Tensor:
            return self.preconditioned(unet, index, x_noisy, sigmas, **unet_kwargs, self_cond=self_cond,
                                       cond_drop_prob=self.cond_drop_prob)

        self_cond = self.self_cond_estimate(index, lambda: denoised(None))
        losses = self.reduce_loss(denoised(self_cond), x_start)
        return (losses * precond.loss_weight(sigmas)).mean()

    # -- sampling ------------------------------------------------------------------------------------------

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
        hparams = self.edm_hparams[index]
        sampler = check_choice("sampler", default(sampler, self.sampler), EDM_SAMPLERS)
        steps = check_positive_int("steps", default(steps, self.num_sample_steps[index]))
        sigmas = karras_sigmas(steps, sigma_min=hparams["sigma_min"], sigma_max=hparams["sigma_max"],
                               rho=hparams["rho"], device=device)

        noise = torch.randn(shape, device=device)
        if exists(init_images):
            skip_steps = default(skip_steps, 0)
            if not 0 <= skip_steps < steps:
                raise ValueError(f"skip_steps: expected an int in [0, {steps}) for unet {index + 1}, got {skip_steps}")
            sigmas = sigmas[skip_steps:]
            x = init_images + sigmas[0] * noise
        else:
            x = sigmas[0] * noise

        last_x0: list[Tensor | None] = [None]
        self_cond = getattr(unet, "self_cond", False)

        def denoise(x_noisy: Tensor, sigma: Tensor) -> Tensor:
            sigma = sigma.expand(x_noisy.shape[0]) if sigma.ndim == 0 else sigma
            x0 = self.preconditioned(unet.forward_with_cond_scale, index, x_noisy, sigma.float(), **unet_kwargs,
                                     self_cond=last_x0[0] if self_cond else None, cond_scale=cond_scale)
            x0 = self.threshold(x0, index)
            last_x0[0] = x0
            return x0

        return sample_edm(
            denoise, x, sigmas, S_churn=hparams["S_churn"], S_tmin=hparams["S_tmin"], S_tmax=hparams["S_tmax"],
            S_noise=hparams["S_noise"], heun=sampler == "heun", progress=use_tqdm, inpaint=inpaint,
            resample_times=inpaint_resample_times if exists(inpaint) else 1,
        )
