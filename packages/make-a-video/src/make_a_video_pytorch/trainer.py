"""Training a `MakeAVideo` (or a `FrameInterpolator`) on image folders and video folders, with captions.

`MakeAVideoTrainer` is the core's `VideoTrainer` (accelerate: CPU, one or many GPUs; EMA; NaN guard; safetensors
checkpoints that resume exactly; the core folder datasets with `name.txt` caption sidecars) set up for this model:
the same `train_step()`, `fit()`, `resume=`, `save()` / `load()` and `save_pretrained()` as every trainer of the
project. The data decide the phase of the paper's recipe:

- images only: spatial pretraining (images skip every temporal layer);
- videos only: video training (with `MakeAVideo.from_image_model(...)` and `freeze_spatial=True`, the temporal
  layers only);
- both: image-video co-training, one batch of each per step.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence, Sized
from pathlib import Path
from typing import Any, cast

import torch
from torch.utils.data import Dataset

from make_a_video_pytorch.make_a_video import FrameInterpolator, MakeAVideo
from synthesis_core.training import VIDEO_EXTS, VideoTrainer
from synthesis_core.utils import default

__all__ = ["MakeAVideoTrainer", "MODEL_NAME"]

logger = logging.getLogger(__name__)

MODEL_NAME = "model"


class MakeAVideoTrainer(VideoTrainer):
    """Trains `model` on videos and/or images.

    Args:
        model: a `MakeAVideo` (or `FrameInterpolator`, which needs videos).
        video_folder, image_folder: folders of videos (gif, mp4, ... or sub-folders of frames) and images, searched
            recursively; with a text model each item needs a caption sidecar `name.txt`. Videos are cut or padded
            (`frame_mode`) to the model's `num_frames`; frames are resized to its `image_size`.
        video_dataset, image_dataset: ready datasets instead of folders (items: pixels, `(pixels, caption)`,
            `(pixels, embeds, mask)` or `(pixels, caption, embeds, mask)`).
        batch_size, image_batch_size: batch sizes (images default to `batch_size`).
        lr, warmup_steps, num_train_steps, grad_accum_every, max_grad_norm: optimisation (AdamW, cosine decay).
        ema_decay, ema_update_every, ema_update_after_step: the weights' moving average used for samples and the
            saved model.
        image_loss_weight: weight of the image loss when co-training.
        save_every, sample_every: every so many steps write a numbered checkpoint / `sample-{step}.gif`.
        sample_texts: prompts for the samples (default: captions of the first videos).
        num_samples: videos per sample grid.
        results_folder: checkpoints, samples and the final `model/` folder (`save_pretrained`).
        max_batch_size: split batches into chunks of this size (same gradients, less memory).
        resume: a checkpoint to continue from (`'latest'`: the newest in `results_folder`, if any).
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
        save_every: int | None = 1000,
        sample_every: int | None = 1000,
        sample_texts: Sequence[str] | None = None,
        sample_cond_scale: float = 3.0,
        num_samples: int = 4,
        results_folder: str | Path = "./results",
        frame_mode: str = "pad",
        video_exts: Sequence[str] = VIDEO_EXTS,
        num_workers: int = 0,
        max_batch_size: int | None = None,
        resume: str | Path | None = None,
        **base_kwargs: Any,
    ):
        if not isinstance(model, MakeAVideo):
            raise TypeError(f"model: expected a MakeAVideo or FrameInterpolator, got {type(model).__name__}")
        has_images = image_folder is not None or image_dataset is not None
        has_videos = video_folder is not None or video_dataset is not None
        if has_images and isinstance(model, FrameInterpolator):
            raise ValueError("image_folder: a FrameInterpolator learns from videos only (it fills in frames)")
        if model.unet.text_embed_dim is None and sample_texts:
            raise ValueError("sample_texts: the model is unconditional (its unet has no text_embed_dim)")
        if has_images and not has_videos and not any(p.requires_grad for p in model.unet.spatial_parameters()):
            logger.warning(
                "training on images only with frozen spatial layers: images skip the temporal layers, "
                "so nothing will learn"
            )
        super().__init__(
            model,
            model_name=MODEL_NAME,
            video_folder=video_folder,
            image_folder=image_folder,
            video_dataset=video_dataset,
            image_dataset=image_dataset,
            with_captions=model.conditions_on_text,
            frame_mode=frame_mode,
            video_exts=video_exts,
            batch_size=batch_size,
            image_batch_size=image_batch_size,
            num_workers=num_workers,
            num_train_steps=num_train_steps,
            lr=lr,
            warmup_steps=warmup_steps,
            max_grad_norm=max_grad_norm,
            grad_accum_every=grad_accum_every,
            ema_decay=ema_decay,
            ema_update_every=ema_update_every,
            ema_update_after_step=ema_update_after_step,
            image_loss_weight=image_loss_weight,
            max_batch_size=max_batch_size,
            sample_every=sample_every,
            save_every=save_every,
            num_samples=num_samples,
            sample_texts=sample_texts,
            sample_cond_scale=sample_cond_scale,
            results_folder=results_folder,
            resume=resume,
            **base_kwargs,
        )

    @torch.no_grad()
    def sample(self, count: int | None = None) -> torch.Tensor:
        """`count` (default `num_samples`) videos in [0, 1] from the EMA weights; an interpolator fills in the
        in-between frames of the first training videos' keyframes instead."""
        model = self.ema_model
        if not isinstance(model, FrameInterpolator):
            return super().sample(count)
        count = default(count, self.num_samples)
        dataset = self.video_dataset
        if dataset is None:  # not reached: __init__ refuses a FrameInterpolator without videos
            raise ValueError("video_dataset: a FrameInterpolator samples from the keyframes of training videos")
        videos = []
        for index in range(count):
            item = dataset[index % len(cast(Sized, dataset))]
            videos.append(item[0] if isinstance(item, tuple | list) else item)
        factor = cast(Sequence[int], model.factors)[0]  # a tuple once built
        keyframes = torch.stack(videos)[:, :, ::factor].to(model.device)
        return model.interpolate(keyframes, factor=factor, texts=self.sample_captions(count), progress=False)

    def save_model(self, folder: str | Path | None = None, ema: bool = True) -> Path | None:
        """`save_pretrained` of the EMA (or raw) model to `folder` (default `results_folder/model`); the name this
        trainer had before `save_pretrained`."""
        return self.save_pretrained(folder, ema=ema)
