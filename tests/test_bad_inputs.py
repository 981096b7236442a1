"""Every package x every bad input (issue #13, part 3): one core check (`synthesis_core.checks`) at every public
entry point, so that a bad batch gives the documented error naming the argument, and a convertible one (uint8,
float16 / bfloat16 / float64, [-1, 1] pixels) gives exactly the result of its float32 [0, 1] equivalent.

The models are tiny copies of each package's test configuration (see the packages' tests/conftest.py), built once
per module; they run in eval mode so that a call is a pure function of its inputs and the seed.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import math  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from functools import cache  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

TEXT_DIM = 16

# tiny models, as in each package's tests


def tiny_imagen_unet():
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


@cache
def imagen():
    from imagen_pytorch import Imagen

    return Imagen(tiny_imagen_unet(), image_sizes=8, text_embed_dim=TEXT_DIM, timesteps=10).eval()


@cache
def elucidated_imagen():
    from imagen_pytorch import ElucidatedImagen

    return ElucidatedImagen(tiny_imagen_unet(), image_sizes=8, text_embed_dim=TEXT_DIM, num_sample_steps=2).eval()


@cache
def video_diffusion():
    from video_diffusion_pytorch import GaussianDiffusion, Unet3D

    unet = Unet3D(dim=8, dim_mults=(1, 2), attn_heads=2, attn_dim_head=8, cond_dim=4)
    return GaussianDiffusion(unet, image_size=8, num_frames=3, timesteps=20, sample_steps=2).eval()


def _space_time_unet(**kwargs):
    from make_a_video_pytorch import SpaceTimeUnet

    settings = dict(
        dim=8,
        channels=3,
        dim_mults=(1, 2),
        self_attns=(False, True),
        temporal_compression=(False, True),
        resnet_block_depths=(1, 1),
        attn_dim_head=8,
        attn_heads=2,
        ff_mult=2,
        text_embed_dim=TEXT_DIM,
    )
    return SpaceTimeUnet(**{**settings, **kwargs})


@cache
def make_a_video():
    from make_a_video_pytorch import MakeAVideo

    return MakeAVideo(_space_time_unet(), image_size=8, num_frames=4, timesteps=100, sample_steps=2).eval()


@cache
def frame_interpolator():
    from make_a_video_pytorch import FrameInterpolator

    unet = _space_time_unet(cond_channels=4, temporal_compression=False)
    return FrameInterpolator(unet, image_size=8, num_frames=4, timesteps=100, sample_steps=2).eval()


@cache
def cvivit():
    from phenaki_pytorch import CViViT

    return CViViT(
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
    ).eval()


@cache
def maskgit():
    from phenaki_pytorch import MaskGit

    return MaskGit(num_tokens=64, max_seq_len=64, dim=32, depth=1, dim_context=TEXT_DIM, heads=2, dim_head=8).eval()


@cache
def phenaki():
    from phenaki_pytorch import Phenaki

    return Phenaki(cvivit=cvivit(), maskgit=maskgit(), text_encoder_name=None, text_embed_dim=TEXT_DIM, steps=2).eval()


def _vae(**kwargs):
    from nuwa_pytorch import VQGanVAE

    settings = dict(
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
    return VQGanVAE(**{**settings, **kwargs})


@cache
def vqgan_vae():
    return _vae().eval()


@cache
def nuwa():
    from nuwa_pytorch import NUWA

    return NUWA(
        vae=_vae(),
        dim=16,
        text_num_tokens=20,
        text_enc_depth=1,
        text_enc_heads=2,
        text_enc_dim_head=8,
        text_max_seq_len=6,
        max_video_frames=2,
        dec_depth=1,
        dec_heads=2,
        dec_dim_head=8,
        sparse_3dna_kernel_size=3,
        sparse_3dna_dilation=(1, 2),
    ).eval()


@cache
def nuwa_sketch():
    from nuwa_pytorch import NUWASketch

    return NUWASketch(
        vae=_vae(),
        sketch_vae=_vae(channels=1, vq_codebook_size=8),
        dim=16,
        max_video_frames=2,
        sketch_max_video_frames=2,
        sketch_enc_depth=1,
        sketch_enc_heads=2,
        sketch_enc_dim_head=8,
        dec_depth=1,
        dec_heads=2,
        dec_dim_head=8,
        sparse_3dna_dilation=(1, 2),
    ).eval()


# the entry points: which argument carries pixels or embeddings, a valid value, and the call


def _rand(*shape):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(0))


def _randn(*shape):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(1))


_IDS = torch.tensor([[1, 2, 3], [4, 5, 0]])
_VIDEO_IDS = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(2))


@dataclass(frozen=True)
class Entry:
    """A tensor argument of a public entry point: `call(x)` runs the entry point with `x` as that argument."""

    name: str
    kind: str  # 'pixels' or 'embeddings'
    good: Callable[[], torch.Tensor]
    call: Callable[[torch.Tensor], torch.Tensor]


ENTRIES = {
    "imagen.forward": Entry(
        "images_or_video",
        "pixels",
        lambda: _rand(2, 3, 8, 8),
        lambda x: imagen()(x, text_embeds=_randn(x.shape[0], 4, TEXT_DIM), unet_number=1),
    ),
    "imagen.forward text": Entry(
        "text_embeds",
        "embeddings",
        lambda: _randn(2, 4, TEXT_DIM),
        lambda e: imagen()(_rand(2, 3, 8, 8), text_embeds=e, unet_number=1),
    ),
    "elucidated.forward": Entry(
        "images_or_video",
        "pixels",
        lambda: _rand(2, 3, 8, 8),
        lambda x: elucidated_imagen()(x, text_embeds=_randn(x.shape[0], 4, TEXT_DIM)),
    ),
    "elucidated.sample text": Entry(
        "text_embeds",
        "embeddings",
        lambda: _randn(1, 4, TEXT_DIM),
        lambda e: elucidated_imagen().sample(text_embeds=e, use_tqdm=False),
    ),
    "video_diffusion.forward": Entry(
        "videos", "pixels", lambda: _rand(2, 3, 3, 8, 8), lambda x: video_diffusion()(x, cond=_randn(x.shape[0], 4))
    ),
    "video_diffusion.forward cond": Entry(
        "cond", "embeddings", lambda: _randn(2, 4), lambda c: video_diffusion()(_rand(2, 3, 3, 8, 8), cond=c)
    ),
    "video_diffusion.interpolate": Entry(
        "x1",
        "pixels",
        lambda: _rand(1, 3, 3, 8, 8),
        lambda x: video_diffusion().interpolate(x, _rand(*x.shape), t=3, steps=2, progress=False),
    ),
    "make_a_video.forward": Entry(
        "videos_or_images",
        "pixels",
        lambda: _rand(2, 3, 4, 8, 8),
        lambda x: make_a_video()(x, text_embeds=_randn(x.shape[0], 3, TEXT_DIM)),
    ),
    "make_a_video.sample text": Entry(
        "text_embeds",
        "embeddings",
        lambda: _randn(1, 3, TEXT_DIM),
        lambda e: make_a_video().sample(text_embeds=e, progress=False),
    ),
    "frame_interpolator.interpolate": Entry(
        "video",
        "pixels",
        lambda: _rand(1, 3, 2, 8, 8),
        lambda x: frame_interpolator().interpolate(
            x, factor=2, text_embeds=_randn(x.shape[0], 3, TEXT_DIM), progress=False
        ),
    ),
    "cvivit.forward": Entry("video", "pixels", lambda: _rand(2, 3, 5, 16, 16), lambda x: cvivit()(x)),
    "cvivit.encode": Entry("video", "pixels", lambda: _rand(1, 3, 3, 16, 16), lambda x: cvivit().encode(x).tokens),
    "cvivit.decode": Entry("tokens", "embeddings", lambda: _randn(1, 2, 2, 2, 32), lambda t: cvivit().decode(t)),
    "maskgit.forward text": Entry(
        "text_embeds", "embeddings", lambda: _randn(2, 5, TEXT_DIM), lambda e: maskgit()(_VIDEO_IDS, text_embeds=e)
    ),
    "phenaki.forward": Entry(
        "videos",
        "pixels",
        lambda: _rand(2, 3, 5, 16, 16),
        lambda x: phenaki()(x, text_embeds=_randn(x.shape[0], 5, TEXT_DIM)),
    ),
    "phenaki.forward text": Entry(
        "text_embeds",
        "embeddings",
        lambda: _randn(2, 5, TEXT_DIM),
        lambda e: phenaki()(video_codebook_ids=_VIDEO_IDS, text_embeds=e),
    ),
    "phenaki.sample prime": Entry(
        "prime_frames",
        "pixels",
        lambda: _rand(1, 3, 3, 16, 16),
        lambda x: phenaki().sample(num_frames=2, prime_frames=x, progress=False),
    ),
    "vqgan_vae.forward": Entry(
        "img", "pixels", lambda: _rand(2, 3, 16, 16), lambda x: vqgan_vae()(x, return_loss=True)
    ),
    "vqgan_vae.encode": Entry("x", "pixels", lambda: _rand(1, 2, 3, 16, 16), lambda x: vqgan_vae().encode(x)),
    "vqgan_vae.decode": Entry(
        "fmap", "embeddings", lambda: _randn(1, vqgan_vae().codebook_dim, 4, 4), lambda f: vqgan_vae().decode(f)
    ),
    "nuwa.forward": Entry(
        "video", "pixels", lambda: _rand(2, 2, 3, 16, 16), lambda x: nuwa()(_IDS, video=x, return_loss=True)
    ),
    "nuwa_sketch.forward": Entry(
        "sketch",
        "pixels",
        lambda: _rand(2, 1, 1, 16, 16),
        lambda s: nuwa_sketch()(s, video=_rand(s.shape[0], 2, 3, 16, 16), return_loss=True),
    ),
}


def _nan(x):
    x = x.clone()
    x.view(-1)[3] = float("nan")
    return x


def _inf(x):
    x = x.clone()
    x.view(-1)[-1] = float("inf")
    return x


@dataclass(frozen=True)
class Bad:
    """A bad input: how to make it from a valid one, and the error (type, regex with `{name}` for the argument)."""

    make: Callable[[torch.Tensor], torch.Tensor]
    error: type[Exception]
    message: str
    kinds: tuple[str, ...] = ("pixels", "embeddings")


BAD = {
    "nan": Bad(_nan, ValueError, "{name}: expected finite .*NaN or inf"),
    "inf": Bad(_inf, ValueError, "{name}: expected finite .*NaN or inf"),
    "0-255 floats": Bad(
        lambda x: x * 255, ValueError, r"{name}: expected pixel values in \[0, 1\].*divided by 255", ("pixels",)
    ),
    "int64": Bad(lambda x: (x * 255).long(), TypeError, "{name}: .*got dtype torch.int64"),
    "another device": Bad(
        lambda x: x.to("meta"), ValueError, "{name}: expected a tensor on the model's device cpu, got one on meta"
    ),
    # an empty batch of a second argument may also show as a batch size mismatch: both name the argument
    "empty batch": Bad(
        lambda x: x[:0],
        ValueError,
        r"{name}: expected at least one sample, got an empty batch|batch sizes must match, .*{name}=0"
        r"|{name}: expected a batch of \d+ .*got 0",
    ),
}


def _finite(out):
    outputs = out if isinstance(out, tuple) else (out,)
    return all(torch.isfinite(o.float()).all() for o in outputs if isinstance(o, torch.Tensor))


def _seeded(call, x):
    torch.manual_seed(0)
    return call(x)


def _assert_same(out, expected):
    outputs, expected = (out, expected) if isinstance(out, tuple) else ((out,), (expected,))
    for o, e in zip(outputs, expected):
        torch.testing.assert_close(o, e)


BAD_CASES = [(entry, bad) for entry in ENTRIES for bad, spec in BAD.items() if ENTRIES[entry].kind in spec.kinds]


@pytest.mark.parametrize(("entry", "bad"), BAD_CASES, ids=[f"{e} | {b}" for e, b in BAD_CASES])
def test_bad_input_is_refused_naming_the_argument(entry, bad):
    entry, bad = ENTRIES[entry], BAD[bad]
    with pytest.raises(bad.error, match=bad.message.format(name=entry.name)):
        entry.call(bad.make(entry.good()))


# conversions: the documented ones give exactly the result of the equivalent float32 input

CONVERSIONS = {
    # (input from a valid float32 one, the float32 input it must be equivalent to)
    "uint8": (lambda x: (x * 255).round().to(torch.uint8), lambda x: (x * 255).round() / 255, ("pixels",)),
    "float64": (lambda x: x.double(), lambda x: x, ("pixels", "embeddings")),
    "float16": (lambda x: x.half(), lambda x: x.half().float(), ("pixels", "embeddings")),
    "bfloat16": (lambda x: x.bfloat16(), lambda x: x.bfloat16().float(), ("pixels", "embeddings")),
    "[-1, 1] pixels": (lambda x: x * 2 - 1, lambda x: x, ("pixels",)),
}
CONVERSION_CASES = [
    (entry, conversion)
    for entry in ENTRIES
    for conversion, (_, _, kinds) in CONVERSIONS.items()
    if ENTRIES[entry].kind in kinds
]


@pytest.mark.parametrize(("entry", "conversion"), CONVERSION_CASES, ids=[f"{e} | {c}" for e, c in CONVERSION_CASES])
def test_convertible_input_gives_the_result_of_its_float32_equivalent(entry, conversion):
    entry = ENTRIES[entry]
    convert, equivalent, _ = CONVERSIONS[conversion]
    good = entry.good()
    with torch.no_grad():
        out = _seeded(entry.call, convert(good))
        expected = _seeded(entry.call, equivalent(good))
    assert _finite(out)
    # [-1, 1] pixels round trip through (x + 1) / 2: equal up to float rounding
    _assert_same(out, expected)


@pytest.mark.parametrize("entry", [e for e in ENTRIES if ENTRIES[e].kind == "pixels"])
def test_randn_pixels_are_read_as_symmetric_and_clamped_with_a_warning(entry):
    """The README convention of some packages (`torch.randn` videos, "normalized from -1 to +1")."""
    entry = ENTRIES[entry]
    good = entry.good()
    noise = torch.randn(good.shape, generator=torch.Generator().manual_seed(3)) * 2
    with (
        torch.no_grad(),
        pytest.warns(UserWarning, match=rf"{entry.name}: pixel values outside \[-1, 1\] were clamped"),
    ):
        out = _seeded(entry.call, noise)
    with torch.no_grad():
        expected = _seeded(entry.call, (noise.clamp(-1, 1) + 1) / 2)
    _assert_same(out, expected)


# sampler settings


@dataclass(frozen=True)
class Setting:
    call: Callable[..., object]  # call(**{name: value})
    name: str


SETTINGS = {
    "imagen.sample cond_scale": Setting(
        lambda **kw: imagen().sample(text_embeds=_randn(1, 4, TEXT_DIM), use_tqdm=False, **kw), "cond_scale"
    ),
    "imagen.sample steps": Setting(
        lambda **kw: imagen().sample(text_embeds=_randn(1, 4, TEXT_DIM), use_tqdm=False, **kw), "steps"
    ),
    "elucidated.sample cond_scale": Setting(
        lambda **kw: elucidated_imagen().sample(text_embeds=_randn(1, 4, TEXT_DIM), use_tqdm=False, **kw), "cond_scale"
    ),
    "elucidated.sample steps": Setting(
        lambda **kw: elucidated_imagen().sample(text_embeds=_randn(1, 4, TEXT_DIM), use_tqdm=False, **kw), "steps"
    ),
    "video_diffusion.sample cond_scale": Setting(
        lambda **kw: video_diffusion().sample(cond=_randn(1, 4), progress=False, **kw), "cond_scale"
    ),
    "video_diffusion.sample steps": Setting(
        lambda **kw: video_diffusion().sample(cond=_randn(1, 4), progress=False, **kw), "steps"
    ),
    "video_diffusion.interpolate cond_scale": Setting(
        lambda **kw: video_diffusion().interpolate(
            _rand(1, 3, 3, 8, 8), _rand(1, 3, 3, 8, 8), t=3, progress=False, **kw
        ),
        "cond_scale",
    ),
    "make_a_video.sample cond_scale": Setting(
        lambda **kw: make_a_video().sample(text_embeds=_randn(1, 3, TEXT_DIM), progress=False, **kw), "cond_scale"
    ),
    "make_a_video.sample steps": Setting(
        lambda **kw: make_a_video().sample(text_embeds=_randn(1, 3, TEXT_DIM), progress=False, **kw), "steps"
    ),
    "frame_interpolator.interpolate cond_scale": Setting(
        lambda **kw: frame_interpolator().interpolate(
            _rand(1, 3, 2, 8, 8), text_embeds=_randn(1, 3, TEXT_DIM), progress=False, **kw
        ),
        "cond_scale",
    ),
    "maskgit.forward_with_cond_scale cond_scale": Setting(
        lambda **kw: maskgit().forward_with_cond_scale(_VIDEO_IDS, text_embeds=_randn(2, 5, TEXT_DIM), **kw),
        "cond_scale",
    ),
    "phenaki.sample cond_scale": Setting(
        lambda **kw: phenaki().sample(num_frames=3, text_embeds=_randn(1, 5, TEXT_DIM), progress=False, **kw),
        "cond_scale",
    ),
    "phenaki.sample steps": Setting(
        lambda **kw: phenaki().sample(num_frames=3, text_embeds=_randn(1, 5, TEXT_DIM), progress=False, **kw), "steps"
    ),
    "phenaki.sample starting_temperature": Setting(
        lambda **kw: phenaki().sample(num_frames=3, text_embeds=_randn(1, 5, TEXT_DIM), progress=False, **kw),
        "starting_temperature",
    ),
    "nuwa.generate cond_scale": Setting(lambda **kw: nuwa().generate(_IDS, progress=False, **kw), "cond_scale"),
    "nuwa.generate temperature": Setting(lambda **kw: nuwa().generate(_IDS, progress=False, **kw), "temperature"),
    "nuwa_sketch.generate cond_scale": Setting(
        lambda **kw: nuwa_sketch().generate(_rand(1, 1, 1, 16, 16), progress=False, **kw), "cond_scale"
    ),
}

BAD_VALUES = {
    # the kind of setting (the last word of its name) -> values it must refuse
    "cond_scale": (-1.0, math.nan, math.inf),
    "steps": (0, -3),
    "temperature": (-1.0, math.nan, math.inf),
}
SETTING_CASES = [
    (setting, value)
    for setting, spec in SETTINGS.items()
    for value in BAD_VALUES[spec.name.split("_")[-1] if spec.name.endswith("temperature") else spec.name]
]


@pytest.mark.parametrize(("setting", "value"), SETTING_CASES, ids=[f"{s} = {v}" for s, v in SETTING_CASES])
def test_bad_sampler_setting_is_refused_naming_it(setting, value):
    setting = SETTINGS[setting]
    with pytest.raises(ValueError, match=f"{setting.name}: expected"):
        setting.call(**{setting.name: value})


def test_every_package_is_in_the_table():
    models = {name.split(".")[0] for name in [*ENTRIES, *SETTINGS]}
    assert {
        "imagen",
        "elucidated",
        "video_diffusion",
        "make_a_video",
        "frame_interpolator",
        "cvivit",
        "maskgit",
        "phenaki",
        "vqgan_vae",
        "nuwa",
        "nuwa_sketch",
    } <= models


# a bad batch never poisons a codebook (CViViT and VQGanVAE training forward)


def _tokenizers():
    from nuwa_pytorch import VQGanVAE
    from phenaki_pytorch import CViViT

    torch.manual_seed(0)
    cvivit_model = CViViT(
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
        quantizer_kwargs=dict(kmeans_init=True, threshold_ema_dead_code=0.5),
    )
    vae = VQGanVAE(
        dim=8,
        image_size=16,
        num_layers=2,
        vq_codebook_size=32,
        attn_heads=2,
        attn_dim_head=8,
        resnet_groups=4,
        use_vgg_and_gan=False,
        vq_kmeans_init=True,
        vq_threshold_ema_dead_code=0.5,
    )
    return {
        # model, its training loss on a batch, a clean batch, the module whose output feeds the quantizer and the
        # part of that output that holds whole feature vectors (so that some vectors are bad and the others finite)
        "cvivit": (
            cvivit_model,
            lambda x: cvivit_model(x),
            _rand(2, 3, 5, 16, 16),
            cvivit_model.enc_temporal_transformer,
            (slice(None, None, 2), 0),
        ),  # ((b h w), t, d)
        "vqgan_vae": (
            vae,
            lambda x: vae(x, return_loss=True),
            _rand(2, 3, 16, 16),
            vae.encoder_layers[-1],
            (slice(None), slice(None), slice(None, None, 2)),
        ),  # (b, d, h, w)
    }


def _codebook_state(model):
    return {name: buffer.clone() for name, buffer in model.vq.named_buffers()}


@pytest.mark.parametrize("tokenizer", ["cvivit", "vqgan_vae"])
@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_non_finite_pixels_are_refused_before_the_codebook(tokenizer, value):
    model, loss_of, clean, _, _ = _tokenizers()[tokenizer]
    model.train()
    before = _codebook_state(model)
    bad = clean.clone()
    bad.view(-1)[::7] = value
    with pytest.raises(ValueError, match="expected finite pixel values"):
        loss_of(bad)
    for name, buffer in model.vq.named_buffers():
        assert torch.equal(buffer, before[name]), name


@pytest.mark.parametrize("tokenizer", ["cvivit", "vqgan_vae"])
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_features_inside_the_network_never_reach_the_codebook(tokenizer, value):
    """NaN / inf made by the network itself (an overflow, a diverging layer) reach the quantizer's training
    statistics: the step's loss is not finite (the trainer skips it), but the codebook stays finite and the next
    clean step trains normally."""
    model, loss_of, clean, feeding, bad_vectors = _tokenizers()[tokenizer]
    model.train()

    def overflow(module, inputs, output):
        output = output.clone()
        output[bad_vectors] = value  # half of the feature vectors
        return output

    handle = feeding.register_forward_hook(overflow)
    try:
        for _ in range(2):  # the first step also runs the k-means init, the second the EMA and dead-code updates
            assert not torch.isfinite(loss_of(clean))
    finally:
        handle.remove()
    for name, buffer in model.vq.named_buffers():
        assert torch.isfinite(buffer.float()).all(), f"{tokenizer}.vq.{name} holds NaN or inf"
    assert bool(model.vq.initted)  # initialised from the finite feature vectors

    loss = loss_of(clean)
    assert torch.isfinite(loss)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
