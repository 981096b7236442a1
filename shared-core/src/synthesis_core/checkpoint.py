"""Checkpoints that never unpickle: safetensors for tensors, JSON for everything else, atomic writes.

Three layers, from the bottom up:

1. Atomic files: `atomic_write_bytes`, `atomic_write_json` and the `atomic_path` context manager write to a
   temporary file in the destination folder, flush + fsync it, then `os.replace` it over the target, so a crash
   or an exception mid-way leaves the previous file untouched; the temporary file a crashed process leaves is
   removed by the next save or load there (`remove_stale_temporary_files`).
2. Checkpoint files: `save_checkpoint(path, tensors, metadata)` writes one safetensors file whose `__metadata__`
   holds the JSON metadata; `flatten_state_dict` / `unflatten_state_dict` turn nested state dicts (optimizers,
   schedulers) into tensors + JSON and back. `CheckpointManager` numbers them and keeps the last N.
3. Models: `PretrainedMixin` records the constructor arguments of a model (`self.config`) so that
   `save_pretrained(folder)` writes `config.json` + `model.safetensors` and `from_pretrained(folder)` rebuilds it.
   A config file is untrusted data: the only classes it may name are the ones a package registered with
   `register_loadable` (an exact lookup, never an import of a name from the file), every key must be a real
   constructor parameter, and the whole config is validated before anything is constructed.
   `from_pretrained("org/name")` reads a Hugging Face Hub repo the same way (fetched into, or read offline from,
   the Hub cache by `synthesis_core.hub`), and `push_to_hub("org/name")` publishes one with a model card.
"""

from __future__ import annotations

import builtins
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
import socket
import sys
import tempfile
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar, cast

import torch
from safetensors import safe_open
from safetensors.torch import save_file

logger = logging.getLogger(__name__)

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


# A temporary file is named `.{target}.{host}-{pid}.{random}.tmp`: the host and the process that write it let a
# later save or load tell a file whose writer died (killed, out of memory, power cut: no `finally` ran) from a
# write in progress, possibly by another process of the same training run.
_TMP_PATTERN = re.compile(r"^\.(?P<target>.+)\.(?P<host>[0-9a-f]{8})-(?P<pid>\d+)\.[a-z0-9_]+\.tmp$")
# what the previous versions wrote (no host, no pid): only their age tells that they are stale
_OLD_TMP_PATTERN = re.compile(r"^\.(?P<target>.+)\.[a-z0-9_]{8}\.tmp$")
STALE_TMP_SECONDS = 3600.0
"""A temporary file untouched this long is stale even when its writer cannot be checked (another host shares the
folder): writing a checkpoint keeps touching its file, and an hour is far longer than a final fsync takes."""


def _host_tag() -> str:
    return f"{zlib.crc32(socket.gethostname().encode('utf-8')):08x}"


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    if os.name == "nt":  # os.kill(pid, 0) would terminate the process there: let the file's age decide
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. PermissionError: it exists, under another user
        return True
    return True


