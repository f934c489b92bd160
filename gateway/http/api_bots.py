"""Bots through the wallet API: named consumers of the wallet, each with its caps and its friendly answer.

Owners make and change bots; every role can read them (a developer gives its
keys to a bot with `bot_id` when it makes them). A change reaches every
gateway process within a second: the open cap rows and the hold store's
mirrors take the new caps now, and the keys of the bot are read again.
"""

from __future__ import annotations

import secrets
from typing import Any

from aiohttp import web

from gateway.errors import not_found
from gateway.http import api_models as inputs
from gateway.http.api_base import Caller, api, money, money_or_none
from gateway.http.bodies import Refused, json_body, valid
from gateway.http.notices import Subject
from gateway.http.state import STATE
from gateway.money.caps import apply_limits
from gateway.money.roles import Permission
from ledger.api_keys import SpendLimits
from ledger.bots import Bot
from ledger.caps import CapScope
from ledger.history import Spend
from ledger.money import parse_usd


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/bots", api(Permission.READ_BOTS, list_bots))
    app.router.add_post("/api/bots", api(Permission.MANAGE_BOTS, create_bot))
    app.router.add_get("/api/bots/{id}", api(Permission.READ_BOTS, get_bot))
    app.router.add_patch("/api/bots/{id}", api(Permission.MANAGE_BOTS, patch_bot))
    app.router.add_delete("/api/bots/{id}", api(Permission.MANAGE_BOTS, delete_bot))


def bot_json(bot: Bot, caller: Caller, spend: dict[str, dict[str, Spend]] | None = None) -> dict[str, Any]:
    settings = caller.owners.settings
    out = {"id": bot.bot_id, "object": "bot", "name": bot.name,
           "daily_cap": money_or_none(bot.caps.day_nusd, settings),
           "monthly_cap": money_or_none(bot.caps.month_nusd, settings),
           "conversation_cap": money_or_none(bot.caps.conversation_nusd, settings),
           "friendly_message": bot.friendly_message, "created_at": bot.created_at}
    if spend is not None:
        out["spend"] = {window: _spend_json(spend[window].get(bot.bot_id), caller) for window in ("today", "month")}
    return out


def _spend_json(spend: Spend | None, caller: Caller) -> dict[str, Any]:
    spend = spend or Spend(0, 0, 0)
    return {"requests": spend.requests, "cost": money(spend.cost_nusd, caller.owners.settings)}


async def bots_spend(caller: Caller) -> dict[str, dict[str, Spend]]:
    """What each bot's keys cost today and this month (UTC), from the usage rows: what its caps count."""
    keys = {k.key_id: k.bot_id for k in await caller.owners.store.list_keys(caller.wallet_id) if k.bot_id}
    today, month = await caller.owners.key_spend(caller.wallet_id, caller.now)
    out: dict[str, dict[str, Spend]] = {"today": {}, "month": {}}
    for window, by_key in (("today", today), ("month", month)):
        for key_id, spend in by_key.items():
            bot_id = keys.get(key_id)
            if bot_id is not None:
                was = out[window].get(bot_id, Spend(0, 0, 0))
                out[window][bot_id] = Spend(was.requests + spend.requests, was.cost_nusd + spend.cost_nusd,
                                            was.charged_nusd + spend.charged_nusd)
    return out


def _caps(body: inputs.BotPatch) -> SpendLimits:
    def nusd(usd: str | None) -> int | None:
        return None if usd is None else parse_usd(usd)

    return SpendLimits(day_nusd=nusd(body.daily_cap), month_nusd=nusd(body.monthly_cap),
                       conversation_nusd=nusd(body.conversation_cap))


async def _bot_of_wallet(caller: Caller, bot_id: str) -> Bot:
    bot = await caller.owners.store.bot(bot_id)
    if bot is None or bot.wallet_id != caller.wallet_id:
        raise Refused(not_found(f"no bot {bot_id!r}"))
    return bot


async def list_bots(request: web.Request, caller: Caller) -> web.Response:
    bots = await caller.owners.store.list_bots(caller.wallet_id)
    spend = await bots_spend(caller)
    return web.json_response({"object": "list", "data": [bot_json(b, caller, spend) for b in bots]})


async def get_bot(request: web.Request, caller: Caller) -> web.Response:
    bot_id = valid(inputs.IdPath, dict(request.match_info)).id
    bot = await _bot_of_wallet(caller, bot_id)
    return web.json_response(bot_json(bot, caller, await bots_spend(caller)))


async def create_bot(request: web.Request, caller: Caller) -> web.Response:
    body = valid(inputs.CreateBot, await json_body(request))
    bot = Bot(f"bot_{secrets.token_hex(8)}", caller.wallet_id, body.name, _caps(body), body.friendly_message)
    made = await caller.owners.store.create_bot(bot)  # BotExists: a 409 (api_base)
    return web.json_response(bot_json(made, caller), status=201)


async def patch_bot(request: web.Request, caller: Caller) -> web.Response:
    """Change what is given; a cap given as null is removed."""
    bot_id = valid(inputs.IdPath, dict(request.match_info)).id
    body = valid(inputs.BotPatch, await json_body(request))
    bot = await _bot_of_wallet(caller, bot_id)
    given, now = body.model_fields_set, _caps(body)
    caps = SpendLimits(
        day_nusd=now.day_nusd if "daily_cap" in given else bot.caps.day_nusd,
        month_nusd=now.month_nusd if "monthly_cap" in given else bot.caps.month_nusd,
        conversation_nusd=now.conversation_nusd if "conversation_cap" in given else bot.caps.conversation_nusd)
    message = body.friendly_message if "friendly_message" in given else bot.friendly_message
    state = request.app[STATE]
    changed = await state.book.update_bot(bot_id, caps, message)
    if changed is None:
        raise Refused(not_found(f"no bot {bot_id!r}"))
    await apply_limits(state.book, state.holds, caller.wallet_id, CapScope.BOT, bot_id, caps)
    await state.notices.announce(Subject.BOT, bot_id)
    return web.json_response(bot_json(changed, caller))


async def delete_bot(request: web.Request, caller: Caller) -> web.Response:
    bot_id = valid(inputs.IdPath, dict(request.match_info)).id
    await _bot_of_wallet(caller, bot_id)
    if not await caller.owners.store.delete_bot(bot_id):  # BotInUse: a 409 (api_base)
        raise Refused(not_found(f"no bot {bot_id!r}"))
    await request.app[STATE].notices.announce(Subject.BOT, bot_id)
    return web.json_response({"id": bot_id, "object": "bot", "deleted": True})

