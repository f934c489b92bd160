"""Everything one database holds, as one protocol: the book (money and keys), who owns
each wallet (ledger/owners.py), what an owner reads (ledger/history.py), money paid in
(ledger/payments.py), credit that expires (ledger/lots.py), bots with
their caps (ledger/bots.py), and the provider keys wallets bring (ledger/provider_keys.py).

PostgresBook and SqliteBook implement all three; the gateway's state holds one.
Kept apart from book.py so owners.py and history.py can import the book's values
without a cycle.
"""

from __future__ import annotations

from typing import Protocol

from ledger.book import Book
from ledger.bots import Bots
from ledger.history import History
from ledger.lots import CreditLots
from ledger.owners import Owners
from ledger.payments import Payments
from ledger.prices import Prices
from ledger.provider_keys import ProviderKeys
from ledger.webhooks import Webhooks


class LedgerStore(Book, Owners, History, Payments, CreditLots, Bots, ProviderKeys, Webhooks, Prices, Protocol):
    """The book, its owners and their history, card payments, credit lots, bots and caps, provider keys, in one database."""
