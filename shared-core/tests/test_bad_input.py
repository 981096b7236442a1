"""A table of bad inputs to the core's public entry points: each raises ValueError/TypeError naming the argument,
what was received and what was expected (never a bare assert or an error deep inside)."""

import pytest
import torch
from torch import nn

from synthesis_core.checkpoint import CheckpointManager, atomic_write_bytes, save_checkpoint
from synthesis_core.checks import check_batch_match, check_tensor
from synthesis_core.folders import ImageFolderDataset, VideoFolderDataset
from synthesis_core.text import SimpleTextEncoder, TextEncoder, build_vocab
from synthesis_core.training import BaseTrainer, split_batch, warmup_cosine_lambda
from synthesis_core.video import make_grid, save_image, save_video, tensor_to_pil

VIDEO_NAMES = ("batch", "channels", "frames", "height", "width")


def check_video(videos):
    """How a package validates a `(batch, 3, 8, 16, 16)` video input in [0, 1]."""
    check_tensor(
        "videos", videos, shape=("batch", 3, 8, 16, 16), names=VIDEO_NAMES, dtype_floating=True, value_range=(0, 1)
    )


def encoder():
    return SimpleTextEncoder(build_vocab(["a red square"]), dim=8, depth=1, heads=2, dim_head=4)


def a_trainer():
    trainer = BaseTrainer()
    trainer.add_model("net", nn.Linear(2, 1), ema=False)
    return trainer


