"""Training a `GaussianDiffusion` on a folder of gifs / mp4s (optionally captioned by `name.txt` sidecars).

Built on the core's `BaseTrainer` (accelerate: CPU, one or many GPUs; EMA; NaN guard; safetensors checkpoints)
and `VideoFolderDataset`. Samples are written as gifs next to numbered, resumable checkpoints in `results_folder`.
"""
from __future__ import annotations

import glob
import logging
import math
from collections.abc import Sequence
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from synthesis_core.checks import check_choice, check_in_range, check_positive_int
from synthesis_core.data import ImageFolderDataset, VideoFolderDataset
from synthesis_core.training import BaseTrainer, split_batch
from synthesis_core.utils import default, exists
from synthesis_core.video import save_video
from video_diffusion_pytorch.diffusion import GaussianDiffusion

__all__ = ["Trainer"]

logger = logging.getLogger(__name__)

MODEL_NAME = "diffusion"
VIDEO_EXTS = ("gif", "mp4", "webm", "mov", "avi", "mkv")


def _has_caption_sidecars(folder: Path) -> bool:
    """Whether any file or frame folder in `folder` has a `name.txt` caption beside it."""
    for caption in folder.rglob("*.txt"):
        siblings = caption.parent.glob(f"{glob.escape(caption.stem)}.*")
        if (caption.parent / caption.stem).is_dir() or any(p.suffix != ".txt" for p in siblings):
            return True
    return False


def _split_batch(batch) -> tuple[torch.Tensor, list[str] | None]:
    if isinstance(batch, (tuple, list)) and len(batch) == 2 and not isinstance(batch[0], str):
        media, captions = batch
        return media, list(captions)
    return batch, None


