"""An untrusted model runs no code: crafted model folders and imagen trainer checkpoints, driven through every
load path and every command line that loads one, build nothing and fail with a `CheckpointError` naming the key.

The payloads are the ones of issue #13: a nested `{"__class__": ..., "config": ...}` reaching `subprocess.Popen`
through the attributes of a project module (it ran `sh -c`), and `logging.FileHandler` (it truncated a file).
"""

import importlib
import json
import logging
import os
import pkgutil
import re
import sys

import pytest
import tomllib
import torch
from workspace import ROOT, members  # a tools/ script, on the path through conftest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import imagen_pytorch  # noqa: E402
import make_a_video_pytorch  # noqa: E402
import nuwa_pytorch  # noqa: E402
import phenaki_pytorch  # noqa: E402
import synthesis_core  # noqa: E402
import video_diffusion_pytorch  # noqa: E402
from imagen_pytorch import ImagenConfig, ImagenTrainer, ImagenTrainerConfig, load_imagen_from_checkpoint  # noqa: E402
from imagen_pytorch.configs import imagen_from_checkpoint_data  # noqa: E402
from synthesis_core import checkpoint as ckpt  # noqa: E402
from synthesis_core.checkpoint import (  # noqa: E402
    CheckpointError,
    load_checkpoint,
    load_model_from_folder,
    loadable_classes,
    resolve_loadable,
    save_checkpoint,
)

PACKAGES = [
    synthesis_core,
    imagen_pytorch,
    video_diffusion_pytorch,
    make_a_video_pytorch,
    phenaki_pytorch,
    nuwa_pytorch,
]
PACKAGE_NAMES = {package.__name__ for package in PACKAGES}
POPEN_PATH = "synthesis_core.checks.torch.ctypes.util.subprocess.Popen"
TINY_UNET = dict(
    dim=8, dim_mults=[1, 2], attn_heads=2, attn_dim_head=8, layer_attns=[False, True], layer_cross_attns=False
)


@pytest.fixture
def payload(tmp_path):
    """The two payloads; on teardown: the marker file was not created and the victim file kept its content."""
    marker = tmp_path / "pwned"
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    payloads = {
        "popen": {"__class__": POPEN_PATH, "config": {"args": ["sh", "-c", f"touch {marker}"]}},
        "file_handler": {"__class__": "logging.FileHandler", "config": {"filename": str(victim), "mode": "w"}},
    }
    yield payloads
    assert not marker.exists(), "a crafted file ran a command"
    assert victim.read_text() == "precious", "a crafted file truncated another file"


def project_classes() -> dict[str, type]:
    return {name: cls for name, cls in loadable_classes().items() if cls.__module__.split(".")[0] in PACKAGE_NAMES}


def is_test_class(cls: type) -> bool:
    # other test modules of the same session register their own small models
    return any(part.startswith("test_") for part in cls.__module__.split("."))


def first_parameter(cls: type) -> str:
    """The first parameter a config may give (for a preset: the first one of the unet it passes **kwargs to)."""
    return next(iter(ckpt.constructor_parameters(cls)))


def write_folder(folder, class_name: str, config: dict):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"class": class_name, "version": None, "config": config}))
    save_checkpoint(folder / "model.safetensors", {"w": torch.zeros(1)})
    return folder


def crafted_folders(tmp_path, class_name: str, cls: type, payloads: dict) -> list[tuple[object, str]]:
    """(folder, the key path the error must name): the payload in a real parameter, under an unknown key, nested
    in a list, and as the folder's own class."""
    real = first_parameter(cls)
    out = []
    for kind, payload in payloads.items():
        base = tmp_path / cls.__qualname__ / kind
        out += [
            (write_folder(base / "real", class_name, {real: payload}), f"config[{real!r}]['__class__']"),
            (write_folder(base / "unknown", class_name, {"evil": payload}), "config['evil']"),
            (write_folder(base / "list", class_name, {real: [1, payload]}), f"config[{real!r}][1]['__class__']"),
            (write_folder(base / "top", payload["__class__"], payload["config"]), "['class']"),
        ]
    return out


