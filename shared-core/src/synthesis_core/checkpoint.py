"""Checkpoints that never unpickle: safetensors for tensors, JSON for everything else, atomic writes.

Three layers, from the bottom up:

1. Atomic files: `atomic_write_bytes`, `atomic_write_json` and the `atomic_path` context manager write to a
   temporary file in the destination folder, flush + fsync it, then `os.replace` it over the target, so a crash
   or an exception mid-way leaves the previous file untouched.
2. Checkpoint files: `save_checkpoint(path, tensors, metadata)` writes one safetensors file whose `__metadata__`
   holds the JSON metadata; `flatten_state_dict` / `unflatten_state_dict` turn nested state dicts (optimizers,
   schedulers) into tensors + JSON and back. `CheckpointManager` numbers them and keeps the last N.
3. Models: `PretrainedMixin` records the constructor arguments of a model (`self.config`) so that
   `save_pretrained(folder)` writes `config.json` + `model.safetensors` and `from_pretrained(folder)` rebuilds it.
   Classes are only ever imported from the project's own packages.
"""
from __future__ import annotations

import contextlib
import copy
import functools
import importlib
import importlib.metadata
import inspect
import json
import logging
import os
import re
import sys
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

logger = logging.getLogger(__name__)

# Only classes living in these top-level packages may be imported when a config is loaded:
# a config file must never be able to make us import (and run) arbitrary code.
PROJECT_PACKAGES = (
    "synthesis_core",
    "imagen_pytorch",
    "video_diffusion_pytorch",
    "make_a_video_pytorch",
    "phenaki_pytorch",
    "nuwa_pytorch",
)

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
# the key of the safetensors `__metadata__` entry that holds our JSON metadata
METADATA_KEY = "synthesis_metadata"
FORMAT_VERSION = 1

PathLike = str | os.PathLike


class CheckpointError(ValueError):
    """A checkpoint does not fit the model it is loaded into (missing/unexpected keys, wrong shapes)."""


# ----------------------------------------------------------------------------------------------------------------
# atomic writes
# ----------------------------------------------------------------------------------------------------------------

def _fsync_folder(folder: Path) -> None:
    # make the rename itself durable; not every platform lets us open a folder
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Yields a temporary path in the same folder as `path`; on success it is fsynced and renamed onto `path`.

    If the body raises, the temporary file is removed and `path` keeps its previous content.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_folder(path.parent)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    """Writes `data` to `path` atomically (temp file in the same folder, flush, fsync, rename)."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise TypeError(f"data: expected bytes, got {type(data).__name__}")
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)


def atomic_write_json(path: PathLike, obj: Any, *, indent: int | None = 2) -> None:
    """Serialises `obj` to JSON (raising TypeError before touching the disk if it cannot) and writes it atomically."""
    text = json.dumps(obj, indent=indent)
    atomic_write_bytes(path, (text + "\n").encode("utf-8"))


def read_json(path: PathLike) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


# ----------------------------------------------------------------------------------------------------------------
# safetensors files with JSON metadata
# ----------------------------------------------------------------------------------------------------------------

def _storage_key(t: torch.Tensor) -> tuple[str, int]:
    return (str(t.device), t.untyped_storage().data_ptr())


def prepare_tensors_for_saving(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Detached CPU tensors that safetensors accepts: tied/shared tensors and views are cloned to their own memory.

    safetensors refuses two entries sharing storage (tied embeddings, a weight reused by two modules) and
    non-contiguous tensors; cloning only those keeps the memory cost low for the common case.
    """
    out: dict[str, torch.Tensor] = {}
    seen_storages: set[tuple[str, int]] = set()
    for name, t in tensors.items():
        if not isinstance(name, str):
            raise TypeError(f"tensors: keys must be strings, got {type(name).__name__} ({name!r})")
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"tensors[{name!r}]: expected a torch.Tensor, got {type(t).__name__}")
        t = t.detach()
        key = _storage_key(t)
        owns_whole_storage = t.untyped_storage().nbytes() == t.numel() * t.element_size()
        if key in seen_storages or not t.is_contiguous() or not owns_whole_storage:
            t = t.contiguous().clone()
        else:
            seen_storages.add(key)
        out[name] = t.cpu()
    return out