def remove_stale_temporary_files(
    folder: PathLike, prefix: str = "", *, max_age: float = STALE_TMP_SECONDS
) -> list[Path]:
    """Removes the temporary files that `atomic_path` left in `folder`, for targets whose name starts with `prefix`,
    when their writer is gone: a process of this host that no longer runs, or a file untouched for `max_age`
    seconds (the writer may be on another host, whose processes cannot be checked). The files of writes in
    progress stay. Returns the removed paths."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    host, now, removed = _host_tag(), time.time(), []
    for entry in folder.iterdir():
        match = _TMP_PATTERN.match(entry.name) or _OLD_TMP_PATTERN.match(entry.name)
        if match is None or not match["target"].startswith(prefix):
            continue
        try:
            age = now - entry.stat().st_mtime
        except FileNotFoundError:  # its write just finished (renamed) or another process removed it
            continue
        writer_gone = "pid" in match.groupdict() and match["host"] == host and not _process_alive(int(match["pid"]))
        if writer_gone or age > max_age:
            entry.unlink(missing_ok=True)
            removed.append(entry)
            logger.info("removed %s, left by an interrupted save", entry)
    return removed


@contextlib.contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Yields a temporary path in the same folder as `path`; on success it is fsynced and renamed onto `path`.

    If the body raises, the temporary file is removed and `path` keeps its previous content. Temporary files of
    earlier writes of `path` whose process died are removed first (see `remove_stale_temporary_files`).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporary_files(path.parent, path.name)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.{_host_tag()}-{os.getpid()}.", suffix=".tmp", dir=path.parent)
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


def save_checkpoint(
    path: PathLike, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, Any] | None = None
) -> Path:
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
        raise CheckpointError(
            f"{path} is not a readable safetensors checkpoint ({err}); "
            "pickled .pt files are never loaded, see load_torch_weights_only"
        ) from err
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
                    raise TypeError(
                        f"state dict key at {path or '<root>'!r} is a {type(k).__name__}; "
                        "only str/int/float/bool keys can be stored"
                    )
                items.append([k, walk(v, f"{path}.{k}" if path else str(k))])
            return {"__items__": items}
        if isinstance(obj, tuple):
            return {"__tuple__": [walk(v, f"{path}.{i}") for i, v in enumerate(obj)]}
        if isinstance(obj, list):
            return [walk(v, f"{path}.{i}") for i, v in enumerate(obj)]
        if obj is None or isinstance(obj, bool | int | float | str):
            return obj
        raise TypeError(
            f"state dict value at {path or '<root>'!r} is a {type(obj).__name__}, which cannot be stored as JSON"
        )

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

    `keep_last=None` (or 0) keeps everything. Files named `{prefix}-{step:08d}.<anything>.safetensors` are companions
    of that checkpoint (e.g. the per-process RNG states a trainer writes) and are pruned with it. Every save and
    load first removes the temporary files that interrupted saves left in `folder` (`remove_stale_temporary_files`).
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
        self._companion_pattern = re.compile(rf"^{re.escape(prefix)}-(\d+)\.[^/]+\.safetensors$")

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

    def remove_stale_temporary_files(self) -> builtins.list[Path]:  # `list` here is the method above
        """Removes what interrupted saves of this folder's checkpoints (and companions) left behind."""
        return remove_stale_temporary_files(self.folder, f"{self.prefix}-")

    def save(self, step: int, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, Any] | None = None) -> Path:
        if not isinstance(step, int) or isinstance(step, bool) or step < 0:
            raise ValueError(f"step: expected a non-negative int, got {step!r}")
        self.remove_stale_temporary_files()
        path = save_checkpoint(self.path_for(step), tensors, metadata)
        self.prune()
        return path

    def prune(self) -> builtins.list[Path]:
        """Deletes all but the `keep_last` newest checkpoints and the companions of older steps; returns the
        removed paths."""
        if not self.keep_last:
            return []
        existing = self.list()
        removed = [p for _, p in existing[: max(len(existing) - self.keep_last, 0)]]
        kept = existing[len(removed) :]
        if kept:
            # only companions of steps older than every kept checkpoint: another process may be writing the
            # companion of a checkpoint newer than the last one listed
            oldest_kept = kept[0][0]
            for p in self.folder.iterdir():
                match = self._companion_pattern.match(p.name)
                if match and not self._pattern.match(p.name) and int(match.group(1)) < oldest_kept:
                    removed.append(p)
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
        self.remove_stale_temporary_files()
        path = self.resolve(which)
        if path is None:
            raise FileNotFoundError(f"no checkpoint named {self.prefix}-*.safetensors in {self.folder}")
        return load_checkpoint(path, map_location=map_location)


# ----------------------------------------------------------------------------------------------------------------
# package versions
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
    """`module.Qualname` of a class: the name it is registered and saved under unless registered otherwise."""
    return f"{cls.__module__}.{cls.__qualname__}"


# ----------------------------------------------------------------------------------------------------------------
# the registry of classes a stored config may name
# ----------------------------------------------------------------------------------------------------------------
#
# A config file is data from anywhere: it must never choose code to run. So the classes a file may name are the
# ones a package registered explicitly (`register_loadable`), found by an exact dict lookup of the stored name:
# nothing is imported from, and no attribute is walked along, a name written in a file.

ENTRY_POINT_GROUP = "synthesis_core.models"
"""Entry point group of the distributions that register loadable classes. Each distribution names the module whose
import registers its classes, in its pyproject.toml: `[project.entry-points."synthesis_core.models"]`,
`my_pkg = "my_pkg"`. These are read from installed metadata, never from a config file, and only imported when a
stored name is not registered yet, so `load_model_from_folder` works before the package was imported."""

_LOADABLE: dict[str, type] = {}  # stored name -> class
_STORED_NAME: dict[type, str] = {}  # class -> the name it is saved under (its first registered name)
_FORWARDS_KWARGS_TO: dict[type, type] = {}  # class whose __init__ passes its **kwargs on -> the class receiving them
_registry_lock = threading.RLock()
_entry_points_loaded = False

# the dtypes a config may hold (`{"__dtype__": "float16"}`): a fixed list, never a torch attribute looked up by name
_DTYPES: dict[str, torch.dtype] = {
    str(dtype).removeprefix("torch."): dtype
    for dtype in (
        torch.float16,
        torch.bfloat16,
        torch.float32,
        torch.float64,
        torch.complex64,
        torch.complex128,
        torch.uint8,
        torch.int8,
        torch.int16,
        torch.int32,
        torch.int64,
        torch.bool,
    )
}

_T = TypeVar("_T", bound=type)


def _init_owner(cls: type) -> type:
    """The class in `cls`'s MRO whose own `__init__` `cls()` runs."""
    return next((c for c in cls.__mro__ if "__init__" in c.__dict__), object)


def _takes_var_keyword(cls: type[Any]) -> bool:
    parameters = inspect.signature(cls.__init__).parameters.values()
    return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)


