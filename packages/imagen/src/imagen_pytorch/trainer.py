"""ImagenTrainer: trains every U-Net of a cascade in one process, with one optimizer and one EMA per U-Net.

The optimisation machinery (accelerate, mixed precision, gradient accumulation, clipping, NaN guard, warmup +
cosine LR, EMA, safetensors checkpoints) is `synthesis_core.training.BaseTrainer`; this module adds what is
specific to a cascade: a named model per U-Net ('unet1', 'unet2', ...), `max_batch_size` splitting, datasets and
dataloaders, sampling with the EMA weights, periodic checkpoints to a folder (or an fsspec URL / filesystem), the
cascade's config stored in every checkpoint so that `load_imagen_from_checkpoint` can rebuild it, and the published
imagen-pytorch 2.1 trainer API (`.cuda()` / `.to(device)` / `.cpu()`, `num_steps_taken`, `get_ema_unet`,
`state_dict` / `load_state_dict`, `save_to_checkpoint_folder` / `load_from_checkpoint_folder`, `encode_text`,
`print_untrained_unets`, the `fp16` / `precision` / `split_batches` / `group_wd_params` / `verbose` /
`checkpoint_fs` / `fs_kwargs` keywords).

`ImagenTrainer` is a `BaseTrainer` like every trainer of the project (`fit()`, `resume=`, `save()` / `load()` of
the training state, `save_pretrained()` of the EMA cascade); the seed API's `steps` is its tensor of per-unet step
counts (the core's dict of counts is `step_counts`), and its `train_step(unet_number=...)` returns the loss as a
float, as in the seed README (`fit()` logs it as `{'loss': ...}`).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import tempfile
from collections import OrderedDict
from collections.abc import Callable, Collection, Mapping, Sequence, Sized
from pathlib import Path
from typing import Any, cast

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, random_split

from imagen_pytorch.cascade import is_null_unet, per_unet
from imagen_pytorch.configs import imagen_config_from_model, load_imagen_from_checkpoint
from imagen_pytorch.elucidated import ElucidatedImagen
from imagen_pytorch.imagen import Imagen
from synthesis_core.checkpoint import CheckpointError, check_state_dict, load_checkpoint, save_checkpoint
from synthesis_core.checks import check_choice, check_in_range, check_positive_int
from synthesis_core.protocol import resolve_alias
from synthesis_core.training import BaseTrainer, DataStream, extract_model_state, split_batch
from synthesis_core.utils import exists

logger = logging.getLogger(__name__)

__all__ = ["ImagenTrainer", "DEFAULT_BATCH_KEYWORDS"]

# what the elements of a dataloader's tuple batches are, in order (a list of strings is always `texts`)
DEFAULT_BATCH_KEYWORDS = ("images", "text_embeds", "text_masks", "cond_images")


def _is_remote(path: str | os.PathLike) -> bool:
    return "://" in str(path) and not str(path).startswith("file://")


def _url_to_fs(url: str, fs_kwargs: Mapping[str, Any] | None = None):
    """(filesystem, path) of an fsspec URL (`fs_kwargs` go to the filesystem), with a clear error when fsspec is
    missing."""
    try:
        import fsspec
    except ImportError as error:
        raise ValueError(
            f"{url!r} is a remote URL, which needs fsspec (pip install fsspec, plus the filesystem's "
            "package such as gcsfs or s3fs); or give a local path"
        ) from error
    return fsspec.core.url_to_fs(url, **dict(fs_kwargs or {}))


def _check_filesystem(checkpoint_fs: Any) -> Any:
    """`checkpoint_fs` if it is an fsspec filesystem (None passes), else a TypeError naming it."""
    if checkpoint_fs is None:
        return None
    try:
        from fsspec import AbstractFileSystem
    except ImportError as error:
        raise ValueError(
            "checkpoint_fs: needs fsspec (pip install fsspec); or pass checkpoint_path= a local folder"
        ) from error
    if not isinstance(checkpoint_fs, AbstractFileSystem):
        raise TypeError(
            "checkpoint_fs: expected an fsspec filesystem (e.g. fsspec.filesystem('gcs')), got "
            f"{type(checkpoint_fs).__name__}"
        )
    return checkpoint_fs


def _same_device(a: torch.device, b: torch.device) -> bool:
    """Whether two devices are the same (an index-less 'cuda' is the current GPU)."""
    if a.type != b.type:
        return False
    if a.type == "cuda":
        current = torch.cuda.current_device()
        return (a.index if a.index is not None else current) == (b.index if b.index is not None else current)
    return a.index == b.index or a.index is None or b.index is None


class _RemoteCheckpoints:
    """Numbered checkpoints in a folder of an fsspec filesystem (a URL such as gs://bucket/run, or a path on a
    given filesystem): written locally, then uploaded."""

    def __init__(self, url: str, keep_last: int | None, fs: Any = None, fs_kwargs: Mapping[str, Any] | None = None):
        if exists(fs):
            self.fs, self.root = fs, fs._strip_protocol(url)
        else:
            self.fs, self.root = _url_to_fs(url, fs_kwargs)
        self.keep_last = keep_last
        self.fs.makedirs(self.root, exist_ok=True)

    def list(self) -> list[str]:
        return sorted(self.fs.glob(f"{self.root.rstrip('/')}/checkpoint-*.safetensors"))

    def path_for(self, step: int) -> str:
        return f"{self.root.rstrip('/')}/checkpoint-{step:08d}.safetensors"

    def upload(self, local_path: Path, step: int) -> str:
        remote = self.path_for(step)
        self.fs.put(str(local_path), remote)
        if exists(self.keep_last):
            for old in self.list()[: -self.keep_last]:
                self.fs.rm(old)
        return remote

    def download(self, remote: str, folder: Path) -> Path:
        local = folder / Path(remote).name
        self.fs.get(remote, str(local))
        return local

    def download_latest(self, folder: Path) -> Path | None:
        listed = self.list()
        return self.download(listed[-1], folder) if listed else None


def _resolve_mixed_precision(mixed_precision: str | None, precision: str | None, fp16: bool) -> str:
    """The one mixed-precision setting from our `mixed_precision=` and the published `precision=` / `fp16=`."""
    given = {}
    if exists(mixed_precision):
        given["mixed_precision"] = check_choice("mixed_precision", mixed_precision, ("no", "bf16", "fp16"))
    if exists(precision):
        given["precision"] = check_choice("precision", precision, ("no", "bf16", "fp16"))
    if not isinstance(fp16, bool):
        raise TypeError(f"fp16: expected a bool, got {fp16!r}")
    if fp16:
        given["fp16"] = "fp16"
    if len(set(given.values())) > 1:
        raise ValueError(
            f"{', '.join(given)}: they disagree ({given}); pass one of them (mixed_precision= 'no', 'bf16' or 'fp16')"
        )
    return next(iter(given.values()), "no")


def _required(name: str, value: Any) -> Any:
    if value is None:
        raise TypeError(f"{name}: required")
    return value


def _adamw(
    module: nn.Module, *, lr: float, betas: tuple[float, float], eps: float, weight_decay: float, group_wd_params: bool
) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters; with `group_wd_params`, biases and normalisation gains (parameters of
    fewer than 2 dims) are not decayed, as weight decay on them only shrinks scales the model needs."""
    params = [p for p in module.parameters() if p.requires_grad]
    if not group_wd_params or weight_decay == 0:
        return torch.optim.AdamW(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
    decayed, not_decayed = [p for p in params if p.ndim >= 2], [p for p in params if p.ndim < 2]
    groups: list[dict[str, Any]] = []
    if decayed:
        groups.append({"params": decayed})
    if not_decayed:
        groups.append({"params": not_decayed, "weight_decay": 0.0})
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)


