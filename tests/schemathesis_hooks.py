"""Hooks for tests/test_openapi.py (loaded through SCHEMATHESIS_HOOKS).

JSON Schema cannot say `year_min <= year_max` (the API answers 422 otherwise, and the document says so
in the field's description): generated cases with both years get them in order, so schema-valid data
is valid data. Data that violates the schema is generated as usual.
"""

from __future__ import annotations

from typing import Any

import schemathesis


def _year(value: Any) -> int | None:
    """An int, or a query string's digits; else None (then the pair is left as it is)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.lstrip("-").isdigit():
        return int(value)
    return None


def _in_order(values: Any) -> None:
    if isinstance(values, dict):
        low, high = _year(values.get("year_min")), _year(values.get("year_max"))
        if low is not None and high is not None and low > high:
            values["year_min"], values["year_max"] = values["year_max"], values["year_min"]


@schemathesis.hook
def map_case(context: schemathesis.HookContext, case: schemathesis.Case) -> schemathesis.Case:
    _in_order(case.body)
    _in_order(case.query)
    return case
