"""Bots through the wallet API, as an owner and a developer use them; both backends."""

from __future__ import annotations

import openai

from tests.test_api_permissions import call, make_org
from tests.test_multiprocess import FLAT_FEE_NUSD

HI = [{"role": "user", "content": "hi"}]


async def test_an_owner_makes_a_bot_a_developer_gives_it_a_key_and_the_caps_apply(gw) -> None:
    org = await make_org(gw)
    owner, developer = org.secrets["owner"], org.secrets["developer"]
    status, bot = await call(gw, "POST", "/api/bots", owner,
                             {"name": "reviewer", "daily_cap": "0.02", "conversation_cap": "1"})
    assert status == 201 and bot["daily_cap"]["usd"] == "0.02" and bot["monthly_cap"] is None, bot
    status, again = await call(gw, "POST", "/api/bots", owner, {"name": "reviewer"})
    assert status == 409 and again["error"]["code"] == "bot_exists", again
    status, key = await call(gw, "POST", "/api/keys", developer, {"name": "ci", "bot_id": bot["id"]})
    assert status == 201 and key["bot_id"] == bot["id"] and key["bot"] == "reviewer", key
    client = gw.client(key["key"])
    for _ in range(2):
        await client.chat.completions.create(model="flat-fee", messages=HI)
    try:
        await client.chat.completions.create(model="flat-fee", messages=HI)
        raise AssertionError("served past the bot's daily cap")
    except openai.APIStatusError as exc:
        assert exc.status_code == 402 and exc.code == "budget_exceeded"
    await gw.settled_everything()
    status, listed = await call(gw, "GET", "/api/bots", developer)
    [seen] = [b for b in listed["data"] if b["id"] == bot["id"]]
    assert seen["spend"]["today"] == {"requests": 2, "cost": {"usd": "0.02", "nusd": 2 * FLAT_FEE_NUSD}}
    # Raising the cap serves again at once; deleting a bot with an active key is refused.
    status, raised = await call(gw, "PATCH", f"/api/bots/{bot['id']}", owner, {"daily_cap": "0.03"})
    assert status == 200 and raised["daily_cap"]["usd"] == "0.03" and raised["conversation_cap"]["usd"] == "1"
    await client.chat.completions.create(model="flat-fee", messages=HI)
    status, refused = await call(gw, "DELETE", f"/api/bots/{bot['id']}", owner)
    assert status == 409 and refused["error"]["code"] == "bot_in_use", refused
    assert (await call(gw, "DELETE", f"/api/keys/{key['id']}", developer))[0] == 200
    assert (await call(gw, "DELETE", f"/api/bots/{bot['id']}", owner))[0] == 200
    assert (await call(gw, "GET", f"/api/bots/{bot['id']}", owner))[0] == 404


async def test_bad_bot_input_is_a_clear_400_and_changes_nothing(gw) -> None:
    org = await make_org(gw)
    owner = org.secrets["owner"]
    for body, param in (({"name": ""}, "name"), ({"name": "x" * 101}, "name"), ({"name": "a", "daily_cap": "-1"},
                        "daily_cap"), ({"name": "a", "daily_cap": 5}, "daily_cap"),
                        ({"name": "a", "friendly_message": ""}, "friendly_message"), ({"name": "a", "extra": 1}, "extra")):
        status, answer = await call(gw, "POST", "/api/bots", owner, body)
        assert status == 400 and answer["error"]["param"] == param, (body, answer)
    status, answer = await call(gw, "POST", "/api/keys", owner, {"bot_id": "bot_ghost"})
    assert status == 400 and answer["error"]["code"] == "unknown_bot", answer
    status, answer = await call(gw, "PATCH", "/api/bots/bot_ghost", owner, {"daily_cap": "1"})
    assert status == 404, answer
    status, listed = await call(gw, "GET", "/api/bots", owner)
    assert [b["name"] for b in listed["data"]] == ["support"]  # only make_org's bot
