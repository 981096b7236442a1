"""Diffusion maths shared by imagen, video-diffusion and make-a-video: schedules, parameterisations,
guidance and samplers. Schedulers are kept apart from models (as in diffusers): nothing here is an nn.Module
(`wrapper.DiffusionWrapper` is a mixin the packages' modules inherit).

Reading order: `schedules` (alpha/sigma of x_t = alpha x0 + sigma eps), `parameterization` (eps / x0 / v and
loss weights), `guidance` (CFG, thresholding), `samplers` (DDPM / DDIM / DPM-Solver++ on VP schedules),
`edm` (Karras et al. preconditioning and Heun sampler), `wrapper` (the base of the packages' diffusion models:
loss, guidance closure, thresholding, the published DDPM internals). See shared-core/docs/diffusion.md for examples.
"""

from synthesis_core.diffusion.edm import EDMPreconditioning, edm_euler_step, edm_heun_step, sample_edm
from synthesis_core.diffusion.guidance import batched_cond_uncond, cfg_combine, dynamic_threshold, static_threshold
from synthesis_core.diffusion.parameterization import (
    OBJECTIVE_ALIASES,
    eps_to_x0,
    min_snr_weight,
    normalize_objective,
    p2_weight,
    pred_to_eps,
    pred_to_x0,
    v_to_eps,
    v_to_x0,
    x0_eps_to_v,
    x0_to_eps,
    x0_to_target,
)
from synthesis_core.diffusion.samplers import (
    VP_SAMPLERS,
    ddim_step,
    ddpm_step,
    dpmpp_2m_step,
    posterior_coefficients,
    posterior_mean_std,
    prepare_inpaint,
    randn_like,
    renoise_step,
    sample_vp,
)
from synthesis_core.diffusion.schedules import (
    BETA_SCHEDULES,
    LOG_SNR_SCHEDULES,
    ContinuousSchedule,
    DiscreteSchedule,
    alpha_sigma_from_log_snr,
    cosine_beta_schedule,
    karras_sigmas,
    linear_beta_schedule,
    log_snr_cosine,
    log_snr_linear,
    make_schedule,
    right_pad_dims_to,
    sampling_times,
    sigmoid_beta_schedule,
)
from synthesis_core.diffusion.wrapper import (
    LOSS_TYPES,
    DiffusionWrapper,
    per_sample_loss,
    self_conditioning_denoiser,
)

__all__ = [
    # schedules
    "right_pad_dims_to",
    "linear_beta_schedule",
    "cosine_beta_schedule",
    "sigmoid_beta_schedule",
    "BETA_SCHEDULES",
    "DiscreteSchedule",
    "log_snr_linear",
    "log_snr_cosine",
    "LOG_SNR_SCHEDULES",
    "alpha_sigma_from_log_snr",
    "ContinuousSchedule",
    "make_schedule",
    "karras_sigmas",
    "sampling_times",
    # parameterisations and loss weights
    "OBJECTIVE_ALIASES",
    "normalize_objective",
    "eps_to_x0",
    "x0_to_eps",
    "v_to_x0",
    "v_to_eps",
    "x0_eps_to_v",
    "pred_to_x0",
    "pred_to_eps",
    "x0_to_target",
    "min_snr_weight",
    "p2_weight",
    # guidance
    "cfg_combine",
    "batched_cond_uncond",
    "static_threshold",
    "dynamic_threshold",
    # samplers
    "VP_SAMPLERS",
    "posterior_coefficients",
    "posterior_mean_std",
    "ddpm_step",
    "ddim_step",
    "dpmpp_2m_step",
    "renoise_step",
    "randn_like",
    "prepare_inpaint",
    "sample_vp",
    # EDM
    "EDMPreconditioning",
    "edm_euler_step",
    "edm_heun_step",
    "sample_edm",
    # the wrapper base of the packages' diffusion models
    "LOSS_TYPES",
    "per_sample_loss",
    "self_conditioning_denoiser",
    "DiffusionWrapper",
]