def register_loadable(
    cls: _T | None = None, *, name: str | None = None, forwards_kwargs_to: type | None = None
) -> _T | Callable[[_T], _T]:
    """Declares that a saved config may name `cls` (a `PretrainedMixin` model): `from_pretrained`,
    `load_model_from_folder` and `instantiate_from_config` rebuild it, and nothing that is not registered.

    `name` is the stored name (default `module.Qualname`, the form `save_pretrained` writes); registering a class
    again under another name adds an alias (e.g. the old name of a moved class), the first name stays the one
    saved. `forwards_kwargs_to=Other`: the class's `**kwargs` are passed on to `Other.__init__` (a preset, a
    subclass adding arguments), so a config may give `Other`'s parameters too, and saving records the values
    `Other.__init__` really got (defaults included); a `**kwargs` without it takes no key from a file.
    Usable as a decorator (`@register_loadable` or `@register_loadable(name=...)`); returns the class.
    """
    if cls is None:
        decorator = functools.partial(register_loadable, name=name, forwards_kwargs_to=forwards_kwargs_to)
        return cast(Callable[[_T], _T], decorator)
    if not isinstance(cls, type) or not issubclass(cls, PretrainedMixin):
        raise TypeError(f"cls: expected a PretrainedMixin model class, got {cls!r}")
    if name is None:
        name = class_path(cls)
    if not isinstance(name, str) or not name:
        raise TypeError(f"name: expected a non-empty string, got {name!r}")
    if forwards_kwargs_to is not None:
        if not isinstance(forwards_kwargs_to, type):
            raise TypeError(f"forwards_kwargs_to: expected a class, got {forwards_kwargs_to!r}")
        if "__init__" not in cls.__dict__ or not _takes_var_keyword(cls):
            raise ValueError(f"forwards_kwargs_to: {cls.__qualname__} must define an __init__ taking **kwargs")
    with _registry_lock:
        existing = _LOADABLE.get(name)
        if existing is not None and existing is not cls:
            raise ValueError(f"name: {name!r} is already registered for {class_path(existing)}")
        known_target = _FORWARDS_KWARGS_TO.get(cls)
        if known_target is not None and forwards_kwargs_to is not None and known_target is not forwards_kwargs_to:
            raise ValueError(
                f"forwards_kwargs_to: {cls.__qualname__} is already registered as forwarding its "
                f"**kwargs to {known_target.__qualname__}"
            )
        _LOADABLE[name] = cls
        _STORED_NAME.setdefault(cls, name)
        if forwards_kwargs_to is not None:
            _FORWARDS_KWARGS_TO[cls] = forwards_kwargs_to
    return cls


def loadable_classes() -> dict[str, type]:
    """The registered stored names and their classes (a copy), after loading the `synthesis_core.models` entry
    points of the installed distributions."""
    _load_entry_points()
    with _registry_lock:
        return dict(_LOADABLE)


def _load_entry_points() -> None:
    global _entry_points_loaded
    with _registry_lock:
        if _entry_points_loaded:
            return
        _entry_points_loaded = True  # first, so a package that loads a model while being imported does not recurse
    for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            entry_point.load()
        except Exception as err:  # a broken distribution must not stop loading the models of the others
            logger.warning(
                "could not import %s (the %s entry point %r): %s: %s",
                entry_point.value,
                ENTRY_POINT_GROUP,
                entry_point.name,
                type(err).__name__,
                err,
            )


def _stored_name(cls: type) -> str:
    return _STORED_NAME.get(cls) or class_path(cls)


def resolve_loadable(name: Any, *, source: str = "config", where: str = "class") -> type:
    """The class registered under exactly `name`; a `CheckpointError` naming `where` and `source` otherwise.

    Never imports a module named by `name` nor walks its attributes: an unknown name only triggers loading the
    `synthesis_core.models` entry points of the installed distributions (once per process).
    """
    if not isinstance(name, str):
        raise CheckpointError(f"{where} in {source}: expected a class name (a string), got {type(name).__name__}")
    cls = _LOADABLE.get(name)
    if cls is None:
        _load_entry_points()
        cls = _LOADABLE.get(name)
    if cls is None:
        raise CheckpointError(
            f"{where} in {source} names the class {name!r}, which no installed package registered as loadable; a "
            "stored config may only name model classes registered with synthesis_core.checkpoint.register_loadable "
            "(nothing is imported from a name written in a file; is the package that defines it installed?)"
        )
    return cls


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
        return {"__class__": _stored_name(type(value)), "config": copy.deepcopy(value._pretrained_config)}
    if isinstance(value, torch.dtype) and value in _DTYPES.values():
        return {"__dtype__": str(value).removeprefix("torch.")}
    if isinstance(value, list | tuple):
        return [_to_jsonable(v, f"{where}[{i}]", strict=strict) for i, v in enumerate(value)]
    if isinstance(value, Mapping) and all(isinstance(k, str) for k in value):
        return {k: _to_jsonable(v, f"{where}[{k!r}]", strict=strict) for k, v in value.items()}
    if strict:
        raise _NotJsonable(where)
    logger.warning(
        "constructor argument %s (a %s) cannot be stored in config.json; it is recorded as null, "
        "so pass it again when loading (from_pretrained(folder, %s=...))",
        where,
        type(value).__name__,
        where.split("[")[0],
    )
    return None


