"""Trainers: `CViViTTrainer` (the video tokenizer, VQGAN style) and `PhenakiTrainer` (MaskGIT on its tokens).

Both run on `synthesis_core.training.BaseTrainer`: CPU or GPUs through accelerate (several processes with
`torchrun --nproc_per_node N`), mixed precision, EMA, NaN guard, atomic safetensors checkpoints in `results_folder`
(resume with `resume='latest'`, exactly, also mid-epoch), samples written as gifs, never an interactive prompt.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import torch
from einops import rearrange
from torch import Tensor, nn
from torch.utils.data import Dataset

from phenaki_pytorch.cvivit import CViViT
from phenaki_pytorch.phenaki import Phenaki
from synthesis_core.checks import check_choice, check_in_range, check_positive_int
from synthesis_core.folders import ImageFolderDataset, VideoFolderDataset
from synthesis_core.protocol import resolve_alias
from synthesis_core.training import AutoencoderGANTrainer, BaseTrainer, make_dataloader
from synthesis_core.utils import default, exists
from synthesis_core.video import save_video

logger = logging.getLogger(__name__)

__all__ = ["CViViTTrainer", "PhenakiTrainer", "collate_dataset_fields", "collate_videos_and_text"]

# what each element of a dataset item may be (phenaki-pytorch 0.5's `dataset_fields`): Phenaki.forward keywords
DATASET_FIELDS = ("videos", "texts", "video_codebook_ids", "video_frame_mask", "text_embeds", "text_mask")
_IMAGE_MODE_CHANNELS = {"RGB": 3, "L": 1}


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
            raise TypeError(
                f"dataset: the second element of an item must be a caption or text embeddings, "
                f"got {type(parts[1]).__name__}"
            )
    return batch


def collate_dataset_fields(items: Sequence[Any], fields: Sequence[str]) -> tuple[Any, ...]:
    """Collates dataset items that are tuples laid out as `fields` (names of `DATASET_FIELDS`) into a tuple of
    batched fields, in that order: captions as a list, tensors stacked (images `(c, h, w)` become one-frame
    videos, codebook ids long, masks bool). `PhenakiTrainer.data_tuple_to_kwargs` names them."""
    rows = [tuple(item) if isinstance(item, (tuple, list)) else (item,) for item in items]
    for row in rows:
        if len(row) != len(fields):
            raise ValueError(
                f"dataset_fields: {tuple(fields)} names {len(fields)} elements per item, but an item has {len(row)}"
            )
    columns: list[Any] = []
    for position, field in enumerate(fields):
        values = [row[position] for row in rows]
        if field == "texts":
            if not all(isinstance(value, str) for value in values):
                raise TypeError("dataset_fields: the 'texts' element of every item must be a caption string")
            columns.append(values)
            continue
        if not all(isinstance(value, Tensor) for value in values):
            raise TypeError(f"dataset_fields: the {field!r} element of every item must be a tensor")
        if field == "videos":
            columns.append(torch.stack([_as_video(value) for value in values]).float())
        elif field == "video_codebook_ids":
            columns.append(torch.stack(values).long())
        elif field in ("video_frame_mask", "text_mask"):
            columns.append(torch.stack(values).bool())
        else:  # text_embeds
            columns.append(torch.stack(values).float())
    return tuple(columns)


def infer_dataset_fields(data: Sequence[Any]) -> tuple[str, ...]:
    """The field names of a batch tuple, read from what each element is: float videos `(b, c, t, h, w)` or images
    `(b, c, h, w)` -> videos, a list of captions -> texts, integers -> video_codebook_ids, float `(b, n, d)` ->
    text_embeds, a bool mask -> text_mask right after text_embeds, else video_frame_mask."""
    names: list[str] = []
    for value in data:
        if isinstance(value, (list, tuple)) and value and all(isinstance(v, str) for v in value):
            name = "texts"
        elif not isinstance(value, Tensor):
            raise TypeError(f"data: cannot tell which field a {type(value).__name__} is; pass dataset_fields=")
        elif value.dtype == torch.bool:
            name = "text_mask" if names and names[-1] == "text_embeds" else "video_frame_mask"
        elif not value.dtype.is_floating_point:
            name = "video_codebook_ids"
        elif value.ndim in (4, 5):
            name = "videos"
        elif value.ndim == 3:
            name = "text_embeds"
        else:
            raise TypeError(
                f"data: cannot tell which field a float tensor of shape {tuple(value.shape)} is; pass dataset_fields="
            )
        names.append(name)
    if len(set(names)) != len(names):
        raise ValueError(f"data: the fields read from the batch repeat ({names}); pass dataset_fields=")
    return tuple(names)


def _batch_to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device) if isinstance(v, Tensor) else v for k, v in batch.items()}


# the tokenizer


class CViViTTrainer(AutoencoderGANTrainer):
    """Trains a `CViViT`: generator step (reconstruction + quantizer + perceptual + adaptive GAN loss) then, with
    `use_vgg_and_gan`, a discriminator step, with the gradient penalty every `apply_grad_penalty_every` steps: a
    configuration of the core's `AutoencoderGANTrainer` (which holds the loop, the validation split, checkpoints
    and resuming).

    ```
    trainer = CViViTTrainer(cvivit, folder='videos/', num_frames=17, image_size=128, batch_size=4,
                            num_train_steps=100_000, results_folder='results/cvivit')
    trainer.train()   # checkpoints, reconstruction gifs and results_folder/cvivit (save_pretrained of the EMA)
    ```
    `dataset` may be given instead of `folder`: items are videos `(c, t, h, w)` in [0, 1] (or images, or tuples
    whose first element is the video). `train_on_images=True` reads a folder of images (one-frame videos: the
    tokenizer's first frame is tokenized alone). `valid_frac` of the data is held out for the reconstruction gifs.
    `vae` is the phenaki-pytorch 0.5 spelling of `cvivit`. Every other keyword is one of `AutoencoderGANTrainer`
    (the data, optimizer, EMA and checkpoint settings all tokenizer trainers share, with its defaults, the published
    `wd` and `ema_beta` included) or of `BaseTrainer` (e.g. `accelerate_kwargs`, for `accelerate.Accelerator`).
    """

    progress_desc = "cvivit"
    progress_postfix = {"loss": "loss", "recon": "recon"}

    def __init__(
        self,
        cvivit: CViViT | None = None,
        *,
        dataset: Dataset | None = None,
        folder: str | Path | None = None,
        train_on_images: bool = False,
        num_frames: int = 17,
        image_size: int | None = None,
        num_train_steps: int = 100_000,
        num_sample_videos: int = 4,
        results_folder: str | Path = "./results/cvivit",
        vae: CViViT | None = None,
        **trainer_kwargs: Any,
    ):
        super().__init__(num_train_steps=num_train_steps, results_folder=results_folder, **trainer_kwargs)
        cvivit = resolve_alias("cvivit", cvivit, "vae", vae)
        if not isinstance(cvivit, CViViT):
            raise TypeError(f"cvivit: expected a CViViT, got {type(cvivit).__name__}")
        if exists(dataset) == exists(folder):
            raise ValueError("dataset: pass exactly one of dataset= or folder=")
        if train_on_images and not exists(folder):
            raise ValueError("train_on_images: reads a folder of images; with dataset= give image items instead")
        if folder is not None:
            if image_size is None and cvivit.image_size is not None:
                image_size = cvivit.image_size[0]
            if image_size is None:
                raise ValueError("image_size: needed to read a folder (the CViViT was built without image_size)")
            if train_on_images:
                dataset = ImageFolderDataset(folder, image_size=image_size)
            else:
                dataset = VideoFolderDataset(
                    folder, image_size=image_size, num_frames=num_frames, channels=cvivit.channels
                )
        self.setup_autoencoder(
            "cvivit", cvivit, dataset, collate_fn=collate_videos_and_text, num_samples=num_sample_videos
        )

    @property
    def num_sample_videos(self) -> int:
        return self.num_samples

    def batch_input(self, batch: dict[str, Any]) -> Tensor:
        return batch["videos"]

    def autoencoder_loss(self, model: nn.Module, videos: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        loss, breakdown = model(videos, return_loss_breakdown=True)
        return loss, breakdown._asdict()

    def reconstruct(self, model: nn.Module, videos: Tensor) -> Tensor:
        return model(videos, return_recons_only=True)

    def write_reconstructions(self, videos: Tensor, recons: Tensor) -> Path:
        """`samples/recon-{step}.gif`: real videos on the left half, reconstructions on the right."""
        side_by_side = torch.cat((videos, recons.to(videos.dtype)), dim=-1).clamp(0, 1).cpu()
        path = self.results_path("samples", f"recon-{self.step_count:08d}.gif")
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
    `dataset_fields`: names of the elements of each dataset item, in order (of `DATASET_FIELDS`: `videos`,
    `texts`, `video_codebook_ids`, `text_embeds`, `text_mask`, and `video_frame_mask` where `Phenaki.forward` takes
    it), instead of reading them from their types; batches are named by `data_tuple_to_kwargs`.
    Sampling: `save_results` writes `num_samples` videos (default: one per sample text, or 4 for an unconditional
    model), the texts cycled from `sample_texts` (or `sample_texts_file_path`, one caption per line), drawn
    `batch_size` at a time.
    phenaki-pytorch 0.5 spellings: `train_lr` (= `lr`), `train_num_steps` (= `num_train_steps`), `wd` (=
    `weight_decay`), `save_and_sample_every` (sets `save_results_every` and `save_model_every`), `adam_betas`
    (AdamW's betas), `fp16=True` (= `mixed_precision='fp16'`), `amp=True` (= `mixed_precision='bf16'`),
    `split_batches` (`batch_size` is the batch of all processes together; default False: per process),
    `convert_image_to` ('RGB' or 'L': the frames read from `folder`, must match the C-ViViT's channels).
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
        train_lr: float | None = None,
        train_num_steps: int | None = None,
        wd: float | None = None,
        save_and_sample_every: int | None = None,
        train_on_images: bool = False,
        adam_betas: tuple[float, float] = (0.9, 0.99),
        num_samples: int | None = None,
        amp: bool = False,
        fp16: bool = False,
        split_batches: bool = False,
        convert_image_to: str | None = None,
        sample_texts_file_path: str | Path | None = None,
        dataset_fields: Sequence[str] | None = None,
        **trainer_kwargs: Any,
    ):
        mixed_precision = trainer_kwargs.pop("mixed_precision", None)
        wanted_precision = "fp16" if fp16 else ("bf16" if amp else None)
        if exists(wanted_precision) and mixed_precision not in (None, wanted_precision):
            raise ValueError(
                f"{'fp16' if fp16 else 'amp'}=True asks for mixed_precision={wanted_precision!r}, "
                f"which contradicts mixed_precision={mixed_precision!r}; pass only mixed_precision="
            )
        super().__init__(
            results_folder=results_folder,
            gradient_accumulate_every=grad_accum_every,
            mixed_precision=default(mixed_precision, default(wanted_precision, "no")),
            split_batches=split_batches,
            **trainer_kwargs,
        )
        # phenaki-pytorch 0.5 spellings
        lr = resolve_alias("lr", lr if lr != 3e-4 else None, "train_lr", train_lr, 3e-4)
        num_train_steps = resolve_alias(
            "num_train_steps",
            num_train_steps if num_train_steps != 100_000 else None,
            "train_num_steps",
            train_num_steps,
            100_000,
        )
        weight_decay = resolve_alias("weight_decay", weight_decay or None, "wd", wd, 0.0)
        if exists(save_and_sample_every):
            save_results_every = save_model_every = save_and_sample_every
        if train_on_images:
            raise ValueError(
                "train_on_images: PhenakiTrainer reads captioned videos; to train on images pass "
                "dataset= items (image (c, h, w), caption): an image is a one-frame video"
            )
        if not isinstance(phenaki, Phenaki):
            raise TypeError(f"phenaki: expected a Phenaki, got {type(phenaki).__name__}")
        check_positive_int("batch_size", batch_size)
        check_positive_int("num_train_steps", num_train_steps)
        check_in_range("sample_cond_scale", sample_cond_scale, 0.0, None)
        if exists(num_samples):
            check_positive_int("num_samples", num_samples)
        if not (
            isinstance(adam_betas, (tuple, list))
            and len(adam_betas) == 2
            and all(isinstance(b, (int, float)) and 0.0 <= b < 1.0 for b in adam_betas)
        ):
            raise ValueError(f"adam_betas: expected two numbers in [0, 1), got {adam_betas!r}")
        if sample_texts_file_path is not None:
            if exists(sample_texts):
                raise ValueError("sample_texts_file_path: pass either it or sample_texts, not both")
            sample_texts = self._read_sample_texts(sample_texts_file_path)
        if exists(dataset_fields):
            dataset_fields = self._check_dataset_fields(dataset_fields)
        if exists(dataset) == exists(folder):
            raise ValueError("dataset: pass exactly one of dataset= or folder=")
        channels = phenaki.cvivit.channels
        if exists(convert_image_to):
            check_choice("convert_image_to", convert_image_to, tuple(_IMAGE_MODE_CHANNELS))
            if not exists(folder):
                raise ValueError(
                    "convert_image_to: converts the frames read from folder=; with dataset= give "
                    "items with the C-ViViT's channels"
                )
            if _IMAGE_MODE_CHANNELS[convert_image_to] != channels:
                raise ValueError(
                    f"convert_image_to={convert_image_to!r} gives "
                    f"{_IMAGE_MODE_CHANNELS[convert_image_to]} channels, but the C-ViViT takes {channels}"
                )
        if folder is not None:
            if exists(dataset_fields):
                raise ValueError(
                    "dataset_fields: names the elements of dataset= items; a folder gives (video, caption) items"
                )
            cvivit = phenaki.cvivit
            if image_size is None and cvivit.image_size is not None:
                image_size = cvivit.image_size[0]
            if image_size is None:
                raise ValueError("image_size: needed to read a folder (the CViViT was built without image_size)")
            with_captions = not phenaki.maskgit.unconditional and not exists(text_embeddings)
            dataset = VideoFolderDataset(
                folder,
                image_size=image_size,
                num_frames=num_frames,
                with_captions=with_captions,
                text_embeddings=text_embeddings,
                channels=channels,
            )
        if dataset is None:  # (one of dataset= and folder= is given, checked above)
            raise ValueError("dataset: pass exactly one of dataset= or folder=")
        self.dataset = dataset
        self.dataset_fields = dataset_fields
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.num_train_steps = num_train_steps
        self.save_results_every = save_results_every
        self.save_model_every = save_model_every
        self.sample_texts = list(sample_texts) if exists(sample_texts) else None
        self.sample_num_frames = default(sample_num_frames, num_frames)
        self.sample_cond_scale = sample_cond_scale
        self.sample_steps = sample_steps

        # the tokenizer is frozen inside Phenaki: only MaskGIT (and the critic) are optimised
        self.add_model(
            "phenaki",
            phenaki,
            lr=lr,
            betas=(float(adam_betas[0]), float(adam_betas[1])),
            weight_decay=weight_decay,
            warmup_steps=warmup_steps,
            total_steps=num_train_steps,
            max_grad_norm=max_grad_norm,
            ema=use_ema,
            ema_decay=ema_decay,
            ema_update_every=ema_update_every,
        )
        collate = (
            functools.partial(collate_dataset_fields, fields=dataset_fields)
            if exists(dataset_fields)
            else collate_videos_and_text
        )
        loader = make_dataloader(dataset, batch_size, num_workers=num_workers, collate_fn=collate)
        self.dataloader = self.add_dataloader("train", loader)  # its position is checkpointed
        self.config.update(dict(batch_size=batch_size, num_train_steps=num_train_steps, lr=lr))
        if resume is not None:
            self.load(resume)

    @staticmethod
    def _read_sample_texts(path: str | Path) -> list[str]:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"sample_texts_file_path: no file at {path}")
        texts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        if not texts:
            raise ValueError(f"sample_texts_file_path: {path} holds no caption (one per line)")
        return texts

    @staticmethod
    def _supported_fields() -> tuple[str, ...]:
        forward_keywords = inspect.signature(Phenaki.forward).parameters
        return tuple(field for field in DATASET_FIELDS if field in forward_keywords)

    @classmethod
    def _check_dataset_fields(cls, fields: Sequence[str]) -> tuple[str, ...]:
        if isinstance(fields, str) or not all(isinstance(field, str) for field in fields):
            raise TypeError(f"dataset_fields: expected a sequence of field names, got {fields!r}")
        fields = tuple(fields)
        if len(set(fields)) != len(fields):
            raise ValueError(f"dataset_fields: names repeat in {fields}")
        supported = cls._supported_fields()
        for field in fields:
            if field not in supported:
                reason = "Phenaki.forward here takes no such input" if field in DATASET_FIELDS else "not a field name"
                raise ValueError(f"dataset_fields: {field!r} ({reason}); expected names of {supported}")
        if ("videos" in fields) == ("video_codebook_ids" in fields):
            raise ValueError(f"dataset_fields: expected exactly one of 'videos' or 'video_codebook_ids', got {fields}")
        return fields

    def data_tuple_to_kwargs(self, data: Sequence[Any] | Mapping[str, Any]) -> dict[str, Any]:
        """A collated batch tuple -> the keyword arguments of `Phenaki.forward`, named by `dataset_fields` (when
        not given, read from the first batch's types, `infer_dataset_fields`, and kept). A dict passes through."""
        if isinstance(data, Mapping):
            return dict(data)
        data = tuple(data)
        if self.dataset_fields is None:
            self.dataset_fields = self._check_dataset_fields(infer_dataset_fields(data))
        if len(data) != len(self.dataset_fields):
            raise ValueError(
                f"data: {len(data)} elements, but dataset_fields names {len(self.dataset_fields)} "
                f"({self.dataset_fields})"
            )
        return dict(zip(self.dataset_fields, data))

    progress_desc = "phenaki"

    @property
    def step_count(self) -> int:
        return self.step_counts["phenaki"]

    def train_step(self) -> dict[str, float]:
        phenaki = self.models["phenaki"]
        phenaki.train()
        logs: dict[str, float] = {}
        for _ in range(self.gradient_accumulate_every):
            with self.accumulate("phenaki"):
                batch = _batch_to_device(self.data_tuple_to_kwargs(next(self.dataloader)), self.device)
                with self.autocast():
                    loss, breakdown = phenaki(**batch, return_loss_breakdown=True)
                self.backward(loss, "phenaki")
            logs["loss"] = logs.get("loss", 0.0) + loss.item() / self.gradient_accumulate_every
            for key, value in breakdown._asdict().items():
                logs[key] = logs.get(key, 0.0) + value.item() / self.gradient_accumulate_every
        self.step("phenaki")
        return logs

    def model_for_sampling(self) -> Phenaki:
        return cast(Phenaki, self.averaged_model("phenaki"))  # the EMA copy of the Phenaki registered

    @torch.no_grad()
    def save_results(self) -> Path | None:
        """Writes `samples/sample-{step}.gif`: `num_samples` videos (default: one per sample text; unconditional
        models: 4), the texts cycled from `sample_texts`, sampled `batch_size` at a time."""
        if not self.is_main:
            return None
        model = self.model_for_sampling()
        kwargs = dict(num_frames=self.sample_num_frames, cond_scale=self.sample_cond_scale, steps=self.sample_steps)
        texts: list[str] | None = None
        if model.maskgit.unconditional:
            count = default(self.num_samples, 4)
        elif self.sample_texts:
            count = default(self.num_samples, len(self.sample_texts))
            texts = [self.sample_texts[index % len(self.sample_texts)] for index in range(count)]
        else:
            return None
        chunks: list[Tensor] = []
        for start in range(0, count, self.batch_size):
            size = min(self.batch_size, count - start)
            if texts is None:
                chunks.append(cast(Tensor, model.sample(batch_size=size, **kwargs)))
            else:
                chunks.append(cast(Tensor, model.sample(texts=texts[start : start + size], **kwargs)))
        videos = torch.cat(chunks)
        path = self.results_path("samples", f"sample-{self.step_count:08d}.gif")
        path.parent.mkdir(parents=True, exist_ok=True)
        save_video(videos.float().cpu(), path)
        return path

    def save_model(self) -> Path | None:
        """Checkpoint (resumable) plus `results_folder/phenaki` (save_pretrained of the EMA model)."""
        return self.save_and_export("phenaki")

    def periodic_tasks(self) -> list[tuple[int | None, Callable[[], Any]]]:
        """What `fit()` (and so `train()`) runs every `save_results_every` / `save_model_every` steps."""
        return [(self.save_results_every, self.save_results), (self.save_model_every, self.save_model)]

    def train(self, log_fn: Callable[[dict[str, float]], None] | None = None) -> None:
        """`fit()` until `num_train_steps` (samples and checkpoints periodically), then `save_model()`."""
        self.fit(at_end=self.save_model, log_fn=log_fn)
