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
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn
from torch.utils.data import Dataset

from nuwa_pytorch.nuwa import NUWA
from nuwa_pytorch.vqgan_vae import VQGanVAE
from synthesis_core.checkpoint import atomic_write_json, read_json
from synthesis_core.checks import check_in_range, check_positive_int
from synthesis_core.data import ImageFolderDataset, VideoFolderDataset
from synthesis_core.text import build_vocab, split_words
from synthesis_core.training import AutoencoderGANTrainer, BaseTrainer, make_dataloader
from synthesis_core.utils import default, exists
from synthesis_core.video import save_image, save_video

logger = logging.getLogger(__name__)

__all__ = ["WordTokenizer", "VQGanVAETrainer", "NUWATrainer", "collate_images", "collate_text_and_video"]

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
            raise ValueError("vocab: expected distinct words starting with the padding and unknown tokens "
                             "(see WordTokenizer.from_captions)")
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
            ids[index, :len(row)] = torch.tensor(row)
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
            raise TypeError(f"dataset: expected image (c, h, w) or video (c, t, h, w) tensors, got "
                            f"{type(x).__name__} {tuple(getattr(x, 'shape', ()))}")
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
        batch["text"] = torch.stack([F.pad(torch.as_tensor(text)[:length], (0, length - min(len(text), length)))
                                     for text in texts]).long()
    return batch


def _captions_of(dataset: Dataset) -> list[str]:
    captions = getattr(dataset, "captions", None)
    if isinstance(captions, dict):
        return list(captions.values())
    if isinstance(captions, (list, tuple)):
        return list(captions)
    raise ValueError("tokenizer: cannot collect the captions of this dataset to build a vocabulary; pass "
                     "tokenizer=WordTokenizer.from_captions(all_your_captions)")


# the VAE


