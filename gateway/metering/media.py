"""What images and audio in a prompt cost, in prompt tokens.

Images (OpenAI's vision pricing, gpt-4o style): `detail: low` costs the base
tokens; otherwise the image is scaled to fit a 2048x2048 square, then its
shortest side down to 768 px, and each 512 px tile costs the tile tokens, plus
the base. The largest result is 8 tiles (768x2048), so base + 8 x tile is the
most any image can cost; that is the worst case held, and billed for an image
whose size we cannot know (one given by URL) or cannot read.

An image given inline (a `data:` URL) has its size read from its header only
(PNG, GIF, WEBP, JPEG: the formats OpenAI accepts), from at most
IMAGE_HEADER_BYTES_MAX decoded bytes, by Pillow, which opens an image lazily:
it reads the header and decodes no pixels.

Audio (`input_audio`, base64 wav or mp3) costs its duration times the model's
tokens per second. A wav header (read by the standard library's wave module) gives the duration; otherwise the duration is
bounded by the byte size at the lowest bit rate the formats allow
(audio_bytes_per_second_min, 1000 B/s = MP3's lowest rate, 8 kbit/s).

Files (`file` parts: PDFs inline or by file_id) cost the model's
file_tokens_max each, held and billed alike: their size cannot be known here.
"""

from __future__ import annotations

import base64
import binascii
import io
import math
import wave
from dataclasses import dataclass

from PIL import Image

TILE_PX = 512
FIT_PX = 2048
SHORT_SIDE_PX = 768
TILES_MAX = 8  # 768 x 2048 after scaling: 2 x 4 tiles
# Enough decoded bytes to reach a JPEG's frame header past typical EXIF data.
IMAGE_HEADER_BYTES_MAX = 64 * 1024
IMAGE_FORMATS = ("PNG", "GIF", "WEBP", "JPEG")
WAV_HEADER_BYTES = 64 * 1024

# (model name prefix, base tokens, tile tokens), first match wins; OpenAI's
# published vision prices. Anything else: gpt-4o's.
_IMAGE_PRICES: tuple[tuple[str, int, int], ...] = (
    ("gpt-4o-mini", 2833, 5667),
    ("o1", 75, 150),
    ("o3", 75, 150),
)
IMAGE_BASE_TOKENS, IMAGE_TILE_TOKENS = 85, 170
AUDIO_TOKENS_PER_SECOND = 10  # OpenAI: one audio input token per 100 ms
AUDIO_BYTES_PER_SECOND_MIN = 1000
# A file part (a PDF: its text and an image of each page) has no size we can
# read without parsing it, or none at all when given by file_id. No request
# can bill more input than the largest context window (gpt-4.1: ~1M tokens).
FILE_TOKENS_MAX = 1_000_000


@dataclass(frozen=True)
class MediaRates:
    image_base_tokens: int
    image_tile_tokens: int
    image_tokens_max: int  # what an image of unknown size is held and billed at
    audio_tokens_per_second: int
    audio_bytes_per_second_min: int
    file_tokens_max: int = FILE_TOKENS_MAX  # held, and billed when counting, per file part


DEFAULT_RATES = MediaRates(IMAGE_BASE_TOKENS, IMAGE_TILE_TOKENS, IMAGE_BASE_TOKENS + TILES_MAX * IMAGE_TILE_TOKENS,
                           AUDIO_TOKENS_PER_SECOND, AUDIO_BYTES_PER_SECOND_MIN)


def rates_for(model_name: str, base: int | None = None, tile: int | None = None, image_max: int | None = None,
              audio_per_second: int = AUDIO_TOKENS_PER_SECOND,
              audio_bytes_per_second_min: int = AUDIO_BYTES_PER_SECOND_MIN,
              file_tokens_max: int = FILE_TOKENS_MAX) -> MediaRates:
    """The model's rates: configured values, else the published ones for its name."""
    known_base, known_tile = next(((b, t) for prefix, b, t in _IMAGE_PRICES if model_name.startswith(prefix)),
                                  (IMAGE_BASE_TOKENS, IMAGE_TILE_TOKENS))
    base = known_base if base is None else base
    tile = known_tile if tile is None else tile
    worst = base + TILES_MAX * tile
    # A configured maximum below what the tile price can reach would not be a worst case.
    image_max = worst if image_max is None else max(image_max, worst)
    return MediaRates(base, tile, image_max, audio_per_second, audio_bytes_per_second_min, file_tokens_max)


