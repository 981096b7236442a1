"""What the members' test suites share: offline single-threaded runs, a fixed seed per test, and tiny text
encoders and videos built on the spot (no download, no stored data).

Each member's `tests/conftest.py` does

    from synthesis_core.testing import configure_test_process, seed_each_test  # noqa: F401 (autouse fixture)

    configure_test_process()

and builds the tiny models its tests need with the functions below, so `pytest packages/<name>` works from the
workspace root and from an unpacked sdist alike. Needs pytest (and `tokenizers` / `transformers` for the tiny
text encoders); importing `synthesis_core` itself never imports this module.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import torch

__all__ = [
    "configure_test_process",
    "seed_each_test",
    "train_tiny_tokenizer",
    "build_tiny_t5",
    "build_tiny_bert",
    "moving_frames",
    "write_moving_gif",
    "shapes_moving",
    "centroid_columns",
    "train_at_high_noise",
    "clean_prediction_from_noise",
    "assert_prediction_moves_right",
]


def configure_test_process() -> None:
    """No hub access (a test that would download fails at once instead) and one torch thread (the suites run
    beside each other on small machines, and one thread keeps results reproducible)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def seed_each_test() -> None:
    """Every test starts from the same global torch seed, whatever ran before it."""
    torch.manual_seed(0)


