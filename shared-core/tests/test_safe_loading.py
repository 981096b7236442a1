"""A stored config is untrusted data: only registered classes are rebuilt, keys must be real constructor
parameters, nothing is constructed before the whole config is checked, and loading reports what it filled in."""

import builtins
import importlib
import importlib.metadata
import json
import logging
import re
from pathlib import Path

import pytest
import torch
from torch import nn

from synthesis_core import checkpoint as ckpt
from synthesis_core.checkpoint import (
    CheckpointError,
    PretrainedMixin,
    check_config,
    constructor_parameters,
    instantiate_from_config,
    load_model_from_folder,
    loadable_classes,
    register_loadable,
    resolve_loadable,
)

__version__ = "0.0.0"

BUILT: list[str] = []  # constructor calls of the classes below, to prove nothing was built before a refusal


@register_loadable
class Leaf(PretrainedMixin, nn.Module):
    def __init__(self, dim: int, mult: int = 2, dtype: torch.dtype = torch.float32):
        super().__init__()
        BUILT.append("Leaf")
        self.proj = nn.Linear(dim, dim * mult, dtype=dtype)


@register_loadable
class Holder(PretrainedMixin, nn.Module):
    def __init__(self, child: nn.Module, others=(), *, timesteps: int = 1000, note: str = "x"):
        super().__init__()
        BUILT.append("Holder")
        self.child = child
        self.others = nn.ModuleList(others)
        self.timesteps = timesteps


@register_loadable
class Sink(PretrainedMixin, nn.Module):
    """A `**kwargs` that is not declared as forwarded: it takes no key from a file."""

    def __init__(self, dim: int = 2, **kwargs):
        super().__init__()
        BUILT.append("Sink")
        self.kwargs = kwargs


class Preset(Leaf):
    """Passes its **kwargs on to Leaf with its own values for some of them (like imagen's BaseUnet64)."""

    def __init__(self, *, flavour: str = "plain", **kwargs):
        super().__init__(**{"dim": 3, "mult": 4, **kwargs})
        self.flavour = flavour


register_loadable(Preset, forwards_kwargs_to=Leaf)


@register_loadable(name="tests.safe_loading.Renamed")
class Renamed(PretrainedMixin, nn.Module):
    def __init__(self, dim: int = 2):
        super().__init__()
        self.proj = nn.Linear(dim, dim)


def write_folder(folder: Path, cls_name: str, config: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"class": cls_name, "version": __version__, "config": config}))
    return folder


@pytest.fixture
def payloads(tmp_path):
    marker = tmp_path / "pwned"
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    popen = {
        "__class__": "synthesis_core.checks.torch.ctypes.util.subprocess.Popen",
        "config": {"args": ["sh", "-c", f"touch {marker}"]},
    }
    file_handler = {"__class__": "logging.FileHandler", "config": {"filename": str(victim), "mode": "w"}}
    yield {"popen": popen, "file_handler": file_handler}
    assert not marker.exists(), "the crafted config ran a command"
    assert victim.read_text() == "precious", "the crafted config truncated a file"


@pytest.fixture(autouse=True)
def _clear_built():
    BUILT.clear()


def test_register_loadable_checks_its_arguments():
    with pytest.raises(TypeError, match="cls"):
        register_loadable(nn.Linear)
    with pytest.raises(TypeError, match="cls"):
        register_loadable("logging.FileHandler")
    with pytest.raises(ValueError, match="already registered"):
        register_loadable(Holder, name=ckpt.class_path(Leaf))
    with pytest.raises(ValueError, match="forwards_kwargs_to"):
        register_loadable(Leaf, forwards_kwargs_to=Holder)  # Leaf takes no **kwargs
    with pytest.raises(TypeError, match="name"):
        register_loadable(Leaf, name="")
    assert register_loadable(Leaf) is Leaf  # registering again is harmless
    assert loadable_classes()[ckpt.class_path(Leaf)] is Leaf


