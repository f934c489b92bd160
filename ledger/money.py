"""Money is an integer count of nano-USD (1e-9 USD) everywhere inside Meterway.

Decimal strings exist only at the edges (config files, HTTP headers, the CLI).
The scale is generous on purpose: a price of $0.075 per million tokens is
75 nUSD per thousand tokens, so per-token arithmetic stays exact in integers
once multiplied out per million (see config/pricing.py).
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

NUSD_PER_USD = 10**9
# Redis Lua numbers are doubles; keep every amount and balance exact there.
AMOUNT_NUSD_MAX = 2**53 - 1


class MoneyFormatError(ValueError):
    """A decimal string that is not an exact, non-negative amount of nano-USD."""


def parse_usd(text: str | int | Decimal) -> int:
    """'1.25' -> 1_250_000_000. Rejects negatives, NaN and sub-nano precision."""
    try:
        value = Decimal(str(text))
    except InvalidOperation as exc:
        raise MoneyFormatError(f"not a decimal amount: {text!r}") from exc
    if not value.is_finite() or value < 0:
        raise MoneyFormatError(f"amount must be a finite, non-negative decimal: {text!r}")
    scaled = value * NUSD_PER_USD
    if scaled != scaled.to_integral_value():
        raise MoneyFormatError(f"amount has more precision than 1e-9 USD: {text!r}")
    amount_nusd = int(scaled)
    if amount_nusd > AMOUNT_NUSD_MAX:
        raise MoneyFormatError(f"amount too large: {text!r}")
    return amount_nusd


def format_usd(amount_nusd: int) -> str:
    """1_250_000_000 -> '1.25'; 1 -> '0.000000001'. Exact, never scientific notation."""
    assert isinstance(amount_nusd, int), amount_nusd
    sign = "-" if amount_nusd < 0 else ""
    whole, frac = divmod(abs(amount_nusd), NUSD_PER_USD)
    if frac == 0:
        return f"{sign}{whole}"
    return f"{sign}{whole}.{frac:09d}".rstrip("0")