class VQGanVAETrainer(AutoencoderGANTrainer):
    """Trains a `VQGanVAE`: an autoencoder step, then (with `use_vgg_and_gan`) a discriminator step with the
    gradient penalty every `apply_grad_penalty_every` steps (the loop is the core's `AutoencoderGANTrainer`).

    ```
    trainer = VQGanVAETrainer(vae, folder='images/', batch_size=8, num_train_steps=50_000,
                              results_folder='results/vae')
    trainer.train()   # checkpoints, reconstruction sheets and results_folder/vae (save_pretrained of the EMA)
    ```
    `folder`: images (png/jpg/webp), or videos with `num_frames=` (every frame is a training image).
    `dataset`: items are images `(c, h, w)` or videos `(c, t, h, w)` in [0, 1], or tuples starting with one.
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
        batch_size: int = 4,
        num_train_steps: int = 50_000,
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
        num_sample_images: int = 8,
        results_folder: str | Path = "./results/vae",
        num_workers: int = 0,
        resume: str | Path | None = None,
        **trainer_kwargs: Any,
    ):
        super().__init__(num_train_steps=num_train_steps, apply_grad_penalty_every=apply_grad_penalty_every,
                         save_results_every=save_results_every, save_model_every=save_model_every,
                         results_folder=results_folder, gradient_accumulate_every=grad_accum_every, **trainer_kwargs)
        if not isinstance(vae, VQGanVAE):
            raise TypeError(f"vae: expected a VQGanVAE, got {type(vae).__name__}")
        check_positive_int("batch_size", batch_size)
        if exists(dataset) == exists(folder):
            raise ValueError("dataset: pass exactly one of dataset= or folder=")
        if exists(folder):
            if exists(num_frames):
                dataset = VideoFolderDataset(folder, image_size=vae.image_size, num_frames=num_frames,
                                             channels=vae.channels)
            else:
                dataset = ImageFolderDataset(folder, image_size=vae.image_size)
        self.dataset = dataset
        self.batch_size = batch_size
        self.num_sample_images = num_sample_images

        self.add_autoencoder("vae", vae, use_gan=vae.use_vgg_and_gan, lr=lr, discr_lr=discr_lr,
                             max_grad_norm=max_grad_norm, discr_max_grad_norm=discr_max_grad_norm,
                             warmup_steps=warmup_steps, ema=use_ema, ema_decay=ema_decay,
                             ema_update_every=ema_update_every)
        loader = make_dataloader(dataset, batch_size, num_workers=num_workers, collate_fn=collate_images)
        self.dataloader = self.add_dataloader("train", loader)  # its position is checkpointed
        self.config.update(batch_size=batch_size)
        if exists(resume):
            self.load(resume)

    def next_batch(self) -> Tensor:
        return next(self.dataloader).to(self.device)

    def autoencoder_loss(self, model: nn.Module, images: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        loss, recons = model(images, return_loss=True, return_recons=True)
        return loss, {"recon_mse": F.mse_loss(recons.detach().float(), images.float())}

    @torch.no_grad()
    def save_results(self) -> Path | None:
        """Writes `samples/recon-{step}.png`: each real image next to its reconstruction."""
        if not self.is_main:
            return None
        model = self.model_for_sampling()
        was_training = model.training
        model.eval()
        try:
            # the same first images of the dataset every time, read directly: drawing from the training loader on
            # the main process only would put the processes at different places in the data
            count = min(self.num_sample_images, len(self.dataset))
            images = collate_images([self.dataset[i] for i in range(count)])[: self.num_sample_images]
            images = images.to(self.device)
            recons = model(images)
        finally:
            model.train(was_training)
        pairs = torch.cat((images, recons.to(images.dtype)), dim=-1).float().clamp(0, 1).cpu()
        return save_image(pairs, self.results_folder / "samples" / f"recon-{self.step_count:08d}.png")


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
        **trainer_kwargs: Any,
    ):
        super().__init__(results_folder=results_folder, gradient_accumulate_every=grad_accum_every, **trainer_kwargs)
        if not isinstance(nuwa, NUWA):
            raise TypeError(f"nuwa: expected a NUWA, got {type(nuwa).__name__}")
        check_positive_int("batch_size", batch_size)
        check_positive_int("num_train_steps", num_train_steps)
        check_in_range("cond_dropout_prob", cond_dropout_prob, 0.0, 1.0)
        check_in_range("sample_cond_scale", sample_cond_scale, 0.0, None)
        if exists(dataset) == exists(folder):
            raise ValueError("dataset: pass exactly one of dataset= or folder=")
        num_frames = default(num_frames, nuwa.max_video_frames)
        nuwa._check_num_frames("num_frames", num_frames)
        if exists(folder):
            dataset = VideoFolderDataset(folder, image_size=nuwa.image_size, num_frames=num_frames,
                                         with_captions=True, channels=nuwa.vae.channels)
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
        self.add_model("nuwa", nuwa, lr=lr, weight_decay=weight_decay, warmup_steps=warmup_steps,
                       total_steps=num_train_steps, max_grad_norm=max_grad_norm, ema=use_ema, ema_decay=ema_decay,
                       ema_update_every=ema_update_every)

        collate = functools.partial(collate_text_and_video, tokenizer=tokenizer, max_text_len=nuwa.text_max_seq_len)
        loader = make_dataloader(dataset, batch_size, num_workers=num_workers, collate_fn=collate)
        self.dataloader = self.add_dataloader("train", loader)  # its position is checkpointed
        self.config.update(dict(batch_size=batch_size, num_train_steps=num_train_steps, lr=lr, num_frames=num_frames,
                                vocab=tokenizer.vocab if exists(tokenizer) else None))
        if exists(tokenizer) and self.is_main:
            tokenizer.save(self.results_folder / TOKENIZER_FILE)
        if exists(resume):
            self.load(resume)

    @staticmethod
    def _has_string_captions(dataset: Dataset) -> bool:
        if len(dataset) == 0:
            return False
        item = dataset[0]
        return isinstance(item, (tuple, list)) and len(item) > 1 and isinstance(item[1], str)

    @property
    def step_count(self) -> int:
        return self.steps["nuwa"]

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
        return self.averaged_model("nuwa")

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
        path = self.results_folder / "samples" / f"sample-{self.step_count:08d}.gif"
        path.parent.mkdir(parents=True, exist_ok=True)
        save_video(videos, path)
        return path

    def save_model(self) -> Path | None:
        """Checkpoint (resumable) plus `results_folder/nuwa`: the EMA model and its `tokenizer.json`."""
        folder = self.save_and_export("nuwa")
        if exists(folder) and exists(self.tokenizer):
            self.tokenizer.save(folder / TOKENIZER_FILE)
        return folder

    def train(self, log_fn: Callable[[dict[str, float]], None] | None = None) -> None:
        self.fit(self.num_train_steps, self.train_step, step_count=lambda: self.step_count,
                 every=[(self.save_results_every, self.save_results), (self.save_model_every, self.save_model)],
                 at_end=self.save_model, desc="nuwa", log_fn=log_fn)
