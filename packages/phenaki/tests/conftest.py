"""Fixtures for the phenaki tests: single-threaded, offline, tiny models and tiny synthetic videos."""

import pytest
import torch

from synthesis_core.testing import configure_test_process, seed_each_test  # noqa: F401

configure_test_process()

CAPTIONS = [
    "a red square moving left",
    "a blue circle moving right",
    "a green triangle moving up",
    "a yellow circle moving down",
]


def _tiny_cvivit(**kwargs):
    from phenaki_pytorch import CViViT

    settings = dict(
        dim=32,
        codebook_size=64,
        image_size=16,
        patch_size=8,
        temporal_patch_size=2,
        spatial_depth=1,
        temporal_depth=1,
        dim_head=8,
        heads=2,
        use_vgg_and_gan=False,
    )
    settings.update(kwargs)
    return CViViT(**settings)


def _tiny_maskgit(**kwargs):
    from phenaki_pytorch import MaskGit

    settings = dict(num_tokens=64, max_seq_len=64, dim=32, depth=1, dim_context=16, heads=2, dim_head=8)
    settings.update(kwargs)
    return MaskGit(**settings)


def _moving_squares(num_videos: int = 4, num_frames: int = 5, size: int = 16, seed: int = 0) -> torch.Tensor:
    """Videos `(b, 3, t, size, size)` in [0, 1] of a coloured square moving right by one pixel per frame."""
    g = torch.Generator().manual_seed(seed)
    videos = torch.full((num_videos, 3, num_frames, size, size), 0.1)
    for i in range(num_videos):
        color = torch.rand(3, generator=g)
        y, x = (int(v) for v in torch.randint(0, size // 2, (2,), generator=g))
        for t in range(num_frames):
            videos[i, :, t, y : y + size // 4, x + t : x + t + size // 4] = color[:, None, None]
    return videos


@pytest.fixture
def simple_text_encoder():
    from synthesis_core.text import SimpleTextEncoder

    return SimpleTextEncoder.from_captions(CAPTIONS, dim=16, depth=1, max_length=8, heads=2, dim_head=8)


@pytest.fixture
def make_cvivit():
    """Factory of tiny CViViTs (16x16 frames, 8x8 patches, pairs of frames, no GAN unless asked)."""
    return _tiny_cvivit


@pytest.fixture
def make_maskgit():
    """Factory of tiny MaskGits (64 tokens, 16-wide text context)."""
    return _tiny_maskgit


@pytest.fixture
def moving_squares():
    """Factory of tiny synthetic videos `(b, 3, t, 16, 16)` in [0, 1]."""
    return _moving_squares
