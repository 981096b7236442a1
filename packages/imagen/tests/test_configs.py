"""Config dataclasses: they mirror the constructors, round-trip through JSON and build the models."""
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
    Unet3D,
)
from imagen_pytorch.configs import build_unet, imagen_config_from_model

UNET = dict(dim=8, dim_mults=(1, 2), attn_heads=2, attn_dim_head=8, layer_attns=(False, True),
            layer_cross_attns=(False, True))


@pytest.mark.parametrize("config_class, model_class", [(ImagenConfig, Imagen), (ElucidatedImagenConfig,
                                                                                 ElucidatedImagen)])
def test_config_fields_mirror_the_constructor(config_class, model_class):
    parameters = dict(inspect.signature(model_class.__init__).parameters)
    parameters.pop("self")
    fields = {field.name: field for field in dataclasses.fields(config_class)}
    assert set(fields) == set(parameters)
    for name, field in fields.items():
        if parameters[name].default is not inspect.Parameter.empty:
            assert field.default == parameters[name].default, name


def test_imagen_config_round_trips_and_builds_the_cascade(tmp_path):
    config = ImagenConfig(unets=[dict(unet_type="NullUnet"), dict(unet_type="Unet3D", **UNET)], image_sizes=(8, 16),
                          text_embed_dim=16, timesteps=(10, 20), pred_objectives=("noise", "v"))
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
        lr=3e-4, checkpoint_path=None, checkpoint_every=None)
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