def _move_optimizer_state(optimizer: torch.optim.Optimizer, device: torch.device) -> None:
    """Moves an optimizer's state tensors to `device`. A step counter stays where torch keeps it (on the CPU,
    unless the optimizer is `capturable` or `fused`, whose counters live with the parameters)."""
    for group in optimizer.param_groups:
        on_device_counter = group.get("capturable", False) or group.get("fused", False)
        for param in group["params"]:
            state = optimizer.state.get(param)
            if not state:
                continue
            for key, value in state.items():
                if isinstance(value, Tensor) and (key != "step" or on_device_counter):
                    state[key] = value.to(device)


class ImagenTrainer(BaseTrainer):
    """Trains an `Imagen` or `ElucidatedImagen`: every unet has its own optimizer (AdamW) and EMA.

    ```
    trainer = ImagenTrainer(imagen).cuda()                                             # .cuda() where a GPU is
    loss = trainer(images, text_embeds=text_embeds, unet_number=1, max_batch_size=4)  # backward, returns float
    trainer.update(unet_number=1)                                                      # optimizer + EMA step
    images = trainer.sample(texts=['a puppy'], cond_scale=3.)                          # with the EMA weights
    trainer.save('checkpoint.pt'); trainer.load('checkpoint.pt')
    ```
    Per-unet settings (`lr`, `eps`, `beta1`, `beta2`, `max_grad_norm`, `warmup_steps`, `cosine_decay_max_steps`)
    take one value or one per unet. The EMA copies the weights for the first `ema_update_after_step` updates,
    then averages them with `ema_decay` every `ema_update_every` updates. `checkpoint_path` (a folder, an fsspec
    URL when fsspec is installed, or a path on `checkpoint_fs`) with `checkpoint_every` saves numbered checkpoints
    every that many updates (of any unet) and resumes from the newest one at construction.
    `imagen_checkpoint_path` builds the cascade from a checkpoint and resumes it. `resume=` says where to continue
    from: `'latest'` (the newest checkpoint in `checkpoint_path`, as the default None does when `checkpoint_path`
    is given), a checkpoint path, or False (start fresh even when `checkpoint_path` holds checkpoints).

    The shape of every trainer of the project: `fit(num_train_steps, unet_number=...)` trains one unet until it
    has taken `num_train_steps` steps (default: the constructor's `num_train_steps`), saving numbered checkpoints
    every `checkpoint_every` updates; `save()` / `load()` the training state; `save_pretrained(folder)` publishes
    the cascade with its EMA unets (`Imagen.from_pretrained(folder)` loads it).

    The published keywords: `fp16=True` is `mixed_precision='fp16'`, `precision=` is `mixed_precision=`;
    `split_batches=True` makes a dataloader's batch the batch of all processes together (each takes its share);
    `group_wd_params` (default True) exempts biases and norm gains from `weight_decay`; `ema_beta` is `ema_decay`;
    `verbose=False` silences the trainer's informational messages; `checkpoint_fs` (an fsspec filesystem) and
    `fs_kwargs` (arguments of the filesystem a `checkpoint_path` URL names) say where checkpoints live.
    """

    def __init__(
        self,
        imagen: Imagen | ElucidatedImagen | None = None,
        imagen_checkpoint_path: str | os.PathLike | None = None,
        *,
        use_ema: bool = True,
        lr: float | Sequence[float] = 1e-4,
        eps: float | Sequence[float] = 1e-8,
        beta1: float | Sequence[float] = 0.9,
        beta2: float | Sequence[float] = 0.99,
        weight_decay: float = 0.0,
        group_wd_params: bool = True,
        max_grad_norm: float | Sequence[float | None] | None = None,
        warmup_steps: int | Sequence[int | None] | None = None,
        cosine_decay_max_steps: int | Sequence[int | None] | None = None,
        ema_decay: float = 0.995,
        ema_beta: float | None = None,
        ema_update_every: int = 10,
        ema_update_after_step: int = 100,
        use_lion: bool = False,
        only_train_unet_number: int | None = None,
        split_valid_from_train: bool = False,
        split_valid_fraction: float = 0.025,
        split_random_seed: int = 42,
        dl_tuple_output_keywords_names: Sequence[str] = DEFAULT_BATCH_KEYWORDS,
        checkpoint_path: str | os.PathLike | None = None,
        checkpoint_every: int | None = None,
        checkpoint_fs: Any = None,
        fs_kwargs: dict | None = None,
        max_checkpoints_keep: int | None = 3,
        mixed_precision: str | None = None,
        fp16: bool = False,
        precision: str | None = None,
        split_batches: bool = False,
        cpu: bool | None = None,
        gradient_accumulate_every: int = 1,
        seed: int | None = None,
        verbose: bool = True,
        log_with: str | list | None = None,
        accelerate_kwargs: dict | None = None,
        num_train_steps: int | None = None,
        resume: str | os.PathLike | bool | None = None,
    ):
        if exists(imagen) == exists(imagen_checkpoint_path):
            raise ValueError("imagen, imagen_checkpoint_path: pass exactly one of them")
        if imagen_checkpoint_path is not None:
            imagen = load_imagen_from_checkpoint(os.fspath(imagen_checkpoint_path), load_weights=False)
        if not isinstance(imagen, Imagen | ElucidatedImagen):
            raise TypeError(f"imagen: expected an Imagen or ElucidatedImagen, got {type(imagen).__name__}")
        check_in_range("split_valid_fraction", split_valid_fraction, 0.0, 1.0)
        check_in_range("weight_decay", weight_decay, 0.0, None)
        if exists(checkpoint_every):
            check_positive_int("checkpoint_every", checkpoint_every)
            if not exists(checkpoint_path):
                raise ValueError("checkpoint_every: needs checkpoint_path= (a folder or an fsspec URL)")
        checkpoint_fs = _check_filesystem(checkpoint_fs)
        if exists(checkpoint_fs) and not exists(checkpoint_path):
            raise ValueError("checkpoint_fs: needs checkpoint_path= (the checkpoint folder on that filesystem)")
        if exists(fs_kwargs):
            if not isinstance(fs_kwargs, Mapping):
                raise TypeError(f"fs_kwargs: expected a dict of filesystem arguments, got {type(fs_kwargs).__name__}")
            if exists(checkpoint_fs):
                raise ValueError(
                    "fs_kwargs: configure the filesystem given as checkpoint_fs itself; fs_kwargs are "
                    "for the filesystem that a checkpoint_path URL names"
                )
        if not isinstance(verbose, bool):
            raise TypeError(f"verbose: expected a bool, got {verbose!r}")
        if exists(num_train_steps):
            check_positive_int("num_train_steps", num_train_steps)
        if resume is True:
            raise ValueError(
                "resume: expected 'latest', a checkpoint path, False or None, got True (resume='latest' "
                "continues from the newest checkpoint in checkpoint_path)"
            )
        if exists(resume) and resume is not False and exists(imagen_checkpoint_path):
            raise ValueError("resume: imagen_checkpoint_path already resumes from that checkpoint; pass one of them")
        if resume == "latest" and not exists(checkpoint_path):
            raise ValueError("resume: 'latest' is the newest checkpoint in checkpoint_path=, which is not set")
        if use_lion:
            raise ValueError(
                "use_lion: the Lion optimizer is not available here; every unet trains with AdamW "
                "(lr=, beta1=, beta2=, eps=, weight_decay=)"
            )
        if exists(ema_beta):  # the published spelling (its ema_* keywords went to the EMA)
            if ema_decay != 0.995 and ema_decay != ema_beta:
                raise ValueError(f"ema_decay, ema_beta: they disagree ({ema_decay} vs {ema_beta}); pass one of them")
            ema_decay = ema_beta
        check_in_range("ema_decay", ema_decay, 0.0, 1.0)
        mixed_precision = _resolve_mixed_precision(mixed_precision, precision, fp16)
        accelerate_kwargs = dict(accelerate_kwargs or {})
        if split_batches:
            from accelerate.utils import DataLoaderConfiguration

            if "dataloader_config" in accelerate_kwargs:
                raise ValueError(
                    "split_batches: set split_batches in the DataLoaderConfiguration given as "
                    "accelerate_kwargs['dataloader_config'] instead"
                )
            accelerate_kwargs["dataloader_config"] = DataLoaderConfiguration(split_batches=True)

        # a local checkpoint folder is BaseTrainer's numbered-checkpoint folder; a remote one is handled here
        remote = checkpoint_path is not None and (_is_remote(checkpoint_path) or exists(checkpoint_fs))
        if exists(fs_kwargs) and not remote:
            raise ValueError(
                "fs_kwargs: only used with a checkpoint_path that is an fsspec URL (e.g. "
                "'s3://bucket/run'); a local folder takes none"
            )
        local_folder = None if remote or not exists(checkpoint_path) else str(checkpoint_path).removeprefix("file://")
        # where the models are: accelerate's device until `.to()` / `.cuda()` / `.cpu()` moves them
        self._device: torch.device | None = None
        super().__init__(
            mixed_precision=mixed_precision,
            cpu=cpu,
            gradient_accumulate_every=gradient_accumulate_every,
            results_folder=local_folder,
            keep_last_checkpoints=max_checkpoints_keep,
            log_with=log_with,
            seed=seed,
            accelerate_kwargs=accelerate_kwargs,
        )
        self.verbose = verbose
        self.checkpoint_fs = checkpoint_fs
        self.fs_kwargs = dict(fs_kwargs or {})
        self.remote_checkpoints = (
            _RemoteCheckpoints(str(checkpoint_path), max_checkpoints_keep, fs=checkpoint_fs, fs_kwargs=fs_kwargs)
            if remote
            else None
        )
        self.checkpoint_every = checkpoint_every
        self.num_train_steps = num_train_steps

        self.imagen = imagen.to(self.accelerator.device)
        self.use_ema = use_ema
        self.dl_tuple_output_keywords_names = tuple(dl_tuple_output_keywords_names)
        self.split_valid_from_train = split_valid_from_train
        self.split_valid_fraction = split_valid_fraction
        self.split_random_seed = split_random_seed

        num_unets = imagen.num_unets
        if exists(only_train_unet_number):
            imagen.check_unet_number("only_train_unet_number", only_train_unet_number)
        self.only_train_unet_number = only_train_unet_number or imagen.only_train_unet_number
        given: dict[str, Any] = dict(
            lr=lr,
            eps=eps,
            beta1=beta1,
            beta2=beta2,
            max_grad_norm=max_grad_norm,
            warmup_steps=warmup_steps,
            cosine_decay_max_steps=cosine_decay_max_steps,
        )
        settings = {name: per_unet(name, value, num_unets) for name, value in given.items()}
        for index, unet in enumerate(imagen.unets):
            if is_null_unet(unet) or (exists(self.only_train_unet_number) and index + 1 != self.only_train_unet_number):
                continue
            if not settings["lr"][index] > 0:
                raise ValueError(f"lr: expected a positive learning rate, got {settings['lr'][index]!r}")
            betas = (settings["beta1"][index], settings["beta2"][index])
            optimizer = _adamw(
                unet,
                lr=settings["lr"][index],
                betas=betas,
                eps=settings["eps"][index],
                weight_decay=weight_decay,
                group_wd_params=group_wd_params,
            )
            self.add_model(
                self.model_name(index + 1),
                unet,
                optimizer=optimizer,
                warmup_steps=settings["warmup_steps"][index] or 0,
                total_steps=settings["cosine_decay_max_steps"][index],
                max_grad_norm=settings["max_grad_norm"][index],
                ema=use_ema,
                ema_decay=ema_decay,
                ema_update_every=ema_update_every,
                ema_kwargs=dict(update_after_step=ema_update_after_step),
            )
        # stored in every checkpoint: what `load_imagen_from_checkpoint` rebuilds the cascade from
        try:
            imagen_config = imagen_config_from_model(imagen)
            self.config["imagen"] = {"type": imagen_config.model_type, **imagen_config.to_dict()}
        except TypeError as error:  # a custom unet class: the trainer works, the file just cannot rebuild it
            logger.warning(
                "checkpoints will not record the cascade's config (%s); load them with "
                "ImagenTrainer(imagen).load(path) instead of load_imagen_from_checkpoint",
                error,
            )

        self.train_dl: DataLoader | None = None
        self.valid_dl: DataLoader | None = None
        self._train_iter: DataStream | None = None
        self._valid_iter: DataStream | None = None

        if imagen_checkpoint_path is not None:
            self.load(imagen_checkpoint_path)
        elif resume is not None and not isinstance(resume, bool) and resume != "latest":
            self.load(resume)
        elif resume is not False and exists(checkpoint_path):  # the published trainer resumes by itself
            self._resume_latest()

    # -- the trainer's state --------------------------------------------------------------------------------

    @property
    def engine(self) -> ImagenTrainer:
        """The trainer itself (earlier versions wrapped a `BaseTrainer` under this name; it now is one)."""
        return self

    @property
    def device(self) -> torch.device:
        """Where the unets, their EMA copies and optimizer states are (accelerate's device unless moved)."""
        return self._device if exists(self._device) else self.accelerator.device

    def print(self, msg: str, *args: Any) -> None:
        """Logs an informational message from the main process (at INFO; at DEBUG with `verbose=False`);
        `args` fill `%s` placeholders of `msg`."""
        if self.is_main:
            logger.log(logging.INFO if self.verbose else logging.DEBUG, msg, *args)

    # -- placement ------------------------------------------------------------------------------------------

    def to(self, device: torch.device | str | int) -> ImagenTrainer:
        """Moves the cascade, the EMA copies and the optimizer states to `device`; returns the trainer.

        Batches given to the trainer are moved there too. Under several processes accelerate has placed each
        process on its own device, and the trainer stays there (moving it elsewhere raises a ValueError)."""
        if isinstance(device, torch.dtype):
            raise TypeError(
                "device: the trainer keeps its weights in float32; for half-precision training pass "
                "mixed_precision='bf16' or 'fp16' (or precision=, fp16=True) to ImagenTrainer"
            )
        if isinstance(device, bool) or not isinstance(device, torch.device | str | int):
            raise TypeError(f"device: expected a torch.device, a device string or a GPU index, got {device!r}")
        target = torch.device("cuda", device) if isinstance(device, int) else torch.device(device)
        if target.type == "cuda":
            if not torch.cuda.is_available():
                raise ValueError(
                    f"device: {str(target)!r} asked, but CUDA is not available on this machine "
                    "(torch.cuda.is_available() is False); leave out .cuda() to train on the CPU"
                )
            if target.index is None:  # the process's own GPU (accelerate chose it under several processes)
                current = self.device
                target = current if current.type == "cuda" else torch.device("cuda", torch.cuda.current_device())
        if _same_device(target, self.device):
            return self
        if self.num_processes > 1:
            raise ValueError(
                f"device: this trainer runs in {self.num_processes} processes, each on the "
                f"device accelerate gave it ({self.device}); it cannot be moved to {target}"
            )
        if self.mixed_precision == "fp16" and target.type != "cuda":
            raise ValueError(
                f"device: fp16 mixed precision trains on a GPU only; build the trainer with "
                f"mixed_precision='bf16' (or 'no') to train on {target}"
            )
        self.imagen.to(target)
        for name in self.models:
            self.unwrap(name).to(target)
            ema = self.ema(name)
            if exists(ema):
                ema.to(target)
            _move_optimizer_state(self.optimizers[name], target)
        self._device = target
        return self

    def cuda(self, device: int | torch.device | str | None = None) -> ImagenTrainer:
        """`to('cuda')` (the process's GPU, or GPU `device`); a ValueError where CUDA is not available."""
        if device is None:
            return self.to("cuda")
        return self.to(device if not isinstance(device, int) else torch.device("cuda", device))

    def cpu(self) -> ImagenTrainer:
        """`to('cpu')`."""
        return self.to("cpu")

    def _to_device(self, value: Any) -> Any:
        """Tensors (also inside lists, tuples and dicts) moved to the trainer's device; other values as they are."""
        if isinstance(value, Tensor):
            return value.to(self.device)
        if isinstance(value, list | tuple) and any(isinstance(v, Tensor) for v in value):
            return type(value)(self._to_device(v) for v in value)
        if isinstance(value, dict):
            return {k: self._to_device(v) for k, v in value.items()}
        return value

    @property
    def num_unets(self) -> int:
        return self.imagen.num_unets

    @property
    def steps(self) -> Tensor:
        """Optimizer steps taken by each unet, shape (num_unets,)."""
        return torch.tensor([self.step_counts.get(self.model_name(n), 0) for n in range(1, self.num_unets + 1)])

    @staticmethod
    def model_name(unet_number: int) -> str:
        return f"unet{unet_number}"

    def _registered_name(self, unet_number: int | None) -> tuple[int, str]:
        unet_number = self.imagen.resolve_train_unet_number(
            unet_number if exists(unet_number) else self.only_train_unet_number
        )
        name = self.model_name(unet_number)
        if name not in self.models:
            raise ValueError(
                f"unet_number: this trainer only trains unet {self.only_train_unet_number} "
                f"(only_train_unet_number), got {unet_number}"
            )
        return unet_number, name

    def get_lr(self, unet_number: int | str | None = None) -> float:
        """The learning rate of unet `unet_number` (or of the model registered under a name, e.g. 'unet1')."""
        name = unet_number if isinstance(unet_number, str) else self._registered_name(unet_number)[1]
        return super().get_lr(name)

    def unet_being_trained(self, unet_number: int) -> nn.Module:
        """The (unwrapped) unet that `__call__` and `update` train for `unet_number`."""
        return self.unwrap(self._registered_name(unet_number)[1])

    def ema_unet(self, unet_number: int) -> nn.Module | None:
        """The EMA copy of a unet (None without EMA)."""
        ema = self.ema(self._registered_name(unet_number)[1])
        return ema.ema_model if exists(ema) else None

    def get_ema_unet(self, unet_number: int | None = None) -> nn.Module:
        """The EMA copy of unet `unet_number` (default: the only one trained) - the weights `sample` uses."""
        unet_number, _ = self._registered_name(unet_number)
        ema = self.ema_unet(unet_number)
        if not exists(ema):
            raise ValueError(
                "use_ema: this trainer keeps no EMA copies (built with use_ema=False); use "
                f"trainer.unet_being_trained({unet_number}) for the trained weights"
            )
        return ema

    # -- the published imagen-pytorch 2.1 helpers around the unets ----------------------------------------------

    @property
    def unets(self) -> nn.ModuleList:
        """The unets that sampling uses, in cascade order: each trained unet's EMA copy, or the unet itself
        (without EMA, for NullUnet placeholders and for unets this trainer does not train)."""
        chosen = []
        for unet_number, unet in enumerate(self.imagen.unets, start=1):
            name = self.model_name(unet_number)
            ema = self.ema(name) if name in self.models else None
            chosen.append(ema.ema_model if exists(ema) else unet)
        return nn.ModuleList(chosen)

    @property
    def unwrapped_unet(self) -> nn.Module:
        """The unet being trained without its distributed wrapper: that of `only_train_unet_number`, or the only
        one this trainer trains."""
        if exists(self.only_train_unet_number):
            return self.unet_being_trained(self.only_train_unet_number)
        if len(self.models) != 1:
            raise ValueError(
                f"unwrapped_unet: this trainer trains {len(self.models)} unets; use "
                "unet_being_trained(unet_number), or validate_and_set_unet_being_trained(unet_number) first"
            )
        return self.unwrap(next(iter(self.models)))

    def wrap_unet(self, unet_number: int) -> nn.Module:
        """Unet `unet_number` as accelerate prepared it for training (wrapped for distributed training where
        there are several processes). Every trained unet is prepared when the trainer is built, so this only
        looks it up."""
        _, name = self._registered_name(self.validate_unet_number(unet_number))
        return self.models[name]

    def validate_unet_number(self, unet_number: int | None = None) -> int:
        """`unet_number` checked against the cascade (1-based); None is 1 for a one-unet cascade."""
        if unet_number is None:
            if self.num_unets != 1:
                raise ValueError(f"unet_number: required, this cascade has {self.num_unets} unets")
            unet_number = 1
        return self.imagen.check_unet_number("unet_number", unet_number)

    def validate_and_set_unet_being_trained(self, unet_number: int | None = None) -> int | None:
        """From now on this trainer trains unet `unet_number` only (as if built with `only_train_unet_number`);
        returns it. Another unet than the one already set is refused: save, and build a trainer for it."""
        if unet_number is None:
            return self.only_train_unet_number
        unet_number = self.validate_unet_number(unet_number)
        if exists(self.only_train_unet_number) and self.only_train_unet_number != unet_number:
            raise ValueError(
                f"unet_number: this trainer only trains unet {self.only_train_unet_number}, got {unet_number}; save "
                "it and build a trainer with only_train_unet_number= for the other unet"
            )
        self._registered_name(unet_number)  # a unet this trainer has an optimizer for
        self.only_train_unet_number = unet_number
        self.imagen.only_train_unet_number = unet_number
        return unet_number

    def prepare(self) -> ImagenTrainer:
        """Ready to train: checks `only_train_unet_number` and starts the iterators of the dataloaders added so
        far (train_step does this by itself). The unets, optimizers and EMA copies are prepared when the trainer
        is built. Returns the trainer."""
        self.validate_and_set_unet_being_trained(self.only_train_unet_number)
        if exists(self.train_dl):
            self.create_train_iter()
        if exists(self.valid_dl):
            self.create_valid_iter()
        return self

    def create_train_iter(self) -> DataStream:
        """The endless, resumable iterator over the training dataloader (the same one each call)."""
        if not exists(self._train_iter):
            raise ValueError("no training data: call add_train_dataset or add_train_dataloader first")
        return self._train_iter

    def create_valid_iter(self) -> DataStream:
        """The endless, resumable iterator over the validation dataloader (the same one each call)."""
        if not exists(self._valid_iter):
            raise ValueError("no validation data: call add_valid_dataset, or split_valid_from_train=True")
        return self._valid_iter

    def step_with_dl_iter(self, dl_iter: Any, **kwargs: Any) -> float:
        """`forward` (loss and backward, no optimizer step) on the next batch of `dl_iter`, read like a
        dataloader batch (`dl_tuple_output_keywords_names`); `kwargs` (unet_number, max_batch_size, ...) are
        passed on, the batch's own entries taking precedence."""
        return self.forward(**{**kwargs, **self._forward_kwargs(next(dl_iter))})

    def print_unet_devices(self) -> dict[str, torch.device]:
        """Logs, and returns, where each unet and each EMA copy is (`'unet1'`, `'ema unet1'`, ...)."""
        devices = {}
        for unet_number, unet in enumerate(self.imagen.unets, start=1):
            devices[f"unet{unet_number}"] = next(unet.parameters(), torch.empty(0)).device
            name = self.model_name(unet_number)
            ema = self.ema(name) if name in self.models else None
            if exists(ema):
                devices[f"ema unet{unet_number}"] = next(ema.ema_model.parameters()).device
        for what, device in devices.items():
            self.print("%s: %s", what, device)
        return devices

    def reset_ema_unets_all_one_device(self, device: torch.device | str | None = None) -> None:
        """Every EMA copy on `device` (default: the trainer's device, where EMA updates and `sample` need them)."""
        target = torch.device(device) if device is not None else self.device
        for name in self.models:
            ema = self.ema(name)
            if exists(ema):
                ema.to(target)

    def set_accelerator_scaler(self, unet_number: int):
        """The gradient scaler unet `unet_number`'s optimizer steps with (None without fp16 mixed precision).
        One accelerate GradScaler serves every unet here; the unet number is checked."""
        self._registered_name(self.validate_unet_number(unet_number))
        return self.accelerator.scaler

    def num_steps_taken(self, unet_number: int | None = None) -> int:
        """Optimizer steps taken by unet `unet_number`; without one, by the only unet of a one-unet cascade, or
        by all unets together."""
        if exists(unet_number):
            self.imagen.check_unet_number("unet_number", unet_number)
            return int(self.steps[unet_number - 1])
        if self.num_unets == 1:
            return int(self.steps[0])
        return int(self.steps.sum())

    def untrained_unet_numbers(self) -> list[int]:
        """The unets (1-based, NullUnet placeholders left out) that have not taken an optimizer step yet."""
        return [
            index + 1
            for index, (steps, unet) in enumerate(zip(self.steps.tolist(), self.imagen.unets))
            if steps == 0 and not is_null_unet(unet)
        ]

    def print_untrained_unets(self, start_at_unet_number: int = 1, stop_at_unet_number: int | None = None) -> list[int]:
        """Warns about every unet (from `start_at_unet_number` to `stop_at_unet_number`) that has not been
        trained yet, as sampling through it gives noise; returns their numbers. Silent with `verbose=False`."""
        last = stop_at_unet_number if isinstance(stop_at_unet_number, int) else self.num_unets
        first = start_at_unet_number if isinstance(start_at_unet_number, int) else 1
        untrained = [number for number in self.untrained_unet_numbers() if first <= number <= last]
        if untrained and self.verbose and self.is_main:
            logger.warning(
                "unet(s) %s of the cascade have not been trained yet; sample(stop_at_unet_number=...) "
                "stops the cascade before them",
                ", ".join(map(str, untrained)),
            )
        return untrained

    def encode_text(
        self, texts: Sequence[str] | None = None, return_attn_mask: bool = False, *, text: Sequence[str] | None = None
    ) -> Tensor | tuple[Tensor, Tensor]:
        """The cascade's text encoder on `texts` (the published keyword: `text=`), on the trainer's device:
        embeddings (b, n, d), and with `return_attn_mask` also the mask (b, n) bool that goes with them as
        `text_masks`."""
        texts = resolve_alias("texts", texts, "text", text)
        if texts is None:
            raise TypeError("texts: required, the captions to encode (a string or a list of strings)")
        if isinstance(texts, str):
            texts = [texts]
        embeds, masks = self.imagen.encode_text(texts, None, None, self.device)
        if embeds is None or masks is None:  # (texts were given, so both are computed)
            raise ValueError("texts: the cascade encoded no text")
        return (embeds, masks) if return_attn_mask else embeds

    # -- training -----------------------------------------------------------------------------------------

    def __call__(
        self, *args: Any, unet_number: int | None = 1, max_batch_size: int | None = None, **kwargs: Any
    ) -> float:
        """`forward`: calling the trainer is its training forward and backward."""
        return self.forward(*args, unet_number=unet_number, max_batch_size=max_batch_size, **kwargs)

    def forward(
        self, *args: Any, unet_number: int | None = 1, max_batch_size: int | None = None, **kwargs: Any
    ) -> float:
        """Forward and backward of `imagen(*args, unet_number=..., **kwargs)`, split into chunks of at most
        `max_batch_size` samples (gradients accumulate; the result is the whole batch's mean loss)."""
        unet_number, name = self._registered_name(unet_number)
        unet = self.models[name]
        args, kwargs = self._to_device(args), self._to_device(kwargs)
        total = 0.0
        # one micro-batch: across processes, gradients are all-reduced in the last of gradient_accumulate_every
        with self.accumulate(name):
            for fraction, chunk_args, chunk_kwargs in split_batch(max_batch_size, *args, **kwargs):
                with self.autocast():
                    loss = self.imagen(*chunk_args, unet_number=unet_number, unet=unet, **chunk_kwargs)
                self.backward(loss, name, fraction=fraction)
                total += loss.item() * fraction
        return total

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
        unet_number: int | None = None,
        max_batch_size: int | None = None,
    ) -> int:
        """Trains unet `unet_number` (default: `only_train_unet_number`, or the only unet) from the training data
        until it has taken `num_train_steps` optimizer steps (default: the constructor's `num_train_steps`; a
        resumed trainer goes on from its count), with `max_batch_size` splitting; numbered checkpoints are written
        every `checkpoint_every` updates. Returns the unet's step count. The other arguments are
        `BaseTrainer.fit`'s (`train_step` and `step_count` replace the unet's own)."""
        if train_step is None or step_count is None:
            number, name = self._registered_name(unet_number)
            if train_step is None:
                train_step = functools.partial(self._train_step_logs, number, max_batch_size)
            if step_count is None:
                step_count = functools.partial(self.step_counts.__getitem__, name)
            desc = desc if exists(desc) else f"unet {number}"
        elif exists(max_batch_size):
            raise ValueError(
                "max_batch_size: it splits the batches of the trainer's own train_step; pass it to "
                "the train_step you give instead"
            )
        return super().fit(
            num_train_steps,
            train_step,
            step_count=step_count,
            every=every,
            at_end=at_end,
            desc=desc,
            postfix=postfix,
            log_fn=log_fn,
        )

    def _train_step_logs(self, unet_number: int, max_batch_size: int | None) -> dict[str, float]:
        return {"loss": self.train_step(unet_number, max_batch_size)}

    def update(self, unet_number: int | None = None) -> bool:
        """One optimizer step (with clipping, NaN guard, LR schedule and EMA) for a unet; returns whether it
        stepped. Saves a checkpoint when `checkpoint_every` updates have passed."""
        _, name = self._registered_name(unet_number)
        stepped = self.step(name)
        if stepped and self.run_every(self.checkpoint_every, self.global_step):
            self.save_checkpoint()
        return stepped

    # -- data ---------------------------------------------------------------------------------------------

    def add_train_dataset(
        self, dataset: Dataset | None = None, *, batch_size: int, ds: Dataset | None = None, **dl_kwargs: Any
    ) -> None:
        """Train from `dataset` (the published keyword: `ds=`); with `split_valid_from_train`, a fraction is held
        out for validation. `dl_kwargs` go to the DataLoader."""
        dataset = _required("dataset", resolve_alias("dataset", dataset, "ds", ds))
        check_positive_int("batch_size", batch_size)
        if self.split_valid_from_train:
            dataset, valid = self._split(dataset)
            self.add_valid_dataset(valid, batch_size=batch_size, **dl_kwargs)
        dl_kwargs.setdefault("shuffle", True)
        self.add_train_dataloader(DataLoader(dataset, batch_size=batch_size, **dl_kwargs))

    def add_valid_dataset(
        self, dataset: Dataset | None = None, *, batch_size: int, ds: Dataset | None = None, **dl_kwargs: Any
    ) -> None:
        """Validate on `dataset` (the published keyword: `ds=`)."""
        dataset = _required("dataset", resolve_alias("dataset", dataset, "ds", ds))
        check_positive_int("batch_size", batch_size)
        dl_kwargs.setdefault("shuffle", True)
        self.add_valid_dataloader(DataLoader(dataset, batch_size=batch_size, **dl_kwargs))

    def add_train_dataloader(self, dataloader: DataLoader | None = None, *, dl: DataLoader | None = None) -> None:
        """Train from `dataloader` (the published keyword: `dl=`): its position (epoch, batches drawn) is saved in
        checkpoints, so a resumed run goes on with the same batches, also mid-epoch (a checkpoint loaded before
        this call applies here)."""
        dataloader = _required("dataloader", resolve_alias("dataloader", dataloader, "dl", dl))
        if exists(self.train_dl):
            raise ValueError("a training dataloader was already added")
        self._train_iter = self.add_dataloader("train", dataloader)
        self.train_dl = self._train_iter.dataloader

    def add_valid_dataloader(self, dataloader: DataLoader | None = None, *, dl: DataLoader | None = None) -> None:
        """Validate on `dataloader` (the published keyword: `dl=`)."""
        dataloader = _required("dataloader", resolve_alias("dataloader", dataloader, "dl", dl))
        if exists(self.valid_dl):
            raise ValueError("a validation dataloader was already added")
        self._valid_iter = self.add_dataloader("valid", dataloader)
        self.valid_dl = self._valid_iter.dataloader

    def _split(self, dataset: Dataset) -> tuple[Dataset, Dataset]:
        total = len(cast(Sized, dataset))
        if total < 2:
            raise ValueError(f"split_valid_from_train: the dataset has {total} sample(s); at least 2 are needed")
        valid_size = min(max(1, round(total * self.split_valid_fraction)), total - 1)
        generator = torch.Generator().manual_seed(self.split_random_seed)
        train, valid = random_split(dataset, [total - valid_size, valid_size], generator=generator)
        logger.info("split %d samples into %d for training and %d for validation", total, len(train), len(valid))
        return train, valid

    def _batch_to_kwargs(self, batch: Any) -> dict[str, Any]:
        """A dataloader batch as `imagen(...)` keyword arguments: a tensor is `images`, a dict is used as is, a
        tuple follows `dl_tuple_output_keywords_names` (a list of strings in it is `texts`)."""
        if isinstance(batch, Tensor):
            return {"images": batch}
        if isinstance(batch, dict):
            return dict(batch)
        if isinstance(batch, list | tuple):
            names = iter(self.dl_tuple_output_keywords_names)
            kwargs = {}
            for value in batch:
                is_texts = isinstance(value, list | tuple) and all(isinstance(v, str) for v in value)
                key = "texts" if is_texts else next(names, None)
                if key is None:
                    raise ValueError(
                        f"dataloader batch: {len(batch)} elements but dl_tuple_output_keywords_names "
                        f"names only {self.dl_tuple_output_keywords_names}"
                    )
                kwargs[key] = value
            return kwargs
        raise TypeError(f"dataloader batch: expected a tensor, tuple or dict, got {type(batch).__name__}")

    def _forward_kwargs(self, batch: Any) -> dict[str, Any]:
        kwargs = self._to_device(self._batch_to_kwargs(batch))
        if "images" in kwargs:
            kwargs["images_or_video"] = kwargs.pop("images")
        return kwargs

    # the seed README's `loss = trainer.train_step(unet_number=1)` is a float: `fit()` logs it as {'loss': loss}
    def train_step(  # type: ignore[override]
        self, unet_number: int | None = None, max_batch_size: int | None = None, **kwargs: Any
    ) -> float:
        """One optimizer step from the training data: forward and backward of `gradient_accumulate_every` batches,
        then `update`. Returns their mean loss (a float, as in the seed README; `fit()` logs it as `'loss'`)."""
        if not exists(self._train_iter):
            raise ValueError("no training data: call add_train_dataset or add_train_dataloader first")
        unet_number, _ = self._registered_name(unet_number)
        accumulate = self.gradient_accumulate_every
        loss = 0.0
        for _ in range(accumulate):
            loss += (
                self(
                    **self._forward_kwargs(next(self._train_iter)),
                    unet_number=unet_number,
                    max_batch_size=max_batch_size,
                    **kwargs,
                )
                / accumulate
            )
        self.update(unet_number)
        return loss

    @torch.no_grad()
    def valid_step(
        self,
        unet_number: int | None = None,
        max_batch_size: int | None = None,
        use_ema_unets: bool = False,
        **kwargs: Any,
    ) -> float:
        """The loss on one validation batch (no gradients, eval mode); `use_ema_unets` evaluates the EMA weights."""
        if not exists(self._valid_iter):
            raise ValueError("no validation data: call add_valid_dataset, or split_valid_from_train=True")
        unet_number, _ = self._registered_name(unet_number)
        batch = self._forward_kwargs(next(self._valid_iter))
        kwargs = self._to_device(kwargs)
        was_training = self.imagen.training
        self.imagen.eval()
        try:
            with self.use_ema_unets(use_ema_unets):
                total = 0.0
                for fraction, _, chunk in split_batch(max_batch_size, **batch, **kwargs):
                    with self.autocast():
                        total += self.imagen(**chunk, unet_number=unet_number).item() * fraction
        finally:
            self.imagen.train(was_training)
        return total

    # -- sampling -----------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def use_ema_unets(self, enabled: bool = True):
        """Temporarily put the EMA unets into the cascade (for sampling / validation)."""
        swapped = []
        if enabled and self.use_ema:
            for unet_number in range(1, self.num_unets + 1):
                name = self.model_name(unet_number)
                ema = self.ema(name) if name in self.models else None
                if ema is not None:
                    swapped.append((unet_number - 1, self.imagen.unets[unet_number - 1]))
                    self.imagen.unets[unet_number - 1] = ema.ema_model
        try:
            yield
        finally:
            for index, online in swapped:
                self.imagen.unets[index] = online

    @torch.no_grad()
    def sample(self, *args: Any, use_ema: bool = True, use_non_ema: bool | None = None, **kwargs: Any):
        """`imagen.sample(...)` with the EMA weights of every unet (unless `use_ema=False`, or the published
        spelling `use_non_ema=True`); tensors given are moved to the trainer's device. Warns first about unets
        that were not trained yet (`print_untrained_unets`)."""
        if "max_batch_size" in kwargs:
            raise ValueError(
                "max_batch_size: trainer.sample draws its whole batch at once; call it once per chunk "
                "(e.g. with batch_size= or a slice of the texts) to bound the memory"
            )
        if exists(use_non_ema):
            if not use_ema:
                raise ValueError("use_ema, use_non_ema: pass one of them (use_non_ema=True is use_ema=False)")
            use_ema = not use_non_ema
        kwargs.setdefault("device", self.device)
        self.print_untrained_unets(kwargs.get("start_at_unet_number", 1), kwargs.get("stop_at_unet_number"))
        args, kwargs = self._to_device(args), self._to_device(kwargs)
        with self.use_ema_unets(use_ema), self.autocast():
            return self.imagen.sample(*args, **kwargs)

    # -- checkpoints --------------------------------------------------------------------------------------

    def _filesystem(self, path: str | os.PathLike) -> tuple[Any, str] | None:
        """(filesystem, path) when `path` is written through fsspec (a URL, or any path with `checkpoint_fs`)."""
        if exists(self.checkpoint_fs):
            return self.checkpoint_fs, self.checkpoint_fs._strip_protocol(str(path))
        if _is_remote(path):
            return _url_to_fs(str(path), self.fs_kwargs)
        return None

    # a checkpoint on an fsspec filesystem is named by its URL, returned as the str it is
    def save(  # type: ignore[override]
        self, path: str | os.PathLike | None = None, *, overwrite: bool = True, without_optim_and_sched: bool = False
    ) -> Path | str:
        """Write everything (unets, EMAs, optimizers, schedulers, steps, data positions, RNG and the cascade's
        config) to one safetensors file; a remote fsspec URL (or a path on `checkpoint_fs`) is written locally,
        then uploaded. `path=None` writes a numbered checkpoint in `checkpoint_path` (`save_checkpoint()`).
        `overwrite=False` refuses (FileExistsError) a path that exists;
        `without_optim_and_sched=True` leaves the optimizer, LR-scheduler and grad-scaler states out (a smaller
        file; loading it restarts them).

        No collective operation: call it from the main process only (`if trainer.is_main: trainer.save(path)`) or
        from every process (each other process then also keeps its RNG states beside a local file, see
        `BaseTrainer.save`)."""
        if path is None:
            if without_optim_and_sched:
                raise ValueError(
                    "without_optim_and_sched: numbered checkpoints hold the whole training state; "
                    "give a path= for a checkpoint without optimizers"
                )
            return self.save_checkpoint()
        remote = self._filesystem(path)
        if not overwrite:
            taken = remote[0].exists(remote[1]) if exists(remote) else Path(path).exists()
            if taken:
                raise FileExistsError(f"path: {path} exists; pass overwrite=True to replace it")
        write = self._save_without_optimizers if without_optim_and_sched else functools.partial(BaseTrainer.save, self)
        if exists(remote):
            fs, target = remote
            with tempfile.TemporaryDirectory() as folder:
                local = write(Path(folder) / "checkpoint.safetensors")
                if self.is_main:
                    fs.put(str(local), target)
            return str(path)
        path = Path(path)
        if self.is_main:
            path.parent.mkdir(parents=True, exist_ok=True)
        written = write(path)
        self.print('%s can be sampled from the terminal: imagen sample --model %s "a caption"', path, path)
        return written

    def _save_without_optimizers(self, path: Path) -> Path:
        """`BaseTrainer.save(path)` without the optimizer, scheduler and scaler states (the main process writes)."""
        if self.is_main:
            tensors, meta = self.state_for_saving()
            left_out = ("optimizer.", "scheduler.", "scaler.")
            tensors = {key: value for key, value in tensors.items() if not key.startswith(left_out)}
            meta = {**meta, "optimizers": {}, "schedulers": {}}
            meta.pop("scaler", None)
            save_checkpoint(path, tensors, meta)
        return path

    def load(
        self,
        path: str | os.PathLike = "latest",
        *,
        strict: bool = True,
        load_optimizers: bool = True,
        restore_rng: bool = True,
        ignore_models: Collection[str] = (),
        only_model: bool = False,
        noop_if_not_exist: bool = False,
    ) -> dict | None:
        """Restore a checkpoint written by `save` (a local path, an fsspec URL or a path on `checkpoint_fs`;
        `'latest'`: the newest numbered one in `checkpoint_path`, None when there is none yet), from
        every process. All or nothing: a checkpoint that does not fit raises CheckpointError and changes nothing.
        `strict=True` refuses one whose unets are not this cascade's (another count, names, keys or shapes); the
        unets of the cascade that this trainer does not train (`only_train_unet_number`) are skipped. Weights
        and optimizer states land on the trainer's device.

        `only_model=True` loads the trained unets' weights only (not their EMA copies, optimizers, step counts,
        data positions or RNG states); `noop_if_not_exist=True` returns None, loading nothing, when there is no
        file at `path`. `restore_rng` and `ignore_models` as in `BaseTrainer.load`."""
        options: dict[str, Any] = dict(
            strict=strict,
            load_optimizers=load_optimizers,
            restore_rng=restore_rng,
            ignore_models=ignore_models,
            only_model=only_model,
        )
        if isinstance(path, str) and path == "latest":
            if not (exists(self.remote_checkpoints) or exists(self.checkpoints)):
                raise ValueError("path: 'latest' is the newest checkpoint in checkpoint_path=, which is not set")
            return self._load_latest(**options)
        remote = self._filesystem(path)
        if noop_if_not_exist:
            found = remote[0].exists(remote[1]) if exists(remote) else Path(path).is_file()
            if not found:
                self.print("trainer checkpoint not found at %s; nothing loaded", path)
                return None
        if exists(remote):
            fs, source = remote
            with tempfile.TemporaryDirectory() as folder:
                local = Path(folder) / "checkpoint.safetensors"
                fs.get(source, str(local))
                return self._load_local(local, **options)
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint not found: {path}")
        return self._load_local(path, **options)

    def _load_local(
        self,
        path: Path,
        *,
        strict: bool = True,
        load_optimizers: bool = True,
        restore_rng: bool = True,
        ignore_models: Collection[str] = (),
        only_model: bool = False,
    ) -> dict | None:
        if only_model:
            return self._load_model_weights(path, strict=strict)
        # the other unets of this very cascade, which a checkpoint of the whole cascade holds as well
        ignored = [*self._untrained_unet_names(), *ignore_models]
        return BaseTrainer.load(
            self, path, strict=strict, load_optimizers=load_optimizers, restore_rng=restore_rng, ignore_models=ignored
        )

    def _load_model_weights(self, path: Path, *, strict: bool) -> dict:
        """The trained unets' weights from a checkpoint of `save`, every one checked before any is loaded."""
        tensors, meta = load_checkpoint(path, map_location="cpu")
        planned = []
        for name in self.models:
            state = extract_model_state(tensors, name)
            if not state:
                if strict:
                    raise CheckpointError(
                        f"{path} holds no weights of {name}; nothing was loaded (strict=False loads the unets it has)"
                    )
                logger.warning("%s holds no weights of %s: it keeps its current weights", path, name)
                continue
            unet = self.unwrap(name)
            check_state_dict(unet, state, strict=strict, source=f"{path} (model {name!r})")
            planned.append((unet, state))
        for unet, state in planned:
            unet.load_state_dict(state, strict=strict)
        self.print("unet weights loaded from %s (only_model: EMA copies, optimizers and steps unchanged)", path)
        return meta

    def _untrained_unet_names(self) -> list[str]:
        """The other unets of this very cascade, which a checkpoint of the whole cascade holds as well."""
        return [self.model_name(n) for n in range(1, self.num_unets + 1) if self.model_name(n) not in self.models]

    def save_checkpoint(self) -> Path | str:
        """A numbered checkpoint in `checkpoint_path` (keeping the newest `max_checkpoints_keep`)."""
        if exists(self.remote_checkpoints):
            with tempfile.TemporaryDirectory() as folder:
                local = BaseTrainer.save(self, Path(folder) / "checkpoint.safetensors")
                if self.is_main:
                    return self.remote_checkpoints.upload(local, self.global_step)
                return local
        if not exists(self.checkpoints):
            raise ValueError("checkpoint_path: not set; pass checkpoint_path= to the trainer, or use save(path)")
        return BaseTrainer.save(self)

    def save_to_checkpoint_folder(self) -> Path | str:
        """The published name of `save_checkpoint`: a numbered checkpoint in `checkpoint_path`."""
        return self.save_checkpoint()

    def all_checkpoints_sorted(self) -> list[tuple[int, Path | str]]:
        """(total steps, path) of the numbered checkpoints in `checkpoint_path`, newest first."""
        found: list[tuple[int, Path | str]]
        if exists(self.remote_checkpoints):
            found = [(int(Path(path).stem.rsplit("-", 1)[-1]), path) for path in self.remote_checkpoints.list()]
        elif exists(self.checkpoints):
            found = [(step, path) for step, path in self.checkpoints.list()]
        else:
            raise ValueError("checkpoint_path: not set; pass checkpoint_path= to the trainer")
        return sorted(found, key=lambda item: item[0], reverse=True)

    def load_from_checkpoint_folder(self, last_total_steps: int = -1) -> dict | None:
        """Loads the numbered checkpoint of `checkpoint_path` written at `last_total_steps` updates (of all unets
        together), or the newest one with -1. Returns its metadata, or None when the folder holds none yet."""
        if not (isinstance(last_total_steps, int) and not isinstance(last_total_steps, bool)) or last_total_steps < -1:
            raise ValueError(
                f"last_total_steps: expected -1 (the newest) or a step count >= 0, got {last_total_steps!r}"
            )
        checkpoints = self.all_checkpoints_sorted()
        if last_total_steps != -1:
            checkpoints = [item for item in checkpoints if item[0] == last_total_steps]
            if not checkpoints:
                raise FileNotFoundError(
                    f"last_total_steps: no checkpoint at step {last_total_steps} in the "
                    f"checkpoint folder; found steps {[s for s, _ in self.all_checkpoints_sorted()]}"
                )
        if not checkpoints:
            self.print("no checkpoint in the checkpoint folder yet; nothing loaded")
            return None
        _, path = checkpoints[0]
        self.print("loading %s", path)
        if exists(self.remote_checkpoints):
            with tempfile.TemporaryDirectory() as folder:
                return self._load_local(self.remote_checkpoints.download(str(path), Path(folder)))
        return self._load_local(Path(path))

    def _load_latest(self, **options: Any) -> dict | None:
        """Loads the newest numbered checkpoint of `checkpoint_path` (`load` options); None when there is none."""
        if exists(self.remote_checkpoints):
            with tempfile.TemporaryDirectory() as folder:
                local = self.remote_checkpoints.download_latest(Path(folder))
                if not exists(local):
                    return None
                self.print("resuming from the newest checkpoint in %s", self.remote_checkpoints.root)
                return self._load_local(local, **options)
        self.wait_for_everyone()  # a checkpoint the main process is writing is complete before the search
        latest = self.checkpoints.latest() if exists(self.checkpoints) else None
        if not exists(latest):
            return None
        self.print("resuming from %s", latest)
        return self._load_local(latest, **options)

    def _resume_latest(self) -> None:
        self._load_latest()

    def save_pretrained(
        self, folder: str | os.PathLike | None = None, name: str | None = None, *, ema: bool = True
    ) -> Path | None:
        """Publishes the cascade with the EMA weights of every unet this trainer trains (`ema=False`: the trained
        weights) into `folder` (default `checkpoint_path/imagen` for a local `checkpoint_path`), written by the
        main process; returns that folder (None on the other processes). `Imagen.from_pretrained(folder)` (or
        `ElucidatedImagen.from_pretrained`) loads it; the training state is `save()`. `name` must be None or
        'imagen': the cascade is published whole."""
        if name not in (None, "imagen"):
            raise ValueError(
                f"name: the trainer publishes the whole cascade ('imagen' or None), got {name!r}; "
                "unet_being_trained(n) / get_ema_unet(n) give one unet"
            )
        if folder is None:
            if self.results_folder is None:
                raise ValueError("folder: give a folder, or build the trainer with a local checkpoint_path=")
            folder = self.results_folder / "imagen"
        if not self.is_main:
            return None
        with self.use_ema_unets(ema):
            path = Path(self.imagen.save_pretrained(folder))
        logger.info("saved the cascade to %s", path)
        return path

    # -- in-memory state (torch's state_dict protocol) ------------------------------------------------------

    def state_dict(self) -> OrderedDict[str, Tensor]:
        """The cascade's weights (`imagen.<key>`), each trained unet's EMA copy (`ema.unet<n>.<key>`) and the
        per-unet step counts (`steps`), as tensors (CPU copies). The whole training state, optimizers included, is
        `save` / `load`."""
        state: OrderedDict[str, Tensor] = OrderedDict()
        for key, value in self.imagen.state_dict().items():
            state[f"imagen.{key}"] = value.detach().cpu().clone()
        for name in self.models:
            ema = self.ema(name)
            if exists(ema):
                for key, value in ema.state_dict().items():
                    state[f"ema.{name}.{key}"] = value.detach().cpu().clone()
        state["steps"] = self.steps.clone()
        return state

    def load_state_dict(self, state_dict: Mapping[str, Tensor], strict: bool = True) -> None:
        """Restores what `state_dict` returned. Everything is checked first (keys, shapes, the step counts); a
        mismatch raises CheckpointError and changes nothing. `strict=False` loads the keys both have."""
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"state_dict: expected a dict of tensors, got {type(state_dict).__name__}")
        parts: dict[str, dict[str, Tensor]] = {"imagen": {}}
        emas = {name: ema for name in self.models if (ema := self.ema(name)) is not None}
        parts.update({f"ema.{name}": {} for name in emas})
        unexpected = []
        for key, value in state_dict.items():
            if not isinstance(value, Tensor):
                raise TypeError(f"state_dict[{key!r}]: expected a tensor, got {type(value).__name__}")
            prefix = next((p for p in parts if key.startswith(p + ".")), None)
            if exists(prefix):
                parts[prefix][key[len(prefix) + 1 :]] = value
            elif key != "steps":
                unexpected.append(key)
        if strict and unexpected:
            raise CheckpointError(
                f"state_dict: unexpected keys {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}"
                "; nothing was loaded"
            )
        steps = state_dict.get("steps")
        if exists(steps) and tuple(steps.shape) != (self.num_unets,):
            raise CheckpointError(
                f"state_dict['steps']: expected one count per unet ({self.num_unets}), got shape "
                f"{tuple(steps.shape)}; nothing was loaded"
            )
        if strict and not exists(steps):
            raise CheckpointError("state_dict: missing key 'steps'; nothing was loaded")
        check_state_dict(self.imagen, parts["imagen"], strict=strict, source="state_dict (imagen.*)")
        for name, ema in emas.items():
            check_state_dict(ema, parts[f"ema.{name}"], strict=strict, source=f"state_dict (ema.{name}.*)")

        self.imagen.load_state_dict(parts["imagen"], strict=strict)
        for name, ema in emas.items():
            ema.load_state_dict(parts[f"ema.{name}"], strict=strict)
        if exists(steps):
            for name in self.models:
                self.step_counts[name] = int(steps[int(name.removeprefix("unet")) - 1])
