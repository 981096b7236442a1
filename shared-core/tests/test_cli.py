"""synthesis_core.cli: shared options, exit statuses, device choice and video writing."""
import argparse
import logging

import pytest
import torch

from synthesis_core import cli
from synthesis_core.video import read_video


def make_parser(calls):
    parser = argparse.ArgumentParser(prog="tool")
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train")
    cli.add_dataset_arguments(train)
    cli.add_training_arguments(train, results_folder="results/x", steps=7, lr=1e-3)
    train.set_defaults(func=lambda args: calls.append(cli.training_kwargs(args)) or 0)
    sample = commands.add_parser("sample")
    cli.add_output_arguments(sample, out="a.gif")

    def fail(args):
        raise ValueError(f"--out: cannot write {args.out}")

    sample.set_defaults(func=fail)
    return parser


def test_run_cli_passes_the_options_to_the_command():
    calls = []
    assert cli.run_cli(make_parser(calls), ["train", "--shapes", "3", "--cpu", "--seed", "5"], logging.getLogger("t")) == 0
    assert calls == [dict(batch_size=4, num_train_steps=7, lr=1e-3, grad_accum_every=1, results_folder="results/x",
                          mixed_precision="no", cpu=True, seed=5, save_results_every=500, save_model_every=1000)]


def test_run_cli_turns_bad_input_into_exit_status_2(caplog):
    with caplog.at_level(logging.ERROR):
        assert cli.run_cli(make_parser([]), ["sample", "--out", "x.gif"], logging.getLogger("t")) == 2
    assert "--out: cannot write x.gif" in caplog.text
    with pytest.raises(SystemExit):  # --data and --shapes are mutually exclusive (argparse exits with 2)
        cli.run_cli(make_parser([]), ["train", "--data", "d", "--shapes", "2"], logging.getLogger("t"))


def test_training_options_can_be_left_out():
    parser = argparse.ArgumentParser()
    cli.add_training_arguments(parser, results_folder="r", save_results_every=None, save_model_every=None)
    args = parser.parse_args(["--steps", "3"])
    kwargs = cli.training_kwargs(args)
    assert "save_results_every" not in kwargs and kwargs["num_train_steps"] == 3 and kwargs["cpu"] is None


def test_resolve_device():
    assert cli.resolve_device("cpu") == "cpu"
    assert cli.resolve_device(None) == ("cuda" if torch.cuda.is_available() else "cpu")


def test_write_video_round_trips_through_a_gif(tmp_path):
    videos = torch.zeros(1, 3, 2, 8, 8)
    videos[:, 0, 0] = 1.0  # red first frame, black second
    path = cli.write_video(videos, tmp_path / "deep" / "v.gif", fps=4)
    assert path.is_file()
    back = read_video(path)
    assert back.shape == (3, 2, 8, 8) and torch.allclose(back, videos[0], atol=0.02)
    with pytest.raises(ValueError, match="videos"):
        cli.write_video(torch.zeros(3, 2, 8, 8), tmp_path / "bad.gif")
