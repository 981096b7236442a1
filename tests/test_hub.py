"""Every package's models are shared like on the Hugging Face Hub, offline: a tiny model of each package (the imagen
cascade, the tokenizers too) is pushed (`HfApi` replaced by a recorder), placed in a Hub cache laid out as
`huggingface_hub` lays it out, and loaded back by repo id with HF_HUB_OFFLINE and with `local_files_only=True`:
the same config, the same weights, the same outputs. No test here can reach the network.
"""

import inspect
import json
import os
import socket
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from synthesis_core import hub  # noqa: E402
from synthesis_core.checkpoint import PretrainedMixin, load_model_from_folder, loadable_classes  # noqa: E402

PACKAGES = (
    "synthesis_core",
    "imagen_pytorch",
    "video_diffusion_pytorch",
    "make_a_video_pytorch",
    "phenaki_pytorch",
    "nuwa_pytorch",
)


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError(f"a test tried to reach the network: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


def _generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# each builder: (a tiny model, the distribution, a deterministic output of it given the model)
Built = tuple[torch.nn.Module, str, Callable[[torch.nn.Module], torch.Tensor]]


def _imagen_cascade() -> Built:
    from imagen_pytorch import Imagen, Unet

    def unet() -> Unet:
        return Unet(
            dim=8,
            dim_mults=(1, 2),
            num_resnet_blocks=1,
            layer_attns=(False, True),
            layer_cross_attns=(False, True),
            attn_heads=2,
            attn_dim_head=8,
            cond_dim=16,
            attn_pool_num_latents=4,
            num_time_tokens=1,
        )

    imagen = Imagen((unet(), unet()), image_sizes=(8, 16), text_embed_dim=16, timesteps=10)
    images, text_embeds = (
        torch.rand(2, 3, 16, 16, generator=_generator()),
        torch.randn(2, 4, 16, generator=_generator()),
    )

    def losses(model: torch.nn.Module) -> torch.Tensor:
        torch.manual_seed(0)
        return torch.stack([model(images, unet_number=n, text_embeds=text_embeds) for n in (1, 2)])

    return imagen, "imagen-pytorch", losses


def _elucidated_imagen() -> Built:
    from imagen_pytorch import ElucidatedImagen, Unet

    unet = Unet(
        dim=8,
        dim_mults=(1, 2),
        num_resnet_blocks=1,
        layer_attns=False,
        layer_cross_attns=False,
        attn_heads=2,
        attn_dim_head=8,
        cond_dim=16,
        attn_pool_num_latents=4,
        num_time_tokens=1,
    )
    imagen = ElucidatedImagen(unet, image_sizes=8, text_embed_dim=16, num_sample_steps=2)
    images, text_embeds = torch.rand(2, 3, 8, 8, generator=_generator()), torch.randn(2, 4, 16, generator=_generator())

    def loss(model: torch.nn.Module) -> torch.Tensor:
        torch.manual_seed(0)
        return model(images, text_embeds=text_embeds)

    return imagen, "imagen-pytorch", loss


def _video_diffusion() -> Built:
    from video_diffusion_pytorch import GaussianDiffusion, Unet3D

    diffusion = GaussianDiffusion(
        Unet3D(dim=8, dim_mults=(1, 2), attn_heads=2, attn_dim_head=8),
        image_size=8,
        num_frames=3,
        timesteps=10,
        sample_steps=2,
    )
    videos = torch.rand(2, 3, 3, 8, 8, generator=_generator())

    def loss(model: torch.nn.Module) -> torch.Tensor:
        torch.manual_seed(0)
        return model(videos)

    return diffusion, "video-diffusion-pytorch", loss


def _make_a_video() -> Built:
    from make_a_video_pytorch import MakeAVideo, SpaceTimeUnet

    unet = SpaceTimeUnet(
        dim=8,
        channels=3,
        dim_mults=(1, 2),
        self_attns=(False, True),
        temporal_compression=(False, True),
        resnet_block_depths=(1, 1),
        attn_dim_head=8,
        attn_heads=2,
        ff_mult=2,
        text_embed_dim=16,
    )
    model = MakeAVideo(unet, image_size=8, num_frames=4, timesteps=100, sample_steps=3)
    videos, text_embeds = (
        torch.rand(2, 3, 4, 8, 8, generator=_generator()),
        torch.randn(2, 3, 16, generator=_generator()),
    )

    def loss(model: torch.nn.Module) -> torch.Tensor:
        torch.manual_seed(0)
        return model(videos, text_embeds=text_embeds)

    return model, "make-a-video-pytorch", loss


def _cvivit_kwargs() -> dict:
    return dict(
        dim=32,
        codebook_size=64,
        image_size=16,
        patch_size=8,
        temporal_patch_size=2,
        spatial_depth=1,
        temporal_depth=1,
        dim_head=8,
        heads=2,
        use_vgg_and_gan=False,
    )


def _phenaki() -> Built:
    from phenaki_pytorch import CViViT, MaskGit, Phenaki

    maskgit = MaskGit(num_tokens=64, max_seq_len=64, dim=32, depth=1, dim_context=16, heads=2, dim_head=8)
    phenaki = Phenaki(CViViT(**_cvivit_kwargs()), maskgit, text_encoder_name=None)
    videos, text_embeds = (
        torch.rand(2, 3, 3, 16, 16, generator=_generator()),
        torch.randn(2, 3, 16, generator=_generator()),
    )

    def loss(model: torch.nn.Module) -> torch.Tensor:
        torch.manual_seed(0)
        return model(videos, text_embeds=text_embeds, text_mask=torch.ones(2, 3, dtype=torch.bool))

    return phenaki, "phenaki-pytorch", loss


def _cvivit() -> Built:
    from phenaki_pytorch import CViViT

    videos = torch.rand(2, 3, 3, 16, 16, generator=_generator())
    return CViViT(**_cvivit_kwargs()), "phenaki-pytorch", lambda model: model(videos, return_recons_only=True)


def _vae():
    from nuwa_pytorch import VQGanVAE

    return VQGanVAE(
        dim=8,
        image_size=16,
        num_layers=2,
        vq_codebook_size=32,
        attn_heads=2,
        attn_dim_head=8,
        resnet_groups=4,
        discr_layers=2,
        use_vgg_and_gan=False,
    )


def _nuwa() -> Built:
    from nuwa_pytorch import NUWA

    nuwa = NUWA(
        vae=_vae(),
        dim=16,
        text_num_tokens=20,
        text_enc_depth=1,
        text_enc_heads=2,
        text_enc_dim_head=8,
        text_max_seq_len=6,
        max_video_frames=3,
        dec_depth=2,
        dec_heads=2,
        dec_dim_head=8,
        sparse_3dna_kernel_size=3,
        sparse_3dna_dilation=(1, 2),
    )
    text, videos = (
        torch.randint(2, 20, (2, 4), generator=_generator()),
        torch.rand(2, 2, 3, 16, 16, generator=_generator()),
    )

    def loss(model: torch.nn.Module) -> torch.Tensor:
        torch.manual_seed(0)
        return model(video=videos, text=text, return_loss=True)

    return nuwa, "nuwa-pytorch", loss


def _vqgan_vae() -> Built:
    images = torch.rand(2, 3, 16, 16, generator=_generator())
    return _vae(), "nuwa-pytorch", lambda model: model(images)


BUILDERS = {
    "imagen-cascade": _imagen_cascade,
    "elucidated-imagen": _elucidated_imagen,
    "video-diffusion": _video_diffusion,
    "make-a-video": _make_a_video,
    "phenaki": _phenaki,
    "cvivit": _cvivit,
    "nuwa": _nuwa,
    "vqgan-vae": _vqgan_vae,
}


def build(kind: str) -> Built:
    torch.manual_seed(1234)
    model, distribution, output = BUILDERS[kind]()
    return model.eval(), distribution, output


def assert_same(original: torch.nn.Module, loaded: torch.nn.Module, output) -> None:
    assert type(loaded) is type(original) and loaded.config == original.config
    assert loaded.missing_config_keys == ()
    expected, got = original.state_dict(), loaded.eval().state_dict()
    assert expected.keys() == got.keys() and all(torch.equal(expected[k], got[k]) for k in expected)
    with torch.no_grad():
        assert torch.equal(output(original), output(loaded))


def record_uploads(monkeypatch) -> list[dict]:
    """Replaces the HfApi calls that publish by recorders: the files of each upload, as they were uploaded."""
    from huggingface_hub import HfApi

    uploads: list[dict] = []

    def upload_folder(self, **kwargs):
        folder = Path(kwargs["folder_path"])
        uploads.append({**kwargs, "files": {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}})
        return None

    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kwargs: None)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    return uploads


