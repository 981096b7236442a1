"""Fixtures for the video-diffusion tests: everything is built here, offline, tiny, on one CPU thread."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest
import torch

torch.set_num_threads(1)

CAPTIONS = [
    "a red square moving left",
    "a blue circle moving right",
    "a green square moving up",
    "a yellow circle moving down",
]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _bert_tokenizer():
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers

    tk = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tk.normalizer = normalizers.BertNormalizer(lowercase=True)
    tk.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tk.train_from_iterator(CAPTIONS * 10, trainers.WordPieceTrainer(vocab_size=80, special_tokens=special))
    tk.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", tk.token_to_id("[CLS]")), ("[SEP]", tk.token_to_id("[SEP]"))]
    )
    return tk


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory):
    """A local folder with a tiny randomly initialised BERT (hidden size 16) and its tokenizer."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    out = tmp_path_factory.mktemp("tiny-bert")
    tok = BertTokenizerFast(tokenizer_object=_bert_tokenizer(), unk_token="[UNK]", pad_token="[PAD]",
                            cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
    tok.save_pretrained(out)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(tok), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=64)
    BertModel(config).save_pretrained(out)
    return str(out)


def moving_frames(num_frames: int, size: int, seed: int):
    """PIL frames of a random image rolled one pixel per frame (so time matters)."""
    from PIL import Image

    g = torch.Generator().manual_seed(seed)
    base = (torch.rand(3, size, size, generator=g) * 255).to(torch.uint8)
    return [Image.fromarray(torch.roll(base, shifts=i, dims=2).permute(1, 2, 0).numpy()) for i in range(num_frames)]


def write_gif(path, num_frames: int, size: int, seed: int) -> None:
    frames = moving_frames(num_frames, size, seed)
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)


@pytest.fixture
def captions():
    return list(CAPTIONS)


@pytest.fixture
def gif_writer():
    """`write(path, num_frames, size, seed)`: a moving-texture gif; `.frames(num_frames, size, seed)`: its frames."""
    write_gif.frames = moving_frames
    return write_gif


@pytest.fixture
def gif_folder(tmp_path):
    """Four 8x8 gifs of 3 frames."""
    folder = tmp_path / "gifs"
    folder.mkdir()
    for k in range(4):
        write_gif(folder / f"{k}.gif", 3, 8, k)
    return folder
