"""synthesis_core.cli: the common options, exit statuses, device choice, the shared sample command and video writing."""

import argparse
import logging

import pytest
import torch
from torch import nn

from synthesis_core import cli
from synthesis_core.video import read_video


def make_parser(calls):
    parser, commands = cli.command_parser("tool", "A tool.\n\nMore.")
    train = cli.add_command(
        commands, "train", lambda args: calls.append(cli.training_kwargs(args)) or 0, "train", aliases=("fit",)
    )
    cli.add_dataset_arguments(train)
    cli.add_training_arguments(train, output_dir="results/x", steps=7, lr=1e-3)

    def fail(args):
        raise ValueError(f"--out: cannot write {args.out}")

    sample = cli.add_command(commands, "sample", fail, "sample")
    cli.add_sample_arguments(sample)
    return parser


def test_run_cli_passes_the_options_to_the_command():
    calls = []
    parser = make_parser(calls)
    assert cli.run_cli(parser, ["train", "--shapes", "3", "--cpu", "--seed", "5"], logging.getLogger("t")) == 0
    assert calls == [
        dict(
            batch_size=4,
            num_train_steps=7,
            lr=1e-3,
            grad_accum_every=1,
            results_folder="results/x",
            mixed_precision="no",
            cpu=True,
            seed=5,
            resume=None,
            save_every=1000,
            sample_every=500,
            sample_texts=None,
        )
    ]
    # the old spellings and the command alias reach the same options
    assert (
        cli.run_cli(
            parser,
            [
                "fit",
                "--data",
                "d",
                "--results-folder",
                "r",
                "--save-model-every",
                "3",
                "--save-results-every",
                "2",
                "--device",
                "cuda",
                "--sample-text",
                "a",
                "--sample-text",
                "b",
                "--resume",
                "latest",
            ],
            logging.getLogger("t"),
        )
        == 0
    )
    expected = dict(
        results_folder="r", save_every=3, sample_every=2, cpu=False, sample_texts=["a", "b"], resume="latest"
    )
    assert {key: calls[-1][key] for key in expected} == expected


def test_trainer_keyword_names_of_the_periods():
    parser = argparse.ArgumentParser()
    cli.add_training_arguments(parser, output_dir="r", save_every=None, sample_text=False)
    kwargs = cli.training_kwargs(
        parser.parse_args(["--steps", "3", "--sample-every", "9"]), sample_every="save_results_every"
    )
    assert kwargs["num_train_steps"] == 3 and kwargs["save_results_every"] == 9 and kwargs["cpu"] is None
    assert "save_every" not in kwargs and "sample_texts" not in kwargs
    config_parser = argparse.ArgumentParser()
    cli.add_training_arguments(config_parser, output_dir="r", from_config=True)
    args = config_parser.parse_args([])
    assert args.output_dir is None and args.lr is None and args.mixed_precision is None  # the config decides
    with pytest.raises(ValueError, match="--device"):
        cli.training_kwargs(parser.parse_args(["--device", "meta"]))


def test_run_cli_turns_bad_input_into_exit_status_2(caplog):
    with caplog.at_level(logging.ERROR):
        assert cli.run_cli(make_parser([]), ["sample", "--model", "m", "--out", "x.gif"], logging.getLogger("t")) == 2
    assert "--out: cannot write x.gif" in caplog.text
    with pytest.raises(SystemExit):  # --data and --shapes are mutually exclusive (argparse exits with 2)
        cli.run_cli(make_parser([]), ["train", "--data", "d", "--shapes", "2"], logging.getLogger("t"))


def test_output_path_follows_out_and_format():
    parser = argparse.ArgumentParser()
    cli.add_output_arguments(parser)
    path = lambda *argv: cli.output_path(parser.parse_args(list(argv)))  # noqa: E731
    assert str(path()) == "sample.gif"
    assert str(path("--format", "mp4")) == "sample.mp4"
    assert str(path("--out", "a/b.png")) == "a/b.png"
    assert str(path("--out", "a/b", "--format", "png")) == "a/b.png"
    assert str(path("--out", "frames")) == "frames"  # a folder of frames
    with pytest.raises(ValueError, match="--format"):
        path("--out", "a.gif", "--format", "mp4")


class FlatVideos(nn.Module):
    """The protocol's sample entry on a model that makes flat grey videos from its generator's noise."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(()))
        self.calls = []

    def sample(
        self, texts=None, batch_size=None, num_frames=2, cond_scale=1.0, steps=None, generator=None, progress=True
    ):
        self.calls.append(
            dict(texts=texts, batch_size=batch_size, num_frames=num_frames, cond_scale=cond_scale, steps=steps)
        )
        batch = batch_size or (len(texts) if texts else 1)
        level = torch.rand(batch, 1, 1, 1, 1, generator=generator)
        return level.expand(batch, 3, num_frames, 4, 4)


def test_sample_and_write_drives_the_protocol(tmp_path):
    parser = argparse.ArgumentParser()
    cli.add_sample_arguments(parser, cond_scale=2.5)
    model = FlatVideos()
    args = parser.parse_args(
        [
            "--model",
            "m",
            "--text",
            "a",
            "--text",
            "b",
            "--num-frames",
            "3",
            "--seed",
            "4",
            "--out",
            str(tmp_path / "a.gif"),
        ]
    )
    assert cli.sample_and_write(model, args) == 0
    assert model.calls[-1] == dict(texts=["a", "b"], batch_size=None, num_frames=3, cond_scale=2.5, steps=None)
    again = parser.parse_args(
        [
            "--model",
            "m",
            "--text",
            "a",
            "--text",
            "b",
            "--num-frames",
            "3",
            "--seed",
            "4",
            "--out",
            str(tmp_path / "b.gif"),
        ]
    )
    cli.sample_and_write(model, again)
    assert torch.equal(read_video(tmp_path / "a.gif"), read_video(tmp_path / "b.gif"))  # the seed fixes the noise
    unconditional = parser.parse_args(["--model", "m", "--steps", "5", "--out", str(tmp_path / "c.png")])
    cli.sample_and_write(model, unconditional, steps=None)
    assert model.calls[-1]["batch_size"] == 1 and model.calls[-1]["steps"] == 5 and model.calls[-1]["texts"] is None


def test_load_model_goes_through_the_registry_and_checks_the_class(tmp_path):
    from synthesis_core.checkpoint import CheckpointError

    with pytest.raises((FileNotFoundError, CheckpointError, ValueError)):
        cli.load_model(tmp_path / "missing", nn.Module)
    with pytest.raises(ValueError, match="--text-encoder: this model encodes no text"):
        cli.replace_text_encoder(nn.Module(), "t5")
    cli.replace_text_encoder(nn.Module(), None)  # nothing asked, nothing done


def test_int_list_and_resolve_device():
    assert cli.int_list("1,2,4") == (1, 2, 4) and cli.int_list("") == ()
    with pytest.raises(argparse.ArgumentTypeError):
        cli.int_list("1,x")
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
