"""Fixtures for the synthesis-core tests: single-threaded, offline, tiny.

The text-encoder fixtures write a tiny randomly initialised T5 / BERT (width 32) with a tokenizer trained on a
handful of captions to a temporary folder: the same thing a user does when pointing at a local checkpoint.
"""

import pytest

from synthesis_core.testing import build_tiny_bert, build_tiny_t5, configure_test_process, seed_each_test  # noqa: F401

configure_test_process()

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


@pytest.fixture(scope="session")
def tiny_t5(tmp_path_factory):
    """A folder holding a tiny T5 encoder (d_model 32) and its tokenizer."""
    return build_tiny_t5(
        tmp_path_factory.mktemp("tiny-t5"), CAPTIONS, d_model=32, d_ff=64, num_layers=2, num_heads=4, vocab_size=120
    )


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory):
    """A folder holding a tiny BERT (hidden size 32) and its tokenizer."""
    return build_tiny_bert(
        tmp_path_factory.mktemp("tiny-bert"),
        CAPTIONS,
        hidden_size=32,
        num_layers=2,
        num_heads=4,
        intermediate_size=64,
        vocab_size=150,
    )
