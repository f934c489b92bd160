"""Server-sent events: split a byte stream into whole events, and read an event's data.

The framing every streaming dialect shares (OpenAI, and Anthropic's Messages
API too): events end with a blank line; a line "data: ..." carries the payload.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from gateway.upstream import UpstreamBroken


async def events(chunks: AsyncIterator[bytes], event_bytes_max: int) -> AsyncIterator[bytes]:
    """Whole events, as soon as each is complete; none buffered beyond event_bytes_max."""
    buffer = b""
    async for chunk in chunks:
        buffer += chunk
        if b"\r" in buffer:
            buffer = buffer.replace(b"\r\n", b"\n")
        while (end := buffer.find(b"\n\n")) != -1:
            yield buffer[: end + 2]
            buffer = buffer[end + 2 :]
        if len(buffer) > event_bytes_max:
            raise UpstreamBroken(f"an upstream event exceeds {event_bytes_max} bytes")


def data_of(event: bytes) -> bytes | None:
    """The event's first data line, or None for a comment (a keep-alive)."""
    for line in event.split(b"\n"):
        if line.startswith(b"data:"):
            return line[5:].strip()
    return None


def data_event(data: bytes) -> bytes:
    return b"data: " + data + b"\n\n"
