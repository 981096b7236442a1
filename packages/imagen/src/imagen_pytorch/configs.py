"""Typed, JSON-serialisable configurations: build an Imagen, an ElucidatedImagen or a whole trainer from a file.

```
config = ImagenConfig(unets=[dict(dim=32, dim_mults=(1, 2, 4, 8))], image_sizes=(64,))
config.save('imagen.json')
imagen = ImagenConfig.load('imagen.json').create()
```
U-Nets are given as dicts of their keyword arguments; an optional `unet_type` key picks the class ('Unet' by
default, 'Unet3D' with `video=True`, or 'Unet3D', 'NullUnet', 'BaseUnet64', 'SRUnet256', 'SRUnet1024'), or as
`UnetConfig` / `Unet3DConfig` / `NullUnetConfig` objects (the published package's names).

One config system, derived from the constructors: the fields of every config class here are read from the
signature of the constructor it builds (`ImagenConfig` from `Imagen.__init__` plus the `CascadeBase.__init__`
arguments its `**cascade_kwargs` reach, `UnetConfig` from `Unet.__init__`, ...), so an argument is written once,
in the model's constructor, and its config follows it. Only fields that belong to the config alone (`video`) are
written here.

Config files and checkpoint metadata are untrusted data: `from_dict`/`load` check that every unet key is a real
constructor parameter and every value plain JSON data (`synthesis_core.checkpoint.check_config`), raising
`CheckpointError` naming the key path and the file before anything is built.

`load_imagen_from_checkpoint(path)` rebuilds the cascade recorded in a checkpoint written by `ImagenTrainer.save`.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar, cast

from torch import nn

from imagen_pytorch.cascade import CascadeBase
from imagen_pytorch.elucidated import ElucidatedImagen
from imagen_pytorch.imagen import Imagen
from imagen_pytorch.unet import BaseUnet64, NullUnet, SRUnet256, SRUnet1024, Unet
from imagen_pytorch.unet3d import Unet3D
from synthesis_core.checkpoint import (
    CheckpointError,
    atomic_write_json,
    check_config,
    constructor_parameters,
    load_checkpoint,
    load_state_dict_checked,
    register_loadable,
)
from synthesis_core.checks import check_choice
from synthesis_core.training import extract_model_state

logger = logging.getLogger(__name__)

__all__ = [
    "UNET_TYPES",
    "UnetConfig",
    "Unet3DConfig",
    "NullUnetConfig",
    "cascade_parameters",
    "check_unet_spec",
    "build_unet",
    "unet_to_dict",
    "ImagenConfig",
    "ElucidatedImagenConfig",
    "ImagenTrainerConfig",
    "imagen_config_from_model",
    "imagen_from_checkpoint_data",
    "load_imagen_from_checkpoint",
]

# The classes a saved config.json may name (`from_pretrained`, `load_model_from_folder`): nothing else is ever
# built from a file. Registered here, before the config classes below read the constructors' parameters: the
# presets and Unet3D pass their **kwargs on to Unet, the cascades theirs to CascadeBase.
register_loadable(Unet)
register_loadable(NullUnet)
register_loadable(BaseUnet64, forwards_kwargs_to=Unet)
register_loadable(SRUnet256, forwards_kwargs_to=Unet)
register_loadable(SRUnet1024, forwards_kwargs_to=Unet)
register_loadable(Unet3D, forwards_kwargs_to=Unet)
register_loadable(Imagen, forwards_kwargs_to=CascadeBase)
register_loadable(ElucidatedImagen, forwards_kwargs_to=CascadeBase)

UNET_TYPES: dict[str, type[nn.Module]] = {
    "Unet": Unet,
    "Unet3D": Unet3D,
    "NullUnet": NullUnet,
    "BaseUnet64": BaseUnet64,
    "SRUnet256": SRUnet256,
    "SRUnet1024": SRUnet1024,
}


def _to_json(value: Any) -> Any:
    """Tuples -> lists, recursively (what JSON holds)."""
    if isinstance(value, list | tuple):
        return [_to_json(v) for v in value]
    if isinstance(value, dict):
        return {k: _to_json(v) for k, v in value.items()}
    return value


def _to_tuples(value: Any) -> Any:
    """Lists -> tuples, recursively: model constructors take tuples for per-level / per-unet settings."""
    if isinstance(value, list | tuple):
        return tuple(_to_tuples(v) for v in value)
    if isinstance(value, dict):
        return {k: _to_tuples(v) for k, v in value.items()}
    return value


def check_unet_spec(
    spec: Any, *, source: str = "config", where: str = "unets", default_type: str = "Unet"
) -> type[nn.Module]:
    """The class a unet dict describes, after checking it names a known `unet_type` (`default_type` when it names
    none), gives only real constructor parameters and holds plain JSON data; a `CheckpointError` naming `where`
    and `source` otherwise."""
    if not isinstance(spec, dict):
        raise TypeError(f"{where}: expected a dict of unet keyword arguments, got {type(spec).__name__}")
    unet_type = spec.get("unet_type", default_type)
    if not isinstance(unet_type, str) or unet_type not in UNET_TYPES:
        raise CheckpointError(
            f"{where}['unet_type'] in {source}: expected one of {list(UNET_TYPES)}, got {unet_type!r}"
        )
    cls = UNET_TYPES[unet_type]
    kwargs = {k: v for k, v in spec.items() if k != "unet_type"}
    # unet arguments are numbers, strings and lists of them: a class named in here is refused, not built
    check_config(cls, kwargs, source=source, where=where, allow_classes=False)
    return cls


def build_unet(spec: Any, *, source: str = "config", where: str = "unets", video: bool = False) -> nn.Module:
    """A U-Net from a dict of its keyword arguments (`unet_type` picks the class; without one, `Unet`, or
    `Unet3D` when `video`) or from a `UnetConfig` / `Unet3DConfig` / `NullUnetConfig` (a `UnetConfig` builds a
    `Unet3D` when `video`, as in the published package); modules pass through.

    The dict is checked first (`check_unet_spec`); `source` and `where` name it in the error.
    """
    if isinstance(spec, nn.Module):
        return spec
    if isinstance(spec, _UnetConfigBase):
        spec = spec.to_spec(video=video)
    cls = check_unet_spec(spec, source=source, where=where, default_type="Unet3D" if video else "Unet")
    return cls(**_to_tuples({k: v for k, v in spec.items() if k != "unet_type"}))


def unet_to_dict(unet: nn.Module) -> dict:
    """The dict `build_unet` turns back into an equal (untrained) U-Net."""
    unet_type = next((name for name, cls in UNET_TYPES.items() if type(unet) is cls), None)
    if unet_type is None:
        raise TypeError(f"unets: cannot describe a {type(unet).__name__} in a config (known: {list(UNET_TYPES)})")
    return {"unet_type": unet_type, **_to_json(dict(getattr(unet, "config", None) or {}))}


# ---------------------------------------------------------------------------------------------------------------
# config classes derived from the constructors


def cascade_parameters(model_class: type) -> dict[str, inspect.Parameter]:
    """Every keyword a cascade class takes, by name: its own (`Imagen.__init__`: `timesteps`, ...), then the
    arguments every cascade takes, which its `**cascade_kwargs` pass on to `CascadeBase.__init__`."""
    if not (isinstance(model_class, type) and issubclass(model_class, CascadeBase)):
        raise TypeError(f"model_class: expected Imagen, ElucidatedImagen or another CascadeBase, got {model_class!r}")
    return constructor_parameters(model_class)


# the config classes `_fields_from` decorates (they declare the ClassVars it sets)
_ConfigT = TypeVar("_ConfigT", bound="_UnetConfigBase | _CascadeConfig")


def _fields_from(
    parameters: Callable[[], Mapping[str, inspect.Parameter]],
    *,
    annotations: Mapping[str, str] | None = None,
    extra: Mapping[str, tuple[str, Any]] | None = None,
):
    """Class decorator (applied before `@dataclass`): one field per constructor parameter, with its annotation
    and default (required ones first, in their order), then the config-only `extra` fields `{name: (annotation,
    default)}`. `annotations` replaces a parameter's annotation (e.g. `unets` as dicts)."""

    def decorate(cls: type[_ConfigT]) -> type[_ConfigT]:
        params = [
            p
            for p in parameters().values()
            if p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
        ]
        own = dict(cls.__dict__.get("__annotations__", {}))  # the ClassVars the class declares itself
        derived: dict[str, Any] = {}
        for param in sorted(params, key=lambda p: p.default is not inspect.Parameter.empty):
            annotation = (annotations or {}).get(param.name, param.annotation)
            derived[param.name] = "Any" if annotation is inspect.Parameter.empty else annotation
            if param.default is not inspect.Parameter.empty:
                setattr(cls, param.name, param.default)
        for name, (annotation, default) in (extra or {}).items():
            derived[name] = annotation
            setattr(cls, name, default)
        cls.__annotations__ = {**own, **derived}
        cls.constructor_fields = tuple(p.name for p in params)
        cls.config_only_fields = tuple(extra or ())
        return cls

    return decorate