def image_tokens(width: int, height: int, low_detail: bool, rates: MediaRates) -> int:
    if low_detail:
        return rates.image_base_tokens
    if width <= 0 or height <= 0:
        return rates.image_tokens_max
    w, h = float(width), float(height)
    if max(w, h) > FIT_PX:
        scale = FIT_PX / max(w, h)
        w, h = w * scale, h * scale
    if min(w, h) > SHORT_SIDE_PX:
        scale = SHORT_SIDE_PX / min(w, h)
        w, h = w * scale, h * scale
    tiles = math.ceil(w / TILE_PX) * math.ceil(h / TILE_PX)
    return min(rates.image_base_tokens + tiles * rates.image_tile_tokens, rates.image_tokens_max)


def image_part_tokens(image_url: object, rates: MediaRates) -> int:
    """Tokens of one `image_url` content part's value ({"url", "detail"} or a bare URL)."""
    url, detail = (image_url.get("url"), image_url.get("detail")) if isinstance(image_url, dict) else (image_url, None)
    if detail == "low":
        return rates.image_base_tokens
    size = data_url_image_size(url) if isinstance(url, str) else None
    return rates.image_tokens_max if size is None else image_tokens(size[0], size[1], False, rates)


def _data_url_prefix(url: str, decoded_max: int) -> bytes | None:
    """The first decoded bytes of a base64 `data:` URL, or None."""
    if not url.startswith("data:"):
        return None
    comma = url.find(",", 0, 256)
    if comma < 0 or not url[:comma].endswith(";base64"):
        return None
    chars = decoded_max // 3 * 4
    try:
        return base64.b64decode(url[comma + 1:comma + 1 + chars], validate=False)
    except (binascii.Error, ValueError):
        return None


def data_url_image_size(url: str) -> tuple[int, int] | None:
    head = _data_url_prefix(url, IMAGE_HEADER_BYTES_MAX)
    return None if head is None else image_size(head)


def image_size(head: bytes) -> tuple[int, int] | None:
    """(width, height) from an image's first bytes: PNG, GIF, WEBP or JPEG; else None."""
    try:
        with Image.open(io.BytesIO(head), formats=IMAGE_FORMATS) as image:
            width, height = image.size
    except Exception:  # noqa: BLE001 - whatever Pillow makes of an unreadable header, the worst case applies
        return None
    return width, height


def base64_decoded_bytes(data: str) -> int:
    """Bytes a base64 string decodes to, at most (no decoding)."""
    padding = 2 if data.endswith("==") else 1 if data.endswith("=") else 0
    return len(data) * 3 // 4 - padding


def audio_tokens_bound(data: object, rates: MediaRates) -> int:
    """Audio tokens a base64 payload can cost at most: by its size at the lowest bit rate."""
    if not isinstance(data, str):
        return 0
    seconds = math.ceil(base64_decoded_bytes(data) / rates.audio_bytes_per_second_min)
    return seconds * rates.audio_tokens_per_second


def audio_tokens(data: object, audio_format: object, rates: MediaRates) -> int:
    """Tokens of one `input_audio` part: a wav's duration from its header, else the size bound."""
    if isinstance(data, str) and audio_format == "wav":
        seconds = _wav_seconds(data)
        if seconds is not None:
            return min(math.ceil(seconds * rates.audio_tokens_per_second), audio_tokens_bound(data, rates))
    return audio_tokens_bound(data, rates)


def _wav_seconds(data: str) -> float | None:
    """A PCM wav's duration, read by the standard library's wave module from the header alone."""
    try:
        head = base64.b64decode(data[:WAV_HEADER_BYTES // 3 * 4], validate=False)
        with wave.open(io.BytesIO(head)) as clip:
            frames, rate, frame_bytes = clip.getnframes(), clip.getframerate(), clip.getnchannels() * clip.getsampwidth()
    except (binascii.Error, ValueError, EOFError, wave.Error):
        return None  # not a wav wave reads (or not PCM): the size bound applies
    if rate <= 0 or frame_bytes <= 0:
        return None
    # The data actually sent bounds it too, not only the size the header claims.
    seconds: float = min(frames, base64_decoded_bytes(data) // frame_bytes) / rate
    return seconds
