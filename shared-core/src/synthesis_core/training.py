"""The training loop every package's trainer builds on: accelerate + ema-pytorch + safetensors checkpoints.

A package trainer registers what it trains and drives the loop itself:

```
class MyTrainer(BaseTrainer):
    def __init__(self, model, dataloader, **kwargs):
        super().__init__(**kwargs)
        self.add_model("model", model, lr=1e-4, warmup_steps=100, total_steps=10_000, max_grad_norm=1.0)
        self.batches = self.add_dataloader("train", dataloader)   # endless, and its position is checkpointed

    def train_step(self, max_batch_size=None):
        for _ in range(self.gradient_accumulate_every):
            with self.accumulate("model"):   # gradients are all-reduced in the last micro-batch only
                for fraction, (chunk,), _ in split_batch(max_batch_size, next(self.batches)):
                    with self.autocast():
                        loss = self.models["model"](chunk)
                    self.backward(loss, "model", fraction=fraction)
        self.step("model")   # clip, NaN/inf guard, optimizer, scheduler, EMA, step counter
```

Works on CPU with no code change (no `.cuda()`) and never prompts. Under several processes (`torchrun
--nproc_per_node 2 train.py`; on CPU the processes talk over gloo) every process runs the same steps; `save()`
holds no collective operation, so it may be called by the main process only (`if trainer.is_main:
trainer.save(path)`) or by every process, and `load()` is called by every process.

Checkpoints resume exactly, at any step: besides the models, EMAs, optimizers, schedulers and step counts they
record where every `add_dataloader` stream is in its epoch (and the seed of its order), and the RNG states. The
main process's RNG states go into the checkpoint file; when every process saves, each other process writes its
own to a companion file `<checkpoint stem>.rng-rank<N><suffix>`, so no state crosses processes. A process that
finds no companion file of its own (the checkpoint was saved by the main process only) re-seeds itself from the
seed, its rank and the step instead: the run goes on correctly, only that process's noise differs from the run
that saved.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import random
import uuid
import zlib
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence, Sized
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.data_loader import skip_first_batches
from accelerate.state import AcceleratorState
from accelerate.utils import (
    DataLoaderConfiguration,
    DistributedDataParallelKwargs,
    DistributedType,
    broadcast_object_list,
    set_seed,
)
from ema_pytorch import EMA
from torch import nn
from torch.optim.lr_scheduler import LambdaLR
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    Dataset,
    IterableDataset,
    RandomSampler,
    Sampler,
    SequentialSampler,
)
from tqdm.auto import tqdm

from synthesis_core.checkpoint import (
    CheckpointError,
    CheckpointManager,
    PretrainedMixin,
    check_state_dict,
    class_path,
    flatten_state_dict,
    load_checkpoint,
    package_info,
    remove_stale_temporary_files,
    save_checkpoint,
    unflatten_state_dict,
)
from synthesis_core.checks import check_choice, check_positive_int
from synthesis_core.protocol import resolve_alias
from synthesis_core.utils import default, frozen

logger = logging.getLogger(__name__)

TRAINER_FORMAT = "synthesis-trainer"
TRAINER_FORMAT_VERSION = 1
RNG_FORMAT = "synthesis-trainer-rng"


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
            raise ValueError(
                "dataloader: it yielded no batch (is the dataset empty or smaller than batch_size with drop_last=True?)"
            )


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
    # a map-style Dataset has a length, though torch's Dataset type does not declare __len__
    length = len(cast(Sized, dataset))
    if length == 0:
        raise ValueError("dataset: it is empty")
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=num_workers,
        drop_last=length >= batch_size,
        collate_fn=collate_fn,
    )


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
        yield (
            (end - start) / batch_size,
            tuple(take(a, start, end) for a in args),
            {k: take(v, start, end) for k, v in kwargs.items()},
        )


# ----------------------------------------------------------------------------------------------------------------
# seeds and RNG states
# ----------------------------------------------------------------------------------------------------------------

_MASK64 = (1 << 64) - 1


def mix_seed(*parts: int) -> int:
    """A 32-bit seed derived from integers (splitmix64 over them): nearby inputs give unrelated seeds, and the
    result fits every RNG (numpy's global one takes 32 bits)."""
    x = 0
    for part in parts:
        x = (x + 0x9E3779B97F4A7C15 + (int(part) & _MASK64)) & _MASK64
        z = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
        x = z ^ (z >> 31)
    return x >> 32


def process_seed(seed: int, process_index: int) -> int:
    """The seed of one process of a run seeded with `seed`: the main process uses `seed` itself (a one-process run
    is seeded as it always was), every other one a seed derived from `(seed, rank)`, so that the processes draw
    different noise and timesteps."""
    return seed if process_index == 0 else mix_seed(seed, process_index)


def _rng_state(device: torch.device) -> tuple[dict[str, torch.Tensor], dict]:
    """This process's RNG states: torch's (the CPU's and, on a GPU, its device's), python's and numpy's."""
    tensors = {"rng.torch": torch.get_rng_state()}
    if device.type == "cuda" and torch.cuda.is_initialized():
        tensors["rng.cuda"] = torch.cuda.get_rng_state(device)
    # the legacy (tuple) form, which the global MT19937 generator always gives (numpy's stubs say dict | tuple)
    kind, keys, pos, has_gauss, cached = cast(tuple[str, np.ndarray, int, int, float], np.random.get_state())
    meta = {"python": random.getstate(), "numpy": [kind, keys.tolist(), pos, has_gauss, cached]}
    _, meta = flatten_state_dict(meta)  # tuples survive the JSON round trip
    return tensors, meta


@dataclass
class _RngState:
    torch_cpu: torch.Tensor | None
    cuda: torch.Tensor | None
    cuda_all: list[torch.Tensor]  # checkpoints of earlier versions held every visible GPU's state
    python: tuple | None
    numpy: tuple | None

    def apply(self, device: torch.device) -> None:
        if self.torch_cpu is not None:
            torch.set_rng_state(self.torch_cpu)
        if self.cuda is not None and device.type == "cuda":
            torch.cuda.set_rng_state(self.cuda, device)
        elif self.cuda_all and torch.cuda.is_available() and len(self.cuda_all) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(self.cuda_all)
        if self.python is not None:
            random.setstate(self.python)
        if self.numpy is not None:
            np.random.set_state(self.numpy)


def _parse_rng_state(tensors: Mapping[str, torch.Tensor], meta: Any, device: torch.device) -> _RngState:
    """The RNG states stored by `_rng_state`, each tried on a throwaway generator first: a malformed state raises
    here (ValueError, TypeError, RuntimeError), before any RNG of the process is touched."""
    cpu = tensors.get("rng.torch")
    if cpu is not None:
        cpu = cpu.to(torch.uint8)
        torch.Generator().set_state(cpu)
    cuda = tensors.get("rng.cuda")
    if cuda is not None:
        cuda = cuda.to(torch.uint8)
        if device.type == "cuda" and cuda.numel() != torch.cuda.get_rng_state(device).numel():
            raise ValueError(
                f"the CUDA RNG state has {cuda.numel()} bytes, this GPU's has "
                f"{torch.cuda.get_rng_state(device).numel()}"
            )
    cuda_all = [tensors[k].to(torch.uint8) for k in sorted(k for k in tensors if k.startswith("rng.cuda."))]
    python = numpy = None
    if meta:
        state = unflatten_state_dict({}, meta)
        python = state["python"]
        random.Random().setstate(python)
        kind, keys, pos, has_gauss, cached = state["numpy"]
        numpy = (kind, np.asarray(keys, dtype=np.uint32), int(pos), int(has_gauss), float(cached))
        np.random.RandomState().set_state(numpy)
    return _RngState(cpu, cuda, cuda_all, python, numpy)


@contextlib.contextmanager
def _item_rng(seed: int) -> Iterator[None]:
    """Runs the body with the CPU RNGs (torch, python, numpy) seeded with `seed`, then puts them back as they were:
    the random augmentation of a data item depends on the item's seed only, not on what ran before it."""
    torch_state, python_state, numpy_state = torch.get_rng_state(), random.getstate(), np.random.get_state()
    torch.default_generator.manual_seed(seed)  # the CPU generator only: the GPUs' RNGs are the model's business
    random.seed(seed)
    np.random.seed(seed)
    try:
        yield
    finally:
        torch.set_rng_state(torch_state)
        random.setstate(python_state)
        np.random.set_state(numpy_state)


# ----------------------------------------------------------------------------------------------------------------
# data streams that know their position
# ----------------------------------------------------------------------------------------------------------------


class _EpochSampler(Sampler):
    """The indices of a map-style dataset, in an order fixed by `(seed, epoch)` (shuffled or not), each paired with
    the seed of that item's randomness (`_SeededItems`).

    Everything comes from the seed, nothing from a generator's running state: any epoch's order can be rebuilt to
    resume in its middle. It deliberately has no `generator` attribute: accelerate would otherwise broadcast one
    from the main process at every epoch.
    """

    def __init__(self, length: int, shuffle: bool, seed: int):
        self.length = length
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.length

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch_seed = mix_seed(self.seed, self.epoch)
        order: Iterable[int]
        if self.shuffle:
            order = torch.randperm(self.length, generator=torch.Generator().manual_seed(epoch_seed)).tolist()
        else:
            order = range(self.length)
        for index in order:
            yield index, mix_seed(epoch_seed, index)


class _SeededItems(Dataset):
    """A map-style dataset indexed by `(index, seed)`: item `index`, drawn with the CPU RNGs seeded by `seed`."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(cast(Sized, self.dataset))

    def __getitem__(self, key: tuple[int, int]) -> Any:
        index, seed = key
        with _item_rng(seed):
            return self.dataset[index]

    def __getattr__(self, name: str) -> Any:
        # the wrapped dataset's attributes (captions, paths, ...) stay reachable as `loader.dataset.<name>`
        if name == "dataset" or name.startswith("__"):  # not set yet while unpickling in a worker process
            raise AttributeError(name)
        return getattr(self.dataset, name)


def _loader_kwargs(dataloader: DataLoader) -> dict[str, Any]:
    """The settings of a DataLoader other than its data, sampler and batching."""
    kwargs: dict[str, Any] = dict(
        num_workers=dataloader.num_workers,
        collate_fn=dataloader.collate_fn,
        pin_memory=dataloader.pin_memory,
        timeout=dataloader.timeout,
        worker_init_fn=dataloader.worker_init_fn,
        multiprocessing_context=dataloader.multiprocessing_context,
        persistent_workers=dataloader.persistent_workers,
    )
    if dataloader.num_workers > 0:
        kwargs["prefetch_factor"] = dataloader.prefetch_factor
    if getattr(dataloader, "pin_memory_device", ""):
        kwargs["pin_memory_device"] = dataloader.pin_memory_device
    if hasattr(dataloader, "in_order"):
        kwargs["in_order"] = dataloader.in_order
    return kwargs


def _resumable_loader(dataloader: DataLoader, name: str, seed: int) -> tuple[DataLoader, _EpochSampler | None]:
    """`dataloader` rebuilt on an `_EpochSampler` (same data, batch size, collate function, workers), when its
    sampler is a plain random or sequential one; otherwise the loader itself, with a warning."""
    dataset = dataloader.dataset
    sampler = dataloader.sampler
    plain_batches = type(dataloader.batch_sampler) is BatchSampler and dataloader.batch_sampler.sampler is sampler
    if isinstance(dataset, IterableDataset):
        why = "it reads an iterable dataset"
    elif not plain_batches:
        why = f"it batches with a {type(dataloader.batch_sampler).__name__}"
    elif (
        type(sampler) is RandomSampler and not sampler.replacement and sampler.num_samples == len(cast(Sized, dataset))
    ):
        why = None
    elif type(sampler) is SequentialSampler:
        why = None
    else:
        why = f"it samples with a {type(sampler).__name__}"
    if why is not None:
        logger.warning(
            "dataloader %r: %s, so the trainer cannot fix its order; a resume skips the batches of the "
            "epoch already drawn, which repeats the saved run only if that order is deterministic",
            name,
            why,
        )
        return dataloader, None
    epoch_sampler = _EpochSampler(len(cast(Sized, dataset)), shuffle=type(sampler) is RandomSampler, seed=seed)
    # its own generator: the base seed a DataLoader draws at every epoch would otherwise come from (and advance)
    # the global RNG, which the model's noise is drawn from
    rebuilt = DataLoader(
        _SeededItems(dataset),
        batch_size=dataloader.batch_size,
        sampler=epoch_sampler,
        drop_last=dataloader.drop_last,
        generator=torch.Generator().manual_seed(seed),
        **_loader_kwargs(dataloader),
    )
    return rebuilt, epoch_sampler


def _check_count(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise CheckpointError(f"{what}: expected a non-negative integer, got {value!r}")
    return value


class DataStream:
    """Endless batches of a DataLoader prepared for the trainer's processes, which knows where it is: `epoch`, and
    `batches`, the number drawn in that epoch (per process).

    The order of an epoch is fixed by `(seed, epoch)` and each item's random augmentation by its own seed, so a
    checkpoint only records these three numbers; a trainer that loads it rebuilds the epoch's order and skips the
    batches already drawn without loading them (accelerate's `skip_first_batches`): the next batch is the one the
    saved run drew next. Made by `BaseTrainer.add_dataloader`.
    """

    def __init__(self, name: str, dataloader: DataLoader, sampler: _EpochSampler | None, seed: int):
        self.name = name
        self.dataloader = dataloader
        self.seed = seed
        self.epoch = 0
        self.batches = 0
        self._sampler = sampler
        self._iterator: Iterator | None = None

    def __iter__(self) -> DataStream:
        return self

    def _start_epoch(self) -> Iterator:
        if self._sampler is not None:
            self._sampler.seed = self.seed
            self._sampler.set_epoch(self.epoch)
        if hasattr(self.dataloader, "set_epoch"):
            self.dataloader.set_epoch(self.epoch)
        loader = skip_first_batches(self.dataloader, self.batches) if self.batches else self.dataloader
        self._iterator = iter(loader)
        return self._iterator

    def _reset(self) -> None:
        if self._iterator is not None and hasattr(self._iterator, "close"):
            self._iterator.close()  # lets go of its worker processes
        self._iterator = None

    def __next__(self) -> Any:
        iterator = self._iterator if self._iterator is not None else self._start_epoch()
        try:
            batch = next(iterator)
        except StopIteration:
            if self.batches == 0:
                raise ValueError(
                    f"dataloader {self.name!r}: it yielded no batch (is the dataset empty or smaller "
                    "than batch_size with drop_last=True?)"
                ) from None
            self.epoch, self.batches = self.epoch + 1, 0
            iterator = self._start_epoch()
            try:
                batch = next(iterator)
            except StopIteration:
                raise ValueError(f"dataloader {self.name!r}: an epoch yielded no batch") from None
        self.batches += 1
        return batch

    def batches_per_epoch(self) -> int | None:
        with contextlib.suppress(TypeError):
            return len(self.dataloader)
        return None

    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "batches": self.batches,
            "seed": self.seed,
            "batches_per_epoch": self.batches_per_epoch(),
        }

    @staticmethod
    def check_state(state: Any, what: str) -> dict[str, int]:
        """The position stored in a checkpoint, checked (CheckpointError) without changing anything."""
        if not isinstance(state, Mapping):
            raise CheckpointError(f"{what}: expected a dict, got {type(state).__name__}")
        return {key: _check_count(state.get(key), f"{what}[{key!r}]") for key in ("epoch", "batches", "seed")}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continues at the position `state_dict()` recorded: the next batch is the one that followed it."""
        checked = self.check_state(state, f"dataloader {self.name!r} position")
        saved_length, length = state.get("batches_per_epoch"), self.batches_per_epoch()
        if saved_length is not None and length is not None and saved_length != length:
            logger.warning(
                "dataloader %r: %s batches per epoch now, %s when the checkpoint was saved: the data "
                "changed, so the batches after the resume differ from the saved run's",
                self.name,
                length,
                saved_length,
            )
        self._reset()
        self.epoch, self.batches, self.seed = checked["epoch"], checked["batches"], checked["seed"]


def _check_optimizer_state(optimizer: Any, state: Any, what: str) -> None:
    """Raises CheckpointError when `state` cannot be loaded into `optimizer` (group and parameter counts, shapes
    of the usual per-parameter buffers); changes nothing."""
    if (
        not isinstance(state, Mapping)
        or not isinstance(state.get("param_groups"), list)
        or not isinstance(state.get("state"), Mapping)
    ):
        raise CheckpointError(f"{what}: not an optimizer state (expected 'state' and 'param_groups')")
    groups, saved_groups = optimizer.param_groups, state["param_groups"]
    if len(groups) != len(saved_groups):
        raise CheckpointError(f"{what}: {len(saved_groups)} parameter groups in the checkpoint, {len(groups)} here")
    by_id: dict[Any, torch.Tensor] = {}
    for index, (group, saved) in enumerate(zip(groups, saved_groups)):
        if not isinstance(saved, Mapping) or not isinstance(saved.get("params"), list):
            raise CheckpointError(f"{what}: parameter group {index} is malformed")
        if len(saved["params"]) != len(group["params"]):
            raise CheckpointError(
                f"{what}: parameter group {index} holds {len(saved['params'])} parameters in the "
                f"checkpoint, {len(group['params'])} here"
            )
        by_id.update(zip(saved["params"], group["params"]))
    for param_id, param_state in state["state"].items():
        if param_id not in by_id or not isinstance(param_state, Mapping):
            raise CheckpointError(f"{what}: state for an unknown parameter {param_id!r}")
        param = by_id[param_id]
        for key in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq", "momentum_buffer"):
            value = param_state.get(key)
            if isinstance(value, torch.Tensor) and value.shape != param.shape:
                raise CheckpointError(
                    f"{what}: {key} of parameter {param_id} has shape {tuple(value.shape)} in the "
                    f"checkpoint, the parameter {tuple(param.shape)}"
                )


def _check_scheduler_state(scheduler: LambdaLR, state: Any, what: str) -> None:
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{what}: expected a dict, got {type(state).__name__}")
    lambdas = state.get("lr_lambdas")
    if lambdas is not None and (
        not isinstance(lambdas, list)
        or len(lambdas) != len(scheduler.lr_lambdas)
        or not all(fn is None or isinstance(fn, Mapping) for fn in lambdas)
    ):
        raise CheckpointError(f"{what}: its lr_lambdas do not fit the {len(scheduler.lr_lambdas)} parameter group(s)")
    last_epoch = state.get("last_epoch", 0)
    if isinstance(last_epoch, bool) or not isinstance(last_epoch, int):
        raise CheckpointError(f"{what}['last_epoch']: expected an integer, got {last_epoch!r}")


def _check_scaler_state(state: Any, what: str) -> None:
    needed = ("scale", "growth_factor", "backoff_factor", "growth_interval")
    if not isinstance(state, Mapping) or not all(key in state for key in needed):
        raise CheckpointError(f"{what}: not a GradScaler state (expected {', '.join(needed)})")


def _take_prefix(tensors: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}


def _json_safe(obj: Any) -> Any:
    """A JSON-able copy of a trainer config (values JSON cannot hold are stored as their repr)."""
    return json.loads(json.dumps(obj, default=repr))


def extract_model_state(tensors: Mapping[str, torch.Tensor], name: str, ema: bool = False) -> dict[str, torch.Tensor]:
    """The state dict of model `name` (or of its EMA copy) from the tensors of a trainer checkpoint."""
    if ema:
        return _take_prefix(tensors, f"ema.{name}.ema_model.")
    return _take_prefix(tensors, f"model.{name}.")


def process_rng_path(checkpoint: str | Path, process_index: int) -> Path:
    """The companion file in which process `process_index` (> 0) keeps its RNG states for `checkpoint`."""
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(f"{checkpoint.stem}.rng-rank{process_index}{checkpoint.suffix}")


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
    params: list[nn.Parameter]
    micro_batches: int = 0  # `accumulate` blocks entered since the last step
    in_no_sync: bool = False  # inside an `accumulate` block whose gradients stay local
    unsynced: bool = False  # the last backward pass left local (not all-reduced) gradients
    nonfinite_streak: int = 0  # consecutive steps skipped for NaN/inf gradients


# the distributed setups whose state dicts are gathered from every process: there saving is a collective operation
_COLLECTIVE_STATE_DICTS = (DistributedType.FSDP, DistributedType.DEEPSPEED, DistributedType.MEGATRON_LM)


def _make_accelerator(**kwargs: Any) -> Accelerator:
    try:
        return Accelerator(**kwargs)
    except ValueError as err:
        if "already been initialized" not in str(err):
            raise
        # accelerate keeps one state per process; resetting it would change the trainers created before this one
        state = AcceleratorState()
        raise ValueError(
            f"mixed_precision, cpu: accelerate allows one setting per process, and a trainer created "
            f"earlier in this process chose mixed_precision={state.mixed_precision!r} on "
            f"{state.device}; create every trainer of a process with the same mixed_precision= and "
            f"cpu=, or train this one in a process of its own (got mixed_precision="
            f"{kwargs.get('mixed_precision')!r}, cpu={kwargs.get('cpu')!r})"
        ) from err


class BaseTrainer:
    """Optimizers, schedulers, EMA, mixed precision, accumulation, NaN guard and checkpoints for named models.

    Args:
        mixed_precision: 'no', 'bf16' or 'fp16' ('fp16' needs a GPU; on CPU it falls back to 'bf16'). accelerate
            allows one mixed precision per process: every trainer of a process must use the same.
        cpu: force the CPU; None picks the CPU when no GPU is available.
        gradient_accumulate_every: micro-batches per optimizer step: `backward` divides losses by it, and
            `accumulate(name)` blocks all-reduce gradients across processes in the last micro-batch only.
        results_folder: where `self.checkpoints` (a CheckpointManager) keeps numbered checkpoints.
        keep_last_checkpoints: how many numbered checkpoints to keep.
        log_with: accelerate tracker(s) ('tensorboard', 'wandb', ...), see `init_trackers` / `log`.
        seed: seeds python, numpy and torch: the main process with `seed`, every other one with a seed derived from
            `seed` and its rank (`process_seed`); also fixes the order of the `add_dataloader` streams.
        max_consecutive_nonfinite_steps: `step` raises FloatingPointError when this many steps of a model in a row
            had NaN/inf gradients (once the weights themselves are NaN, every later step would be skipped);
            None never stops.
        accelerate_kwargs: extra keyword arguments for `accelerate.Accelerator`.
        split_batches: True: a dataloader's `batch_size` is the batch of all processes together, split between
            them (accelerate's `split_batches`); False: each process draws `batch_size` items.
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
        max_consecutive_nonfinite_steps: int | None = 10,
        split_batches: bool = False,
    ):
        check_choice("mixed_precision", mixed_precision, ("no", "bf16", "fp16"))
        if not isinstance(split_batches, bool):
            raise TypeError(f"split_batches: expected a bool, got {type(split_batches).__name__}")
        check_positive_int("gradient_accumulate_every", gradient_accumulate_every)
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32):
            raise ValueError(f"seed: expected an integer in [0, 2**32) or None, got {seed!r}")
        if max_consecutive_nonfinite_steps is not None:
            check_positive_int("max_consecutive_nonfinite_steps", max_consecutive_nonfinite_steps)
        if cpu is None:
            cpu = not torch.cuda.is_available()
        if mixed_precision == "fp16" and (cpu or not torch.cuda.is_available()):
            logger.warning("mixed_precision='fp16' needs a GPU; using 'bf16' on the CPU instead")
            mixed_precision = "bf16"

        accelerate_kwargs = dict(accelerate_kwargs or {})
        handlers = list(accelerate_kwargs.pop("kwargs_handlers", None) or [])
        # without DistributedDataParallelKwargs of the caller's, `add_model` picks find_unused_parameters per model
        self._caller_ddp_kwargs = any(isinstance(h, DistributedDataParallelKwargs) for h in handlers)
        if results_folder is not None:
            accelerate_kwargs.setdefault("project_dir", str(results_folder))
        if split_batches:
            if "dataloader_config" in accelerate_kwargs:
                raise ValueError(
                    "split_batches: give it either here or in accelerate_kwargs['dataloader_config'], not both"
                )
            accelerate_kwargs["dataloader_config"] = DataLoaderConfiguration(split_batches=True)
        self.accelerator = _make_accelerator(
            cpu=cpu, mixed_precision=mixed_precision, log_with=log_with, kwargs_handlers=handlers, **accelerate_kwargs
        )

        # one id shared by the processes of this run: it ties the per-process RNG files to their checkpoint
        run_id = [uuid.uuid4().hex]
        if self.num_processes > 1:
            broadcast_object_list(run_id)
        self.run_id: str = run_id[0]
        self.seed = seed
        if seed is not None:
            set_seed(process_seed(seed, self.process_index))
        # the order of the data streams: the same on every process (they take their share of each batch list)
        self.data_seed = seed if seed is not None else int(self.run_id[:8], 16)

        self.mixed_precision = mixed_precision
        self.gradient_accumulate_every = gradient_accumulate_every
        self.max_consecutive_nonfinite_steps = max_consecutive_nonfinite_steps
        self.results_folder = Path(results_folder) if results_folder is not None else None
        self.checkpoints = (
            CheckpointManager(self.results_folder, keep_last=keep_last_checkpoints)
            if self.results_folder is not None
            else None
        )
        if self.results_folder is not None and self.is_main:
            self.results_folder.mkdir(parents=True, exist_ok=True)

        self._registry: dict[str, _Registered] = {}
        self._streams: dict[str, DataStream] = {}
        # positions of data streams read from a checkpoint before the stream was added (applied by add_dataloader)
        self._pending_streams: dict[str, dict] = {}
        # optimizer steps taken by each registered model (not `steps`: ImagenTrainer's seed API names its per-unet
        # tensor so)
        self.step_counts: dict[str, int] = {}
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
    def process_index(self) -> int:
        return self.accelerator.process_index

    @property
    def is_distributed(self) -> bool:
        """Whether this run trains in several processes (or under a distributed backend)."""
        return self.accelerator.distributed_type != DistributedType.NO or self.num_processes > 1

    @property
    def is_local_main(self) -> bool:
        """Whether this is the first process of its machine (e.g. to write machine-local files once)."""
        return self.accelerator.is_local_main_process

    def print(self, msg: Any) -> None:
        """Logs `msg` once (from the main process) at INFO level, on the logger of the trainer's module (the
        published trainers printed it)."""
        if self.is_main:
            logging.getLogger(type(self).__module__).info("%s", msg)

    def results_path(self, *parts: str) -> Path:
        """`results_folder / parts...`: where the trainer writes samples and exports; a ValueError when it was
        built without `results_folder`."""
        if self.results_folder is None:
            raise ValueError("results_folder: this trainer was built without one, so it has nowhere to write to")
        return self.results_folder.joinpath(*parts)

    @property
    def global_step(self) -> int:
        """Total number of optimizer steps taken over all registered models."""
        return sum(self.step_counts.values())

    @property
    def step_count(self) -> int:
        """The step counter that `fit` trains up to `num_train_steps` and that periodic tasks are timed by: here
        `global_step`; a trainer with a main model (and e.g. a discriminator beside it) counts that model's steps."""
        return self.global_step

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
        find_unused_parameters: bool = False,
    ) -> nn.Module:
        """Registers `module` under `name` with its own optimizer (AdamW unless given), optional warmup + cosine
        schedule, optional EMA copy; moves it to the device and prepares it for distributed training.
        `find_unused_parameters`: DDP's option, needed (and only then worth its cost) when some trainable
        parameters get no gradient in some steps (images skipping temporal layers, conditioning dropout).
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
            optimizer = torch.optim.AdamW(
                params, lr=lr, betas=cast(tuple[float, float], tuple(betas)), eps=eps, weight_decay=weight_decay
            )

        scheduler = None
        if warmup_steps or total_steps:
            scheduler = LambdaLR(optimizer, warmup_cosine_lambda(warmup_steps, total_steps, min_lr_factor))

        ema_model = None
        if ema:  # copied before `prepare`, which may shard the module (FSDP)
            ema_kwargs = {"beta": ema_decay, "update_every": ema_update_every, **(ema_kwargs or {})}
            ema_model = EMA(module, include_online_model=False, **ema_kwargs).to(self.device)

        module = module.to(self.device)
        if not self._caller_ddp_kwargs:
            # accelerate reads its DDP options when it wraps a model: set them for this one
            self.accelerator.ddp_handler = DistributedDataParallelKwargs(find_unused_parameters=find_unused_parameters)
        prepared_model, prepared_optimizer = self.accelerator.prepare(module, optimizer)
        if (
            ema_model is not None
            and self.num_processes > 1
            and self.accelerator.distributed_type not in _COLLECTIVE_STATE_DICTS
        ):
            # DDP gave every process the main process's weights: the EMA copies start from them everywhere too
            ema_model.ema_model.load_state_dict(self.accelerator.unwrap_model(prepared_model).state_dict())
        self._registry[name] = _Registered(
            prepared_model, prepared_optimizer, scheduler, ema_model, max_grad_norm, params
        )
        self.step_counts[name] = 0
        self.skipped_steps[name] = 0
        return prepared_model

    def _get(self, name: str | None) -> tuple[str, _Registered]:
        if name is None:
            if len(self._registry) != 1:
                raise ValueError(
                    f"name: {len(self._registry)} models are registered "
                    f"({', '.join(self._registry) or 'none'}); say which one"
                )
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

    # -- data ------------------------------------------------------------------------------------------------

    def prepare_dataloader(self, dataloader):
        """Shards a DataLoader across processes (and moves batches to the device). Its position is not saved in
        checkpoints: train from `add_dataloader` to resume mid-epoch."""
        return self.accelerator.prepare(dataloader)

    def add_dataloader(self, name: str, dataloader: DataLoader) -> DataStream:
        """Registers a training DataLoader under `name`: returns an endless iterator over its batches (sharded
        across processes, on the device) whose position checkpoints record, so that a resumed run goes on with
        the very batches the saved run would have drawn, also in the middle of an epoch.

        A loader with a plain random or sequential sampler is rebuilt on a sampler whose order is fixed by the
        trainer's seed and the epoch, and each item is drawn with the CPU RNGs seeded for that item (random
        augmentations repeat on resume, whatever `num_workers`); other samplers are kept, with a warning.
        """
        if not isinstance(name, str) or not name:
            raise ValueError(f"name: expected a non-empty string, got {name!r}")
        if name in self._streams:
            raise ValueError(f"name: a dataloader named {name!r} is already added")
        if not isinstance(dataloader, DataLoader):
            raise TypeError(f"dataloader: expected a torch DataLoader, got {type(dataloader).__name__}")
        seed = mix_seed(self.data_seed, zlib.crc32(name.encode("utf-8")))
        loader, sampler = _resumable_loader(dataloader, name, seed)
        stream = DataStream(name, self.accelerator.prepare(loader), sampler, seed)
        if name in self._pending_streams:
            stream.load_state_dict(self._pending_streams.pop(name))
        self._streams[name] = stream
        return stream

    @property
    def data_streams(self) -> dict[str, DataStream]:
        return dict(self._streams)

    # -- the optimisation step ---------------------------------------------------------------------------------

    @contextlib.contextmanager
    def accumulate(self, name: str | None = None) -> Iterator[None]:
        """One micro-batch of model `name`: run its forward and `backward` passes inside. Across processes the
        gradients stay local (accelerate's `no_sync`) in all but the last of `gradient_accumulate_every` blocks
        before `step`, whose backward all-reduces the sum once.

        (accelerate's own `accumulate()` counts micro-batches in a state shared by every model and every
        Accelerator of the process; this counts them per model.)
        """
        name, reg = self._get(name)
        last = reg.micro_batches + 1 >= self.gradient_accumulate_every
        reg.micro_batches += 1
        reg.in_no_sync = not last
        try:
            with contextlib.nullcontext() if last else self.accelerator.no_sync(reg.model):
                yield
        finally:
            reg.in_no_sync = False

    def backward(self, loss: torch.Tensor, name: str | None = None, fraction: float = 1.0) -> None:
        """Backpropagates `loss * fraction / gradient_accumulate_every` (mixed-precision scaling included). Inside
        `accumulate(name)` its gradients are all-reduced across processes in the last micro-batch only; outside,
        at once."""
        _, reg = self._get(name)
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
            raise ValueError(
                f"loss: expected a scalar tensor, got {type(loss).__name__} {tuple(getattr(loss, 'shape', ()))}"
            )
        # a backward pass outside no_sync all-reduces everything accumulated so far
        reg.unsynced = reg.in_no_sync and self.num_processes > 1
        self.accelerator.backward(loss * (fraction / self.gradient_accumulate_every))

    def _grad_norm(self, reg: _Registered) -> torch.Tensor:
        """Clips the gradients to `max_grad_norm` (if set) and returns their total norm before clipping."""
        grads = [p.grad for p in reg.params if p.grad is not None]
        if not grads:
            return torch.zeros((), device=self.device)
        scaler = self.accelerator.scaler
        if scaler is not None:
            # this optimizer only: accelerate's clip_grad_norm_ unscales every optimizer of the process, also those
            # of models whose gradients are still accumulating
            scaler.unscale_(reg.optimizer.optimizer)
        elif reg.max_grad_norm is not None:
            norm = self.accelerator.clip_grad_norm_(reg.params, reg.max_grad_norm)
            if norm is not None:  # DeepSpeed clips on its own and may not report the norm
                return norm
        if reg.max_grad_norm is not None:
            return torch.nn.utils.clip_grad_norm_(reg.params, reg.max_grad_norm)
        return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.detach().float()) for g in grads]))

    def _count_nonfinite(self, name: str, reg: _Registered) -> None:
        reg.nonfinite_streak += 1
        limit = self.max_consecutive_nonfinite_steps
        if limit is not None and reg.nonfinite_streak >= limit:
            raise FloatingPointError(
                f"model {name!r}: {reg.nonfinite_streak} optimizer steps in a row had non-finite (NaN/inf) gradients "
                f"and were skipped (max_consecutive_nonfinite_steps={limit}), at step {self.step_counts[name]}; the "
                "weights are left as they were. Lower the learning rate, set max_grad_norm, check the data for "
                "NaN/inf values, or resume from an earlier checkpoint"
            )

    def step(self, name: str | None = None) -> bool:
        """Clips gradients, skips the update if any gradient is NaN/inf (zeroing them and logging a warning),
        otherwise steps the optimizer and the scheduler, updates the EMA and counts the step. Returns whether
        the optimizer stepped. Raises FloatingPointError after `max_consecutive_nonfinite_steps` skips in a row."""
        name, reg = self._get(name)
        if reg.unsynced:
            raise RuntimeError(
                f"model {name!r}: the last backward pass before step() ran inside a no_sync "
                f"accumulate() block, so the processes hold different gradients; use "
                f"accumulate({name!r}) gradient_accumulate_every={self.gradient_accumulate_every} "
                "times per step"
            )
        reg.micro_batches = 0
        scaler = self.accelerator.scaler
        grad_norm = self._grad_norm(reg)
        finite = bool(torch.isfinite(grad_norm))  # after DDP's all-reduce every process agrees

        if not finite and scaler is None:
            self.skipped_steps[name] += 1
            logger.warning(
                "non-finite gradients for %r (norm %s) at step %d: optimizer step skipped (%d so far)",
                name,
                grad_norm.item(),
                self.step_counts[name],
                self.skipped_steps[name],
            )
            reg.optimizer.zero_grad(set_to_none=True)
            self._count_nonfinite(name, reg)
            return False

        reg.optimizer.step()
        reg.optimizer.zero_grad(set_to_none=True)
        if scaler is not None and reg.optimizer.step_was_skipped:
            # fp16 overflow: the scaler lowers its scale, which is routine, so only at debug level
            self.skipped_steps[name] += 1
            logger.debug("fp16 overflow for %r at step %d: step skipped", name, self.step_counts[name])
            self._count_nonfinite(name, reg)
            return False

        reg.nonfinite_streak = 0
        if reg.scheduler is not None:
            reg.scheduler.step()
        if reg.ema is not None:
            self._update_ema(name, reg, reg.ema)
        self.step_counts[name] += 1
        return True

    def _update_ema(self, name: str, reg: _Registered, ema: EMA) -> None:
        will_read_weights = not bool(ema.initted) or int(ema.step) % ema.update_every == 0
        if will_read_weights:
            weights_finite = torch.stack([torch.isfinite(p.detach()).all() for p in reg.params]).all()
            if not bool(weights_finite):
                logger.error("weights of %r are not finite at step %d: EMA not updated", name, self.step_counts[name])
                return
        ema.update()

    # -- checkpoints -----------------------------------------------------------------------------------------

    def extra_state(self) -> tuple[dict[str, torch.Tensor], dict]:
        """Override to store more in checkpoints: returns `(tensors, json_metadata)`."""
        return {}, {}

    def load_extra_state(self, tensors: dict[str, torch.Tensor], metadata: dict) -> None:
        """Override to restore what `extra_state` stored. It runs last, after every other part of the checkpoint
        was checked and loaded: check what it reads before changing anything, so that a failure leaves the
        trainer as it was as far as possible."""

    def state_for_saving(self) -> tuple[dict[str, torch.Tensor], dict]:
        """Everything `save` writes, as `(tensors, metadata)`, with this process's RNG states. Local under DDP;
        under FSDP / DeepSpeed every process must call it (the weights are gathered)."""
        tensors: dict[str, torch.Tensor] = {}
        meta: dict[str, Any] = {
            "format": TRAINER_FORMAT,
            "format_version": TRAINER_FORMAT_VERSION,
            "trainer": class_path(type(self)),
            "versions": self._versions(),
            "steps": dict(self.step_counts),
            "skipped_steps": dict(self.skipped_steps),
            "config": _json_safe(self.config),
            "seed": self.seed,
            "run": self.run_id,
            "num_processes": self.num_processes,
            "data": {**self._pending_streams, **{name: s.state_dict() for name, s in self._streams.items()}},
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
                sched_tensors, meta["schedulers"][name] = flatten_state_dict(
                    reg.scheduler.state_dict(), prefix=f"scheduler.{name}."
                )
                tensors.update(sched_tensors)
        if self.accelerator.scaler is not None:
            scaler_tensors, meta["scaler"] = flatten_state_dict(self.accelerator.scaler.state_dict(), prefix="scaler.")
            tensors.update(scaler_tensors)
        rng_tensors, meta["rng"] = _rng_state(self.device)
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

    def save(self, path: str | Path | None = None) -> Path:
        """Writes one safetensors checkpoint (models, EMAs, optimizers, schedulers, steps, data positions, RNG,
        config) and returns its path; `path=None` numbers it in `results_folder` (keeping the last
        `keep_last_checkpoints`).

        No collective operation: call it from the main process only (`if trainer.is_main: trainer.save(p)`) or
        from every process. The main process writes the file (atomically); any other process that calls it writes
        only its own RNG states, to `process_rng_path(path, rank)`, for an exact resume of every process. Another
        process reading the file right after must wait for the main one first (`load` does). Under FSDP /
        DeepSpeed the weights are gathered from every process: call it from every process there.
        """
        numbered: CheckpointManager | None = None  # set when path is None
        if path is None:
            if self.checkpoints is None:
                raise ValueError("path: give a file path, or pass results_folder= to the trainer to number them")
            numbered = self.checkpoints
            target = numbered.path_for(self.global_step)
        else:
            target = Path(path)
        if self.is_main or self.accelerator.distributed_type in _COLLECTIVE_STATE_DICTS:
            tensors, meta = self.state_for_saving()
        if self.is_main:
            if numbered is not None:
                numbered.save(self.global_step, tensors, meta)
            else:
                remove_stale_temporary_files(target.parent, target.stem)
                save_checkpoint(target, tensors, meta)
            logger.info("saved checkpoint %s", target)
        else:
            rng_tensors, rng_meta = _rng_state(self.device)
            save_checkpoint(
                process_rng_path(target, self.process_index),
                rng_tensors,
                {
                    "format": RNG_FORMAT,
                    "run": self.run_id,
                    "steps": dict(self.step_counts),
                    "process_index": self.process_index,
                    "rng": rng_meta,
                },
            )
        return target

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

    def load(
        self,
        path: str | Path = "latest",
        *,
        strict: bool = True,
        load_optimizers: bool = True,
        restore_rng: bool = True,
        ignore_models: Collection[str] = (),
    ) -> dict | None:
        """Restores a checkpoint written by `save` (`'latest'` = newest numbered one in `results_folder`); call it
        from every process. Returns its metadata, or None when `'latest'` was asked and there is none yet.

        All or nothing: the whole file is checked first (metadata, tensors, model names, keys and shapes,
        optimizer and scheduler states, data positions, RNG states), and a `CheckpointError` naming the versions
        that wrote and read it leaves the trainer exactly as it was. `strict=True` refuses a checkpoint whose
        models are not exactly the registered ones (besides `ignore_models`, names the caller expects and skips)
        and keys that do not match; `strict=False` loads what both have.
        """
        self.accelerator.wait_for_everyone()  # a checkpoint the main process just saved is complete
        if self.checkpoints is not None:
            self.checkpoints.remove_stale_temporary_files()
        resolved = self.resolve_checkpoint(path)
        if resolved is None:
            logger.info("no checkpoint to resume from in %s; starting fresh", self.results_folder)
            return None
        remove_stale_temporary_files(resolved.parent, resolved.stem)
        tensors, meta = load_checkpoint(resolved, map_location="cpu")
        try:
            actions = self._plan_load(
                resolved,
                tensors,
                meta,
                strict=strict,
                load_optimizers=load_optimizers,
                restore_rng=restore_rng,
                ignore_models=set(ignore_models),
            )
        except CheckpointError as err:
            if str(resolved) in str(err):
                raise
            raise CheckpointError(f"{resolved}: {err}; nothing was loaded") from err
        except (KeyError, TypeError, ValueError, IndexError, AttributeError, RuntimeError) as err:
            raise CheckpointError(
                f"{resolved} has broken metadata ({type(err).__name__}: {err}); nothing was loaded"
            ) from err
        try:
            for action in actions:
                action()
        except Exception:
            logger.error(
                "loading %s failed after every part of it was checked: the trainer is partly loaded; "
                "load a checkpoint again before training on",
                resolved,
            )
            raise
        self.load_extra_state(_take_prefix(tensors, "extra."), meta.get("extra", {}))
        logger.info("loaded checkpoint %s (steps %s)", resolved, self.step_counts)
        return meta

    def _plan_load(
        self,
        resolved: Path,
        tensors: dict[str, torch.Tensor],
        meta: Any,
        *,
        strict: bool,
        load_optimizers: bool,
        restore_rng: bool,
        ignore_models: set[str],
    ) -> list[Callable[[], Any]]:
        """Checks every part of a checkpoint against this trainer, changing nothing; returns the actions that load
        it (which then cannot fail on the checkpoint's account)."""
        if not isinstance(meta, dict) or meta.get("format") != TRAINER_FORMAT:
            raise CheckpointError(
                f"{resolved} was not written by a trainer's save() "
                f"(format {meta.get('format') if isinstance(meta, dict) else None!r})"
            )
        saved_versions, current_versions = meta.get("versions", {}), self._versions()
        for package, current in current_versions.items():
            saved = saved_versions.get(package)
            if saved is not None and saved != current:
                logger.warning(
                    "%s was saved with %s %s and is loaded with %s %s", resolved, package, saved, package, current
                )
        describe = (str(saved_versions), str(current_versions))  # "checkpoint written by version {...}"
        saved_models = meta.get("models", {})
        if not isinstance(saved_models, dict):
            raise CheckpointError(f"{resolved}: its 'models' entry is not a dict")

        missing = [name for name in self._registry if name not in saved_models]
        unknown = [name for name in saved_models if name not in self._registry and name not in ignore_models]
        if strict and (missing or unknown):
            problems = ([f"no model(s) {missing}"] if missing else []) + (
                [f"model(s) {unknown} that this trainer does not register"] if unknown else []
            )
            raise CheckpointError(
                f"{resolved} holds {' and '.join(problems)} (it holds {list(saved_models)}, this "
                f"trainer {list(self._registry)}); written by version(s) {describe[0]}, read by "
                f"version(s) {describe[1]}; strict=False loads the models both have"
            )
        if missing:
            logger.warning("%s has no model(s) %s: they keep their current state", resolved, missing)
        if unknown:
            logger.warning("%s holds model(s) %s that this trainer does not register; ignored", resolved, unknown)

        actions: list[Callable[[], Any]] = []
        steps, skipped = meta.get("steps", {}), meta.get("skipped_steps", {})
        for name, reg in self._registry.items():
            if name in missing:
                continue
            source = f"{resolved} (model {name!r})"
            model = self.accelerator.unwrap_model(reg.model)
            model_state = extract_model_state(tensors, name)
            check_state_dict(
                model, model_state, strict=strict, saved_version=describe[0], current_version=describe[1], source=source
            )
            actions.append(functools.partial(model.load_state_dict, model_state, strict=strict))
            if reg.ema is not None:
                ema_state = _take_prefix(tensors, f"ema.{name}.")
                if ema_state:
                    check_state_dict(
                        reg.ema,
                        ema_state,
                        strict=strict,
                        saved_version=describe[0],
                        current_version=describe[1],
                        source=f"{resolved} (EMA of {name!r})",
                    )
                    actions.append(functools.partial(reg.ema.load_state_dict, ema_state, strict=strict))
                else:
                    logger.warning("%s has no EMA for %r; the EMA restarts from the loaded weights", resolved, name)
                    actions.append(
                        functools.partial(lambda ema, m: ema.ema_model.load_state_dict(m.state_dict()), reg.ema, model)
                    )
            if load_optimizers:
                if name in meta.get("optimizers", {}):
                    opt_state = unflatten_state_dict(tensors, meta["optimizers"][name])
                    _check_optimizer_state(reg.optimizer, opt_state, f"{source}, optimizer")
                    actions.append(functools.partial(reg.optimizer.load_state_dict, opt_state))
                else:
                    logger.warning("%s has no optimizer state for %r: it restarts", resolved, name)
                if reg.scheduler is not None and name in meta.get("schedulers", {}):
                    sched_state = unflatten_state_dict(tensors, meta["schedulers"][name])
                    _check_scheduler_state(reg.scheduler, sched_state, f"{source}, scheduler")
                    actions.append(functools.partial(reg.scheduler.load_state_dict, sched_state))
            step_count = _check_count(steps.get(name, 0), f"{resolved}: steps[{name!r}]")
            skipped_count = _check_count(skipped.get(name, 0), f"{resolved}: skipped_steps[{name!r}]")
            actions.append(functools.partial(self._set_counts, name, step_count, skipped_count))

        scaler = self.accelerator.scaler
        if load_optimizers and scaler is not None and "scaler" in meta:
            scaler_state = unflatten_state_dict(tensors, meta["scaler"])
            _check_scaler_state(scaler_state, f"{resolved}: scaler")
            actions.append(functools.partial(scaler.load_state_dict, scaler_state))

        streams = meta.get("data", {})
        if not isinstance(streams, dict):
            raise CheckpointError(f"{resolved}: its 'data' entry is not a dict")
        for name, state in streams.items():
            DataStream.check_state(state, f"{resolved}: data[{name!r}]")
        actions.append(functools.partial(self._set_stream_positions, dict(streams), resolved))

        if restore_rng:
            # every process checks the main process's states, so that a broken file fails on all of them alike
            main_rng = _parse_rng_state(tensors, meta.get("rng"), self.device)
            if self.process_index == 0:
                actions.append(functools.partial(main_rng.apply, self.device))
            else:
                actions.append(self._plan_process_rng(resolved, meta))
        return actions

    def _set_counts(self, name: str, steps: int, skipped: int) -> None:
        self.step_counts[name], self.skipped_steps[name] = steps, skipped
        reg = self._registry[name]
        reg.micro_batches, reg.unsynced, reg.nonfinite_streak = 0, False, 0

    def _set_stream_positions(self, streams: dict[str, Any], source: Path) -> None:
        self._pending_streams = {}
        for name, state in streams.items():
            if name in self._streams:
                self._streams[name].load_state_dict(state)
            else:  # added later (e.g. ImagenTrainer.add_train_dataset after a resume in the constructor)
                self._pending_streams[name] = dict(state)
        for name in self._streams:
            if name not in streams:
                logger.info("%s records no position of dataloader %r: it goes on from where it is", source, name)

    def _plan_process_rng(self, resolved: Path, meta: dict) -> Callable[[], None]:
        """What restores the RNG of a process other than the main one: its own companion file when it wrote one
        for this very checkpoint, else a seed derived from the run's seed, its rank and the step. Never raises
        (a process failing alone would leave the others waiting)."""
        rank = self.process_index
        companion = process_rng_path(resolved, rank)
        if companion.is_file():
            try:
                rng_tensors, rng_meta = load_checkpoint(companion)
                if (
                    rng_meta.get("format") == RNG_FORMAT
                    and rng_meta.get("run") == meta.get("run")
                    and rng_meta.get("steps") == meta.get("steps")
                ):
                    return functools.partial(
                        _parse_rng_state(rng_tensors, rng_meta.get("rng"), self.device).apply, self.device
                    )
                logger.info("%s belongs to another save than %s: not used", companion, resolved)
            except Exception as err:  # noqa: BLE001 (any failure falls back to re-seeding, on this process only)
                logger.warning("cannot read %s (%s): process %d re-seeds its RNGs instead", companion, err, rank)
        saved_seed = meta.get("seed")
        base = (
            saved_seed
            if isinstance(saved_seed, int)
            else (self.seed if self.seed is not None else int(self.run_id[:8], 16))
        )
        step = sum(v for v in meta.get("steps", {}).values() if isinstance(v, int))
        seed = mix_seed(base, rank, step)

        def reseed() -> None:
            logger.info(
                "process %d: %s holds no RNG state of this process (saved by the main process only); "
                "re-seeded from the seed, the rank and the step",
                rank,
                resolved,
            )
            set_seed(seed)

        return reseed

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
        return every is not None and every != 0 and step > 0 and step % every == 0

    def averaged_model(self, name: str | None = None) -> nn.Module:
        """The model to sample from or publish: the EMA copy of `name` if it has one, else the plain module."""
        ema = self.ema(name)
        return ema.ema_model if ema is not None else self.unwrap(name)

    def save_pretrained(
        self, folder: str | Path | None = None, name: str | None = None, *, ema: bool = True
    ) -> Path | None:
        """Publishes model `name` (default: the only registered one): `save_pretrained` of its EMA copy (`ema=False`:
        of the trained weights) into `folder` (default `results_folder/<name>`), written by the main process;
        returns that folder (None on the other processes). No collective operation, like `save`. The folder loads
        back with the model class's `from_pretrained` (a training checkpoint is `save()`)."""
        name, _ = self._get(name)
        if folder is None:
            if self.results_folder is None:
                raise ValueError("folder: give a folder, or pass results_folder= to the trainer")
            folder = self.results_folder / name
        if not self.is_main:
            return None
        model = self.averaged_model(name) if ema else self.unwrap(name)
        save_pretrained = getattr(model, "save_pretrained", None)
        if not callable(save_pretrained):
            raise TypeError(f"name: model {name!r} is a {type(model).__name__}, which has no save_pretrained")
        path = Path(save_pretrained(folder))
        logger.info("saved model %r to %s", name, path)
        return path

    def save_and_export(self, name: str, folder: str | Path | None = None) -> Path | None:
        """A resumable checkpoint (`save()`) plus `save_pretrained` of `averaged_model(name)` into `folder`
        (default `results_folder/<name>`) by the main process; returns that folder (None elsewhere). Like `save`,
        call it from every process or from the main one only."""
        self.save()
        return self.save_pretrained(folder, name)

    # -- the loop ----------------------------------------------------------------------------------------------

    def train_step(self) -> dict[str, float]:
        """One optimizer step of every trained model; returns its logs `{name: float}` (at least `'loss'`).
        Implemented by each package's trainer."""
        raise NotImplementedError(f"{type(self).__name__} does not implement train_step()")

    def periodic_tasks(self) -> Sequence[tuple[int | None, Callable[[], Any]]]:
        """The `(period, callback)` pairs `fit` runs by default (samples, checkpoints): none here."""
        return ()

    # the progress bar of `fit`: its label, and progress-bar label -> key of the logs of `train_step`
    progress_desc = "training"
    progress_postfix: Mapping[str, str] = {"loss": "loss"}

    def fit(
        self,
        num_train_steps: int | None = None,
        train_step: Callable[[], Mapping[str, float]] | None = None,
        *,
        step_count: Callable[[], int] | None = None,
        every: Sequence[tuple[int | None, Callable[[], Any]]] | None = None,
        at_end: Callable[[], Any] | None = None,
        desc: str | None = None,
        postfix: Mapping[str, str] | None = None,
        log_fn: Callable[[dict[str, float]], None] | None = None,
    ) -> int:
        """Calls `train_step()` until `step_count()` reaches `num_train_steps`, with a progress bar, tracker logging
        and periodic callbacks; returns the final step count.

        Args:
            num_train_steps: default: the trainer's `num_train_steps` attribute.
            train_step: one optimisation step; returns its logs `{name: float}` (default: `self.train_step`).
            step_count: the step counter that ends the loop (default: the `step_count` property); a step skipped
                by the NaN guard does not advance it, so the loop runs until `num_train_steps` real updates were
                made.
            every: `(period, callback)` pairs: `callback()` runs after every `period`-th step (None/0: never),
                e.g. `[(save_results_every, self.save_results), (save_model_every, self.save_model)]` (default:
                `self.periodic_tasks()`).
            at_end: called once after the loop (e.g. a final `save_model`).
            desc: the progress bar's label (default: `progress_desc`).
            postfix: progress-bar label -> log key (default: `progress_postfix`).
            log_fn: also called with each step's logs.
        """
        if num_train_steps is None:
            num_train_steps = getattr(self, "num_train_steps", None)
            if num_train_steps is None:
                raise ValueError("num_train_steps: give the number of steps to train (this trainer sets none)")
        train_step = train_step if train_step is not None else self.train_step
        every = every if every is not None else self.periodic_tasks()
        check_positive_int("num_train_steps", num_train_steps)
        step_count = step_count if step_count is not None else (lambda: self.step_count)
        desc = desc if desc is not None else self.progress_desc
        postfix = dict(postfix if postfix is not None else self.progress_postfix)
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

    A tokenizer trainer that reads a dataset is a configuration of this class: `setup_autoencoder(...)` registers
    the model, the optional validation split, the checkpointed data stream and resumes; the subclass then only says
    how a collated batch becomes the model's input (`batch_input`), what the loss logs (`autoencoder_loss`) and
    how reconstructions are written (`reconstruct`, `write_reconstructions`).

    The keywords every tokenizer trainer shares are this constructor's: the data (`batch_size`, `valid_frac`,
    `random_split_seed`, `num_workers`), the optimizers (`lr`, `discr_lr`, `weight_decay`, `warmup_steps`,
    `max_grad_norm`, `discr_max_grad_norm`, `grad_accum_every`), the EMA (`use_ema`, `ema_decay`,
    `ema_update_every`, `ema_update_after_step`), the schedule (`apply_grad_penalty_every`, `save_results_every`,
    `save_model_every`) and `resume` (a checkpoint `setup_autoencoder` loads). The published spellings `wd`
    (= `weight_decay`, default 0) and `ema_beta` (= `ema_decay`, default 0.995) are resolved here; the other keywords
    go to `BaseTrainer`.
    """

    progress_desc = "autoencoder"

    def __init__(
        self,
        *,
        num_train_steps: int,
        batch_size: int = 4,
        lr: float = 3e-4,
        discr_lr: float | None = None,
        weight_decay: float | None = None,
        warmup_steps: int = 0,
        grad_accum_every: int = 1,
        max_grad_norm: float | None = None,
        discr_max_grad_norm: float | None = None,
        apply_grad_penalty_every: int = 4,
        use_ema: bool = True,
        ema_decay: float | None = None,
        ema_update_every: int = 10,
        ema_update_after_step: int = 0,
        valid_frac: float = 0.0,
        random_split_seed: int = 42,
        save_results_every: int | None = 100,
        save_model_every: int | None = 1000,
        num_workers: int = 0,
        resume: str | Path | None = None,
        wd: float | None = None,
        ema_beta: float | None = None,
        **trainer_kwargs: Any,
    ):
        if "gradient_accumulate_every" in trainer_kwargs:
            raise TypeError("gradient_accumulate_every: not a keyword of this trainer, use grad_accum_every=")
        super().__init__(gradient_accumulate_every=grad_accum_every, **trainer_kwargs)
        check_positive_int("num_train_steps", num_train_steps)
        check_positive_int("apply_grad_penalty_every", apply_grad_penalty_every)
        check_positive_int("batch_size", batch_size)
        check_positive_int("ema_update_after_step", ema_update_after_step, allow_zero=True)
        if not 0.0 <= valid_frac < 1.0:
            raise ValueError(f"valid_frac: expected a fraction in [0, 1), got {valid_frac}")
        self.num_train_steps = num_train_steps
        self.apply_grad_penalty_every = apply_grad_penalty_every
        self.save_results_every = save_results_every
        self.save_model_every = save_model_every
        self.autoencoder_name: str | None = None
        self.use_gan = False
        # applied by `setup_autoencoder`, once the subclass has built its dataset
        self.batch_size = batch_size
        self.valid_frac = valid_frac
        self.random_split_seed = random_split_seed
        self.num_workers = num_workers
        self.resume = resume
        self.autoencoder_optim_kwargs: dict[str, Any] = dict(
            lr=lr,
            discr_lr=discr_lr,
            max_grad_norm=max_grad_norm,
            discr_max_grad_norm=discr_max_grad_norm,
            weight_decay=resolve_alias("weight_decay", weight_decay, "wd", wd, 0.0),
            warmup_steps=warmup_steps,
            ema=use_ema,
            ema_decay=resolve_alias("ema_decay", ema_decay, "ema_beta", ema_beta, 0.995),
            ema_update_every=ema_update_every,
            ema_kwargs={"update_after_step": ema_update_after_step},
        )

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
            self.add_model(
                name,
                autoencoder,
                lr=lr,
                max_grad_norm=max_grad_norm,
                total_steps=self.num_train_steps,
                **add_model_kwargs,
            )
        if use_gan and discr is not None:  # (checked above: use_gan needs one)
            self.add_model(
                "discr",
                discr,
                lr=discr_lr if discr_lr is not None else lr,
                max_grad_norm=discr_max_grad_norm,
                ema=False,
            )
        self.autoencoder_name = name
        self.use_gan = use_gan
        self.config.update(
            dict(num_train_steps=self.num_train_steps, lr=lr, apply_grad_penalty_every=self.apply_grad_penalty_every)
        )

    def setup_autoencoder(
        self,
        name: str,
        autoencoder: nn.Module,
        dataset: Any,
        *,
        collate_fn: Callable[[Sequence[Any]], Any],
        num_samples: int = 4,
    ) -> None:
        """Registers `autoencoder` (with its GAN when it has `use_vgg_and_gan`) and its training data with the
        settings given to the constructor, then resumes from its `resume` if given. `valid_frac` of `dataset` (a
        fixed split seeded by `random_split_seed`) is held out: the reconstructions of `save_results` come from it
        (from the training set when it is 0). The first `num_samples` items are reconstructed each time."""
        check_positive_int("num_samples", num_samples)
        valid_dataset = dataset
        if self.valid_frac > 0:
            valid_size = max(1, int(round(self.valid_frac * len(dataset))))
            if valid_size >= len(dataset):
                raise ValueError(f"valid_frac: {self.valid_frac} of {len(dataset)} items leaves nothing to train on")
            dataset, valid_dataset = torch.utils.data.random_split(
                dataset,
                [len(dataset) - valid_size, valid_size],
                generator=torch.Generator().manual_seed(self.random_split_seed),
            )
        self.dataset, self.valid_dataset = dataset, valid_dataset
        self.num_samples = num_samples
        self.collate_fn = collate_fn
        self.add_autoencoder(
            name,
            autoencoder,
            use_gan=bool(getattr(autoencoder, "use_vgg_and_gan", False)),
            **self.autoencoder_optim_kwargs,
        )
        loader = make_dataloader(dataset, self.batch_size, num_workers=self.num_workers, collate_fn=collate_fn)
        self.dataloader = self.add_dataloader("train", loader)  # its position is checkpointed
        self.config.update(batch_size=self.batch_size, valid_frac=self.valid_frac)
        if self.resume is not None:
            self.load(self.resume)

    # -- what a subclass provides ----------------------------------------------------------------------------

    def batch_input(self, batch: Any) -> Any:
        """What the autoencoder takes from a collated batch (default: the batch itself)."""
        return batch

    def reconstruct(self, model: nn.Module, inputs: Any) -> Any:
        """The reconstruction of `inputs` by `model` (in eval mode, no gradients) for `save_results`."""
        raise NotImplementedError

    def write_reconstructions(self, inputs: Any, reconstructions: Any) -> Path:
        """Writes inputs and reconstructions under `results_folder`; returns the path."""
        raise NotImplementedError

    def next_batch(self) -> Any:
        """The next training batch, on the device (what the autoencoder and `discriminator_loss` take)."""
        return self.batch_input(next(self.dataloader)).to(self.device)

    def autoencoder_loss(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, Mapping[str, torch.Tensor]]:
        """Runs under autocast: `(loss, {name: scalar tensor to log})` of the autoencoder on `batch`."""
        raise NotImplementedError

    @torch.no_grad()
    def save_results(self) -> Path | None:
        """Writes the reconstructions of the first `num_samples` validation items (`setup_autoencoder`) by the
        averaged model; returns the path (None on other processes than the main one)."""
        if not self.is_main:
            return None
        model = self.model_for_sampling()
        was_training = model.training
        model.eval()
        try:
            # read directly, not from the training loader: drawing from it on the main process only would put the
            # processes at different places in the data
            count = min(self.num_samples, len(self.valid_dataset))
            inputs = self.batch_input(self.collate_fn([self.valid_dataset[i] for i in range(count)]))
            inputs = inputs.to(self.device)
            reconstructions = self.reconstruct(model, inputs)
        finally:
            model.train(was_training)
        return self.write_reconstructions(inputs, reconstructions)

    # -- the generic part ------------------------------------------------------------------------------------

    def _registered_autoencoder_name(self) -> str:
        if self.autoencoder_name is None:
            raise ValueError("autoencoder: none is registered yet, call add_autoencoder(...) first")
        return self.autoencoder_name

    @property
    def step_count(self) -> int:
        return self.step_counts[self._registered_autoencoder_name()]

    def model_for_sampling(self) -> nn.Module:
        return self.averaged_model(self.autoencoder_name)

    def train_step(self) -> dict[str, float]:
        """One autoencoder step (and one discriminator step with the GAN); returns the mean losses."""
        name = self._registered_autoencoder_name()
        model = self.models[name]
        plain: Any = self.unwrap(name)  # the autoencoder itself: its loss methods are its own, not nn.Module's
        model.train()
        accumulate = self.gradient_accumulate_every
        logs: dict[str, float] = {}

        batches = []
        with frozen(getattr(plain, "discr", None)):
            for _ in range(accumulate):
                with self.accumulate(name):
                    batch = self.next_batch()
                    batches.append(batch)
                    with self.autocast():
                        loss, terms = self.autoencoder_loss(model, batch)
                    self.backward(loss, name)
                for key, value in {"loss": loss, **terms}.items():
                    number = value.detach().item() if isinstance(value, torch.Tensor) else float(value)
                    logs[key] = logs.get(key, 0.0) + number / accumulate
        self.step(name)

        if self.use_gan:
            apply_grad_penalty = self.step_count % self.apply_grad_penalty_every == 0
            logs["discr_loss"] = 0.0
            for batch in batches:
                with self.accumulate("discr"):
                    with self.autocast():
                        discr_loss = plain.discriminator_loss(
                            batch, apply_grad_penalty=apply_grad_penalty, discr=self.models["discr"]
                        )
                    self.backward(discr_loss, "discr")
                logs["discr_loss"] += discr_loss.item() / len(batches)
            self.step("discr")
        return logs

    def save_model(self) -> Path | None:
        """Checkpoint (resumable) plus `results_folder/<name>` (`save_pretrained` of the EMA model)."""
        return self.save_and_export(self._registered_autoencoder_name())

    def periodic_tasks(self) -> list[tuple[int | None, Callable[[], Any]]]:
        return [(self.save_results_every, self.save_results), (self.save_model_every, self.save_model)]

    def train(self, log_fn: Callable[[dict[str, float]], None] | None = None) -> None:
        """`fit()` until `num_train_steps` (reconstructions and checkpoints periodically), then `save_model()`."""
        self.fit(at_end=self.save_model, log_fn=log_fn)


# ----------------------------------------------------------------------------------------------------------------
# one generative model trained on captioned videos and/or images
# ----------------------------------------------------------------------------------------------------------------

VIDEO_EXTS = ("gif", "mp4", "webm", "mov", "avi", "mkv")


def unpack_batch(batch: Any) -> tuple[torch.Tensor, dict[str, Any]]:
    """A data-loader batch -> `(pixels, text keyword arguments of the generation protocol)`.

    Accepts `pixels`, `(pixels, captions)`, `(pixels, text_embeds, text_mask)` (pre-computed embeddings) and
    `(pixels, captions, text_embeds, text_mask)` (`synthesis_core.shapes.ShapesVideoDataset` with embeddings).
    """
    if isinstance(batch, torch.Tensor):
        return batch, {}
    if isinstance(batch, tuple | list) and batch and isinstance(batch[0], torch.Tensor):
        if len(batch) == 1:
            return batch[0], {}
        if len(batch) == 2 and not isinstance(batch[1], torch.Tensor):
            return batch[0], {"texts": list(batch[1])}
        if len(batch) == 3:
            return batch[0], {"text_embeds": batch[1], "text_mask": batch[2]}
        if len(batch) == 4:
            return batch[0], {"text_embeds": batch[2], "text_mask": batch[3]}
    raise TypeError(
        "batch: expected pixels, (pixels, captions), (pixels, text_embeds, text_mask) or "
        f"(pixels, captions, text_embeds, text_mask) from the data loader, got {type(batch).__name__}"
    )


def dataset_captions(dataset: Dataset, count: int) -> list[str]:
    """The captions of the first `count` items of `dataset` (fewer when fewer have one): from its `paths` and
    `captions` when it has them (the folder datasets: nothing is decoded), else from its `(pixels, caption, ...)`
    items."""
    paths, captions = getattr(dataset, "paths", None), getattr(dataset, "captions", None)
    if isinstance(captions, Mapping) and isinstance(paths, Sequence):
        return [captions[path] for path in paths[:count] if path in captions]
    found = []
    for index in range(min(count, len(cast(Sized, dataset)))):
        item = dataset[index]
        if isinstance(item, tuple | list) and len(item) in (2, 4) and isinstance(item[1], str):
            found.append(item[1])
    return found


class VideoTrainer(BaseTrainer):
    """Trains one model of the generation protocol (`loss = model(pixels, texts=... | text_embeds=..., text_mask=...)`,
    `model.sample(...)`, `save_pretrained`) on videos and/or images, with their captions: the trainer of
    video-diffusion and make-a-video.

    ```
    trainer = VideoTrainer(model, video_folder='videos/', image_folder='images/', with_captions=True,
                           batch_size=4, num_train_steps=10_000, results_folder='results', resume='latest')
    trainer.train()                      # = fit(): samples, numbered checkpoints; then save_pretrained()
    ```
    The data come from folders (`synthesis_core.folders`: gif/mp4/... or frame folders, images; captions from
    `name.txt` sidecars when `with_captions`) sized by the model's `image_size`, `num_frames` and `channels`, or
    from ready datasets whose items are pixels, `(pixels, caption)`, `(pixels, text_embeds, text_mask)` or
    `(pixels, caption, text_embeds, text_mask)`. Each step takes one batch of each given stream (images are 4D and
    train as one-frame videos); the image loss is weighted by `image_loss_weight`. The streams' positions are
    checkpointed: a resume goes on with the very batches the saved run would have drawn.

    Args:
        model_name: the name the model is registered (and checkpointed, and published by `save_pretrained`) under.
        with_captions: train text-conditioned on the captions (else the text of the batches is left out).
        lr, warmup_steps, cosine_decay, max_grad_norm: AdamW; `cosine_decay` decays the rate to 0 at
            `num_train_steps`.
        ema_decay, ema_update_every, ema_update_after_step: the moving average that samples and is published.
        sample_every, save_every: every so many steps, write `sample_path(step)` (a grid of `num_samples`
            samples) / a numbered checkpoint (None: never).
        sample_texts: prompts of those samples (default: the first captions of the data).
        sample_cond_scale, sample_kwargs: guidance scale and other `model.sample` keywords (`steps`, `sampler`).
        max_batch_size: split each batch into chunks of this size (same gradients, less memory).
        find_unused_parameters: DDP's option (it is on anyway with images or captions, which leave some
            parameters without gradient in some steps).
        resume: a checkpoint to continue from (`'latest'`: the newest in `results_folder`, none yet: start fresh).
        Other keyword arguments go to `BaseTrainer` (mixed_precision, cpu, seed, log_with, keep_last_checkpoints).
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        model_name: str = "model",
        video_folder: str | Path | None = None,
        image_folder: str | Path | None = None,
        video_dataset: Dataset | None = None,
        image_dataset: Dataset | None = None,
        with_captions: bool = False,
        frame_mode: str = "pad",
        video_exts: Sequence[str] = VIDEO_EXTS,
        batch_size: int = 4,
        image_batch_size: int | None = None,
        num_workers: int = 0,
        num_train_steps: int = 100_000,
        lr: float = 1e-4,
        warmup_steps: int = 0,
        cosine_decay: bool = True,
        max_grad_norm: float | None = None,
        grad_accum_every: int = 1,
        ema_decay: float = 0.995,
        ema_update_every: int = 10,
        ema_update_after_step: int = 100,
        image_loss_weight: float = 1.0,
        max_batch_size: int | None = None,
        sample_every: int | None = 1000,
        save_every: int | None = 1000,
        num_samples: int = 4,
        sample_texts: Sequence[str] | None = None,
        sample_cond_scale: float = 3.0,
        sample_kwargs: Mapping[str, Any] | None = None,
        find_unused_parameters: bool = False,
        resume: str | Path | None = None,
        results_folder: str | Path = "./results",
        **base_kwargs: Any,
    ):
        from synthesis_core.folders import ImageFolderDataset, VideoFolderDataset

        if not isinstance(model, nn.Module):
            raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
        for name, value in (
            ("batch_size", batch_size),
            ("num_train_steps", num_train_steps),
            ("num_samples", num_samples),
            ("grad_accum_every", grad_accum_every),
        ):
            check_positive_int(name, value)
        for name, every in (("sample_every", sample_every), ("save_every", save_every)):
            if every is not None:
                check_positive_int(name, every)
        check_positive_int("num_workers", num_workers, allow_zero=True)
        check_choice("frame_mode", frame_mode, ("crop", "pad"))
        if (
            isinstance(image_loss_weight, bool)
            or not isinstance(image_loss_weight, int | float)
            or image_loss_weight < 0
        ):
            raise ValueError(f"image_loss_weight: expected a non-negative number, got {image_loss_weight!r}")
        for folder_name, folder, dataset_name, dataset in (
            ("video_folder", video_folder, "video_dataset", video_dataset),
            ("image_folder", image_folder, "image_dataset", image_dataset),
        ):
            if folder is not None and dataset is not None:
                raise ValueError(f"{folder_name}: pass either {folder_name} or {dataset_name}, not both")
            if folder is not None and not Path(folder).is_dir():
                raise ValueError(f"{folder_name}: {folder} is not a folder")
        if video_folder is None and video_dataset is None and image_folder is None and image_dataset is None:
            raise ValueError(
                "video_folder: give training data: video_folder / video_dataset and/or image_folder / image_dataset"
            )

        super().__init__(gradient_accumulate_every=grad_accum_every, results_folder=results_folder, **base_kwargs)
        self.model_name = model_name
        self.num_train_steps = num_train_steps
        self.with_captions = bool(with_captions)
        self.image_loss_weight = float(image_loss_weight)
        self.max_batch_size = max_batch_size
        self.sample_every = sample_every
        self.save_every = save_every
        self.num_samples = num_samples
        self.sample_texts = list(sample_texts) if sample_texts else None
        self.sample_cond_scale = sample_cond_scale
        self.sample_kwargs = {k: v for k, v in (sample_kwargs or {}).items() if v is not None}

        # the folders, read through the core's datasets at the model's size (plain attributes of the model)
        sizes: Any = model
        if video_folder is not None:
            video_dataset = VideoFolderDataset(
                video_folder,
                sizes.image_size,
                sizes.num_frames,
                frame_mode=frame_mode,
                with_captions=self.with_captions,
                exts=tuple(video_exts),
                channels=sizes.channels,
            )
        if image_folder is not None:
            image_dataset = ImageFolderDataset(
                image_folder, sizes.image_size, with_captions=self.with_captions, channels=sizes.channels
            )
        for name, folder, what, dataset in (
            ("video_folder", video_folder, "videos", video_dataset),
            ("image_folder", image_folder, "images", image_dataset),
        ):
            if dataset is not None and len(cast(Sized, dataset)) == 0:
                captions = " with a caption sidecar (name.txt)" if self.with_captions else ""
                where = f" in {folder}" if folder is not None else ""
                raise ValueError(f"{name}: no readable {what}{captions} found{where}")
        self.video_dataset = video_dataset
        self.image_dataset = image_dataset
        # endless batches whose position checkpoints record: a resume goes on mid-epoch with the same batches
        self.video_stream = self._stream("videos", video_dataset, batch_size, num_workers)
        self.image_stream = self._stream("images", image_dataset, default(image_batch_size, batch_size), num_workers)

        has_images = image_dataset is not None
        self.add_model(
            model_name,
            model,
            lr=lr,
            warmup_steps=warmup_steps,
            total_steps=num_train_steps if cosine_decay else None,
            max_grad_norm=max_grad_norm,
            ema_decay=ema_decay,
            ema_update_every=ema_update_every,
            ema_kwargs={"update_after_step": ema_update_after_step},
            # images skip the temporal layers and captions are dropped now and then: some parameters
            # then get no gradient, which DDP must be told about
            find_unused_parameters=has_images or self.with_captions or find_unused_parameters,
        )
        self.config.update(
            batch_size=batch_size,
            lr=lr,
            num_train_steps=num_train_steps,
            grad_accum_every=grad_accum_every,
            ema_decay=ema_decay,
            has_images=has_images,
            has_videos=video_dataset is not None,
            with_captions=self.with_captions,
        )
        if resume is not None:
            self.load(resume)

    def _stream(self, name: str, dataset: Dataset | None, batch_size: int, num_workers: int) -> DataStream | None:
        if dataset is None:
            return None
        return self.add_dataloader(name, make_dataloader(dataset, batch_size, num_workers=num_workers))

    @property
    def model(self) -> nn.Module:
        """The plain model being trained (without distributed wrappers)."""
        return self.unwrap(self.model_name)

    @property
    def ema_model(self) -> nn.Module:
        """The moving average of the weights (the model itself without EMA): what samples and is published."""
        return self.averaged_model(self.model_name)

    @property
    def step_count(self) -> int:
        return self.step_counts[self.model_name]

    # -- training ---------------------------------------------------------------------------------------------

    def compute_loss(
        self, model: nn.Module, pixels: torch.Tensor, text_kwargs: dict[str, Any], *, images: bool
    ) -> torch.Tensor:
        """The loss of one (chunk of a) batch, under autocast; a subclass adds its model's own keywords."""
        return model(pixels, **text_kwargs)

    def _accumulate(self, batch: Any, *, images: bool, weight: float = 1.0) -> float:
        pixels, text_kwargs = unpack_batch(batch)
        if not self.with_captions:
            text_kwargs = {}
        model = self.models[self.model_name]
        total = 0.0
        for fraction, (chunk,), kwargs in split_batch(self.max_batch_size, pixels, **text_kwargs):
            with self.autocast():
                loss = self.compute_loss(model, chunk, kwargs, images=images)
            self.backward(loss * weight, self.model_name, fraction=fraction)
            total += loss.item() * fraction
        return total

    def train_step(self) -> dict[str, float]:
        """One optimizer step over `grad_accum_every` batches of each stream; returns the mean losses: `loss` (what
        is optimised), and `video_loss` / `image_loss` when both streams train."""
        self.models[self.model_name].train()
        video_loss = image_loss = 0.0
        for _ in range(self.gradient_accumulate_every):
            with self.accumulate(self.model_name):
                if self.video_stream is not None:
                    video_loss += self._accumulate(next(self.video_stream), images=False)
                if self.image_stream is not None:
                    image_loss += self._accumulate(next(self.image_stream), images=True, weight=self.image_loss_weight)
        self.step(self.model_name)
        video_loss /= self.gradient_accumulate_every
        image_loss /= self.gradient_accumulate_every
        logs = {"loss": video_loss + self.image_loss_weight * image_loss}
        if self.video_stream is not None and self.image_stream is not None:
            logs.update(video_loss=video_loss, image_loss=image_loss)
        return logs

    def periodic_tasks(self) -> list[tuple[int | None, Callable[[], Any]]]:
        return [(self.sample_every, self.save_samples), (self.save_every, self.save)]

    def train(self, log_fn: Callable[[dict[str, float]], None] | None = None) -> Path | None:
        """Trains until `num_train_steps` (going on from a loaded checkpoint), writing samples and checkpoints
        periodically, then publishes the EMA model (`save_pretrained()`); returns its folder (main process)."""
        self.fit(log_fn=log_fn)
        return self.save_pretrained()

    # -- samples --------------------------------------------------------------------------------------------

    def sample_captions(self, count: int) -> list[str] | None:
        """`count` prompts for samples: `sample_texts`, else the first captions of the data (cycled); None when
        the model trains without captions."""
        if not self.with_captions:
            return None
        dataset = self.video_dataset if self.video_dataset is not None else self.image_dataset
        captions = self.sample_texts or (dataset_captions(dataset, count) if dataset is not None else [])
        if not captions:
            return None
        return [captions[i % len(captions)] for i in range(count)]

    @torch.no_grad()
    def sample(self, count: int | None = None) -> torch.Tensor:
        """`count` (default `num_samples`) videos `(b, c, f, h, w)` in [0, 1] from the EMA weights."""
        count = default(count, self.num_samples)
        texts = self.sample_captions(count)
        sampler: Any = self.ema_model  # the video model, whose sample() nn.Module does not declare
        return sampler.sample(
            texts=texts,
            batch_size=count,
            cond_scale=self.sample_cond_scale if texts else 1.0,
            progress=False,
            **self.sample_kwargs,
        )

    def sample_path(self, step: int) -> Path:
        """Where the samples after `step` steps go."""
        if self.results_folder is None:
            raise ValueError("results_folder: samples need a results_folder to be written to")
        return self.results_folder / f"sample-{step}.gif"

    def save_samples(self, path: str | Path | None = None) -> Path | None:
        """Writes a grid of samples to `path` (default `sample_path(step)`); returns it (main process; None
        elsewhere)."""
        if not self.is_main:
            return None
        from synthesis_core.video import save_video

        videos = self.sample()
        path = Path(path) if path is not None else self.sample_path(self.step_count)
        save_video(videos.float().cpu(), path, nrow=max(int(math.sqrt(videos.shape[0])), 1))
        logger.info("wrote %s", path)
        return path


__all__ = [
    "BaseTrainer",
    "AutoencoderGANTrainer",
    "VideoTrainer",
    "unpack_batch",
    "dataset_captions",
    "DataStream",
    "make_dataloader",
    "split_batch",
    "cycle",
    "warmup_cosine_lambda",
    "extract_model_state",
    "mix_seed",
    "process_seed",
    "process_rng_path",
]