def _jsonable_default(param: inspect.Parameter) -> tuple[bool, Any]:
    """`(True, json)` when the parameter has a default JSON can hold (it is recorded), else `(False, None)`."""
    if param.default is inspect.Parameter.empty:
        return False, None
    try:
        return True, _to_jsonable(param.default, param.name, strict=True)
    except _NotJsonable:
        return False, None


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
        else:
            recordable, default = _jsonable_default(param)
            if recordable:
                config[param.name] = default
    return config


def _record_forwarded(init, args: tuple, kwargs: dict, config: dict) -> None:
    """Adds to `config` the arguments a constructor that received forwarded `**kwargs` got beyond them (a
    preset's values, its defaults), so that the saved config does not depend on today's defaults."""
    signature = inspect.signature(init)
    try:
        bound = signature.bind(None, *args, **kwargs)
    except TypeError:
        return  # the real __init__ will raise the proper error
    for param in list(signature.parameters.values())[1:]:
        if param.name in config or param.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
            continue
        if param.name in bound.arguments:
            config[param.name] = _to_jsonable(bound.arguments[param.name], param.name, strict=False)
        else:
            recordable, default = _jsonable_default(param)
            if recordable:
                config[param.name] = default


def _accepted_parameters(cls: type[Any]) -> tuple[dict[str, inspect.Parameter], set[str]]:
    """`(parameters a stored config may give cls, by name; the names that are cls's own)`.

    Its constructor's named parameters (`*args` too, stored as a list under its name), plus, when its `**kwargs`
    are registered as forwarded (`register_loadable(forwards_kwargs_to=...)`), those of the receiving class.
    Any other `**kwargs` takes no key from a file.
    """
    accepted: dict[str, inspect.Parameter] = {}
    own: set[str] = set()
    current: type[Any] | None = cls
    seen: set[type] = set()
    while current is not None and current not in seen:
        seen.add(current)
        var_keyword = False
        for param in list(inspect.signature(current.__init__).parameters.values())[1:]:
            if param.kind is inspect.Parameter.VAR_KEYWORD:
                var_keyword = True
            elif param.kind is inspect.Parameter.POSITIONAL_ONLY:
                continue  # cannot be passed by name
            elif param.kind is inspect.Parameter.VAR_POSITIONAL and current is not cls:
                continue  # only the outer constructor's *args can be given (by its name)
            elif param.name not in accepted:
                accepted[param.name] = param
                if current is cls:
                    own.add(param.name)
        current = _FORWARDS_KWARGS_TO.get(_init_owner(current)) if var_keyword else None
    return accepted, own


def constructor_parameters(cls: type) -> dict[str, inspect.Parameter]:
    """The parameters, by name, that a stored config may give `cls` (see `register_loadable`)."""
    if not isinstance(cls, type):
        raise TypeError(f"cls: expected a class, got {cls!r}")
    return _accepted_parameters(cls)[0]


def _check_value(value: Any, where: str, dotted: str, source: str, allow_classes: bool) -> list[tuple[str, Any]]:
    """Validates one stored value: plain JSON data, a registered class `{"__class__": name, "config": {...}}`
    (checked recursively) or an allowed dtype. Returns the missing constructor arguments of nested classes."""
    if value is None or isinstance(value, bool | int | float | str):
        return []
    if isinstance(value, list | tuple):
        missing: list[tuple[str, Any]] = []
        for i, item in enumerate(value):
            missing += _check_value(item, f"{where}[{i}]", f"{dotted}.{i}", source, allow_classes)
        return missing
    if isinstance(value, Mapping):
        bad_keys = [k for k in value if not isinstance(k, str)]
        if bad_keys:
            raise CheckpointError(f"{where} in {source}: dict keys must be strings, got {bad_keys[0]!r}")
        if "__class__" in value:
            if not allow_classes:
                raise CheckpointError(
                    f"{where}['__class__'] in {source}: this value must be plain JSON data; it cannot name a class"
                )
            if set(value) != {"__class__", "config"}:
                raise CheckpointError(
                    f"{where} in {source}: a stored model is exactly {{'__class__': name, "
                    f"'config': {{...}}}}, got the keys {sorted(value)}"
                )
            nested = resolve_loadable(value["__class__"], source=source, where=f"{where}['__class__']")
            return _check_config(nested, value["config"], f"{where}['config']", dotted, source, allow_classes)
        if "__dtype__" in value:
            if set(value) != {"__dtype__"} or value["__dtype__"] not in _DTYPES:
                raise CheckpointError(
                    f"{where}['__dtype__'] in {source}: expected exactly {{'__dtype__': name}} "
                    f"with a name in {sorted(_DTYPES)}, got {dict(value)!r}"
                )
            return []
        missing = []
        for k, v in value.items():
            missing += _check_value(v, f"{where}[{k!r}]", f"{dotted}.{k}", source, allow_classes)
        return missing
    raise CheckpointError(f"{where} in {source} holds a {type(value).__name__}, which is not JSON data")


