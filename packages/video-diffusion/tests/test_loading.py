"""Loading says what it did: every constructor argument is saved, and one missing from an older file is filled,
logged and reported by the loaded model (issue #13: a diffusion saved with 10 steps came back with 1000)."""

import json
import logging

from synthesis_core.checkpoint import load_model_from_folder
from video_diffusion_pytorch import GaussianDiffusion, Unet3D


def tiny_diffusion(**kwargs):
    unet = Unet3D(dim=8, dim_mults=(1, 2), attn_heads=2, attn_dim_head=8)
    return GaussianDiffusion(unet, image_size=8, num_frames=3, **kwargs)


def test_timesteps_survive_the_round_trip(tmp_path, caplog):
    diffusion = tiny_diffusion(timesteps=10)
    diffusion.save_pretrained(tmp_path / "model")
    config = json.loads((tmp_path / "model" / "config.json").read_text())["config"]
    assert config["timesteps"] == 10
    assert config["sampler"] == "ddpm" and config["model"]["config"]["block_type"] == "resnet"  # defaults too
    with caplog.at_level(logging.WARNING, logger="synthesis_core.checkpoint"):
        loaded = GaussianDiffusion.from_pretrained(tmp_path / "model")
    assert loaded.num_timesteps == 10 and loaded.missing_config_keys == () and "lacks" not in caplog.text


def test_a_key_missing_from_an_older_file_is_filled_logged_and_reported(tmp_path, caplog):
    tiny_diffusion(timesteps=10, sampler="ddim").save_pretrained(tmp_path / "model")
    path = tmp_path / "model" / "config.json"
    document = json.loads(path.read_text())
    del document["config"]["sampler"]
    del document["config"]["model"]["config"]["gradient_checkpointing"]
    path.write_text(json.dumps(document))

    with caplog.at_level(logging.WARNING, logger="synthesis_core.checkpoint"):
        loaded = load_model_from_folder(tmp_path / "model")
    assert loaded.missing_config_keys == ("model.gradient_checkpointing", "sampler")
    assert loaded.model.missing_config_keys == ("gradient_checkpointing",)
    assert loaded.sampler == "ddpm" and loaded.num_timesteps == 10  # today's default where the file said nothing
    assert (
        "sampler='ddpm'" in caplog.text
        and "model.gradient_checkpointing=False" in caplog.text
        and str(path) in caplog.text
    )
