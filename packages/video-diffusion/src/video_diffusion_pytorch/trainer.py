"""Training a `GaussianDiffusion` on a folder of gifs / mp4s (optionally captioned by `name.txt` sidecars), or on a
ready dataset of videos.

`Trainer` is the seed README's front door onto the core's `VideoTrainer` (accelerate: CPU, one or many GPUs; EMA;
NaN guard; safetensors checkpoints that resume exactly; the core folder datasets): the same `train_step()`,
`fit()`, `resume=`, `save()` / `load()` and `save_pretrained()` as every trainer of the project. Samples are written
as gifs next to numbered, resumable checkpoints in `results_folder`; at the end the EMA model is published to
`results_folder/diffusion` (`GaussianDiffusion.from_pretrained` loads it).
"""

from __future__ import annotations

import glob
import logging
from collections.abc import Callable, Sequence, Sized
from pathlib import Path
from typing import Any, cast

import torch
from torch.utils.data import Dataset

from synthesis_core.checkpoint import CheckpointManager
from synthesis_core.checks import check_in_range, check_positive_int, check_tensor
from synthesis_core.protocol import resolve_alias
from synthesis_core.training import VIDEO_EXTS, VideoTrainer
from synthesis_core.utils import default
from video_diffusion_pytorch.diffusion import GaussianDiffusion

__all__ = ["Trainer"]

logger = logging.getLogger(__name__)

MODEL_NAME = "diffusion"


def _period(name: str, value: int | None | str, seed_period: int) -> int | None:
    """A period in steps: `value`, or `seed_period` for the marker 'save_and_sample_every'."""
    if value == "save_and_sample_every":
        return seed_period
    if isinstance(value, str):
        raise ValueError(f"{name}: expected a number of steps, None or 'save_and_sample_every', got {value!r}")
    return value


def _dataset_text(dataset: Dataset) -> str | None:
    """What text the items of `dataset` carry, judged from its first item: 'captions' (`(video, caption, ...)`),
    'embeds' (`(video, text_embeds, text_mask)`, `(video, caption, text_embeds, text_mask)`) or None (bare
    videos)."""
    if len(cast(Sized, dataset)) == 0:
        raise ValueError("dataset: it is empty")
    item = dataset[0]
    if not isinstance(item, tuple | list) or len(item) < 2:
        return None
    if len(item) in (3, 4):  # the embeddings are what trains, also beside a caption
        return "embeds"
    return "captions" if isinstance(item[1], str) else None


def _has_caption_sidecars(folder: Path) -> bool:
    """Whether any file or frame folder in `folder` has a `name.txt` caption beside it."""
    for caption in folder.rglob("*.txt"):
        siblings = caption.parent.glob(f"{glob.escape(caption.stem)}.*")
        if (caption.parent / caption.stem).is_dir() or any(p.suffix != ".txt" for p in siblings):
            return True
    return False


