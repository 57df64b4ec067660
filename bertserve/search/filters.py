"""Metadata filters: a Mongo-like query object compiled into a parameterized SQL condition (or, through
another emitter, a Milvus expression).

Nothing in a filter is ever evaluated as code or pasted into SQL: field names become JSON-path
*parameters* and values are bound. Types compare like MongoDB: a number matches only numbers, a string
only strings, `$ne` / `$nin` also match items that lack the field, and `null` matches a missing field.

    {"lang": "zh", "year": {"$gte": 2018}}                   implicit and
    {"$or": [{"lang": "en"}, {"tags": {"$in": ["a", "b"]}}]}
    {"score": {"$gt": 0.5, "$lte": 1}, "draft": {"$exists": False}}
"""
from __future__ import annotations

import math

from bertserve.errors import BadInput

COMPARE = {"$gt": ">", "$gte": ">=", "$lt": "<", "$lte": "<="}
OPERATORS = {"$eq", "$ne", "$in", "$nin", "$exists", *COMPARE}
LOGICAL = {"$and", "$or", "$nor"}
MAX_DEPTH = 32
# Conditions (field tests and $in values) in one filter. SQLite binds at most 32,766 values per statement
# and each condition binds up to three; past this a filter is a table scan in disguise anyway.
MAX_CONDITIONS = 4096
# SQLite stores integers in 64 bits; a larger one in metadata is kept as a real, so a filter compares it so
INT64 = (-(1 << 63), (1 << 63) - 1)


class FilterError(BadInput):
    """A malformed filter; the message names the offending part."""


def compile_filter(query) -> tuple[str, list]:
    """Return (SQL condition over column `meta`, bound arguments)."""
    sql = SQLite()
    return walk(query, sql), sql.args


def walk(query, emit) -> str:
    """Validate a filter and build its condition with `emit` (SQLite, or Milvus in search.milvus).

    The one place that knows the filter language; emitters only render the leaves and connectives.
    """
    if not isinstance(query, dict):
        raise FilterError(f"filter must be a JSON object, got {type(query).__name__}")
    _count_conditions(query)
    return _doc(query, emit, 0)


def _count_conditions(query):
    """Refuse a filter with more than MAX_CONDITIONS parts, counted without recursion. Parts deeper than
    any valid filter reaches are not counted: the walk refuses them as nested too deeply."""
    count, todo = 0, [(query, 0)]
    while todo:
        item, level = todo.pop()
        if level <= 2 * MAX_DEPTH + 4:  # each filter level is a list and an object
            if isinstance(item, dict):
                todo.extend((v, level + 1) for v in item.values())
            elif isinstance(item, list):
                todo.extend((v, level + 1) for v in item)
        count += 1
        if count > MAX_CONDITIONS:
            raise FilterError(f"filter has more than {MAX_CONDITIONS} conditions")


class SQLite:
    """Renders to SQLite JSON functions; paths and values become bound arguments."""
    true, false = "1", "0"

    def __init__(self):
        self.args: list = []

    @staticmethod
    def path(segments: list[str]) -> str:
        return "$" + "".join(f'."{seg}"' for seg in segments)

    @staticmethod
    def all(parts: list[str]) -> str:
        return _balanced(parts, "AND")

    @staticmethod
    def any(parts: list[str]) -> str:
        return _balanced(parts, "OR")

    @staticmethod
    def negate(part: str) -> str:
        return f"NOT {part}"

    def exists(self, path: str, present: bool) -> str:
        self.args.append(path)
        return f"(json_type(meta, ?) IS {'NOT ' if present else ''}NULL)"

    def compare(self, path: str, op: str, value) -> str:
        """Ordering comparison: numbers with numbers, strings with strings."""
        self.args.extend([path, path, value])
        kinds = "('text')" if isinstance(value, str) else "('integer','real')"
        return f"IFNULL(json_type(meta, ?) IN {kinds} AND json_extract(meta, ?) {COMPARE[op]} ?, 0)"

    def eq(self, path: str, value) -> str:
        """An always-true-or-false (never NULL) equality test, so NOT() of it behaves."""
        if value is None:
            self.args.append(path)
            return "IFNULL(json_type(meta, ?) = 'null', 1)"
        if isinstance(value, bool):
            self.args.append(path)
            return f"IFNULL(json_type(meta, ?) = '{'true' if value else 'false'}', 0)"
        kinds = "('text')" if isinstance(value, str) else "('integer','real')"
        self.args.extend([path, path, value])
        return f"IFNULL(json_type(meta, ?) IN {kinds} AND json_extract(meta, ?) = ?, 0)"