def save_checkpoint(path: PathLike, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, Any] | None = None) -> Path:
    """Writes one safetensors file holding `tensors`, with `metadata` (any JSON-able dict) in its header.

    The write is atomic: a failure leaves the previous file at `path` untouched.
    """
    metadata = dict(metadata or {})
    try:
        meta_text = json.dumps(metadata)
    except TypeError as err:
        raise TypeError(f"metadata: must be JSON-serialisable ({err})") from err
    tensors = prepare_tensors_for_saving(tensors)
    path = Path(path)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt", METADATA_KEY: meta_text})
    return path


def load_checkpoint(path: PathLike, map_location: str | torch.device = "cpu") -> tuple[dict[str, torch.Tensor], dict]:
    """Reads a file written by `save_checkpoint`: returns `(tensors, metadata)`. Never unpickles anything."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    device = str(torch.device(map_location))
    try:
        with safe_open(str(path), framework="pt", device=device) as f:
            header = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as err:  # safetensors raises its own error types for malformed headers
        raise CheckpointError(f"{path} is not a readable safetensors checkpoint ({err}); "
                              "pickled .pt files are never loaded, see load_torch_weights_only") from err
    metadata = json.loads(header[METADATA_KEY]) if METADATA_KEY in header else {}
    return tensors, metadata


def load_torch_weights_only(path: PathLike, map_location: str | torch.device = "cpu") -> Any:
    """Reads a legacy `.pt` file with `torch.load(weights_only=True)`: tensors and plain containers only, no code."""
    return torch.load(path, map_location=map_location, weights_only=True)


# ----------------------------------------------------------------------------------------------------------------
# nested state dicts (optimizers, schedulers) <-> flat tensors + JSON
# ----------------------------------------------------------------------------------------------------------------

def flatten_state_dict(state: Any, prefix: str = "") -> tuple[dict[str, torch.Tensor], Any]:
    """Splits a nested structure (e.g. `optimizer.state_dict()`) into flat tensors and a JSON-able skeleton.

    Tensors are replaced by `{"__tensor__": key}`; dicts with non-string keys (optimizer state is keyed by int)
    become `{"__items__": [[key, value], ...]}` and tuples `{"__tuple__": [...]}`, so `unflatten_state_dict`
    restores the exact structure. Raises TypeError naming the path of any value JSON cannot hold.
    """
    tensors: dict[str, torch.Tensor] = {}

    def walk(obj: Any, path: str) -> Any:
        if isinstance(obj, torch.Tensor):
            key = f"{prefix}{path}" if path else f"{prefix}tensor"
            while key in tensors:  # path components containing dots could collide
                key += "_"
            tensors[key] = obj
            return {"__tensor__": key}
        if isinstance(obj, Mapping):
            if all(isinstance(k, str) for k in obj) and not ({"__tensor__", "__items__", "__tuple__"} & set(obj)):
                return {k: walk(v, f"{path}.{k}" if path else k) for k, v in obj.items()}
            items = []
            for k, v in obj.items():
                if not isinstance(k, str | int | float | bool) and k is not None:
                    raise TypeError(f"state dict key at {path or '<root>'!r} is a {type(k).__name__}; "
                                    "only str/int/float/bool keys can be stored")
                items.append([k, walk(v, f"{path}.{k}" if path else str(k))])
            return {"__items__": items}
        if isinstance(obj, tuple):
            return {"__tuple__": [walk(v, f"{path}.{i}") for i, v in enumerate(obj)]}
        if isinstance(obj, list):
            return [walk(v, f"{path}.{i}") for i, v in enumerate(obj)]
        if obj is None or isinstance(obj, bool | int | float | str):
            return obj
        raise TypeError(f"state dict value at {path or '<root>'!r} is a {type(obj).__name__}, "
                        "which cannot be stored as JSON")

    skeleton = walk(state, "")
    return tensors, skeleton


def unflatten_state_dict(tensors: Mapping[str, torch.Tensor], skeleton: Any) -> Any:
    """Inverse of `flatten_state_dict`."""

    def walk(obj: Any) -> Any:
        if isinstance(obj, dict):
            if set(obj) == {"__tensor__"}:
                key = obj["__tensor__"]
                if key not in tensors:
                    raise CheckpointError(f"checkpoint is missing the tensor {key!r} referenced by its metadata")
                return tensors[key]
            if set(obj) == {"__items__"}:
                return {k: walk(v) for k, v in obj["__items__"]}
            if set(obj) == {"__tuple__"}:
                return tuple(walk(v) for v in obj["__tuple__"])
            return {k: walk(v) for k, v in obj.items()}
        if isinstance(obj, list):
            return [walk(v) for v in obj]
        return obj

    return walk(skeleton)


# ----------------------------------------------------------------------------------------------------------------
# numbered checkpoints in a folder
# ----------------------------------------------------------------------------------------------------------------

class CheckpointManager:
    """Numbered checkpoints `{prefix}-{step:08d}.safetensors` in `folder`, keeping the `keep_last` newest.

    `keep_last=None` (or 0) keeps everything.
    """

    def __init__(self, folder: PathLike, keep_last: int | None = 3, prefix: str = "checkpoint"):
        if keep_last is not None and (not isinstance(keep_last, int) or keep_last < 0):
            raise ValueError(f"keep_last: expected a non-negative int or None, got {keep_last!r}")
        if not prefix or "/" in prefix or os.sep in prefix:
            raise ValueError(f"prefix: expected a plain file name prefix, got {prefix!r}")
        self.folder = Path(folder)
        self.keep_last = keep_last
        self.prefix = prefix
        self._pattern = re.compile(rf"^{re.escape(prefix)}-(\d+)\.safetensors$")

    def path_for(self, step: int) -> Path:
        return self.folder / f"{self.prefix}-{int(step):08d}.safetensors"

    def list(self) -> list[tuple[int, Path]]:
        """All checkpoints as `(step, path)`, oldest first."""
        if not self.folder.is_dir():
            return []
        found = []
        for p in self.folder.iterdir():
            match = self._pattern.match(p.name)
            if match and p.is_file():
                found.append((int(match.group(1)), p))
        return sorted(found)

    def save(self, step: int, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, Any] | None = None) -> Path:
        if not isinstance(step, int) or isinstance(step, bool) or step < 0:
            raise ValueError(f"step: expected a non-negative int, got {step!r}")
        path = save_checkpoint(self.path_for(step), tensors, metadata)
        self.prune()
        return path

    def prune(self) -> list[Path]:
        """Deletes all but the `keep_last` newest checkpoints; returns the removed paths."""
        if not self.keep_last:
            return []
        existing = self.list()
        removed = [p for _, p in existing[: max(len(existing) - self.keep_last, 0)]]
        for p in removed:
            p.unlink(missing_ok=True)
            logger.debug("removed old checkpoint %s", p)
        return removed

    def latest(self) -> Path | None:
        existing = self.list()
        return existing[-1][1] if existing else None

    def resolve(self, which: PathLike | None) -> Path | None:
        """`'latest'` -> the newest checkpoint (None when there is none yet); a path -> that path (must exist)."""
        if which is None:
            return None
        if isinstance(which, str) and which == "latest":
            return self.latest()
        path = Path(which)
        if not path.is_file():
            candidate = self.folder / path
            if candidate.is_file():
                return candidate
            raise FileNotFoundError(f"checkpoint {str(which)!r} not found (also looked in {self.folder})")
        return path

    def load(self, which: PathLike = "latest", map_location: str | torch.device = "cpu"):
        path = self.resolve(which)
        if path is None:
            raise FileNotFoundError(f"no checkpoint named {self.prefix}-*.safetensors in {self.folder}")
        return load_checkpoint(path, map_location=map_location)


# ----------------------------------------------------------------------------------------------------------------
# package versions and safe class import
# ----------------------------------------------------------------------------------------------------------------

def package_info(obj_or_cls: Any) -> tuple[str, str | None]:
    """`(distribution or package name, version)` of the top-level package a class comes from.

    The version is read from the installed distribution's metadata (`importlib.metadata`), falling back to the
    package's `__version__` (and, for classes outside any installed package, their module's `__version__`).
    """
    cls = obj_or_cls if isinstance(obj_or_cls, type) else type(obj_or_cls)
    module_name = cls.__module__
    top = module_name.split(".")[0]
    # the project's distributions are named like their import packages with dashes (synthesis_core -> synthesis-core)
    for dist in (top.replace("_", "-"), top):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError, ValueError):
            return dist, importlib.metadata.version(dist)
    for name in (top, module_name):
        version = getattr(sys.modules.get(name), "__version__", None)
        if isinstance(version, str):
            return top, version
    with contextlib.suppress(Exception):  # slow (scans every installed distribution), hence last
        for dist in importlib.metadata.packages_distributions().get(top, []):
            return dist, importlib.metadata.version(dist)
    return top, None


def class_path(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def import_class(path: str, trusted_modules: Iterable[str] = ()) -> type:
    """Imports `pkg.module.Class`, only if `pkg` is one of the project's packages (or in `trusted_modules`)."""
    if not isinstance(path, str) or "." not in path:
        raise ValueError(f"class path: expected 'package.module.Class', got {path!r}")
    trusted = tuple(PROJECT_PACKAGES) + tuple(trusted_modules)
    if not any(path == t or path.startswith(t + ".") for t in trusted):
        raise ValueError(f"refusing to import {path!r}: classes are only loaded from {', '.join(trusted)} "
                         "(pass trusted_modules=... to allow another module)")
    if "<locals>" in path:
        raise ValueError(f"cannot import {path!r}: the class was defined inside a function")
    # the module is the longest importable prefix; the rest is the (possibly nested) qualified name
    parts = path.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        module_name = ".".join(parts[:cut])
        if not any(module_name == t or module_name.startswith(t + ".") for t in trusted):
            continue
        try:
            obj: Any = sys.modules.get(module_name) or importlib.import_module(module_name)
        except ModuleNotFoundError:
            continue
        try:
            for attr in parts[cut:]:
                obj = getattr(obj, attr)
        except AttributeError:
            continue
        if not isinstance(obj, type):
            raise TypeError(f"{path!r} is not a class")
        return obj
    raise ValueError(f"cannot import the class {path!r}: no such module or attribute "
                     "(was the checkpoint written by another version of the package?)")


