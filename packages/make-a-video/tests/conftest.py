"""Fixtures for the make-a-video tests: offline, single-threaded, tiny models and tiny synthetic data."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

CAPTIONS = [
    "a red square moving left",
    "a blue circle moving right",
    "a green square moving up",
    "a yellow circle moving down",
]
TEXT_DIM = 16


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _tiny_unet(**kwargs):
    from make_a_video_pytorch import SpaceTimeUnet

    settings = dict(dim=8, channels=3, dim_mults=(1, 2), self_attns=(False, True), temporal_compression=(False, True),
                    resnet_block_depths=(1, 1), attn_dim_head=8, attn_heads=2, ff_mult=2, text_embed_dim=TEXT_DIM)
    settings.update(kwargs)
    return SpaceTimeUnet(**settings)


def _tiny_model(unet=None, cls=None, **kwargs):
    from make_a_video_pytorch import MakeAVideo

    settings = dict(image_size=8, num_frames=4, timesteps=100, sample_steps=3)
    settings.update(kwargs)
    return (cls or MakeAVideo)(unet if unet is not None else _tiny_unet(), **settings)


@pytest.fixture
def make_unet():
    """Factory of tiny SpaceTimeUnets: dim 8, two levels (attention and halved frames at the second), text 16."""
    return _tiny_unet


@pytest.fixture
def make_model():
    """Factory of tiny MakeAVideos: 8x8 frames, 4 frames, 100 timesteps, 3 sampling steps."""
    return _tiny_model


def _t5_tokenizer():
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers

    tk = Tokenizer(models.Unigram())
    tk.normalizer = normalizers.Lowercase()
    tk.pre_tokenizer = pre_tokenizers.Metaspace()
    tk.train_from_iterator(CAPTIONS * 10, trainers.UnigramTrainer(vocab_size=60, special_tokens=["<pad>", "</s>", "<unk>"],
                                                                  unk_token="<unk>"))
    tk.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", tk.token_to_id("</s>"))])
    return tk


@pytest.fixture(scope="session")
def tiny_t5(tmp_path_factory):
    """A local folder with a tiny randomly initialised T5 encoder (d_model 16) and its tokenizer."""
    from transformers import T5Config, T5EncoderModel, T5TokenizerFast

    out = tmp_path_factory.mktemp("tiny-t5")
    tok = T5TokenizerFast(tokenizer_object=_t5_tokenizer(), pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                          extra_ids=0)
    tok.save_pretrained(out)
    torch.manual_seed(0)
    config = T5Config(vocab_size=len(tok), d_model=TEXT_DIM, d_ff=32, d_kv=8, num_layers=1, num_heads=2)
    T5EncoderModel(config).save_pretrained(out)
    return str(out)


def _write_gif(path, num_frames: int, size: int, seed: int) -> None:
    from PIL import Image

    g = torch.Generator().manual_seed(seed)
    base = (torch.rand(3, size, size, generator=g) * 255).to(torch.uint8)
    frames = [Image.fromarray(torch.roll(base, shifts=i, dims=2).permute(1, 2, 0).numpy()) for i in range(num_frames)]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)


@pytest.fixture
def captioned_videos(tmp_path):
    """A folder of four 8x8 gifs of 4 frames, each with a caption sidecar."""
    folder = tmp_path / "videos"
    folder.mkdir()
    for k, caption in enumerate(CAPTIONS):
        _write_gif(folder / f"{k}.gif", 4, 8, k)
        (folder / f"{k}.txt").write_text(caption)
    return folder


@pytest.fixture
def captioned_images(tmp_path):
    """A folder of four 12x12 png images (resized by the dataset), each with a caption sidecar."""
    from PIL import Image

    folder = tmp_path / "images"
    folder.mkdir()
    for k, caption in enumerate(CAPTIONS):
        g = torch.Generator().manual_seed(100 + k)
        pixels = (torch.rand(12, 12, 3, generator=g) * 255).to(torch.uint8).numpy()
        Image.fromarray(pixels).save(folder / f"{k}.png")
        (folder / f"{k}.txt").write_text(caption)
    return folder
