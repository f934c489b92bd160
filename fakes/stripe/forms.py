"""Stripe's request bodies: application/x-www-form-urlencoded with bracketed keys.

`line_items[0][price_data][unit_amount]=500` becomes
{"line_items": [{"price_data": {"unit_amount": "500"}}]}: the nesting the
stripe library encodes, decoded back. Values stay strings, as Stripe reads them.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qsl

_PART = re.compile(r"\[([^\]]*)\]")
FIELDS_MAX = 1000  # a bound on one request's parameters


def decode(body: str) -> dict[str, Any]:
    pairs = parse_qsl(body, keep_blank_values=True, max_num_fields=FIELDS_MAX)
    out: dict[str, Any] = {}
    for key, value in pairs:
        head = key.split("[", 1)[0]
        path = [head, *_PART.findall(key[len(head):])]
        _put(out, path, value)
    decoded: dict[str, Any] = _lists(out)
    return decoded


def _put(node: dict[str, Any], path: list[str], value: str) -> None:
    for part in path[:-1]:
        node = node.setdefault(part, {})
    node[path[-1]] = value


def _lists(node: Any) -> Any:
    """Dicts whose keys are 0..n-1 are the lists Stripe's encoding flattened."""
    if not isinstance(node, dict):
        return node
    converted = {k: _lists(v) for k, v in node.items()}
    if converted and all(k.isdigit() for k in converted):
        return [converted[k] for k in sorted(converted, key=int)]
    return converted