# ----------------------------------------------------------------------------------------------------------------
# constructor arguments <-> JSON
# ----------------------------------------------------------------------------------------------------------------

class _NotJsonable(Exception):
    pass


def _to_jsonable(value: Any, where: str, *, strict: bool) -> Any:
    """Converts a constructor argument to JSON. Non-representable values raise `_NotJsonable` when `strict`,
    else become None with a warning (e.g. an injected, pretrained torchvision network)."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, PretrainedMixin):
        return {"__class__": class_path(type(value)), "config": copy.deepcopy(value._pretrained_config)}
    if isinstance(value, torch.dtype):
        return {"__dtype__": str(value).removeprefix("torch.")}
    if isinstance(value, list | tuple):
        return [_to_jsonable(v, f"{where}[{i}]", strict=strict) for i, v in enumerate(value)]
    if isinstance(value, Mapping) and all(isinstance(k, str) for k in value):
        return {k: _to_jsonable(v, f"{where}[{k!r}]", strict=strict) for k, v in value.items()}
    if strict:
        raise _NotJsonable(where)
    logger.warning("constructor argument %s (a %s) cannot be stored in config.json; it is recorded as null, "
                   "so pass it again when loading (from_pretrained(folder, %s=...))",
                   where, type(value).__name__, where.split("[")[0])
    return None


def _from_jsonable(value: Any, trusted_modules: Iterable[str]) -> Any:
    if isinstance(value, list):
        return [_from_jsonable(v, trusted_modules) for v in value]
    if isinstance(value, dict):
        if set(value) == {"__class__", "config"}:
            cls = import_class(value["__class__"], trusted_modules)
            return instantiate_from_config(cls, value["config"], trusted_modules=trusted_modules)
        if set(value) == {"__dtype__"}:
            dtype = getattr(torch, value["__dtype__"], None)
            if not isinstance(dtype, torch.dtype):
                raise ValueError(f"unknown dtype {value['__dtype__']!r} in config")
            return dtype
        return {k: _from_jsonable(v, trusted_modules) for k, v in value.items()}
    return value


def _record_arguments(init, args: tuple, kwargs: dict) -> dict | None:
    """The JSON-able config of one constructor call: explicit arguments (positional ones by name) plus the
    defaults that JSON can hold (so the config documents the model completely)."""
    signature = inspect.signature(init)
    try:
        bound = signature.bind(None, *args, **kwargs)
    except TypeError:
        return None  # the real __init__ will raise the proper error
    params = list(signature.parameters.values())[1:]  # drop self
    config: dict[str, Any] = {}
    for param in params:
        if param.name in bound.arguments:
            value = bound.arguments[param.name]
            if param.kind is inspect.Parameter.VAR_KEYWORD:
                for k, v in value.items():
                    config[k] = _to_jsonable(v, k, strict=False)
            else:
                config[param.name] = _to_jsonable(value, param.name, strict=False)
        elif param.default is not inspect.Parameter.empty:
            with contextlib.suppress(_NotJsonable):
                config[param.name] = _to_jsonable(param.default, param.name, strict=True)
    return config


def instantiate_from_config(cls: type, config: Mapping[str, Any], *, trusted_modules: Iterable[str] = (),
                            **overrides: Any) -> Any:
    """Builds `cls` from a recorded config (nested configs are rebuilt first); `overrides` replace entries."""
    if not isinstance(config, Mapping):
        raise TypeError(f"config: expected a dict, got {type(config).__name__}")
    values = {k: _from_jsonable(v, trusted_modules) for k, v in config.items()}
    values.update(overrides)
    signature = inspect.signature(cls.__init__)
    params = list(signature.parameters.values())[1:]
    var_positional = next((p for p in params if p.kind is inspect.Parameter.VAR_POSITIONAL), None)
    accepts_var_keyword = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)
    known = {p.name for p in params}
    unknown = [k for k in values if k not in known]
    if unknown and not accepts_var_keyword:
        raise CheckpointError(f"{cls.__qualname__} does not accept the recorded argument(s) {unknown} "
                              "(was the config written by another version of the package?)")
    args: list[Any] = []
    if var_positional is not None and values.get(var_positional.name):
        # everything before *args must then be passed positionally
        for p in params:
            if p is var_positional:
                break
            args.append(values.pop(p.name) if p.name in values else p.default)
        args.extend(values.pop(var_positional.name))
    else:
        values.pop(getattr(var_positional, "name", None), None)
    return cls(*args, **values)


# ----------------------------------------------------------------------------------------------------------------
# the mixin
# ----------------------------------------------------------------------------------------------------------------

def _is_recording(obj: Any) -> bool:
    return obj.__dict__.get("_pretrained_recording", False)


class PretrainedMixin:
    """Mixed into an `nn.Module`: records its constructor arguments and saves/loads config + safetensors weights.

    ```
    class Unet(PretrainedMixin, nn.Module):
        def __init__(self, dim=64, dim_mults=(1, 2, 4)): ...

    unet = Unet(32)
    unet.config                     # {'dim': 32, 'dim_mults': [1, 2, 4]}
    unet.save_pretrained('ckpt/')   # ckpt/config.json + ckpt/model.safetensors
    same = Unet.from_pretrained('ckpt/')
    ```
    Only the outermost `__init__` of a class hierarchy records. Arguments that are themselves `PretrainedMixin`
    modules are stored as `{"__class__": ..., "config": ...}` and rebuilt on load; tuples become lists; values
    JSON cannot hold are recorded as null with a warning (pass them again to `from_pretrained`).
    """

    _pretrained_config: dict

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        init = cls.__dict__.get("__init__")
        if init is None or getattr(init, "_records_config", False):
            return

        @functools.wraps(init)
        def __init__(self, *args, **kwargs):
            if _is_recording(self):  # an inner (super().__init__) call: the outermost one records
                return init(self, *args, **kwargs)
            self.__dict__["_pretrained_recording"] = True
            try:
                config = _record_arguments(init, args, kwargs)
                self.__dict__["_pretrained_config"] = config if config is not None else {}
                init(self, *args, **kwargs)
            finally:
                self.__dict__.pop("_pretrained_recording", None)
            # `config` is the public view; a model that sets its own `config` attribute keeps it
            if not hasattr(self, "config"):
                self.__dict__["config"] = self._pretrained_config

        __init__._records_config = True
        cls.__init__ = __init__

    # -- config -----------------------------------------------------------------------------------------------

    @property
    def pretrained_config(self) -> dict:
        """A copy of the recorded constructor arguments (JSON-able)."""
        return copy.deepcopy(self.__dict__.get("_pretrained_config", {}))

    @classmethod
    def from_config(cls, config: Mapping[str, Any], *, trusted_modules: Iterable[str] = (), **overrides: Any):
        return instantiate_from_config(cls, config, trusted_modules=trusted_modules, **overrides)

    def config_document(self) -> dict:
        """What goes into `config.json`: class path, package, version and the constructor arguments."""
        package, version = package_info(type(self))
        return {
            "class": class_path(type(self)),
            "package": package,
            "version": version,
            "format_version": FORMAT_VERSION,
            "config": self.pretrained_config,
        }

    # -- save / load ----------------------------------------------------------------------------------------

    def save_pretrained(self, folder: PathLike, *, state_dict: Mapping[str, torch.Tensor] | None = None) -> Path:
        """Writes `folder/config.json` and `folder/model.safetensors` (both atomically). Returns the folder."""
        folder = Path(folder)
        if folder.exists() and not folder.is_dir():
            raise ValueError(f"folder: {folder} exists and is not a folder")
        folder.mkdir(parents=True, exist_ok=True)
        document = self.config_document()
        tensors = dict(state_dict if state_dict is not None else self.state_dict())  # type: ignore[attr-defined]
        save_checkpoint(folder / WEIGHTS_NAME, tensors, {"class": document["class"], "package": document["package"],
                                                        "version": document["version"]})
        atomic_write_json(folder / CONFIG_NAME, document)
        return folder

    @classmethod
    def from_pretrained(cls, folder: PathLike, map_location: str | torch.device = "cpu", *, strict: bool = True,
                        trusted_modules: Iterable[str] = (), **overrides: Any):
        """Rebuilds the model saved in `folder` and loads its weights; `overrides` replace constructor arguments."""
        folder = Path(folder)
        document = _read_config_document(folder)
        recorded = document.get("class")
        target = cls
        if recorded and recorded != class_path(cls):
            other = import_class(recorded, tuple(trusted_modules) + (cls.__module__,))
            if not issubclass(other, cls):
                raise TypeError(f"{folder} holds a {recorded}, which is not a {class_path(cls)}; "
                                "use load_model_from_folder to load whatever it holds")
            target = other
        return _build_and_load(target, folder, document, map_location, strict, trusted_modules, overrides)


def _read_config_document(folder: Path) -> dict:
    config_path = folder / CONFIG_NAME
    if not config_path.is_file():
        raise FileNotFoundError(f"no {CONFIG_NAME} in {folder} (expected a folder written by save_pretrained)")
    document = read_json(config_path)
    if not isinstance(document, dict) or not isinstance(document.get("config"), dict):
        raise CheckpointError(f"{config_path} is not a config written by save_pretrained")
    return document


def _build_and_load(target: type, folder: Path, document: dict, map_location, strict: bool,
                    trusted_modules: Iterable[str], overrides: dict):
    saved_version = document.get("version")
    _, current_version = package_info(target)
    if saved_version != current_version:
        logger.warning("%s was saved with %s %s and is loaded with %s %s; check the result",
                       folder, document.get("package"), saved_version, document.get("package"), current_version)
    model = instantiate_from_config(target, document["config"], trusted_modules=trusted_modules, **overrides)
    tensors, _ = load_checkpoint(folder / WEIGHTS_NAME, map_location="cpu")
    load_state_dict_checked(model, tensors, strict=strict, saved_version=saved_version,
                            current_version=current_version, source=str(folder))
    return model.to(map_location)


def load_model_from_folder(folder: PathLike, map_location: str | torch.device = "cpu", *, strict: bool = True,
                           trusted_modules: Iterable[str] = (), **overrides: Any):
    """Loads whatever model `save_pretrained` wrote to `folder`, importing its class from the project's packages."""
    folder = Path(folder)
    document = _read_config_document(folder)
    if not document.get("class"):
        raise CheckpointError(f"{folder / CONFIG_NAME} does not record the model class")
    cls = import_class(document["class"], trusted_modules)
    if not issubclass(cls, PretrainedMixin):
        raise TypeError(f"{document['class']} is not a PretrainedMixin model")
    return _build_and_load(cls, folder, document, map_location, strict, trusted_modules, overrides)


