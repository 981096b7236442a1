import json
import logging
import pickle

import pytest
import torch
from torch import nn

from synthesis_core import checkpoint as ckpt
from synthesis_core.checkpoint import (
    CheckpointError,
    CheckpointManager,
    PretrainedMixin,
    atomic_write_bytes,
    atomic_write_json,
    flatten_state_dict,
    load_checkpoint,
    load_model_from_folder,
    register_loadable,
    save_checkpoint,
    unflatten_state_dict,
)

# classes defined here have no installed distribution: their version comes from this module's __version__
__version__ = "1.2.3"


DEFAULT_ACT = nn.GELU()  # a default JSON cannot hold: it is left out of the config, not recorded as null


class Block(PretrainedMixin, nn.Module):
    def __init__(self, dim: int, mult: int = 2, act: nn.Module = DEFAULT_ACT):
        super().__init__()
        self.act = act
        self.net = nn.Sequential(nn.Linear(dim, dim * mult), act, nn.Linear(dim * mult, dim))

    def forward(self, x):
        return x + self.net(x)


class Base(PretrainedMixin, nn.Module):
    def __init__(self, dim: int, dims=(1, 2), **extra):
        super().__init__()
        self.extra = extra
        self.proj = nn.Linear(dim, dim)


class TiedModel(Base):
    """A subclass whose __init__ calls the recorded base __init__: only this outer call must record."""

    def __init__(self, dim, blocks, vocab=11, *, network=None):
        super().__init__(dim, dims=(5,), ignored="inner")
        self.blocks = nn.ModuleList(blocks)
        self.embed = nn.Embedding(vocab, dim)
        self.to_logits = nn.Linear(dim, vocab, bias=False)
        self.to_logits.weight = self.embed.weight  # tied
        self.register_buffer("running", torch.randn(dim))
        self.network = network


# a saved config may only name registered classes (the top-level class of `Cls.from_pretrained` is chosen in code)
register_loadable(Block)
register_loadable(Base)
register_loadable(TiedModel)


class Unregistered(PretrainedMixin, nn.Module):
    def __init__(self, dim: int = 4):
        super().__init__()
        self.proj = nn.Linear(dim, dim)


def make_model():
    return TiedModel(8, [Block(8), Block(8, mult=3)], 13)


def test_config_records_positional_defaults_and_nested_modules():
    model = make_model()
    assert model.config["dim"] == 8 and model.config["vocab"] == 13  # positional args recorded by name
    assert model.config["network"] is None
    assert "dims" not in model.config and "ignored" not in model.config  # the inner Base.__init__ did not record
    nested = model.config["blocks"]
    assert nested[0] == {"__class__": f"{__name__}.Block", "config": {"dim": 8, "mult": 2}}  # act default skipped
    assert nested[1]["config"]["mult"] == 3
    json.dumps(model.config)
    assert Base(4, (3, 4), foo="bar").config == {"dim": 4, "dims": [3, 4], "foo": "bar"}  # tuple -> list, **kwargs


def test_non_jsonable_argument_is_null_with_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="synthesis_core.checkpoint"):
        block = Block(4, act=nn.ReLU())
    assert block.config["act"] is None
    assert "act" in caplog.text and "ReLU" in caplog.text


def test_save_pretrained_round_trip_bit_equal(tmp_path):
    model = make_model()
    model.save_pretrained(tmp_path / "m")
    document = json.loads((tmp_path / "m" / "config.json").read_text())
    assert document["class"] == f"{__name__}.TiedModel"
    assert document["version"] == __version__ and document["package"]
    loaded = TiedModel.from_pretrained(tmp_path / "m")
    assert type(loaded) is TiedModel and loaded.config == model.config
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name
    assert loaded.to_logits.weight is loaded.embed.weight  # tying survives (it is structural)
    x = torch.randn(2, 8)
    assert torch.equal(model.blocks[1](x), loaded.blocks[1](x))
    # the generic loader finds the recorded class in the registry, and only there
    again = load_model_from_folder(tmp_path / "m")
    assert torch.equal(again.proj.weight, model.proj.weight)
    Unregistered().save_pretrained(tmp_path / "u")
    with pytest.raises(CheckpointError, match=r"\['class'\] in .*config.json names the class .*Unregistered"):
        load_model_from_folder(tmp_path / "u")
    assert isinstance(Unregistered.from_pretrained(tmp_path / "u"), Unregistered)  # the caller chose the class


def test_overrides_and_wrong_class(tmp_path):
    Block(4).save_pretrained(tmp_path / "b")
    block = Block.from_pretrained(tmp_path / "b", act=nn.ReLU())
    assert isinstance(block.act, nn.ReLU)
    with pytest.raises(TypeError, match="not a"):
        Base.from_pretrained(tmp_path / "b")
    with pytest.raises(FileNotFoundError, match="config.json"):
        Block.from_pretrained(tmp_path / "nothing")


def test_version_mismatch_warns_and_key_mismatch_names_both_versions(tmp_path, caplog):
    Block(4).save_pretrained(tmp_path / "b")
    config_path = tmp_path / "b" / "config.json"
    document = json.loads(config_path.read_text())
    document["version"] = "0.0.1"
    config_path.write_text(json.dumps(document))
    with caplog.at_level(logging.WARNING, logger="synthesis_core.checkpoint"):
        Block.from_pretrained(tmp_path / "b")
    assert "0.0.1" in caplog.text and __version__ in caplog.text
    document["config"]["mult"] = 3  # the weights no longer fit the model built from the config
    config_path.write_text(json.dumps(document))
    with pytest.raises(CheckpointError, match=r"0\.0\.1.*1\.2\.3") as info:
        Block.from_pretrained(tmp_path / "b")
    assert "net.0.weight" in str(info.value)