def _model_kwargs(config: _CascadeConfig) -> dict:
    return {name: _to_tuples(getattr(config, name)) for name in config.constructor_fields if name != "unets"}


class _JsonConfig:
    """to_dict / from_dict / save / load shared by the config dataclasses."""

    # set by `@dataclass` on every subclass (declared so that `dataclasses.fields(self)` type-checks)
    __dataclass_fields__: ClassVar[dict[str, dataclasses.Field[Any]]]

    def to_dict(self) -> dict:
        return _to_json({f.name: getattr(self, f.name) for f in dataclasses.fields(self)})

    @classmethod
    def from_dict(cls, data: dict, *, source: str = "config", where: str = "config"):
        """The config held by `data` (e.g. read from a file: `source` and `where` name it in errors)."""
        if not isinstance(data, dict):
            raise TypeError(f"{cls.__name__}: expected a dict, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{cls.__name__}: unknown field(s) {unknown}; known fields: {sorted(known)}")
        cls._check_data(data, source=source, where=where)
        return cls(**data)

    @classmethod
    def _check_data(cls, data: dict, *, source: str, where: str) -> None:
        """Checks the values of `data` before the dataclass is built (overridden by the cascade configs)."""

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls, text: str, *, source: str = "config"):
        return cls.from_dict(json.loads(text), source=source)

    def save(self, path: str | Path) -> Path:
        """Write the config as JSON (atomically)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, self.to_dict())
        return path

    @classmethod
    def load(cls, path: str | Path):
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file {path} does not exist (write one with `imagen config --path {path}`)")
        return cls.from_json(path.read_text(), source=str(path))


class _UnetConfigBase(_JsonConfig):
    """A U-Net's keyword arguments as a config (`create()` builds it); the fields are its constructor's."""

    unet_class: ClassVar[type[nn.Module]]
    constructor_fields: ClassVar[tuple[str, ...]]
    config_only_fields: ClassVar[tuple[str, ...]]

    def to_spec(self, video: bool = False) -> dict:
        """The unet dict of this config (`unet_type` + arguments); a `UnetConfig` is a `Unet3D` when `video`."""
        cls = Unet3D if video and self.unet_class is Unet else self.unet_class
        unet_type = next(name for name, known in UNET_TYPES.items() if known is cls)
        return {"unet_type": unet_type, **self.to_dict()}

    def create(self) -> nn.Module:
        return build_unet(self.to_spec(), where=type(self).__name__)


@dataclass
@_fields_from(lambda: constructor_parameters(Unet))
class UnetConfig(_UnetConfigBase):
    """The arguments of `Unet` (every one of its constructor's, with its defaults)."""

    unet_class: ClassVar[type[nn.Module]] = Unet


@dataclass
@_fields_from(lambda: constructor_parameters(Unet3D))
class Unet3DConfig(_UnetConfigBase):
    """The arguments of `Unet3D` (its own and the `Unet` ones it passes on)."""

    unet_class: ClassVar[type[nn.Module]] = Unet3D


@dataclass
@_fields_from(lambda: constructor_parameters(NullUnet))
class NullUnetConfig(_UnetConfigBase):
    """A `NullUnet` placeholder (a stage trained or sampled elsewhere)."""

    unet_class: ClassVar[type[nn.Module]] = NullUnet


class _CascadeConfig(_JsonConfig):
    """What the two cascade configs share: `create()` and the checks of data read from a file."""

    model_class: ClassVar[type]
    constructor_fields: ClassVar[tuple[str, ...]]
    config_only_fields: ClassVar[tuple[str, ...]]
    # fields every cascade config has (`_fields_from` adds them to the subclasses, unseen by the type checker)
    unets: list[Any]
    video: bool

    @classmethod
    def _check_data(cls, data: dict, *, source: str, where: str) -> None:
        unets = data.get("unets", [])
        if not isinstance(unets, list | tuple):
            raise CheckpointError(
                f"{where}['unets'] in {source}: expected a list of unet dicts, got {type(unets).__name__}"
            )
        video = data.get("video", False)
        if not isinstance(video, bool):
            raise CheckpointError(f"{where}['video'] in {source}: expected true or false, got {video!r}")
        for index, unet in enumerate(unets):
            if not isinstance(unet, nn.Module | _UnetConfigBase):
                check_unet_spec(
                    unet, source=source, where=f"{where}['unets'][{index}]", default_type="Unet3D" if video else "Unet"
                )
        # the cascade's own arguments: real constructor parameters holding plain JSON data (unets checked above)
        arguments = {k: v for k, v in data.items() if k not in ("unets", *cls.config_only_fields)}
        check_config(cls.model_class, arguments | {"unets": []}, source=source, where=where, allow_classes=False)

    def __post_init__(self) -> None:
        self.check_image_sizes()

    def check_image_sizes(self):
        """`self` if `image_sizes` is one size, or one size per unet; a ValueError otherwise (checked at
        construction, as the published config did)."""
        sizes, unets = self.image_sizes, self.unets
        if isinstance(sizes, list | tuple) and isinstance(unets, list | tuple) and len(sizes) != len(unets):
            raise ValueError(f"image_sizes: expected one size per unet ({len(unets)}), got {len(sizes)}: {list(sizes)}")
        return self

    def to_dict(self) -> dict:
        data = super().to_dict()
        data["unets"] = [
            unet.to_spec(video=self.video) if isinstance(unet, _UnetConfigBase) else _to_json(unet)
            for unet in self.unets
        ]
        return data

    def create(self):
        unets = [build_unet(unet, where=f"unets[{index}]", video=self.video) for index, unet in enumerate(self.unets)]
        model = self.model_class(unets, **_model_kwargs(self))
        return model


_UNETS_ANNOTATION = {"unets": "list[dict | UnetConfig | Unet3DConfig | NullUnetConfig]"}
# `video`: unets given without a `unet_type` (and `UnetConfig`s) are built as `Unet3D` (the published keyword)
_CASCADE_CONFIG_ONLY = {"video": ("bool", False)}


@dataclass
@_fields_from(lambda: cascade_parameters(Imagen), annotations=_UNETS_ANNOTATION, extra=_CASCADE_CONFIG_ONLY)
class ImagenConfig(_CascadeConfig):
    """The arguments of `Imagen` (its constructor's and the cascade's), with `unets` as dicts or `UnetConfig`s
    (see the module docstring), plus `video`."""

    model_type: ClassVar[str] = "original"
    model_class: ClassVar[type] = Imagen

    def create(self) -> Imagen:
        return super().create()


@dataclass
@_fields_from(lambda: cascade_parameters(ElucidatedImagen), annotations=_UNETS_ANNOTATION, extra=_CASCADE_CONFIG_ONLY)
class ElucidatedImagenConfig(_CascadeConfig):
    """The arguments of `ElucidatedImagen` (its constructor's and the cascade's), with `unets` as dicts or
    `UnetConfig`s (see the module docstring), plus `video`."""

    model_type: ClassVar[str] = "elucidated"
    model_class: ClassVar[type] = ElucidatedImagen

    def create(self) -> ElucidatedImagen:
        return super().create()


IMAGEN_CONFIG_TYPES: dict[str, type[_JsonConfig]] = {"original": ImagenConfig, "elucidated": ElucidatedImagenConfig}
_CONFIG_OF_MODEL: dict[type, type[ImagenConfig] | type[ElucidatedImagenConfig]] = {
    Imagen: ImagenConfig,
    ElucidatedImagen: ElucidatedImagenConfig,
}


def imagen_config_from_model(imagen: Imagen | ElucidatedImagen) -> ImagenConfig | ElucidatedImagenConfig:
    """The config that rebuilds `imagen` (untrained): its recorded constructor arguments, unets as dicts."""
    config_cls = _CONFIG_OF_MODEL.get(type(imagen))
    if config_cls is None:
        raise TypeError(f"imagen: expected an Imagen or ElucidatedImagen, got {type(imagen).__name__}")
    recorded = dict(imagen.pretrained_config)
    recorded.pop("unets", None)
    known = set(config_cls.constructor_fields)
    kwargs = {name: value for name, value in recorded.items() if name in known}
    # the cascade's unets as they are now (after casting), so the rebuilt model has the same parameters
    # cast: the dataclass fields come from the constructor's signature at import time, which mypy does not see
    build = cast(Callable[..., ImagenConfig | ElucidatedImagenConfig], config_cls)
    return build(unets=[unet_to_dict(unet) for unet in imagen.unets], **kwargs)


@dataclass
class ImagenTrainerConfig(_JsonConfig):
    """A cascade, the trainer's settings and the dataset, in one file (what `imagen config` writes).

    `imagen` holds an `ImagenConfig` or `ElucidatedImagenConfig` (in JSON: its fields plus `"type"`: 'original'
    or 'elucidated'). `dataset` holds the arguments of `imagen_pytorch.data.Dataset` (`folder`, `image_size`
    defaults to the last unet's size, `with_captions`, `exts`) plus the dataloader's `batch_size`,
    `num_workers` and `shuffle`. The other fields are `ImagenTrainer` keyword arguments.
    """

    imagen: ImagenConfig | ElucidatedImagenConfig
    dataset: dict = field(default_factory=lambda: {"folder": "./images", "batch_size": 16})
    lr: float | list[float] = 1e-4
    eps: float | list[float] = 1e-8
    beta1: float | list[float] = 0.9
    beta2: float | list[float] = 0.99
    max_grad_norm: float | list[float] | None = None
    warmup_steps: int | list[int] | None = None
    cosine_decay_max_steps: int | list[int] | None = None
    use_ema: bool = True
    ema_decay: float = 0.995
    ema_update_every: int = 10
    ema_update_after_step: int = 100
    mixed_precision: str = "no"
    gradient_accumulate_every: int = 1
    max_batch_size: int | None = None
    split_valid_from_train: bool = False
    split_valid_fraction: float = 0.025
    checkpoint_path: str | None = "./checkpoints"
    checkpoint_every: int | None = 1000
    max_checkpoints_keep: int = 3
    seed: int | None = None

    def __post_init__(self):
        if isinstance(self.imagen, dict):
            data = dict(self.imagen)
            kind = check_choice("imagen type", data.pop("type", "original"), IMAGEN_CONFIG_TYPES)
            self.imagen = IMAGEN_CONFIG_TYPES[kind].from_dict(data)
        if not isinstance(self.imagen, ImagenConfig | ElucidatedImagenConfig):
            raise TypeError(
                "imagen: expected an ImagenConfig, ElucidatedImagenConfig or a dict of one, got "
                f"{type(self.imagen).__name__}"
            )

    @classmethod
    def from_dict(cls, data: dict, *, source: str = "config", where: str = "config"):
        """The config held by `data`; its `imagen` dict is checked as a cascade config (see `ImagenConfig`)."""
        if isinstance(data, dict) and isinstance(data.get("imagen"), dict):
            imagen = dict(data["imagen"])
            kind = check_choice("imagen type", imagen.pop("type", "original"), IMAGEN_CONFIG_TYPES)
            imagen_config = IMAGEN_CONFIG_TYPES[kind].from_dict(imagen, source=source, where=f"{where}['imagen']")
            data = {**data, "imagen": imagen_config}
        return super().from_dict(data, source=source, where=where)

    def to_dict(self) -> dict:
        data = super().to_dict()
        data["imagen"] = {"type": self.imagen.model_type, **self.imagen.to_dict()}
        return data

    def trainer_kwargs(self) -> dict:
        """The `ImagenTrainer` keyword arguments of this config."""
        skip = {"imagen", "dataset", "max_batch_size"}
        return {f.name: _to_tuples(getattr(self, f.name)) for f in dataclasses.fields(self) if f.name not in skip}

    def create(self):
        """An `ImagenTrainer` around a freshly built cascade (no dataset attached; see `imagen train`)."""
        from imagen_pytorch.trainer import ImagenTrainer

        return ImagenTrainer(self.imagen.create(), **self.trainer_kwargs())


# ---------------------------------------------------------------------------------------------------------------
# checkpoints


def imagen_from_checkpoint_data(
    tensors: dict,
    metadata: dict,
    *,
    source: str = "checkpoint",
    load_weights: bool = True,
    load_ema_if_available: bool = False,
) -> Imagen | ElucidatedImagen:
    """The cascade described by a trainer checkpoint's metadata, with its unets' weights from `tensors`."""
    recorded = (metadata.get("config") or {}).get("imagen")
    if not isinstance(recorded, dict):
        raise CheckpointError(f"{source} holds no imagen config; was it written by ImagenTrainer.save?")
    recorded = dict(recorded)
    kind = check_choice("imagen type", recorded.pop("type", "original"), IMAGEN_CONFIG_TYPES)
    # checked (keys, plain data) before any unet is built: the metadata is as untrusted as the file
    imagen = IMAGEN_CONFIG_TYPES[kind].from_dict(recorded, source=source, where="config['imagen']").create()
    if not load_weights:
        return imagen
    saved_models = metadata.get("models", {})
    if not isinstance(saved_models, dict) or not all(isinstance(v, dict) for v in saved_models.values()):
        raise CheckpointError(f"['models'] in {source}: expected a dict of per-unet dicts")
    for index, unet in enumerate(imagen.unets):
        name = f"unet{index + 1}"
        if name not in saved_models:
            if not isinstance(unet, NullUnet):
                logger.warning("%s has no weights for unet %d; it stays untrained", source, index + 1)
            continue
        use_ema = load_ema_if_available and saved_models[name].get("ema", False)
        load_state_dict_checked(
            unet,
            extract_model_state(tensors, name, ema=use_ema),
            source=f"{source} ({'EMA of ' if use_ema else ''}unet {index + 1})",
        )
    return imagen


def load_imagen_from_checkpoint(
    path: str | Path, load_weights: bool = True, load_ema_if_available: bool = False
) -> Imagen | ElucidatedImagen:
    """Rebuild the cascade saved by `ImagenTrainer.save(path)` (its config travels in the file's metadata).

    `load_weights=False` gives the untrained model; `load_ema_if_available=True` loads each unet's EMA weights
    where the checkpoint has them.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    tensors, metadata = load_checkpoint(path)
    return imagen_from_checkpoint_data(
        tensors, metadata, source=str(path), load_weights=load_weights, load_ema_if_available=load_ema_if_available
    )
