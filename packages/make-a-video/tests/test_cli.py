"""The `make-a-video` command line: train a text-conditioned model on a tiny captioned folder and an interpolator,
then sample and interpolate from what they saved."""

import torch

from make_a_video_pytorch import MakeAVideo
from make_a_video_pytorch.cli import main
from synthesis_core.video import read_video

TINY = [
    "--image-size",
    "8",
    "--num-frames",
    "4",
    "--dim",
    "8",
    "--dim-mults",
    "1,2",
    "--depth",
    "1",
    "--heads",
    "2",
    "--dim-head",
    "8",
    "--timesteps",
    "20",
    "--batch-size",
    "2",
    "--steps",
    "1",
    "--device",
    "cpu",
    "--seed",
    "0",
]


def test_train_on_a_folder_then_sample_and_interpolate(tmp_path, captioned_videos, captioned_images, tiny_t5):
    video_run, interp_run = tmp_path / "video", tmp_path / "interp"
    assert (
        main(
            [
                "train",
                *TINY,
                "--data",
                str(captioned_videos),
                "--images",
                str(captioned_images),
                "--text-encoder",
                tiny_t5,
                "--sample-every",
                "1",
                "--sample-text",
                "a red square",
                "--output-dir",
                str(video_run),
            ]
        )
        == 0
    )
    assert (video_run / "sample-1.gif").is_file()
    assert MakeAVideo.from_pretrained(video_run / "model").conditions_on_text
    # --videos is make-a-video's earlier name of --data, --results-folder of --output-dir
    assert (
        main(
            [
                "train",
                *TINY,
                "--videos",
                str(captioned_videos),
                "--text-encoder",
                "none",
                "--interpolator",
                "--temporal-compression-levels",
                "",
                "--results-folder",
                str(interp_run),
            ]
        )
        == 0
    )

    sample = [
        "sample",
        "--model",
        str(video_run / "model"),
        "--text",
        "a red square",
        "--steps",
        "2",
        "--device",
        "cpu",
        "--seed",
        "0",
    ]
    assert main([*sample, "--out", str(tmp_path / "a.gif")]) == 0
    assert main([*sample, "--out", str(tmp_path / "b.gif")]) == 0
    a, b = read_video(tmp_path / "a.gif"), read_video(tmp_path / "b.gif")
    assert a.shape == (3, 4, 8, 8) and torch.equal(a, b)
    assert (
        main(
            [*sample, "--interpolator", str(interp_run / "model"), "--factor", "2", "--out", str(tmp_path / "fast.gif")]
        )
        == 0
    )
    assert read_video(tmp_path / "fast.gif").shape[1] == 8  # 4 sampled frames, interpolated to 8
    # errors are reported, not raised: an interpolator is not a model to sample from
    assert main(["sample", "--model", str(interp_run / "model"), "--out", str(tmp_path / "x.gif")]) == 2