@pytest.mark.parametrize("kind", sorted(BUILDERS))
def test_push_then_load_by_repo_id_offline(kind, tmp_path, monkeypatch):
    model, distribution, output = build(kind)
    cls = type(model)
    repo_id = f"someone/tiny-{kind}"
    uploads = record_uploads(monkeypatch)
    model.push_to_hub(repo_id)
    (upload,) = uploads
    assert upload["repo_id"] == repo_id
    assert set(upload["files"]) == {"config.json", "model.safetensors", "README.md"}

    card = upload["files"]["README.md"].decode()
    package = distribution.replace("-", "_")
    assert card.startswith("---\n") and f"library_name: {distribution}\n" in card
    assert f"pip install {distribution}\n" in card
    assert f'from {package} import {cls.__name__}\n\nmodel = {cls.__name__}.from_pretrained("{repo_id}")' in card
    assert json.loads(card.split("```json\n")[1].split("```")[0]) == model.config

    # what was pushed, in a hub cache as a download leaves it, loads by repo id
    pushed = tmp_path / "pushed"
    pushed.mkdir()
    for name, data in upload["files"].items():
        (pushed / name).write_bytes(data)
    cache = tmp_path / "hub-cache"
    hub.cache_model_folder(pushed, repo_id, cache_dir=cache, revision="v1")
    assert hub.hub_offline()
    assert_same(model, cls.from_pretrained(repo_id, cache_dir=cache, revision="v1"), output)
    assert_same(model, load_model_from_folder(repo_id, cache_dir=cache, revision="v1", local_files_only=True), output)

    # with HF_HUB_OFFLINE unset, local_files_only=True alone keeps it off the network
    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    assert_same(model, cls.from_pretrained(repo_id, cache_dir=cache, revision="v1", local_files_only=True), output)


def test_every_registered_model_class_loads_from_the_hub_and_pushes():
    """No package overrides loading or pushing with another signature: every class gets the hub keywords."""
    classes = [cls for cls in loadable_classes().values() if cls.__module__.split(".")[0] in PACKAGES]
    assert len(classes) >= 16
    for cls in classes:
        assert issubclass(cls, PretrainedMixin)
        parameters = inspect.signature(cls.from_pretrained).parameters
        assert {"revision", "cache_dir", "local_files_only", "token"} <= set(parameters), cls
        assert cls.push_to_hub is PretrainedMixin.push_to_hub, cls
        assert "push_to_hub" in inspect.signature(cls.save_pretrained).parameters, cls
