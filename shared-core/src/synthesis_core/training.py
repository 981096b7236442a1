"""The training loop every package's trainer builds on: accelerate + ema-pytorch + safetensors checkpoints.

A package trainer registers what it trains and drives the loop itself:

```
class MyTrainer(BaseTrainer):
    def __init__(self, model, **kwargs):
        super().__init__(**kwargs)
        self.add_model("model", model, lr=1e-4, warmup_steps=100, total_steps=10_000, max_grad_norm=1.0)

    def train_step(self, batch, max_batch_size=None):
        for fraction, (chunk,), _ in split_batch(max_batch_size, batch):
            with self.autocast():
                loss = self.models["model"](chunk)
            self.backward(loss, "model", fraction=fraction)
        self.step("model")   # clip, NaN/inf guard, optimizer, scheduler, EMA, step counter
```

Works on CPU with no code change (no `.cuda()`), under DDP (every process calls every method; saving is done
by the main process between barriers, so nothing deadlocks) and never prompts.
"""
from __future__ import annotations

import json
import logging
import math
import random
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, PartialState
from accelerate.utils import DistributedDataParallelKwargs, set_seed
from ema_pytorch import EMA
from torch import nn
from torch.optim.lr_scheduler import LambdaLR
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from synthesis_core.checkpoint import (
    CheckpointError,
    CheckpointManager,
    PretrainedMixin,
    class_path,
    flatten_state_dict,
    load_checkpoint,
    load_state_dict_checked,
    package_info,
    save_checkpoint,
    unflatten_state_dict,
)
from synthesis_core.checks import check_choice, check_positive_int
from synthesis_core.utils import frozen

logger = logging.getLogger(__name__)

TRAINER_FORMAT = "synthesis-trainer"
TRAINER_FORMAT_VERSION = 1


# ----------------------------------------------------------------------------------------------------------------
# small helpers
# ----------------------------------------------------------------------------------------------------------------

class warmup_cosine_lambda:  # noqa: N801 (used like a function: LambdaLR(opt, warmup_cosine_lambda(...)))
    """LR multiplier: linear warmup over `warmup_steps`, then cosine decay to `min_factor` at `total_steps`
    (constant 1 after warmup when `total_steps` is None).

    A small class rather than a closure so that `LambdaLR.state_dict()` can record its settings.
    """

    def __init__(self, warmup_steps: int = 0, total_steps: int | None = None, min_factor: float = 0.0):
        check_positive_int("warmup_steps", warmup_steps, allow_zero=True)
        if total_steps is not None:
            check_positive_int("total_steps", total_steps)
            if total_steps < warmup_steps:
                raise ValueError(f"total_steps: expected >= warmup_steps ({warmup_steps}), got {total_steps}")
        if not 0.0 <= min_factor <= 1.0:
            raise ValueError(f"min_factor: expected a value in [0, 1], got {min_factor}")
        self.warmup_steps = warmup_steps
        self.total_steps = total_steps
        self.min_factor = min_factor

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.total_steps is None:
            return 1.0
        progress = min((step - self.warmup_steps) / max(self.total_steps - self.warmup_steps, 1), 1.0)
        return self.min_factor + (1.0 - self.min_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def cycle(dataloader: Iterable) -> Iterator:
    """Iterates over `dataloader` forever (a new epoch each time it is exhausted)."""
    while True:
        yielded = False
        for batch in dataloader:
            yielded = True
            yield batch
        if not yielded:
            raise ValueError("dataloader: it yielded no batch (is the dataset empty or smaller than batch_size "
                             "with drop_last=True?)")


def make_dataloader(
    dataset: Dataset,
    batch_size: int,
    *,
    num_workers: int = 0,
    collate_fn: Callable | None = None,
    shuffle: bool = True,
) -> DataLoader:
    """A training DataLoader that refuses an empty dataset and drops the last partial batch only when the dataset
    holds at least one full batch (so a dataset smaller than `batch_size` still yields one batch)."""
    check_positive_int("batch_size", batch_size)
    if len(dataset) == 0:
        raise ValueError("dataset: it is empty")
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=num_workers,
                      drop_last=len(dataset) >= batch_size, collate_fn=collate_fn)


def _batch_size_of(value: Any) -> int | None:
    if isinstance(value, torch.Tensor) and value.ndim > 0:
        return value.shape[0]
    if isinstance(value, list | tuple):
        return len(value)
    return None


