"""The `video-diffusion` command line: train on a tiny captioned folder, resume, then sample from what it saved."""

import torch

from synthesis_core.testing import write_moving_gif
from synthesis_core.video import read_video
from video_diffusion_pytorch import GaussianDiffusion
from video_diffusion_pytorch.cli import main

MODEL = [
    "--image-size",
    "8",
    "--num-frames",
    "3",
    "--dim",
    "8",
    "--dim-mults",
    "1,2",
    "--heads",
    "2",
    "--dim-head",
    "8",
    "--timesteps",
    "10",
    "--num-sample-rows",
    "1",
]


def test_train_resume_then_sample(tmp_path, tiny_bert, captions):
    data = tmp_path / "videos"
    data.mkdir()
    for k, caption in enumerate(captions):
        write_moving_gif(data / f"{k}.gif", 3, 8, k)
        (data / f"{k}.txt").write_text(caption)
    run = tmp_path / "run"
    train = [
        "train",
        "--data",
        str(data),
        *MODEL,
        "--text-encoder",
        tiny_bert,
        "--batch-size",
        "2",
        "--lr",
        "1e-3",
        "--save-every",
        "1",
        "--sample-every",
        "2",
        "--device",
        "cpu",
        "--seed",
        "0",
        "--output-dir",
        str(run),
    ]
    assert main([*train, "--steps", "2"]) == 0
    assert (run / "sample-1.gif").is_file() and (run / "checkpoint-00000002.safetensors").is_file()
    assert main([*train, "--steps", "3", "--resume", "latest"]) == 0  # goes on from step 2
    assert (run / "checkpoint-00000003.safetensors").is_file()
    model = GaussianDiffusion.from_pretrained(run / "diffusion")
    assert model.model.text_encoder is not None  # it trained text-conditioned on the captions

    sample = [
        "sample",
        "--model",
        str(run / "diffusion"),
        "--text",
        captions[0],
        "--cond-scale",
        "2",
        "--steps",
        "2",
        "--device",
        "cpu",
    ]
    assert main([*sample, "--seed", "1", "--out", str(tmp_path / "a.gif")]) == 0
    assert main([*sample, "--seed", "1", "--out", str(tmp_path / "b.gif")]) == 0
    assert main([*sample, "--seed", "2", "--out", str(tmp_path / "c.gif")]) == 0
    a, b, c = (read_video(tmp_path / f"{name}.gif") for name in "abc")
    assert a.shape == (3, 3, 8, 8) and torch.equal(a, b) and not torch.equal(a, c)  # --seed makes it reproducible
    assert main([*sample, "--batch-size", "2", "--format", "png", "--out", str(tmp_path / "sheet")]) == 0
    assert (tmp_path / "sheet.png").is_file()
    assert main([*sample, "--format", "mp4", "--out", str(tmp_path / "x.gif")]) == 2  # format and suffix disagree
    assert main(["sample", "--model", str(tmp_path / "missing"), "--device", "cpu"]) == 2
