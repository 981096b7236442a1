"""Typed, JSON-serialisable configurations: build an Imagen, an ElucidatedImagen or a whole trainer from a file.

```
config = ImagenConfig(unets=[dict(dim=32, dim_mults=(1, 2, 4, 8))], image_sizes=(64,))
config.save('imagen.json')
imagen = ImagenConfig.load('imagen.json').create()
```
U-Nets are given as dicts of their keyword arguments; an optional `unet_type` key picks the class ('Unet' by
default, or 'Unet3D', 'NullUnet', 'BaseUnet64', 'SRUnet256', 'SRUnet1024').

Config files and checkpoint metadata are untrusted data: `from_dict`/`load` check that every unet key is a real
constructor parameter and every value plain JSON data (`synthesis_core.checkpoint.check_config`), raising
`CheckpointError` naming the key path and the file before anything is built.

`load_imagen_from_checkpoint(path)` rebuilds the cascade recorded in a checkpoint written by `ImagenTrainer.save`.
"""
from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from torch import nn

from imagen_pytorch.elucidated import ElucidatedImagen
from imagen_pytorch.imagen import Imagen
from imagen_pytorch.unet import BaseUnet64, NullUnet, SRUnet256, SRUnet1024, Unet
from imagen_pytorch.unet3d import Unet3D
from synthesis_core.checkpoint import (
    CheckpointError,
    atomic_write_json,
    check_config,
    load_checkpoint,
    load_state_dict_checked,
)
from synthesis_core.checks import check_choice
from synthesis_core.text import DEFAULT_T5_NAME
from synthesis_core.training import extract_model_state

logger = logging.getLogger(__name__)

