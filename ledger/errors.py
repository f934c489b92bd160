"""Every error the ledger reports. Expected failures are values with a code;
these exceptions are for what the caller cannot continue from.

    LedgerError
     ├── IdempotencyConflict   the same transfer id was used with different content
     ├── UnknownAccount        the account (wallet) does not exist
     │    └── NotAWallet       the account is a system account (sys:*): never a
     │                         target of credits, deposits or keys
     ├── AccountExists         create_wallet on an id that is taken
     ├── InsufficientFunds     a transfer would overdraw an account
     ├── LedgerUnavailable     the database cannot be reached or is overloaded, for now:
     │                         a retry of the same call may succeed (connection lost,
     │                         too many connections, shutting down, deadlock, locked)
     └── LedgerFailure         the database refused the call and a retry will not help
                               until an operator acts (schema not migrated, a constraint
                               or data error, a bug): fail loudly, do not retry

Each backend translates its driver's errors into exactly one of these, in one
place (postgres_book._with, sqlite_book._call), so callers decide by class
whether to retry.
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


class LedgerFailure(LedgerError):
    code = "ledger_failure"


class BotExists(LedgerError):
    """A wallet already has a live bot of that name."""

    code = "bot_exists"


class BotInUse(LedgerError):
    """A bot with active keys cannot be deleted: revoke or move its keys first."""

    code = "bot_in_use"
