"""Noise schedules of variance-preserving diffusion: x_t = alpha_t * x0 + sigma_t * eps with alpha^2 + sigma^2 = 1.

Two kinds of schedule share one small interface (`alpha_sigma`, `log_snr`, `snr`, `add_noise`,
`sample_training_times`, `noisiest_time`, `cleanest_time`), so the samplers never ask which one they hold:

- `DiscreteSchedule(betas)`: integer times `0 .. T-1` (0 is the cleanest), DDPM style.
- `ContinuousSchedule(kind)`: float times in [0, 1] (0 is the cleanest) through a log-SNR function.

Tables are computed in float64 (the cumulative product of 1000 betas loses digits in float32) and values are
handed out as float32 on the device of the times that were asked for.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import ClassVar, Literal

import torch
from torch import Tensor

from synthesis_core.checks import check_choice, check_in_range, check_positive_int, check_tensor

__all__ = [
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
]


def right_pad_dims_to(x: Tensor, t: Tensor) -> Tensor:
    """View `t` (e.g. per-sample values of shape (b,)) with trailing singleton dims so it broadcasts against `x`."""
    padding = x.ndim - t.ndim
    if padding <= 0:
        return t
    return t.reshape(*t.shape, *((1,) * padding))


def _table_dtype(device: torch.device) -> torch.dtype:
    # float64 everywhere it exists; Apple's MPS has no float64
    return torch.float32 if device.type == "mps" else torch.float64


# ---------------------------------------------------------------------------------------------------------------
# discrete-time beta schedules


def linear_beta_schedule(timesteps: int) -> Tensor:
    """Ho et al. 2020: betas from 1e-4 to 0.02 for 1000 steps, rescaled so other step counts keep the same end SNR.

    With 20 steps or fewer the rescaled betas would reach 1 (a schedule that destroys the image in one step and
    divides by zero in the posterior), so they are clipped to 0.999 like the cosine schedule's.
    """
    check_positive_int("timesteps", timesteps)
    scale = 1000 / timesteps
    return torch.linspace(scale * 1e-4, scale * 0.02, timesteps, dtype=torch.float64).clamp(max=0.999)


def cosine_beta_schedule(timesteps: int, s: float = 0.008) -> Tensor:
    """Nichol & Dhariwal 2021: alphas_cumprod = cos((t/T + s) / (1 + s) * pi/2)^2, betas clipped to 0.999."""
    check_positive_int("timesteps", timesteps)
    t = torch.linspace(0, timesteps, timesteps + 1, dtype=torch.float64) / timesteps
    alphas_cumprod = torch.cos((t + s) / (1 + s) * math.pi * 0.5) ** 2
    alphas_cumprod = alphas_cumprod / alphas_cumprod[0]
    betas = 1 - (alphas_cumprod[1:] / alphas_cumprod[:-1])
    return betas.clamp(0, 0.999)


def sigmoid_beta_schedule(timesteps: int, start: float = -3.0, end: float = 3.0, tau: float = 1.0) -> Tensor:
    """Jabri et al. 2022: alphas_cumprod follows a rescaled sigmoid over [start, end]; betas clipped to 0.999."""
    check_positive_int("timesteps", timesteps)
    if not end > start:
        raise ValueError(f"sigmoid_beta_schedule: expected end > start, got start={start}, end={end}")
    t = torch.linspace(0, timesteps, timesteps + 1, dtype=torch.float64) / timesteps
    v_start = torch.tensor(start / tau, dtype=torch.float64).sigmoid()
    v_end = torch.tensor(end / tau, dtype=torch.float64).sigmoid()
    alphas_cumprod = (-((t * (end - start) + start) / tau).sigmoid() + v_end) / (v_end - v_start)
    alphas_cumprod = alphas_cumprod / alphas_cumprod[0]
    betas = 1 - (alphas_cumprod[1:] / alphas_cumprod[:-1])
    return betas.clamp(0, 0.999)


BETA_SCHEDULES: dict[str, Callable[[int], Tensor]] = {
    "linear": linear_beta_schedule,
    "cosine": cosine_beta_schedule,
    "sigmoid": sigmoid_beta_schedule,
}


class DiscreteSchedule:
    """A DDPM schedule over integer times 0 .. T-1 (time 0 is the cleanest, T-1 the noisiest).

    `alpha_sigma(t)` gives alpha = sqrt(alphas_cumprod[t]) and sigma = sqrt(1 - alphas_cumprod[t]) as float32 on
    t's device. Not an `nn.Module` on purpose: `model.half()` must never round the float64 tables. Call
    `.to(device)` once to keep the tables next to the model; otherwise they are copied on each call.
    """

    # a Literal class attribute, so `if schedule.is_discrete:` narrows a `Schedule` union for type checkers
    is_discrete: ClassVar[Literal[True]] = True

    def __init__(self, betas: Tensor):
        check_tensor("betas", betas, ndim=1, dtype_floating=True)
        betas = betas.detach().to(dtype=torch.float64)
        if betas.numel() == 0 or not bool(((betas > 0) & (betas < 1)).all()):
            raise ValueError(
                f"betas: expected a non-empty 1D tensor with values in (0, 1), got shape {tuple(betas.shape)}"
            )
        self.betas = betas
        self.alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)

    @classmethod
    def from_name(cls, kind: str, timesteps: int = 1000, **kwargs) -> DiscreteSchedule:
        """`DiscreteSchedule.from_name('cosine', 1000)`; kind in 'linear' | 'cosine' | 'sigmoid'."""
        check_choice("kind", kind, BETA_SCHEDULES)
        return cls(BETA_SCHEDULES[kind](timesteps, **kwargs))

    @property
    def num_timesteps(self) -> int:
        return self.betas.shape[0]

    @property
    def timesteps(self) -> Tensor:
        """All times, descending: T-1, ..., 0 (the full DDPM sampling sequence)."""
        return torch.arange(self.num_timesteps - 1, -1, -1, device=self.betas.device)

    @property
    def noisiest_time(self) -> int:
        return self.num_timesteps - 1

    @property
    def cleanest_time(self) -> int:
        return 0

    @property
    def time_dtype(self) -> torch.dtype:
        return torch.long

    def to(self, device: torch.device | str) -> DiscreteSchedule:
        """Move the tables (kept in float64, or float32 on MPS) to `device`; returns self."""
        device = torch.device(device)
        self.betas = self.betas.to(device=device, dtype=_table_dtype(device))
        self.alphas_cumprod = self.alphas_cumprod.to(device=device, dtype=_table_dtype(device))
        return self

    def _gather(self, table: Tensor, t: Tensor) -> Tensor:
        if not isinstance(t, Tensor):
            t = torch.as_tensor(t)
        if t.is_floating_point():
            raise TypeError(f"t: a DiscreteSchedule expects integer time indices, got dtype {t.dtype}")
        table = table.to(device=t.device, dtype=_table_dtype(t.device))
        return table[t.long()]

    def alpha_sigma(self, t: Tensor, dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
        """(alpha, sigma) at integer times `t` (any shape), in `dtype` (float32; float64 keeps the table's
        precision) on t's device."""
        alphas_cumprod = self._gather(self.alphas_cumprod, t)
        return alphas_cumprod.sqrt().to(dtype), (1.0 - alphas_cumprod).sqrt().to(dtype)

    def log_snr(self, t: Tensor) -> Tensor:
        alphas_cumprod = self._gather(self.alphas_cumprod, t)
        return (alphas_cumprod.log() - torch.log1p(-alphas_cumprod)).float()

    def snr(self, t: Tensor) -> Tensor:
        alphas_cumprod = self._gather(self.alphas_cumprod, t)
        return (alphas_cumprod / (1.0 - alphas_cumprod)).float()

    def add_noise(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """Sample q(x_t | x0) = alpha_t x0 + sigma_t noise, `t` of shape (b,)."""
        return _add_noise(self, x0, t, noise)

    def sample_training_times(
        self, batch_size: int, device: torch.device | str | None = None, generator: torch.Generator | None = None
    ) -> Tensor:
        """Uniform integer times in [0, T) of shape (batch_size,)."""
        return torch.randint(0, self.num_timesteps, (batch_size,), device=device, generator=generator)

    def __repr__(self) -> str:
        return f"DiscreteSchedule(num_timesteps={self.num_timesteps})"


# ---------------------------------------------------------------------------------------------------------------
# continuous-time log-SNR schedules


def log_snr_linear(t: Tensor) -> Tensor:
    """Kingma et al. 2021 (VDM) linear schedule: log_snr = -log(expm1(1e-4 + 10 t^2)); about 9.2 at t=0, -10 at t=1."""
    return -torch.log(torch.special.expm1(1e-4 + 10 * t**2))


def log_snr_cosine(t: Tensor, s: float = 0.008) -> Tensor:
    """The cosine schedule in log-SNR form: -log(cos((t + s) / (1 + s) * pi/2)^-2 - 1), argument clamped at 1e-5."""
    return -torch.log((torch.cos((t + s) / (1 + s) * math.pi * 0.5) ** -2 - 1).clamp(min=1e-5))


def _time_from_log_snr_linear(log_snr: Tensor) -> Tensor:
    # expm1(1e-4 + 10 t^2) = exp(-log_snr)  <=>  1e-4 + 10 t^2 = softplus(-log_snr)
    return ((torch.nn.functional.softplus(-log_snr) - 1e-4).clamp(min=0) / 10).sqrt()


def _time_from_log_snr_cosine(log_snr: Tensor, s: float = 0.008) -> Tensor:
    # cos^-2(theta) - 1 = tan^2(theta) = exp(-log_snr)  <=>  theta = atan(exp(-log_snr / 2))
    theta = torch.atan(torch.exp(-log_snr / 2))
    return theta * 2 / math.pi * (1 + s) - s


LOG_SNR_SCHEDULES: dict[str, tuple[Callable[[Tensor], Tensor], Callable[[Tensor], Tensor]]] = {
    "linear": (log_snr_linear, _time_from_log_snr_linear),
    "cosine": (log_snr_cosine, _time_from_log_snr_cosine),
}


def alpha_sigma_from_log_snr(log_snr: Tensor) -> tuple[Tensor, Tensor]:
    """alpha^2 = sigmoid(log_snr), sigma^2 = sigmoid(-log_snr) (so alpha^2 + sigma^2 = 1 and log(alpha^2/sigma^2) = log_snr)."""
    return log_snr.sigmoid().sqrt(), (-log_snr).sigmoid().sqrt()


class ContinuousSchedule:
    """A continuous-time VP schedule over t in [0, 1] (0 is the cleanest, 1 the noisiest), as in Imagen / VDM.

    `kind` is 'cosine' or 'linear' (see `log_snr_cosine`, `log_snr_linear`). Values are computed in float64 and
    returned as float32 on t's device. `time_from_log_snr` inverts the schedule (used for Karras-spaced sampling).
    """

    is_discrete: ClassVar[Literal[False]] = False
    noisiest_time = 1.0
    cleanest_time = 0.0
    time_dtype = torch.float32

    def __init__(self, kind: str = "cosine"):
        check_choice("kind", kind, LOG_SNR_SCHEDULES)
        self.kind = kind
        self._log_snr_fn, self._inverse_fn = LOG_SNR_SCHEDULES[kind]

    def to(self, device: torch.device | str) -> ContinuousSchedule:
        """Nothing to move (no tables); returns self so both schedule kinds can be moved the same way."""
        return self

    def _as_times(self, t: Tensor | float) -> Tensor:
        if not isinstance(t, Tensor):
            t = torch.as_tensor(t, dtype=torch.float64)
        return t.to(_table_dtype(t.device))

    def log_snr(self, t: Tensor | float) -> Tensor:
        return self._log_snr_fn(self._as_times(t)).float()

    def snr(self, t: Tensor | float) -> Tensor:
        return self._log_snr_fn(self._as_times(t)).exp().float()

    def alpha_sigma(self, t: Tensor | float, dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
        """(alpha, sigma) at float times `t` in [0, 1] (any shape), in `dtype` (float32; float64 keeps the
        precision of the computation) on t's device."""
        alpha, sigma = alpha_sigma_from_log_snr(self._log_snr_fn(self._as_times(t)))
        return alpha.to(dtype), sigma.to(dtype)

    def time_from_log_snr(self, log_snr: Tensor | float) -> Tensor:
        """The time t in [0, 1] whose log-SNR is `log_snr` (clamped into [0, 1])."""
        return self._inverse_fn(self._as_times(log_snr)).clamp(0, 1).float()

    def add_noise(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """Sample q(x_t | x0) = alpha_t x0 + sigma_t noise, `t` of shape (b,)."""
        return _add_noise(self, x0, t, noise)

    def sample_training_times(
        self, batch_size: int, device: torch.device | str | None = None, generator: torch.Generator | None = None
    ) -> Tensor:
        """Uniform float times in [0, 1) of shape (batch_size,)."""
        return torch.rand((batch_size,), device=device, generator=generator)

    def __repr__(self) -> str:
        return f"ContinuousSchedule(kind={self.kind!r})"


Schedule = DiscreteSchedule | ContinuousSchedule


def _add_noise(schedule: Schedule, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
    if x0.shape != noise.shape:
        raise ValueError(f"noise: expected the shape of x0 {tuple(x0.shape)}, got {tuple(noise.shape)}")
    alpha, sigma = schedule.alpha_sigma(t)
    alpha, sigma = right_pad_dims_to(x0, alpha), right_pad_dims_to(x0, sigma)
    return (alpha * x0 + sigma * noise).to(x0.dtype)


def make_schedule(kind: str = "cosine", timesteps: int | None = None) -> Schedule:
    """A `ContinuousSchedule(kind)` when `timesteps` is None, else `DiscreteSchedule.from_name(kind, timesteps)`."""
    if timesteps is None:
        return ContinuousSchedule(kind)
    return DiscreteSchedule.from_name(kind, timesteps)


# ---------------------------------------------------------------------------------------------------------------
# sampling time grids


def karras_sigmas(
    num_steps: int,
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
    rho: float = 7.0,
    device: torch.device | str | None = None,
) -> Tensor:
    """Karras et al. 2022 eq. 5: `num_steps` noise levels from sigma_max down to sigma_min, then a final 0.

    sigma_i = (sigma_max^(1/rho) + i / (N - 1) * (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho; shape (num_steps + 1,).
    """
    check_positive_int("num_steps", num_steps)
    check_in_range("sigma_min", sigma_min, 0.0, None)
    check_in_range("sigma_max", sigma_max, sigma_min, None)
    ramp = torch.linspace(0, 1, num_steps, dtype=torch.float64)
    min_inv_rho, max_inv_rho = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    sigmas = (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho
    sigmas = torch.cat((sigmas, sigmas.new_zeros(1)))
    return sigmas.float().to(device)


def _ve_sigmas_from_log_snr(log_snr: Tensor) -> Tensor:
    # the noise level of x_t / alpha_t (the "VE" view used by Karras et al.): sigma / alpha = exp(-log_snr / 2)
    return torch.exp(-log_snr.double() / 2)


def sampling_times(
    schedule: Schedule,
    steps: int,
    *,
    karras: bool = False,
    rho: float = 7.0,
    sigma_min: float | None = None,
    sigma_max: float | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """A descending 1D tensor of `steps` model times for `sample_vp`, ending at the schedule's cleanest time.

    The sampler evaluates the model once per entry (the last evaluation gives the output), so `steps` is the
    number of model calls. Evenly spaced by default: integer indices from T-1 to 0 for a `DiscreteSchedule`,
    floats from 1 to 0 for a `ContinuousSchedule`.

    `karras=True` instead picks times whose noise levels sigma/alpha follow the Karras et al. spacing between
    `sigma_max` (default: the schedule's noisiest level, capped at 80) and `sigma_min` (default: the cleanest
    level): through the inverse log-SNR for a `ContinuousSchedule`, by nearest indices (kept strictly
    descending) for a `DiscreteSchedule`.
    """
    check_positive_int("steps", steps)
    if schedule.is_discrete:
        if steps > schedule.num_timesteps:
            raise ValueError(f"steps: expected at most num_timesteps={schedule.num_timesteps}, got {steps}")
        all_times = torch.arange(schedule.num_timesteps)
    if not karras:
        if schedule.is_discrete:
            times = torch.linspace(schedule.num_timesteps - 1, 0, steps, dtype=torch.float64).round().long()
        else:
            times = torch.linspace(1.0, 0.0, steps)
        return times.to(device)

    # Karras spacing in the VE noise level of x_t / alpha_t
    if schedule.is_discrete:
        table = _ve_sigmas_from_log_snr(schedule.log_snr(all_times))
        noisiest, cleanest = table[-1].item(), table[0].item()
    else:
        ends = _ve_sigmas_from_log_snr(schedule.log_snr(torch.tensor([1.0, 0.0])))
        noisiest, cleanest = ends[0].item(), ends[1].item()
    # clamp to the schedule's range so the times stay strictly descending (no repeated end times)
    sigma_max = min(noisiest, 80.0 if sigma_max is None else sigma_max)
    sigma_min = max(cleanest, 0.0 if sigma_min is None else sigma_min)
    if not sigma_max > sigma_min:
        raise ValueError(
            f"sigma_max: expected more than sigma_min within the schedule's range [{cleanest:.4g}, {noisiest:.4g}], "
            f"got sigma_min={sigma_min:.4g}, sigma_max={sigma_max:.4g}"
        )
    targets = karras_sigmas(steps, sigma_min=sigma_min, sigma_max=sigma_max, rho=rho)[:-1].double()

    if not schedule.is_discrete:
        times = schedule.time_from_log_snr(-2 * targets.log())
        return times.float().to(device)

    # nearest index in log-sigma; karras steps near the clean end can be finer than one index, so then force
    # strictly descending indices (upwards from the bottom, then downwards from the top; steps <= T makes it fit)
    nearest = (table.log()[None, :] - targets.log()[:, None]).abs().argmin(dim=1).tolist()
    for i in range(steps - 2, -1, -1):
        nearest[i] = max(nearest[i], nearest[i + 1] + 1)
    nearest[0] = min(nearest[0], schedule.num_timesteps - 1)
    for i in range(1, steps):
        nearest[i] = min(nearest[i], nearest[i - 1] - 1)
    return torch.tensor(nearest, dtype=torch.long, device=device)
