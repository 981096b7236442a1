"""What the network predicts (eps, x0 or v), conversions between them, and per-timestep loss weights.

With x_t = alpha x0 + sigma eps and v = alpha eps - sigma x0 (Salimans & Ho 2022). `alpha` and `sigma` may be
Python floats, per-sample tensors of shape (b,) or tensors already shaped like x; they are right-padded to
broadcast against the data, so every function works with images (b, c, h, w) and videos (b, c, t, h, w) alike.
"""

from __future__ import annotations

from torch import Tensor

from synthesis_core.checks import check_choice
from synthesis_core.diffusion.schedules import right_pad_dims_to

__all__ = [
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
]

OBJECTIVE_ALIASES: dict[str, str] = {
    "eps": "eps",
    "noise": "eps",
    "pred_noise": "eps",
    "x0": "x0",
    "pred_x0": "x0",
    "x_start": "x0",
    "v": "v",
    "pred_v": "v",
}


def normalize_objective(objective: str) -> str:
    """The canonical name ('eps', 'x0' or 'v') of an objective or one of its aliases; ValueError otherwise."""
    check_choice("objective", objective, OBJECTIVE_ALIASES)
    return OBJECTIVE_ALIASES[objective]


def _pad(value: Tensor | float, x: Tensor) -> Tensor | float:
    return right_pad_dims_to(x, value) if isinstance(value, Tensor) else value


def eps_to_x0(eps: Tensor, x_t: Tensor, alpha: Tensor | float, sigma: Tensor | float) -> Tensor:
    """x0 = (x_t - sigma eps) / alpha."""
    return (x_t - _pad(sigma, x_t) * eps) / _pad(alpha, x_t)


def x0_to_eps(x0: Tensor, x_t: Tensor, alpha: Tensor | float, sigma: Tensor | float) -> Tensor:
    """eps = (x_t - alpha x0) / sigma."""
    return (x_t - _pad(alpha, x_t) * x0) / _pad(sigma, x_t)


def v_to_x0(v: Tensor, x_t: Tensor, alpha: Tensor | float, sigma: Tensor | float) -> Tensor:
    """x0 = (alpha x_t - sigma v) / (alpha^2 + sigma^2) (the denominator is 1 for VP schedules)."""
    alpha, sigma = _pad(alpha, x_t), _pad(sigma, x_t)
    return (alpha * x_t - sigma * v) / (alpha**2 + sigma**2)


def v_to_eps(v: Tensor, x_t: Tensor, alpha: Tensor | float, sigma: Tensor | float) -> Tensor:
    """eps = (sigma x_t + alpha v) / (alpha^2 + sigma^2)."""
    alpha, sigma = _pad(alpha, x_t), _pad(sigma, x_t)
    return (sigma * x_t + alpha * v) / (alpha**2 + sigma**2)


def x0_eps_to_v(x0: Tensor, eps: Tensor, alpha: Tensor | float, sigma: Tensor | float) -> Tensor:
    """v = alpha eps - sigma x0."""
    return _pad(alpha, x0) * eps - _pad(sigma, x0) * x0


def pred_to_x0(pred: Tensor, x_t: Tensor, alpha: Tensor | float, sigma: Tensor | float, objective: str) -> Tensor:
    """The network output `pred` (under `objective`) converted to an x0 estimate."""
    objective = normalize_objective(objective)
    if objective == "eps":
        return eps_to_x0(pred, x_t, alpha, sigma)
    if objective == "v":
        return v_to_x0(pred, x_t, alpha, sigma)
    return pred


def pred_to_eps(pred: Tensor, x_t: Tensor, alpha: Tensor | float, sigma: Tensor | float, objective: str) -> Tensor:
    """The network output `pred` (under `objective`) converted to a noise estimate."""
    objective = normalize_objective(objective)
    if objective == "eps":
        return pred
    if objective == "v":
        return v_to_eps(pred, x_t, alpha, sigma)
    return x0_to_eps(pred, x_t, alpha, sigma)


def x0_to_target(x0: Tensor, noise: Tensor, alpha: Tensor | float, sigma: Tensor | float, objective: str) -> Tensor:
    """The regression target of the network for clean data `x0` noised with `noise`: noise, x0 or v."""
    objective = normalize_objective(objective)
    if objective == "eps":
        return noise
    if objective == "v":
        return x0_eps_to_v(x0, noise, alpha, sigma)
    return x0


def min_snr_weight(snr: Tensor, gamma: float = 5.0, objective: str = "eps") -> Tensor:
    """Min-SNR-gamma loss weight (Hang et al. 2023) for a loss on the `objective` target.

    The x0-MSE weighted by min(snr, gamma) is rewritten for each target: eps -> min(snr, gamma) / snr,
    x0 -> min(snr, gamma), v -> min(snr, gamma) / (snr + 1).
    """
    objective = normalize_objective(objective)
    clipped = snr.clamp(max=gamma)
    if objective == "eps":
        return clipped / snr
    if objective == "v":
        return clipped / (snr + 1)
    return clipped


def p2_weight(snr: Tensor, k: float = 1.0, gamma: float = 0.0) -> Tensor:
    """P2 loss weight (Choi et al. 2022): (k + snr)^-gamma; gamma = 0 gives uniform weights."""
    return (k + snr) ** -gamma