def split_batch(max_batch_size: int | None, *args: Any, **kwargs: Any):
    """Splits a batch into chunks of at most `max_batch_size`, yielding `(fraction, args_chunk, kwargs_chunk)`.

    The batch size is that of the first tensor/list argument; every tensor or list whose first dimension equals
    it is split, everything else is passed unchanged. `fraction = len(chunk) / batch_size`, so summing
    `fraction * mean_loss(chunk)` over the chunks gives the mean loss of the whole batch (and its gradient).
    """
    values = list(args) + list(kwargs.values())
    batch_size = next((b for b in map(_batch_size_of, values) if b is not None), None)
    if max_batch_size is None or batch_size is None or batch_size <= max_batch_size:
        yield 1.0, args, kwargs
        return
    check_positive_int("max_batch_size", max_batch_size)

    def take(value, start, end):
        if _batch_size_of(value) == batch_size:
            return value[start:end]
        return value

    for start in range(0, batch_size, max_batch_size):
        end = min(start + max_batch_size, batch_size)
        yield ((end - start) / batch_size,
               tuple(take(a, start, end) for a in args),
               {k: take(v, start, end) for k, v in kwargs.items()})


def _rng_state() -> tuple[dict[str, torch.Tensor], dict]:
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = state
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    meta = {"python": random.getstate(), "numpy": [kind, keys.tolist(), pos, has_gauss, cached]}
    _, meta = flatten_state_dict(meta)  # tuples survive the JSON round trip
    return tensors, meta


def _set_rng_state(tensors: Mapping[str, torch.Tensor], meta: Any) -> None:
    if "rng.torch" in tensors:
        torch.set_rng_state(tensors["rng.torch"].to(torch.uint8))
    cuda_states = [tensors[k] for k in sorted(k for k in tensors if k.startswith("rng.cuda."))]
    if cuda_states and torch.cuda.is_available() and len(cuda_states) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda_states)
    if meta:
        state = unflatten_state_dict({}, meta)
        random.setstate(state["python"])
        kind, keys, pos, has_gauss, cached = state["numpy"]
        np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))


def _json_safe(obj: Any) -> Any:
    """A JSON-able copy of a trainer config (values JSON cannot hold are stored as their repr)."""
    return json.loads(json.dumps(obj, default=repr))


