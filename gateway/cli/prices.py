"""`meterway prices import FILE [--yes]` and `meterway prices list [--at TIME]`: the versioned price catalogue.

A price file (TOML or JSON) lists versions; each is in force from its
`effective_at` until the next one of its model:

    [[prices]]
    model = "gpt-4o-mini"
    effective_at = "2026-12-01T00:00:00Z"
    input_per_1m = "0.15"
    cached_input_per_1m = "0.075"   # optional: the input price
    output_per_1m = "0.60"
    per_call = "0"                  # optional

`import` shows what would change and applies it only with --yes. A version
is never changed once it exists: different prices under an existing version
are refused (add a new version instead).
"""

from __future__ import annotations

import argparse
import json
import tomllib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from config.settings import Settings
from gateway.money.prices import PriceBook
from ledger.money import format_usd, parse_usd
from ledger.prices import VERSIONS_PER_IMPORT_MAX, PriceVersion
from ledger.times import utc_text

_USD = r"^\d+(\.\d{1,9})?$"


class _Entry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = Field(min_length=1, max_length=256)
    effective_at: datetime
    input_per_1m: str = Field(pattern=_USD)
    cached_input_per_1m: str | None = Field(None, pattern=_USD)
    output_per_1m: str = Field("0", pattern=_USD)
    per_call: str = Field("0", pattern=_USD)

    @field_validator("effective_at")
    @classmethod
    def _aware(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            raise ValueError("effective_at needs a timezone, e.g. 2026-12-01T00:00:00Z")
        return value

    def version(self) -> PriceVersion:
        return PriceVersion(self.model, utc_text(self.effective_at.astimezone(UTC)), parse_usd(self.input_per_1m),
                            parse_usd(self.cached_input_per_1m or self.input_per_1m), parse_usd(self.output_per_1m),
                            parse_usd(self.per_call))


class _File(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prices: list[_Entry] = Field(min_length=1, max_length=VERSIONS_PER_IMPORT_MAX)


def read_price_file(path: Path, served: set[str]) -> list[PriceVersion]:
    """The versions a file lists; ValueError (exit 1) naming what is wrong."""
    text = path.read_text()
    data: Any = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    try:
        entries = _File.model_validate(data).prices
    except ValidationError as exc:
        raise ValueError(f"{path}: {exc.errors()[0]['loc']}: {exc.errors()[0]['msg']}") from exc
    unknown = sorted({e.model for e in entries} - served)
    if unknown:
        raise ValueError(f"{path}: model {unknown[0]!r} is not served (the models served: {', '.join(sorted(served))})")
    return [e.version() for e in entries]


def _line(v: PriceVersion) -> str:
    return (f"{v.model:<28} from {v.effective_at}  input {format_usd(v.input_per_1m_nusd)}  cached "
            f"{format_usd(v.cached_input_per_1m_nusd)}  output {format_usd(v.output_per_1m_nusd)} per 1M tokens"
            f"  per call {format_usd(v.per_call_nusd)}")


async def prices_import(ops: Any, settings: Settings, args: argparse.Namespace) -> int:
    versions = read_price_file(Path(args.file), set(settings.models))
    known = {v.version: v for v in await ops.book.price_versions()}
    new = [v for v in versions if v.version not in known]
    changed = [v for v in versions if v.version in known and not known[v.version].same_prices(v)]
    for v in changed:
        print(f"refused  {_line(v)}  (a version exists with other prices: add a new effective time)")
    for v in new:
        print(f"new      {_line(v)}")
    print(f"{len(new)} new, {len(versions) - len(new) - len(changed)} unchanged, {len(changed)} refused")
    if changed:
        return 1
    if not args.yes:
        print("Nothing applied: run again with --yes to apply.")
        return 0
    added = await ops.book.add_price_versions(new)
    print(f"applied: {added} new version(s); every gateway uses them within limits.price_refresh_s "
          f"({settings.limits.price_refresh_s:g} s) of their effective time")
    return 0


async def prices_list(ops: Any, settings: Settings, args: argparse.Namespace) -> int:
    at = datetime.fromisoformat(args.at) if args.at else datetime.now(UTC)
    if at.tzinfo is None:
        raise ValueError("--at needs a timezone, e.g. 2026-12-01T00:00:00Z")
    book = PriceBook({name: model.price() for name, model in settings.models.items()})
    versions = await ops.book.price_versions()
    book.load(versions)
    for name in sorted(settings.models):
        priced = book.at(name, at.timestamp())
        p = priced.price
        print(f"{name:<28} {priced.version:<40} input {format_usd(p.input_per_1m_nusd)}  cached "
              f"{format_usd(p.cached_input_per_1m_nusd)}  output {format_usd(p.output_per_1m_nusd)} per 1M  "
              f"per call {format_usd(p.per_call_nusd)}")
        for later in (v for v in versions if v.model == name and datetime.fromisoformat(v.effective_at) > at):
            print(f"  then   {_line(later)}")
    return 0


def add_price_commands(commands: Any, common: argparse.ArgumentParser, command: Any, sync: Any) -> None:
    prices = command(commands, "prices", "the versioned price catalogue").add_subparsers(
        dest="prices_command", required=True, metavar="ACTION")
    importing = command(prices, "import", "add the versions a TOML or JSON file lists (shows them; --yes applies)",
                        parents=[common])
    importing.add_argument("file", help="a .toml or .json price file (see `meterway prices import --help`)")
    importing.add_argument("--yes", action="store_true", help="apply the changes shown")
    importing.set_defaults(run=sync(prices_import))
    listing = command(prices, "list", "the prices in force for every model served, and the versions to come",
                      parents=[common])
    listing.add_argument("--at", help="at this time instead of now (ISO 8601 with a timezone)")
    listing.set_defaults(run=sync(prices_list))