def test_save_load_checkpoint_with_optimizer_state(tmp_path):
    model = make_model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.8, 0.9))
    loss = model.blocks[0](torch.randn(3, 8)).pow(2).mean() + model.to_logits(torch.randn(3, 8)).mean()
    loss.backward()
    opt.step()
    opt_tensors, opt_meta = flatten_state_dict(opt.state_dict(), prefix="optimizer.")
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()} | opt_tensors
    path = save_checkpoint(tmp_path / "ck.safetensors", tensors, {"optimizer": opt_meta, "step": 7})
    loaded, meta = load_checkpoint(path)
    assert meta["step"] == 7
    for k, v in tensors.items():
        assert torch.equal(loaded[k], v), k
    restored = unflatten_state_dict(loaded, meta["optimizer"])
    original = opt.state_dict()
    assert restored["param_groups"] == original["param_groups"]  # incl. the betas tuple and int param ids
    assert set(restored["state"]) == set(original["state"])
    for pid, state in original["state"].items():
        for key, value in state.items():
            assert torch.equal(restored["state"][pid][key], value)
    opt2 = torch.optim.AdamW(make_model().parameters())
    opt2.load_state_dict(restored)


def test_flatten_rejects_non_json_values():
    with pytest.raises(TypeError, match="a.b"):
        flatten_state_dict({"a": {"b": object()}})


def test_atomic_write_keeps_old_file_when_write_fails(tmp_path, monkeypatch):
    path = tmp_path / "data.bin"
    atomic_write_bytes(path, b"old")
    atomic_write_json(tmp_path / "x.json", {"a": 1})
    assert json.loads((tmp_path / "x.json").read_text()) == {"a": 1}

    save_checkpoint(tmp_path / "ck.safetensors", {"w": torch.ones(3)}, {"v": 1})

    def exploding_save_file(tensors, filename, metadata=None):
        with open(filename, "wb") as f:  # half a file, then the failure
            f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(ckpt, "save_file", exploding_save_file)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(tmp_path / "ck.safetensors", {"w": torch.zeros(3)}, {"v": 2})
    tensors, meta = load_checkpoint(tmp_path / "ck.safetensors")
    assert meta == {"v": 1} and torch.equal(tensors["w"], torch.ones(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck.safetensors", "data.bin", "x.json"]  # no temp left

    with pytest.raises(TypeError, match="JSON"):  # serialisation fails before the disk is touched
        atomic_write_json(path, {"a": object()})
    assert path.read_bytes() == b"old"


def test_checkpoint_manager_keep_last_and_latest(tmp_path):
    manager = CheckpointManager(tmp_path / "ckpts", keep_last=2)
    assert manager.latest() is None and manager.resolve("latest") is None
    for step in (1, 5, 10, 3):
        manager.save(step, {"w": torch.full((2,), float(step))}, {"step": step})
    steps = [s for s, _ in manager.list()]
    assert steps == [5, 10]  # the two highest steps kept
    assert manager.latest().name == "checkpoint-00000010.safetensors"
    tensors, meta = manager.load("latest")
    assert meta["step"] == 10 and torch.equal(tensors["w"], torch.full((2,), 10.0))
    assert manager.resolve(manager.latest().name) == manager.latest()
    with pytest.raises(FileNotFoundError):
        manager.resolve("nope.safetensors")
    with pytest.raises(ValueError, match="keep_last"):
        CheckpointManager(tmp_path, keep_last=-1)


def test_nothing_is_ever_unpickled(tmp_path, monkeypatch):
    model = make_model()
    model.save_pretrained(tmp_path / "m")
    save_checkpoint(tmp_path / "ck.safetensors", {"w": torch.ones(2)}, {"a": [1, 2]})

    def forbidden(*args, **kwargs):
        raise AssertionError("unpickling is forbidden")

    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr(pickle, "Unpickler", forbidden)
    real_torch_load = torch.load
    monkeypatch.setattr(torch, "load", forbidden)
    TiedModel.from_pretrained(tmp_path / "m")
    load_checkpoint(tmp_path / "ck.safetensors")
    monkeypatch.setattr(torch, "load", real_torch_load)
    monkeypatch.undo()

    # a pickled .pt is refused by load_checkpoint, and the legacy reader runs torch.load(weights_only=True)
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    with open(tmp_path / "evil.pt", "wb") as f:
        pickle.dump({"x": Evil()}, f, protocol=2)
    with pytest.raises(CheckpointError, match="safetensors"):
        load_checkpoint(tmp_path / "evil.pt")
    with pytest.raises(pickle.UnpicklingError):
        ckpt.load_torch_weights_only(tmp_path / "evil.pt")
    torch.save({"w": torch.ones(2)}, tmp_path / "plain.pt")
    assert torch.equal(ckpt.load_torch_weights_only(tmp_path / "plain.pt")["w"], torch.ones(2))


def test_shared_and_view_tensors_are_saved(tmp_path):
    base = torch.arange(12.0)
    tensors = {"a": base, "b": base, "view": base[2:5], "t": base.view(3, 4).t()}
    save_checkpoint(tmp_path / "s.safetensors", tensors)
    loaded, _ = load_checkpoint(tmp_path / "s.safetensors")
    for k, v in tensors.items():
        assert torch.equal(loaded[k], v), k
    with pytest.raises(TypeError, match="tensors"):
        save_checkpoint(tmp_path / "bad.safetensors", {"a": [1, 2]})
