"""ElucidatedImagen: the Imagen cascade trained and sampled with the EDM formulation (Karras et al. 2022).

x_noisy = x0 + sigma * eps with log(sigma) ~ N(P_mean, P_std^2) in training; the U-Net F is wrapped by the
preconditioning D(x, sigma) = c_skip x + c_out F(c_in x, c_noise(sigma)) (`EDMPreconditioning`, c_noise = log(sigma)/4
is the U-Net's time input), the loss is lambda(sigma) ||D - x0||^2, and sampling is the stochastic Heun sampler
(`sample_edm`) over Karras-spaced noise levels. Every EDM hyperparameter is a scalar or one value per unet.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from imagen_pytorch.cascade import CascadeBase, StageSampling, per_unet
from synthesis_core.checks import check_choice, check_in_range, check_positive_int
from synthesis_core.diffusion import (
    EDMPreconditioning,
    karras_sigmas,
    right_pad_dims_to,
    sample_edm,
    self_conditioning_denoiser,
    static_threshold,
)
from synthesis_core.diffusion import dynamic_threshold as dynamic_threshold_fn
from synthesis_core.utils import default, exists

__all__ = ["ElucidatedImagen", "EDM_SAMPLERS"]

EDM_SAMPLERS = ("heun", "euler")


class ElucidatedImagen(CascadeBase):
    """Cascading text-to-image / text-to-video diffusion in the EDM formulation.

    ```
    imagen = ElucidatedImagen(unets=(unet1, unet2), image_sizes=(64, 128), num_sample_steps=(64, 32),
                              sigma_max=(80, 160), cond_drop_prob=0.1)
    ```
    Takes the cascade arguments of `Imagen` (sizes, text, crops, low-res noise augmentation, thresholding, video)
    plus the EDM ones: `num_sample_steps`, `sigma_min`, `sigma_max`, `sigma_data`, `rho` (sampling schedule),
    `P_mean`, `P_std` (training noise distribution) and `S_churn`, `S_tmin`, `S_tmax`, `S_noise` (stochastic
    sampling), each a scalar or one per unet. `sampler`: 'heun' (2nd order, the default) or 'euler'. The cascade
    arguments are those of `CascadeBase.__init__`, passed on through `**cascade_kwargs`.
    """

    def __init__(
        self,
        unets: nn.Module | Sequence[nn.Module],
        *,
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
        **cascade_kwargs: Any,
    ):
        # the arguments every cascade takes (image_sizes, text_encoder_name, cond_drop_prob, ...) are written once,
        # in CascadeBase.__init__
        super().__init__(unets, **cascade_kwargs)
        num_unets = self.num_unets
        self.num_sample_steps = per_unet("num_sample_steps", num_sample_steps, num_unets)
        for index, steps in enumerate(self.num_sample_steps):
            check_positive_int(f"num_sample_steps[{index}]", steps)
        hyperparameters = dict(
            sigma_min=sigma_min,
            sigma_max=sigma_max,
            sigma_data=sigma_data,
            rho=rho,
            P_mean=P_mean,
            P_std=P_std,
            S_churn=S_churn,
            S_tmin=S_tmin,
            S_tmax=S_tmax,
            S_noise=S_noise,
        )
        # one dict of EDM hyperparameters per unet
        per_stage = {name: per_unet(name, value, num_unets) for name, value in hyperparameters.items()}
        self.edm_hparams = tuple(
            {name: float(values[index]) for name, values in per_stage.items()} for index in range(num_unets)
        )
        for index, hparams in enumerate(self.edm_hparams):
            for name in ("sigma_min", "sigma_data", "rho", "P_std"):
                check_in_range(f"{name}[{index}]", hparams[name], 1e-12, None)
            if hparams["sigma_max"] <= hparams["sigma_min"]:
                raise ValueError(
                    f"sigma_max[{index}]: expected more than sigma_min={hparams['sigma_min']}, "
                    f"got {hparams['sigma_max']}"
                )
        self.preconditionings = tuple(
            EDMPreconditioning(sigma_data=hparams["sigma_data"]) for hparams in self.edm_hparams
        )
        self.sampler = check_choice("sampler", sampler, EDM_SAMPLERS)

    # -- the preconditioned denoiser D(x, sigma) ---------------------------------------------------------------

    def preconditioned(self, unet_call, index: int, x_noisy: Tensor, sigma: Tensor, **kwargs) -> Tensor:
        """D(x, sigma) = c_skip x + c_out F(c_in x, c_noise(sigma)) for `unet_call` = the U-Net (or its guided call)."""
        precond = self.preconditionings[index]
        padded = right_pad_dims_to(x_noisy, sigma)
        pred = unet_call(precond.c_in(padded) * x_noisy, precond.c_noise(sigma), **kwargs)
        return precond.c_skip(padded) * x_noisy + precond.c_out(padded) * pred.float()

    # -- the EDM formulas under the published imagen-pytorch 2.1 names ------------------------------------------
    # (Karras et al. 2022, Table 1 and eq. 5 and 7; sigma_data, P_mean, ... passed explicitly as there)

    def _sigma_tensor(self, sigma: float | Tensor) -> Tensor:
        return sigma.float() if isinstance(sigma, Tensor) else torch.tensor(float(sigma), device=self.device)

    def c_skip(self, sigma_data: float, sigma: float | Tensor) -> Tensor:
        """sigma_data^2 / (sigma^2 + sigma_data^2): how much of the noisy input the denoiser passes through."""
        return EDMPreconditioning(sigma_data).c_skip(self._sigma_tensor(sigma))

    def c_out(self, sigma_data: float, sigma: float | Tensor) -> Tensor:
        """sigma sigma_data / sqrt(sigma^2 + sigma_data^2): the scale of the network's output."""
        return EDMPreconditioning(sigma_data).c_out(self._sigma_tensor(sigma))

    def c_in(self, sigma_data: float, sigma: float | Tensor) -> Tensor:
        """1 / sqrt(sigma^2 + sigma_data^2): the scale of the network's input (unit variance)."""
        return EDMPreconditioning(sigma_data).c_in(self._sigma_tensor(sigma))

    def c_noise(self, sigma: float | Tensor) -> Tensor:
        """log(sigma) / 4: the noise level the network is given as its time input."""
        return EDMPreconditioning().c_noise(self._sigma_tensor(sigma))

    def loss_weight(self, sigma_data: float, sigma: float | Tensor) -> Tensor:
        """lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2 = 1 / c_out^2."""
        return EDMPreconditioning(sigma_data).loss_weight(self._sigma_tensor(sigma))

    def noise_distribution(
        self,
        P_mean: float,
        P_std: float,
        batch_size: int,
        *,  # noqa: N803
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Training noise levels (batch_size,): exp(P_mean + P_std * n), n ~ N(0, 1), on the cascade's device."""
        check_in_range("P_std", P_std, 0.0, None)
        return EDMPreconditioning().sample_training_sigmas(
            batch_size, P_mean=P_mean, P_std=P_std, device=self.device, generator=generator
        )

    def sample_schedule(self, num_sample_steps: int, rho: float, sigma_min: float, sigma_max: float) -> Tensor:
        """The `num_sample_steps` Karras-spaced noise levels from sigma_max to sigma_min (eq. 5), then a final 0:
        shape (num_sample_steps + 1,)."""
        check_in_range("rho", rho, 1e-12, None)
        return karras_sigmas(num_sample_steps, sigma_min=sigma_min, sigma_max=sigma_max, rho=rho, device=self.device)

    def threshold_x_start(self, x_start: Tensor, dynamic_threshold: bool = True) -> Tensor:
        """An x0 estimate kept in [-1, 1]: dynamic thresholding at `dynamic_thresholding_percentile` (each sample
        divided by its percentile of |x0| where that exceeds 1), or a plain clamp."""
        if dynamic_threshold:
            return dynamic_threshold_fn(x_start, self.dynamic_thresholding_percentile)
        return static_threshold(x_start)

    def preconditioned_network_forward(
        self,
        unet_forward,
        noised_images: Tensor,
        sigma: float | Tensor,
        *,
        sigma_data: float,
        clamp: bool = False,
        dynamic_threshold: bool = True,
        **kwargs: Any,
    ) -> Tensor:
        """The denoiser D(x, sigma) = c_skip x + c_out F(c_in x, c_noise(sigma)) (eq. 7) of `unet_forward` = F
        (a unet, its `forward_with_cond_scale`, ...; `kwargs` go to it), for `sigma` a float or (batch,);
        `clamp=True` thresholds the estimate (`threshold_x_start`)."""
        batch = noised_images.shape[0]
        sigma = self._sigma_tensor(sigma).to(noised_images.device)
        if sigma.ndim == 0:
            sigma = sigma.expand(batch)
        out = EDMPreconditioning(sigma_data).denoise(unet_forward, noised_images, sigma, **kwargs)
        return self.threshold_x_start(out, dynamic_threshold) if clamp else out

    @torch.no_grad()
    def one_unet_sample(
        self,
        unet: nn.Module | None,
        shape: Sequence[int],
        *,
        unet_number: int,
        clamp: bool = True,
        dynamic_threshold: bool | None = None,
        cond_scale: float = 1.0,
        use_tqdm: bool = True,
        inpaint_videos: Tensor | None = None,
        inpaint_images: Tensor | None = None,
        inpaint_masks: Tensor | None = None,
        inpaint_resample_times: int = 5,
        init_images: Tensor | None = None,
        skip_steps: int | None = None,
        sigma_min: float | None = None,
        sigma_max: float | None = None,
        steps: int | None = None,
        sampler: str | None = None,
        generator: torch.Generator | None = None,
        **unet_kwargs: Any,
    ) -> Tensor:
        """Samples stage `unet_number` alone with `unet` (None: the stage's own) at `shape`, in the model's range
        [-1, 1]. `unet_kwargs` are the unet's conditioning (`text_embeds`, `text_mask`, `lowres_cond_img`,
        `lowres_noise_times`, `cond_images`, ...), already at the stage's size and range; `init_images` too
        ([-1, 1]). `inpaint_images` / `inpaint_videos` ([0, 1], as for `sample`) with `inpaint_masks` (True where
        new content is generated) are brought to the stage's size. `sigma_min`, `sigma_max` and
        `dynamic_threshold` (True: dynamic thresholding, False: a plain clamp) replace the stage's settings for
        this call; the x0 estimates are always kept in [-1, 1] (`clamp=False` is refused). `sample` runs the whole
        cascade (text encoding, low-res conditioning, [0, 1] output)."""
        if clamp is not True:
            raise ValueError(
                "clamp: the x0 estimates are always kept in [-1, 1] here; choose how with "
                "dynamic_threshold=True (dynamic thresholding) or False (a plain clamp)"
            )
        index = self.check_unet_number("unet_number", unet_number) - 1
        unet = unet if exists(unet) else self.unets[index]
        shape = tuple(int(size) for size in shape)
        if len(shape) != (5 if self.is_video else 4) or shape[1] != self.channels:
            raise ValueError(
                f"shape: expected (batch, {self.channels}, {'frames, ' if self.is_video else ''}"
                f"height, width), got {shape}"
            )
        device = self.device
        check_positive_int("inpaint_resample_times", inpaint_resample_times)
        if exists(inpaint_images) and exists(inpaint_videos):
            raise ValueError("inpaint_images, inpaint_videos: pass one of them, not both")
        inpaint_images = inpaint_images if exists(inpaint_images) else inpaint_videos
        inpaint = None
        if exists(inpaint_images):
            known, keep = self._check_inpainting(inpaint_images, inpaint_masks, device)
            frames = shape[2] if len(shape) == 5 else None
            inpaint = (
                self._stage_video_or_image(known, shape[-1], frames),
                self._stage_mask(keep.to(device), shape[-1], frames),
            )
        elif exists(inpaint_masks):
            raise ValueError("inpaint_masks: given without inpaint_images/inpaint_videos")

        # this call's noise range and thresholding replace the stage's for its duration (restored after)
        hparams = dict(self.edm_hparams[index])
        hparams["sigma_min"] = float(default(sigma_min, hparams["sigma_min"]))
        hparams["sigma_max"] = float(default(sigma_max, hparams["sigma_max"]))
        check_in_range("sigma_min", hparams["sigma_min"], 1e-12, None)
        if hparams["sigma_max"] <= hparams["sigma_min"]:
            raise ValueError(
                f"sigma_max: expected more than sigma_min={hparams['sigma_min']}, got {hparams['sigma_max']}"
            )
        thresholding = list(self.dynamic_thresholding)
        if exists(dynamic_threshold):
            thresholding[index] = bool(dynamic_threshold)
        saved = self.edm_hparams, self.dynamic_thresholding
        self.edm_hparams = (*saved[0][:index], hparams, *saved[0][index + 1 :])
        self.dynamic_thresholding = tuple(thresholding)
        try:
            return self.sample_stage(
                unet,
                index,
                shape,
                StageSampling(
                    unet_kwargs=unet_kwargs,
                    cond_scale=cond_scale,
                    inpaint=inpaint,
                    inpaint_resample_times=inpaint_resample_times,
                    init_images=init_images,
                    skip_steps=skip_steps,
                    sampler=sampler,
                    steps=steps,
                    use_tqdm=use_tqdm,
                    device=device,
                    generator=generator,
                ),
            )
        finally:
            self.edm_hparams, self.dynamic_thresholding = saved

    # -- training ------------------------------------------------------------------------------------------

    def stage_loss(
        self, unet: nn.Module, index: int, x_start: Tensor, unet_kwargs: dict, cond_drop_prob: float | None = None
    ) -> Tensor:
        hparams, precond = self.edm_hparams[index], self.preconditionings[index]
        cond_drop_prob = default(cond_drop_prob, self.cond_drop_prob)
        batch = x_start.shape[0]
        sigmas = precond.sample_training_sigmas(
            batch, P_mean=hparams["P_mean"], P_std=hparams["P_std"], device=x_start.device
        )
        x_noisy = x_start + right_pad_dims_to(x_start, sigmas) * torch.randn_like(x_start)

        def denoised(self_cond: Tensor | None) -> Tensor:
            return self.preconditioned(
                unet, index, x_noisy, sigmas, **unet_kwargs, self_cond=self_cond, cond_drop_prob=cond_drop_prob
            )

        self_cond = self.self_cond_estimate(index, lambda: denoised(None))
        losses = self.reduce_loss(denoised(self_cond), x_start)
        return (losses * precond.loss_weight(sigmas)).mean()

    # -- sampling ------------------------------------------------------------------------------------------

    def sample_stage(self, unet: nn.Module, index: int, shape: tuple[int, ...], call: StageSampling) -> Tensor:
        hparams = self.edm_hparams[index]
        sampler = check_choice("sampler", default(call.sampler, self.sampler), EDM_SAMPLERS)
        steps = check_positive_int("steps", default(call.steps, self.num_sample_steps[index]))
        sigmas = karras_sigmas(
            steps,
            sigma_min=hparams["sigma_min"],
            sigma_max=hparams["sigma_max"],
            rho=hparams["rho"],
            device=call.device,
        )

        noise = torch.randn(
            shape, generator=call.generator, device=call.generator.device if exists(call.generator) else call.device
        ).to(call.device)
        if exists(call.init_images):
            sigmas = sigmas[call.first_step(steps, index) :]
            x = call.init_images + sigmas[0] * noise
        else:
            x = sigmas[0] * noise

        self_cond = getattr(unet, "self_cond", False)

        def estimate_x0(x_noisy: Tensor, sigma: Tensor, previous_x0: Tensor | None) -> Tensor:
            x0 = self.preconditioned(
                unet.forward_with_cond_scale,
                index,
                x_noisy,
                sigma.float(),
                **call.unet_kwargs,
                self_cond=previous_x0 if self_cond else None,
                cond_scale=call.cond_scale,
            )
            return self.threshold(x0, index)

        return sample_edm(
            self_conditioning_denoiser(estimate_x0),
            x,
            sigmas,
            S_churn=hparams["S_churn"],
            S_tmin=hparams["S_tmin"],
            S_tmax=hparams["S_tmax"],
            S_noise=hparams["S_noise"],
            heun=sampler == "heun",
            generator=call.generator,
            progress=call.use_tqdm,
            inpaint=call.inpaint,
            resample_times=call.resample_times,
        )
