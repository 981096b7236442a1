"""Training a `MakeAVideo` (or a `FrameInterpolator`) on image folders and video folders, with captions.

Built on the core's `BaseTrainer` (accelerate: CPU, one or many GPUs; EMA; NaN guard; safetensors checkpoints)
and the core's `ImageFolderDataset` / `VideoFolderDataset` (captions from `name.txt` sidecars). The data decide
the phase of the paper's recipe:

- images only: spatial pretraining (images skip every temporal layer);
- videos only: video training (with `MakeAVideo.from_image_model(...)` and `freeze_spatial=True`, the temporal
  layers only);
- both: image-video co-training, one batch of each per step.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from make_a_video_pytorch.make_a_video import FrameInterpolator, MakeAVideo
from synthesis_core.checks import check_choice, check_in_range, check_positive_int
from synthesis_core.data import ImageFolderDataset, VideoFolderDataset
from synthesis_core.training import BaseTrainer, DataStream, split_batch
from synthesis_core.utils import default, exists
from synthesis_core.video import save_video

__all__ = ["MakeAVideoTrainer", "MODEL_NAME"]

logger = logging.getLogger(__name__)

MODEL_NAME = "model"
VIDEO_EXTS = ("gif", "mp4", "webm", "mov", "avi", "mkv")


def _unpack_batch(batch: Any) -> tuple[torch.Tensor, dict]:
    """A data loader batch -> `(pixels, text keyword arguments)`.

    Accepts `pixels`, `(pixels, captions)`, `(pixels, embeds, mask)` (pre-computed text embeddings) and
    `(pixels, captions, embeds, mask)` (`synthesis_core.datasets.ShapesVideoDataset` with embeddings).
    """
    if isinstance(batch, torch.Tensor):
        return batch, {}
    if isinstance(batch, (tuple, list)):
        if len(batch) == 2 and not isinstance(batch[1], torch.Tensor):
            return batch[0], {"texts": list(batch[1])}
        if len(batch) == 3:
            return batch[0], {"text_embeds": batch[1], "text_mask": batch[2]}
        if len(batch) == 4:
            return batch[0], {"text_embeds": batch[2], "text_mask": batch[3]}
    raise TypeError("batch: expected pixels, (pixels, captions), (pixels, embeds, mask) or "
                    f"(pixels, captions, embeds, mask) from the data loader, got {type(batch).__name__}")


class MakeAVideoTrainer(BaseTrainer):
    """Trains `model` on videos and/or images.

    Args:
        model: a `MakeAVideo` (or `FrameInterpolator`, which needs videos).
        video_folder, image_folder: folders of videos (gif, mp4, ... or sub-folders of frames) and images, searched
            recursively; with a text model each item needs a caption sidecar `name.txt`. Videos are cut or padded
            (`frame_mode`) to the model's `num_frames`; frames are resized to its `image_size`.
        video_dataset, image_dataset: ready datasets instead of folders (items: pixels, `(pixels, caption)`,
            `(pixels, embeds, mask)` or `(pixels, caption, embeds, mask)`).
        batch_size, image_batch_size: batch sizes (images default to `batch_size`).
        lr, warmup_steps, num_train_steps, grad_accum_every, max_grad_norm: optimisation (AdamW).
        ema_decay, ema_update_every, ema_update_after_step: the weights' moving average used for samples and the
            saved model.
        image_loss_weight: weight of the image loss when co-training.
        save_every, sample_every: every so many steps write a numbered checkpoint / `sample-{step}.gif`.
        sample_texts: prompts for the samples (default: captions of the first videos).
        num_samples: videos per sample grid.
        results_folder: checkpoints, samples and the final `model/` folder (`save_pretrained`).
        max_batch_size: split batches into chunks of this size (same gradients, less memory).
        Other keyword arguments go to `BaseTrainer` (mixed_precision, cpu, seed, log_with, keep_last_checkpoints).
    """

    def __init__(
        self,
        model: MakeAVideo,
        *,
        video_folder: str | Path | None = None,
        image_folder: str | Path | None = None,
        video_dataset: Dataset | None = None,
        image_dataset: Dataset | None = None,
        batch_size: int = 4,
        image_batch_size: int | None = None,
        lr: float = 1e-4,
        warmup_steps: int = 0,
        num_train_steps: int = 100_000,
        grad_accum_every: int = 1,
        max_grad_norm: float | None = 1.0,
        ema_decay: float = 0.995,
        ema_update_every: int = 10,
        ema_update_after_step: int = 100,
        image_loss_weight: float = 1.0,
        save_every: int = 1000,
        sample_every: int = 1000,
        sample_texts: Sequence[str] | None = None,
        num_samples: int = 4,
        results_folder: str | Path = "./results",
        frame_mode: str = "pad",
        video_exts: Sequence[str] = VIDEO_EXTS,
        num_workers: int = 0,
        max_batch_size: int | None = None,
        **base_kwargs,
    ):
        if not isinstance(model, MakeAVideo):
            raise TypeError(f"model: expected a MakeAVideo or FrameInterpolator, got {type(model).__name__}")
        for name, value in (("batch_size", batch_size), ("num_train_steps", num_train_steps),
                            ("save_every", save_every), ("sample_every", sample_every),
                            ("num_samples", num_samples), ("grad_accum_every", grad_accum_every)):
            check_positive_int(name, value)
        check_positive_int("num_workers", num_workers, allow_zero=True)
        check_choice("frame_mode", frame_mode, ("crop", "pad"))
        check_in_range("image_loss_weight", image_loss_weight, 0.0, None)
        if exists(video_folder) and exists(video_dataset):
            raise ValueError("video_folder: pass either video_folder or video_dataset, not both")
        if exists(image_folder) and exists(image_dataset):
            raise ValueError("image_folder: pass either image_folder or image_dataset, not both")
        has_images = exists(image_folder) or exists(image_dataset)
        has_videos = exists(video_folder) or exists(video_dataset)
        if not (has_images or has_videos):
            raise ValueError("video_folder: give training data: video_folder / video_dataset and/or image_folder / "
                             "image_dataset")
        if has_images and isinstance(model, FrameInterpolator):
            raise ValueError("image_folder: a FrameInterpolator learns from videos only (it fills in frames)")

        super().__init__(gradient_accumulate_every=grad_accum_every, results_folder=results_folder, **base_kwargs)
        self.num_train_steps = num_train_steps
        self.save_every = save_every
        self.sample_every = sample_every
        self.num_samples = num_samples
        self.image_loss_weight = image_loss_weight
        self.max_batch_size = max_batch_size
        self.with_captions = model.conditions_on_text

        self.video_dataset = video_dataset
        if exists(video_folder):
            self.video_dataset = VideoFolderDataset(video_folder, model.image_size, model.num_frames,
                                                    frame_mode=frame_mode, with_captions=self.with_captions,
                                                    exts=tuple(video_exts), channels=model.channels)
        self.image_dataset = image_dataset
        if exists(image_folder):
            self.image_dataset = ImageFolderDataset(image_folder, model.image_size, with_captions=self.with_captions,
                                                    channels=model.channels)
        for name, dataset in (("video_folder", self.video_dataset), ("image_folder", self.image_dataset)):
            if exists(dataset) and len(dataset) == 0:
                captions = " with a caption sidecar (name.txt)" if self.with_captions else ""
                raise ValueError(f"{name}: no usable items{captions} found")

        self.video_dl = self._loader("videos", self.video_dataset, batch_size, num_workers)
        self.image_dl = self._loader("images", self.image_dataset, default(image_batch_size, batch_size), num_workers)

        if model.unet.text_embed_dim is None and sample_texts:
            raise ValueError("sample_texts: the model is unconditional (its unet has no text_embed_dim)")
        self.sample_texts = list(sample_texts) if sample_texts else None
        if not has_videos and not any(p.requires_grad for p in model.unet.spatial_parameters()):
            logger.warning("training on images only with frozen spatial layers: images skip the temporal layers, "
                           "so nothing will learn")

        # images skip the temporal layers and text conditioning is dropped now and then: some parameters then get
        # no gradient, which DDP must be told about
        self.add_model(MODEL_NAME, model, lr=lr, warmup_steps=warmup_steps, total_steps=num_train_steps,
                       max_grad_norm=max_grad_norm, ema_decay=ema_decay, ema_update_every=ema_update_every,
                       ema_kwargs={"update_after_step": ema_update_after_step},
                       find_unused_parameters=has_images or self.with_captions)
        self.config.update(batch_size=batch_size, lr=lr, num_train_steps=num_train_steps,
                           grad_accum_every=grad_accum_every, ema_decay=ema_decay, has_images=has_images,
                           has_videos=has_videos, with_captions=self.with_captions)

    def _loader(self, name: str, dataset: Dataset | None, batch_size: int, num_workers: int) -> DataStream | None:
        if dataset is None:
            return None
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=len(dataset) >= batch_size,
                            num_workers=num_workers, pin_memory=torch.cuda.is_available())
        # endless batches whose position checkpoints record: a resume goes on mid-epoch with the same batches
        return self.add_dataloader(name, loader)

    @property
    def model(self) -> MakeAVideo:
        """The plain model being trained (without distributed wrappers)."""
        return self.unwrap(MODEL_NAME)

    @property
    def ema_model(self) -> MakeAVideo:
        """The moving average of the weights (the model itself without EMA)."""
        ema = self.ema(MODEL_NAME)
        return ema.ema_model if exists(ema) else self.model

    @property
    def step_count(self) -> int:
        return self.steps[MODEL_NAME]

    # -- training -------------------------------------------------------------------------------------------

    def _accumulate(self, batch: Any, weight: float = 1.0) -> float:
        pixels, text_kwargs = _unpack_batch(batch)
        if not self.with_captions:
            text_kwargs = {}
        model = self.models[MODEL_NAME]
        total = 0.0
        for fraction, (chunk,), kwargs in split_batch(self.max_batch_size, pixels, **text_kwargs):
            with self.autocast():
                loss = model(chunk, **kwargs)
            self.backward(loss * weight, MODEL_NAME, fraction=fraction)
            total += loss.item() * fraction * weight
        return total

    def train_step(self) -> float:
        """One optimizer step over `grad_accum_every` batches (of videos, images or both); returns the loss."""
        total = 0.0
        for _ in range(self.gradient_accumulate_every):
            with self.accumulate(MODEL_NAME):
                if exists(self.video_dl):
                    total += self._accumulate(next(self.video_dl))
                if exists(self.image_dl):
                    # images (b, c, h, w) train the spatial layers only
                    total += self._accumulate(next(self.image_dl), weight=self.image_loss_weight)
        self.step(MODEL_NAME)
        return total / self.gradient_accumulate_every

    def train(self) -> Path | None:
        """Train until `num_train_steps` (continuing from a loaded checkpoint), sampling and saving periodically.
        Writes the final EMA model to `results_folder/model` and returns that folder."""
        with self.progress(self.num_train_steps, initial=self.step_count, desc="training") as bar:
            while self.step_count < self.num_train_steps:
                loss = self.train_step()
                bar.set_postfix(loss=f"{loss:.4f}")
                bar.update(1)
                if self.run_every(self.sample_every, self.step_count):
                    self.sample_and_write(self.step_count)
                if self.run_every(self.save_every, self.step_count):
                    self.save()
        logger.info("training complete after %d steps", self.step_count)
        return self.save_model()

    # -- samples, checkpoints and the final model ----------------------------------------------------------------

    def _first_texts(self, count: int) -> list[str] | None:
        if not self.with_captions:
            return None
        if self.sample_texts:
            return [self.sample_texts[i % len(self.sample_texts)] for i in range(count)]
        dataset = default(self.video_dataset, self.image_dataset)
        captions = []
        for index in range(min(count, len(dataset))):
            item = _as_batch_item(dataset[index])
            if len(item) in (2, 4) and isinstance(item[1], str):
                captions.append(item[1])
        if not captions:
            return None
        return [captions[i % len(captions)] for i in range(count)]

    @torch.no_grad()
    def sample(self, count: int | None = None) -> torch.Tensor:
        """`count` (default `num_samples`) videos in [0, 1] from the EMA weights; an interpolator fills in the
        in-between frames of the first training videos' keyframes instead."""
        count = default(count, self.num_samples)
        model = self.ema_model
        texts = self._first_texts(count)
        if isinstance(model, FrameInterpolator):
            videos = torch.stack([_as_batch_item(self.video_dataset[i % len(self.video_dataset)])[0]
                                  for i in range(count)])
            factor = model.factors[0]
            return model.interpolate(videos[:, :, ::factor].to(model.device), factor=factor, texts=texts,
                                     progress=False)
        return model.sample(texts=texts, batch_size=count, cond_scale=3.0 if texts else 1.0, progress=False)

    def sample_and_write(self, step: int) -> Path | None:
        """Write `sample-{step}.gif` (a grid of samples) to the results folder; returns its path (main process)."""
        if not self.is_main:
            return None
        videos = self.sample()
        path = self.results_folder / f"sample-{step}.gif"
        save_video(videos.float().cpu(), path, nrow=max(int(math.sqrt(videos.shape[0])), 1))
        logger.info("wrote %s", path)
        return path

    def save_model(self, folder: str | Path | None = None, ema: bool = True) -> Path | None:
        """`save_pretrained` of the EMA (or raw) model to `folder` (default `results_folder/model`), written by the
        main process. No collective operation: call it from every process or from the main one only."""
        folder = Path(default(folder, lambda: self.results_folder / "model"))
        if self.is_main:
            (self.ema_model if ema else self.model).save_pretrained(folder)
            logger.info("saved model to %s", folder)
        return folder


def _as_batch_item(item: Any) -> tuple:
    """One dataset item as a tuple `(pixels, ...)`."""
    return item if isinstance(item, (tuple, list)) else (item,)