def load_state_dict_checked(module: torch.nn.Module, tensors: Mapping[str, torch.Tensor], *, strict: bool = True,
                            saved_version: str | None = None, current_version: str | None = None,
                            source: str = "checkpoint") -> None:
    """`module.load_state_dict` with an error that lists missing/unexpected keys and shape mismatches and names
    the version that wrote the checkpoint and the one reading it."""
    expected = module.state_dict()
    missing = [k for k in expected if k not in tensors]
    unexpected = [k for k in tensors if k not in expected]
    mismatched = [f"{k}: checkpoint {tuple(tensors[k].shape)} vs model {tuple(expected[k].shape)}"
                  for k in expected if k in tensors and tensors[k].shape != expected[k].shape]
    if mismatched or (strict and (missing or unexpected)):
        def listing(items):
            return ", ".join(items[:8]) + (f" ... ({len(items)} in all)" if len(items) > 8 else "")
        problems = []
        if missing:
            problems.append(f"missing keys: {listing(missing)}")
        if unexpected:
            problems.append(f"unexpected keys: {listing(unexpected)}")
        if mismatched:
            problems.append(f"shape mismatches: {listing(mismatched)}")
        raise CheckpointError(f"{source} does not fit {type(module).__qualname__} "
                              f"(checkpoint written by version {saved_version}, loading with version "
                              f"{current_version}): " + "; ".join(problems))
    module.load_state_dict(dict(tensors), strict=strict)


__all__ = [
    "PROJECT_PACKAGES",
    "CONFIG_NAME",
    "WEIGHTS_NAME",
    "CheckpointError",
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_json",
    "read_json",
    "prepare_tensors_for_saving",
    "save_checkpoint",
    "load_checkpoint",
    "load_torch_weights_only",
    "flatten_state_dict",
    "unflatten_state_dict",
    "CheckpointManager",
    "package_info",
    "class_path",
    "import_class",
    "instantiate_from_config",
    "PretrainedMixin",
    "load_model_from_folder",
    "load_state_dict_checked",
]
