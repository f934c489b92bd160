"""The one query behind Book.totals(), valid SQL for SQLite and Postgres alike.

Each figure feeds a rule of check_invariants() (ledger/book.py). The rules are
stated by kind (mw_account_kinds.may_go_negative, transfer kinds), not by
listing accounts, so they stay true as kinds, payees and reversals are added.
"""

from __future__ import annotations

from ledger.book import FUNDING_ACCOUNT, RECEIVABLE_KIND, REVENUE_ACCOUNT, SHORTFALL_ACCOUNT

TOTALS_SQL = f"""SELECT
    CAST((SELECT COALESCE(SUM(balance_nusd), 0) FROM mw_accounts) AS BIGINT),
    CAST((SELECT COUNT(*) FROM mw_accounts a JOIN mw_account_kinds k ON k.kind = a.kind
          WHERE NOT k.may_go_negative AND a.balance_nusd < 0) AS BIGINT),
    CAST((SELECT COUNT(*) FROM mw_transfers) AS BIGINT),
    (SELECT balance_nusd FROM mw_accounts WHERE id = '{REVENUE_ACCOUNT}'),
    (SELECT balance_nusd FROM mw_accounts WHERE id = '{SHORTFALL_ACCOUNT}'),
    (SELECT balance_nusd FROM mw_accounts WHERE id = '{FUNDING_ACCOUNT}'),
    CAST((SELECT COALESCE(SUM(charged_nusd), 0) FROM mw_usage) AS BIGINT),
    CAST((SELECT COALESCE(SUM(shortfall_nusd), 0) FROM mw_usage) AS BIGINT),
    CAST((SELECT COUNT(*) FROM mw_accounts a WHERE a.balance_nusd <>
        COALESCE((SELECT SUM(amount_nusd) FROM mw_transfers WHERE credit_account = a.id), 0)
      - COALESCE((SELECT SUM(amount_nusd) FROM mw_transfers WHERE debit_account = a.id), 0)) AS BIGINT),
    CAST((SELECT COALESCE(SUM(amount_nusd), 0) FROM mw_transfers WHERE kind = 'usage') AS BIGINT),
    CAST((SELECT COALESCE(SUM(amount_nusd), 0) FROM mw_transfers WHERE kind = 'shortfall') AS BIGINT),
    CAST((SELECT COALESCE(SUM(CASE WHEN credit_account = '{SHORTFALL_ACCOUNT}' THEN amount_nusd ELSE -amount_nusd END), 0)
          FROM mw_transfers WHERE kind <> 'shortfall'
           AND (credit_account = '{SHORTFALL_ACCOUNT}' OR debit_account = '{SHORTFALL_ACCOUNT}')) AS BIGINT),
    CAST((SELECT COUNT(*) FROM mw_transfers t
          WHERE (t.kind = 'shortfall' AND t.debit_account <> '{SHORTFALL_ACCOUNT}')
             OR (t.kind = 'usage' AND NOT EXISTS (SELECT 1 FROM mw_accounts a JOIN mw_account_kinds k ON k.kind = a.kind
                                                  WHERE a.id = t.debit_account AND k.is_wallet))) AS BIGINT),
    CAST((SELECT COUNT(*) FROM mw_accounts WHERE kind = '{RECEIVABLE_KIND}' AND balance_nusd > 0) AS BIGINT)
"""