__all__ = [
    "UNET_TYPES",
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


def check_unet_spec(spec: Any, *, source: str = "config", where: str = "unets") -> type[nn.Module]:
    """The class a unet dict describes, after checking it names a known `unet_type`, gives only real
    constructor parameters and holds plain JSON data; a `CheckpointError` naming `where` and `source` otherwise."""
    if not isinstance(spec, dict):
        raise TypeError(f"{where}: expected a dict of unet keyword arguments, got {type(spec).__name__}")
    unet_type = spec.get("unet_type", "Unet")
    if not isinstance(unet_type, str) or unet_type not in UNET_TYPES:
        raise CheckpointError(f"{where}['unet_type'] in {source}: expected one of {list(UNET_TYPES)}, "
                              f"got {unet_type!r}")
    cls = UNET_TYPES[unet_type]
    kwargs = {k: v for k, v in spec.items() if k != "unet_type"}
    # unet arguments are numbers, strings and lists of them: a class named in here is refused, not built
    check_config(cls, kwargs, source=source, where=where, allow_classes=False)
    return cls


def build_unet(spec: dict | nn.Module, *, source: str = "config", where: str = "unets") -> nn.Module:
    """A U-Net from a dict of its keyword arguments (`unet_type` picks the class); modules pass through.

    The dict is checked first (`check_unet_spec`); `source` and `where` name it in the error.
    """
    if isinstance(spec, nn.Module):
        return spec
    cls = check_unet_spec(spec, source=source, where=where)
    return cls(**_to_tuples({k: v for k, v in spec.items() if k != "unet_type"}))


def unet_to_dict(unet: nn.Module) -> dict:
    """The dict `build_unet` turns back into an equal (untrained) U-Net."""
    unet_type = next((name for name, cls in UNET_TYPES.items() if type(unet) is cls), None)
    if unet_type is None:
        raise TypeError(f"unets: cannot describe a {type(unet).__name__} in a config (known: {list(UNET_TYPES)})")
    return {"unet_type": unet_type, **_to_json(dict(getattr(unet, "config", None) or {}))}


class _JsonConfig:
    """to_dict / from_dict / save / load shared by the config dataclasses."""

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


def _model_kwargs(config: _JsonConfig) -> dict:
    return {f.name: _to_tuples(getattr(config, f.name)) for f in dataclasses.fields(config) if f.name != "unets"}


class _CascadeConfig(_JsonConfig):
    """What the two cascade configs share: `create()` and the checks of data read from a file."""

    model_class: ClassVar[type]

    @classmethod
    def _check_data(cls, data: dict, *, source: str, where: str) -> None:
        unets = data.get("unets", [])
        if not isinstance(unets, list | tuple):
            raise CheckpointError(f"{where}['unets'] in {source}: expected a list of unet dicts, "
                                  f"got {type(unets).__name__}")
        for index, unet in enumerate(unets):
            if not isinstance(unet, nn.Module):
                check_unet_spec(unet, source=source, where=f"{where}['unets'][{index}]")
        # the cascade's own arguments: real constructor parameters holding plain JSON data (unets checked above)
        check_config(cls.model_class, {k: v for k, v in data.items() if k != "unets"} | {"unets": []},
                     source=source, where=where, allow_classes=False)

    def create(self):
        unets = [build_unet(unet, where=f"unets[{index}]") for index, unet in enumerate(self.unets)]
        return self.model_class(unets, **_model_kwargs(self))


@dataclass
class ImagenConfig(_CascadeConfig):
    """The arguments of `Imagen`, with `unets` as dicts (see the module docstring)."""

    model_type: ClassVar[str] = "original"
    model_class: ClassVar[type] = Imagen

    unets: list[dict]
    image_sizes: int | list[int]
    text_encoder_name: str = DEFAULT_T5_NAME
    text_embed_dim: int | None = None
    channels: int = 3
    timesteps: int | list[int] = 1000
    cond_drop_prob: float = 0.1
    loss_type: str = "l2"
    noise_schedules: str | list[str] = "cosine"
    pred_objectives: str | list[str] = "noise"
    random_crop_sizes: int | list[int | None] | None = None
    lowres_noise_schedule: str = "linear"
    lowres_sample_noise_level: float = 0.2
    per_sample_random_aug_noise_level: bool = False
    condition_on_text: bool = True
    auto_normalize_img: bool = True
    dynamic_thresholding: bool | list[bool] = True
    dynamic_thresholding_percentile: float = 0.95
    only_train_unet_number: int | None = None
    temporal_downsample_factor: int | list[int] = 1
    resize_cond_video_frames: bool = True
    resize_mode: str = "nearest"
    min_snr_loss_weight: bool = True
    min_snr_gamma: float = 5
    p2_loss_weight_gamma: float = 0.0
    sampler: str = "dpmpp_2m"
    sample_steps: int | list[int | None] | None = None
    karras_sampling_times: bool = True

    def create(self) -> Imagen:
        return super().create()


@dataclass
class ElucidatedImagenConfig(_CascadeConfig):
    """The arguments of `ElucidatedImagen`, with `unets` as dicts (see the module docstring)."""

    model_type: ClassVar[str] = "elucidated"
    model_class: ClassVar[type] = ElucidatedImagen

    unets: list[dict]
    image_sizes: int | list[int]
    text_encoder_name: str = DEFAULT_T5_NAME
    text_embed_dim: int | None = None
    channels: int = 3
    cond_drop_prob: float = 0.1
    loss_type: str = "l2"
    random_crop_sizes: int | list[int | None] | None = None
    lowres_noise_schedule: str = "linear"
    lowres_sample_noise_level: float = 0.2
    per_sample_random_aug_noise_level: bool = False
    condition_on_text: bool = True
    auto_normalize_img: bool = True
    dynamic_thresholding: bool | list[bool] = True
    dynamic_thresholding_percentile: float = 0.95
    only_train_unet_number: int | None = None
    temporal_downsample_factor: int | list[int] = 1
    resize_cond_video_frames: bool = True
    resize_mode: str = "nearest"
    num_sample_steps: int | list[int] = 32
    sigma_min: float | list[float] = 0.002
    sigma_max: float | list[float] = 80
    sigma_data: float | list[float] = 0.5
    rho: float | list[float] = 7
    P_mean: float | list[float] = -1.2  # noqa: N815 (the paper's names)
    P_std: float | list[float] = 1.2  # noqa: N815
    S_churn: float | list[float] = 80  # noqa: N815
    S_tmin: float | list[float] = 0.05  # noqa: N815
    S_tmax: float | list[float] = 50  # noqa: N815
    S_noise: float | list[float] = 1.003  # noqa: N815
    sampler: str = "heun"

    def create(self) -> ElucidatedImagen:
        return super().create()


IMAGEN_CONFIG_TYPES: dict[str, type[_JsonConfig]] = {"original": ImagenConfig, "elucidated": ElucidatedImagenConfig}
_CONFIG_OF_MODEL = {Imagen: ImagenConfig, ElucidatedImagen: ElucidatedImagenConfig}


def imagen_config_from_model(imagen: Imagen | ElucidatedImagen) -> ImagenConfig | ElucidatedImagenConfig:
    """The config that rebuilds `imagen` (untrained): its recorded constructor arguments, unets as dicts."""
    config_cls = _CONFIG_OF_MODEL.get(type(imagen))
    if config_cls is None:
        raise TypeError(f"imagen: expected an Imagen or ElucidatedImagen, got {type(imagen).__name__}")
    recorded = dict(imagen.pretrained_config)
    recorded.pop("unets", None)
    known = {f.name for f in dataclasses.fields(config_cls)}
    kwargs = {name: value for name, value in recorded.items() if name in known}
    # the cascade's unets as they are now (after casting), so the rebuilt model has the same parameters
    return config_cls(unets=[unet_to_dict(unet) for unet in imagen.unets], **kwargs)


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
            raise TypeError("imagen: expected an ImagenConfig, ElucidatedImagenConfig or a dict of one, got "
                            f"{type(self.imagen).__name__}")

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
    tensors: dict, metadata: dict, *, source: str = "checkpoint", load_weights: bool = True,
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
        load_state_dict_checked(unet, extract_model_state(tensors, name, ema=use_ema),
                                source=f"{source} ({'EMA of ' if use_ema else ''}unet {index + 1})")
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
    return imagen_from_checkpoint_data(tensors, metadata, source=str(path), load_weights=load_weights,
                                       load_ema_if_available=load_ema_if_available)