def assert_refused(where: str, source, call, /, *args, **kwargs):
    """`call(*args, **kwargs)` raises a CheckpointError naming `where` (and `source` unless it is None)."""
    with pytest.raises(CheckpointError) as info:
        call(*args, **kwargs)
    message = str(info.value)
    assert where in message, message
    if source is not None:
        assert str(source) in message, message


def test_every_registered_class_is_a_project_model():
    classes = {name: cls for name, cls in loadable_classes().items() if not is_test_class(cls)}
    assert set(project_classes()) == set(classes)  # nothing from the standard library, torch or transformers
    for name, cls in classes.items():
        assert issubclass(cls, ckpt.PretrainedMixin) and resolve_loadable(name) is cls
    expected = {
        "Unet",
        "Imagen",
        "ElucidatedImagen",
        "NullUnet",
        "GaussianDiffusion",
        "Unet3D",
        "MakeAVideo",
        "SpaceTimeUnet",
        "FrameInterpolator",
        "Phenaki",
        "CViViT",
        "MaskGit",
        "TokenCritic",
        "NUWA",
        "VQGanVAE",
        "SimpleTextEncoder",
    }
    assert expected <= {cls.__name__ for cls in classes.values()}


def test_each_package_declares_its_entry_point():
    for member in members():
        project = tomllib.loads((ROOT / member.path / "pyproject.toml").read_text())["project"]
        entries = project.get("entry-points", {}).get(ckpt.ENTRY_POINT_GROUP, {})
        assert entries, member.path
        for module in entries.values():
            assert module.split(".")[0] in PACKAGE_NAMES and importlib.import_module(module)


@pytest.mark.parametrize("class_name", sorted(project_classes()))
def test_crafted_folders_fail_on_every_load_path(class_name, tmp_path, payload):
    cls = project_classes()[class_name]
    for folder, where in crafted_folders(tmp_path, class_name, cls, payload):
        source = folder / "config.json"
        assert_refused(where, source, load_model_from_folder, folder)
        assert_refused(where, source, cls.from_pretrained, folder)
        if where != "['class']":
            config = json.loads(source.read_text())["config"]
            assert_refused(where, None, cls.from_config, config)
            assert_refused(where, source, ckpt.instantiate_from_config, cls, config, source=str(source))


def test_crafted_folders_fail_in_every_command_line(tmp_path, payload, caplog):
    from make_a_video_pytorch.cli import main as make_a_video_main
    from nuwa_pytorch.cli import main as nuwa_main
    from phenaki_pytorch.cli import main as phenaki_main

    def folders(cls):
        return crafted_folders(tmp_path, ckpt.class_path(cls), cls, payload)

    runs = []
    for folder, where in folders(phenaki_pytorch.Phenaki):
        runs.append((phenaki_main, ["sample", "--model", str(folder), "--text", "a red square"], where))
    for folder, where in folders(phenaki_pytorch.CViViT):
        runs.append(
            (
                phenaki_main,
                ["train", "--tokenizer", str(folder), "--shapes", "2", "--results-folder", str(tmp_path / "r")],
                where,
            )
        )
    for folder, where in folders(make_a_video_pytorch.MakeAVideo):
        runs.append((make_a_video_main, ["sample", "--model", str(folder), "--out", str(tmp_path / "v.gif")], where))
        runs.append(
            (
                make_a_video_main,
                ["train", "--init-from", str(folder), "--shapes", "2", "--results-folder", str(tmp_path / "r")],
                where,
            )
        )
    for folder, where in folders(nuwa_pytorch.NUWA):
        runs.append(
            (nuwa_main, ["generate", "--model", str(folder), "--text", "a", "--out", str(tmp_path / "v.gif")], where)
        )
    for folder, where in folders(nuwa_pytorch.VQGanVAE):
        runs.append(
            (
                nuwa_main,
                ["train", "--vae", str(folder), "--shapes", "2", "--results-folder", str(tmp_path / "r")],
                where,
            )
        )

    # the interpolator is loaded after sampling from a good model
    from make_a_video_pytorch import MakeAVideo, SpaceTimeUnet

    good = MakeAVideo(
        SpaceTimeUnet(
            dim=8,
            dim_mults=(1, 2),
            self_attns=False,
            temporal_compression=False,
            resnet_block_depths=1,
            attn_dim_head=8,
            attn_heads=2,
        ),
        image_size=8,
        num_frames=2,
        timesteps=10,
        sample_steps=1,
    )
    good.save_pretrained(tmp_path / "good")
    for folder, where in folders(make_a_video_pytorch.FrameInterpolator):
        runs.append(
            (
                make_a_video_main,
                [
                    "sample",
                    "--model",
                    str(tmp_path / "good"),
                    "--interpolator",
                    str(folder),
                    "--steps",
                    "1",
                    "--out",
                    str(tmp_path / "v.gif"),
                ],
                where,
            )
        )

    for main, argv, where in runs:
        caplog.clear()
        with caplog.at_level(logging.ERROR):
            assert main(argv) == 2, argv
        assert where in caplog.text, (argv, caplog.text)