def _take_prefix(tensors: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


def extract_model_state(tensors: Mapping[str, torch.Tensor], name: str, ema: bool = False) -> dict[str, torch.Tensor]:
    """The state dict of model `name` (or of its EMA copy) from the tensors of a trainer checkpoint."""
    if ema:
        return _take_prefix(tensors, f"ema.{name}.ema_model.")
    return _take_prefix(tensors, f"model.{name}.")


# ----------------------------------------------------------------------------------------------------------------
# the trainer
# ----------------------------------------------------------------------------------------------------------------

@dataclass
class _Registered:
    model: nn.Module  # as prepared by accelerate (possibly DDP-wrapped)
    optimizer: Any  # accelerate's AcceleratedOptimizer
    scheduler: LambdaLR | None
    ema: EMA | None
    max_grad_norm: float | None
    params: list[nn.Parameter] = field(default_factory=list)


def _make_accelerator(**kwargs: Any) -> Accelerator:
    try:
        return Accelerator(**kwargs)
    except ValueError as err:
        # accelerate keeps one process-wide state; a second trainer with another mixed precision in the same
        # (non-distributed) process would otherwise be impossible, e.g. in a notebook or a test session
        if "already been initialized" not in str(err) or PartialState().num_processes > 1:
            raise
        logger.warning("re-initialising accelerate's global state for mixed_precision=%r; trainers created "
                       "earlier in this process now share it", kwargs.get("mixed_precision"))
        AcceleratorState._reset_state()
        return Accelerator(**kwargs)


class BaseTrainer:
    """Optimizers, schedulers, EMA, mixed precision, accumulation, NaN guard and checkpoints for named models.

    Args:
        mixed_precision: 'no', 'bf16' or 'fp16' ('fp16' needs a GPU; on CPU it falls back to 'bf16').
        cpu: force the CPU; None picks the CPU when no GPU is available.
        gradient_accumulate_every: `backward` divides losses by it; call `backward` that many times per `step`.
        results_folder: where `self.checkpoints` (a CheckpointManager) keeps numbered checkpoints.
        keep_last_checkpoints: how many numbered checkpoints to keep.
        log_with: accelerate tracker(s) ('tensorboard', 'wandb', ...), see `init_trackers` / `log`.
        seed: seeds python, numpy and torch on every process.
        accelerate_kwargs: extra keyword arguments for `accelerate.Accelerator`.
    """

    def __init__(
        self,
        mixed_precision: str = "no",
        cpu: bool | None = None,
        gradient_accumulate_every: int = 1,
        results_folder: str | Path | None = None,
        keep_last_checkpoints: int | None = 3,
        log_with: str | list | None = None,
        seed: int | None = None,
        accelerate_kwargs: dict | None = None,
    ):
        check_choice("mixed_precision", mixed_precision, ("no", "bf16", "fp16"))
        check_positive_int("gradient_accumulate_every", gradient_accumulate_every)
        if cpu is None:
            cpu = not torch.cuda.is_available()
        if mixed_precision == "fp16" and (cpu or not torch.cuda.is_available()):
            logger.warning("mixed_precision='fp16' needs a GPU; using 'bf16' on the CPU instead")
            mixed_precision = "bf16"

        accelerate_kwargs = dict(accelerate_kwargs or {})
        # models whose every parameter is not used at every step (conditioning dropout, cascades) need this in DDP
        accelerate_kwargs.setdefault("kwargs_handlers", [DistributedDataParallelKwargs(find_unused_parameters=True)])
        if results_folder is not None:
            accelerate_kwargs.setdefault("project_dir", str(results_folder))
        self.accelerator = _make_accelerator(cpu=cpu, mixed_precision=mixed_precision, log_with=log_with,
                                             **accelerate_kwargs)
        if seed is not None:
            set_seed(seed)

        self.mixed_precision = mixed_precision
        self.gradient_accumulate_every = gradient_accumulate_every
        self.results_folder = Path(results_folder) if results_folder is not None else None
        self.checkpoints = (CheckpointManager(self.results_folder, keep_last=keep_last_checkpoints)
                            if self.results_folder is not None else None)
        if self.results_folder is not None and self.is_main:
            self.results_folder.mkdir(parents=True, exist_ok=True)

        self._registry: dict[str, _Registered] = {}
        self.steps: dict[str, int] = {}
        self.skipped_steps: dict[str, int] = {}
        # trainer-level settings a subclass wants stored in its checkpoints (JSON)
        self.config: dict[str, Any] = {}

    # -- process / device --------------------------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def num_processes(self) -> int:
        return self.accelerator.num_processes

    @property
    def global_step(self) -> int:
        """Total number of optimizer steps taken over all registered models."""
        return sum(self.steps.values())

    def autocast(self):
        """Context manager for the forward pass under the trainer's mixed precision."""
        return self.accelerator.autocast()

    def wait_for_everyone(self) -> None:
        self.accelerator.wait_for_everyone()

    # -- registration ----------------------------------------------------------------------------------------

    def add_model(
        self,
        name: str,
        module: nn.Module,
        lr: float = 1e-4,
        betas: tuple[float, float] = (0.9, 0.99),
        weight_decay: float = 0.0,
        eps: float = 1e-8,
        warmup_steps: int = 0,
        total_steps: int | None = None,
        min_lr_factor: float = 0.0,
        max_grad_norm: float | None = None,
        ema: bool = True,
        ema_decay: float = 0.995,
        ema_update_every: int = 10,
        ema_kwargs: dict | None = None,
        optimizer: torch.optim.Optimizer | None = None,
    ) -> nn.Module:
        """Registers `module` under `name` with its own optimizer (AdamW unless given), optional warmup + cosine
        schedule, optional EMA copy; moves it to the device and prepares it for distributed training.
        Returns the prepared module."""
        if not isinstance(name, str) or not name or "." in name:
            raise ValueError(f"name: expected a non-empty string without dots, got {name!r}")
        if name in self._registry:
            raise ValueError(f"name: a model named {name!r} is already registered")
        if not isinstance(module, nn.Module):
            raise TypeError(f"module: expected an nn.Module, got {type(module).__name__}")
        if lr <= 0:
            raise ValueError(f"lr: expected a positive learning rate, got {lr}")
        if max_grad_norm is not None and max_grad_norm <= 0:
            raise ValueError(f"max_grad_norm: expected a positive number or None, got {max_grad_norm}")

        params = [p for p in module.parameters() if p.requires_grad]
        if not params:
            raise ValueError(f"module: {type(module).__name__} has no trainable parameters")
        if optimizer is None:
            optimizer = torch.optim.AdamW(params, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)

        ema_model = None
        if ema:
            ema_kwargs = {"beta": ema_decay, "update_every": ema_update_every, **(ema_kwargs or {})}
            ema_model = EMA(module, include_online_model=False, **ema_kwargs).to(self.device)

        scheduler = None
        if warmup_steps or total_steps:
            scheduler = LambdaLR(optimizer, warmup_cosine_lambda(warmup_steps, total_steps, min_lr_factor))

        module = module.to(self.device)
        prepared_model, prepared_optimizer = self.accelerator.prepare(module, optimizer)
        self._registry[name] = _Registered(prepared_model, prepared_optimizer, scheduler, ema_model, max_grad_norm,
                                           params)
        self.steps[name] = 0
        self.skipped_steps[name] = 0
        return prepared_model

    def _get(self, name: str | None) -> tuple[str, _Registered]:
        if name is None:
            if len(self._registry) != 1:
                raise ValueError(f"name: {len(self._registry)} models are registered "
                                 f"({', '.join(self._registry) or 'none'}); say which one")
            name = next(iter(self._registry))
        if name not in self._registry:
            raise ValueError(f"name: no model named {name!r}; registered: {', '.join(self._registry) or 'none'}")
        return name, self._registry[name]

    @property
    def models(self) -> dict[str, nn.Module]:
        """The prepared (possibly DDP-wrapped) models by name: call these in the training step."""
        return {name: reg.model for name, reg in self._registry.items()}

    @property
    def optimizers(self) -> dict[str, Any]:
        return {name: reg.optimizer for name, reg in self._registry.items()}

    @property
    def schedulers(self) -> dict[str, LambdaLR | None]:
        return {name: reg.scheduler for name, reg in self._registry.items()}

    def unwrap(self, name: str | None = None) -> nn.Module:
        """The plain module registered as `name` (without DDP/compile wrappers)."""
        _, reg = self._get(name)
        return self.accelerator.unwrap_model(reg.model)

    def ema(self, name: str | None = None) -> EMA | None:
        """The `ema_pytorch.EMA` of model `name` (its averaged module is `.ema_model`), or None without EMA."""
        _, reg = self._get(name)
        return reg.ema

    def get_lr(self, name: str | None = None) -> float:
        _, reg = self._get(name)
        return reg.optimizer.param_groups[0]["lr"]

    def prepare_dataloader(self, dataloader):
        """Shards a DataLoader across processes (and moves batches to the device)."""
        return self.accelerator.prepare(dataloader)

    # -- the optimisation step ---------------------------------------------------------------------------------

    def backward(self, loss: torch.Tensor, name: str | None = None, fraction: float = 1.0) -> None:
        """Backpropagates `loss * fraction / gradient_accumulate_every` (mixed-precision scaling included)."""
        self._get(name)
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
            raise ValueError(f"loss: expected a scalar tensor, got {type(loss).__name__} "
                             f"{tuple(getattr(loss, 'shape', ()))}")
        self.accelerator.backward(loss * (fraction / self.gradient_accumulate_every))

    def _grad_norm(self, reg: _Registered) -> torch.Tensor:
        grads = [p.grad for p in reg.params if p.grad is not None]
        if not grads:
            return torch.zeros((), device=self.device)
        if reg.max_grad_norm is not None:
            return torch.nn.utils.clip_grad_norm_(reg.params, reg.max_grad_norm)
        return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.detach().float()) for g in grads]))

    def step(self, name: str | None = None) -> bool:
        """Clips gradients, skips the update if any gradient is NaN/inf (zeroing them and logging a warning),
        otherwise steps the optimizer and the scheduler, updates the EMA and counts the step. Returns whether
        the optimizer stepped."""
        name, reg = self._get(name)
        scaler = self.accelerator.scaler
        if scaler is not None:
            scaler.unscale_(reg.optimizer.optimizer)
        grad_norm = self._grad_norm(reg)
        finite = bool(torch.isfinite(grad_norm))  # after DDP's all-reduce every process agrees

        if not finite and scaler is None:
            self.skipped_steps[name] += 1
            logger.warning("non-finite gradients for %r (norm %s) at step %d: optimizer step skipped (%d so far)",
                           name, grad_norm.item(), self.steps[name], self.skipped_steps[name])
            reg.optimizer.zero_grad(set_to_none=True)
            return False

        reg.optimizer.step()
        reg.optimizer.zero_grad(set_to_none=True)
        if scaler is not None and reg.optimizer.step_was_skipped:
            # fp16 overflow: the scaler lowers its scale, which is routine, so only at debug level
            self.skipped_steps[name] += 1
            logger.debug("fp16 overflow for %r at step %d: step skipped", name, self.steps[name])
            return False

        if reg.scheduler is not None:
            reg.scheduler.step()
        if reg.ema is not None:
            self._update_ema(name, reg)
        self.steps[name] += 1
        return True

    def _update_ema(self, name: str, reg: _Registered) -> None:
        ema = reg.ema
        will_read_weights = not bool(ema.initted) or int(ema.step) % ema.update_every == 0
        if will_read_weights:
            weights_finite = torch.stack([torch.isfinite(p.detach()).all() for p in reg.params]).all()
            if not bool(weights_finite):
                logger.error("weights of %r are not finite at step %d: EMA not updated", name, self.steps[name])
                return
        ema.update()

    # -- checkpoints -----------------------------------------------------------------------------------------

    def extra_state(self) -> tuple[dict[str, torch.Tensor], dict]:
        """Override to store more in checkpoints: returns `(tensors, json_metadata)`."""
        return {}, {}

    def load_extra_state(self, tensors: dict[str, torch.Tensor], metadata: dict) -> None:
        """Override to restore what `extra_state` stored."""

    def state_for_saving(self) -> tuple[dict[str, torch.Tensor], dict]:
        """Everything `save` writes, as `(tensors, metadata)`. Must be called on every process (FSDP gathers)."""
        tensors: dict[str, torch.Tensor] = {}
        meta: dict[str, Any] = {
            "format": TRAINER_FORMAT,
            "format_version": TRAINER_FORMAT_VERSION,
            "trainer": class_path(type(self)),
            "versions": self._versions(),
            "steps": dict(self.steps),
            "skipped_steps": dict(self.skipped_steps),
            "config": _json_safe(self.config),
            "models": {},
            "optimizers": {},
            "schedulers": {},
        }
        for name, reg in self._registry.items():
            model = self.accelerator.unwrap_model(reg.model)
            state = self.accelerator.get_state_dict(reg.model)
            tensors.update({f"model.{name}.{k}": v for k, v in state.items()})
            info: dict[str, Any] = {"class": class_path(type(model)), "ema": reg.ema is not None}
            if isinstance(model, PretrainedMixin):
                info["config"] = model.pretrained_config
            meta["models"][name] = info
            if reg.ema is not None:
                tensors.update({f"ema.{name}.{k}": v for k, v in reg.ema.state_dict().items()})
            opt_tensors, opt_meta = flatten_state_dict(reg.optimizer.state_dict(), prefix=f"optimizer.{name}.")
            tensors.update(opt_tensors)
            meta["optimizers"][name] = opt_meta
            if reg.scheduler is not None:
                sched_tensors, meta["schedulers"][name] = flatten_state_dict(reg.scheduler.state_dict(),
                                                                             prefix=f"scheduler.{name}.")
                tensors.update(sched_tensors)
        if self.accelerator.scaler is not None:
            scaler_tensors, meta["scaler"] = flatten_state_dict(self.accelerator.scaler.state_dict(), prefix="scaler.")
            tensors.update(scaler_tensors)
        rng_tensors, meta["rng"] = _rng_state()
        tensors.update(rng_tensors)
        extra_tensors, meta["extra"] = self.extra_state()
        tensors.update({f"extra.{k}": v for k, v in extra_tensors.items()})
        return tensors, meta

    def _versions(self) -> dict[str, str | None]:
        versions = dict([package_info(type(self)), package_info(BaseTrainer)])
        for reg in self._registry.values():
            package, version = package_info(type(self.accelerator.unwrap_model(reg.model)))
            versions[package] = version
        return versions

    def save(self, path: str | Path | None = None) -> Path | None:
        """Writes one safetensors checkpoint (models, EMAs, optimizers, schedulers, steps, RNG, config).

        Call it on every process: the main process writes (atomically) between two barriers, so under DDP no
        process reads a half-written file and none waits forever. `path=None` saves a numbered checkpoint in
        `results_folder` (keeping the last `keep_last_checkpoints`). Returns the path written.
        """
        tensors, meta = self.state_for_saving()
        self.accelerator.wait_for_everyone()
        written = None
        if path is None:
            if self.checkpoints is None:
                raise ValueError("path: give a file path, or pass results_folder= to the trainer to number them")
            written = self.checkpoints.path_for(self.global_step)
            if self.is_main:
                self.checkpoints.save(self.global_step, tensors, meta)
        else:
            written = Path(path)
            if self.is_main:
                save_checkpoint(written, tensors, meta)
        self.accelerator.wait_for_everyone()
        if self.is_main:
            logger.info("saved checkpoint %s", written)
        return written

    def resolve_checkpoint(self, path: str | Path) -> Path | None:
        if isinstance(path, str) and path == "latest":
            if self.checkpoints is None:
                raise ValueError("path: 'latest' needs a trainer with results_folder=")
            return self.checkpoints.latest()
        if self.checkpoints is not None:
            return self.checkpoints.resolve(path)
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint not found: {path}")
        return path

    def load(self, path: str | Path = "latest", *, strict: bool = True, load_optimizers: bool = True,
             restore_rng: bool = True) -> dict | None:
        """Restores a checkpoint written by `save` (`'latest'` = newest numbered one in `results_folder`).

        Returns its metadata, or None when `'latest'` was asked and there is no checkpoint yet. Keys that do not
        match raise a `CheckpointError` naming the versions that wrote and read the checkpoint.
        """
        self.accelerator.wait_for_everyone()
        resolved = self.resolve_checkpoint(path)
        if resolved is None:
            logger.info("no checkpoint to resume from in %s; starting fresh", self.results_folder)
            return None
        tensors, meta = load_checkpoint(resolved, map_location="cpu")
        if meta.get("format") != TRAINER_FORMAT:
            raise CheckpointError(f"{resolved} was not written by a trainer's save() "
                                  f"(format {meta.get('format')!r})")
        saved_versions, current_versions = meta.get("versions", {}), self._versions()
        for package, current in current_versions.items():
            saved = saved_versions.get(package)
            if saved is not None and saved != current:
                logger.warning("%s was saved with %s %s and is loaded with %s %s", resolved, package, saved,
                               package, current)
        describe = (f"version(s) {saved_versions}", f"version(s) {current_versions}")

        missing = [name for name in self._registry if name not in meta.get("models", {})]
        unknown = [name for name in meta.get("models", {}) if name not in self._registry]
        if missing and strict:
            raise CheckpointError(f"{resolved} has no model(s) {missing} (it holds {list(meta.get('models', {}))}); "
                                  f"written by {describe[0]}, read by {describe[1]}")
        if unknown:
            logger.warning("%s holds model(s) %s that this trainer does not register; ignored", resolved, unknown)

        for name, reg in self._registry.items():
            if name in missing:
                continue
            model = self.accelerator.unwrap_model(reg.model)
            load_state_dict_checked(model, extract_model_state(tensors, name), strict=strict,
                                    saved_version=describe[0], current_version=describe[1],
                                    source=f"{resolved} (model {name!r})")
            if reg.ema is not None:
                ema_state = _take_prefix(tensors, f"ema.{name}.")
                if ema_state:
                    load_state_dict_checked(reg.ema, ema_state, strict=strict, saved_version=describe[0],
                                            current_version=describe[1], source=f"{resolved} (EMA of {name!r})")
                else:
                    logger.warning("%s has no EMA for %r; the EMA restarts from the loaded weights", resolved, name)
                    reg.ema.ema_model.load_state_dict(model.state_dict())
            if load_optimizers and name in meta.get("optimizers", {}):
                reg.optimizer.load_state_dict(unflatten_state_dict(tensors, meta["optimizers"][name]))
            if load_optimizers and reg.scheduler is not None and name in meta.get("schedulers", {}):
                reg.scheduler.load_state_dict(unflatten_state_dict(tensors, meta["schedulers"][name]))
            self.steps[name] = int(meta.get("steps", {}).get(name, 0))
            self.skipped_steps[name] = int(meta.get("skipped_steps", {}).get(name, 0))
        if load_optimizers and self.accelerator.scaler is not None and "scaler" in meta:
            self.accelerator.scaler.load_state_dict(unflatten_state_dict(tensors, meta["scaler"]))
        if restore_rng:
            _set_rng_state(tensors, meta.get("rng"))
        self.load_extra_state(_take_prefix(tensors, "extra."), meta.get("extra", {}))
        logger.info("loaded checkpoint %s (steps %s)", resolved, self.steps)
        return meta

    # -- progress and tracking -------------------------------------------------------------------------------

    def progress(self, total: int | None, *, initial: int = 0, desc: str | None = None, **kwargs: Any) -> tqdm:
        """A tqdm bar shown on the main process only (use `.set_postfix(loss=...)` and `.update()`)."""
        return tqdm(total=total, initial=initial, desc=desc, disable=not self.is_main, dynamic_ncols=True, **kwargs)

    def init_trackers(self, project_name: str, config: dict | None = None, **kwargs: Any) -> None:
        """Starts the trackers given as `log_with` (no-op without)."""
        self.accelerator.init_trackers(project_name, config=_json_safe(config or self.config), **kwargs)

    def log(self, values: Mapping[str, Any], step: int | None = None) -> None:
        self.accelerator.log(dict(values), step=self.global_step if step is None else step)

    def end_training(self) -> None:
        self.accelerator.end_training()

    def run_every(self, every: int | None, step: int) -> bool:
        """Whether a periodic hook (sample, checkpoint) is due at `step` (1-based: after `every` steps)."""
        return bool(every) and step > 0 and step % every == 0

    def averaged_model(self, name: str | None = None) -> nn.Module:
        """The model to sample from or publish: the EMA copy of `name` if it has one, else the plain module."""
        ema = self.ema(name)
        return ema.ema_model if ema is not None else self.unwrap(name)

    def save_and_export(self, name: str, folder: str | Path | None = None) -> Path | None:
        """A resumable checkpoint (`save()`, every process) plus `save_pretrained` of `averaged_model(name)` into
        `folder` (default `results_folder/<name>`) by the main process; returns that folder (None elsewhere)."""
        self.save()
        if not self.is_main:
            return None
        return self.averaged_model(name).save_pretrained(folder if folder is not None else self.results_folder / name)

    # -- the loop ----------------------------------------------------------------------------------------------

    def fit(
        self,
        num_train_steps: int,
        train_step: Callable[[], Mapping[str, float]],
        *,
        step_count: Callable[[], int] | None = None,
        every: Sequence[tuple[int | None, Callable[[], Any]]] = (),
        at_end: Callable[[], Any] | None = None,
        desc: str = "training",
        postfix: Mapping[str, str] | None = None,
        log_fn: Callable[[dict[str, float]], None] | None = None,
    ) -> int:
        """Calls `train_step()` until `step_count()` reaches `num_train_steps`, with a progress bar, tracker logging
        and periodic callbacks; returns the final step count.

        Args:
            train_step: one optimisation step; returns its logs `{name: float}`.
            step_count: the step counter that ends the loop (default: `global_step`); a step skipped by the NaN
                guard does not advance it, so the loop runs until `num_train_steps` real updates were made.
            every: `(period, callback)` pairs: `callback()` runs after every `period`-th step (None/0: never),
                e.g. `[(save_results_every, self.save_results), (save_model_every, self.save_model)]`.
            at_end: called once after the loop (e.g. a final `save_model`).
            postfix: progress-bar label -> log key (default `{'loss': 'loss'}`).
            log_fn: also called with each step's logs.
        """
        check_positive_int("num_train_steps", num_train_steps)
        step_count = step_count if step_count is not None else (lambda: self.global_step)
        postfix = dict(postfix) if postfix is not None else {"loss": "loss"}
        progress = self.progress(num_train_steps, initial=step_count(), desc=desc)
        while step_count() < num_train_steps:
            logs = dict(train_step())
            step = step_count()
            progress.update(1)
            progress.set_postfix({label: f"{logs[key]:.4f}" for label, key in postfix.items() if key in logs})
            self.log(logs, step=step)
            if log_fn is not None:
                log_fn(logs)
            for period, callback in every:
                if self.run_every(period, step):
                    callback()
        progress.close()
        if at_end is not None:
            at_end()
        logger.info("%s: training complete after %d steps", desc, step_count())
        return step_count()