def test_lookup_is_exact_and_imports_nothing():
    loadable_classes()  # the entry points of the installed distributions are loaded once, up front

    def no_import(*args, **kwargs):
        raise AssertionError(f"an import was attempted: {args[:1]}")

    names = [
        "subprocess.Popen",
        "os.system",
        "builtins.eval",
        "logging.FileHandler",
        "pathlib.Path",
        "torch.nn.Linear",
        "transformers.AutoModel",
        "synthesis_core.checks.torch.ctypes.util.subprocess.Popen",
        "synthesis_core.checkpoint.os.system",
        "synthesis_core.checkpoint.PretrainedMixin",
        f"{__name__}.Leaf.__init__.__globals__",
        f"{__name__}.Leaf.",
        f" {__name__}.Leaf",
        f"{__name__}.leaf",
        "definitely_not_a_module_xyz.Model",
        "",
    ]
    outcomes = []
    real_import, real_import_module = builtins.__import__, importlib.import_module
    # patched by hand and only around the lookups: pytest itself imports lazily
    importlib.import_module = no_import
    builtins.__import__ = no_import
    try:
        for name in [*names, None, 3, ["subprocess.Popen"], {"a": 1}]:
            try:
                outcomes.append((name, resolve_loadable(name, source="f.json", where="['class']")))
            except Exception as err:  # noqa: BLE001 (the test inspects the type below)
                outcomes.append((name, err))
    finally:
        builtins.__import__, importlib.import_module = real_import, real_import_module
    for name, outcome in outcomes:
        assert isinstance(outcome, CheckpointError), (name, outcome)
        assert "f.json" in str(outcome) and ("registered" in str(outcome) or "class name" in str(outcome))
    assert resolve_loadable(f"{__name__}.Leaf") is Leaf
    assert resolve_loadable("tests.safe_loading.Renamed") is Renamed


def test_nested_payloads_are_refused_before_anything_is_built(tmp_path, payloads):
    for name, payload in payloads.items():
        # in a real parameter, in a list, in a plain dict, and under a key the constructor does not have
        configs = {
            "config['child']['__class__']": {"child": payload},
            "config['others'][1]['__class__']": {
                "child": {"__class__": f"{__name__}.Leaf", "config": {"dim": 2}},
                "others": [{"__class__": f"{__name__}.Leaf", "config": {"dim": 2}}, payload],
            },
            "config['note']['deep']['__class__']": {"child": None, "note": {"deep": payload}},
            "config['evil']": {"child": None, "evil": payload},
        }
        for index, (where, config) in enumerate(configs.items()):
            folder = write_folder(tmp_path / f"{name}{index}", f"{__name__}.Holder", config)
            for load in (load_model_from_folder, Holder.from_pretrained):
                with pytest.raises(CheckpointError) as info:
                    load(folder)
                assert where in str(info.value) and str(folder / "config.json") in str(info.value)
            with pytest.raises(CheckpointError, match=f"^{re.escape(where)}"):
                Holder.from_config(config)
            assert BUILT == [], "a constructor ran before the whole config was checked"
        # the payload as the folder's own class
        folder = write_folder(tmp_path / f"{name}-top", payload["__class__"], payload["config"])
        with pytest.raises(CheckpointError, match=r"\['class'\]"):
            load_model_from_folder(folder)
        with pytest.raises(CheckpointError, match=r"\['class'\]"):
            Holder.from_pretrained(folder)


def test_keys_must_be_named_constructor_parameters(tmp_path):
    with pytest.raises(CheckpointError, match=r"config\['anything'\] in .* not a parameter of Sink"):
        load_model_from_folder(write_folder(tmp_path / "sink", f"{__name__}.Sink", {"dim": 2, "anything": 1}))
    with pytest.raises(CheckpointError, match=r"config\['child'\]\['config'\]\['bogus'\]"):
        Holder.from_config({"child": {"__class__": f"{__name__}.Leaf", "config": {"dim": 2, "bogus": 1}}})
    with pytest.raises(CheckpointError, match=r"exactly \{'__class__'"):
        Holder.from_config({"child": {"__class__": f"{__name__}.Leaf", "config": {"dim": 2}, "extra": 1}})
    with pytest.raises(CheckpointError, match="lacks 'child'"):
        Holder.from_config({"timesteps": 3})
    with pytest.raises(CheckpointError, match="expected a dict"):
        Holder.from_config({"child": {"__class__": f"{__name__}.Leaf", "config": [1]}})
    with pytest.raises(TypeError, match="overrides"):
        instantiate_from_config(Leaf, {"dim": 2}, overrides={"bogus": 1})
    assert BUILT == []
    # a forwarded **kwargs accepts the receiving class's parameters, and only those
    assert set(constructor_parameters(Preset)) == {"flavour", "dim", "mult", "dtype"}
    assert Preset.from_config({"flavour": "x", "mult": 1}).proj.out_features == 3
    with pytest.raises(CheckpointError, match=r"config\['nope'\]"):
        Preset.from_config({"nope": 1})


