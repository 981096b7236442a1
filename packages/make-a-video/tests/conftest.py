"""Fixtures for the make-a-video tests: offline, single-threaded, tiny models and tiny synthetic data."""

import pytest
import torch

from synthesis_core.testing import build_tiny_t5, configure_test_process, seed_each_test, write_moving_gif  # noqa: F401

configure_test_process()

CAPTIONS = [
    "a red square moving left",
    "a blue circle moving right",
    "a green square moving up",
    "a yellow circle moving down",
]
TEXT_DIM = 16


def _tiny_unet(**kwargs):
    from make_a_video_pytorch import SpaceTimeUnet

    settings = dict(
        dim=8,
        channels=3,
        dim_mults=(1, 2),
        self_attns=(False, True),
        temporal_compression=(False, True),
        resnet_block_depths=(1, 1),
        attn_dim_head=8,
        attn_heads=2,
        ff_mult=2,
        text_embed_dim=TEXT_DIM,
    )
    settings.update(kwargs)
    return SpaceTimeUnet(**settings)


def _tiny_model(unet=None, cls=None, **kwargs):
    from make_a_video_pytorch import MakeAVideo

    settings = dict(image_size=8, num_frames=4, timesteps=100, sample_steps=3)
    settings.update(kwargs)
    return (cls or MakeAVideo)(unet if unet is not None else _tiny_unet(), **settings)


@pytest.fixture
def make_unet():
    """Factory of tiny SpaceTimeUnets: dim 8, two levels (attention and halved frames at the second), text 16."""
    return _tiny_unet


@pytest.fixture
def make_model():
    """Factory of tiny MakeAVideos: 8x8 frames, 4 frames, 100 timesteps, 3 sampling steps."""
    return _tiny_model


@pytest.fixture(scope="session")
def tiny_t5(tmp_path_factory):
    """A local folder with a tiny randomly initialised T5 encoder (d_model 16) and its tokenizer."""
    return build_tiny_t5(
        tmp_path_factory.mktemp("tiny-t5"),
        CAPTIONS,
        d_model=TEXT_DIM,
        d_ff=32,
        num_layers=1,
        num_heads=2,
        vocab_size=60,
    )


@pytest.fixture
def captioned_videos(tmp_path):
    """A folder of four 8x8 gifs of 4 frames, each with a caption sidecar."""
    folder = tmp_path / "videos"
    folder.mkdir()
    for k, caption in enumerate(CAPTIONS):
        write_moving_gif(folder / f"{k}.gif", 4, 8, k)
        (folder / f"{k}.txt").write_text(caption)
    return folder


@pytest.fixture
def captioned_images(tmp_path):
    """A folder of four 12x12 png images (resized by the dataset), each with a caption sidecar."""
    from PIL import Image

    folder = tmp_path / "images"
    folder.mkdir()
    for k, caption in enumerate(CAPTIONS):
        g = torch.Generator().manual_seed(100 + k)
        pixels = (torch.rand(12, 12, 3, generator=g) * 255).to(torch.uint8).numpy()
        Image.fromarray(pixels).save(folder / f"{k}.png")
        (folder / f"{k}.txt").write_text(caption)
    return folder
