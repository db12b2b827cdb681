"""Anthropic list prices, the seed of the editable ``prices`` table.

USD per million tokens (platform pricing, Nov 2025; ../shared/reference/azure-facts.md §5).
Cache writes cost 1.25× (5 min) and 2× (1 h) the input price, cache reads 0.1×.
"""

from __future__ import annotations

from decimal import Decimal

#: model -> (input, output) USD per million tokens.
_INPUT_OUTPUT = {
    "claude-opus-4-5": ("5", "25"),
    "claude-sonnet-4-5": ("3", "15"),
    "claude-opus-4-1": ("15", "75"),
    "claude-haiku-4-5": ("1", "5"),
}


def list_prices() -> list[dict[str, object]]:
    """Rows for the ``prices`` table (without ``updated_at``)."""
    rows = []
    for model, (input_price, output_price) in _INPUT_OUTPUT.items():
        base = Decimal(input_price)
        rows.append(
            {
                "model_name": model,
                "currency": "USD",
                "input_per_mtok": base,
                "output_per_mtok": Decimal(output_price),
                "cache_write_5m_per_mtok": base * Decimal("1.25"),
                "cache_write_1h_per_mtok": base * 2,
                "cache_read_per_mtok": base * Decimal("0.1"),
            }
        )
    return rows
