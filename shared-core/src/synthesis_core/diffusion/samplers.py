"""Samplers of variance-preserving diffusion on any schedule with `alpha_sigma(time)`.

`sample_vp` is the one loop; the single-step functions it calls (`ddpm_step`, `ddim_step`, `dpmpp_2m_step`,
`renoise_step`) are pure tensor code that `torch.compile` handles (Python-level branches depend only on
arguments being None or not). Every step moves x from time t to an earlier (cleaner) time s given the model's
x0 estimate at t; alpha_t, sigma_t, alpha_s, sigma_s are tensors broadcastable against x (0-d or right-padded).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import torch
from torch import Tensor
from tqdm.auto import tqdm

from synthesis_core.checks import check_choice, check_in_range, check_positive_int, check_tensor

__all__ = [
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
]

logger = logging.getLogger(__name__)

VP_SAMPLERS = ("ddpm", "ddim", "dpmpp_2m")

Denoise = Callable[[Tensor, Tensor], Tensor]


def randn_like(x: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Standard normal noise shaped like x; drawn on the generator's device (so a CPU generator gives the same
    numbers whatever device x is on) and moved to x's device."""
    if generator is None:
        return torch.randn_like(x)
    noise = torch.randn(x.shape, generator=generator, device=generator.device, dtype=x.dtype)
    return noise.to(x.device)


# ---------------------------------------------------------------------------------------------------------------
# single steps t -> s (s < t)


def _transition_std(alpha_t: Tensor, sigma_t: Tensor, alpha_s: Tensor, sigma_s: Tensor) -> tuple[Tensor, Tensor]:
    # q(x_t | x_s) = N(alpha_ts x_s, sigma_ts^2) with alpha_ts = alpha_t / alpha_s, sigma_ts^2 = sigma_t^2 - alpha_ts^2 sigma_s^2
    # (written with sigma^2, not 1 - alpha^2, to avoid cancellation near the clean end)
    alpha_ts = alpha_t / alpha_s
    sigma_ts_sq = (sigma_t**2 - alpha_ts**2 * sigma_s**2).clamp(min=0)
    return alpha_ts, sigma_ts_sq