# ---------------------------------------------------------------------------------------------------------------
# imagen trainer checkpoints (safetensors with the cascade's config in the metadata)


def crafted_imagen_configs(payloads: dict) -> list[tuple[dict, str]]:
    """(the imagen config of a checkpoint, the key path the error must name)."""

    def cascade(unets, **extra):
        return {
            "type": "original",
            "unets": unets,
            "image_sizes": [8, 16],
            "text_embed_dim": 16,
            "condition_on_text": False,
            **extra,
        }

    out = []
    for payload in payloads.values():
        out += [
            # issue #13: a NullUnet with an extra key that from_config rebuilt when the cascade cast the unet
            (cascade([{"unet_type": "NullUnet", "payload": payload}, TINY_UNET]), "['unets'][0]['payload']"),
            (
                cascade([{"unet_type": "NullUnet", "channels": payload}, TINY_UNET]),
                "['unets'][0]['channels']['__class__']",
            ),
            (
                cascade([TINY_UNET, {**TINY_UNET, "dim_mults": [1, payload]}]),
                "['unets'][1]['dim_mults'][1]['__class__']",
            ),
            (cascade([{**TINY_UNET, "unet_type": payload["__class__"]}, TINY_UNET]), "['unets'][0]['unet_type']"),
            (cascade([{"unet_type": "BaseUnet64", "dim": 8, "evil": payload}, TINY_UNET]), "['unets'][0]['evil']"),
            (cascade([TINY_UNET, TINY_UNET], image_sizes=payload), "['image_sizes']['__class__']"),
            (cascade(payload), "['unets']"),
        ]
    return out


def test_crafted_imagen_checkpoints_fail_on_every_load_path(tmp_path, payload, caplog):
    from imagen_pytorch.cli import main as imagen_main

    for index, (imagen, where) in enumerate(crafted_imagen_configs(payload)):
        path = tmp_path / f"crafted-{index}.safetensors"
        save_checkpoint(path, {"model.unet2.w": torch.zeros(1)}, {"config": {"imagen": imagen}, "models": {}})
        full_where = "config['imagen']" + where
        assert_refused(full_where, path, load_imagen_from_checkpoint, path)
        assert_refused(full_where, path, load_imagen_from_checkpoint, path, load_weights=False)
        assert_refused(full_where, path, ImagenTrainer, imagen_checkpoint_path=path)
        tensors, metadata = load_checkpoint(path)
        assert_refused(full_where, path, imagen_from_checkpoint_data, tensors, metadata, source=str(path))
        caplog.clear()
        with caplog.at_level(logging.ERROR):
            assert imagen_main(["sample", "--model", str(path), "a caption"]) == 2
        assert full_where in caplog.text, caplog.text

        # the same cascade as a config file, and inside a trainer config file (what `imagen train` reads)
        config_path = tmp_path / f"imagen-{index}.json"
        config_path.write_text(json.dumps({k: v for k, v in imagen.items() if k != "type"}))
        assert_refused("config" + where, config_path, ImagenConfig.load, config_path)
        trainer_path = tmp_path / f"trainer-{index}.json"
        trainer_path.write_text(json.dumps({"imagen": imagen, "checkpoint_path": None, "checkpoint_every": None}))
        assert_refused(full_where, trainer_path, ImagenTrainerConfig.load, trainer_path)
        caplog.clear()
        with caplog.at_level(logging.ERROR):
            assert imagen_main(["train", "--config", str(trainer_path)]) == 2
        assert full_where in caplog.text, caplog.text