def train_tiny_tokenizer(kind: str, captions: Sequence[str], vocab_size: int) -> Any:
    """A `tokenizers.Tokenizer` trained on `captions`: Unigram with T5's special tokens for `kind="t5"`,
    WordPiece with BERT's for `kind="bert"`."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers

    corpus = list(captions) * 10
    if kind == "t5":
        tk = Tokenizer(models.Unigram())
        tk.normalizer = normalizers.Lowercase()
        tk.pre_tokenizer = pre_tokenizers.Metaspace()
        tk.train_from_iterator(
            corpus,
            trainers.UnigramTrainer(
                vocab_size=vocab_size, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>"
            ),
        )
        tk.post_processor = processors.TemplateProcessing(
            single="$A </s>", special_tokens=[("</s>", tk.token_to_id("</s>"))]
        )
        return tk
    if kind == "bert":
        tk = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        tk.normalizer = normalizers.BertNormalizer(lowercase=True)
        tk.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tk.train_from_iterator(
            corpus,
            trainers.WordPieceTrainer(
                vocab_size=vocab_size, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
            ),
        )
        tk.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]",
            special_tokens=[("[CLS]", tk.token_to_id("[CLS]")), ("[SEP]", tk.token_to_id("[SEP]"))],
        )
        return tk
    raise ValueError(f"kind: expected 't5' or 'bert', got {kind!r}")


def build_tiny_t5(
    folder: str | os.PathLike,
    captions: Sequence[str],
    *,
    d_model: int,
    d_ff: int,
    num_layers: int,
    num_heads: int,
    d_kv: int = 8,
    vocab_size: int = 60,
) -> str:
    """Writes a randomly initialised T5 encoder (seeded, so the same every time) and a tokenizer trained on
    `captions` to `folder`, the way a user points at a local checkpoint; returns the folder."""
    from transformers import T5Config, T5EncoderModel, T5TokenizerFast  # type: ignore[attr-defined]

    tokenizer = T5TokenizerFast(
        tokenizer_object=train_tiny_tokenizer("t5", captions, vocab_size),
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
        extra_ids=0,
    )
    tokenizer.save_pretrained(folder)
    torch.manual_seed(0)
    config = T5Config(
        vocab_size=len(tokenizer), d_model=d_model, d_ff=d_ff, d_kv=d_kv, num_layers=num_layers, num_heads=num_heads
    )
    T5EncoderModel(config).save_pretrained(folder)
    return str(folder)


def build_tiny_bert(
    folder: str | os.PathLike,
    captions: Sequence[str],
    *,
    hidden_size: int,
    num_layers: int,
    num_heads: int,
    intermediate_size: int,
    vocab_size: int = 150,
    max_position_embeddings: int = 512,
) -> str:
    """Writes a randomly initialised BERT (seeded) and a WordPiece tokenizer trained on `captions` to `folder`;
    returns the folder."""
    from transformers import BertConfig, BertModel, BertTokenizerFast  # type: ignore[attr-defined]

    tokenizer = BertTokenizerFast(
        tokenizer_object=train_tiny_tokenizer("bert", captions, vocab_size),
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )
    tokenizer.save_pretrained(folder)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        intermediate_size=intermediate_size,
        max_position_embeddings=max_position_embeddings,
    )
    BertModel(config).save_pretrained(folder)
    return str(folder)


def moving_frames(num_frames: int, size: int, seed: int) -> list[Any]:
    """PIL frames of a random `size` x `size` image rolled one pixel right per frame (so time matters)."""
    from PIL import Image

    generator = torch.Generator().manual_seed(seed)
    base = (torch.rand(3, size, size, generator=generator) * 255).to(torch.uint8)
    return [Image.fromarray(torch.roll(base, shifts=i, dims=2).permute(1, 2, 0).numpy()) for i in range(num_frames)]


def write_moving_gif(path: str | os.PathLike, num_frames: int, size: int, seed: int) -> Path:
    """Writes `moving_frames(num_frames, size, seed)` as a looping gif to `path`; returns the path."""
    frames = moving_frames(num_frames, size, seed)
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)
    return Path(path)


def shapes_moving(direction: str, count: int, size: int, frames: int, seed: int = 3) -> torch.Tensor:
    """The first `count` videos of the shapes dataset whose caption ends with `direction` ("left", "right", "up",
    "down"), `(count, 3, frames, size, size)` in [0, 1]: the data of the motion diagnostics."""
    from synthesis_core.shapes import DIRECTIONS, ShapesVideoDataset

    if direction not in DIRECTIONS:
        raise ValueError(f"direction: expected one of {DIRECTIONS}, got {direction!r}")
    dataset = ShapesVideoDataset(10**9, image_size=size, num_frames=frames, seed=seed)
    videos: list[torch.Tensor] = []
    index = 0
    while len(videos) < count:
        video, caption = dataset[index]
        if caption.endswith(direction):
            videos.append(video)
        index += 1
    return torch.stack(videos)


def centroid_columns(videos: torch.Tensor) -> torch.Tensor:
    """Column of the foreground's centre of mass in every frame of the mean video of `videos (b, 3, t, h, w)` in
    [0, 1] (foreground: brighter than the shapes dataset's background) -> `(t,)`."""
    from synthesis_core.shapes import BACKGROUND

    foreground = (videos.mean(dim=(0, 1)) - BACKGROUND[0]).clamp(min=0)  # (t, h, w)
    columns = torch.arange(videos.shape[-1], dtype=torch.float32)
    return (foreground.sum(dim=1) * columns).sum(dim=-1) / foreground.sum(dim=(1, 2))


def train_at_high_noise(
    diffusion: Any,
    videos: torch.Tensor,
    *,
    steps: int = 250,
    lr: float = 1e-3,
    batch_size: int = 8,
    conditions: torch.Tensor | None = None,
    first_time: int = 800,
) -> None:
    """The motion diagnostics' training of a discrete-time diffusion model (a core `DiffusionWrapper`): `steps` Adam
    steps on random batches of `videos` (with their rows of `conditions` as `cond`), only at times from
    `first_time` on, where the noisy input says (almost) nothing and the prediction is the mean video."""
    optimizer = torch.optim.Adam([p for p in diffusion.parameters() if p.requires_grad], lr=lr)
    for _ in range(steps):
        pick = torch.randint(len(videos), (batch_size,))
        times = torch.randint(first_time, diffusion.num_timesteps, (batch_size,))
        condition = {} if conditions is None else {"cond": conditions[pick]}
        loss = diffusion(videos[pick], times=times, **condition)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


@torch.no_grad()
def clean_prediction_from_noise(diffusion: Any, shape: Sequence[int], **model_kwargs: Any) -> torch.Tensor:
    """The clean video `(shape)` in [0, 1] that a `DiffusionWrapper` predicts from pure noise at its noisiest time:
    the mean video it has learned (for the condition in `model_kwargs`)."""
    noise = torch.randn(*shape)
    times = torch.full((shape[0],), diffusion.num_timesteps - 1)
    x0 = diffusion.predict_start(diffusion.model_output(noise, times, **model_kwargs), noise, times)
    return (x0 + 1) / 2


def assert_prediction_moves_right(prediction: torch.Tensor, data: torch.Tensor, share: float = 0.6) -> None:
    """The data (videos in [0, 1]) moves right by several pixels, and the prediction moves the same way, more than
    `share` of the distance, frame after frame (centroids of the mean videos)."""
    wanted, got = centroid_columns(data), centroid_columns(prediction)
    travel = float(wanted[-1] - wanted[0])
    assert travel > 3, wanted
    assert float(got[-1] - got[0]) > share * travel, (got, wanted)
    assert bool((got[1:] - got[:-1] > 0).all()), got
