"""ImagenTrainer: trains every U-Net of a cascade in one process, with one optimizer and one EMA per U-Net.

The optimisation machinery (accelerate, mixed precision, gradient accumulation, clipping, NaN guard, warmup +
cosine LR, EMA, safetensors checkpoints) is `synthesis_core.training.BaseTrainer`; this module adds what is
specific to a cascade: a named model per U-Net ('unet1', 'unet2', ...), `max_batch_size` splitting, datasets and
dataloaders, sampling with the EMA weights, periodic checkpoints to a folder (or an fsspec URL), and the
cascade's config stored in every checkpoint so that `load_imagen_from_checkpoint` can rebuild it.

The trainer holds its `BaseTrainer` (as `engine`) rather than inheriting from it: the published API's `steps`
is a tensor of per-unet counts, while the engine keeps a dict of counts under that name.
"""
from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, random_split

from imagen_pytorch.cascade import is_null_unet, per_unet
from imagen_pytorch.configs import imagen_config_from_model, load_imagen_from_checkpoint
from imagen_pytorch.elucidated import ElucidatedImagen
from imagen_pytorch.imagen import Imagen
from synthesis_core.checks import check_in_range, check_positive_int
from synthesis_core.training import BaseTrainer, DataStream, split_batch
from synthesis_core.utils import exists

logger = logging.getLogger(__name__)

__all__ = ["ImagenTrainer", "DEFAULT_BATCH_KEYWORDS"]

# what the elements of a dataloader's tuple batches are, in order (a list of strings is always `texts`)
DEFAULT_BATCH_KEYWORDS = ("images", "text_embeds", "text_masks", "cond_images")


def _is_remote(path: str | os.PathLike) -> bool:
    return "://" in str(path) and not str(path).startswith("file://")


def _url_to_fs(url: str):
    """(filesystem, path) of an fsspec URL, with a clear error when fsspec is missing."""
    try:
        import fsspec
    except ImportError as error:
        raise ValueError(f"{url!r} is a remote URL, which needs fsspec (pip install fsspec, plus the filesystem's "
                         "package such as gcsfs or s3fs); or give a local path") from error
    return fsspec.core.url_to_fs(url)


class _RemoteCheckpoints:
    """Numbered checkpoints under an fsspec URL (e.g. gs://bucket/run): written locally, then uploaded."""

    def __init__(self, url: str, keep_last: int | None):
        self.fs, self.root = _url_to_fs(url)
        self.keep_last = keep_last
        self.fs.makedirs(self.root, exist_ok=True)

    def list(self) -> list[str]:
        return sorted(self.fs.glob(f"{self.root.rstrip('/')}/checkpoint-*.safetensors"))

    def upload(self, local_path: Path, step: int) -> str:
        remote = f"{self.root.rstrip('/')}/checkpoint-{step:08d}.safetensors"
        self.fs.put(str(local_path), remote)
        if exists(self.keep_last):
            for old in self.list()[:-self.keep_last]:
                self.fs.rm(old)
        return remote

    def download_latest(self, folder: Path) -> Path | None:
        listed = self.list()
        if not listed:
            return None
        local = folder / Path(listed[-1]).name
        self.fs.get(listed[-1], str(local))
        return local


