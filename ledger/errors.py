"""Every error the ledger reports. Expected failures are values with a code;
these exceptions are for what the caller cannot continue from.

    LedgerError
     ├── IdempotencyConflict   the same transfer id was used with different content
     ├── UnknownAccount        the account (wallet) does not exist
     │    └── NotAWallet       the account is a system account (sys:*): never a
     │                         target of credits, deposits or keys
     ├── AccountExists         create_wallet on an id that is taken
     ├── InsufficientFunds     a transfer would overdraw an account
     └── LedgerUnavailable     the database cannot be reached (retry later)
"""


class LedgerError(Exception):
    code = "ledger_error"


class IdempotencyConflict(LedgerError):
    code = "idempotency_conflict"


class UnknownAccount(LedgerError):
    code = "unknown_account"


class NotAWallet(UnknownAccount):
    """A system account named where a wallet must be: there is no such wallet."""

    code = "not_a_wallet"


class AccountExists(LedgerError):
    code = "account_exists"


class InsufficientFunds(LedgerError):
    code = "insufficient_funds"


class LedgerUnavailable(LedgerError):
    code = "ledger_unavailable"