# ---------------------------------------------------------------------------------------------------------------
# class paths through every module attribute


def project_modules() -> list:
    modules = []
    for package in PACKAGES:
        modules.append(package)
        for info in pkgutil.walk_packages(package.__path__, prefix=package.__name__ + "."):
            if info.name.endswith("__main__"):
                continue
            try:
                modules.append(importlib.import_module(info.name))
            except ImportError:  # an optional dependency that is not installed: its module holds no model
                continue
    return modules


def test_class_paths_through_module_attributes_are_refused_without_importing():
    registered = loadable_classes()  # entry points loaded once, up front
    suffixes = [
        "subprocess.Popen",
        "os.system",
        "os.popen",
        "builtins.eval",
        "builtins.exec",
        "logging.FileHandler",
        "pathlib.Path",
        "sys.modules",
        "importlib.import_module",
        "ctypes.util.subprocess.Popen",
        "torch.ctypes.util.subprocess.Popen",
    ]
    names = [f"{prefix}.{suffix}" for prefix in ("", "torch", "transformers") for suffix in suffixes]
    names = [name.lstrip(".") for name in names]
    count = 0
    for module in project_modules():
        # dir(): also the lazily exported names of synthesis_core
        for attr in sorted(set(dir(module)) | set(vars(module))):
            stem = f"{module.__name__}.{attr}"
            names += [stem] + [f"{stem}.{suffix}" for suffix in suffixes]
            count += 1
    assert count > 500  # the walk did reach the modules
    names = [name for name in names if name not in registered]
    before = set(sys.modules)

    def no_import(*args, **kwargs):
        raise AssertionError(f"an import was attempted: {args[:1]}")

    outcomes = []
    real_import_module = importlib.import_module
    importlib.import_module = no_import
    try:
        for name in names:
            try:
                outcomes.append((name, resolve_loadable(name, source="crafted.json")))
            except CheckpointError as err:
                outcomes.append((name, err))
    finally:
        importlib.import_module = real_import_module
    accepted = [(name, outcome) for name, outcome in outcomes if not isinstance(outcome, CheckpointError)]
    assert accepted == []
    assert set(sys.modules) == before
    for _, outcome in outcomes[:50]:
        assert re.search(r"names the class .* which no installed package registered", str(outcome))


# ---------------------------------------------------------------------------------------------------------------
# what good files still do


def test_saved_models_still_load(tmp_path):
    from imagen_pytorch import BaseUnet64, Unet

    unet = Unet(**TINY_UNET)
    unet.save_pretrained(tmp_path / "unet")
    loaded = Unet.from_pretrained(tmp_path / "unet")
    assert loaded.config == unet.config and loaded.missing_config_keys == ()
    assert all(torch.equal(a, b) for a, b in zip(unet.state_dict().values(), loaded.state_dict().values()))
    preset = BaseUnet64(dim=8, dim_mults=(1, 2), attn_heads=2, attn_dim_head=8)
    assert preset.config["layer_attns"] == [True, True] and "text_embed_dim" in preset.config  # presets save all
    preset.save_pretrained(tmp_path / "preset")
    again = load_model_from_folder(tmp_path / "preset")
    assert type(again) is BaseUnet64 and again.config == preset.config and again.missing_config_keys == ()
