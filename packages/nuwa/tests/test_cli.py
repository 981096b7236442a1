"""The `nuwa` command line: train the VQGAN-VAE tokenizer and then NUWA on a tiny captioned folder, then sample
from what they saved (also under the earlier command names `train-vae` and `generate`)."""

import torch

from nuwa_pytorch.cli import main
from synthesis_core.testing import write_moving_gif
from synthesis_core.video import read_video

CAPTIONS = ["a red square moving left", "a blue circle moving right", "a green square moving up"]


def test_train_tokenizer_then_train_then_sample(tmp_path):
    data = tmp_path / "videos"
    data.mkdir()
    for k, caption in enumerate(CAPTIONS):
        write_moving_gif(data / f"{k}.gif", 2, 16, k)
        (data / f"{k}.txt").write_text(caption)
    vae_run, nuwa_run = tmp_path / "vae", tmp_path / "nuwa"
    common = [
        "--data",
        str(data),
        "--num-frames",
        "2",
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
                "--image-size",
                "16",
                "--dim",
                "8",
                "--num-layers",
                "2",
                "--codebook-size",
                "16",
                "--no-gan",
                "--output-dir",
                str(vae_run),
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "train",
                *common,
                "--vae",
                str(vae_run / "vae"),
                "--dim",
                "16",
                "--heads",
                "2",
                "--text-num-tokens",
                "32",
                "--text-max-seq-len",
                "8",
                "--text-enc-depth",
                "1",
                "--dec-depth",
                "1",
                "--dilation",
                "1",
                "2",
                "--output-dir",
                str(nuwa_run),
            ]
        )
        == 0
    )

    sample = [
        "--model",
        str(nuwa_run / "nuwa"),
        "--text",
        CAPTIONS[0],
        "--num-frames",
        "2",
        "--cond-scale",
        "2",
        "--device",
        "cpu",
        "--seed",
        "0",
    ]
    assert main(["sample", *sample, "--out", str(tmp_path / "a.gif")]) == 0
    assert main(["generate", *sample, "--out", str(tmp_path / "b.gif")]) == 0  # the earlier name of sample
    a, b = read_video(tmp_path / "a.gif"), read_video(tmp_path / "b.gif")
    assert a.shape == (3, 2, 16, 16) and torch.equal(a, b)
    assert main(["sample", "--model", str(tmp_path / "missing"), "--text", "x"]) == 2
    assert main(["sample", "--model", str(nuwa_run / "nuwa")]) == 2  # NUWA needs a prompt

    # the earlier name of train-tokenizer still trains a tokenizer
    assert (
        main(
            [
                "train-vae",
                *common,
                "--image-size",
                "16",
                "--dim",
                "8",
                "--num-layers",
                "2",
                "--codebook-size",
                "16",
                "--no-gan",
                "--output-dir",
                str(tmp_path / "vae2"),
            ]
        )
        == 0
    )
    assert (tmp_path / "vae2" / "vae" / "config.json").is_file()
