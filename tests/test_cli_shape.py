"""One command-line shape: every package's command has `train` and `sample` (and `train-tokenizer` where the model
has two stages), and each lists the same common options (`synthesis_core.cli`) for the same things."""

import importlib
import re

import pytest

from synthesis_core.cli import COMMON_SAMPLING_OPTIONS, COMMON_TRAINING_OPTIONS

# package -> its training commands (the tokenizer first where there are two stages)
TRAINING_COMMANDS = {
    "imagen_pytorch": ("train",),
    "video_diffusion_pytorch": ("train",),
    "make_a_video_pytorch": ("train",),
    "phenaki_pytorch": ("train-tokenizer", "train"),
    "nuwa_pytorch": ("train-tokenizer", "train"),
}
# the names the commands had before, kept as aliases
OLD_NAMES = {"nuwa_pytorch": {"train-vae": "train-tokenizer", "generate": "sample"}}


def help_text(package: str, command: str, capsys) -> str:
    main = importlib.import_module(f"{package}.cli").main
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    return capsys.readouterr().out


def listed_options(text: str) -> set[str]:
    return set(re.findall(r"(?<![\w-])--[a-z][a-z0-9_-]*", text))


@pytest.mark.parametrize("package", sorted(TRAINING_COMMANDS))
def test_every_command_lists_the_common_options(package, capsys):
    for command in TRAINING_COMMANDS[package]:
        missing = set(COMMON_TRAINING_OPTIONS) - listed_options(help_text(package, command, capsys))
        assert not missing, f"{package} {command}: {sorted(missing)}"
    missing = set(COMMON_SAMPLING_OPTIONS) - listed_options(help_text(package, "sample", capsys))
    assert not missing, f"{package} sample: {sorted(missing)}"


@pytest.mark.parametrize("package", sorted(OLD_NAMES))
def test_old_command_names_are_aliases(package, capsys):
    for old, new in OLD_NAMES[package].items():
        assert listed_options(help_text(package, old, capsys)) == listed_options(help_text(package, new, capsys))


def test_the_packages_share_one_set_of_training_options(capsys):
    """Beyond the required ones: an option that two packages' `train` both have is spelled the same way."""
    spellings = {package: listed_options(help_text(package, "train", capsys)) for package in TRAINING_COMMANDS}
    shared = set.intersection(*spellings.values())
    assert set(COMMON_TRAINING_OPTIONS) <= shared
    for other in ("--grad-accum-every", "--mixed-precision", "--save-every", "--sample-every", "--sample-text"):
        assert other in shared, other
