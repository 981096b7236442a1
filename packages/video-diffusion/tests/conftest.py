"""Fixtures for the video-diffusion tests: everything is built here, offline, tiny, on one CPU thread."""

import pytest

from synthesis_core.testing import (  # noqa: F401 (seed_each_test: an autouse fixture)
    build_tiny_bert,
    configure_test_process,
    moving_frames,
    seed_each_test,
    write_moving_gif,
)

configure_test_process()

CAPTIONS = [
    "a red square moving left",
    "a blue circle moving right",
    "a green square moving up",
    "a yellow circle moving down",
]


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory):
    """A local folder with a tiny randomly initialised BERT (hidden size 16) and its tokenizer."""
    return build_tiny_bert(
        tmp_path_factory.mktemp("tiny-bert"),
        CAPTIONS,
        hidden_size=16,
        num_layers=1,
        num_heads=2,
        intermediate_size=32,
        vocab_size=80,
        max_position_embeddings=64,
    )


@pytest.fixture
def captions():
    return list(CAPTIONS)


@pytest.fixture
def gif_writer():
    """`write(path, num_frames, size, seed)`: a moving-texture gif; `.frames(num_frames, size, seed)`: its frames."""

    def write(path, num_frames: int, size: int, seed: int):
        return write_moving_gif(path, num_frames, size, seed)

    write.frames = moving_frames
    return write


@pytest.fixture
def gif_folder(tmp_path):
    """Four 8x8 gifs of 3 frames."""
    folder = tmp_path / "gifs"
    folder.mkdir()
    for k in range(4):
        write_moving_gif(folder / f"{k}.gif", 3, 8, k)
    return folder
