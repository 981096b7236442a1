"""The Gaussian diffusion around a denoising network, written once for every package that wraps one.

`DiffusionWrapper` is what video-diffusion's `GaussianDiffusion`, make-a-video's `MakeAVideo` and each Gaussian
stage of imagen's cascade have in common; they configure it and say how to call their network:

```
class MyDiffusion(DiffusionWrapper, nn.Module):
    def __init__(self, unet):
        super().__init__()
        self.unet = unet
        self.configure_diffusion(schedule=DiscreteSchedule.from_name("cosine", 1000), objective="v",
                                 loss_type="l2", min_snr_gamma=5.0)

    @property
    def network(self):
        return self.unet

    def forward(self, videos):                                  # videos in [0, 1]
        return self.diffusion_loss(self.to_model_range("videos", videos))

    def sample(self, shape, cond_scale=3.0, generator=None):
        times = sampling_times(self.schedule, 25)
        x0 = sample_vp(self.denoiser(cond_scale), self.initial_noise(shape, generator), times, self.schedule,
                       sampler="dpmpp_2m", generator=generator)
        return self.to_pixels(x0)
```

What it holds, reading top to bottom:

- inputs: pixels at the API -> [-1, 1] (`to_model_range`, the shared rule of `checks.check_pixels`) and back;
- training: the loss between the network's output and its target (l1 / l2 / huber, per sample, optionally
  masked), weighted by min-SNR (Hang et al. 2023) and P2 (Choi et al. 2022) (`diffusion_loss`);
- sampling: the network's classifier-free guided prediction (`model_output` with `cond_scale`: the conditional and
  the null branch in one batch, through the network's `forward_with_cond_scale`, which batches them with
  `guidance.batched_cond_uncond` and combines them with `cfg_combine`), turned into a thresholded x0
  estimate (static clamp or Imagen's dynamic thresholding) by the closure handed to the core samplers
  (`denoiser`, with self-conditioning); inpainting is the `inpaint=` of `sample_vp`;
- the DDPM internals of the published packages (Ho et al. 2020), on the wrapper's own schedule: `q_sample`,
  `q_mean_variance`, `q_posterior`, `predict_start_from_noise`, `p_mean_variance`, `p_sample`, `p_sample_loop`,
  `p_losses`. On a `DiscreteSchedule` the reverse step goes from t to t - 1; on a `ContinuousSchedule` it goes
  from t to `t_next` (default t - 1 / num_timesteps), as in the published imagen's continuous-time scheduler.

It is a mixin (no `__init__`, no parameters of its own): a subclass keeps its own constructor keywords and
parameter names, so checkpoints saved before still load.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from synthesis_core import checks
from synthesis_core.diffusion import parameterization
from synthesis_core.diffusion.guidance import dynamic_threshold, static_threshold
from synthesis_core.diffusion.samplers import VP_SAMPLERS, posterior_coefficients, randn_like
from synthesis_core.diffusion.schedules import ContinuousSchedule, DiscreteSchedule, right_pad_dims_to

__all__ = ["LOSS_TYPES", "per_sample_loss", "self_conditioning_denoiser", "DiffusionWrapper"]

LOSS_TYPES = ("l1", "l2", "huber")

Denoise = Callable[[Tensor, Tensor], Tensor]


def per_sample_loss(pred: Tensor, target: Tensor, loss_type: str = "l2", loss_mask: Tensor | None = None) -> Tensor:
    """The `loss_type` ('l1', 'l2' or 'huber') between `pred` and `target`, one value per sample (b,), in float32.

    Averaged over every non-batch dim, or over the entries where `loss_mask` (broadcastable to `pred`, 1 = counted)
    is set.
    """
    checks.check_choice("loss_type", loss_type, LOSS_TYPES)
    pred, target = pred.float(), target.float()
    if loss_type == "l1":
        losses = F.l1_loss(pred, target, reduction="none")
    elif loss_type == "huber":
        losses = F.smooth_l1_loss(pred, target, reduction="none")
    else:
        losses = F.mse_loss(pred, target, reduction="none")
    if loss_mask is None:
        return losses.flatten(1).mean(dim=1)
    loss_mask = loss_mask.to(losses.dtype).expand_as(losses)
    return (losses * loss_mask).flatten(1).sum(dim=1) / loss_mask.flatten(1).sum(dim=1).clamp(min=1.0)


def self_conditioning_denoiser(estimate_x0: Callable[[Tensor, Tensor, Tensor | None], Tensor]) -> Denoise:
    """The closure `denoise(x_t, time) -> x0` for a sampler, from `estimate_x0(x_t, time, previous_x0)`.

    `previous_x0` is the estimate returned by the previous call (None at the first), what a self-conditioned
    network (Chen et al. 2022) takes as its `self_cond` input; an estimator that does not self-condition ignores it.
    A 0-d `time` is expanded to the batch.
    """
    previous: list[Tensor | None] = [None]

    def denoise(x_t: Tensor, time: Tensor) -> Tensor:
        time = time.expand(x_t.shape[0]) if time.ndim == 0 else time
        x0 = estimate_x0(x_t, time, previous[0])
        previous[0] = x0
        return x0

    return denoise


class DiffusionWrapper:
    """Gaussian (variance-preserving) diffusion around a network; see the module docstring.

    A subclass calls `configure_diffusion(...)` in its constructor and provides `network` (the module whose
    `forward(x_t, times, **kwargs)` is trained and whose `forward_with_cond_scale(x_t, times, cond_scale=..., **kwargs)`
    is sampled); it may override `model_output` to prepare its condition first.
    """

    schedule: DiscreteSchedule | ContinuousSchedule
    objective: str
    loss_type: str
    min_snr_gamma: float
    p2_loss_weight_gamma: float
    dynamic_thresholding: bool
    dynamic_thresholding_percentile: float
    input_range: str
    continuous_steps: int
    cond_drop_prob: float
    sampler: str
    sample_steps: int | None
    # The part of the noise range that training draws its times from, as fractions of the schedule's time axis:
    # (0, 1) is the usual uniform draw. A warm-up on (0.8, 1) first teaches what only the condition can decide
    # (where each frame's content goes, hence the motion a caption names), which a uniform draw reaches late.
    # A training setting, not part of the saved config.
    training_time_range: tuple[float, float] = (0.0, 1.0)

    def configure_diffusion(
        self,
        *,
        schedule: DiscreteSchedule | ContinuousSchedule,
        objective: str = "eps",
        loss_type: str = "l2",
        min_snr_gamma: float = 0.0,
        p2_loss_weight_gamma: float = 0.0,
        dynamic_thresholding: bool = False,
        dynamic_thresholding_percentile: float = 0.95,
        input_range: str = "auto",
        continuous_steps: int = 1000,
        cond_drop_prob: float = 0.0,
        sampler: str = "ddpm",
        sample_steps: int | None = None,
    ) -> None:
        """Set what the methods read.

        - `schedule`: a `DiscreteSchedule` (integer times, DDPM) or a `ContinuousSchedule` (times in [0, 1]).
        - `objective`: what the network predicts, 'eps', 'x0' or 'v' (aliases as in `normalize_objective`).
        - `loss_type`: 'l1', 'l2' or 'huber'; `min_snr_gamma` > 0 weights it by min-SNR-gamma, and
          `p2_loss_weight_gamma` > 0 by P2 (0 switches either off).
        - `dynamic_thresholding`: x0 estimates are dynamically thresholded at `dynamic_thresholding_percentile`
          when sampling (else clamped to [-1, 1]).
        - `input_range`: how `to_model_range` reads pixels ('auto', 'unit' or 'symmetric', see `check_pixels`).
        - `continuous_steps`: the steps of `p_sample_loop` (and the default t - t_next) on a continuous schedule.
        - `cond_drop_prob`, `sampler`, `sample_steps`: the defaults of the subclass's training and sampling calls
          (condition dropout, 'ddpm' / 'ddim' / 'dpmpp_2m', model calls; None: every step).
        """
        if not isinstance(schedule, (DiscreteSchedule, ContinuousSchedule)):
            raise TypeError(
                f"schedule: expected a DiscreteSchedule or ContinuousSchedule, got {type(schedule).__name__}"
            )
        checks.check_choice("loss_type", loss_type, LOSS_TYPES)
        checks.check_in_range("min_snr_gamma", min_snr_gamma, 0.0, None)
        checks.check_in_range("p2_loss_weight_gamma", p2_loss_weight_gamma, 0.0, None)
        checks.check_in_range("dynamic_thresholding_percentile", dynamic_thresholding_percentile, 0.0, 1.0)
        checks.check_choice("input_range", input_range, ("auto", "unit", "symmetric"))
        checks.check_positive_int("continuous_steps", continuous_steps)
        checks.check_in_range("cond_drop_prob", cond_drop_prob, 0.0, 1.0)
        checks.check_choice("sampler", sampler, VP_SAMPLERS)
        if sample_steps is not None:
            checks.check_positive_int("sample_steps", sample_steps)
        self.schedule = schedule
        self.objective = parameterization.normalize_objective(objective)
        self.loss_type = loss_type
        self.min_snr_gamma = float(min_snr_gamma)
        self.p2_loss_weight_gamma = float(p2_loss_weight_gamma)
        self.dynamic_thresholding = bool(dynamic_thresholding)
        self.dynamic_thresholding_percentile = float(dynamic_thresholding_percentile)
        self.input_range = input_range
        self.continuous_steps = continuous_steps
        self.cond_drop_prob = float(cond_drop_prob)
        self.sampler = sampler
        self.sample_steps = sample_steps

    # -- the network ---------------------------------------------------------------------------------------------

    @property
    def network(self) -> nn.Module:
        """The denoising network; provided by the subclass."""
        raise NotImplementedError

    @property
    def device(self) -> torch.device:
        return next(self.network.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """The network's parameter dtype: inputs in another float dtype are cast to it."""
        return next(self.network.parameters()).dtype

    @property
    def num_timesteps(self) -> int:
        """Steps of the DDPM chain: the discrete schedule's length, or `continuous_steps`."""
        if isinstance(self.schedule, DiscreteSchedule):
            return self.schedule.num_timesteps
        return self.continuous_steps

    def model_output(
        self, x_t: Tensor, times: Tensor, *, cond_scale: float | Tensor | None = None, **model_kwargs
    ) -> Tensor:
        """The network's output at `(x_t, times)`. Training (`cond_scale=None`): its `forward` with the training
        keywords (condition dropout included). Sampling: its classifier-free guided prediction, the conditional
        and the null branch in one batch (`forward_with_cond_scale`; `cond_scale=1` is the plain conditional one)."""
        if cond_scale is None:
            return self.network(x_t, times, **model_kwargs)
        guided = getattr(self.network, "forward_with_cond_scale")  # noqa: B009 (an nn.Module attribute to mypy)
        return guided(x_t, times, cond_scale=cond_scale, **model_kwargs)

    # -- inputs ----------------------------------------------------------------------------------------------

    def to_model_range(self, name: str, pixels: Tensor) -> Tensor:
        """Pixels at the API -> [-1, 1] in the network's dtype and on its device, by the rule every package
        shares (`check_pixels` with `input_range`): clear errors for NaN / inf, 0-255 floats, another device."""
        return checks.check_pixels(
            name, pixels, device=self.device, dtype=self.dtype, input_range=self.input_range, output_range="symmetric"
        )

    @staticmethod
    def to_pixels(x: Tensor) -> Tensor:
        """[-1, 1] -> pixels in [0, 1] (clamped)."""
        return ((x + 1) / 2).clamp(0.0, 1.0)

    @staticmethod
    def sampling_batch(
        batch_size: int | None, default_batch_size: int, *conditions: Tensor | None
    ) -> tuple[int, list[Tensor | None]]:
        """The batch size of a sampling call and its `conditions` (batch-first tensors or None) repeated to it: the
        conditions' batch when given (a batch of 1 repeated to `batch_size`), else `batch_size`, else the default."""
        given = [condition for condition in conditions if condition is not None]
        if not given:
            return checks.check_positive_int(
                "batch_size", batch_size if batch_size is not None else default_batch_size
            ), list(conditions)
        held = given[0].shape[0]
        if batch_size is None or batch_size == held:
            return held, list(conditions)
        if held != 1:
            raise ValueError(f"batch_size: the condition holds {held} samples, got batch_size={batch_size}")
        checks.check_positive_int("batch_size", batch_size)
        return batch_size, [None if c is None else c.expand(batch_size, *c.shape[1:]) for c in conditions]

    def initial_noise(
        self, shape: tuple[int, ...], generator: torch.Generator | None = None, device: torch.device | None = None
    ) -> Tensor:
        """N(0, 1) of `shape` on `device` (default the network's), drawn on the generator's device when one is
        given (a CPU generator gives the same numbers whatever the device)."""
        device = device if device is not None else self.device
        noise_device = generator.device if generator is not None else device
        return torch.randn(shape, generator=generator, device=noise_device).to(device)

    # -- training ----------------------------------------------------------------------------------------------

    def loss_weight(self, times: Tensor) -> Tensor | None:
        """The per-sample weight of the loss at `times` (min-SNR, P2), None when both are off."""
        if self.min_snr_gamma <= 0 and self.p2_loss_weight_gamma <= 0:
            return None
        snr = self.schedule.snr(times)
        weight = torch.ones_like(snr)
        if self.min_snr_gamma > 0:
            weight = weight * parameterization.min_snr_weight(snr, gamma=self.min_snr_gamma, objective=self.objective)
        if self.p2_loss_weight_gamma > 0:
            weight = weight * parameterization.p2_weight(snr, gamma=self.p2_loss_weight_gamma)
        return weight

    def diffusion_loss(
        self,
        x_start: Tensor,
        *,
        times: Tensor | None = None,
        noise: Tensor | None = None,
        loss_mask: Tensor | None = None,
        predict: Callable[[Tensor, Tensor], Tensor] | None = None,
        **model_kwargs,
    ) -> Tensor:
        """The training loss of `x_start` in [-1, 1]: noise it to `times` (default: drawn uniformly) with `noise`
        (default: drawn), regress the network output on its target (`objective`), weight, average.

        `predict(x_t, times) -> output` replaces the network call (self-conditioning, preconditioning); otherwise it
        is `model_output(x_t, times, **model_kwargs)`. `loss_mask` (1 = counted) restricts the loss per sample.
        """
        batch = x_start.shape[0]
        schedule = self.schedule.to(x_start.device)
        if times is None:
            times = self.sample_training_times(batch, device=x_start.device)
        else:
            checks.check_tensor("times", times, shape=(batch,), names=("batch",))
            times = times.to(x_start.device)
        if noise is None:
            noise = torch.randn_like(x_start)
        else:
            checks.check_tensor("noise", noise, shape=tuple(x_start.shape))

        x_t = schedule.add_noise(x_start, times, noise)
        pred = predict(x_t, times) if predict is not None else self.model_output(x_t, times, **model_kwargs)
        alpha, sigma = schedule.alpha_sigma(times)
        target = parameterization.x0_to_target(x_start, noise, alpha, sigma, self.objective)
        losses = per_sample_loss(pred, target, self.loss_type, loss_mask)
        weight = self.loss_weight(times)
        return (losses if weight is None else losses * weight).mean()

    def sample_training_times(self, batch_size: int, device: torch.device | str | None = None) -> Tensor:
        """Training times for a batch, uniform over `training_time_range` of the schedule's time axis."""
        low, high = self.training_time_range
        checks.check_in_range("training_time_range", low, 0.0, 1.0)
        checks.check_in_range("training_time_range", high, 0.0, 1.0)
        if not low < high:
            raise ValueError(f"training_time_range: expected (low, high) with low < high, got {(low, high)}")
        if (low, high) == (0.0, 1.0):
            return self.schedule.sample_training_times(batch_size, device=device)
        fractions = low + (high - low) * torch.rand((batch_size,), device=device)
        if isinstance(self.schedule, DiscreteSchedule):
            steps = self.schedule.num_timesteps
            return (fractions * steps).long().clamp(max=steps - 1)
        return fractions

    # -- sampling -----------------------------------------------------------------------------------------------

    def predict_start(self, pred: Tensor, x_t: Tensor, times: Tensor) -> Tensor:
        """The network output at `(x_t, times)` as an x0 estimate (float32, not thresholded)."""
        alpha, sigma = self.schedule.alpha_sigma(times)
        return parameterization.pred_to_x0(pred.float(), x_t, alpha, sigma, self.objective)

    def threshold(self, x0: Tensor) -> Tensor:
        """Keep an x0 estimate in the data range: dynamic thresholding (Imagen) or a plain clamp to [-1, 1]."""
        if self.dynamic_thresholding:
            return dynamic_threshold(x0, self.dynamic_thresholding_percentile)
        return static_threshold(x0)

    def denoiser(self, cond_scale: float | Tensor = 1.0, *, self_condition: bool = False, **model_kwargs) -> Denoise:
        """The closure the core samplers call: guided prediction -> thresholded x0 estimate. With
        `self_condition=True` the previous step's estimate is the network's `self_cond` input. A float
        `cond_scale` is checked here (finite, >= 0), a per-sample tensor is the caller's."""
        if not isinstance(cond_scale, Tensor):
            checks.check_guidance_scale("cond_scale", cond_scale)

        def estimate_x0(x_t: Tensor, time: Tensor, previous_x0: Tensor | None) -> Tensor:
            extra = {"self_cond": previous_x0} if self_condition else {}
            pred = self.model_output(x_t, time, cond_scale=cond_scale, **model_kwargs, **extra)
            return self.threshold(self.predict_start(pred, x_t, time))

        return self_conditioning_denoiser(estimate_x0)

    # -- the DDPM internals of the published packages ---------------------------------------------------------------

    def _alpha_sigma(self, t: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """(alpha, sigma) at `t` in `dtype` from the schedule's float64 values; a discrete time below 0 is the
        data itself (alpha = 1, sigma = 0), the 'previous time' of t = 0."""
        t = torch.as_tensor(t)
        if not self.schedule.is_discrete:
            alpha, sigma = self.schedule.alpha_sigma(t, dtype=torch.float64)
            return alpha.to(dtype), sigma.to(dtype)
        alpha, sigma = self.schedule.alpha_sigma(t.clamp(min=0), dtype=torch.float64)
        before = t < 0
        return torch.where(before, 1.0, alpha).to(dtype), torch.where(before, 0.0, sigma).to(dtype)

    def _check_time(self, name: str, t: Tensor, x: Tensor) -> Tensor:
        if not isinstance(t, Tensor):
            t = torch.as_tensor(t)
        if self.schedule.is_discrete and t.is_floating_point():
            raise TypeError(
                f"{name}: this model's schedule is discrete; expected integer times in "
                f"[0, {self.num_timesteps - 1}], got dtype {t.dtype}"
            )
        t = t.to(x.device)
        return t.expand(x.shape[0]) if t.ndim == 0 else t

    def previous_time(self, t: Tensor) -> Tensor:
        """The time one reverse step before `t`: t - 1 on a discrete schedule (-1: the data), t - 1 /
        continuous_steps clamped at 0 on a continuous one."""
        if self.schedule.is_discrete:
            return t - 1
        return (t - 1.0 / self.continuous_steps).clamp(min=0.0)

    def _padded(self, x: Tensor, *values: Tensor) -> tuple[Tensor, ...]:
        return tuple(right_pad_dims_to(x, value.to(x.dtype)) for value in values)

    def q_sample(self, x_start: Tensor, t: Tensor, noise: Tensor | None = None) -> Tensor:
        """A sample of q(x_t | x_0) = N(alpha_t x_0, sigma_t^2): `x_start` in [-1, 1] noised to times `t` (b,)."""
        t = self._check_time("t", t, x_start)
        noise = torch.randn_like(x_start) if noise is None else noise
        checks.check_tensor("noise", noise, shape=tuple(x_start.shape))
        alpha, sigma = self._padded(x_start, *self._alpha_sigma(t, torch.float64))
        return alpha * x_start + sigma * noise

    def q_mean_variance(self, x_start: Tensor, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Mean, variance and log-variance of q(x_t | x_0): alpha_t x_0, sigma_t^2 = 1 - abar_t, log(sigma_t^2)."""
        t = self._check_time("t", t, x_start)
        alpha, sigma = self._alpha_sigma(t, torch.float64)
        alpha, variance = self._padded(x_start, alpha, sigma**2)
        return alpha * x_start, variance, variance.log()

    def q_posterior(
        self, x_start: Tensor, x_t: Tensor, t: Tensor, t_next: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Mean, variance and log-variance (clipped at 1e-20, finite at the last step) of the posterior
        q(x_{t_next} | x_t, x_0), t_next defaulting to `previous_time(t)` (t - 1 in DDPM)."""
        t = self._check_time("t", t, x_t)
        t_next = self.previous_time(t) if t_next is None else self._check_time("t_next", t_next, x_t)
        alpha_t, sigma_t = self._alpha_sigma(t, torch.float64)
        alpha_s, sigma_s = self._alpha_sigma(t_next, torch.float64)
        coef_x_t, coef_x0, variance = posterior_coefficients(alpha_t, sigma_t, alpha_s, sigma_s)
        log_variance = variance.clamp(min=1e-20).log()
        coef_x_t, coef_x0, variance, log_variance = self._padded(x_t, coef_x_t, coef_x0, variance, log_variance)
        return coef_x_t * x_t + coef_x0 * x_start, variance, log_variance

    def predict_start_from_noise(self, x_t: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """x_0 = (x_t - sigma_t noise) / alpha_t."""
        t = self._check_time("t", t, x_t)
        alpha, sigma = self._alpha_sigma(t, torch.float64)
        return parameterization.eps_to_x0(noise, x_t, *self._padded(x_t, alpha, sigma))

    def p_mean_variance(
        self,
        x: Tensor,
        t: Tensor,
        cond: object = None,
        cond_scale: float = 1.0,
        clip_denoised: bool = True,
        *,
        t_next: Tensor | None = None,
        return_x_start: bool = False,
        **model_kwargs,
    ) -> tuple[Tensor, ...]:
        """Mean, variance and log-variance of the model's reverse step p(x_{t_next} | x_t): the posterior
        q(x_{t_next} | x_t, x0_hat) at the (guided) prediction's x0 estimate, thresholded when `clip_denoised`
        (`return_x_start=True` adds that estimate as a fourth value)."""
        t = self._check_time("t", t, x)
        if cond is not None:
            model_kwargs["cond"] = cond
        pred = self.model_output(x, t, cond_scale=cond_scale, **model_kwargs)
        alpha, sigma = self._alpha_sigma(t, torch.float64)
        alpha, sigma = self._padded(x, alpha, sigma)
        x0 = parameterization.pred_to_x0(pred.to(x.dtype), x, alpha, sigma, self.objective)
        if clip_denoised:
            x0 = self.threshold(x0)
        posterior = self.q_posterior(x0, x, t, t_next)
        return (*posterior, x0) if return_x_start else posterior

    @torch.no_grad()
    def p_sample(
        self,
        x: Tensor,
        t: Tensor,
        cond: object = None,
        cond_scale: float = 1.0,
        clip_denoised: bool = True,
        *,
        t_next: Tensor | None = None,
        generator: torch.Generator | None = None,
        return_x_start: bool = False,
        **model_kwargs,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """One ancestral step x_t -> x_{t_next} (default t - 1): the reverse mean plus its std times noise; no
        noise on the last step (to the data). `return_x_start=True` returns `(x_{t_next}, x0 estimate)`."""
        t = self._check_time("t", t, x)
        t_next = self.previous_time(t) if t_next is None else self._check_time("t_next", t_next, x)
        mean, _, log_variance, x0 = self.p_mean_variance(
            x, t, cond, cond_scale, clip_denoised, t_next=t_next, return_x_start=True, **model_kwargs
        )
        last = t_next < 0 if self.schedule.is_discrete else t_next <= 0
        keep_noise = right_pad_dims_to(x, (~last).to(x.dtype))
        x_next = mean + keep_noise * (0.5 * log_variance).exp() * randn_like(x, generator)
        return (x_next, x0) if return_x_start else x_next

    @torch.no_grad()
    def p_sample_loop(
        self,
        shape: tuple[int, ...],
        cond: object = None,
        cond_scale: float = 1.0,
        *,
        clip_denoised: bool = True,
        generator: torch.Generator | None = None,
        progress: bool = True,
        **model_kwargs,
    ) -> Tensor:
        """Ancestral DDPM sampling through every step of the chain (`num_timesteps` model calls, see `sample` for
        the fast samplers); returns the samples mapped from [-1, 1] to [0, 1] (not clamped)."""
        device = self.device
        x = self.initial_noise(tuple(shape), generator, device)
        batch = x.shape[0]
        if self.schedule.is_discrete:
            times = torch.arange(self.num_timesteps - 1, -1, -1, device=device)
            pairs = [(times[i], times[i] - 1) for i in range(len(times))]
        else:
            grid = torch.linspace(1.0, 0.0, self.continuous_steps + 1, device=device)
            pairs = list(zip(grid[:-1], grid[1:]))
        for t, t_next in tqdm(pairs, desc="sampling (ddpm)", disable=not progress, leave=False):
            x, _ = self.p_sample(
                x,
                t.expand(batch),
                cond,
                cond_scale,
                clip_denoised,
                t_next=t_next.expand(batch),
                generator=generator,
                return_x_start=True,
                **model_kwargs,
            )
        return (x + 1) * 0.5

    def p_losses(
        self, x_start: Tensor, t: Tensor, cond: object = None, noise: Tensor | None = None, **model_kwargs
    ) -> Tensor:
        """The training loss of `x_start` in [-1, 1] at times `t` (b,) with `noise` (default: drawn); the other
        keywords go to the network's forward (e.g. its condition dropout)."""
        t = self._check_time("t", t, x_start)
        if cond is not None:
            model_kwargs["cond"] = cond
        return self.diffusion_loss(x_start, times=t, noise=noise, **model_kwargs)
