"""Fixtures for the synthesis-core tests: single-threaded, offline, tiny.

The text-encoder fixtures write a tiny randomly initialised T5 / BERT (width 32) with a tokenizer trained on a
handful of captions to a temporary folder: the same thing a user does when pointing at a local checkpoint.
"""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

CAPTIONS = [
    "a whale breaching from afar",
    "young girl blowing out candles on her birthday cake",
    "fireworks with blue and green sparkles",
    "dust motes swirling in the morning sunshine on the windowsill",
    "a squirrel examines an acorn",
    "a cat watches the squirrel from afar",
    "a red square moving left",
    "a blue circle moving right",
]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def train_tiny_tokenizer(kind: str):
    """A `tokenizers.Tokenizer` trained on CAPTIONS: Unigram for 't5', WordPiece for 'bert'."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers

    if kind == "t5":
        tk = Tokenizer(models.Unigram())
        tk.normalizer = normalizers.Lowercase()
        tk.pre_tokenizer = pre_tokenizers.Metaspace()
        tk.train_from_iterator(CAPTIONS * 10, trainers.UnigramTrainer(
            vocab_size=120, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>"))
        tk.post_processor = processors.TemplateProcessing(
            single="$A </s>", special_tokens=[("</s>", tk.token_to_id("</s>"))])
        return tk
    tk = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tk.normalizer = normalizers.BertNormalizer(lowercase=True)
    tk.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tk.train_from_iterator(CAPTIONS * 10, trainers.WordPieceTrainer(
        vocab_size=150, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]))
    tk.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        special_tokens=[("[CLS]", tk.token_to_id("[CLS]")), ("[SEP]", tk.token_to_id("[SEP]"))])
    return tk


def build_tiny_t5(folder) -> str:
    """Writes a tiny T5 encoder (d_model 32) and its tokenizer to `folder`."""
    from transformers import T5Config, T5EncoderModel, T5TokenizerFast

    tok = T5TokenizerFast(tokenizer_object=train_tiny_tokenizer("t5"), pad_token="<pad>", eos_token="</s>",
                          unk_token="<unk>", extra_ids=0)
    tok.save_pretrained(folder)
    torch.manual_seed(0)
    config = T5Config(vocab_size=len(tok), d_model=32, d_ff=64, d_kv=8, num_layers=2, num_heads=4)
    T5EncoderModel(config).save_pretrained(folder)
    return str(folder)


def build_tiny_bert(folder) -> str:
    """Writes a tiny BERT (hidden size 32) and its tokenizer to `folder`."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    tok = BertTokenizerFast(tokenizer_object=train_tiny_tokenizer("bert"), unk_token="[UNK]", pad_token="[PAD]",
                            cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
    tok.save_pretrained(folder)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64)
    BertModel(config).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="session")
def tiny_t5(tmp_path_factory):
    return build_tiny_t5(tmp_path_factory.mktemp("tiny-t5"))


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory):
    return build_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))
