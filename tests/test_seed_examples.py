"""Every code example of the five seed READMEs, as written, as the project's own tests.

The examples are copied here (the project's tests stand alone), changed only where a CPU test in seconds and
offline must differ from the README:
- sizes shrunk (dims, depths, image sizes, frames, batch sizes, diffusion steps, training loops);
- `.cuda()` written `.to(DEVICE)`: the same call chain, on the GPU when there is one, else on the CPU;
- a Hugging Face hub name of a text encoder (Imagen's and Phenaki's default T5, `'t5-large'`, video-diffusion's
  BERT) replaced by a local folder holding a tiny encoder of the same width, written by the fixtures below (no
  network here); where an example leans on the default encoder, the folder is passed as `text_encoder_name=`;
- file paths ('./data', '/path/to/training/images', './checkpoint.pt') put under pytest's temporary folder.
Pixel inputs stay `torch.randn` as in the READMEs (read as [-1, 1] with a warning). The `pip install` and
`accelerate` shell blocks are not the packages' own commands and are not run here; the `imagen` CLI blocks are.
Each test names the README and the example it runs. The examples keep the READMEs' own layout and import order,
so this file is exempt from the formatter and from the import-order and unused-variable lint rules.
"""

# fmt: off
# ruff: noqa: I001, F841
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from synthesis_core.testing import build_tiny_bert, build_tiny_t5, configure_test_process, write_moving_gif

configure_test_process()

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

CAPTIONS = [
    "a whale breaching from afar",
    "young girl blowing out candles on her birthday cake",
    "fireworks with blue and green sparkles",
    "dust motes swirling in the morning sunshine on the windowsill",
    "a child screaming at finding a worm within a half-eaten apple",
    "lizard running across the desert on two feet",
    "waking up to a psychedelic landscape",
    "seashells sparkling in the shallow waters",
    "a puppy looking anxiously at a giant donut on the table",
    "the milky way galaxy in the style of monet",
    "a cloud in the shape of a roman gladiator",
    "a squirrel examines an acorn",
    "a cat watches the squirrel from afar",
    "a squirrel raiding the birdfeeder",
]

# the examples' pixels are torch.randn, which the packages read as [-1, 1] and say so once
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _tiny_t5(tmp_path_factory, width: int) -> str:
    return build_tiny_t5(tmp_path_factory.mktemp(f"t5-{width}"), CAPTIONS, d_model=width, d_ff=32, num_layers=1,
                         num_heads=2, vocab_size=120)


@pytest.fixture(scope="module")
def t5_base(tmp_path_factory):
    """Stands in for google/t5-v1_1-base (768 wide), the default encoder of Imagen and Phenaki."""
    return _tiny_t5(tmp_path_factory, 768)


@pytest.fixture(scope="module")
def t5_large(tmp_path_factory):
    """Stands in for 't5-large' (1024 wide)."""
    return _tiny_t5(tmp_path_factory, 1024)


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    """Stands in for video-diffusion's default BERT."""
    return build_tiny_bert(tmp_path_factory.mktemp("bert"), CAPTIONS, hidden_size=32, num_layers=1, num_heads=2,
                           intermediate_size=64)


@pytest.fixture
def data_folder(tmp_path):
    """'./data': .gif videos of the example's size and frame count (16x16, 4 frames)."""
    folder = tmp_path / "data"
    folder.mkdir()
    for k in range(4):
        write_moving_gif(folder / f"{k}.gif", 4, 16, k)
    return str(folder)


@pytest.fixture
def image_folder(tmp_path):
    """'/path/to/training/images': a few pngs, each with a caption beside it (for the CLI's default dataset)."""
    from synthesis_core.testing import moving_frames

    folder = tmp_path / "images"
    folder.mkdir()
    for k in range(4):
        moving_frames(1, 24, k)[0].save(folder / f"{k}.png")
        (folder / f"{k}.txt").write_text(CAPTIONS[k])
    return str(folder)


# ---------------------------------------------------------------------------------------------------------------
# video-diffusion-README.md


