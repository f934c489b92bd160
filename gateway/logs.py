"""No secret reaches a log line.

Two defences, installed by `meterway serve` where logging is configured:

- aiohttp logs a malformed request ("Error handling request") with a
  traceback whose message quotes the offending line: for an oversized
  `Authorization` header that is the first 100 bytes of it, key included.
  `QuietBadRequests`, on the `aiohttp.server` logger, turns such a record into
  one line naming the error class only, at WARNING: a client's mistake is
  not our traceback.
- `RedactSecrets`, on every handler of the root logger, rewrites whatever is
  left: `Bearer …` values, `Authorization:` and `X-Provider-Api-Key:` values
  (BYOK), `"api_key": …` in a JSON body, Meterway keys (`mw-…`, `mwm-…`),
  invitation tokens in `/api/invites/…` paths, provider-style keys (`sk-…`,
  `sk-ant-…`, `sk-or-v1-…`, Google's `AIza…`, Groq's `gsk_…`, xAI's `xai-…`,
  Hugging Face's `hf_…`), sealed provider keys (`mwk1.…`), and the configured
  secrets themselves (admin and metrics tokens, provider keys, the BYOK master
  keys, database and Redis passwords), including any long prefix of them, in
  the message, its arguments and its traceback.
"""

from __future__ import annotations

import logging
import re
import traceback
from collections.abc import Iterable
from urllib.parse import urlsplit

from aiohttp.http_exceptions import HttpProcessingError

from config.settings import Settings

REDACTED = "[redacted]"
# A secret is recognised by this many of its first characters: enough to be
# unique, short enough to catch a truncated copy.
SECRET_PREFIX_CHARS = 12
_STOP = r"[^\s'\"\\,;]"  # characters a token is made of, in a repr or a header dump
_PATTERNS = (
    re.compile(rf"(?i)(\bbearer\s+){_STOP}+"),
    re.compile(rf"(?i)(\bauthorization\b['\"]?\s*[:=,]\s*['\"]?)(?!bearer\b){_STOP}+"),
    re.compile(rf"(?i)(\bx-provider-api-key\b['\"]?\s*[:=,]\s*['\"]?){_STOP}+"),  # a BYOK key in its header
    re.compile(rf"(?i)(\bapi_key\b['\"]?\s*[:=]\s*['\"]?){_STOP}+"),  # one being stored (POST /api/provider-keys)
    re.compile(r"(\bmwm?-)[A-Za-z0-9_-]{4,}"),  # inference (mw-) and management (mwm-) keys
    re.compile(r"(/api/invites/)[A-Za-z0-9_-]{8,}"),  # an invitation link works once, for whoever has it
    re.compile(r"(\bsk-)[A-Za-z0-9_-]{8,}"),  # OpenAI, Anthropic (sk-ant-), OpenRouter (sk-or-v1-), DeepSeek
    re.compile(r"(\bAIza)[A-Za-z0-9_-]{16,}"),  # Google AI Studio / Gemini
    re.compile(r"(\b(?:gsk|hf)_)[A-Za-z0-9]{16,}"),  # Groq, Hugging Face
    re.compile(r"(\bxai-)[A-Za-z0-9]{16,}"),  # xAI
    re.compile(r"(\bmwk1\.)[0-9a-f]{8}\.[A-Za-z0-9_=-]+"),  # a sealed provider key (gateway/money/secrets_box.py)
    re.compile(r"(\b(?:sk|rk)_(?:live|test)_)[A-Za-z0-9]{8,}"),  # Stripe secret and restricted keys
    re.compile(r"(\bwhsec_)[A-Za-z0-9]{8,}"),  # Stripe webhook secrets
)
SERVER_LOGGER = "aiohttp.server"


class RedactSecrets(logging.Filter):
    """Rewrites a record's text (message, traceback, stack) with secrets replaced; never drops it."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        known = sorted({s for s in secrets if s and len(s) >= 8}, key=len, reverse=True)
        # A known secret, or any copy of it cut after its first SECRET_PREFIX_CHARS characters.
        self._known = [re.compile(re.escape(s[:SECRET_PREFIX_CHARS]) + r"\S*") for s in known]

    def redact(self, text: str) -> str:
        for pattern in self._known:
            text = pattern.sub(REDACTED, text)
        for pattern in _PATTERNS:
            text = pattern.sub(lambda m: m.group(1) + REDACTED, text)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken format string must not hide the record, nor leak through it
            message = f"{record.msg!s} {record.args!r}"
        record.msg, record.args = self.redact(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = "".join(traceback.format_exception(*record.exc_info)).rstrip("\n")
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
            record.exc_info = None  # formatters use exc_text; the raw exception would be rendered again
        if record.stack_info:
            record.stack_info = self.redact(record.stack_info)
        return True


class QuietBadRequests(logging.Filter):
    """aiohttp's record of a request it could not parse: one line, no traceback, no quoted bytes."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            record.msg = "bad HTTP request refused with %s (%s)"
            record.args = (exc.code, type(exc).__name__)
            record.exc_info, record.exc_text = None, None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def secrets_of(settings: Settings) -> list[str]:
    """Every secret value this configuration holds."""
    found = [token.get_secret_value() for token in (settings.admin_token, settings.metrics_token) if token]
    found += [key for provider in settings.providers.values() if (key := provider.resolve_api_key())]
    found += settings.stripe.secrets()  # Stripe's secret key and webhook secret
    found += settings.byok.secrets()  # the BYOK master keys (MW_MASTER_KEY, MW_MASTER_KEY_OLD)
    for url in (settings.database_url, settings.redis_url):
        if url and (password := urlsplit(url).password):
            found.append(password)
    return found


def install(settings: Settings) -> None:
    """Put the filters in place. Call after the root logger has its handlers; idempotent."""
    redactor = RedactSecrets(secrets_of(settings))
    handlers = list(logging.getLogger().handlers)
    if logging.lastResort is not None:
        handlers.append(logging.lastResort)  # prints WARNING+ when no handler is configured
    for handler in handlers:
        for old in [f for f in handler.filters if isinstance(f, RedactSecrets)]:
            handler.removeFilter(old)
        handler.addFilter(redactor)
    server = logging.getLogger(SERVER_LOGGER)
    if not any(isinstance(f, QuietBadRequests) for f in server.filters):
        server.addFilter(QuietBadRequests())