class AutoencoderGANTrainer(BaseTrainer):
    """Alternating training of a VQGAN-style autoencoder: an autoencoder step (its loss may flow through the
    discriminator, which is frozen meanwhile), then, with the GAN on, a discriminator step on the same batches with
    the gradient penalty every `apply_grad_penalty_every` steps.

    A subclass calls `add_autoencoder(...)` after `super().__init__(...)` and implements `next_batch()`,
    `autoencoder_loss(model, batch)` and `save_results()`. The autoencoder must have `.discr` (None without the
    GAN) and `.discriminator_loss(batch, apply_grad_penalty=..., discr=...)`; `save_model()` writes a checkpoint
    plus `results_folder/<name>` (`save_pretrained` of the EMA model).
    """

    progress_desc = "autoencoder"
    # progress-bar label -> key of the logs returned by `train_step`
    progress_postfix: Mapping[str, str] = {"loss": "loss"}

    def __init__(
        self,
        *,
        num_train_steps: int,
        apply_grad_penalty_every: int = 4,
        save_results_every: int | None = 100,
        save_model_every: int | None = 1000,
        **trainer_kwargs: Any,
    ):
        super().__init__(**trainer_kwargs)
        check_positive_int("num_train_steps", num_train_steps)
        check_positive_int("apply_grad_penalty_every", apply_grad_penalty_every)
        self.num_train_steps = num_train_steps
        self.apply_grad_penalty_every = apply_grad_penalty_every
        self.save_results_every = save_results_every
        self.save_model_every = save_model_every
        self.autoencoder_name: str | None = None
        self.use_gan = False

    def add_autoencoder(
        self,
        name: str,
        autoencoder: nn.Module,
        *,
        use_gan: bool,
        lr: float = 3e-4,
        discr_lr: float | None = None,
        max_grad_norm: float | None = None,
        discr_max_grad_norm: float | None = None,
        **add_model_kwargs: Any,
    ) -> None:
        """Registers the autoencoder as `name` (its optimizer leaves out the discriminator) and, with `use_gan`,
        its `.discr` as `'discr'` (own optimizer, learning rate `discr_lr` (default `lr`), no EMA)."""
        discr = getattr(autoencoder, "discr", None)
        if use_gan and discr is None:
            raise ValueError(f"autoencoder: use_gan needs a discriminator, {type(autoencoder).__name__}.discr is None")
        # registered while the discriminator is frozen, so the autoencoder's optimizer does not hold it
        with frozen(discr):
            self.add_model(name, autoencoder, lr=lr, max_grad_norm=max_grad_norm,
                           total_steps=self.num_train_steps, **add_model_kwargs)
        if use_gan:
            self.add_model("discr", discr, lr=discr_lr if discr_lr is not None else lr,
                           max_grad_norm=discr_max_grad_norm, ema=False)
        self.autoencoder_name = name
        self.use_gan = use_gan
        self.config.update(dict(num_train_steps=self.num_train_steps, lr=lr,
                                apply_grad_penalty_every=self.apply_grad_penalty_every))

    # -- what a subclass provides ----------------------------------------------------------------------------

    def next_batch(self) -> Any:
        """The next training batch, on the device (what the autoencoder and `discriminator_loss` take)."""
        raise NotImplementedError

    def autoencoder_loss(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, Mapping[str, torch.Tensor]]:
        """Runs under autocast: `(loss, {name: scalar tensor to log})` of the autoencoder on `batch`."""
        raise NotImplementedError

    def save_results(self) -> Path | None:
        """Writes samples (reconstructions) to `results_folder`; returns the path."""
        raise NotImplementedError

    # -- the generic part ------------------------------------------------------------------------------------

    @property
    def step_count(self) -> int:
        return self.steps[self.autoencoder_name]

    def model_for_sampling(self) -> nn.Module:
        return self.averaged_model(self.autoencoder_name)

    def train_step(self) -> dict[str, float]:
        """One autoencoder step (and one discriminator step with the GAN); returns the mean losses."""
        name = self.autoencoder_name
        model, plain = self.models[name], self.unwrap(name)
        model.train()
        accumulate = self.gradient_accumulate_every
        logs: dict[str, float] = {}

        batches = []
        with frozen(getattr(plain, "discr", None)):
            for _ in range(accumulate):
                batch = self.next_batch()
                batches.append(batch)
                with self.autocast():
                    loss, terms = self.autoencoder_loss(model, batch)
                self.backward(loss, name)
                for key, value in {"loss": loss, **terms}.items():
                    value = value.detach().item() if isinstance(value, torch.Tensor) else float(value)
                    logs[key] = logs.get(key, 0.0) + value / accumulate
        self.step(name)

        if self.use_gan:
            apply_grad_penalty = self.step_count % self.apply_grad_penalty_every == 0
            logs["discr_loss"] = 0.0
            for batch in batches:
                with self.autocast():
                    discr_loss = plain.discriminator_loss(batch, apply_grad_penalty=apply_grad_penalty,
                                                          discr=self.models["discr"])
                self.backward(discr_loss, "discr")
                logs["discr_loss"] += discr_loss.item() / len(batches)
            self.step("discr")
        return logs

    def save_model(self) -> Path | None:
        """Checkpoint (resumable) plus `results_folder/<name>` (`save_pretrained` of the EMA model)."""
        return self.save_and_export(self.autoencoder_name)

    def train(self, log_fn: Callable[[dict[str, float]], None] | None = None) -> None:
        self.fit(self.num_train_steps, self.train_step, step_count=lambda: self.step_count,
                 every=[(self.save_results_every, self.save_results), (self.save_model_every, self.save_model)],
                 at_end=self.save_model, desc=self.progress_desc, postfix=self.progress_postfix, log_fn=log_fn)


__all__ = [
    "BaseTrainer",
    "AutoencoderGANTrainer",
    "make_dataloader",
    "split_batch",
    "cycle",
    "warmup_cosine_lambda",
    "extract_model_state",
]
