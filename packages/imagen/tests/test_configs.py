"""Config dataclasses: derived from the constructors, they round-trip through JSON and build the models."""

import dataclasses
import inspect
import json

import pytest

from imagen_pytorch import (
    ElucidatedImagen,
    ElucidatedImagenConfig,
    Imagen,
    ImagenConfig,
    ImagenTrainerConfig,
    NullUnet,
    NullUnetConfig,
    Unet,
    Unet3D,
    Unet3DConfig,
    UnetConfig,
)
from imagen_pytorch.cascade import CascadeBase
from imagen_pytorch.configs import build_unet, cascade_parameters, imagen_config_from_model
from synthesis_core.checkpoint import CheckpointError, constructor_parameters

UNET = dict(
    dim=8, dim_mults=(1, 2), attn_heads=2, attn_dim_head=8, layer_attns=(False, True), layer_cross_attns=(False, True)
)


@pytest.mark.parametrize(
    "config_class, model_class", [(ImagenConfig, Imagen), (ElucidatedImagenConfig, ElucidatedImagen)]
)
def test_config_fields_are_derived_from_the_constructors(config_class, model_class):
    # the cascade arguments are written once, in CascadeBase.__init__: the formulations only add their own
    own = set(inspect.signature(model_class.__init__).parameters) - {"self", "cascade_kwargs"}
    shared = set(inspect.signature(CascadeBase.__init__).parameters) - {"self"}
    assert own & shared == {"unets"} and "image_sizes" in shared and "image_sizes" not in own

    parameters = cascade_parameters(model_class)
    assert set(parameters) == own | shared
    fields = {field.name: field for field in dataclasses.fields(config_class)}
    assert set(fields) == set(parameters) | {"video"}  # `video` is the one config-only field
    for name, parameter in parameters.items():
        if parameter.default is not inspect.Parameter.empty:
            assert fields[name].default == parameter.default, name
        else:
            assert fields[name].default is dataclasses.MISSING, name


def test_unet_configs_are_derived_from_the_unet_constructors():
    for config_class, unet_class in ((UnetConfig, Unet), (Unet3DConfig, Unet3D)):
        parameters = constructor_parameters(unet_class)
        fields = {field.name: field for field in dataclasses.fields(config_class)}
        assert set(fields) == set(parameters)
        assert all(fields[n].default == p.default for n, p in parameters.items() if p.default is not p.empty)
    unet = UnetConfig(**UNET).create()
    assert isinstance(unet, Unet) and unet.config["dim"] == 8 and tuple(unet.config["dim_mults"]) == (1, 2)
    with pytest.raises(TypeError, match="dimm"):
        UnetConfig(dimm=8)


def test_video_config_builds_unet3d_cascades_from_unet_configs_and_dicts(tmp_path):
    config = ImagenConfig(
        unets=[UnetConfig(**UNET), dict(UNET), NullUnetConfig()],
        image_sizes=(8, 16, 16),
        text_embed_dim=16,
        video=True,
        timesteps=4,
    )
    imagen = config.create()
    assert imagen.is_video
    assert [type(unet).__name__ for unet in imagen.unets] == ["Unet3D", "Unet3D", "NullUnet"]
    data = config.to_dict()
    # a dict stays as given (its type follows `video` when read back), config objects write their type
    assert [unet.get("unet_type") for unet in data["unets"]] == ["Unet3D", None, "NullUnet"]
    loaded = ImagenConfig.load(config.save(tmp_path / "video.json"))
    assert loaded.video and [type(u).__name__ for u in loaded.create().unets] == ["Unet3D", "Unet3D", "NullUnet"]
    # without video=True the same dicts build image unets
    image = ImagenConfig(unets=[dict(UNET)], image_sizes=8, text_embed_dim=16).create()
    assert not image.is_video and type(image.unets[0]) is Unet
    with pytest.raises(CheckpointError, match="video"):
        ImagenConfig.from_dict(dict(unets=[UNET], image_sizes=8, video="yes"))


def test_imagen_config_round_trips_and_builds_the_cascade(tmp_path):
    config = ImagenConfig(
        unets=[dict(unet_type="NullUnet"), dict(unet_type="Unet3D", **UNET)],
        image_sizes=(8, 16),
        text_embed_dim=16,
        timesteps=(10, 20),
        pred_objectives=("noise", "v"),
    )
    path = config.save(tmp_path / "configs" / "imagen.json")
    loaded = ImagenConfig.load(path)
    assert loaded.to_dict() == config.to_dict() == json.loads(path.read_text())

    imagen = loaded.create()
    assert isinstance(imagen.unets[0], NullUnet) and isinstance(imagen.unets[1], Unet3D)
    assert imagen.unets[1].lowres_cond and imagen.unets[1].text_embed_dim == 16
    assert imagen.timesteps == (10, 20) and imagen.pred_objectives == ("eps", "v")

    # a model's config rebuilds a model with the same parameters
    again = imagen_config_from_model(imagen).create()
    assert {k: v.shape for k, v in again.state_dict().items()} == {k: v.shape for k, v in imagen.state_dict().items()}


def test_trainer_config_round_trips_with_the_cascade_type(tmp_path):
    config = ImagenTrainerConfig(
        imagen=ElucidatedImagenConfig(unets=[UNET], image_sizes=8, text_embed_dim=16, num_sample_steps=3),
        lr=3e-4,
        checkpoint_path=None,
        checkpoint_every=None,
    )
    data = json.loads(config.to_json())
    assert data["imagen"]["type"] == "elucidated"
    loaded = ImagenTrainerConfig.from_json(config.to_json())
    assert isinstance(loaded.imagen, ElucidatedImagenConfig) and loaded.to_dict() == config.to_dict()
    trainer = loaded.create()
    assert isinstance(trainer.imagen, ElucidatedImagen) and trainer.get_lr(1) == pytest.approx(3e-4)


def test_config_errors_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['timestep'\]"):
        ImagenConfig.from_dict(dict(unets=[UNET], image_sizes=8, timestep=10))
    with pytest.raises(ValueError, match="unet_type"):
        build_unet(dict(unet_type="Unet4D", dim=8))
    with pytest.raises(TypeError, match="unets"):
        build_unet("Unet")
    with pytest.raises(ValueError, match="imagen type"):
        ImagenTrainerConfig(imagen=dict(type="latent", unets=[UNET], image_sizes=8))
    with pytest.raises(FileNotFoundError, match="imagen config"):
        ImagenConfig.load(tmp_path / "missing.json")