CASES = {
    # rank, channels, frames, value range, dtype, batch mismatch: the checks every package uses
    "video wrong rank": (
        lambda tmp: check_video(torch.rand(2, 3, 16, 16)),
        ValueError,
        r"videos: expected shape \(batch, 3, 8, 16, 16\).*got \(2, 3, 16, 16\)",
    ),
    "video wrong channels": (
        lambda tmp: check_video(torch.rand(2, 4, 8, 16, 16)),
        ValueError,
        r"videos: expected shape .*channels.*got \(2, 4, 8, 16, 16\)",
    ),
    "video wrong frame count": (
        lambda tmp: check_video(torch.rand(2, 3, 5, 16, 16)),
        ValueError,
        r"got \(2, 3, 5, 16, 16\)",
    ),
    "video out of range": (
        lambda tmp: check_video(torch.rand(1, 3, 8, 16, 16) * 2 - 1),
        ValueError,
        r"videos: expected values in \[0, 1\]",
    ),
    "video integer dtype": (
        lambda tmp: check_video(torch.zeros(1, 3, 8, 16, 16, dtype=torch.uint8)),
        TypeError,
        "videos: expected a floating point tensor",
    ),
    "video not a tensor": (lambda tmp: check_video([[0.5]]), TypeError, "videos: expected a torch.Tensor"),
    "text/video batch mismatch": (
        lambda tmp: check_batch_match(videos=torch.rand(2, 3, 8, 16, 16), texts=["a", "b", "c"]),
        ValueError,
        "videos=2, texts=3",
    ),
    # video IO
    "save_video image": (
        lambda tmp: save_video(torch.rand(3, 8, 8), tmp / "x.gif"),
        ValueError,
        "video: expected a 4 or 5-dimensional tensor",
    ),
    "save_video two channels": (
        lambda tmp: save_video(torch.rand(2, 4, 8, 8), tmp / "x.gif"),
        ValueError,
        "video: expected 1, 3 or 4 channels",
    ),
    "save_video unknown suffix": (
        lambda tmp: save_video(torch.rand(3, 2, 8, 8), tmp / "x.abc"),
        ValueError,
        "path: unknown video format",
    ),
    "save_video fps": (lambda tmp: save_video(torch.rand(3, 2, 8, 8), tmp / "x.gif", fps=-1), ValueError, "fps"),
    "save_image video": (lambda tmp: save_image(torch.rand(1, 3, 2, 8, 8), tmp / "x.png"), ValueError, "image"),
    "tensor_to_pil ints": (
        lambda tmp: tensor_to_pil(torch.zeros(3, 4, 4, dtype=torch.long)),
        TypeError,
        "image: expected a floating point tensor",
    ),
    "make_grid empty": (lambda tmp: make_grid(torch.rand(0, 3, 4, 4)), ValueError, "videos: .*empty"),
    # text
    "encode a single string": (lambda tmp: encoder().encode("a red square"), TypeError, "texts: expected a list"),
    "encode no text": (lambda tmp: encoder().encode([]), ValueError, "texts: expected at least one"),
    "token ids as floats": (lambda tmp: encoder()(torch.zeros(1, 3)), TypeError, "ids: expected a long tensor"),
    "token ids wrong rank": (
        lambda tmp: encoder()(torch.zeros(3, dtype=torch.long)),
        ValueError,
        "ids: expected a 2-dimensional tensor",
    ),
    "text encoder max_length": (lambda tmp: TextEncoder("t5-small", max_length=0), ValueError, "max_length"),
    "text encoder name": (lambda tmp: TextEncoder(None), TypeError, "name"),
    # training
    "mixed precision": (lambda tmp: BaseTrainer(mixed_precision="fp64"), ValueError, "mixed_precision"),
    "accumulation": (lambda tmp: BaseTrainer(gradient_accumulate_every=0), ValueError, "gradient_accumulate_every"),
    "learning rate": (lambda tmp: BaseTrainer().add_model("net", nn.Linear(2, 1), lr=0), ValueError, "lr"),
    "model name with dot": (lambda tmp: BaseTrainer().add_model("a.b", nn.Linear(2, 1)), ValueError, "name"),
    "not a module": (lambda tmp: BaseTrainer().add_model("net", "model"), TypeError, "module"),
    "loss not scalar": (lambda tmp: a_trainer().backward(torch.ones(3), "net"), ValueError, "loss: expected a scalar"),
    "unknown model": (lambda tmp: a_trainer().step("unet"), ValueError, "no model named 'unet'"),
    "max_batch_size": (lambda tmp: list(split_batch(0, torch.ones(4))), ValueError, "max_batch_size"),
    "schedule": (lambda tmp: warmup_cosine_lambda(10, 5), ValueError, "total_steps"),
    # checkpoints
    "keep_last": (lambda tmp: CheckpointManager(tmp, keep_last=-2), ValueError, "keep_last"),
    "checkpoint step": (lambda tmp: CheckpointManager(tmp).save(-1, {}), ValueError, "step"),
    "tensors not tensors": (
        lambda tmp: save_checkpoint(tmp / "c.safetensors", {"w": [1.0]}),
        TypeError,
        r"tensors\['w'\]: expected a torch.Tensor",
    ),
    "metadata not JSON": (
        lambda tmp: save_checkpoint(tmp / "c.safetensors", {}, {"x": object()}),
        TypeError,
        "metadata",
    ),
    "bytes": (lambda tmp: atomic_write_bytes(tmp / "b", "text"), TypeError, "data: expected bytes"),
    # datasets
    "image_size": (lambda tmp: ImageFolderDataset(tmp, image_size=(8,)), ValueError, "image_size"),
    "channels": (lambda tmp: ImageFolderDataset(tmp, image_size=8, channels=2), ValueError, "channels"),
    "frame_mode": (lambda tmp: VideoFolderDataset(tmp, 8, 4, frame_mode="repeat"), ValueError, "frame_mode"),
    "num_frames": (lambda tmp: VideoFolderDataset(tmp, 8, -1), ValueError, "num_frames"),
    "missing folder": (lambda tmp: VideoFolderDataset(tmp / "nope", 8, 4), FileNotFoundError, "folder"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_named(case, tmp_path):
    call, error, message = CASES[case]
    with pytest.raises(error, match=message):
        call(tmp_path)