def _check_config(
    cls: type, config: Any, where: str, dotted: str, source: str, allow_classes: bool, supplied: Iterable[str] = ()
) -> list[tuple[str, Any]]:
    """Validates the stored config of `cls` (recursively, importing and constructing nothing) and returns
    `(key path, default)` of each recorded-by-default constructor argument it lacks."""
    if not isinstance(config, Mapping):
        raise CheckpointError(
            f"{where} in {source}: expected a dict of {cls.__qualname__}'s constructor arguments, "
            f"got {type(config).__name__}"
        )
    accepted, own = _accepted_parameters(cls)
    missing: list[tuple[str, Any]] = []
    for key, value in config.items():
        key_where = f"{where}[{key!r}]"
        if not isinstance(key, str) or key not in accepted:
            raise CheckpointError(
                f"{key_where} in {source} is not a parameter of {cls.__qualname__}; a stored "
                "config may only give the constructor's named parameters (was it written by "
                "another version of the package?)"
            )
        missing += _check_value(value, key_where, f"{dotted}.{key}" if dotted else key, source, allow_classes)
    supplied = set(supplied)
    for key, param in accepted.items():
        if key in config or key in supplied or param.kind is inspect.Parameter.VAR_POSITIONAL:
            continue
        if param.default is inspect.Parameter.empty:
            if key in own:  # a forwarded class's required argument may come from the outer one (a preset)
                raise CheckpointError(f"{where} in {source} lacks {key!r}, a required argument of {cls.__qualname__}")
            continue
        recordable, default = _jsonable_default(param)
        if recordable:  # saving records it: its absence means an older version wrote the file
            default = older_file_defaults(cls).get(key, default)
            missing.append((f"{dotted}.{key}" if dotted else key, default))
    return missing


def older_file_defaults(cls: type) -> dict[str, Any]:
    """The values a stored config of `cls` that lacks an argument stands for, where that is not today's default.

    A class that adds a constructor argument whose default changes the model (new layers, new weights) declares
    `config_defaults_for_older_files = {"argument": value_before}`: a file written before the argument existed
    describes the model as it was, so loading it builds that model rather than today's default."""
    return dict(getattr(cls, "config_defaults_for_older_files", {}))


def check_config(
    cls: type, config: Mapping[str, Any], *, source: str = "config", where: str = "config", allow_classes: bool = True
) -> tuple[str, ...]:
    """Validates a stored config of `cls` without importing or constructing anything.

    Every key must be a named constructor parameter (see `register_loadable` for `**kwargs`); values must be JSON
    data, allowed dtypes or, when `allow_classes`, registered classes `{"__class__": name, "config": {...}}`
    whose configs are checked the same way. Raises `CheckpointError` naming the key path (`where`, e.g.
    `config['unets'][0]['__class__']`) and `source` (the file). Returns the key paths (`timesteps`,
    `model.dim_mults`) of the constructor arguments the config lacks, which loading fills with today's defaults.
    """
    if not isinstance(cls, type):
        raise TypeError(f"cls: expected a class, got {cls!r}")
    return tuple(path for path, _ in _check_config(cls, config, where, "", source, allow_classes))


def _from_jsonable(value: Any, source: str) -> Any:
    """Rebuilds a value that `_check_value` accepted."""
    if isinstance(value, list | tuple):
        return [_from_jsonable(v, source) for v in value]
    if isinstance(value, Mapping):
        if "__class__" in value:
            return _construct(_LOADABLE[value["__class__"]], value["config"], {}, source)
        if "__dtype__" in value:
            return _DTYPES[value["__dtype__"]]
        return {k: _from_jsonable(v, source) for k, v in value.items()}
    return value


def _construct(cls: type[Any], config: Mapping[str, Any], overrides: dict, source: str) -> Any:
    # validated again (cheap, pure) for the key paths this object reports as filled in
    missing = _check_config(cls, config, "config", "", source, True, supplied=overrides)
    values = {k: _from_jsonable(v, source) for k, v in config.items()}
    # arguments added since the file was written: the model it describes, not today's default
    values.update({k: v for k, v in older_file_defaults(cls).items() if k not in config})
    values.update(overrides)
    params = list(inspect.signature(cls.__init__).parameters.values())[1:]
    var_positional = next((p for p in params if p.kind is inspect.Parameter.VAR_POSITIONAL), None)
    args: list[Any] = []
    if var_positional is not None and values.get(var_positional.name):
        # everything before *args must then be passed positionally
        for p in params:
            if p is var_positional:
                break
            args.append(values.pop(p.name) if p.name in values else p.default)
        args.extend(values.pop(var_positional.name))
    elif var_positional is not None:
        values.pop(var_positional.name, None)
    obj = cls(*args, **values)
    with contextlib.suppress(AttributeError):  # e.g. a class with __slots__
        obj.missing_config_keys = tuple(path for path, _ in missing)
    return obj