def test_dtypes_come_from_a_fixed_list():
    leaf = Leaf(2, dtype=torch.float16)
    assert leaf.config["dtype"] == {"__dtype__": "float16"}
    assert Leaf.from_config(leaf.config).proj.weight.dtype == torch.float16
    for bad in ({"__dtype__": "Tensor"}, {"__dtype__": "ops"}, {"__dtype__": "float16", "x": 1}, {"__dtype__": 3}):
        with pytest.raises(CheckpointError, match=r"config\['dtype'\]\['__dtype__'\]"):
            Leaf.from_config({"dim": 2, "dtype": bad})


def test_malformed_documents_are_checkpoint_errors(tmp_path):
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_model_from_folder(folder)
    (folder / "config.json").write_text(json.dumps({"class": ["subprocess.Popen"], "config": {}}))
    with pytest.raises(CheckpointError, match="class name"):
        load_model_from_folder(folder)
    (folder / "config.json").write_text(json.dumps({"class": f"{__name__}.Leaf", "config": []}))
    with pytest.raises(CheckpointError, match="not a config written by save_pretrained"):
        load_model_from_folder(folder)
    with pytest.raises(CheckpointError, match="dict keys must be strings|not JSON data"):
        check_config(Holder, {"child": None, "note": {1: 2}})
    with pytest.raises(CheckpointError, match="not JSON data"):
        check_config(Holder, {"child": None, "note": object()})
    with pytest.raises(CheckpointError, match="plain JSON data"):
        check_config(Holder, {"child": {"__class__": f"{__name__}.Leaf", "config": {"dim": 2}}}, allow_classes=False)


def test_every_argument_is_saved_and_a_missing_one_is_reported(tmp_path, caplog):
    model = Holder(Leaf(4), timesteps=10)
    assert model.config["timesteps"] == 10 and model.config["note"] == "x"  # defaults are saved too
    assert model.config["child"]["config"] == {"dim": 4, "mult": 2, "dtype": {"__dtype__": "float32"}}
    model.save_pretrained(tmp_path / "m")
    with caplog.at_level(logging.WARNING, logger="synthesis_core.checkpoint"):
        loaded = Holder.from_pretrained(tmp_path / "m")
    assert loaded.timesteps == 10 and loaded.missing_config_keys == () and "lacks" not in caplog.text

    document = json.loads((tmp_path / "m" / "config.json").read_text())
    del document["config"]["timesteps"]
    del document["config"]["child"]["config"]["mult"]
    (tmp_path / "m" / "config.json").write_text(json.dumps(document))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="synthesis_core.checkpoint"):
        loaded = load_model_from_folder(tmp_path / "m")
    assert loaded.missing_config_keys == ("child.mult", "timesteps")
    assert loaded.child.missing_config_keys == ("mult",)
    assert loaded.timesteps == 1000  # today's default, and said so
    warning = caplog.text
    assert "timesteps=1000" in warning and "child.mult=2" in warning and str(tmp_path / "m") in warning
    # an override is not missing
    assert Holder.from_pretrained(tmp_path / "m", timesteps=7).missing_config_keys == ("child.mult",)
    assert Leaf(2).missing_config_keys == ()  # built in code: nothing was filled in


@register_loadable(name="tests.safe_loading.Grown")
class Grown(PretrainedMixin, nn.Module):
    """A model that gained an argument whose default adds weights: files from before it mean `extra=False`."""

    config_defaults_for_older_files = {"extra": False}

    def __init__(self, dim: int = 2, extra: bool = True):
        super().__init__()
        self.proj = nn.Linear(dim, dim)
        self.extra = nn.Linear(dim, dim) if extra else None