def posterior_coefficients(
    alpha_t: Tensor, sigma_t: Tensor, alpha_s: Tensor, sigma_s: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """q(x_s | x_t, x0) = N(coef_x_t x_t + coef_x0 x0, variance) for any pair of times s < t (Kingma et al. 2021,
    eq. 28-30): coef_x_t = alpha_ts sigma_s^2 / sigma_t^2, coef_x0 = alpha_s sigma_ts^2 / sigma_t^2 and
    variance = sigma_ts^2 sigma_s^2 / sigma_t^2. For consecutive DDPM times these are Ho et al.'s
    beta_t sqrt(abar_{t-1}) / (1 - abar_t), sqrt(alpha_t) (1 - abar_{t-1}) / (1 - abar_t) and beta~_t."""
    alpha_ts, sigma_ts_sq = _transition_std(alpha_t, sigma_t, alpha_s, sigma_s)
    sigma_t_sq = sigma_t**2
    return alpha_ts * sigma_s**2 / sigma_t_sq, alpha_s * sigma_ts_sq / sigma_t_sq, sigma_ts_sq * sigma_s**2 / sigma_t_sq


def posterior_mean_std(
    x_t: Tensor, x0_hat: Tensor, alpha_t: Tensor, sigma_t: Tensor, alpha_s: Tensor, sigma_s: Tensor
) -> tuple[Tensor, Tensor]:
    """Mean and std of q(x_s | x_t, x0 = x0_hat) for any pair of times s < t (see `posterior_coefficients`)."""
    coef_x_t, coef_x0, variance = posterior_coefficients(alpha_t, sigma_t, alpha_s, sigma_s)
    return coef_x_t * x_t + coef_x0 * x0_hat, variance.sqrt()


def ddpm_step(
    x_t: Tensor, x0_hat: Tensor, alpha_t: Tensor, sigma_t: Tensor, alpha_s: Tensor, sigma_s: Tensor, noise: Tensor
) -> Tensor:
    """Ancestral step: a sample of the posterior q(x_s | x_t, x0_hat) (exact DDPM for consecutive times)."""
    mean, std = posterior_mean_std(x_t, x0_hat, alpha_t, sigma_t, alpha_s, sigma_s)
    return mean + std * noise


def ddim_step(
    x_t: Tensor,
    x0_hat: Tensor,
    alpha_t: Tensor,
    sigma_t: Tensor,
    alpha_s: Tensor,
    sigma_s: Tensor,
    eta: float = 0.0,
    noise: Tensor | None = None,
) -> Tensor:
    """DDIM (Song et al. 2021): x_s = alpha_s x0 + sqrt(sigma_s^2 - c^2) eps_hat + c z with c = eta * (posterior std).

    eta = 0 is the deterministic probability-flow discretisation, eta = 1 equals `ddpm_step` with the same noise.
    """
    eps_hat = (x_t - alpha_t * x0_hat) / sigma_t
    x_s = alpha_s * x0_hat
    if noise is None:
        if eta != 0:
            raise ValueError(f"noise: required when eta > 0 (got eta={eta} and noise=None)")
        return x_s + sigma_s * eps_hat
    _, sigma_ts_sq = _transition_std(alpha_t, sigma_t, alpha_s, sigma_s)
    c = eta * (sigma_ts_sq * sigma_s**2 / sigma_t**2).sqrt()
    return x_s + (sigma_s**2 - c**2).clamp(min=0).sqrt() * eps_hat + c * noise


def dpmpp_2m_step(
    x_t: Tensor,
    x0_hat: Tensor,
    alpha_t: Tensor,
    sigma_t: Tensor,
    alpha_s: Tensor,
    sigma_s: Tensor,
    prev_x0_hat: Tensor | None = None,
    h_prev: Tensor | None = None,
) -> Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022) in lambda = log(alpha / sigma) with data prediction.

    x_s = (sigma_s / sigma_t) x_t - alpha_s (exp(-h) - 1) D with h = lambda_s - lambda_t. First order (D = x0_hat,
    identical to DDIM eta=0) without history; with the previous estimate `prev_x0_hat` and the previous step's
    `h_prev`, D = (1 + 1/(2r)) x0_hat - 1/(2r) prev_x0_hat with r = h_prev / h.
    """
    h = (alpha_s / sigma_s).log() - (alpha_t / sigma_t).log()
    denoised = x0_hat
    if prev_x0_hat is not None:
        if h_prev is None:
            raise ValueError("h_prev: required with prev_x0_hat (the previous step's lambda increment)")
        half_inv_r = h / (2 * h_prev)
        denoised = (1 + half_inv_r) * x0_hat - half_inv_r * prev_x0_hat
    return (sigma_s / sigma_t) * x_t - alpha_s * torch.expm1(-h) * denoised


def renoise_step(
    x_s: Tensor, alpha_s: Tensor, sigma_s: Tensor, alpha_t: Tensor, sigma_t: Tensor, noise: Tensor
) -> Tensor:
    """Forward diffusion from time s to a noisier time t: a sample of q(x_t | x_s) (used by RePaint resampling)."""
    alpha_ts, sigma_ts_sq = _transition_std(alpha_t, sigma_t, alpha_s, sigma_s)
    return alpha_ts * x_s + sigma_ts_sq.sqrt() * noise


# ---------------------------------------------------------------------------------------------------------------
# the sampling loop


def prepare_inpaint(inpaint: Sequence[Tensor] | None, x: Tensor) -> tuple[Tensor, Tensor] | None:
    """Validate `inpaint=(known_x0, keep_mask)` against x and return (known, keep) with keep a float tensor that
    broadcasts against x. keep_mask may be shaped like x, (b, 1, *spatial) or (b, *spatial) (no channel dim)."""
    if inpaint is None:
        return None
    if not isinstance(inpaint, (tuple, list)) or len(inpaint) != 2:
        raise TypeError("inpaint: expected a tuple (known_x0, keep_mask) or None")
    known, keep = inpaint
    check_tensor("inpaint known_x0", known, shape=tuple(x.shape), dtype_floating=True)
    check_tensor("inpaint keep_mask", keep)
    if keep.ndim == x.ndim - 1:
        keep = keep.unsqueeze(1)
    try:
        if keep.ndim != x.ndim or torch.broadcast_shapes(keep.shape, x.shape) != x.shape:
            raise RuntimeError
    except RuntimeError:
        raise ValueError(
            f"inpaint keep_mask: expected shape {tuple(x.shape)}, (batch, 1, *spatial) or (batch, *spatial) "
            f"broadcastable to x, got {tuple(inpaint[1].shape)}"
        ) from None
    return known.to(device=x.device, dtype=x.dtype), keep.to(device=x.device, dtype=x.dtype)


def _call_denoise(denoise: Denoise, x: Tensor, time_batch: Tensor) -> Tensor:
    x0_hat = denoise(x, time_batch)
    if not isinstance(x0_hat, Tensor) or x0_hat.shape != x.shape:
        got = tuple(x0_hat.shape) if isinstance(x0_hat, Tensor) else type(x0_hat).__name__
        raise ValueError(f"denoise: expected an x0 estimate of shape {tuple(x.shape)} (the shape of x_t), got {got}")
    return x0_hat.to(x.dtype)


def _check_times(times: Tensor) -> None:
    check_tensor("times", times, ndim=1)
    if times.numel() == 0:
        raise ValueError("times: expected at least one time, got an empty tensor")
    if times.numel() > 1 and not bool((times[1:] < times[:-1]).all()):
        raise ValueError(f"times: expected strictly descending times (noisiest first), got {times.tolist()}")


@torch.no_grad()
def sample_vp(
    denoise: Denoise,
    x_T: Tensor,
    times: Tensor,
    schedule,
    sampler: str = "ddpm",
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    progress: bool = True,
    inpaint: Sequence[Tensor] | None = None,
    resample_times: int = 1,
) -> Tensor:
    """Sample from a VP diffusion model; returns the model's final x0 estimate at the cleanest time.

    - `denoise(x_t, time_batch) -> x0_hat`: the package's closure (CFG, thresholding, self-conditioning).
      `time_batch` is `times[i]` repeated to shape (batch,), in the times' dtype.
    - `x_T`: the start, N(0, 1) noise for the noisiest time, images (b, c, h, w) or videos (b, c, t, h, w).
    - `times`: strictly descending 1D tensor (see `sampling_times`); the model is called once per entry (times
      `resample_times` with inpainting) and the last call, at the cleanest time, is the output.
    - `sampler`: 'ddpm' (ancestral, the exact posterior between consecutive times, any subsequence), 'ddim'
      (with `eta`; eta=0 deterministic) or 'dpmpp_2m' (DPM-Solver++ 2M; first order on the first step, on the
      final step to the cleanest time and on RePaint redos).
    - `inpaint=(known_x0, keep_mask)`: after every step the kept region is replaced by the known image noised to
      the new time; with `resample_times=r`, each step is redone r-1 more times after re-noising one step forward
      (RePaint, Lugmayr et al. 2022). The kept region of the output is exactly `known_x0`.
    - `generator` makes the noise deterministic; `progress=False` hides the tqdm bar.

    Runs under `torch.no_grad()` (a closure that needs gradients, e.g. classifier guidance, can use
    `torch.enable_grad()` inside).
    """
    if not callable(denoise):
        raise TypeError(f"denoise: expected a callable (x_t, time_batch) -> x0_hat, got {type(denoise).__name__}")
    check_tensor("x_T", x_T, dtype_floating=True)
    if x_T.ndim < 2:
        raise ValueError(f"x_T: expected a batched tensor (batch, ...), got shape {tuple(x_T.shape)}")
    _check_times(times)
    check_choice("sampler", sampler, VP_SAMPLERS)
    check_in_range("eta", eta, 0.0, None)
    check_positive_int("resample_times", resample_times)
    if not callable(getattr(schedule, "alpha_sigma", None)):
        raise TypeError(f"schedule: expected an object with alpha_sigma(time), got {type(schedule).__name__}")
    inpaint = prepare_inpaint(inpaint, x_T)

    x = x_T
    batch, num_times = x.shape[0], times.shape[0]
    times = times.to(x.device)
    alphas, sigmas = schedule.alpha_sigma(times)
    alphas, sigmas = alphas.to(x.device), sigmas.to(x.device)
    lambdas = alphas.log() - sigmas.log()
    stochastic = sampler == "ddpm" or (sampler == "ddim" and eta > 0)

    def paste_known(x_now: Tensor, i: int, known_keep: tuple[Tensor, Tensor]) -> Tensor:
        known, keep = known_keep
        noised_known = alphas[i] * known + sigmas[i] * randn_like(known, generator)
        return keep * noised_known + (1 - keep) * x_now

    if inpaint is not None:
        x = paste_known(x, 0, inpaint)

    logger.debug("sample_vp: %s, %d times, x %s, inpaint=%s", sampler, num_times, tuple(x.shape), inpaint is not None)
    prev_x0_hat, h_prev = None, None
    x0_hat = x
    for i in tqdm(range(num_times), desc=f"sampling ({sampler})", disable=not progress, leave=False):
        time_batch = times[i].expand(batch)
        if i == num_times - 1:
            x0_hat = _call_denoise(denoise, x, time_batch)
            break

        a_t, s_t, a_s, s_s = alphas[i], sigmas[i], alphas[i + 1], sigmas[i + 1]
        for r in range(resample_times if inpaint is not None else 1):
            x0_hat = _call_denoise(denoise, x, time_batch)
            if sampler == "ddpm":
                x_next = ddpm_step(x, x0_hat, a_t, s_t, a_s, s_s, randn_like(x, generator))
            elif sampler == "ddim":
                noise = randn_like(x, generator) if stochastic else None
                x_next = ddim_step(x, x0_hat, a_t, s_t, a_s, s_s, eta=eta, noise=noise)
            else:
                # multistep history belongs to the trajectory x came from: not after a RePaint re-noising
                second_order = prev_x0_hat is not None and i + 1 < num_times - 1 and r == 0
                x_next = dpmpp_2m_step(
                    x,
                    x0_hat,
                    a_t,
                    s_t,
                    a_s,
                    s_s,
                    prev_x0_hat=prev_x0_hat if second_order else None,
                    h_prev=h_prev if second_order else None,
                )
            if inpaint is not None:
                x_next = paste_known(x_next, i + 1, inpaint)
                if r < resample_times - 1:
                    x_next = renoise_step(x_next, a_s, s_s, a_t, s_t, randn_like(x, generator))
            x = x_next

        prev_x0_hat, h_prev = x0_hat, lambdas[i + 1] - lambdas[i]

    if inpaint is not None:
        known, keep = inpaint
        x0_hat = keep * known + (1 - keep) * x0_hat
    return x0_hat