class Trainer(VideoTrainer):
    """Trains `diffusion_model` on the videos in `folder` (the seed README's keywords).

    Args:
        diffusion_model: a `GaussianDiffusion`.
        folder: a folder of videos (`.gif`, `.mp4`, ... or sub-folders of png frames; searched recursively); frames
            are cropped or padded to `num_frames` (`frame_mode`) and resized to the model's image size.
        dataset: instead of `folder`, a ready dataset whose items are videos `(c, f, h, w)` in [0, 1], or
            `(video, caption)`, `(video, text_embeds, text_mask)`, `(video, caption, text_embeds, text_mask)` (as
            `VideoTrainer` reads them); `image_dataset` likewise instead of `image_folder`.
        ema_decay, step_start_ema, update_ema_every: the exponential moving average of the weights (used to sample).
        num_frames: frames per training video (default and only valid value: the model's `num_frames`).
        train_batch_size, train_lr, train_num_steps, gradient_accumulate_every, max_grad_norm: optimisation
            (constant learning rate).
        amp: mixed precision (bf16; `mixed_precision=` picks another mode).
        save_and_sample_every: every so many steps, write `sample-{milestone}.gif` (a grid of
            `num_sample_rows ** 2` samples of the EMA model) and a numbered checkpoint to `results_folder`;
            `sample_every` / `save_every` set the two periods apart (None: never).
        cond_from_captions: when the videos have `name.txt` sidecars and the model takes text
            (`Unet3D(use_bert_text_cond=True)`), train text-conditioned on them (captions are encoded by the
            model's BERT) and sample with `sample_texts` or the first captions of the data set.
        prob_focus_present: fraction of videos trained with temporal attention off.
        image_folder, image_batch_size, image_loss_weight: image-video co-training: each step also trains on a
            batch of images from `image_folder` as one-frame videos (temporal attention skipped).
        sample_cond_scale, sampler, sample_steps: how samples are drawn.
        max_batch_size: split each batch into chunks of this size (same gradients, less memory).
        resume: a checkpoint to continue from (`'latest'`: the newest in `results_folder`, if any).
        Remaining keyword arguments go to `BaseTrainer` (cpu, seed, log_with, keep_last_checkpoints, ...).

    video-diffusion-pytorch 0.7 calls: `save(milestone)` / `load(milestone)` (an int: the checkpoint of step
    `milestone * save_and_sample_every`, the one `train()` writes at that milestone; `load(-1)`: the latest),
    `reset_parameters()` (the EMA copies the model), `step_ema()`, `train(prob_focus_present=...,
    focus_present_mask=...)`.
    """

    def __init__(
        self,
        diffusion_model: GaussianDiffusion,
        folder: str | Path | None = None,
        *,
        dataset: Dataset | None = None,
        image_dataset: Dataset | None = None,
        ema_decay: float = 0.995,
        num_frames: int | None = None,
        train_batch_size: int = 32,
        train_lr: float = 1e-4,
        train_num_steps: int = 100000,
        gradient_accumulate_every: int = 2,
        amp: bool = False,
        step_start_ema: int = 2000,
        update_ema_every: int = 10,
        save_and_sample_every: int = 1000,
        sample_every: int | None | str = "save_and_sample_every",
        save_every: int | None | str = "save_and_sample_every",
        results_folder: str | Path = "./results",
        num_sample_rows: int = 4,
        max_grad_norm: float | None = None,
        cond_from_captions: bool = True,
        frame_mode: str = "crop",
        exts: Sequence[str] = VIDEO_EXTS,
        prob_focus_present: float = 0.0,
        image_folder: str | Path | None = None,
        image_batch_size: int | None = None,
        image_loss_weight: float = 1.0,
        sample_texts: Sequence[str] | None = None,
        sample_cond_scale: float = 2.0,
        sampler: str | None = None,
        sample_steps: int | None = None,
        max_batch_size: int | None = None,
        num_workers: int = 0,
        mixed_precision: str | None = None,
        resume: str | Path | None = None,
        **base_kwargs: Any,
    ):
        if not isinstance(diffusion_model, GaussianDiffusion):
            raise TypeError(f"diffusion_model: expected a GaussianDiffusion, got {type(diffusion_model).__name__}")
        check_positive_int("save_and_sample_every", save_and_sample_every)
        check_positive_int("num_sample_rows", num_sample_rows)
        check_positive_int("step_start_ema", step_start_ema, allow_zero=True)
        check_positive_int("update_ema_every", update_ema_every)
        check_in_range("ema_decay", ema_decay, 0.0, 1.0)
        check_in_range("prob_focus_present", prob_focus_present, 0.0, 1.0)
        num_frames = default(num_frames, diffusion_model.num_frames)
        check_positive_int("num_frames", num_frames)
        if num_frames != diffusion_model.num_frames:
            raise ValueError(
                f"num_frames: the model generates {diffusion_model.num_frames} frames, got num_frames={num_frames}"
            )
        if (folder is None) == (dataset is None):
            raise ValueError(
                "folder: pass either folder= (a folder of videos) or dataset= (a dataset of videos), exactly one"
            )
        if image_folder is not None and image_dataset is not None:
            raise ValueError("image_folder: pass either image_folder or image_dataset, not both")
        if folder is not None:
            folder = Path(folder)
            if not folder.is_dir():
                raise ValueError(f"folder: {folder} is not a folder")

        # text conditioning from sidecar captions (or the captions of the dataset's items), when the model can
        # read text; a dataset of precomputed embeddings conditions any text-conditioned model
        source = folder if folder is not None else "the dataset"
        model_reads_text = getattr(diffusion_model.model, "text_encoder", None) is not None
        text_kind = _dataset_text(dataset) if dataset is not None else None
        has_captions = _has_caption_sidecars(folder) if folder is not None else text_kind == "captions"
        with_captions = bool(cond_from_captions and ((has_captions and model_reads_text) or text_kind == "embeds"))
        if cond_from_captions and has_captions and not model_reads_text:
            logger.warning(
                "%s has captions but the model was built without use_bert_text_cond=True: training unconditionally",
                source,
            )
        if model_reads_text and not with_captions:
            logger.warning(
                "the model is text-conditioned but no captions are used (none found in %s, or "
                "cond_from_captions=False): training and sampling with the null condition only",
                source,
            )

        self.prob_focus_present = prob_focus_present
        self.focus_present_mask: torch.Tensor | None = None
        self.save_and_sample_every = save_and_sample_every
        # the one period of the seed's trainer, unless set apart
        sample_period = _period("sample_every", sample_every, save_and_sample_every)
        save_period = _period("save_every", save_every, save_and_sample_every)
        self.num_sample_rows = num_sample_rows
        super().__init__(
            diffusion_model,
            model_name=MODEL_NAME,
            video_folder=folder,
            image_folder=image_folder,
            video_dataset=dataset,
            image_dataset=image_dataset,
            with_captions=with_captions,
            frame_mode=frame_mode,
            video_exts=exts,
            batch_size=train_batch_size,
            image_batch_size=image_batch_size,
            num_workers=num_workers,
            num_train_steps=train_num_steps,
            lr=train_lr,
            cosine_decay=False,
            max_grad_norm=max_grad_norm,
            grad_accum_every=gradient_accumulate_every,
            ema_decay=ema_decay,
            ema_update_every=update_ema_every,
            ema_update_after_step=step_start_ema,
            image_loss_weight=image_loss_weight,
            max_batch_size=max_batch_size,
            sample_every=sample_period,
            save_every=save_period,
            num_samples=num_sample_rows**2,
            sample_texts=sample_texts,
            sample_cond_scale=sample_cond_scale,
            sample_kwargs=dict(sampler=sampler, steps=sample_steps),
            find_unused_parameters=prob_focus_present > 0,
            results_folder=results_folder,
            mixed_precision=default(mixed_precision, "bf16" if amp else "no"),
            resume=resume,
            **base_kwargs,
        )
        self.config.update(
            train_batch_size=train_batch_size,
            train_lr=train_lr,
            train_num_steps=train_num_steps,
            gradient_accumulate_every=gradient_accumulate_every,
            num_frames=num_frames,
            frame_mode=frame_mode,
            prob_focus_present=prob_focus_present,
        )

    # the seed-era names of what the core trainer holds
    @property
    def diffusion(self) -> GaussianDiffusion:
        return cast(GaussianDiffusion, self.model)  # checked in the constructor

    @property
    def dataset(self) -> Dataset | None:
        """The training videos: those of `folder` (a `synthesis_core.folders.VideoFolderDataset`), or `dataset`."""
        return self.video_dataset

    @property
    def train_num_steps(self) -> int:
        return self.num_train_steps

    def reset_parameters(self) -> None:
        """The EMA copy takes the model's current weights (and buffers), as at the start of training."""
        ema = self.ema()
        if ema is None:
            raise RuntimeError("reset_parameters: this trainer keeps no EMA of the model")
        ema.copy_params_from_model_to_ema()

    def step_ema(self) -> None:
        """One EMA update now (the published trainer's method, for loops written by hand; `train()` already
        updates the EMA every `update_ema_every` steps): before `step_start_ema` steps the EMA copies the model,
        after that it moves toward it by `ema_decay` (`ema = decay * ema + (1 - decay) * model`)."""
        ema = self.ema()
        if ema is None:
            raise RuntimeError("step_ema: this trainer keeps no EMA of the model")
        if self.global_step < ema.update_after_step:
            self.reset_parameters()
        else:
            # the published trainer's constant decay (the loop's own updates warm the decay up with ema.step)
            ema.update_moving_average(ema.ema_model, ema.model, current_decay=ema.beta)

    # -- the published trainer's checkpoints by milestone ---------------------------------------------------------

    def _milestone_path(self, milestone: int, what: str) -> Path | str:
        if isinstance(milestone, bool) or not isinstance(milestone, int):
            raise TypeError(f"{what}: expected an int milestone, got {type(milestone).__name__}")
        if milestone == -1 and what == "load":
            return "latest"
        if milestone < 0:
            raise ValueError(
                f"{what}: expected a milestone >= 0{' (or -1: the latest)' if what == 'load' else ''}, got {milestone}"
            )
        return self._numbered_checkpoints().path_for(milestone * self.save_and_sample_every)

    def _numbered_checkpoints(self) -> CheckpointManager:
        if self.checkpoints is None:  # (results_folder is always set here; the type allows None)
            raise ValueError("results_folder: milestones are numbered checkpoints in results_folder, which is unset")
        return self.checkpoints

    def save(self, path: str | Path | int | None = None, *, milestone: int | None = None) -> Path:
        """Writes a resumable checkpoint (see `BaseTrainer.save`); `milestone` (or an int `path`, the published
        call `save(milestone)`) names it as the checkpoint of step `milestone * save_and_sample_every`."""
        if isinstance(path, bool):
            raise TypeError("path: expected a file path or an int milestone, got a bool")
        target: str | Path | None
        if isinstance(path, int):
            target, milestone = None, resolve_alias("milestone", milestone, "path", path)
        else:
            target = path
        if milestone is not None:
            if target is not None:
                raise ValueError("milestone: pass either milestone= or path=, not both")
            target = self._milestone_path(milestone, "save")
            if milestone * self.save_and_sample_every != self.global_step:
                logger.warning(
                    "save(milestone=%d): the trainer is at step %d, but the file is named for step %d",
                    milestone,
                    self.global_step,
                    milestone * self.save_and_sample_every,
                )
        return super().save(target)

    def load(self, path: str | Path | int = "latest", *, milestone: int | None = None, **kwargs: Any) -> dict | None:
        """Restores a checkpoint (see `BaseTrainer.load`); `milestone` (or an int `path`, the published call
        `load(milestone)`) picks the one of step `milestone * save_and_sample_every`, -1 the latest."""
        if isinstance(path, bool):
            raise TypeError("path: expected a file path, 'latest' or an int milestone, got a bool")
        source: str | Path
        if isinstance(path, int):
            source, milestone = "latest", resolve_alias("milestone", milestone, "path", path)
        else:
            source = path
        if milestone is not None:
            if source != "latest":
                raise ValueError("milestone: pass either milestone= or path=, not both")
            source = self._milestone_path(milestone, "load")
            if source == "latest" and self._numbered_checkpoints().latest() is None:
                raise FileNotFoundError(f"load(milestone=-1): no checkpoint in {self.results_folder} yet")
        return super().load(source, **kwargs)

    # -- training -----------------------------------------------------------------------------------------------

    def train(
        self,
        log_fn: Callable[[dict[str, float]], None] | None = None,
        *,
        prob_focus_present: float | None = None,
        focus_present_mask: torch.Tensor | None = None,
    ) -> Path | None:
        """Trains until `num_train_steps` (see `VideoTrainer.train`). `prob_focus_present` (default: the
        constructor's) and `focus_present_mask` (a `(batch,)` bool tensor: these videos of every batch train with
        temporal attention off) apply to this call, as in video-diffusion-pytorch 0.7's `train`."""
        previous = self.prob_focus_present, self.focus_present_mask
        if prob_focus_present is not None:
            check_in_range("prob_focus_present", prob_focus_present, 0.0, 1.0)
        if focus_present_mask is not None:
            check_tensor("focus_present_mask", focus_present_mask, ndim=1, names=("batch",))
            if focus_present_mask.dtype != torch.bool:
                raise TypeError(f"focus_present_mask: expected a bool tensor, got {focus_present_mask.dtype}")
        turns_focus_on = (prob_focus_present or 0.0) > 0 or focus_present_mask is not None
        if turns_focus_on and self.prob_focus_present == 0 and self.num_processes > 1:
            raise ValueError(
                "prob_focus_present, focus_present_mask: with several processes, pass "
                "prob_focus_present > 0 to the Trainer itself (DDP must expect unused parameters)"
            )
        self.prob_focus_present = default(prob_focus_present, self.prob_focus_present)
        self.focus_present_mask = focus_present_mask
        try:
            return super().train(log_fn)
        finally:
            self.prob_focus_present, self.focus_present_mask = previous

    def compute_loss(
        self, model: torch.nn.Module, pixels: torch.Tensor, text_kwargs: dict[str, Any], *, images: bool
    ) -> torch.Tensor:
        # images (b, c, h, w) train as one-frame videos with temporal attention off: no focus to choose
        if images:
            return model(pixels, **text_kwargs)
        focus_kwargs: dict[str, Any] = dict(prob_focus_present=self.prob_focus_present)
        if self.focus_present_mask is not None:
            if self.focus_present_mask.shape[0] != pixels.shape[0]:
                raise ValueError(
                    f"focus_present_mask: expected one value per video of a batch ({pixels.shape[0]}), "
                    f"got {self.focus_present_mask.shape[0]}"
                )
            focus_kwargs["focus_present_mask"] = self.focus_present_mask.to(pixels.device)
        return model(pixels, **focus_kwargs, **text_kwargs)

    def sample_path(self, step: int) -> Path:
        """`sample-{milestone}.gif`, the milestone counting sampling periods."""
        return self.results_path(f"sample-{step // (self.sample_every or self.save_and_sample_every)}.gif")

    def sample_and_save(self, milestone: int | None = None) -> Path | None:
        """Writes samples to `sample-{milestone}.gif` (default: this step's milestone) and a numbered checkpoint;
        returns the gif's path (main process)."""
        path = self.save_samples(None if milestone is None else self.results_path(f"sample-{milestone}.gif"))
        self.save()
        return path