class Trainer(BaseTrainer):
    """Trains `diffusion_model` on the videos in `folder`.

    Args:
        diffusion_model: a `GaussianDiffusion`.
        folder: a folder of videos (`.gif`, `.mp4`, ... or sub-folders of png frames; searched recursively); frames
            are cropped or padded to `num_frames` (`frame_mode`) and resized to the model's image size.
        ema_decay, step_start_ema, update_ema_every: the exponential moving average of the weights (used to sample).
        num_frames: frames per training video (default and only valid value: the model's `num_frames`).
        train_batch_size, train_lr, train_num_steps, gradient_accumulate_every, max_grad_norm: optimisation.
        amp: mixed precision (bf16; `mixed_precision=` picks another mode).
        save_and_sample_every: every so many steps, write `sample-{milestone}.gif` (a grid of
            `num_sample_rows ** 2` samples of the EMA model) and a numbered checkpoint to `results_folder`.
        cond_from_captions: when the videos have `name.txt` sidecars and the model takes text
            (`Unet3D(use_bert_text_cond=True)`), train text-conditioned on them (captions are encoded by the
            model's BERT) and sample with the first captions of the data set.
        prob_focus_present: fraction of videos trained with temporal attention off.
        image_folder, image_batch_size, image_loss_weight: image-video co-training: each step also trains on a
            batch of images from `image_folder` as one-frame videos (temporal attention skipped).
        sample_cond_scale, sampler, sample_steps: how samples are drawn.
        max_batch_size: split each batch into chunks of this size (same gradients, less memory).
        Remaining keyword arguments go to `BaseTrainer` (cpu, seed, log_with, keep_last_checkpoints, ...).
    """

    def __init__(
        self,
        diffusion_model: GaussianDiffusion,
        folder: str | Path,
        *,
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
        sample_cond_scale: float = 2.0,
        sampler: str | None = None,
        sample_steps: int | None = None,
        max_batch_size: int | None = None,
        num_workers: int = 0,
        mixed_precision: str | None = None,
        **base_kwargs,
    ):
        if not isinstance(diffusion_model, GaussianDiffusion):
            raise TypeError(f"diffusion_model: expected a GaussianDiffusion, got {type(diffusion_model).__name__}")
        check_positive_int("train_batch_size", train_batch_size)
        check_positive_int("train_num_steps", train_num_steps)
        check_positive_int("save_and_sample_every", save_and_sample_every)
        check_positive_int("num_sample_rows", num_sample_rows)
        check_positive_int("step_start_ema", step_start_ema, allow_zero=True)
        check_positive_int("update_ema_every", update_ema_every)
        check_positive_int("num_workers", num_workers, allow_zero=True)
        check_choice("frame_mode", frame_mode, ("crop", "pad"))
        check_in_range("ema_decay", ema_decay, 0.0, 1.0)
        check_in_range("prob_focus_present", prob_focus_present, 0.0, 1.0)
        num_frames = default(num_frames, diffusion_model.num_frames)
        check_positive_int("num_frames", num_frames)
        if num_frames != diffusion_model.num_frames:
            raise ValueError(f"num_frames: the model generates {diffusion_model.num_frames} frames, "
                             f"got num_frames={num_frames}")
        folder = Path(folder)
        if not folder.is_dir():
            raise ValueError(f"folder: {folder} is not a folder")

        super().__init__(
            mixed_precision=default(mixed_precision, "bf16" if amp else "no"),
            gradient_accumulate_every=gradient_accumulate_every,
            results_folder=results_folder,
            **base_kwargs,
        )
        self.train_num_steps = train_num_steps
        self.save_and_sample_every = save_and_sample_every
        self.num_sample_rows = num_sample_rows
        self.prob_focus_present = prob_focus_present
        self.image_loss_weight = image_loss_weight
        self.sample_cond_scale = sample_cond_scale
        self.sampler = sampler
        self.sample_steps = sample_steps
        self.max_batch_size = max_batch_size

        # text conditioning from sidecar captions, when the model can read text
        model_reads_text = getattr(diffusion_model.model, "text_encoder", None) is not None
        has_captions = _has_caption_sidecars(folder)
        self.with_captions = bool(cond_from_captions and has_captions and model_reads_text)
        if cond_from_captions and has_captions and not model_reads_text:
            logger.warning("%s has .txt captions but the model was built without use_bert_text_cond=True: "
                           "training unconditionally", folder)
        if model_reads_text and not self.with_captions:
            logger.warning("the model is text-conditioned but no captions are used (none found in %s, or "
                           "cond_from_captions=False): training and sampling with the null condition only", folder)

        image_size = diffusion_model.image_size
        self.dataset = VideoFolderDataset(folder, image_size, num_frames, frame_mode=frame_mode,
                                          with_captions=self.with_captions, exts=tuple(exts))
        if len(self.dataset) == 0:
            raise ValueError(f"folder: no readable {'/'.join(exts)} videos found in {folder}")
        # endless batches whose position checkpoints record: a resume goes on mid-epoch with the same batches
        self.dl = self.add_dataloader("videos", self._loader(self.dataset, train_batch_size, num_workers))

        self.image_dl = None
        if exists(image_folder):
            images = ImageFolderDataset(image_folder, image_size, with_captions=self.with_captions)
            if len(images) == 0:
                raise ValueError(f"image_folder: no readable images found in {image_folder}")
            loader = self._loader(images, default(image_batch_size, train_batch_size), num_workers)
            self.image_dl = self.add_dataloader("images", loader)

        self.add_model(
            MODEL_NAME,
            diffusion_model,
            lr=train_lr,
            max_grad_norm=max_grad_norm,
            ema_decay=ema_decay,
            ema_update_every=update_ema_every,
            ema_kwargs={"update_after_step": step_start_ema},
            # images skip the temporal layers, and text conditioning drops the caption now and then: some
            # parameters then get no gradient, which DDP must be told about
            find_unused_parameters=exists(image_folder) or self.with_captions or prob_focus_present > 0,
        )
        self.config.update(
            train_batch_size=train_batch_size, train_lr=train_lr, train_num_steps=train_num_steps,
            gradient_accumulate_every=gradient_accumulate_every, ema_decay=ema_decay, num_frames=num_frames,
            with_captions=self.with_captions, frame_mode=frame_mode, prob_focus_present=prob_focus_present,
        )

    @staticmethod
    def _loader(dataset, batch_size: int, num_workers: int) -> DataLoader:
        # keep every step's batch full when the data allow it
        return DataLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=len(dataset) >= batch_size,
                          num_workers=num_workers, pin_memory=torch.cuda.is_available())

    @property
    def diffusion(self) -> GaussianDiffusion:
        return self.unwrap(MODEL_NAME)

    @property
    def step_count(self) -> int:
        return self.steps[MODEL_NAME]

    # -- training -----------------------------------------------------------------------------------------

    def _accumulate(self, media: torch.Tensor, captions: list[str] | None, weight: float = 1.0,
                    **loss_kwargs) -> float:
        model = self.models[MODEL_NAME]
        total = 0.0
        for fraction, (chunk,), kwargs in split_batch(self.max_batch_size, media, cond=captions):
            with self.autocast():
                loss = model(chunk, **kwargs, **loss_kwargs)
            self.backward(loss * weight, MODEL_NAME, fraction=fraction)
            total += loss.item() * fraction
        return total

    def train_step(self) -> float:
        """One optimizer step over `gradient_accumulate_every` batches; returns the mean loss."""
        total = 0.0
        for _ in range(self.gradient_accumulate_every):
            with self.accumulate(MODEL_NAME):
                videos, captions = _split_batch(next(self.dl))
                total += self._accumulate(videos, captions, prob_focus_present=self.prob_focus_present)
                if exists(self.image_dl):
                    # images are (b, c, h, w): the diffusion trains them as one-frame videos, temporal attention off
                    images, image_captions = _split_batch(next(self.image_dl))
                    total += self._accumulate(images, image_captions, weight=self.image_loss_weight)
        self.step(MODEL_NAME)
        return total / self.gradient_accumulate_every

    def train(self) -> None:
        """Train until `train_num_steps` (continuing from a loaded checkpoint), sampling and saving periodically."""
        with self.progress(self.train_num_steps, initial=self.step_count, desc="training") as bar:
            while self.step_count < self.train_num_steps:
                loss = self.train_step()
                bar.set_postfix(loss=f"{loss:.4f}")
                bar.update(1)
                if self.run_every(self.save_and_sample_every, self.step_count):
                    self.sample_and_save(self.step_count // self.save_and_sample_every)
        logger.info("training complete after %d steps", self.step_count)

    # -- samples and checkpoints ---------------------------------------------------------------------

    def sample_captions(self, count: int) -> list[str] | None:
        """The first `count` captions of the data set (cycled), to sample a text-conditioned model with."""
        if not self.with_captions:
            return None
        paths = self.dataset.paths[:count]
        captions = [self.dataset.captions[path] for path in paths]
        return [captions[i % len(captions)] for i in range(count)]

    @torch.no_grad()
    def sample(self, count: int | None = None) -> torch.Tensor:
        """`count` (default `num_sample_rows ** 2`) videos in [0, 1] from the EMA weights."""
        count = default(count, self.num_sample_rows**2)
        ema = self.ema(MODEL_NAME)
        diffusion = ema.ema_model if exists(ema) else self.diffusion
        captions = self.sample_captions(count)
        return diffusion.sample(cond=captions, cond_scale=self.sample_cond_scale if captions else 1.0,
                                batch_size=count, sampler=self.sampler, steps=self.sample_steps,
                                progress=False)

    def sample_and_save(self, milestone: int) -> Path | None:
        """Write `sample-{milestone}.gif` and a numbered checkpoint; returns the gif's path (main process)."""
        path = None
        if self.is_main:
            videos = self.sample()
            path = self.results_folder / f"sample-{milestone}.gif"
            save_video(videos.float().cpu(), path, nrow=int(math.sqrt(videos.shape[0])) or 1)
            logger.info("wrote %s", path)
        self.save()
        return path
