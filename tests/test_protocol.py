"""Conformance of the six top-level models to the one generation protocol (`synthesis_core.protocol`).

Each model, at a tiny size, is driven only through the protocol: trained a few optimizer steps through
`model(videos, texts=... | text_embeds=..., cond_drop_prob=...)`, sampled twice with the same seeded generator
(identical output, `(batch, channels, frames, height, width)` in [0, 1]), saved with `save_pretrained`, loaded
with `from_pretrained` and sampled again (identical). Then the seed READMEs' names are checked to be aliases: the
same call under the seed name and the protocol name gives the same loss / the same samples.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import inspect  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from typing import Any  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from synthesis_core.protocol import GenerativeModel, as_videos, resolve_alias, resolve_text  # noqa: E402

torch.set_num_threads(1)

CAPTIONS = ["a red circle moving left", "a blue square moving up"]
TRAIN_KEYWORDS = {"texts", "text_embeds", "text_mask", "cond_drop_prob"}
SAMPLE_KEYWORDS = {
    "texts",
    "text_embeds",
    "text_mask",
    "num_frames",
    "batch_size",
    "cond_scale",
    "steps",
    "sampler",
    "generator",
    "progress",
}


@dataclass
class Case:
    model: Any
    videos: torch.Tensor  # the training batch, (b, c, f, h, w) in [0, 1]
    text: dict  # the protocol's text keywords for that batch
    sample: dict = field(default_factory=dict)  # extra protocol keywords for sampling (steps, num_frames, ...)
    frames: int = 1  # frames of the sampled videos
    size: int = 8


def _embeds(batch: int, dim: int, tokens: int = 3) -> dict:
    g = torch.Generator().manual_seed(11)
    mask = torch.ones(batch, tokens, dtype=torch.bool)
    mask[0, -1] = False
    return {"text_embeds": torch.randn(batch, tokens, dim, generator=g), "text_mask": mask}


def _rand(*shape: int) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(3))


def _imagen_unet():
    from imagen_pytorch import Unet

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


def build_imagen() -> Case:
    from imagen_pytorch import Imagen

    model = Imagen(_imagen_unet(), image_sizes=8, text_embed_dim=16, timesteps=10)
    # an image model: its training videos have one frame, its samples are images (one frame)
    return Case(model, _rand(2, 3, 1, 8, 8), _embeds(2, 16), sample={"steps": 3, "sampler": "ddim"})


def build_elucidated_imagen() -> Case:
    from imagen_pytorch import ElucidatedImagen

    model = ElucidatedImagen(_imagen_unet(), image_sizes=8, text_embed_dim=16, num_sample_steps=3)
    return Case(model, _rand(2, 3, 8, 8), _embeds(2, 16), sample={"steps": 3, "sampler": "heun"})


def build_video_diffusion() -> Case:
    from video_diffusion_pytorch import GaussianDiffusion, Unet3D

    unet = Unet3D(dim=8, dim_mults=(1, 2), attn_heads=2, attn_dim_head=8, cond_dim=16)
    model = GaussianDiffusion(unet, image_size=8, num_frames=3, timesteps=10)
    return Case(model, _rand(2, 3, 3, 8, 8), _embeds(2, 16), sample={"steps": 3, "sampler": "ddim"}, frames=3)


def build_make_a_video() -> Case:
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
    model = MakeAVideo(unet, image_size=8, num_frames=4, timesteps=100)
    return Case(model, _rand(2, 3, 4, 8, 8), _embeds(2, 16), sample={"steps": 3, "sampler": "dpmpp_2m"}, frames=4)


def build_phenaki() -> Case:
    from phenaki_pytorch import CViViT, MaskGit, Phenaki
    from synthesis_core.text import SimpleTextEncoder

    cvivit = CViViT(
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
    maskgit = MaskGit(num_tokens=64, max_seq_len=64, dim=32, depth=1, dim_context=16, heads=2, dim_head=8)
    # a small trainable text encoder (a submodule, saved with the model) so that captions work offline
    encoder = SimpleTextEncoder.from_captions(CAPTIONS, dim=16, depth=1, heads=2, dim_head=8)
    model = Phenaki(cvivit, maskgit, text_encoder=encoder)
    return Case(
        model, _rand(2, 3, 3, 16, 16), {"texts": CAPTIONS}, sample={"steps": 3, "num_frames": 3}, frames=3, size=16
    )


def build_nuwa() -> Case:
    from nuwa_pytorch import NUWA, VQGanVAE

    vae = VQGanVAE(
        dim=8,
        image_size=16,
        num_layers=2,
        vq_codebook_size=32,
        attn_heads=2,
        attn_dim_head=8,
        resnet_groups=4,
        discr_layers=2,
        use_vgg_and_gan=False,
        vq_kmeans_init=False,
    )  # a random codebook: an untrained one decodes every token alike
    model = NUWA(
        vae=vae,
        dim=16,
        text_num_tokens=20,
        text_enc_depth=1,
        text_enc_heads=2,
        text_enc_dim_head=8,
        text_max_seq_len=6,
        max_video_frames=2,
        dec_depth=2,
        dec_heads=2,
        dec_dim_head=8,
        sparse_3dna_kernel_size=3,
        sparse_3dna_dilation=(1, 2),
    )
    ids = torch.tensor([[3, 5, 7, 0], [4, 6, 0, 0]])  # token ids, 0 = padding: NUWA reads ids, not strings
    return Case(model, _rand(2, 3, 2, 16, 16), {"texts": ids}, sample={"num_frames": 2}, frames=2, size=16)


BUILDERS = {
    "imagen": build_imagen,
    "elucidated-imagen": build_elucidated_imagen,
    "video-diffusion": build_video_diffusion,
    "make-a-video": build_make_a_video,
    "phenaki": build_phenaki,
    "nuwa": build_nuwa,
}


def _sample(model: Any, case: Case, seed: int = 7) -> torch.Tensor:
    """One text, repeated to a batch of 2 (the protocol's `batch_size` with a single condition)."""
    text = {key: value[:1] for key, value in case.text.items()}
    return model.sample(
        **text,
        batch_size=2,
        cond_scale=2.0,
        generator=torch.Generator().manual_seed(seed),
        progress=False,
        **case.sample,
    )


@pytest.mark.parametrize("name", list(BUILDERS))
def test_conformance(name: str, tmp_path) -> None:
    torch.manual_seed(0)
    case = BUILDERS[name]()
    model = case.model
    assert isinstance(model, GenerativeModel)
    # every protocol keyword is a parameter of the entry points (a keyword, whatever the seed's positional order)
    for method, names in ((model.forward, TRAIN_KEYWORDS), (model.sample, SAMPLE_KEYWORDS)):
        parameters = inspect.signature(method).parameters
        assert names <= set(parameters), names - set(parameters)
        assert all(
            parameters[n].kind in (parameters[n].KEYWORD_ONLY, parameters[n].POSITIONAL_OR_KEYWORD) for n in names
        )

    # training entry: a scalar loss that optimizer steps can use
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    model.train()
    for _ in range(3):
        loss = model(case.videos, **case.text, cond_drop_prob=0.5)
        assert loss.ndim == 0 and torch.isfinite(loss)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    # sampling entry: reproducible with a seeded generator, videos in [0, 1]
    first = _sample(model, case)
    second = _sample(model, case)
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    assert not torch.equal(first, _sample(model, case, seed=8)), "another seed must give other samples"
    videos = as_videos(first)
    assert videos.shape == (2, 3, case.frames, case.size, case.size)
    assert videos.min() >= 0 and videos.max() <= 1

    # save, load, sample again: the same videos
    model.save_pretrained(tmp_path / name)
    loaded = type(model).from_pretrained(tmp_path / name)
    assert isinstance(loaded, GenerativeModel)
    torch.testing.assert_close(_sample(loaded, case), first, rtol=0, atol=0)


def test_nuwa_loss_falls_on_a_fixed_batch() -> None:
    torch.manual_seed(0)
    case = build_nuwa()
    model = case.model.train()
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    losses = []
    for _ in range(20):
        loss = model(case.videos, **case.text, cond_drop_prob=0.0)  # deterministic: no dropout, no noise
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses


# -- the seed READMEs' names are aliases of the protocol's -------------------------------------------------------


def test_video_diffusion_aliases() -> None:
    from video_diffusion_pytorch import GaussianDiffusion

    torch.manual_seed(0)
    case = build_video_diffusion()
    model = case.model
    videos = case.videos
    vector = torch.randn(2, 16)
    noise, times = torch.randn_like(videos), torch.tensor([2, 7])
    seed = model(videos, cond=vector, null_cond_prob=0.0, noise=noise, times=times)
    protocol = model(videos, text_embeds=vector, cond_drop_prob=0.0, noise=noise, times=times)
    torch.testing.assert_close(seed, protocol)
    # token embeddings are pooled by their mean over the mask, like captions
    tokens = torch.randn(2, 3, 16)
    mask = torch.tensor([[True, True, False], [True, True, True]])
    pooled = torch.stack([tokens[0, :2].mean(0), tokens[1].mean(0)])
    torch.testing.assert_close(
        model(videos, text_embeds=tokens, text_mask=mask, cond_drop_prob=0.0, noise=noise, times=times),
        model(videos, cond=pooled, cond_drop_prob=0.0, noise=noise, times=times),
    )
    with pytest.raises(ValueError, match="cond"):
        model(videos, cond=vector, text_embeds=vector)
    with pytest.raises(ValueError, match="null_cond_prob"):
        model(videos, null_cond_prob=0.1, cond_drop_prob=0.2)

    # the constructor keyword: cond_drop_prob, with the seed's null_cond_prob as its alias
    unet = model.model
    assert GaussianDiffusion(unet, image_size=8, num_frames=3, null_cond_prob=0.3).cond_drop_prob == 0.3
    assert GaussianDiffusion(unet, image_size=8, num_frames=3, cond_drop_prob=0.3).null_cond_prob == 0.3
    with pytest.raises(ValueError, match="null_cond_prob"):
        GaussianDiffusion(unet, image_size=8, num_frames=3, null_cond_prob=0.3, cond_drop_prob=0.2)

    # the seed's positional sample(cond, cond_scale, batch_size) is the protocol's sample(text_embeds=...)
    generator = lambda: torch.Generator().manual_seed(1)  # noqa: E731
    torch.testing.assert_close(
        model.sample(vector, 2.0, None, "ddim", 3, generator=generator(), progress=False),
        model.sample(
            text_embeds=vector, cond_scale=2.0, sampler="ddim", steps=3, generator=generator(), progress=False
        ),
    )


def test_imagen_aliases() -> None:
    torch.manual_seed(0)
    case = build_imagen()
    model = case.model
    embeds, mask = case.text["text_embeds"], case.text["text_mask"]
    images = case.videos[:, :, 0]
    losses = []
    for text in ({"text_masks": mask}, {"text_mask": mask}):
        torch.manual_seed(5)
        losses.append(model(images, text_embeds=embeds, cond_drop_prob=0.0, **text))
    torch.testing.assert_close(losses[0], losses[1])
    # one-frame videos train an image cascade exactly as images
    torch.manual_seed(5)
    torch.testing.assert_close(model(case.videos, text_embeds=embeds, text_mask=mask, cond_drop_prob=0.0), losses[0])
    with pytest.raises(ValueError, match="text_masks"):
        model(images, text_embeds=embeds, text_mask=mask, text_masks=mask)

    def sample(**kwargs):
        return model.sample(text_embeds=embeds, steps=2, generator=torch.Generator().manual_seed(2), **kwargs)

    torch.testing.assert_close(sample(text_masks=mask, use_tqdm=False), sample(text_mask=mask, progress=False))
    with pytest.raises(ValueError, match="use_tqdm"):
        sample(use_tqdm=False, progress=True)
    with pytest.raises(ValueError, match="video_frames"):
        sample(num_frames=3, progress=False)  # an image cascade makes one-frame videos only


def test_phenaki_aliases() -> None:
    torch.manual_seed(0)
    case = build_phenaki()
    model = case.model
    losses = []
    for call in (
        lambda: model(case.videos, CAPTIONS),  # the seed's phenaki(videos, texts)
        lambda: model(case.videos, text=CAPTIONS),
        lambda: model(case.videos, texts=CAPTIONS),
    ):
        torch.manual_seed(5)
        losses.append(call())
    torch.testing.assert_close(losses[0], losses[1])
    torch.testing.assert_close(losses[0], losses[2])

    def sample(**kwargs):
        return model.sample(num_frames=3, steps=2, generator=torch.Generator().manual_seed(2), progress=False, **kwargs)

    # the seed's text= (one prompt for the batch) is texts= with one caption
    torch.testing.assert_close(sample(text=CAPTIONS[0], batch_size=2), sample(texts=[CAPTIONS[0]], batch_size=2))
    with pytest.raises(ValueError, match="sampler"):
        sample(text=CAPTIONS[0], sampler="ddim")
    with pytest.raises(ValueError, match="batch sizes"):
        sample(texts=CAPTIONS, batch_size=3)


def test_nuwa_aliases() -> None:
    torch.manual_seed(0)
    case = build_nuwa()
    model = case.model.train()
    ids = case.text["texts"]
    seed_video = case.videos.permute(0, 2, 1, 3, 4)  # the seed README's layout (b, f, c, h, w)
    protocol = model(case.videos, texts=ids, cond_drop_prob=0.0)
    torch.testing.assert_close(model(text=ids, video=seed_video, return_loss=True, cond_dropout_prob=0.0), protocol)
    torch.testing.assert_close(model(ids, seed_video, return_loss=True, cond_dropout_prob=0.0), protocol)
    with pytest.raises(TypeError, match="token ids"):
        model(case.videos, texts=CAPTIONS)
    with pytest.raises(ValueError, match="cond_dropout_prob"):
        model(case.videos, texts=ids, cond_drop_prob=0.1, cond_dropout_prob=0.2)

    # generate(text=...) is sample(texts=...) in the seed's layout
    model.eval()
    generated = model.generate(text=ids, num_frames=2, generator=torch.Generator().manual_seed(4), progress=False)
    sampled = model.sample(texts=ids, num_frames=2, generator=torch.Generator().manual_seed(4), progress=False)
    torch.testing.assert_close(generated.permute(0, 2, 1, 3, 4), sampled)
    for keyword, value in (("steps", 4), ("sampler", "ddim")):
        with pytest.raises(ValueError, match=keyword):
            model.sample(texts=ids, **{keyword: value})
    with pytest.raises(ValueError, match="text_embeds"):
        model.sample(text_embeds=torch.randn(1, 2, 16))


def test_make_a_video_protocol_keywords() -> None:
    torch.manual_seed(0)
    case = build_make_a_video()
    model = case.model
    embeds, mask = case.text["text_embeds"], case.text["text_mask"]
    noise, times = torch.randn_like(case.videos), torch.tensor([10, 60])
    # positional texts / text_embeds (the seed's order) and the protocol's keywords are one call
    positional = model(case.videos, None, embeds, mask, cond_drop_prob=0.0, noise=noise, times=times)
    keywords = model(case.videos, text_embeds=embeds, text_mask=mask, cond_drop_prob=0.0, noise=noise, times=times)
    torch.testing.assert_close(positional, keywords)
    # cond_drop_prob=1 drops every text: the loss is the unconditional one, whatever the text
    torch.testing.assert_close(
        model(case.videos, text_embeds=embeds, cond_drop_prob=1.0, noise=noise, times=times),
        model(case.videos, text_embeds=torch.randn_like(embeds), cond_drop_prob=1.0, noise=noise, times=times),
    )


# -- the shared helpers -----------------------------------------------------------------------------------------


def test_resolve_text() -> None:
    assert resolve_text("one caption").texts == ["one caption"]
    embeds = torch.randn(2, 3, 4)
    text = resolve_text(aliases={"cond": ("texts_or_embeds", embeds)})
    assert text.text_embeds is embeds and text.batch_size == 2
    assert resolve_text(aliases={"cond": ("texts_or_embeds", ["a", "b"])}).texts == ["a", "b"]
    repeated = resolve_text(text_embeds=embeds[:1], text_mask=torch.ones(1, 3)).repeat_to(3)
    assert repeated.text_embeds.shape == (3, 3, 4) and repeated.text_mask.dtype == torch.bool
    with pytest.raises(ValueError, match="not both"):
        resolve_text(["a"], embeds)
    with pytest.raises(ValueError, match="text_mask"):
        resolve_text(["a"], text_mask=torch.ones(1, 2))
    with pytest.raises(ValueError, match="text_mask"):
        resolve_text(text_embeds=embeds, text_mask=torch.ones(2, 5))
    with pytest.raises(TypeError, match="text_embeds"):
        resolve_text(torch.zeros(2, 3, dtype=torch.long))  # token ids where the model reads captions
    with pytest.raises(TypeError, match="tokenize"):
        resolve_text(["a"], token_ids=True, strings=False, strings_hint=", tokenize them first")
    with pytest.raises(ValueError, match="empty"):
        resolve_text([])
    with pytest.raises(ValueError, match="batch_size"):
        resolve_text(text_embeds=embeds).repeat_to(3)
    assert resolve_alias("progress", None, "use_tqdm", False, True) is False
    assert resolve_alias("progress", None, "use_tqdm", None, True) is True
