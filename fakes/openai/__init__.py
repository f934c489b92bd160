"""A fake OpenAI-compatible provider: errors, directives (how a test steers it), bodies,
streams, handlers, and app (the aiohttp app, start_fake_upstream, the CLI)."""

from fakes.openai.app import build_fake_app, main, start_fake_upstream
from fakes.openai.directives import FakeConfig

__all__ = ["FakeConfig", "build_fake_app", "start_fake_upstream", "main"]
