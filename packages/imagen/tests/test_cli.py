"""The `imagen` command, run in-process through `imagen_pytorch.cli.main` (the acceptance suite runs the installed
console script)."""

import torch
from PIL import Image

from imagen_pytorch import ImagenConfig, ImagenTrainer, ImagenTrainerConfig
from imagen_pytorch.cli import main, text_to_file_name
from synthesis_core.video import read_video

UNET = dict(dim=8, dim_mults=(1, 2), layer_attns=False, layer_cross_attns=False)


def test_config_command_writes_a_loadable_config(tmp_path):
    path = tmp_path / "configs" / "config.json"
    assert main(["config", "--path", str(path)]) == 0
    config = ImagenTrainerConfig.load(path)
    assert len(config.imagen.unets) == 2 and config.dataset["with_captions"]
    assert main(["config", "--path", str(path)]) == 1  # never overwrites silently
    assert main(["config", "--path", str(path), "--force"]) == 0


def test_train_resume_and_sample(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    images = tmp_path / "images"
    images.mkdir()
    for k in range(4):
        Image.fromarray((torch.rand(12, 12, 3) * 255).byte().numpy()).save(images / f"{k}.png")
    ImagenTrainerConfig(
        imagen=ImagenConfig(unets=[UNET], image_sizes=8, condition_on_text=False, timesteps=4),
        dataset=dict(folder=str(images), batch_size=2),
        checkpoint_path=str(tmp_path / "checkpoints"),
        checkpoint_every=2,
    ).save("config.json")

    # --epoches counts passes over the data: 4 images in batches of 2 are 2 steps an epoch
    assert main(["train", "--config", "config.json", "--epoches", "2", "--valid", "1"]) == 0
    assert main(["train", "--config", "config.json", "--epoches", "1"]) == 0  # resumes at step 4
    assert main(["train", "--config", "config.json", "--steps", "1"]) == 0  # --steps counts optimizer steps
    checkpoints = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert checkpoints == [
        "checkpoint-00000004.safetensors",
        "checkpoint-00000006.safetensors",
        "checkpoint-00000007.safetensors",
    ]

    latest = tmp_path / "checkpoints" / checkpoints[-1]
    assert main(["sample", "--model", str(latest), "--steps", "2"]) == 0
    assert Image.open(tmp_path / "sample.png").size == (8, 8)


def test_sample_command_writes_a_gif_for_video_models(tmp_path, monkeypatch):
    imagen = ImagenConfig(
        unets=[dict(unet_type="Unet3D", **UNET)], image_sizes=8, condition_on_text=False, timesteps=2
    ).create()
    ImagenTrainer(imagen).save(tmp_path / "video.safetensors")
    monkeypatch.chdir(tmp_path)
    assert main(["sample", "--model", "video.safetensors", "--video_frames", "3", "A cat, on a mat!"]) == 0
    assert read_video(tmp_path / "a_cat_on_a_mat.gif").shape == (3, 3, 8, 8)


def test_bad_command_lines_fail_with_a_message(tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--config", "missing.json"]) == 2
    assert "imagen config --path" in caplog.text
    conditioned = ImagenConfig(unets=[UNET], image_sizes=8, text_embed_dim=16, timesteps=2).create()
    ImagenTrainer(conditioned).save(tmp_path / "text.safetensors")
    assert main(["sample", "--model", "text.safetensors"]) == 1
    assert "conditioned on text" in caplog.text
    assert text_to_file_name("  A squirrel, raiding the birdfeeder! ") == "a_squirrel_raiding_the_birdfeeder"