def instantiate_from_config(
    cls: type, config: Mapping[str, Any], *, overrides: Mapping[str, Any] | None = None, source: str = "config"
) -> Any:
    """Builds `cls` from a stored config; `overrides` (code-given values) replace entries.

    The whole config is validated first (`check_config`): nothing is constructed when any key is not a
    constructor parameter, or any nested class is not registered. Nested configs are rebuilt before `cls`. A
    recorded-by-default argument the config lacks (a file from an older version) is filled with today's
    default, logged as a warning naming each key and reported by the built object's `missing_config_keys`.
    """
    if not isinstance(cls, type):
        raise TypeError(f"cls: expected a class, got {cls!r}")
    overrides = dict(overrides or {})
    accepted, _ = _accepted_parameters(cls)
    unknown = [k for k in overrides if k not in accepted]
    if unknown:
        raise TypeError(f"overrides: {cls.__qualname__} has no parameter(s) {unknown}")
    missing = _check_config(cls, config, "config", "", source, True, supplied=overrides)
    if missing:
        logger.warning(
            "%s lacks the constructor argument(s) %s of %s (written by an older version?); they are "
            "filled with the defaults for such files: %s",
            source,
            ", ".join(path for path, _ in missing),
            cls.__qualname__,
            ", ".join(f"{path}={default!r}" for path, default in missing),
        )
    return _construct(cls, config, overrides, source)


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

    register_loadable(Unet)         # a saved config may name it (see register_loadable)
    unet = Unet(32)
    unet.config                     # {'dim': 32, 'dim_mults': [1, 2, 4]}
    unet.save_pretrained('ckpt/')   # ckpt/config.json + ckpt/model.safetensors
    same = Unet.from_pretrained('ckpt/')
    same.missing_config_keys        # () : the arguments the file lacked and loading filled with today's defaults
    ```
    Only the outermost `__init__` of a class hierarchy records (plus, for a class registered with
    `forwards_kwargs_to`, the arguments its `**kwargs` reach). Every argument is recorded, defaults included.
    Arguments that are themselves `PretrainedMixin` modules are stored as `{"__class__": ..., "config": ...}` and
    rebuilt on load (only registered classes); tuples become lists; values JSON cannot hold are recorded as null
    with a warning (pass them again to `from_pretrained`).
    """

    _pretrained_config: dict
    # the key paths (`timesteps`, `model.dim_mults`) of the constructor arguments that the config this object was
    # loaded from lacked, filled with today's defaults (a file from an older version); () when built in code
    missing_config_keys: tuple[str, ...] = ()

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        init = cls.__dict__.get("__init__")
        if init is None or getattr(init, "_records_config", False):
            return
        owner = cls

        @functools.wraps(init)
        def __init__(self, *args, **kwargs):
            if _is_recording(self):  # an inner (super().__init__) call: the outermost one records
                if self.__dict__.get("_pretrained_forwarded_to") is owner:
                    # the outer constructor passed its **kwargs on to this one: what this one really gets (a
                    # preset's values, its defaults) completes the config, so loading needs no default of today
                    _record_forwarded(init, args, kwargs, self.__dict__["_pretrained_config"])
                    target = _FORWARDS_KWARGS_TO.get(owner)
                    if target is not None:
                        self.__dict__["_pretrained_forwarded_to"] = _init_owner(target)
                    else:
                        del self.__dict__["_pretrained_forwarded_to"]
                return init(self, *args, **kwargs)
            self.__dict__["_pretrained_recording"] = True
            try:
                config = _record_arguments(init, args, kwargs)
                self.__dict__["_pretrained_config"] = config if config is not None else {}
                target = _FORWARDS_KWARGS_TO.get(owner)
                if target is not None:
                    self.__dict__["_pretrained_forwarded_to"] = _init_owner(target)
                init(self, *args, **kwargs)
            finally:
                self.__dict__.pop("_pretrained_recording", None)
                self.__dict__.pop("_pretrained_forwarded_to", None)
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
    def from_config(cls, config: Mapping[str, Any], **overrides: Any):
        """`cls` built from a recorded config (validated first, see `instantiate_from_config`)."""
        return instantiate_from_config(cls, config, overrides=overrides)

    def config_document(self) -> dict:
        """What goes into `config.json`: class name, package, version and the constructor arguments."""
        package, version = package_info(type(self))
        return {
            "class": _stored_name(type(self)),
            "package": package,
            "version": version,
            "format_version": FORMAT_VERSION,
            "config": self.pretrained_config,
        }

    # -- save / load ----------------------------------------------------------------------------------------

    def save_pretrained(
        self,
        folder: PathLike,
        *,
        state_dict: Mapping[str, torch.Tensor] | None = None,
        push_to_hub: bool = False,
        repo_id: str | None = None,
        token: str | bool | None = None,
        private: bool | None = None,
        revision: str | None = None,
        commit_message: str | None = None,
        create_pr: bool = False,
    ) -> Path:
        """Writes `folder/config.json` and `folder/model.safetensors` (both atomically). Returns the folder.

        `push_to_hub=True` also writes a model card (`folder/README.md`) and uploads the folder to the Hub repo
        `repo_id` (default: the folder's name); `token`, `private`, `revision`, `commit_message` and `create_pr`
        are those of `push_to_hub` and are only accepted with it.
        """
        folder = Path(folder)
        hub_arguments = {
            "repo_id": repo_id,
            "token": token,
            "private": private,
            "revision": revision,
            "commit_message": commit_message,
            "create_pr": create_pr or None,
        }
        if not isinstance(push_to_hub, bool):
            raise TypeError(f"push_to_hub: expected a bool, got {type(push_to_hub).__name__}")
        given = [name for name, value in hub_arguments.items() if value is not None]
        if given and not push_to_hub:
            raise ValueError(f"{given[0]}: only used when uploading; pass push_to_hub=True (or call push_to_hub)")
        upload_to = ""
        if push_to_hub:
            from synthesis_core import hub

            upload_to = hub.check_repo_id(repo_id if repo_id is not None else folder.resolve().name)
        if folder.exists() and not folder.is_dir():
            raise ValueError(f"folder: {folder} exists and is not a folder")
        folder.mkdir(parents=True, exist_ok=True)
        document = self.config_document()
        tensors = dict(state_dict if state_dict is not None else self.state_dict())  # type: ignore[attr-defined]
        save_checkpoint(
            folder / WEIGHTS_NAME,
            tensors,
            {"class": document["class"], "package": document["package"], "version": document["version"]},
        )
        atomic_write_json(folder / CONFIG_NAME, document)
        if push_to_hub:
            hub.write_model_card(self, folder, upload_to)
            hub.upload_model_folder(
                folder,
                upload_to,
                token=token,
                private=private,
                revision=revision,
                commit_message=commit_message or f"Upload {type(self).__name__}",
                create_pr=create_pr,
            )
        return folder

    def push_to_hub(
        self,
        repo_id: str,
        *,
        token: str | bool | None = None,
        private: bool | None = None,
        revision: str | None = None,
        commit_message: str | None = None,
        create_pr: bool = False,
        state_dict: Mapping[str, torch.Tensor] | None = None,
    ) -> Any:
        """Publishes the model as the Hugging Face Hub model repo `repo_id` (`org/name`): `config.json`,
        `model.safetensors` and a generated model card `README.md` (package, version, config, how to load).

        Creates the repo when it does not exist (`private` applies then), and the branch `revision` when given;
        `create_pr=True` opens a pull request instead of committing. `token` defaults to the logged-in one
        (`hf auth login` / `HF_TOKEN`). Returns the `huggingface_hub.CommitInfo` of the commit.
        `Model.from_pretrained(repo_id)` loads it back.
        """
        from synthesis_core.hub import push_model_to_hub

        return push_model_to_hub(
            self,
            repo_id,
            token=token,
            private=private,
            revision=revision,
            commit_message=commit_message,
            create_pr=create_pr,
            state_dict=state_dict,
        )

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: PathLike,
        map_location: str | torch.device = "cpu",
        *,
        strict: bool = True,
        revision: str | None = None,
        cache_dir: PathLike | None = None,
        local_files_only: bool = False,
        token: str | bool | None = None,
        **overrides: Any,
    ):
        """Rebuilds the model saved in a folder, or published as a Hugging Face Hub repo, and loads its weights;
        `overrides` replace constructor arguments.

        `name_or_path` is a folder written by `save_pretrained` or, when no such folder exists, a Hub repo id
        (`org/name`): its `config.json` and `model.safetensors` are fetched into the Hub cache (`cache_dir`) at
        `revision` (branch, tag or commit), with `token` for private repos, or read from that cache alone when
        `local_files_only=True` or `HF_HUB_OFFLINE` is set (see `synthesis_core.hub.resolve_model_folder`). Both
        are loaded the same way: the folder may hold `cls` or a registered subclass of it; nested models must be
        registered classes; weights come from safetensors only.
        """
        folder = _resolve_folder(name_or_path, revision, cache_dir, local_files_only, token)
        document = _read_config_document(folder)
        recorded = document.get("class")
        target = cls
        if recorded is not None and recorded not in (_stored_name(cls), class_path(cls)):
            other = resolve_loadable(recorded, source=str(folder / CONFIG_NAME), where="['class']")
            if not issubclass(other, cls):
                raise TypeError(
                    f"{folder} holds a {recorded}, which is not a {class_path(cls)}; "
                    "use load_model_from_folder to load whatever it holds"
                )
            target = other
        return _build_and_load(target, folder, document, map_location, strict, overrides)


def _resolve_folder(
    name_or_path: PathLike,
    revision: str | None,
    cache_dir: PathLike | None,
    local_files_only: bool,
    token: str | bool | None,
) -> Path:
    """The folder to load: `name_or_path` itself when it is one, else the Hub cache's snapshot of that repo."""
    from synthesis_core.hub import resolve_model_folder

    return resolve_model_folder(
        name_or_path, revision=revision, cache_dir=cache_dir, local_files_only=local_files_only, token=token
    )


def _read_config_document(folder: Path) -> dict:
    config_path = folder / CONFIG_NAME
    if not config_path.is_file():
        raise FileNotFoundError(f"no {CONFIG_NAME} in {folder} (expected a folder written by save_pretrained)")
    try:
        document = read_json(config_path)
    except (ValueError, UnicodeDecodeError) as err:  # json.JSONDecodeError is a ValueError
        raise CheckpointError(f"{config_path} is not valid JSON ({err})") from err
    if not isinstance(document, dict) or not isinstance(document.get("config"), dict):
        raise CheckpointError(f"{config_path} is not a config written by save_pretrained")
    if "class" in document and not isinstance(document["class"], str):
        raise CheckpointError(
            f"['class'] in {config_path}: expected a class name (a string), got {type(document['class']).__name__}"
        )
    return document


def _build_and_load(target: type, folder: Path, document: dict, map_location, strict: bool, overrides: dict):
    saved_version = document.get("version")
    _, current_version = package_info(target)
    if saved_version != current_version:
        logger.warning(
            "%s was saved with %s %s and is loaded with %s %s; check the result",
            folder,
            document.get("package"),
            saved_version,
            document.get("package"),
            current_version,
        )
    # the config is validated (pure: nothing imported or built) before the weights file is looked for, so that a
    # crafted config is reported as such whatever else the folder lacks
    _check_config(target, document["config"], "config", "", str(folder / CONFIG_NAME), True, supplied=overrides)
    if not (folder / WEIGHTS_NAME).is_file():
        # other weight files (pickles such as pytorch_model.bin) are never read
        raise FileNotFoundError(
            f"no {WEIGHTS_NAME} in {folder}: weights are only loaded from safetensors "
            "(pickled files such as pytorch_model.bin or *.pt are never read)"
        )
    model = instantiate_from_config(target, document["config"], overrides=overrides, source=str(folder / CONFIG_NAME))
    tensors, _ = load_checkpoint(folder / WEIGHTS_NAME, map_location="cpu")
    load_state_dict_checked(
        model, tensors, strict=strict, saved_version=saved_version, current_version=current_version, source=str(folder)
    )
    return model.to(map_location)


def load_model_from_folder(
    folder: PathLike,
    map_location: str | torch.device = "cpu",
    *,
    strict: bool = True,
    revision: str | None = None,
    cache_dir: PathLike | None = None,
    local_files_only: bool = False,
    token: str | bool | None = None,
    **overrides: Any,
):
    """Loads whatever model `save_pretrained` wrote to `folder` (or, when no such folder exists, to the Hugging Face
    Hub repo of that id; `revision`, `cache_dir`, `local_files_only` and `token` as in `from_pretrained`): its
    recorded class must be a registered one (`register_loadable`), looked up by its exact name; nothing else is
    imported or built."""
    folder = _resolve_folder(folder, revision, cache_dir, local_files_only, token)
    document = _read_config_document(folder)
    if not document.get("class"):
        raise CheckpointError(f"{folder / CONFIG_NAME} does not record the model class")
    cls = resolve_loadable(document["class"], source=str(folder / CONFIG_NAME), where="['class']")
    return _build_and_load(cls, folder, document, map_location, strict, overrides)


def check_state_dict(
    module: torch.nn.Module,
    tensors: Mapping[str, torch.Tensor],
    *,
    strict: bool = True,
    saved_version: str | None = None,
    current_version: str | None = None,
    source: str = "checkpoint",
) -> None:
    """Raises the `CheckpointError` that `load_state_dict_checked` would raise, changing nothing: a trainer checks
    every part of a checkpoint this way before it loads any of them."""
    expected = module.state_dict()
    missing = [k for k in expected if k not in tensors]
    unexpected = [k for k in tensors if k not in expected]
    mismatched = [
        f"{k}: checkpoint {tuple(tensors[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in expected
        if k in tensors and tensors[k].shape != expected[k].shape
    ]
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
        raise CheckpointError(
            f"{source} does not fit {type(module).__qualname__} "
            f"(checkpoint written by version {saved_version}, loading with version "
            f"{current_version}): " + "; ".join(problems)
        )


def load_state_dict_checked(
    module: torch.nn.Module,
    tensors: Mapping[str, torch.Tensor],
    *,
    strict: bool = True,
    saved_version: str | None = None,
    current_version: str | None = None,
    source: str = "checkpoint",
) -> None:
    """`module.load_state_dict` with an error that lists missing/unexpected keys and shape mismatches and names
    the version that wrote the checkpoint and the one reading it."""
    check_state_dict(
        module, tensors, strict=strict, saved_version=saved_version, current_version=current_version, source=source
    )
    module.load_state_dict(dict(tensors), strict=strict)


__all__ = [
    "CONFIG_NAME",
    "WEIGHTS_NAME",
    "CheckpointError",
    "atomic_path",
    "remove_stale_temporary_files",
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
    "ENTRY_POINT_GROUP",
    "register_loadable",
    "loadable_classes",
    "resolve_loadable",
    "constructor_parameters",
    "check_config",
    "instantiate_from_config",
    "PretrainedMixin",
    "load_model_from_folder",
    "check_state_dict",
    "load_state_dict_checked",
]
