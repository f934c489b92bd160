"""What an operator does to wallets and keys, shared by the CLI and the admin API.

Every target is validated before anything is written: credits and keys go to
existing wallets, never to a system account (sys:revenue, sys:funding,
sys:shortfall). A credit goes to the book first; the hold store's mirror of
the balance is then brought up to date, so the new money can be spent at once.
If the hold store is down at that moment, the credit is still done: the
mirror only accepts newer (balance, version) pairs and catches up from the
book on its next refresh, so nothing is lost.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass

from gateway.money.keys import NewKey, generate_key
from ledger.api_keys import BotRule, SpendLimits
from ledger.book import (
    FUNDING_ACCOUNT,
    SYSTEM_ACCOUNTS,
    ApiKeyRecord,
    Book,
    Leg,
    Posting,
    SettledUsage,
    Transfer,
    TransferKind,
    TransferOutcome,
    TransferRecord,
    Wallet,
)
from ledger.bots import Bots
from ledger.errors import NotAWallet, UnknownAccount
from ledger.holds import HoldStore, HoldStoreUnavailable, WalletHolds
from ledger.key_rules import KeyRules

log = logging.getLogger("meterway.operations")

REQUEST_ID_PREFIX = "req_"
CREDIT_ID_PREFIX = "adj_"


def new_credit_id() -> str:
    """An idempotency key for a credit given without one; callers show it so a retry can reuse it."""
    return f"{CREDIT_ID_PREFIX}{uuid.uuid4().hex}"


@dataclass(frozen=True)
class WalletView:
    wallet: Wallet
    holds: WalletHolds | None

    @property
    def held_nusd(self) -> int:
        return self.holds.held_nusd if self.holds else 0

    @property
    def available_nusd(self) -> int:
        return self.wallet.balance_nusd - self.held_nusd


@dataclass(frozen=True)
class Operations:
    book: Book
    holds: HoldStore

    async def create_wallet(self, wallet_id: str, name: str | None = None) -> Wallet:
        return await self.book.create_wallet(wallet_id, name)

    async def credit(self, wallet_id: str, amount_nusd: int, transfer_id: str | None = None, memo: str | None = None) -> tuple[TransferOutcome, Wallet]:
        """Add funds; idempotent by transfer_id. Once committed, it is reported as done."""
        if transfer_id is not None and transfer_id.startswith(REQUEST_ID_PREFIX):
            # Request ids name usage transfers; a credit must never take one.
            raise ValueError(f"transfer ids starting with {REQUEST_ID_PREFIX!r} are reserved for requests")
        await self._wallet(wallet_id)  # refuses system accounts and unknown wallets before writing
        transfer = Transfer(
            transfer_id or new_credit_id(), FUNDING_ACCOUNT, wallet_id, amount_nusd, TransferKind.ADJUSTMENT, memo=memo
        )
        outcome = await self.book.transfer(transfer)
        # Committed: from here on nothing may turn this into a reported failure.
        wallet = await self._wallet(wallet_id)
        try:
            await self.holds.sync(wallet_id, wallet.balance_nusd, wallet.version)
        except HoldStoreUnavailable as exc:
            log.warning("credit %s to %s committed (balance %d nUSD); the hold store is unavailable (%s), "
                        "its mirror will catch up from the ledger", transfer.transfer_id, wallet_id, wallet.balance_nusd, exc)
        return outcome, wallet

    async def show(self, wallet_id: str) -> WalletView:
        return WalletView(await self._wallet(wallet_id), await self.holds.wallet(wallet_id))

    async def transactions(self, wallet_id: str, limit: int = 50) -> list[TransferRecord]:
        await self._wallet(wallet_id)
        return await self.book.transfers_of(wallet_id, limit)

    async def create_key(self, wallet_id: str, name: str | None = None, bot: str | None = None,
                         member_id: str | None = None, expires_at: str | None = None,
                         allowed_models: tuple[str, ...] | None = None, bot_id: str | None = None,
                         limits: SpendLimits | None = None, rules: KeyRules | None = None) -> tuple[NewKey, ApiKeyRecord]:
        """A new inference key, shown once.

        A member's key counts against the member's monthly limit; a bot's key
        against the bot's caps (UnknownAccount if the wallet has no such bot);
        limits are the key's own.
        """
        await self._wallet(wallet_id)  # refuses system accounts and unknown wallets
        rule = None
        if bot_id is not None:
            assert isinstance(self.book, Bots), self.book  # every LedgerStore keeps bots
            found = await self.book.bot(bot_id)
            if found is None or found.wallet_id != wallet_id:
                raise UnknownAccount(f"no bot {bot_id!r} in wallet {wallet_id!r}")
            rule, bot = BotRule(bot_id, found.caps, found.friendly_message), bot or found.name
        new = generate_key()
        record = ApiKeyRecord(new.key_id, new.secret_hash, new.display_prefix, wallet_id, name, bot, member_id=member_id,
                              expires_at=expires_at, allowed_models=allowed_models, limits=limits, bot_rule=rule,
                              rules=rules)
        await self.book.create_key(record)
        return new, record

    async def refund(self, request_id: str, reason: str) -> tuple[TransferOutcome, int, Wallet]:
        """Give a settled request's charge back to its wallet (kind refund); idempotent per request.

        The money comes back from whoever received it (revenue, a creator), in
        the order the wallet paid them. Returns the outcome, the amount and the wallet.
        """
        settled = await self.book.usage(request_id)
        if settled is None:
            raise UnknownAccount(f"no settled request {request_id!r}")
        posting = refund_posting(settled, reason)
        outcome = await self.book.post(posting)
        wallet = await self._wallet(settled.record.wallet_id)
        try:
            await self.holds.sync(wallet.wallet_id, wallet.balance_nusd, wallet.version)
        except HoldStoreUnavailable as exc:
            log.warning("refund of %s committed; the hold store is unavailable (%s), its mirror will catch up",
                        request_id, exc)
        return outcome, sum(leg.amount_nusd for leg in posting.legs), wallet

    async def _wallet(self, wallet_id: str) -> Wallet:
        if wallet_id in SYSTEM_ACCOUNTS:
            raise NotAWallet(f"{wallet_id!r} is a system account, not a wallet: credits and keys go to wallets only")
        wallet = await self.book.wallet(wallet_id)
        if wallet is None:
            raise UnknownAccount(f"no wallet {wallet_id!r}")
        return wallet


def refund_posting(settled: SettledUsage, reason: str) -> Posting:
    """The legs that return what the wallet paid: payee by payee, in the order the wallet paid them."""
    record, left = settled.record, settled.charged_nusd
    if left <= 0:
        raise ValueError(f"request {record.request_id!r} charged its wallet nothing: there is nothing to refund")
    legs = []
    for payee in record.payees:
        paid = min(payee.amount_nusd, left)
        left -= paid
        if paid:
            legs.append(Leg(payee.account_id, record.wallet_id, paid))
    assert left == 0 and sum(leg.amount_nusd for leg in legs) == settled.charged_nusd, (settled, legs)
    return Posting(f"refund:{record.request_id}", TransferKind.REFUND, tuple(legs), memo=reason,
                   request_id=record.request_id)
