"""Bots, key spend limits and the cap rows behind them: what the book promises (both dialects).

A bot is a named consumer of a wallet: its keys share its caps (a day, a
month, a conversation) and its friendly answer. A key's own spend limits live
on the key. Every cap's running total is a row of mw_spend_caps, opened by
the first request of its window (open_cap) and moved by settlement in the
debit's own transaction (ledger/cap_settle.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from ledger.api_keys import ApiKeyRecord, SpendLimits
from ledger.caps import CapBalance, CapScope, CapSpec, Window
from ledger.key_rules import KeyRules

BOT_NAME_MAX = 100
FRIENDLY_MESSAGE_MAX = 2000
# relimit_caps() rewrites at most this many rows of one key or bot (its open windows and conversations).
RELIMIT_ROWS_MAX = 10_000


# What a cap's subject already spent, by scope, and where each cap's limit is kept (the cap row's limit is
# a copy, set from there when the row is opened). `:subject` is the subject's id, in each dialect's placeholder.
SPENT_SQL = {
    CapScope.MEMBER: "SELECT COALESCE(SUM(u.cost_nusd), 0) FROM mw_usage u JOIN mw_keys k ON k.id = u.key_id"
                     " WHERE k.member_id = :subject",
    CapScope.KEY: "SELECT COALESCE(SUM(u.cost_nusd), 0) FROM mw_usage u WHERE u.key_id = :subject",
    CapScope.BOT: "SELECT COALESCE(SUM(u.cost_nusd), 0) FROM mw_usage u JOIN mw_keys k ON k.id = u.key_id"
                  " WHERE k.bot_id = :subject",
}
# A conversation of a bot, all time (`:conversation` after `:subject`, in each dialect's placeholders).
CONVERSATION_SPENT_SQL = ("SELECT COALESCE(SUM(u.cost_nusd), 0) FROM mw_usage u JOIN mw_keys k ON k.id = u.key_id"
                          " WHERE k.bot_id = :subject AND u.conversation_id = :conversation")
_LIVE_BOT = "FROM mw_bots WHERE id = :subject AND deleted_at IS NULL"
LIMIT_SQL = {
    (CapScope.MEMBER, Window.MONTH): "SELECT monthly_limit_nusd FROM mw_members WHERE id = :subject",
    (CapScope.KEY, Window.TOTAL): "SELECT total_limit_nusd FROM mw_keys WHERE id = :subject",
    (CapScope.KEY, Window.DAY): "SELECT daily_limit_nusd FROM mw_keys WHERE id = :subject",
    (CapScope.KEY, Window.MONTH): "SELECT monthly_limit_nusd FROM mw_keys WHERE id = :subject",
    (CapScope.BOT, Window.DAY): f"SELECT daily_cap_nusd {_LIVE_BOT}",
    (CapScope.BOT, Window.MONTH): f"SELECT monthly_cap_nusd {_LIVE_BOT}",
    (CapScope.CONVERSATION, Window.CONVERSATION): f"SELECT conversation_cap_nusd {_LIVE_BOT}",
}


@dataclass(frozen=True)
class Bot:
    bot_id: str
    wallet_id: str
    name: str
    caps: SpendLimits  # day, month, conversation (total is a key's only)
    friendly_message: str | None = None
    created_at: str | None = None

    def __post_init__(self) -> None:
        assert self.caps.total_nusd is None, self  # a bot's caps have windows
        assert 0 < len(self.name) <= BOT_NAME_MAX, self
        assert self.friendly_message is None or 0 < len(self.friendly_message) <= FRIENDLY_MESSAGE_MAX, self


@runtime_checkable
class Bots(Protocol):
    async def create_bot(self, bot: Bot) -> Bot:
        """BotExists if the wallet has a live bot of that name; UnknownAccount if there is no such wallet."""
        ...

    async def bot(self, bot_id: str) -> Bot | None: ...

    async def list_bots(self, wallet_id: str) -> list[Bot]: ...

    async def update_bot(self, bot_id: str, caps: SpendLimits, friendly_message: str | None) -> Bot | None: ...

    async def delete_bot(self, bot_id: str) -> bool:
        """False if there is no live bot; BotInUse while an active key belongs to it."""
        ...

    async def set_key_limits(self, key_id: str, limits: SpendLimits, rules: KeyRules | None = None) -> ApiKeyRecord | None:
        """Replace a key's own spend limits (total, day, month) and traffic rules; None if there is no such key."""
        ...

    async def open_cap(self, spec: CapSpec) -> CapBalance:
        """The cap's row, opened from its usage if absent, with the limit its member, key or bot has now.

        The spec's own limit (as read with a possibly cached key) is not trusted:
        the limit comes from where it is kept. No limit there: the row is unlimited.
        """
        ...

    async def relimit_caps(self, prefix: str, limits: dict[str, int | None]) -> list[CapBalance]:
        """Set the limit of the rows whose id starts with prefix, by the window marker that follows it.

        ``limits`` maps a marker ("total", "d", "m", "c") to the new limit.
        Each changed row's version moves, so the hold store's mirror takes it.
        """
        ...
