"""Trainers: `VQGanVAETrainer` (the image tokenizer, alternating autoencoder / discriminator steps) and
`NUWATrainer` (text + video on the frozen VAE), plus the word-level `WordTokenizer` for captions.

Both run on `synthesis_core.training.BaseTrainer`: CPU or GPUs through accelerate, mixed precision, EMA, NaN
guard, atomic safetensors checkpoints in `results_folder` (resume with `resume='latest'`, exactly, also mid-epoch),
samples written as images / gifs, never an interactive prompt. Data layout at this package's boundary is `(b, f, c, h, w)`; the
core datasets give `(c, t, h, w)` items, converted here.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable, Iterable, Sequence, Sized
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn
from torch.utils.data import Dataset

from nuwa_pytorch.nuwa import NUWA
from nuwa_pytorch.vqgan_vae import VQGanVAE
from synthesis_core.checkpoint import atomic_write_json, read_json
from synthesis_core.checks import check_in_range, check_positive_int
from synthesis_core.folders import ImageFolderDataset, VideoFolderDataset, resize_and_center_crop
from synthesis_core.protocol import resolve_alias
from synthesis_core.text import build_vocab, split_words
from synthesis_core.training import AutoencoderGANTrainer, BaseTrainer, make_dataloader
from synthesis_core.utils import default, exists
from synthesis_core.video import save_image, save_video

logger = logging.getLogger(__name__)

__all__ = [
    "WordTokenizer",
    "MemmapImageDataset",
    "VQGanVAETrainer",
    "NUWATrainer",
    "collate_images",
    "collate_text_and_video",
]

TOKENIZER_FILE = "tokenizer.json"


# captions


class WordTokenizer:
    """Word-level tokenizer giving NUWA's text ids: 0 = padding, 1 = unknown word, then the words by frequency.

    ```
    tokenizer = WordTokenizer.from_captions(captions)
    text = tokenizer.encode(['a red square moving left'], max_length=32)   # (1, n) long, 0-padded
    ```
    """

    def __init__(self, vocab: Sequence[str]):
        vocab = list(vocab)
        if len(vocab) < 2 or len(set(vocab)) != len(vocab):
            raise ValueError(
                "vocab: expected distinct words starting with the padding and unknown tokens "
                "(see WordTokenizer.from_captions)"
            )
        self.vocab = vocab
        self.word_to_id = {word: index for index, word in enumerate(vocab)}

    @classmethod
    def from_captions(cls, captions: Iterable[str], min_count: int = 1, max_size: int | None = None) -> WordTokenizer:
        return cls(build_vocab(captions, min_count=min_count, max_size=max_size))

    def __len__(self) -> int:
        return len(self.vocab)

    def encode(self, texts: Sequence[str], max_length: int, device: torch.device | str | None = None) -> Tensor:
        """`(b, n)` long ids, padded with 0 to the longest text, texts cut at `max_length` words."""
        if isinstance(texts, str):
            texts = [texts]
        check_positive_int("max_length", max_length)
        rows = [[self.word_to_id.get(word, 1) for word in split_words(text)][:max_length] or [1] for text in texts]
        ids = torch.zeros(len(rows), max(len(row) for row in rows), dtype=torch.long)
        for index, row in enumerate(rows):
            ids[index, : len(row)] = torch.tensor(row)
        return ids.to(device) if exists(device) else ids

    def decode(self, ids: Tensor) -> list[str]:
        return [" ".join(self.vocab[i] for i in row.tolist() if i != 0) for row in ids]

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        atomic_write_json(path, {"vocab": self.vocab})
        return path

    @classmethod
    def load(cls, path: str | Path) -> WordTokenizer:
        path = Path(path)
        if path.is_dir():
            path = path / TOKENIZER_FILE
        if not path.is_file():
            raise FileNotFoundError(f"no tokenizer at {path} (written by NUWATrainer next to the model)")
        return cls(read_json(path)["vocab"])


# data


def _first(item: Any) -> Any:
    return item[0] if isinstance(item, (tuple, list)) else item


def collate_images(items: Sequence[Any]) -> Tensor:
    """Images `(c, h, w)` or videos `(c, t, h, w)` (core layout, each frame becomes an image), or tuples whose first
    element is one -> an image batch `(n, c, h, w)`."""
    images = []
    for item in items:
        x = _first(item)
        if not isinstance(x, Tensor) or x.ndim not in (3, 4):
            raise TypeError(
                f"dataset: expected image (c, h, w) or video (c, t, h, w) tensors, got "
                f"{type(x).__name__} {tuple(getattr(x, 'shape', ()))}"
            )
        images.append(rearrange(x, "c t h w -> t c h w") if x.ndim == 4 else rearrange(x, "c h w -> 1 c h w"))
    return torch.cat(images)


def collate_text_and_video(items: Sequence[Any], tokenizer: WordTokenizer | None, max_text_len: int) -> dict:
    """`(video, text)` items -> `{'video' (b, f, c, h, w) float | 'video_indices' (b, n) long, 'text' (b, n) long}`.

    The video is a float `(c, t, h, w)` tensor (core layout) or pre-tokenised codebook indices (an integer
    tensor of any shape, flattened); the text is a caption (tokenised here) or a 1D tensor of ids.
    """
    batch: dict[str, Tensor] = {}
    videos = [item[0] for item in items]
    texts = [item[1] for item in items]
    if videos[0].is_floating_point():
        batch["video"] = torch.stack([rearrange(video, "c t h w -> t c h w") for video in videos])
    else:
        batch["video_indices"] = torch.stack([video.flatten() for video in videos]).long()
    if isinstance(texts[0], str):
        if tokenizer is None:
            raise ValueError("tokenizer: captions need a WordTokenizer (pass tokenizer= to NUWATrainer)")
        batch["text"] = tokenizer.encode(texts, max_length=max_text_len)
    else:
        length = min(max(len(text) for text in texts), max_text_len)
        batch["text"] = torch.stack(
            [F.pad(torch.as_tensor(text)[:length], (0, length - min(len(text), length))) for text in texts]
        ).long()
    return batch


class MemmapImageDataset(Dataset):
    """Images stored as one raw uint8 numpy memmap (no header): `shape` is `(n, height, width, channels)`
    (channels last, as PIL / numpy write them), `(n, height, width)` (grey) or `(n, 1, height, width)` (grey).
    Items are `(channels, image_size, image_size)` float images in [0, 1], resized and centre-cropped to
    `image_size`. The file is opened read-only and read item by item (a data set larger than memory is fine)."""

    def __init__(self, path: str | Path, shape: Sequence[int], image_size: int, channels: int = 3):
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"images_memmap_path: no file at {path}")
        if (
            isinstance(shape, (str, bytes))
            or not all(isinstance(n, int) and n > 0 for n in shape)
            or len(shape) not in (3, 4)
        ):
            raise ValueError(
                f"images_memmap_shape: expected (n, height, width[, channels]) or (n, 1, height, width) "
                f"positive ints, got {shape!r}"
            )
        shape = tuple(shape)
        expected_bytes = math.prod(shape)
        if path.stat().st_size != expected_bytes:
            raise ValueError(
                f"images_memmap_shape: {shape} is {expected_bytes} uint8 values, but {path} holds "
                f"{path.stat().st_size} bytes"
            )
        if len(shape) == 3:
            self.layout, image_channels = "n h w", 1
        elif shape[1] == 1 and shape[-1] not in (1, 3, 4):
            self.layout, image_channels = "n 1 h w", 1
        else:
            self.layout, image_channels = "n h w c", shape[-1]
        if image_channels != channels:
            raise ValueError(
                f"images_memmap_shape: {shape} holds {image_channels}-channel images, but the VAE takes "
                f"{channels} channels"
            )
        check_positive_int("image_size", image_size)
        self.path, self.shape, self.image_size, self.channels = path, shape, image_size, channels
        self._memmap: np.memmap | None = None  # opened lazily: in each dataloader worker, not pickled

    def __len__(self) -> int:
        return self.shape[0]

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_memmap": None}

    def __getitem__(self, index: int) -> Tensor:
        if self._memmap is None:
            self._memmap = np.memmap(self.path, dtype=np.uint8, mode="r", shape=self.shape)
        pixels = torch.from_numpy(np.array(self._memmap[index])).float() / 255.0
        if self.layout == "n h w":
            image = rearrange(pixels, "h w -> 1 h w")
        elif self.layout == "n 1 h w":
            image = pixels
        else:
            image = rearrange(pixels, "h w c -> c h w")
        return resize_and_center_crop(image, (self.image_size, self.image_size))


def _captions_of(dataset: Dataset) -> list[str]:
    captions = getattr(dataset, "captions", None)
    if isinstance(captions, dict):
        return list(captions.values())
    if isinstance(captions, (list, tuple)):
        return list(captions)
    raise ValueError(
        "tokenizer: cannot collect the captions of this dataset to build a vocabulary; pass "
        "tokenizer=WordTokenizer.from_captions(all_your_captions)"
    )


# the VAE


class VQGanVAETrainer(AutoencoderGANTrainer):
    """Trains a `VQGanVAE`: an autoencoder step, then (with `use_vgg_and_gan`) a discriminator step with the
    gradient penalty every `apply_grad_penalty_every` steps: a configuration of the core's `AutoencoderGANTrainer`
    (which holds the loop, the validation split, checkpoints and resuming).

    ```
    trainer = VQGanVAETrainer(vae, folder='images/', batch_size=8, num_train_steps=50_000,
                              results_folder='results/vae')
    trainer.train()   # checkpoints, reconstruction sheets and results_folder/vae (save_pretrained of the EMA)
    ```
    `folder`: images (png/jpg/webp), or videos with `num_frames=` (every frame is a training image).
    `dataset`: items are images `(c, h, w)` or videos `(c, t, h, w)` in [0, 1], or tuples starting with one.
    `images_memmap_path` + `images_memmap_shape`: a raw uint8 numpy memmap of images (`MemmapImageDataset`).
    The other keywords (`batch_size`, `lr`, `discr_lr`, `weight_decay`, `warmup_steps`, `grad_accum_every`,
    `max_grad_norm`, `discr_max_grad_norm`, `apply_grad_penalty_every`, `use_ema`, `ema_decay`, `ema_update_every`,
    `ema_update_after_step`, `valid_frac`, `random_split_seed`, `save_results_every`, `save_model_every`,
    `num_workers`, `resume`, and the nuwa-pytorch 0.7.8 spellings `wd` (= `weight_decay`) and `ema_beta`
    (= `ema_decay`)) are those of `AutoencoderGANTrainer`, with its defaults, and then of `BaseTrainer`.
    `valid_frac` of the data is held out for the reconstruction sheets (`random_split_seed` fixes the split).
    """

    progress_desc = "vqgan-vae"
    progress_postfix = {"loss": "loss", "recon": "recon_mse"}

    def __init__(
        self,
        vae: VQGanVAE,
        *,
        dataset: Dataset | None = None,
        folder: str | Path | None = None,
        num_frames: int | None = None,
        num_train_steps: int = 50_000,
        num_sample_images: int = 8,
        results_folder: str | Path = "./results/vae",
        images_memmap_path: str | Path | None = None,
        images_memmap_shape: Sequence[int] | None = None,
        **trainer_kwargs: Any,
    ):
        super().__init__(num_train_steps=num_train_steps, results_folder=results_folder, **trainer_kwargs)
        if not isinstance(vae, VQGanVAE):
            raise TypeError(f"vae: expected a VQGanVAE, got {type(vae).__name__}")
        if exists(images_memmap_shape) and not exists(images_memmap_path):
            raise ValueError("images_memmap_shape: describes the file of images_memmap_path=, which is missing")
        if images_memmap_path is not None:
            if images_memmap_shape is None:
                raise ValueError("images_memmap_shape: needed with images_memmap_path= (a raw memmap has no header)")
            if exists(dataset) or exists(folder):
                raise ValueError("images_memmap_path: pass exactly one of dataset=, folder= or images_memmap_path=")
            dataset = MemmapImageDataset(
                images_memmap_path, images_memmap_shape, image_size=vae.image_size, channels=vae.channels
            )
        if exists(dataset) == exists(folder):
            raise ValueError("dataset: pass exactly one of dataset=, folder= or images_memmap_path=")
        if folder is not None:
            if exists(num_frames):
                dataset = VideoFolderDataset(
                    folder, image_size=vae.image_size, num_frames=num_frames, channels=vae.channels
                )
            else:
                dataset = ImageFolderDataset(folder, image_size=vae.image_size)
        self.setup_autoencoder("vae", vae, dataset, collate_fn=collate_images, num_samples=num_sample_images)

    @property
    def num_sample_images(self) -> int:
        return self.num_samples

    def autoencoder_loss(self, model: nn.Module, images: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        loss, recons = model(images, return_loss=True, return_recons=True)
        return loss, {"recon_mse": F.mse_loss(recons.detach().float(), images.float())}

    def reconstruct(self, model: nn.Module, images: Tensor) -> Tensor:
        return model(images)

    def write_reconstructions(self, images: Tensor, recons: Tensor) -> Path:
        """`samples/recon-{step}.png`: each real image next to its reconstruction."""
        pairs = torch.cat((images, recons.to(images.dtype)), dim=-1).float().clamp(0, 1).cpu()
        return save_image(pairs, self.results_path("samples", f"recon-{self.step_count:08d}.png"))


# NUWA


class NUWATrainer(BaseTrainer):
    """Trains NUWA (the VAE inside stays frozen) on text + video.

    ```
    trainer = NUWATrainer(nuwa, folder='videos/', batch_size=4, num_train_steps=100_000,
                          sample_texts=['a red circle moving left'], results_folder='results/nuwa')
    trainer.train()   # checkpoints, sample gifs, results_folder/nuwa (model + tokenizer.json)
    ```
    Data: `folder` of videos (gif, mp4, frame folders) with sidecar `name.txt` captions, or a `dataset` whose items
    are `(video (c, t, h, w) in [0, 1], caption)`; the video may be pre-tokenised codebook indices (an integer
    tensor, `(t, h', w')` or flat; the VAE is then not run) and the caption may be a 1D tensor of text ids.
    Captions are tokenised with `tokenizer` (default: a `WordTokenizer` built from the dataset's captions).
    nuwa-pytorch 0.7.8 spellings: `wd` (= `weight_decay`), `num_sampled_frames` (samples have
    `min(num_frames, num_sampled_frames)` frames; = `sample_num_frames`, which may also exceed the training length
    up to `max_video_frames`).
    """

    def __init__(
        self,
        nuwa: NUWA,
        *,
        dataset: Dataset | None = None,
        folder: str | Path | None = None,
        num_frames: int | None = None,
        tokenizer: WordTokenizer | None = None,
        batch_size: int = 4,
        num_train_steps: int = 100_000,
        lr: float = 3e-4,
        weight_decay: float = 0.0,
        warmup_steps: int = 0,
        grad_accum_every: int = 1,
        max_grad_norm: float | None = 0.5,
        cond_dropout_prob: float = 0.2,
        use_ema: bool = True,
        ema_decay: float = 0.995,
        ema_update_every: int = 10,
        save_results_every: int | None = 500,
        save_model_every: int | None = 1000,
        sample_texts: Sequence[str] | None = None,
        sample_num_frames: int | None = None,
        sample_cond_scale: float = 3.0,
        results_folder: str | Path = "./results/nuwa",
        num_workers: int = 0,
        resume: str | Path | None = None,
        wd: float | None = None,
        num_sampled_frames: int | float | None = None,
        **trainer_kwargs: Any,
    ):
        super().__init__(results_folder=results_folder, gradient_accumulate_every=grad_accum_every, **trainer_kwargs)
        if not isinstance(nuwa, NUWA):
            raise TypeError(f"nuwa: expected a NUWA, got {type(nuwa).__name__}")
        weight_decay = resolve_alias("weight_decay", weight_decay or None, "wd", wd, 0.0)
        check_positive_int("batch_size", batch_size)
        check_positive_int("num_train_steps", num_train_steps)
        check_in_range("cond_dropout_prob", cond_dropout_prob, 0.0, 1.0)
        check_in_range("sample_cond_scale", sample_cond_scale, 0.0, None)
        if exists(dataset) == exists(folder):
            raise ValueError("dataset: pass exactly one of dataset= or folder=")
        num_frames = default(num_frames, nuwa.max_video_frames)
        nuwa._check_num_frames("num_frames", num_frames)
        if exists(num_sampled_frames):
            if exists(sample_num_frames):
                raise ValueError("num_sampled_frames: an alias of sample_num_frames; pass one of them, not both")
            if (
                isinstance(num_sampled_frames, bool)
                or not isinstance(num_sampled_frames, (int, float))
                or not num_sampled_frames >= 1
            ):
                raise ValueError(
                    f"num_sampled_frames: expected a number of frames >= 1 (or float('inf')), got "
                    f"{num_sampled_frames!r}"
                )
            # the published trainer sampled min(training length, num_sampled_frames) frames
            sample_num_frames = int(min(num_frames, num_sampled_frames))
        if exists(sample_num_frames):
            nuwa._check_num_frames("sample_num_frames", sample_num_frames)
        if folder is not None:
            dataset = VideoFolderDataset(
                folder,
                image_size=nuwa.image_size,
                num_frames=num_frames,
                with_captions=True,
                channels=nuwa.vae.channels,
            )
        if dataset is None:  # (one of dataset= and folder= is given, checked above)
            raise ValueError("dataset: pass exactly one of dataset= or folder=")
        if tokenizer is None and self._has_string_captions(dataset):
            tokenizer = WordTokenizer.from_captions(_captions_of(dataset), max_size=nuwa.text_num_tokens)
        if exists(tokenizer) and len(tokenizer) > nuwa.text_num_tokens:
            raise ValueError(f"tokenizer: {len(tokenizer)} words do not fit text_num_tokens={nuwa.text_num_tokens}")
        self.tokenizer = tokenizer
        self.dataset = dataset
        self.batch_size = batch_size
        self.num_train_steps = num_train_steps
        self.cond_dropout_prob = cond_dropout_prob
        self.save_results_every = save_results_every
        self.save_model_every = save_model_every
        self.sample_texts = list(sample_texts) if exists(sample_texts) else None
        self.sample_num_frames = default(sample_num_frames, num_frames)
        self.sample_cond_scale = sample_cond_scale

        # the VAE is frozen inside NUWA: only the transformer's parameters are optimised
        self.add_model(
            "nuwa",
            nuwa,
            lr=lr,
            weight_decay=weight_decay,
            warmup_steps=warmup_steps,
            total_steps=num_train_steps,
            max_grad_norm=max_grad_norm,
            ema=use_ema,
            ema_decay=ema_decay,
            ema_update_every=ema_update_every,
        )

        collate = functools.partial(collate_text_and_video, tokenizer=tokenizer, max_text_len=nuwa.text_max_seq_len)
        loader = make_dataloader(dataset, batch_size, num_workers=num_workers, collate_fn=collate)
        self.dataloader = self.add_dataloader("train", loader)  # its position is checkpointed
        self.config.update(
            dict(
                batch_size=batch_size,
                num_train_steps=num_train_steps,
                lr=lr,
                num_frames=num_frames,
                vocab=tokenizer.vocab if exists(tokenizer) else None,
            )
        )
        if exists(tokenizer) and self.is_main:
            tokenizer.save(self.results_path(TOKENIZER_FILE))
        if resume is not None:
            self.load(resume)

    @staticmethod
    def _has_string_captions(dataset: Dataset) -> bool:
        if len(cast(Sized, dataset)) == 0:
            return False
        item = dataset[0]
        return isinstance(item, (tuple, list)) and len(item) > 1 and isinstance(item[1], str)

    progress_desc = "nuwa"

    @property
    def step_count(self) -> int:
        return self.step_counts["nuwa"]

    def train_step(self) -> dict[str, float]:
        nuwa = self.models["nuwa"]
        nuwa.train()
        logs = {"loss": 0.0}
        for _ in range(self.gradient_accumulate_every):
            with self.accumulate("nuwa"):
                batch = {k: v.to(self.device) for k, v in next(self.dataloader).items()}
                with self.autocast():
                    loss = nuwa(**batch, return_loss=True, cond_dropout_prob=self.cond_dropout_prob)
                self.backward(loss, "nuwa")
            logs["loss"] += loss.item() / self.gradient_accumulate_every
        self.step("nuwa")
        return logs

    def model_for_sampling(self) -> NUWA:
        return cast(NUWA, self.averaged_model("nuwa"))  # the EMA copy of the NUWA registered

    @torch.no_grad()
    def save_results(self) -> Path | None:
        """Writes `samples/sample-{step}.gif`, one video per sample text (needs `sample_texts` and a tokenizer)."""
        if not self.is_main or not self.sample_texts or self.tokenizer is None:
            return None
        model = self.model_for_sampling()
        text = self.tokenizer.encode(self.sample_texts, max_length=model.text_max_seq_len, device=self.device)
        with self.autocast():
            videos = model.generate(text, num_frames=self.sample_num_frames, cond_scale=self.sample_cond_scale)
        videos = rearrange(videos.float().cpu(), "b f c h w -> b c f h w")
        path = self.results_path("samples", f"sample-{self.step_count:08d}.gif")
        path.parent.mkdir(parents=True, exist_ok=True)
        save_video(videos, path)
        return path

    def save_pretrained(
        self, folder: str | Path | None = None, name: str | None = None, *, ema: bool = True
    ) -> Path | None:
        """Publishes NUWA (default: its EMA weights) into `folder` (default `results_folder/nuwa`) with the
        `tokenizer.json` its captions were encoded with; returns the folder (None on other processes)."""
        path = super().save_pretrained(folder, name, ema=ema)
        if exists(path) and exists(self.tokenizer) and self._get(name)[0] == "nuwa":
            self.tokenizer.save(path / TOKENIZER_FILE)
        return path

    def save_model(self) -> Path | None:
        """Checkpoint (resumable) plus `results_folder/nuwa`: the EMA model and its `tokenizer.json`."""
        return self.save_and_export("nuwa")

    def periodic_tasks(self) -> list[tuple[int | None, Callable[[], Any]]]:
        """What `fit()` (and so `train()`) runs every `save_results_every` / `save_model_every` steps."""
        return [(self.save_results_every, self.save_results), (self.save_model_every, self.save_model)]

    def train(self, log_fn: Callable[[dict[str, float]], None] | None = None) -> None:
        """`fit()` until `num_train_steps` (samples and checkpoints periodically), then `save_model()`."""
        self.fit(at_end=self.save_model, log_fn=log_fn)