def test_video_diffusion_unconditional():
    import torch
    from video_diffusion_pytorch import Unet3D, GaussianDiffusion

    model = Unet3D(
        dim = 16,
        dim_mults = (1, 2)
    )

    diffusion = GaussianDiffusion(
        model,
        image_size = 16,
        num_frames = 5,
        timesteps = 10,   # number of steps
        loss_type = 'l1'    # L1 or L2
    )

    videos = torch.randn(1, 3, 5, 16, 16) # video (batch, channels, frames, height, width) - normalized from -1 to +1
    loss = diffusion(videos)
    loss.backward()
    # after a lot of training

    sampled_videos = diffusion.sample(batch_size = 4)
    assert sampled_videos.shape == (4, 3, 5, 16, 16)


def test_video_diffusion_conditioned_on_a_tensor():
    import torch
    from video_diffusion_pytorch import Unet3D, GaussianDiffusion

    model = Unet3D(
        dim = 16,
        cond_dim = 64,
        dim_mults = (1, 2)
    )

    diffusion = GaussianDiffusion(
        model,
        image_size = 16,
        num_frames = 5,
        timesteps = 10,   # number of steps
        loss_type = 'l1'    # L1 or L2
    )

    videos = torch.randn(2, 3, 5, 16, 16) # video (batch, channels, frames, height, width)
    text = torch.randn(2, 64)             # assume output of BERT-large has dimension of 64

    loss = diffusion(videos, cond = text)
    loss.backward()
    # after a lot of training

    sampled_videos = diffusion.sample(cond = text)
    assert sampled_videos.shape == (2, 3, 5, 16, 16)


def test_video_diffusion_conditioned_on_strings_and_focus_present(bert):
    import torch
    from video_diffusion_pytorch import Unet3D, GaussianDiffusion

    model = Unet3D(
        dim = 16,
        use_bert_text_cond = True,  # this must be set to True to auto-use the bert model dimensions
        dim_mults = (1, 2),
        text_encoder_name = bert,
    )

    diffusion = GaussianDiffusion(
        model,
        image_size = 16,    # height and width of frames
        num_frames = 5,     # number of video frames
        timesteps = 10,   # number of steps
        loss_type = 'l1'    # L1 or L2
    )

    videos = torch.randn(3, 3, 5, 16, 16) # video (batch, channels, frames, height, width)

    text = [
        'a whale breaching from afar',
        'young girl blowing out candles on her birthday cake',
        'fireworks with blue and green sparkles'
    ]

    loss = diffusion(videos, cond = text)
    loss.backward()
    # after a lot of training

    sampled_videos = diffusion.sample(cond = text, cond_scale = 2)
    assert sampled_videos.shape == (3, 3, 5, 16, 16)

    # the README's next block
    loss = diffusion(videos, cond = text, prob_focus_present = 0.5) # for 50% of videos, focus on the present during training
    loss.backward()


VIDEO_DIFFUSION_TRAINER_EXAMPLE = """
import torch
from video_diffusion_pytorch import Unet3D, GaussianDiffusion, Trainer

DEVICE = 'cuda' if torch.cuda.is_available() else 'cpu'

model = Unet3D(
    dim = 16,
    dim_mults = (1, 2),
)

diffusion = GaussianDiffusion(
    model,
    image_size = 16,
    num_frames = 4,
    timesteps = 10,   # number of steps
    loss_type = 'l1'    # L1 or L2
).to(DEVICE)

trainer = Trainer(
    diffusion,
    './data',                         # this folder path needs to contain all your training data, as .gif files, of correct image size and number of frames
    train_batch_size = 2,
    train_lr = 1e-4,
    save_and_sample_every = 2,
    train_num_steps = 2,         # total training steps
    gradient_accumulate_every = 2,    # gradient accumulation steps
    ema_decay = 0.995,                # exponential moving average decay
    amp = True                        # turn on mixed precision
)

trainer.train()
"""


