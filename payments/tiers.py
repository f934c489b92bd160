"""Top-up tiers and quotes: what an owner pays for what it gets (AISA's confirmation figures).

A quote credits the face amount and charges the discounted price. The discount
is rounded down to whole cents, so the price is whole cents (what a card can
pay) and the owner is never charged a fraction more than the tier says. A
custom amount lies between `topup.min_usd` and `topup.max_usd`; with
`custom_amounts_earn_tiers` (the default) it earns the discount of the largest
tier whose amount it reaches: $75 gets the $50 tier's 5 %.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_FLOOR, Decimal

from config.payments import NUSD_PER_CENT, TierSettings, TopupSettings
from ledger.money import format_usd


@dataclass(frozen=True)
class Quote:
    amount_nusd: int  # the face amount: what the wallet is credited
    discount_nusd: int  # paid by sys:discounts
    payable_nusd: int  # what the card is charged
    tier_id: str | None
    discount_percent: Decimal

    def __post_init__(self) -> None:
        assert self.amount_nusd == self.discount_nusd + self.payable_nusd, self
        assert self.payable_nusd > 0 and self.discount_nusd >= 0, self
        assert self.payable_nusd % NUSD_PER_CENT == 0 and self.discount_nusd % NUSD_PER_CENT == 0, self

    @property
    def payable_cents(self) -> int:
        return self.payable_nusd // NUSD_PER_CENT


@dataclass(frozen=True)
class QuoteError:
    """An amount or tier we will not quote: a 400 naming the parameter."""

    code: str
    message: str
    param: str
    status: int = 400


def quote(settings: TopupSettings, amount_nusd: int | None = None, tier_id: str | None = None) -> Quote | QuoteError:
    """A tier's quote, or a custom amount's; exactly one of the two must be given."""
    if (amount_nusd is None) == (tier_id is None):
        return QuoteError("invalid_request", "Give either 'amount' (a custom amount) or 'tier', not both or neither.",
                          "amount")
    if tier_id is not None:
        tier = next((t for t in settings.tiers if t.id == tier_id), None)
        if tier is None:
            known = ", ".join(t.id for t in settings.tiers) or "none"
            return QuoteError("unknown_tier", f"No tier {tier_id!r}; the tiers are: {known}.", "tier")
        return priced(tier.amount_nusd, tier)
    assert amount_nusd is not None
    refused = _check_custom(settings, amount_nusd)
    if refused is not None:
        return refused
    return priced(amount_nusd, earned_tier(settings, amount_nusd) if settings.custom_amounts_earn_tiers else None)


def earned_tier(settings: TopupSettings, amount_nusd: int) -> TierSettings | None:
    reached = [t for t in settings.tiers if t.amount_nusd <= amount_nusd]
    return max(reached, key=lambda t: (t.amount_nusd, t.discount_percent), default=None)


def priced(amount_nusd: int, tier: TierSettings | None) -> Quote:
    percent = tier.discount_percent if tier is not None else Decimal(0)
    cents = amount_nusd // NUSD_PER_CENT
    discount_cents = int((Decimal(cents) * percent / 100).to_integral_value(rounding=ROUND_FLOOR))
    return Quote(amount_nusd, discount_cents * NUSD_PER_CENT, (cents - discount_cents) * NUSD_PER_CENT,
                 tier.id if tier is not None else None, percent)


def _check_custom(settings: TopupSettings, amount_nusd: int) -> QuoteError | None:
    if amount_nusd % NUSD_PER_CENT:
        return QuoteError("invalid_amount", "A top-up is whole cents, e.g. \"25.50\".", "amount")
    if amount_nusd < settings.min_nusd or amount_nusd > settings.max_nusd:
        return QuoteError("amount_out_of_range", f"A top-up is between {format_usd(settings.min_nusd)} and "
                          f"{format_usd(settings.max_nusd)} USD.", "amount")
    return None
