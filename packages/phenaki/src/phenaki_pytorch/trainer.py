"""Trainers: `CViViTTrainer` (the video tokenizer, VQGAN style) and `PhenakiTrainer` (MaskGIT on its tokens).

Both run on `synthesis_core.training.BaseTrainer`: CPU or GPUs through accelerate (several processes with
`torchrun --nproc_per_node N`), mixed precision, EMA, NaN guard, atomic safetensors checkpoints in `results_folder`
(resume with `resume='latest'`, exactly, also mid-epoch), samples written as gifs, never an interactive prompt.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from einops import rearrange
from torch import Tensor, nn
from torch.utils.data import Dataset

from phenaki_pytorch.cvivit import CViViT
from phenaki_pytorch.phenaki import Phenaki
from synthesis_core.checks import check_in_range, check_positive_int
from synthesis_core.data import VideoFolderDataset
from synthesis_core.training import AutoencoderGANTrainer, BaseTrainer, make_dataloader
from synthesis_core.utils import default, exists
from synthesis_core.video import save_video

logger = logging.getLogger(__name__)

__all__ = ["CViViTTrainer", "PhenakiTrainer", "collate_videos_and_text"]


# data


def _as_video(x: Tensor) -> Tensor:
    """An image `(c, h, w)` is a 1-frame video `(c, 1, h, w)`."""
    return rearrange(x, "c h w -> c 1 h w") if x.ndim == 3 else x


def collate_videos_and_text(items: Sequence[Any]) -> dict[str, Any]:
    """Collates dataset items into a dict: `videos` (float `(b, c, t, h, w)`) or `video_codebook_ids` (integer
    tokens, pre-tokenised), and optionally `texts` (list of captions) or `text_embeds` + `text_mask`.

    An item is a tensor, or a tuple `(video_or_ids, caption)` or `(video_or_ids, text_embeds, text_mask)`.
    """
    first = items[0]
    parts = list(first) if isinstance(first, (tuple, list)) else [first]
    rows = [list(item) if isinstance(item, (tuple, list)) else [item] for item in items]
    batch: dict[str, Any] = {}
    primary = [row[0] for row in rows]
    if not isinstance(parts[0], Tensor):
        raise TypeError(f"dataset: expected each item to start with a video tensor, got {type(parts[0]).__name__}")
    if parts[0].dtype.is_floating_point:
        batch["videos"] = torch.stack([_as_video(v) for v in primary])
    else:
        batch["video_codebook_ids"] = torch.stack(primary).long()
    if len(parts) >= 2:
        if isinstance(parts[1], str):
            batch["texts"] = [row[1] for row in rows]
        elif isinstance(parts[1], Tensor):
            batch["text_embeds"] = torch.stack([torch.as_tensor(row[1]) for row in rows]).float()
            if len(parts) >= 3:
                batch["text_mask"] = torch.stack([torch.as_tensor(row[2]) for row in rows]).bool()
        else:
            raise TypeError(f"dataset: the second element of an item must be a caption or text embeddings, "
                            f"got {type(parts[1]).__name__}")
    return batch


def _batch_to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device) if isinstance(v, Tensor) else v for k, v in batch.items()}


# the tokenizer


class CViViTTrainer(AutoencoderGANTrainer):
    """Trains a `CViViT`: generator step (reconstruction + quantizer + perceptual + adaptive GAN loss) then, with
    `use_vgg_and_gan`, a discriminator step, with the gradient penalty every `apply_grad_penalty_every` steps (the
    loop is the core's `AutoencoderGANTrainer`).

    ```
    trainer = CViViTTrainer(cvivit, folder='videos/', num_frames=17, image_size=128, batch_size=4,
                            num_train_steps=100_000, results_folder='results/cvivit')
    trainer.train()   # checkpoints, reconstruction gifs and results_folder/cvivit (save_pretrained of the EMA)
    ```
    `dataset` may be given instead of `folder`: items are videos `(c, t, h, w)` in [0, 1] (or images, or tuples
    whose first element is the video).
    """

    progress_desc = "cvivit"
    progress_postfix = {"loss": "loss", "recon": "recon"}

    def __init__(
        self,
        cvivit: CViViT,
        *,
        dataset: Dataset | None = None,
        folder: str | Path | None = None,
        num_frames: int = 17,
        image_size: int | None = None,
        batch_size: int = 4,
        num_train_steps: int = 100_000,
        lr: float = 3e-4,
        discr_lr: float | None = None,
        warmup_steps: int = 0,
        grad_accum_every: int = 1,
        max_grad_norm: float | None = None,
        discr_max_grad_norm: float | None = None,
        apply_grad_penalty_every: int = 4,
        use_ema: bool = True,
        ema_decay: float = 0.995,
        ema_update_every: int = 10,
        save_results_every: int | None = 100,
        save_model_every: int | None = 1000,
        num_sample_videos: int = 4,
        results_folder: str | Path = "./results/cvivit",
        num_workers: int = 0,
        resume: str | Path | None = None,
        **trainer_kwargs: Any,
    ):
        super().__init__(num_train_steps=num_train_steps, apply_grad_penalty_every=apply_grad_penalty_every,
                         save_results_every=save_results_every, save_model_every=save_model_every,
                         results_folder=results_folder, gradient_accumulate_every=grad_accum_every, **trainer_kwargs)
        if not isinstance(cvivit, CViViT):
            raise TypeError(f"cvivit: expected a CViViT, got {type(cvivit).__name__}")
        check_positive_int("batch_size", batch_size)
        if exists(dataset) == exists(folder):
            raise ValueError("dataset: pass exactly one of dataset= or folder=")
        if exists(folder):
            image_size = default(image_size, cvivit.image_size[0] if exists(cvivit.image_size) else None)
            if not exists(image_size):
                raise ValueError("image_size: needed to read a folder (the CViViT was built without image_size)")
            dataset = VideoFolderDataset(folder, image_size=image_size, num_frames=num_frames,
                                         channels=cvivit.channels)
        self.dataset = dataset
        self.batch_size = batch_size
        self.num_sample_videos = num_sample_videos

        self.add_autoencoder("cvivit", cvivit, use_gan=cvivit.use_vgg_and_gan, lr=lr, discr_lr=discr_lr,
                             max_grad_norm=max_grad_norm, discr_max_grad_norm=discr_max_grad_norm,
                             warmup_steps=warmup_steps, ema=use_ema, ema_decay=ema_decay,
                             ema_update_every=ema_update_every)
        loader = make_dataloader(dataset, batch_size, num_workers=num_workers, collate_fn=collate_videos_and_text)
        self.dataloader = self.add_dataloader("train", loader)  # its position is checkpointed
        self.config.update(batch_size=batch_size)
        if exists(resume):
            self.load(resume)

    def next_batch(self) -> Tensor:
        return next(self.dataloader)["videos"].to(self.device)

    def autoencoder_loss(self, model: nn.Module, videos: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        loss, breakdown = model(videos, return_loss_breakdown=True)
        return loss, breakdown._asdict()

    @torch.no_grad()
    def save_results(self) -> Path | None:
        """Writes `samples/recon-{step}.gif`: real videos on the left half, reconstructions on the right."""
        if not self.is_main:
            return None
        model = self.model_for_sampling()
        was_training = model.training
        model.eval()
        # the same first videos of the dataset every time (read directly: the training loader is not consumed,
        # which would desynchronise the processes under DDP)
        count = min(self.num_sample_videos, len(self.dataset))
        videos = collate_videos_and_text([self.dataset[i] for i in range(count)])["videos"].to(self.device)
        recons = model(videos, return_recons_only=True)
        model.train(was_training)
        side_by_side = torch.cat((videos, recons.to(videos.dtype)), dim=-1).clamp(0, 1).cpu()
        path = self.results_folder / "samples" / f"recon-{self.step_count:08d}.gif"
        path.parent.mkdir(parents=True, exist_ok=True)
        save_video(side_by_side, path)
        return path


# phenaki


class PhenakiTrainer(BaseTrainer):
    """Trains Phenaki's MaskGIT (and a self-critic or TokenCritic trained jointly, if any) on a frozen C-ViViT.

    ```
    trainer = PhenakiTrainer(phenaki, folder='videos/', num_frames=17, batch_size=4, num_train_steps=100_000,
                             sample_texts=['a red circle moving left'], results_folder='results/phenaki')
    trainer.train()
    ```
    Data: `folder` (videos with sidecar `name.txt` captions; `text_embeddings=` a `PrecomputedTextEmbeddings`
    folder to skip the text encoder) or a `dataset` whose items are `(video, caption)`, `(video, text_embeds,
    text_mask)`, or the same with integer codebook ids `(t, h, w)` instead of the video (pre-tokenised: the
    tokenizer is then not run during training).
    """

    def __init__(
        self,
        phenaki: Phenaki,
        *,
        dataset: Dataset | None = None,
        folder: str | Path | None = None,
        num_frames: int = 17,
        image_size: int | None = None,
        text_embeddings: Any = None,
        batch_size: int = 4,
        num_train_steps: int = 100_000,
        lr: float = 3e-4,
        weight_decay: float = 0.0,
        warmup_steps: int = 0,
        grad_accum_every: int = 1,
        max_grad_norm: float | None = 1.0,
        use_ema: bool = True,
        ema_decay: float = 0.995,
        ema_update_every: int = 10,
        save_results_every: int | None = 500,
        save_model_every: int | None = 1000,
        sample_texts: Sequence[str] | None = None,
        sample_num_frames: int | None = None,
        sample_cond_scale: float = 3.0,
        sample_steps: int | None = None,
        results_folder: str | Path = "./results/phenaki",
        num_workers: int = 0,
        resume: str | Path | None = None,
        **trainer_kwargs: Any,
    ):
        super().__init__(results_folder=results_folder, gradient_accumulate_every=grad_accum_every,
                         **trainer_kwargs)
        if not isinstance(phenaki, Phenaki):
            raise TypeError(f"phenaki: expected a Phenaki, got {type(phenaki).__name__}")
        check_positive_int("batch_size", batch_size)
        check_positive_int("num_train_steps", num_train_steps)
        check_in_range("sample_cond_scale", sample_cond_scale, 0.0, None)
        if exists(dataset) == exists(folder):
            raise ValueError("dataset: pass exactly one of dataset= or folder=")
        if exists(folder):
            cvivit = phenaki.cvivit
            image_size = default(image_size, cvivit.image_size[0] if exists(cvivit.image_size) else None)
            if not exists(image_size):
                raise ValueError("image_size: needed to read a folder (the CViViT was built without image_size)")
            with_captions = not phenaki.maskgit.unconditional and not exists(text_embeddings)
            dataset = VideoFolderDataset(folder, image_size=image_size, num_frames=num_frames,
                                         with_captions=with_captions, text_embeddings=text_embeddings,
                                         channels=cvivit.channels)
        self.dataset = dataset
        self.batch_size = batch_size
        self.num_train_steps = num_train_steps
        self.save_results_every = save_results_every
        self.save_model_every = save_model_every
        self.sample_texts = list(sample_texts) if exists(sample_texts) else None
        self.sample_num_frames = default(sample_num_frames, num_frames)
        self.sample_cond_scale = sample_cond_scale
        self.sample_steps = sample_steps

        # the tokenizer is frozen inside Phenaki: only MaskGIT (and the critic) are optimised
        self.add_model("phenaki", phenaki, lr=lr, weight_decay=weight_decay, warmup_steps=warmup_steps,
                       total_steps=num_train_steps, max_grad_norm=max_grad_norm, ema=use_ema, ema_decay=ema_decay,
                       ema_update_every=ema_update_every)
        loader = make_dataloader(dataset, batch_size, num_workers=num_workers, collate_fn=collate_videos_and_text)
        self.dataloader = self.add_dataloader("train", loader)  # its position is checkpointed
        self.config.update(dict(batch_size=batch_size, num_train_steps=num_train_steps, lr=lr))
        if exists(resume):
            self.load(resume)

    @property
    def step_count(self) -> int:
        return self.steps["phenaki"]

    def train_step(self) -> dict[str, float]:
        phenaki = self.models["phenaki"]
        phenaki.train()
        logs: dict[str, float] = {}
        for _ in range(self.gradient_accumulate_every):
            with self.accumulate("phenaki"):
                batch = _batch_to_device(next(self.dataloader), self.device)
                with self.autocast():
                    loss, breakdown = phenaki(**batch, return_loss_breakdown=True)
                self.backward(loss, "phenaki")
            logs["loss"] = logs.get("loss", 0.0) + loss.item() / self.gradient_accumulate_every
            for key, value in breakdown._asdict().items():
                logs[key] = logs.get(key, 0.0) + value.item() / self.gradient_accumulate_every
        self.step("phenaki")
        return logs

    def model_for_sampling(self) -> Phenaki:
        return self.averaged_model("phenaki")

    @torch.no_grad()
    def save_results(self) -> Path | None:
        """Writes `samples/sample-{step}.gif` (one video per sample text; unconditional models: 4 videos)."""
        if not self.is_main:
            return None
        model = self.model_for_sampling()
        kwargs = dict(num_frames=self.sample_num_frames, cond_scale=self.sample_cond_scale, steps=self.sample_steps)
        if model.maskgit.unconditional:
            videos = model.sample(batch_size=4, **kwargs)
        elif self.sample_texts:
            videos = model.sample(texts=self.sample_texts, **kwargs)
        else:
            return None
        path = self.results_folder / "samples" / f"sample-{self.step_count:08d}.gif"
        path.parent.mkdir(parents=True, exist_ok=True)
        save_video(videos.float().cpu(), path)
        return path

    def save_model(self) -> Path | None:
        """Checkpoint (resumable) plus `results_folder/phenaki` (save_pretrained of the EMA model)."""
        return self.save_and_export("phenaki")

    def train(self, log_fn: Callable[[dict[str, float]], None] | None = None) -> None:
        self.fit(self.num_train_steps, self.train_step, step_count=lambda: self.step_count,
                 every=[(self.save_results_every, self.save_results), (self.save_model_every, self.save_model)],
                 at_end=self.save_model, desc="phenaki", log_fn=log_fn)
