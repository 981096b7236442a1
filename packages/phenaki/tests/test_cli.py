"""The `phenaki` command line: train the tokenizer and then Phenaki on a tiny captioned folder, then sample a video
and a story from what they saved."""

import torch

from phenaki_pytorch.cli import main
from synthesis_core.testing import build_tiny_t5, write_moving_gif
from synthesis_core.video import read_video

CAPTIONS = [
    "a red circle moving left",
    "a blue square moving up",
    "a green circle moving right",
    "a yellow square moving down",
]


def test_train_tokenizer_then_train_then_sample(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = tmp_path / "videos"
    data.mkdir()
    for k, caption in enumerate(CAPTIONS):
        write_moving_gif(data / f"{k}.gif", 3, 16, k)
        (data / f"{k}.txt").write_text(caption)
    common = [
        "--data",
        "videos",
        "--image-size",
        "16",
        "--num-frames",
        "3",
        "--batch-size",
        "2",
        "--steps",
        "1",
        "--save-every",
        "0",
        "--sample-every",
        "0",
        "--device",
        "cpu",
        "--seed",
        "0",
    ]
    assert (
        main(
            [
                "train-tokenizer",
                *common,
                "--dim",
                "16",
                "--codebook-size",
                "32",
                "--patch-size",
                "8",
                "--spatial-depth",
                "1",
                "--temporal-depth",
                "1",
                "--heads",
                "2",
                "--dim-head",
                "8",
                "--no-gan",
                "--output-dir",
                "tok",
            ]
        )
        == 0
    )
    assert (tmp_path / "tok" / "cvivit" / "config.json").is_file()

    t5 = build_tiny_t5(tmp_path / "t5", CAPTIONS, d_model=16, d_ff=32, num_layers=1, num_heads=2)
    assert (
        main(
            [
                "train",
                *common,
                "--tokenizer",
                "tok/cvivit",
                "--text-encoder",
                t5,
                "--dim",
                "16",
                "--depth",
                "1",
                "--heads",
                "2",
                "--dim-head",
                "8",
                "--output-dir",
                "phe",
            ]
        )
        == 0
    )

    sample = [
        "sample",
        "--model",
        "phe/phenaki",
        "--text",
        CAPTIONS[0],
        "--num-frames",
        "3",
        "--steps",
        "2",
        "--device",
        "cpu",
        "--seed",
        "3",
    ]
    assert main([*sample, "--out", "a.gif"]) == 0
    assert main([*sample, "--out", "b.gif"]) == 0
    a, b = read_video(tmp_path / "a.gif"), read_video(tmp_path / "b.gif")
    assert a.shape == (3, 3, 16, 16) and torch.equal(a, b)  # --seed makes it reproducible
    assert (
        main(
            [
                "sample",
                "--model",
                "phe/phenaki",
                "--story",
                f"{CAPTIONS[0]}=0.3",
                "--story",
                f"{CAPTIONS[1]}=0.2",
                "--fps",
                "10",
                "--sample-steps",
                "1",
                "--out",
                "story.gif",
            ]
        )
        == 0
    )
    assert (tmp_path / "story.gif").is_file()
    assert main(["sample", "--model", "phe/phenaki", "--num-frames", "4", "--out", "bad.gif"]) == 2