def test_an_argument_added_later_loads_older_files_as_the_model_they_describe(tmp_path, caplog):
    old = Grown(3, extra=False)
    old.save_pretrained(tmp_path / "old")
    document = json.loads((tmp_path / "old" / "config.json").read_text())
    del document["config"]["extra"]  # as written before the argument existed
    (tmp_path / "old" / "config.json").write_text(json.dumps(document))
    with caplog.at_level(logging.WARNING, logger="synthesis_core.checkpoint"):
        loaded = load_model_from_folder(tmp_path / "old")
    assert loaded.extra is None and loaded.missing_config_keys == ("extra",)
    assert torch.equal(loaded.proj.weight, old.proj.weight)
    assert "extra=False" in caplog.text
    # today's files record the argument; code still gets today's default
    Grown(3).save_pretrained(tmp_path / "new")
    assert load_model_from_folder(tmp_path / "new").extra is not None
    assert Grown(3).extra is not None
    # an override wins
    assert Grown.from_pretrained(tmp_path / "old", extra=False).extra is None


def test_forwarded_kwargs_save_the_arguments_the_receiver_really_got(tmp_path):
    preset = Preset(flavour="y")
    assert preset.config == {"flavour": "y", "dim": 3, "mult": 4, "dtype": {"__dtype__": "float32"}}
    preset.save_pretrained(tmp_path / "p")
    loaded = load_model_from_folder(tmp_path / "p")
    assert type(loaded) is Preset and loaded.config == preset.config and loaded.missing_config_keys == ()
    assert torch.equal(loaded.proj.weight, preset.proj.weight)


def test_a_class_saves_under_its_registered_name(tmp_path):
    Renamed(3).save_pretrained(tmp_path / "r")
    assert json.loads((tmp_path / "r" / "config.json").read_text())["class"] == "tests.safe_loading.Renamed"
    assert isinstance(load_model_from_folder(tmp_path / "r"), Renamed)
    holder = Holder(Renamed(3))
    assert holder.config["child"]["__class__"] == "tests.safe_loading.Renamed"
    assert isinstance(Holder.from_config(holder.config).child, Renamed)


class FakeEntryPoint:
    def __init__(self, name, action):
        self.name, self.value, self.action = name, f"fake_{name}", action

    def load(self):
        return self.action()


def test_unknown_names_only_load_the_installed_entry_points(monkeypatch, caplog):
    class Late(PretrainedMixin, nn.Module):
        def __init__(self, dim: int = 2):
            super().__init__()

    def broken():
        raise ImportError("half-installed")

    points = [
        FakeEntryPoint("broken", broken),
        FakeEntryPoint("late", lambda: register_loadable(Late, name="late.Late")),
    ]
    groups = []

    def entry_points(*, group):
        groups.append(group)
        return points

    monkeypatch.setattr(ckpt, "_LOADABLE", dict(ckpt._LOADABLE))  # the registry is restored after the test
    monkeypatch.setattr(ckpt, "_STORED_NAME", dict(ckpt._STORED_NAME))
    monkeypatch.setattr(ckpt, "_entry_points_loaded", False)
    monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)
    with caplog.at_level(logging.WARNING, logger="synthesis_core.checkpoint"):
        assert resolve_loadable("late.Late") is Late
    assert groups == [ckpt.ENTRY_POINT_GROUP] and "half-installed" in caplog.text
    with pytest.raises(CheckpointError):
        resolve_loadable("late.Other")
    assert groups == [ckpt.ENTRY_POINT_GROUP]  # once per process


def test_the_core_names_no_package_that_depends_on_it():
    source = Path(ckpt.__file__).read_text()
    for package in (
        "imagen_pytorch",
        "video_diffusion_pytorch",
        "make_a_video_pytorch",
        "phenaki_pytorch",
        "nuwa_pytorch",
    ):
        assert package not in source
    assert not hasattr(ckpt, "PROJECT_PACKAGES") and not hasattr(ckpt, "import_class")
