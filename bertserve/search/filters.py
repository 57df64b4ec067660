"""Metadata filters: a Mongo-like query object compiled into a parameterized SQL condition.

Nothing in a filter is ever evaluated as code or pasted into SQL: field names become JSON-path
*parameters* and values are bound. Types compare like MongoDB: a number matches only numbers, a string
only strings, `$ne` / `$nin` also match items that lack the field, and `null` matches a missing field.

    {"lang": "zh", "year": {"$gte": 2018}}                   implicit and
    {"$or": [{"lang": "en"}, {"tags": {"$in": ["a", "b"]}}]}
    {"score": {"$gt": 0.5, "$lte": 1}, "draft": {"$exists": False}}
"""
from __future__ import annotations

import math

COMPARE = {"$gt": ">", "$gte": ">=", "$lt": "<", "$lte": "<="}
OPERATORS = {"$eq", "$ne", "$in", "$nin", "$exists", *COMPARE}
LOGICAL = {"$and", "$or", "$nor"}
MAX_DEPTH = 32


class FilterError(ValueError):
    """A malformed filter; the message names the offending part."""


def compile_filter(query) -> tuple[str, list]:
    """Return (SQL condition over column `meta`, bound arguments)."""
    if not isinstance(query, dict):
        raise FilterError(f"filter must be a JSON object, got {type(query).__name__}")
    args: list = []
    return _doc(query, args, 0), args


def _doc(query: dict, args: list, depth: int) -> str:
    if depth > MAX_DEPTH:
        raise FilterError("filter is nested too deeply")
    if not query:
        return "1"
    parts = []
    for key, value in query.items():
        if key in LOGICAL:
            if not isinstance(value, list) or not value or not all(isinstance(q, dict) for q in value):
                raise FilterError(f"{key} needs a non-empty list of filter objects")
            subs = [_doc(q, args, depth + 1) for q in value]
            joined = "(" + (" OR " if key != "$and" else " AND ").join(subs) + ")"
            parts.append(f"NOT {joined}" if key == "$nor" else joined)
        elif isinstance(key, str) and key.startswith("$"):
            raise FilterError(f"unknown operator {key!r} at top level; use a field name, $and, $or or $nor")
        else:
            parts.append(_field(_path(key), value, args))
    return "(" + " AND ".join(parts) + ")"


def _path(field) -> str:
    """JSON path for a field name; dots reach into nested objects ("a.b")."""
    if not isinstance(field, str) or not field or len(field) > 256:
        raise FilterError(f"invalid field name {field!r}")
    segments = field.split(".")
    for seg in segments:
        if not seg or '"' in seg or "\\" in seg:
            raise FilterError(f"invalid field name {field!r}")
    return "$" + "".join(f'."{seg}"' for seg in segments)


def _field(path: str, cond, args: list) -> str:
    if isinstance(cond, dict) and any(isinstance(k, str) and k.startswith("$") for k in cond):
        parts = []
        for op, value in cond.items():
            if op not in OPERATORS:
                raise FilterError(f"unknown operator {op!r}; expected one of {sorted(OPERATORS)}")
            parts.append(_op(path, op, value, args))
        return "(" + " AND ".join(parts) + ")"
    return _op(path, "$eq", cond, args)


def _op(path: str, op: str, value, args: list) -> str:
    if op == "$eq":
        return _eq(path, value, args)
    if op == "$ne":
        return f"NOT {_eq(path, value, args)}"
    if op in ("$in", "$nin"):
        if not isinstance(value, list):
            raise FilterError(f"{op} needs a list of values, got {type(value).__name__}")
        any_of = "(" + " OR ".join(_eq(path, v, args) for v in value) + ")" if value else "0"
        return any_of if op == "$in" else f"NOT {any_of}"
    if op == "$exists":
        if not isinstance(value, bool):
            raise FilterError("$exists needs true or false")
        args.append(path)
        return f"(json_type(meta, ?) IS {'NOT ' if value else ''}NULL)"
    # ordering comparisons: numbers with numbers, strings with strings
    args.extend([path, path, _scalar(value, op, ordered=True)])
    kinds = "('text')" if isinstance(value, str) else "('integer','real')"
    return f"IFNULL(json_type(meta, ?) IN {kinds} AND json_extract(meta, ?) {COMPARE[op]} ?, 0)"


def _eq(path: str, value, args: list) -> str:
    """An always-true-or-false (never NULL) equality test, so NOT() of it behaves."""
    _scalar(value, "$eq")
    if value is None:
        args.append(path)
        return "IFNULL(json_type(meta, ?) = 'null', 1)"
    if isinstance(value, bool):
        args.append(path)
        return f"IFNULL(json_type(meta, ?) = '{'true' if value else 'false'}', 0)"
    kinds = "('text')" if isinstance(value, str) else "('integer','real')"
    args.extend([path, path, value])
    return f"IFNULL(json_type(meta, ?) IN {kinds} AND json_extract(meta, ?) = ?, 0)"


def _scalar(value, op: str, ordered: bool = False):
    if isinstance(value, bool) or value is None:
        if ordered:
            raise FilterError(f"{op} compares numbers or strings, got {value!r}")
        return value
    if isinstance(value, (int, float)):
        if not math.isfinite(value):
            raise FilterError(f"{op} value must be a finite number, got {value!r}")
        return value
    if isinstance(value, str):
        return value
    raise FilterError(f"{op} value must be a string, number, boolean or null, got {type(value).__name__}")
