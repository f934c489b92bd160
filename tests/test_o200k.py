"""o200k_base counted offline: tiktoken's own encoding, its data from an installed package, never downloaded."""

from __future__ import annotations

import gzip
import importlib.resources

import bpe_openai
import pytest
import tiktoken.load

from config.settings import ModelConfig
from gateway.metering import o200k, tokens

# A fixed corpus: prose, code, numbers, whitespace, several scripts, emoji, tiktoken's special-looking text.
CORPUS = [
    "Hello, world! How are you doing today?",
    "def fibonacci(n):\n    return n if n < 2 else fibonacci(n - 1) + fibonacci(n - 2)\n",
    "   leading spaces, trailing tabs\t\t\n\n\nand blank lines",
    "1234567890 3.14159 -42 1e10 0xDEADBEEF",
    "Größe, naïve café, Straße — «guillemets»",
    "数据科学是一门跨学科的领域。日本語のテキストも。한국어 문장입니다.",
    "Привет, мир! Ελληνικά κείμενα. עברית. العربية.",
    "Emoji 😀🚀👩‍👩‍👧‍👦 and flags 🇫🇷🇯🇵",
    "<|endoftext|> is text here, not a special token",
    "I'm sure they've said we'll see; you'd've known. DON'T SHOUT",
    "https://example.com/path?query=1&x=%20y#frag",
    '{"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}',
    "a" * 1000 + " " + "ab" * 500,
]


def test_the_data_is_the_file_tiktoken_expects_and_nothing_is_downloaded(monkeypatch) -> None:
    def no_download(*args: object, **kwargs: object) -> bytes:
        raise AssertionError("tiktoken tried to download an encoding")

    monkeypatch.setattr(tiktoken.load, "read_file", no_download)
    monkeypatch.setattr(tiktoken.load, "read_file_cached", no_download)
    encoding = o200k.encoding()
    assert encoding.name == o200k.NAME and encoding.n_vocab == 200_019
    assert encoding.encode("<|endoftext|>", allowed_special="all") == [199_999]


def test_o200k_counts_equal_the_reference_on_a_fixed_corpus() -> None:
    """The reference: bpe-openai's own Rust tokenizer, another implementation over the same data."""
    ours, reference = o200k.encoding(), bpe_openai.get_encoding("o200k_base")
    for text in CORPUS:
        assert ours.encode(text, disallowed_special=()) == reference.encode(text, disallowed_special=()), text
        assert tokens.count_text(text, tokens.OFFLINE_O200K) == len(reference.encode(text, disallowed_special=())), text


def test_a_changed_data_file_is_refused() -> None:
    raw = gzip.decompress(importlib.resources.files(o200k.DATA_PACKAGE).joinpath(o200k.DATA_FILE).read_bytes())
    with pytest.raises(o200k.EncodingDataMismatch):
        o200k.ranks(raw.replace(b" 0\n", b" 1\n", 1), "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d")


@pytest.mark.parametrize("model", ["gpt-4o", "gpt-4o-mini", "gpt-4.1-nano", "gpt-4.5-preview", "gpt-5", "o1-mini",
                                   "o3", "o4-mini"])
def test_the_o200k_families_are_counted_with_o200k(model: str) -> None:
    assert tokens.encoding_for(model) == tokens.EncodingChoice(tokens.OFFLINE_O200K, o200k=True)


def test_configured_encodings_are_tiktoken_names_and_nothing_else() -> None:
    assert tokens.encoding_for("my-model", "o200k_base").name == tokens.OFFLINE_O200K
    assert tokens.encoding_for("gpt-4o", "cl100k_base") == tokens.EncodingChoice(tokens.OFFLINE_CL100K)
    assert tokens.encoding_for("unknown-model") == tokens.EncodingChoice(tokens.BYTES)
    with pytest.raises(ValueError):
        ModelConfig(input_per_1m="1", output_per_1m="1", encoding="p50k_base")  # would need a download
