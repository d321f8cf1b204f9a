"""The one JSON reader for every input the host (or any other untrusted party) can write.

`json.loads` on its own has four ways to fail that are not `JSONDecodeError`, and one way to
succeed that is wrong for signed data:
- an integer of more than 4,300 digits raises ValueError (CPython's int-conversion limit), and a
  shorter one still costs quadratic time;
- `NaN`, `Infinity` and a float like `1e999` (which becomes inf) are not JSON numbers (RFC 8259 §6);
- deep nesting raises RecursionError, or with a raised recursion limit crashes the interpreter;
- a duplicate key is read last-key-wins, so `{"version": 5, ..., "version": 99}` means 99 to us and
  may mean 5 to whoever reviewed it (RFC 8259 §4: names SHOULD be unique; we require it).

`loads` refuses all of these before or while parsing and raises the caller's GateError subclass
(one line: origin, field, problem), so no parser of host data lets anything else escape.
Depth is counted on the raw text before `json.loads` recurses at all.
"""

from __future__ import annotations

import json
import re
from typing import Any

from initdata.errors import GateError

MAX_DEPTH = 32  # warden's formats nest at most ~5 deep (bundle payload -> agent settings)
MAX_NUMBER_CHARS = 40  # 2**63 has 19 digits; a float's repr at most ~24 characters
# JSON strings (with escapes) are removed before counting brackets: a "[" inside a string does not nest.
_STRING = re.compile(r'"(?:[^"\\]++|\\.)*+"', re.DOTALL)
_BRACKET = re.compile(r"[\[\]{}]")


class _Refused(Exception):
    """Raised inside json.loads' hooks; turned into the caller's GateError by `loads`."""


def _parse_int(text: str) -> int:
    if len(text) > MAX_NUMBER_CHARS:
        raise _Refused(f"an integer of {len(text)} characters exceeds the {MAX_NUMBER_CHARS}-character limit")
    return int(text)


def _parse_float(text: str) -> float:
    if len(text) > MAX_NUMBER_CHARS:
        raise _Refused(f"a number of {len(text)} characters exceeds the {MAX_NUMBER_CHARS}-character limit")
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise _Refused(f"{text[:20]} is out of range for a number")
    return value


def _parse_constant(text: str) -> Any:
    raise _Refused(f"{text} is not a JSON value")


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    document: dict[str, Any] = {}
    for key, value in pairs:
        if key in document:
            raise _Refused(f"duplicate key {key[:60]!r}")
        document[key] = value
    return document


def nesting_depth(text: str, *, limit: int = MAX_DEPTH) -> int:
    """The deepest nesting of arrays and objects in `text`, stopping as soon as it passes `limit`."""
    depth = deepest = 0
    for match in _BRACKET.finditer(_STRING.sub("", text)):
        depth += 1 if match.group() in "[{" else -1
        if depth > deepest:
            deepest = depth
            if deepest > limit:
                break
    return deepest


def loads(
    data: bytes | str, *, origin: str, field: str, error: type[GateError], max_depth: int = MAX_DEPTH
) -> Any:
    """Strict JSON text -> Python value; `error(origin, field, problem)` for anything refused."""
    if isinstance(data, bytes):
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise error(origin, field, f"not JSON (not UTF-8 at byte {exc.start})") from None
    else:
        text = data
    if nesting_depth(text, limit=max_depth) > max_depth:
        raise error(origin, field, f"not accepted: nested deeper than {max_depth} levels")
    try:
        return json.loads(
            text,
            parse_int=_parse_int,
            parse_float=_parse_float,
            parse_constant=_parse_constant,
            object_pairs_hook=_object,
        )
    except _Refused as exc:
        raise error(origin, field, f"not accepted: {exc}") from None
    except json.JSONDecodeError as exc:
        raise error(origin, field, f"not JSON ({exc.msg})") from None
    except (RecursionError, ValueError) as exc:  # belt and braces: the depth count should prevent both
        raise error(origin, field, f"not JSON ({type(exc).__name__})") from None
