"""o200k_base without a download: tiktoken's own encoding, its data read from an installed package.

tiktoken fetches o200k_base.tiktoken from OpenAI at first use, which a
gateway must never do. The `bpe-openai` package ships that very file
(gzipped, in `bpe_openai/data`). We read it, check it against the SHA-256
that tiktoken itself expects, and build the encoding from tiktoken's own
definition (its pattern and special tokens, `tiktoken_ext.openai_public`),
so the counts are tiktoken's, token for token. gpt-4o, the o-series, gpt-4.1
and gpt-5 are counted with it.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import importlib.resources
import threading
from typing import Any

import tiktoken
from tiktoken_ext import openai_public

NAME = "o200k_base_offline"
DATA_PACKAGE, DATA_FILE = "bpe_openai.data", "o200k_base.tiktoken.gz"
_LOCK = threading.Lock()  # the definition is read with tiktoken's loader swapped out for ours


class EncodingDataMismatch(Exception):
    """The installed data is not the file tiktoken expects: refuse it rather than miscount."""


def ranks(raw: bytes, expected_hash: str) -> dict[bytes, int]:
    """A .tiktoken file's token ranks, once its SHA-256 is the one tiktoken expects."""
    found = hashlib.sha256(raw).hexdigest()
    if found != expected_hash:
        raise EncodingDataMismatch(f"{DATA_FILE} from {DATA_PACKAGE} has SHA-256 {found}, not tiktoken's {expected_hash}")
    return {base64.b64decode(token): int(rank) for token, rank in (line.split() for line in raw.splitlines() if line)}


def encoding() -> tiktoken.Encoding:
    raw = gzip.decompress(importlib.resources.files(DATA_PACKAGE).joinpath(DATA_FILE).read_bytes())

    def from_package(url: str, expected_hash: str | None = None) -> dict[bytes, int]:
        assert url.endswith("/o200k_base.tiktoken") and expected_hash, url  # only ever o200k_base's own file
        return ranks(raw, expected_hash)

    with _LOCK:
        download = openai_public.load_tiktoken_bpe
        openai_public.load_tiktoken_bpe = from_package
        try:
            spec: dict[str, Any] = openai_public.o200k_base()
        finally:
            openai_public.load_tiktoken_bpe = download
    return tiktoken.Encoding(NAME, pat_str=spec["pat_str"], mergeable_ranks=spec["mergeable_ranks"],
                             special_tokens=spec["special_tokens"])
