"""A fake OpenAI-compatible provider (see fakes/openai/app.py for its directives)."""

from fakes.openai.app import FakeConfig, build_fake_app, main, start_fake_upstream

__all__ = ["FakeConfig", "build_fake_app", "start_fake_upstream", "main"]
