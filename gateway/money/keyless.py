"""Keyless purchase (AiSpace's "Secure Key"): credit bought without an account, keys revealed once.

An anonymous buyer starts a Checkout; a wallet is opened for it and a
recovery code shown then (stored only as a hash). Once Stripe's webhook has
credited the deposit, whoever holds the paid session (its id comes back on the
success URL) asks for the keys: an organisation is made with an owner
management key and an inference key, and both secrets are shown that once.
A buyer who lost the page uses the recovery code: the keys issued before are
revoked and fresh ones are shown, so a leaked page stops working.
No secret is ever stored: the keys are made at the moment they are shown.
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass

from gateway.money.keys import hash_secret
from gateway.money.operations import Operations
from gateway.money.wallet_owners import WalletOwners
from ledger.owners import Deposit, DepositStatus, MemberStatus, Role
from ledger.payments import Keyless
from payments.checkout import Checkout, StartedCheckout, TopupRefused
from payments.tiers import Quote

ORG_NAME = "Keyless purchase"
OWNER_NAME = "Buyer"


@dataclass(frozen=True)
class KeylessStarted:
    started: StartedCheckout
    recovery_code: str  # shown once, at purchase


@dataclass(frozen=True)
class KeylessKeys:
    wallet_id: str
    api_key: str  # mw-...: calls models
    management_key: str  # mwm-...: manages the wallet through /api


class KeylessPurchases:
    def __init__(self, checkout: Checkout, owners: WalletOwners, ops: Operations) -> None:
        self._checkout = checkout
        self._owners = owners
        self._ops = ops

    async def start(self, quote: Quote, success_url: str, cancel_url: str,
                    validity_days: int | None) -> KeylessStarted | TopupRefused:
        wallet_id = f"kl_{secrets.token_hex(8)}"
        code = secrets.token_urlsafe(24)
        await self._ops.create_wallet(wallet_id, ORG_NAME)
        started = await self._checkout.start(wallet_id, quote, success_url, cancel_url, purpose="keyless",
                                             validity_days=validity_days, recovery_hash=hash_secret(code))
        return started if isinstance(started, TopupRefused) else KeylessStarted(started, code)

    async def reveal(self, session_id: str) -> KeylessKeys | TopupRefused:
        found = await self._purchase(session_id)
        if isinstance(found, TopupRefused):
            return found
        deposit, purchase = found
        if not await self._owners.store.claim_keyless_reveal(deposit.deposit_id):
            return TopupRefused(409, "already_revealed", "These keys were shown once already. "
                                "Use the recovery code from the purchase to get fresh ones.")
        return await self._issue(purchase)

    async def recover(self, session_id: str, recovery_code: str) -> KeylessKeys | TopupRefused:
        found = await self._purchase(session_id)
        if isinstance(found, TopupRefused):
            return found
        _, purchase = found
        if not hmac.compare_digest(hash_secret(recovery_code), purchase.recovery_hash):
            return TopupRefused(403, "invalid_recovery_code", "The recovery code does not match this purchase.",
                                "recovery_code")
        await self._owners.store.claim_keyless_reveal(purchase.deposit_id)  # recovering counts as revealing
        if purchase.key_id is not None:
            await self._owners.store.revoke_key(purchase.key_id)
        if purchase.management_key_id is not None:
            await self._owners.store.revoke_management_key(purchase.management_key_id)
        return await self._issue(purchase)

    async def _purchase(self, session_id: str) -> tuple[Deposit, Keyless] | TopupRefused:
        store = self._owners.store
        deposit = await store.deposit_by_ref(session_id)
        purchase = None if deposit is None else await store.keyless(deposit.deposit_id)
        if deposit is None or purchase is None:
            return TopupRefused(404, "not_found", "No keyless purchase has this session.", "session_id")
        if deposit.status is DepositStatus.PENDING:
            return TopupRefused(409, "payment_pending", "The payment is not confirmed yet; try again in a moment.")
        if deposit.status is not DepositStatus.COMPLETED:
            return TopupRefused(410, "purchase_not_paid", f"This purchase is {deposit.status.value}: no keys exist.")
        return deposit, purchase

    async def _issue(self, purchase: Keyless) -> KeylessKeys:
        store = self._owners.store
        if await store.org(purchase.wallet_id) is None:
            _, owner, management = await self._owners.create_org(purchase.wallet_id, ORG_NAME, OWNER_NAME)
            management_key_id, management_secret = management.key_id, management.secret
        else:
            owner = next(m for m in await store.list_members(purchase.wallet_id)
                         if m.role is Role.OWNER and m.status is MemberStatus.ACTIVE)
            made, new = await self._owners.create_management_key(owner.member_id, "keyless recovery")
            management_key_id, management_secret = made.key_id, new.secret
        api_key, key = await self._ops.create_key(purchase.wallet_id, "keyless", member_id=owner.member_id)
        await store.set_keyless_keys(purchase.deposit_id, key.key_id, management_key_id)
        return KeylessKeys(purchase.wallet_id, api_key.secret, management_secret)