def test_video_diffusion_trainer(data_folder, tmp_path):
    # in a process of its own: accelerate keeps one mixed-precision setting per process, and this example's
    # amp=True (bf16) would otherwise hold for every trainer the later examples create
    run = subprocess.run([sys.executable, "-c", VIDEO_DIFFUSION_TRAINER_EXAMPLE], cwd=tmp_path, capture_output=True,
                         text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stderr[-3000:]
    assert (tmp_path / "results" / "sample-1.gif").is_file()


# ---------------------------------------------------------------------------------------------------------------
# make-a-video-README.md


def test_make_a_video_video_features():
    import torch
    from make_a_video_pytorch import Pseudo3DConv, SpatioTemporalAttention

    conv = Pseudo3DConv(
        dim = 32,
        kernel_size = 3
    )

    attn = SpatioTemporalAttention(
        dim = 32,
        dim_head = 16,
        heads = 2
    )

    video = torch.randn(1, 32, 4, 8, 8) # (batch, features, frames, height, width)

    conv_out = conv(video) # (1, 32, 4, 8, 8)
    attn_out = attn(video) # (1, 32, 4, 8, 8)
    assert conv_out.shape == attn_out.shape == (1, 32, 4, 8, 8)


def test_make_a_video_images_skip_time():
    import torch
    from make_a_video_pytorch import Pseudo3DConv, SpatioTemporalAttention

    conv = Pseudo3DConv(
        dim = 32,
        kernel_size = 3
    )

    attn = SpatioTemporalAttention(
        dim = 32,
        dim_head = 16,
        heads = 2
    )

    images = torch.randn(1, 32, 8, 8) # (batch, features, height, width)

    conv_out = conv(images) # (1, 32, 8, 8)
    attn_out = attn(images) # (1, 32, 8, 8)
    assert conv_out.shape == attn_out.shape == (1, 32, 8, 8)


def test_make_a_video_spatial_only():
    import torch
    from make_a_video_pytorch import Pseudo3DConv, SpatioTemporalAttention

    conv = Pseudo3DConv(
        dim = 32,
        kernel_size = 3
    )

    attn = SpatioTemporalAttention(
        dim = 32,
        dim_head = 16,
        heads = 2
    )

    video = torch.randn(1, 32, 4, 8, 8) # (batch, features, frames, height, width)

    # below it will not train across time

    conv_out = conv(video, convolve_across_time = False) # (1, 32, 4, 8, 8)
    attn_out = attn(video, attend_across_time = False) # (1, 32, 4, 8, 8)
    assert conv_out.shape == attn_out.shape == (1, 32, 4, 8, 8)


# ---------------------------------------------------------------------------------------------------------------
# phenaki-README.md


def test_phenaki_cvivit():
    import torch
    from phenaki_pytorch import CViViT

    cvivit = CViViT(
        dim = 32,
        codebook_size = 5000,
        patch_size = 8,
        temporal_patch_size = 2,
        spatial_depth = 1,
        temporal_depth = 1,
        dim_head = 16,
        heads = 2
    ).to(DEVICE)

    video = torch.randn(1, 3, 5, 32, 32).to(DEVICE) # (batch, channels, frames + 1 leading frame, image height, image width)

    loss = cvivit(video)
    loss.backward()


def test_phenaki_token_critic():
    import torch
    from phenaki_pytorch import CViViT, MaskGit, TokenCritic, CriticTrainer  # noqa: F401

    maskgit = MaskGit(
        num_tokens = 5000,
        max_seq_len = 64,
        dim = 32,
        dim_context = 768,
        depth = 1,
    )

    critic = TokenCritic(
        num_tokens = 5000,
        max_seq_len = 64,
        dim = 32,
        dim_context = 768,
        depth = 1
    )

    critic_trainer = CriticTrainer(
        maskgit = maskgit,
        critic = critic
    )

    video_codes = torch.randint(0, 5000, (4, 64))

    loss = critic_trainer(video_codes)
    loss.backward()


def test_phenaki_text_to_video_and_continuation(t5_base):
    import torch
    from phenaki_pytorch import CViViT, MaskGit, Phenaki

    maskgit = MaskGit(
        num_tokens = 5000,
        max_seq_len = 64,
        dim = 32,
        dim_context = 768,
        depth = 1,
    )

    cvivit = CViViT(
        dim = 32,
        codebook_size = 5000,
        image_size = 32,
        patch_size = 8,
        temporal_patch_size = 2,
        spatial_depth = 1,
        temporal_depth = 1,
        dim_head = 16,
        heads = 2
    )

    phenaki = Phenaki(
        cvivit = cvivit,
        maskgit = maskgit,
        text_encoder_name = t5_base,
    ).to(DEVICE)

    videos = torch.randn(3, 3, 5, 32, 32).to(DEVICE) # (batch, channels, frames, height, width)

    texts = [
        'a whale breaching from afar',
        'young girl blowing out candles on her birthday cake',
        'fireworks with blue and green sparkles'
    ]

    loss = phenaki(videos, texts)
    loss.backward()

    # do the above for many steps, then ...

    video = phenaki.sample(text = 'a squirrel examines an acorn', num_frames = 5, cond_scale = 5.) # (1, 3, 5, 32, 32)

    # so in the paper, they do not really achieve 2 minutes of coherent video, more research needed there
    # they condition on the previous K frames, with new text conditoining
    # you can easily achieve this with this framework as so

    video_prime = video[:, :, -3:] # (1, 3, 3, 32, 32) # say K = 3

    video_next = phenaki.sample(text = 'a cat watches the squirrel from afar', prime_frames = video_prime, num_frames = 4) # (1, 3, 4, 32, 32)

    # the total video

    entire_video = torch.cat((video, video_next), dim = 2) # (1, 3, 5 + 4, 32, 32)
    assert entire_video.shape == (1, 3, 9, 32, 32)


# ---------------------------------------------------------------------------------------------------------------
# nuwa-README.md


def test_nuwa_vqgan_vae():
    import torch
    from nuwa_pytorch import VQGanVAE

    vae = VQGanVAE(
        dim = 16,
        image_size = 32,
        num_layers = 2
    )

    imgs = torch.randn(2, 3, 32, 32)

    # alternate learning for autoencoder ...

    loss = vae(imgs, return_loss = True)
    loss.backward()

    # and the discriminator ...

    discr_loss = vae(imgs, return_discr_loss = True)
    discr_loss.backward()


def test_nuwa_text_to_video():
    import torch
    from nuwa_pytorch import NUWA, VQGanVAE

    # autoencoder

    vae = VQGanVAE(
        dim = 16,
        num_layers = 2,
        image_size = 32
    )

    # NUWA transformer

    nuwa = NUWA(
        vae = vae,
        dim = 32,
        text_num_tokens = 20000,           # number of text tokens
        text_enc_depth = 1,               # text encoder depth
        text_enc_heads = 2,                # number of attention heads for encoder
        text_max_seq_len = 8,            # max sequence length of text conditioning tokens (keep at 256 as in paper, or shorter, if your text is not that long)
        max_video_frames = 3,             # number of video frames
        image_size = 32,                  # size of each frame of video
        dec_depth = 2,                    # video decoder depth
        dec_heads = 2,                     # number of attention heads in decoder
        dec_reversible = True,             # reversible networks - from reformer, decoupling memory usage from depth
        enc_reversible = True,             # reversible encoders, if you need it
        attn_dropout = 0.05,               # dropout for attention
        ff_dropout = 0.05,                 # dropout for feedforward
        sparse_3dna_kernel_size = 3,       # kernel size of the sparse 3dna attention
        sparse_3dna_dilation = (1, 2),  # cycle dilation of 3d conv attention in decoder, for more range
        shift_video_tokens = True          # cheap relative positions for sparse 3dna transformer, by shifting along spatial dimensions by one
    ).to(DEVICE)

    # data

    text = torch.randint(0, 20000, (1, 8)).to(DEVICE)
    video = torch.randn(1, 3, 3, 32, 32).to(DEVICE) # (batch, frames, channels, height, width)

    loss = nuwa(
        text = text,
        video = video,
        return_loss = True  # set this to True, only for training, to return cross entropy loss
    )

    loss.backward()

    # do above with as much data as possible

    # then you can generate a video from text

    video = nuwa.generate(text = text) # (1, 3, 3, 32, 32)
    assert video.shape == (1, 3, 3, 32, 32)


# ---------------------------------------------------------------------------------------------------------------
# imagen-README.md


def _imagen_unets(Unet):
    unet1 = Unet(
        dim = 16,
        cond_dim = 32,
        dim_mults = (1, 2),
        num_resnet_blocks = 1,
        layer_attns = (False, True),
        layer_cross_attns = (False, True)
    )

    unet2 = Unet(
        dim = 16,
        cond_dim = 32,
        dim_mults = (1, 2),
        num_resnet_blocks = (1, 2),
        layer_attns = (False, True),
        layer_cross_attns = (False, True)
    )
    return unet1, unet2


def test_imagen_cascade_with_text_embeds_then_texts(t5_base):
    import torch
    from imagen_pytorch import Unet, Imagen

    # unet for imagen

    unet1, unet2 = _imagen_unets(Unet)

    # imagen, which contains the unets above (base unet and super resoluting ones)

    imagen = Imagen(
        unets = (unet1, unet2),
        image_sizes = (16, 32),
        timesteps = 10,
        cond_drop_prob = 0.1,
        text_encoder_name = t5_base,
    ).to(DEVICE)

    # mock images (get a lot of this) and text encodings from large T5

    text_embeds = torch.randn(4, 8, 768).to(DEVICE)
    images = torch.randn(4, 3, 32, 32).to(DEVICE)

    # feed images into imagen, training each unet in the cascade

    for i in (1, 2):
        loss = imagen(images, text_embeds = text_embeds, unet_number = i)
        loss.backward()

    # do the above for many many many many steps
    # now you can sample an image based on the text embeddings from the cascading ddpm

    images = imagen.sample(texts = [
        'a whale breaching from afar',
        'young girl blowing out candles on her birthday cake',
        'fireworks with blue and green sparkles'
    ], cond_scale = 3.)

    assert images.shape == (3, 3, 32, 32)

    # the README's next block: raw texts instead of their embeddings

    # mock images and text (get a lot of this)

    texts = [
        'a child screaming at finding a worm within a half-eaten apple',
        'lizard running across the desert on two feet',
        'waking up to a psychedelic landscape',
        'seashells sparkling in the shallow waters'
    ]

    images = torch.randn(4, 3, 32, 32).to(DEVICE)

    # feed images into imagen, training each unet in the cascade

    for i in (1, 2):
        loss = imagen(images, texts = texts, unet_number = i)
        loss.backward()


def test_imagen_trainer_then_save_and_load(t5_large, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    import torch
    from imagen_pytorch import Unet, Imagen, ImagenTrainer

    # unet for imagen

    unet1 = Unet(
        dim = 16,
        cond_dim = 32,
        dim_mults = (1, 2),
        num_resnet_blocks = 1,
        layer_attns = (False, True),
    )

    unet2 = Unet(
        dim = 16,
        cond_dim = 32,
        dim_mults = (1, 2),
        num_resnet_blocks = (1, 2),
        layer_attns = (False, True),
        layer_cross_attns = (False, True)
    )

    # imagen, which contains the unets above (base unet and super resoluting ones)

    imagen = Imagen(
        unets = (unet1, unet2),
        text_encoder_name = t5_large,
        image_sizes = (16, 32),
        timesteps = 10,
        cond_drop_prob = 0.1
    ).to(DEVICE)

    # wrap imagen with the trainer class

    trainer = ImagenTrainer(imagen)

    # mock images (get a lot of this) and text encodings from large T5

    text_embeds = torch.randn(8, 8, 1024).to(DEVICE)
    images = torch.randn(8, 3, 32, 32).to(DEVICE)

    # feed images into imagen, training each unet in the cascade

    loss = trainer(
        images,
        text_embeds = text_embeds,
        unet_number = 1,            # training on unet number 1 in this example, but you will have to also save checkpoints and then reload and continue training on unet number 2
        max_batch_size = 4          # auto divide the batch of 64 up into batch size of 4 and accumulate gradients, so it all fits in memory
    )

    trainer.update(unet_number = 1)

    # do the above for many many many many steps
    # now you can sample an image based on the text embeddings from the cascading ddpm

    images = trainer.sample(texts = [
        'a puppy looking anxiously at a giant donut on the table',
        'the milky way galaxy in the style of monet'
    ], cond_scale = 3.)

    assert images.shape == (2, 3, 32, 32)

    # the README's checkpoint block

    (tmp_path / "path" / "to").mkdir(parents = True)

    trainer.save('./path/to/checkpoint.pt')

    trainer.load('./path/to/checkpoint.pt')

    assert [int(steps) for steps in trainer.steps] == [1, 0] # (2,) step number for each of the unets


def test_imagen_unconditional_with_sr_unet():
    import torch
    from imagen_pytorch import Unet, Imagen, SRUnet256, ImagenTrainer

    # unets for unconditional imagen

    unet1 = Unet(
        dim = 16,
        dim_mults = (1, 2),
        num_resnet_blocks = 1,
        layer_attns = (False, True),
        layer_cross_attns = False,
        use_linear_attn = True
    )

    unet2 = SRUnet256(
        dim = 16,
        dim_mults = (1, 2),
        num_resnet_blocks = (1, 2),
        layer_attns = (False, True),
        layer_cross_attns = False
    )

    # imagen, which contains the unets above (base unet and super resoluting ones)

    imagen = Imagen(
        condition_on_text = False,   # this must be set to False for unconditional Imagen
        unets = (unet1, unet2),
        image_sizes = (16, 32),
        timesteps = 10
    )

    trainer = ImagenTrainer(imagen).to(DEVICE)

    # now get a ton of images and feed it through the Imagen trainer

    training_images = torch.randn(4, 3, 32, 32).to(DEVICE)

    # train each unet separately
    # in this example, only training on unet number 1

    loss = trainer(training_images, unet_number = 1)
    trainer.update(unet_number = 1)

    # do the above for many many many many steps
    # now you can sample images unconditionally from the cascading unet(s)

    images = trainer.sample(batch_size = 2) # (2, 3, 32, 32)
    assert images.shape == (2, 3, 32, 32)


def test_imagen_null_unet_super_resolution_only(t5_base):
    import torch
    from imagen_pytorch import Unet, NullUnet, Imagen

    # unet for imagen

    unet1 = NullUnet()  # add a placeholder "null" unet for the base unet

    unet2 = Unet(
        dim = 16,
        cond_dim = 32,
        dim_mults = (1, 2),
        num_resnet_blocks = (1, 2),
        layer_attns = (False, True),
        layer_cross_attns = (False, True)
    )

    # imagen, which contains the unets above (base unet and super resoluting ones)

    imagen = Imagen(
        unets = (unet1, unet2),
        image_sizes = (16, 32),
        timesteps = 10,
        cond_drop_prob = 0.1,
        text_encoder_name = t5_base,
    ).to(DEVICE)

    # mock images (get a lot of this) and text encodings from large T5

    text_embeds = torch.randn(4, 8, 768).to(DEVICE)
    images = torch.randn(4, 3, 32, 32).to(DEVICE)

    # feed images into imagen, training each unet in the cascade

    loss = imagen(images, text_embeds = text_embeds, unet_number = 2)
    loss.backward()

    # do the above for many many many many steps
    # now you can sample an image based on the text embeddings as well as low resolution images

    lowres_images = torch.randn(3, 3, 16, 16).to(DEVICE)  # starting un-resoluted images

    images = imagen.sample(
        texts = [
            'a whale breaching from afar',
            'young girl blowing out candles on her birthday cake',
            'fireworks with blue and green sparkles'
        ],
        start_at_unet_number = 2,              # start at unet number 2
        start_image_or_video = lowres_images,  # pass in low resolution images to be resoluted
        cond_scale = 3.)

    assert images.shape == (3, 3, 32, 32)


def test_imagen_dataset_training_loop(image_folder, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    from imagen_pytorch import Unet, Imagen, ImagenTrainer
    from imagen_pytorch.data import Dataset

    # unets for unconditional imagen

    unet = Unet(
        dim = 16,
        dim_mults = (1, 2),
        num_resnet_blocks = 1,
        layer_attns = (False, True),
        layer_cross_attns = False
    )

    # imagen, which contains the unet above

    imagen = Imagen(
        condition_on_text = False,  # this must be set to False for unconditional Imagen
        unets = unet,
        image_sizes = 16,
        timesteps = 10
    )

    trainer = ImagenTrainer(
        imagen = imagen,
        split_valid_from_train = True # whether to split the validation dataset from the training
    ).to(DEVICE)

    # instantiate your dataloader, which returns the necessary inputs to the DDPM as tuple in the order of images, text embeddings, then text masks. in this case, only images is returned as it is unconditional training

    dataset = Dataset(image_folder, image_size = 16)

    trainer.add_train_dataset(dataset, batch_size = 2)

    # working training loop

    for i in range(2):
        loss = trainer.train_step(unet_number = 1, max_batch_size = 1)
        print(f'loss: {loss}')

        if not (i % 50):
            valid_loss = trainer.valid_step(unet_number = 1, max_batch_size = 1)
            print(f'valid loss: {valid_loss}')

        if not (i % 100) and trainer.is_main: # is_main makes sure this can run in distributed
            images = trainer.sample(batch_size = 1, return_pil_images = True) # returns List[Image]
            images[0].save(f'./sample-{i // 100}.png')

    assert (tmp_path / "sample-0.png").is_file()


def test_imagen_command_line(image_folder, t5_base, tmp_path, monkeypatch):
    """`imagen config --path`, `imagen train --unet 2 --epoches ... --valid ...`, `imagen sample --model ... "..."`,
    with the written config's sizes shrunk and its dataset and text encoder pointed at local folders."""
    monkeypatch.chdir(tmp_path)
    from imagen_pytorch.cli import main

    assert main(["config", "--path", "./configs/config.json"]) == 0
    config = json.loads((tmp_path / "configs" / "config.json").read_text())
    for unet in config["imagen"]["unets"]:
        unet.update(dim=8, cond_dim=16, dim_mults=[1, 2], num_resnet_blocks=1, layer_attns=[False, True],
                    layer_cross_attns=[False, True])
    config["imagen"].update(image_sizes=[8, 16], timesteps=4, text_encoder_name=t5_base)
    config["dataset"].update(folder=image_folder, batch_size=2)
    (tmp_path / "configs" / "config.json").write_text(json.dumps(config))

    assert main(["train", "--config", "./configs/config.json", "--unet", "2", "--epoches", "1", "--valid", "1"]) == 0

    # the checkpoint `imagen train` wrote (checkpoint_path: ./checkpoints), where the README's command reads it
    written = sorted(path for path in (tmp_path / "checkpoints").rglob("checkpoint-*") if path.is_file())
    (tmp_path / "path" / "to" / "model").mkdir(parents=True)
    written[-1].rename(tmp_path / "path" / "to" / "model" / "checkpoint.pt")
    assert main(["sample", "--model", "./path/to/model/checkpoint.pt", "a squirrel raiding the birdfeeder"]) == 0
    # image is saved to ./a_squirrel_raiding_the_birdfeeder.png
    assert (tmp_path / "a_squirrel_raiding_the_birdfeeder.png").is_file()


def test_imagen_config_checkpoint_is_loadable(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    import torch  # noqa: F401
    from imagen_pytorch import ImagenConfig, ElucidatedImagenConfig, ImagenTrainer  # noqa: F401

    # in this example, using elucidated imagen

    imagen = ElucidatedImagenConfig(
        unets = [
            dict(dim = 16, dim_mults = (1, 2)),
            dict(dim = 16, dim_mults = (1, 2))
        ],
        image_sizes = (16, 32),
        cond_drop_prob = 0.5,
        num_sample_steps = 3
    ).create()

    trainer = ImagenTrainer(imagen)

    # do your training ...

    # then save it

    trainer.save('./checkpoint.pt')

    # you should see a message informing you that ./checkpoint.pt is commandable from the terminal

    # the README's next block

    from imagen_pytorch import load_imagen_from_checkpoint, ImagenTrainer

    imagen = load_imagen_from_checkpoint('./checkpoint.pt')

    trainer = ImagenTrainer(imagen)

    # continue training / fine-tuning
    trainer(torch.randn(2, 3, 32, 32), text_embeds = torch.randn(2, 8, 768), unet_number = 1)
    trainer.update(unet_number = 1)


def test_imagen_inpainting_and_cond_scale(t5_base):
    import torch
    from imagen_pytorch import Unet, Imagen, ImagenTrainer

    imagen = Imagen(unets = _imagen_unets(Unet), image_sizes = (8, 16), timesteps = 10, cond_drop_prob = 0.1,
                    text_encoder_name = t5_base)
    trainer = ImagenTrainer(imagen)

    # the README's inpainting block

    inpaint_images = torch.randn(4, 3, 16, 16).to(DEVICE)      # (batch, channels, height, width)
    inpaint_masks = torch.ones((4, 16, 16)).bool().to(DEVICE)  # (batch, height, width)

    inpainted_images = trainer.sample(texts = [
        'a whale breaching from afar',
        'young girl blowing out candles on her birthday cake',
        'fireworks with blue and green sparkles',
        'dust motes swirling in the morning sunshine on the windowsill'
    ], inpaint_images = inpaint_images, inpaint_masks = inpaint_masks, cond_scale = 5.)

    assert inpainted_images.shape == (4, 3, 16, 16)

    # the README's classifier-free guidance block

    image = trainer.sample(texts = [
        'a cloud in the shape of a roman gladiator'
    ], cond_scale = 5.) # <-- cond_scale is the conditioning scale, needs to be greater than 1.0 to be better than average
    assert image.shape == (1, 3, 16, 16)


def test_elucidated_imagen():
    from imagen_pytorch import Unet
    from imagen_pytorch import ElucidatedImagen

    # instantiate your unets ...
    unet1, unet2 = _imagen_unets(Unet)

    imagen = ElucidatedImagen(
        unets = (unet1, unet2),
        image_sizes = (16, 32),
        cond_drop_prob = 0.1,
        num_sample_steps = (3, 2), # number of sample steps - 64 for base unet, 32 for upsampler (just an example, have no clue what the optimal values are)
        sigma_min = 0.002,           # min noise level
        sigma_max = (80, 160),       # max noise level, @crowsonkb recommends double the max noise level for upsampler
        sigma_data = 0.5,            # standard deviation of data distribution
        rho = 7,                     # controls the sampling schedule
        P_mean = -1.2,               # mean of log-normal distribution from which noise is drawn for training
        P_std = 1.2,                 # standard deviation of log-normal distribution from which noise is drawn for training
        S_churn = 80,                # parameters for stochastic sampling - depends on dataset, Table 5 in apper
        S_tmin = 0.05,
        S_tmax = 50,
        S_noise = 1.003,
    ).to(DEVICE)

    # rest is the same as above
    text_embeds = torch.randn(2, 8, 768).to(DEVICE)
    for i in (1, 2):
        loss = imagen(torch.randn(2, 3, 32, 32).to(DEVICE), text_embeds = text_embeds, unet_number = i)
        loss.backward()
    assert imagen.sample(text_embeds = text_embeds, cond_scale = 3.).shape == (2, 3, 32, 32)


def test_elucidated_imagen_text_to_video(t5_base):
    import torch
    from imagen_pytorch import Unet3D, ElucidatedImagen, ImagenTrainer

    unet1 = Unet3D(dim = 16, dim_mults = (1, 2)).to(DEVICE)

    unet2 = Unet3D(dim = 16, dim_mults = (1, 2)).to(DEVICE)

    # elucidated imagen, which contains the unets above (base unet and super resoluting ones)

    imagen = ElucidatedImagen(
        unets = (unet1, unet2),
        image_sizes = (8, 16),
        random_crop_sizes = (None, 8),
        num_sample_steps = 3,
        cond_drop_prob = 0.1,
        sigma_min = 0.002,                          # min noise level
        sigma_max = (80, 160),                      # max noise level, double the max noise level for upsampler
        sigma_data = 0.5,                           # standard deviation of data distribution
        rho = 7,                                    # controls the sampling schedule
        P_mean = -1.2,                              # mean of log-normal distribution from which noise is drawn for training
        P_std = 1.2,                                # standard deviation of log-normal distribution from which noise is drawn for training
        S_churn = 80,                               # parameters for stochastic sampling - depends on dataset, Table 5 in apper
        S_tmin = 0.05,
        S_tmax = 50,
        S_noise = 1.003,
        text_encoder_name = t5_base,
    ).to(DEVICE)

    # mock videos (get a lot of this) and text encodings from large T5

    texts = [
        'a whale breaching from afar',
        'young girl blowing out candles on her birthday cake',
        'fireworks with blue and green sparkles',
        'dust motes swirling in the morning sunshine on the windowsill'
    ]

    videos = torch.randn(4, 3, 4, 16, 16).to(DEVICE) # (batch, channels, time / video frames, height, width)

    # feed images into imagen, training each unet in the cascade
    # for this example, only training unet 1

    trainer = ImagenTrainer(imagen)
    trainer(videos, texts = texts, unet_number = 1)
    trainer.update(unet_number = 1)

    videos = trainer.sample(texts = texts, video_frames = 8) # extrapolating to 8 frames from training on 4 frames

    assert videos.shape == (4, 3, 8, 16, 16)
