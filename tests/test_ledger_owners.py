"""The owners' side of the ledger (organisations, members, keys, invitations, deposits,
spend caps) and the wallet history, one contract for SQLite and Postgres."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import UTC, datetime, timedelta

import pytest

from ledger.book import (
    FUNDING_ACCOUNT,
    REVENUE_ACCOUNT,
    ApiKeyRecord,
    Leg,
    Posting,
    SettleOutcome,
    Transfer,
    TransferKind,
    check_invariants,
)
from ledger.caps import UNLIMITED_NUSD, member_cap_id, month_period
from ledger.errors import UnknownAccount
from ledger.history import EntryQuery
from ledger.owners import (
    Deposit,
    DepositNotPending,
    DepositStatus,
    InviteInvalid,
    LastOwner,
    ManagementKeyRecord,
    Member,
    MemberStatus,
    OrgExists,
    Role,
)
from ledger.store import LedgerStore
from ledger.times import utc_text
from tests.test_ledger_contract import usage

NOW = datetime.now(UTC)
PERIOD = month_period(NOW)


def member(member_id: str, role: Role = Role.DEVELOPER, status: MemberStatus = MemberStatus.ACTIVE,
           wallet_id: str = "acme", limit: int | None = None) -> Member:
    return Member(member_id, wallet_id, f"name of {member_id}", role, status, limit, created_at="")


def mkey(key_id: str, member_id: str) -> ManagementKeyRecord:
    return ManagementKeyRecord(key_id, f"hash-{key_id}", "mwm-abc", member_id, None)


def deposit(transfer_id: str, wallet_id: str, amount_nusd: int) -> Transfer:
    return Transfer(transfer_id, FUNDING_ACCOUNT, wallet_id, amount_nusd, TransferKind.DEPOSIT)


async def org_with_owner(book: LedgerStore, wallet_id: str = "acme") -> Member:
    await book.create_wallet(wallet_id)
    _, owner = await book.create_org_with_owner(wallet_id, "Acme", member("own1", Role.OWNER, wallet_id=wallet_id),
                                                mkey("mk1", "own1"))
    return owner


async def test_an_org_is_created_once_with_its_first_owner(book: LedgerStore) -> None:
    owner = await org_with_owner(book)
    assert owner.role is Role.OWNER and owner.status is MemberStatus.ACTIVE and owner.joined_at
    org = await book.org("acme")
    assert org is not None and org.name == "Acme" and org.low_balance_nusd is None and org.created_at.endswith("Z")
    with pytest.raises(OrgExists):
        await book.create_org_with_owner("acme", "again", member("own2", Role.OWNER), mkey("mk2", "own2"))
    with pytest.raises(UnknownAccount):
        await book.create_org_with_owner("ghost", "x", member("own3", Role.OWNER, wallet_id="ghost"), mkey("mk3", "own3"))
    assert await book.org("ghost") is None and await book.member("own3") is None
    identity = await book.management_key_by_hash("hash-mk1")
    assert identity is not None and identity.member.member_id == "own1" and identity.key.active
    assert (await book.set_org_low_balance("acme", 7)).low_balance_nusd == 7


async def test_the_last_owner_can_be_neither_demoted_nor_removed(book: LedgerStore) -> None:
    await org_with_owner(book)
    with pytest.raises(LastOwner):
        await book.set_member_role("own1", Role.VIEWER)
    with pytest.raises(LastOwner):
        await book.remove_member("own1")
    await book.create_member(member("own2", Role.OWNER))
    assert (await book.set_member_role("own1", Role.VIEWER)).role is Role.VIEWER
    with pytest.raises(LastOwner):
        await book.remove_member("own2")
    assert [m.member_id for m in await book.list_members("acme")] == ["own1", "own2"]


async def test_removing_a_member_revokes_all_its_keys(book: LedgerStore) -> None:
    await org_with_owner(book)
    await book.create_member(member("dev1"))
    await book.create_management_key(mkey("mk-dev", "dev1"))
    await book.create_key(ApiKeyRecord("k-dev", "h-dev", "mw-x", "acme", None, None, member_id="dev1"))
    removed = await book.remove_member("dev1")
    assert removed.status is MemberStatus.REMOVED and removed.removed_at
    assert not (await book.list_management_keys("dev1"))[0].active
    key = await book.key_by_hash("h-dev")
    assert key is not None and not key.active
    with pytest.raises(UnknownAccount):  # a removed member gets no new keys
        await book.create_key(ApiKeyRecord("k-dev2", "h-dev2", "mw-x", "acme", None, None, member_id="dev1"))


async def test_an_invitation_is_accepted_once_and_never_after_it_expires(book: LedgerStore) -> None:
    await org_with_owner(book)
    await book.create_member(member("inv1", Role.VIEWER, MemberStatus.INVITED))
    await book.create_invite("i1", "inv1", "tok1", utc_text(NOW + timedelta(days=1)))
    found = await book.invite("tok1")
    assert found is not None and found[0].member_id == "inv1"
    results = await asyncio.gather(*(book.accept_invite("tok1", mkey(f"mk-inv{i}", "inv1")) for i in range(5)),
                                   return_exceptions=True)
    accepted = [r for r in results if isinstance(r, Member)]
    assert len(accepted) == 1 and accepted[0].status is MemberStatus.ACTIVE
    assert all(isinstance(r, InviteInvalid) for r in results if not isinstance(r, Member))
    assert len(await book.list_management_keys("inv1")) == 1 and await book.invite("tok1") is None
    await book.create_member(member("inv2", Role.VIEWER, MemberStatus.INVITED))
    await book.create_invite("i2", "inv2", "tok2", utc_text(NOW - timedelta(seconds=1)))
    with pytest.raises(InviteInvalid):
        await book.accept_invite("tok2", mkey("mk-inv2", "inv2"))
    with pytest.raises(InviteInvalid):
        await book.accept_invite("nope", mkey("mk-none", "inv2"))


async def test_a_deposit_is_credited_exactly_once(book: LedgerStore) -> None:
    await org_with_owner(book)
    dep = Deposit("dep_1", "acme", "card", 50_000_000_000, "47.50", "usd", DepositStatus.PENDING, created_at="")
    await book.create_deposit(dep)
    outcomes = await asyncio.gather(*(book.complete_deposit("dep_1") for _ in range(4)))
    assert sorted(o.value for o in outcomes) == ["created", "exists", "exists", "exists"]
    stored = await book.deposit("dep_1")
    assert stored is not None and stored.status is DepositStatus.COMPLETED and stored.completed_at
    wallet = await book.wallet("acme")
    assert wallet is not None and wallet.balance_nusd == 50_000_000_000
    await book.create_deposit(dataclasses.replace(dep, deposit_id="dep_2", external_ref="cs_2"))
    assert (await book.set_deposit_status("dep_2", DepositStatus.EXPIRED)).status is DepositStatus.EXPIRED
    with pytest.raises(DepositNotPending):
        await book.complete_deposit("dep_2")
    check_invariants(await book.totals())


async def test_deposits_page_newest_first_with_a_total(book: LedgerStore) -> None:
    await org_with_owner(book)
    for i in range(5):
        await book.create_deposit(Deposit(f"dep_{i}", "acme", "eth", 1000 + i, "0.001", "eth",
                                          DepositStatus.PENDING, created_at=""))
    seen, cursor = [], None
    while True:
        page = await book.list_deposits("acme", 2, cursor)
        assert page.total == 5 and len(page.items) <= 2
        seen += [d.deposit_id for d in page.items]
        cursor = page.next_cursor
        if cursor is None:
            break
    assert sorted(seen) == [f"dep_{i}" for i in range(5)] and len(set(seen)) == 5
    with pytest.raises(ValueError):
        await book.list_deposits("acme", 2, "not-a-cursor")


async def test_a_member_cap_counts_settled_cost_in_the_same_transaction(book: LedgerStore) -> None:
    await org_with_owner(book)
    await book.transfer(deposit("d1", "acme", 10_000))
    await book.create_member(member("dev1", limit=1_000))
    await book.create_key(ApiKeyRecord("k-dev", "h-dev", "mw-x", "acme", None, None, member_id="dev1"))
    key = await book.key_by_hash("h-dev")
    assert key is not None and key.member_id == "dev1" and key.member_limit_nusd == 1_000
    # spend before the cap row exists counts when it opens
    await book.settle_batch([dataclasses.replace(usage("r0", "acme", 100), key_id="k-dev")])
    cap_id = member_cap_id("dev1", PERIOD)
    opened = await book.open_member_cap("dev1", PERIOD)
    assert opened is not None and opened.cap_id == cap_id and opened.remaining_nusd == 900
    assert await book.open_member_cap("dev1", PERIOD) == opened  # opened once
    items = [dataclasses.replace(usage(f"r{i}", "acme", 200), key_id="k-dev", caps=(cap_id,)) for i in (1, 2)]
    results = await book.settle_batch(items)
    assert [r.outcome for r in results] == [SettleOutcome.SETTLED] * 2
    assert all(r.caps and r.caps[0].remaining_nusd == 500 and r.caps[0].version > opened.version for r in results)
    replay = await book.settle_batch(items[:1])
    assert replay[0].outcome is SettleOutcome.REPLAY and replay[0].caps == ()
    cap = await book.spend_cap(cap_id)
    assert cap is not None and cap.remaining_nusd == 500
    # a new limit changes the open row in the same transaction
    changed, row = await book.set_member_limit("dev1", 2_000, PERIOD)
    assert changed.monthly_limit_nusd == 2_000 and row is not None and row.remaining_nusd == 1_500
    assert row.version > cap.version
    _, unlimited = await book.set_member_limit("dev1", None, PERIOD)
    assert unlimited is not None and unlimited.remaining_nusd == UNLIMITED_NUSD
    await book.create_member(member("dev2"))
    assert await book.open_member_cap("dev2", PERIOD) is None  # no limit, no cap
    check_invariants(await book.totals())


async def test_entries_are_the_wallets_side_of_each_posting(book: LedgerStore) -> None:
    await org_with_owner(book)
    await book.create_wallet("creator")
    await book.transfer(deposit("d1", "acme", 10_000))
    await book.settle_batch([usage("req1", "acme", 300)])
    await book.post(Posting("refund:req1", TransferKind.REFUND, (Leg(REVENUE_ACCOUNT, "acme", 300),), memo="failed"))
    await book.post(Posting("pay1", TransferKind.PAYMENT, (Leg("acme", "creator", 70), Leg("acme", REVENUE_ACCOUNT, 30))))
    page = await book.entries(EntryQuery("acme", limit=10))
    assert page.total == 4 and page.next_cursor is None
    by_kind = {e.kind: e for e in page.items}
    assert by_kind["deposit"].amount_nusd == 10_000 and by_kind["deposit"].counterparty == FUNDING_ACCOUNT
    assert by_kind["usage"].amount_nusd == -300 and by_kind["usage"].usage is not None
    assert by_kind["usage"].usage.prompt_tokens == 10 and by_kind["usage"].request_id == "req1"
    assert by_kind["refund"].amount_nusd == 300 and by_kind["refund"].memo == "failed"
    assert by_kind["payment"].amount_nusd == -100  # two legs, one entry
    assert all(e.created_at.endswith("Z") for e in page.items)
    only = await book.entries(EntryQuery("acme", limit=10, kinds=("usage", "refund")))
    assert only.total == 2 and {e.kind for e in only.items} == {"usage", "refund"}
    future = await book.entries(EntryQuery("acme", limit=10, since=NOW + timedelta(hours=1)))
    assert future.total == 0 and future.items == ()
    past = await book.entries(EntryQuery("acme", limit=10, until=NOW - timedelta(hours=1)))
    assert past.total == 0
    mine = await book.entries(EntryQuery("acme", limit=10, key_ids=("k1",)))
    assert [e.kind for e in mine.items] == ["usage"]
    assert (await book.entries(EntryQuery("acme", limit=10, key_ids=()))).total == 0
    figures = await book.wallet_figures("acme", NOW - timedelta(days=1))
    assert (figures.deposited_nusd, figures.spent_nusd, figures.refunded_nusd, figures.requests) == (10_000, 300, 300, 1)
    assert figures.month.requests == 1 and figures.month.cost_nusd == 300
    check_invariants(await book.totals())


async def test_entry_pages_cover_every_entry_once(book: LedgerStore) -> None:
    await org_with_owner(book)
    for i in range(7):
        await book.transfer(deposit(f"d{i}", "acme", 100 + i))
    seen, cursor, pages = [], None, 0
    while True:
        page = await book.entries(EntryQuery("acme", limit=3, cursor=cursor))
        pages += 1
        assert page.total == 7
        seen += [e.entry_id for e in page.items]
        cursor = page.next_cursor
        if cursor is None:
            break
    assert pages == 3 and sorted(seen) == sorted(f"d{i}" for i in range(7))
    one = await book.entries(EntryQuery("acme", limit=7))
    assert one.next_cursor is None and len(one.items) == 7
    with pytest.raises(ValueError):
        await book.entries(EntryQuery("acme", limit=3, cursor="garbage!"))


async def test_spend_by_key_and_by_member(book: LedgerStore) -> None:
    await org_with_owner(book)
    await book.transfer(deposit("d1", "acme", 10_000))
    await book.create_member(member("dev1"))
    await book.create_key(ApiKeyRecord("k-a", "h-a", "mw-x", "acme", None, None, member_id="dev1"))
    await book.create_key(ApiKeyRecord("k-b", "h-b", "mw-x", "acme", None, None))
    await book.settle_batch([dataclasses.replace(usage("r1", "acme", 100), key_id="k-a"),
                             dataclasses.replace(usage("r2", "acme", 50), key_id="k-a"),
                             dataclasses.replace(usage("r3", "acme", 7), key_id="k-b")])
    since = NOW - timedelta(days=1)
    by_key = await book.key_spend("acme", since)
    assert by_key["k-a"].requests == 2 and by_key["k-a"].cost_nusd == 150 and by_key["k-b"].charged_nusd == 7
    by_member = await book.member_spend("acme", since)
    assert by_member == {"dev1": by_key["k-a"]}
    assert await book.key_spend("acme", NOW + timedelta(hours=1)) == {}


async def test_every_kind_the_wallet_history_names_exists(book: LedgerStore) -> None:
    kinds = await book.transfer_kinds()
    names = {"deposit", "usage", "refund", "adjustment", "discount", "reward", "expiry", "earning", "payout", "reversal"}
    assert names <= set(kinds) and all(kinds[name] for name in names)
    assert {k.value for k in TransferKind} <= set(kinds)