def _balanced(parts: list[str], op: str) -> str:
    """`(a OP b OP ...)` as a balanced tree of parentheses: SQLite parses a flat chain into a tree as deep
    as the chain is long and refuses one deeper than 1000 (an $in of 1000 values)."""
    if len(parts) <= 8:
        return "(" + f" {op} ".join(parts) + ")"
    half = len(parts) // 2
    return f"({_balanced(parts[:half], op)} {op} {_balanced(parts[half:], op)})"


def _doc(query: dict, emit, depth: int) -> str:
    if depth > MAX_DEPTH:
        raise FilterError("filter is nested too deeply")
    if not query:
        return emit.true
    parts = []
    for key, value in query.items():
        if key in LOGICAL:
            if not isinstance(value, list) or not value or not all(isinstance(q, dict) for q in value):
                raise FilterError(f"{key} needs a non-empty list of filter objects")
            subs = [_doc(q, emit, depth + 1) for q in value]
            joined = emit.all(subs) if key == "$and" else emit.any(subs)
            parts.append(emit.negate(joined) if key == "$nor" else joined)
        elif isinstance(key, str) and key.startswith("$"):
            raise FilterError(f"unknown operator {key!r} at top level; use a field name, $and, $or or $nor")
        else:
            parts.append(_field(emit.path(_segments(key)), value, emit))
    return emit.all(parts)


def _segments(field) -> list[str]:
    """Path segments of a field name; dots reach into nested objects ("a.b")."""
    if not isinstance(field, str) or not field or len(field) > 256:
        raise FilterError(f"invalid field name {field!r}")
    segments = field.split(".")
    for seg in segments:
        if not seg or '"' in seg or "\\" in seg or any(c < " " for c in seg):
            raise FilterError(f"invalid field name {field!r}")
    return segments


def _field(path: str, cond, emit) -> str:
    if isinstance(cond, dict) and any(isinstance(k, str) and k.startswith("$") for k in cond):
        parts = []
        for op, value in cond.items():
            if op not in OPERATORS:
                raise FilterError(f"unknown operator {op!r}; expected one of {sorted(OPERATORS)}")
            parts.append(_op(path, op, value, emit))
        return emit.all(parts)
    return _op(path, "$eq", cond, emit)


def _op(path: str, op: str, value, emit) -> str:
    if op == "$eq":
        return emit.eq(path, _scalar(value, op))
    if op == "$ne":
        return emit.negate(emit.eq(path, _scalar(value, op)))
    if op in ("$in", "$nin"):
        if not isinstance(value, list):
            raise FilterError(f"{op} needs a list of values, got {type(value).__name__}")
        any_of = emit.any([emit.eq(path, _scalar(v, op)) for v in value]) if value else emit.false
        return any_of if op == "$in" else emit.negate(any_of)
    if op == "$exists":
        if not isinstance(value, bool):
            raise FilterError("$exists needs true or false")
        return emit.exists(path, value)
    return emit.compare(path, op, _scalar(value, op, ordered=True))


def _scalar(value, op: str, ordered: bool = False):
    if isinstance(value, bool) or value is None:
        if ordered:
            raise FilterError(f"{op} compares numbers or strings, got {value!r}")
        return value
    if isinstance(value, int) and not INT64[0] <= value <= INT64[1]:
        try:
            return float(value)
        except OverflowError:
            raise FilterError(f"{op} value is too large a number") from None
    if isinstance(value, (int, float)):
        if not math.isfinite(value):
            raise FilterError(f"{op} value must be a finite number, got {value!r}")
        return value
    if isinstance(value, str):
        return value
    raise FilterError(f"{op} value must be a string, number, boolean or null, got {type(value).__name__}")