class ImagenTrainer:
    """Trains an `Imagen` or `ElucidatedImagen`: every unet has its own optimizer (AdamW) and EMA.

    ```
    trainer = ImagenTrainer(imagen)
    loss = trainer(images, text_embeds=text_embeds, unet_number=1, max_batch_size=4)  # backward, returns float
    trainer.update(unet_number=1)                                                      # optimizer + EMA step
    images = trainer.sample(texts=['a puppy'], cond_scale=3.)                          # with the EMA weights
    trainer.save('checkpoint.pt'); trainer.load('checkpoint.pt')
    ```
    Per-unet settings (`lr`, `eps`, `beta1`, `beta2`, `max_grad_norm`, `warmup_steps`, `cosine_decay_max_steps`)
    take one value or one per unet. The EMA copies the weights for the first `ema_update_after_step` updates,
    then averages them with `ema_decay` every `ema_update_every` updates. `checkpoint_path` (a folder, or an fsspec URL when fsspec is installed) with
    `checkpoint_every` saves numbered checkpoints every that many updates (of any unet) and resumes from the
    newest one at construction. `imagen_checkpoint_path` builds the cascade from a checkpoint and resumes it.
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
        max_grad_norm: float | Sequence[float | None] | None = None,
        warmup_steps: int | Sequence[int | None] | None = None,
        cosine_decay_max_steps: int | Sequence[int | None] | None = None,
        ema_decay: float = 0.995,
        ema_update_every: int = 10,
        ema_update_after_step: int = 100,
        only_train_unet_number: int | None = None,
        split_valid_from_train: bool = False,
        split_valid_fraction: float = 0.025,
        split_random_seed: int = 42,
        dl_tuple_output_keywords_names: Sequence[str] = DEFAULT_BATCH_KEYWORDS,
        checkpoint_path: str | os.PathLike | None = None,
        checkpoint_every: int | None = None,
        max_checkpoints_keep: int | None = 3,
        mixed_precision: str = "no",
        cpu: bool | None = None,
        gradient_accumulate_every: int = 1,
        seed: int | None = None,
        log_with: str | list | None = None,
        accelerate_kwargs: dict | None = None,
    ):
        if exists(imagen) == exists(imagen_checkpoint_path):
            raise ValueError("imagen, imagen_checkpoint_path: pass exactly one of them")
        if exists(imagen_checkpoint_path):
            imagen = load_imagen_from_checkpoint(imagen_checkpoint_path, load_weights=False)
        if not isinstance(imagen, Imagen | ElucidatedImagen):
            raise TypeError(f"imagen: expected an Imagen or ElucidatedImagen, got {type(imagen).__name__}")
        check_in_range("split_valid_fraction", split_valid_fraction, 0.0, 1.0)
        if exists(checkpoint_every):
            check_positive_int("checkpoint_every", checkpoint_every)
            if not exists(checkpoint_path):
                raise ValueError("checkpoint_every: needs checkpoint_path= (a folder or an fsspec URL)")

        # a local checkpoint folder is the engine's numbered-checkpoint folder; a remote one is handled here
        remote = exists(checkpoint_path) and _is_remote(checkpoint_path)
        local_folder = None if remote or not exists(checkpoint_path) else str(checkpoint_path).removeprefix("file://")
        self.engine = BaseTrainer(
            mixed_precision=mixed_precision, cpu=cpu, gradient_accumulate_every=gradient_accumulate_every,
            results_folder=local_folder, keep_last_checkpoints=max_checkpoints_keep, log_with=log_with, seed=seed,
            accelerate_kwargs=accelerate_kwargs,
        )
        self.remote_checkpoints = _RemoteCheckpoints(str(checkpoint_path), max_checkpoints_keep) if remote else None
        self.checkpoint_every = checkpoint_every

        self.imagen = imagen.to(self.engine.device)
        self.use_ema = use_ema
        self.dl_tuple_output_keywords_names = tuple(dl_tuple_output_keywords_names)
        self.split_valid_from_train = split_valid_from_train
        self.split_valid_fraction = split_valid_fraction
        self.split_random_seed = split_random_seed

        num_unets = imagen.num_unets
        if exists(only_train_unet_number):
            imagen.check_unet_number("only_train_unet_number", only_train_unet_number)
        self.only_train_unet_number = only_train_unet_number or imagen.only_train_unet_number
        settings = dict(lr=lr, eps=eps, beta1=beta1, beta2=beta2, max_grad_norm=max_grad_norm,
                        warmup_steps=warmup_steps, cosine_decay_max_steps=cosine_decay_max_steps)
        settings = {name: per_unet(name, value, num_unets) for name, value in settings.items()}
        for index, unet in enumerate(imagen.unets):
            if is_null_unet(unet) or (exists(self.only_train_unet_number) and index + 1 != self.only_train_unet_number):
                continue
            self.engine.add_model(
                self.model_name(index + 1), unet, lr=settings["lr"][index], eps=settings["eps"][index],
                betas=(settings["beta1"][index], settings["beta2"][index]), weight_decay=weight_decay,
                warmup_steps=settings["warmup_steps"][index] or 0,
                total_steps=settings["cosine_decay_max_steps"][index],
                max_grad_norm=settings["max_grad_norm"][index], ema=use_ema, ema_decay=ema_decay,
                ema_update_every=ema_update_every, ema_kwargs=dict(update_after_step=ema_update_after_step),
            )
        # stored in every checkpoint: what `load_imagen_from_checkpoint` rebuilds the cascade from
        try:
            imagen_config = imagen_config_from_model(imagen)
            self.engine.config["imagen"] = {"type": imagen_config.model_type, **imagen_config.to_dict()}
        except TypeError as error:  # a custom unet class: the trainer works, the file just cannot rebuild it
            logger.warning("checkpoints will not record the cascade's config (%s); load them with "
                           "ImagenTrainer(imagen).load(path) instead of load_imagen_from_checkpoint", error)

        self.train_dl: DataLoader | None = None
        self.valid_dl: DataLoader | None = None
        self._train_iter: DataStream | None = None
        self._valid_iter: DataStream | None = None

        if exists(imagen_checkpoint_path):
            self.load(imagen_checkpoint_path)
        elif exists(checkpoint_path):
            self._resume_latest()

    # -- the engine's state ---------------------------------------------------------------------------------

    @property
    def accelerator(self):
        return self.engine.accelerator

    @property
    def device(self) -> torch.device:
        return self.engine.device

    @property
    def is_main(self) -> bool:
        """True on the process that writes checkpoints and samples (always True without distribution)."""
        return self.engine.is_main

    @property
    def num_unets(self) -> int:
        return self.imagen.num_unets

    @property
    def steps(self) -> Tensor:
        """Optimizer steps taken by each unet, shape (num_unets,)."""
        return torch.tensor([self.engine.steps.get(self.model_name(n), 0) for n in range(1, self.num_unets + 1)])

    @staticmethod
    def model_name(unet_number: int) -> str:
        return f"unet{unet_number}"

    def _registered_name(self, unet_number: int | None) -> tuple[int, str]:
        unet_number = self.imagen.resolve_train_unet_number(
            unet_number if exists(unet_number) else self.only_train_unet_number)
        name = self.model_name(unet_number)
        if name not in self.engine.models:
            raise ValueError(f"unet_number: this trainer only trains unet {self.only_train_unet_number} "
                             f"(only_train_unet_number), got {unet_number}")
        return unet_number, name

    def get_lr(self, unet_number: int) -> float:
        return self.engine.get_lr(self._registered_name(unet_number)[1])

    def unet_being_trained(self, unet_number: int) -> nn.Module:
        """The (unwrapped) unet that `__call__` and `update` train for `unet_number`."""
        return self.engine.unwrap(self._registered_name(unet_number)[1])

    def ema_unet(self, unet_number: int) -> nn.Module | None:
        """The EMA copy of a unet (None without EMA)."""
        ema = self.engine.ema(self._registered_name(unet_number)[1])
        return ema.ema_model if exists(ema) else None

    # -- training -----------------------------------------------------------------------------------------

    def __call__(self, *args: Any, unet_number: int | None = 1, max_batch_size: int | None = None,
                 **kwargs: Any) -> float:
        """Forward and backward of `imagen(*args, unet_number=..., **kwargs)`, split into chunks of at most
        `max_batch_size` samples (gradients accumulate; the result is the whole batch's mean loss)."""
        unet_number, name = self._registered_name(unet_number)
        unet = self.engine.models[name]
        total = 0.0
        # one micro-batch: across processes, gradients are all-reduced in the last of gradient_accumulate_every
        with self.engine.accumulate(name):
            for fraction, chunk_args, chunk_kwargs in split_batch(max_batch_size, *args, **kwargs):
                with self.engine.autocast():
                    loss = self.imagen(*chunk_args, unet_number=unet_number, unet=unet, **chunk_kwargs)
                self.engine.backward(loss, name, fraction=fraction)
                total += loss.item() * fraction
        return total

    def update(self, unet_number: int | None = None) -> bool:
        """One optimizer step (with clipping, NaN guard, LR schedule and EMA) for a unet; returns whether it
        stepped. Saves a checkpoint when `checkpoint_every` updates have passed."""
        _, name = self._registered_name(unet_number)
        stepped = self.engine.step(name)
        if stepped and self.engine.run_every(self.checkpoint_every, self.engine.global_step):
            self.save_checkpoint()
        return stepped

    # -- data ---------------------------------------------------------------------------------------------

    def add_train_dataset(self, dataset: Dataset, *, batch_size: int, **dl_kwargs: Any) -> None:
        """Train from `dataset` (with `split_valid_from_train`, a fraction is held out for validation)."""
        check_positive_int("batch_size", batch_size)
        if self.split_valid_from_train:
            dataset, valid = self._split(dataset)
            self.add_valid_dataset(valid, batch_size=batch_size, **dl_kwargs)
        dl_kwargs.setdefault("shuffle", True)
        self.add_train_dataloader(DataLoader(dataset, batch_size=batch_size, **dl_kwargs))

    def add_valid_dataset(self, dataset: Dataset, *, batch_size: int, **dl_kwargs: Any) -> None:
        check_positive_int("batch_size", batch_size)
        dl_kwargs.setdefault("shuffle", True)
        self.add_valid_dataloader(DataLoader(dataset, batch_size=batch_size, **dl_kwargs))

    def add_train_dataloader(self, dataloader: DataLoader) -> None:
        """Train from `dataloader`: its position (epoch, batches drawn) is saved in checkpoints, so a resumed run
        goes on with the same batches, also mid-epoch (a checkpoint loaded before this call applies here)."""
        if exists(self.train_dl):
            raise ValueError("a training dataloader was already added")
        self._train_iter = self.engine.add_dataloader("train", dataloader)
        self.train_dl = self._train_iter.dataloader

    def add_valid_dataloader(self, dataloader: DataLoader) -> None:
        if exists(self.valid_dl):
            raise ValueError("a validation dataloader was already added")
        self._valid_iter = self.engine.add_dataloader("valid", dataloader)
        self.valid_dl = self._valid_iter.dataloader

    def _split(self, dataset: Dataset) -> tuple[Dataset, Dataset]:
        total = len(dataset)
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
                    raise ValueError(f"dataloader batch: {len(batch)} elements but dl_tuple_output_keywords_names "
                                     f"names only {self.dl_tuple_output_keywords_names}")
                kwargs[key] = value
            return kwargs
        raise TypeError(f"dataloader batch: expected a tensor, tuple or dict, got {type(batch).__name__}")

    def _forward_kwargs(self, batch: Any) -> dict[str, Any]:
        kwargs = self._batch_to_kwargs(batch)
        if "images" in kwargs:
            kwargs["images_or_video"] = kwargs.pop("images")
        return kwargs

    def train_step(self, unet_number: int | None = None, max_batch_size: int | None = None, **kwargs: Any) -> float:
        """One optimizer step from the training data: forward and backward of `gradient_accumulate_every` batches,
        then `update`. Returns their mean loss."""
        if not exists(self._train_iter):
            raise ValueError("no training data: call add_train_dataset or add_train_dataloader first")
        unet_number, _ = self._registered_name(unet_number)
        accumulate = self.engine.gradient_accumulate_every
        loss = 0.0
        for _ in range(accumulate):
            loss += self(**self._forward_kwargs(next(self._train_iter)), unet_number=unet_number,
                         max_batch_size=max_batch_size, **kwargs) / accumulate
        self.update(unet_number)
        return loss

    @torch.no_grad()
    def valid_step(self, unet_number: int | None = None, max_batch_size: int | None = None,
                   use_ema_unets: bool = False, **kwargs: Any) -> float:
        """The loss on one validation batch (no gradients, eval mode); `use_ema_unets` evaluates the EMA weights."""
        if not exists(self._valid_iter):
            raise ValueError("no validation data: call add_valid_dataset, or split_valid_from_train=True")
        unet_number, _ = self._registered_name(unet_number)
        batch = self._forward_kwargs(next(self._valid_iter))
        was_training = self.imagen.training
        self.imagen.eval()
        try:
            with self.use_ema_unets(use_ema_unets):
                total = 0.0
                for fraction, _, chunk in split_batch(max_batch_size, **batch, **kwargs):
                    with self.engine.autocast():
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
                if name in self.engine.models and exists(self.engine.ema(name)):
                    swapped.append((unet_number - 1, self.imagen.unets[unet_number - 1]))
                    self.imagen.unets[unet_number - 1] = self.engine.ema(name).ema_model
        try:
            yield
        finally:
            for index, online in swapped:
                self.imagen.unets[index] = online

    @torch.no_grad()
    def sample(self, *args: Any, use_ema: bool = True, **kwargs: Any):
        """`imagen.sample(...)` with the EMA weights of every unet (unless `use_ema=False`)."""
        kwargs.setdefault("device", self.device)
        with self.use_ema_unets(use_ema), self.engine.autocast():
            return self.imagen.sample(*args, **kwargs)

    # -- checkpoints --------------------------------------------------------------------------------------

    def save(self, path: str | os.PathLike) -> Path | str:
        """Write everything (unets, EMAs, optimizers, schedulers, steps, data positions, RNG and the cascade's
        config) to one safetensors file; a remote fsspec URL is written locally, then uploaded.

        No collective operation: call it from the main process only (`if trainer.is_main: trainer.save(path)`) or
        from every process (each other process then also keeps its RNG states beside a local file, see
        `BaseTrainer.save`)."""
        if _is_remote(path):
            fs, target = _url_to_fs(str(path))
            with tempfile.TemporaryDirectory() as folder:
                local = self.engine.save(Path(folder) / "checkpoint.safetensors")
                if self.is_main:
                    fs.put(str(local), target)
            return str(path)
        path = Path(path)
        if self.is_main:
            path.parent.mkdir(parents=True, exist_ok=True)
        written = self.engine.save(path)
        if self.is_main:
            logger.info("%s can be sampled from the terminal: imagen sample --model %s \"a caption\"", path, path)
        return written

    def load(self, path: str | os.PathLike, *, strict: bool = True, load_optimizers: bool = True) -> dict | None:
        """Restore a checkpoint written by `save` (a local path or an fsspec URL), from every process. All or
        nothing: a checkpoint that does not fit raises CheckpointError and changes nothing. `strict=True` refuses
        one whose unets are not this cascade's (another count, names, keys or shapes); the unets of the cascade
        that this trainer does not train (`only_train_unet_number`) are skipped."""
        untrained = self._untrained_unet_names()
        if _is_remote(path):
            fs, remote = _url_to_fs(str(path))
            with tempfile.TemporaryDirectory() as folder:
                local = Path(folder) / "checkpoint.safetensors"
                fs.get(remote, str(local))
                return self.engine.load(local, strict=strict, load_optimizers=load_optimizers,
                                        ignore_models=untrained)
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint not found: {path}")
        return self.engine.load(path, strict=strict, load_optimizers=load_optimizers, ignore_models=untrained)

    def _untrained_unet_names(self) -> list[str]:
        """The other unets of this very cascade, which a checkpoint of the whole cascade holds as well."""
        return [self.model_name(n) for n in range(1, self.num_unets + 1) if self.model_name(n) not in self.engine.models]

    def save_checkpoint(self) -> Path | str:
        """A numbered checkpoint in `checkpoint_path` (keeping the newest `max_checkpoints_keep`)."""
        if exists(self.remote_checkpoints):
            with tempfile.TemporaryDirectory() as folder:
                local = self.engine.save(Path(folder) / "checkpoint.safetensors")
                if self.is_main:
                    return self.remote_checkpoints.upload(local, self.engine.global_step)
                return local
        if not exists(self.engine.checkpoints):
            raise ValueError("checkpoint_path: not set; pass checkpoint_path= to the trainer, or use save(path)")
        return self.engine.save()

    def _resume_latest(self) -> None:
        if exists(self.remote_checkpoints):
            with tempfile.TemporaryDirectory() as folder:
                local = self.remote_checkpoints.download_latest(Path(folder))
                if exists(local):
                    logger.info("resuming from the newest checkpoint in %s", self.remote_checkpoints.root)
                    self.engine.load(local, ignore_models=self._untrained_unet_names())
            return
        if exists(self.engine.checkpoints.latest()):
            logger.info("resuming from %s", self.engine.checkpoints.latest())
            self.engine.load("latest", ignore_models=self._untrained_unet_names())
