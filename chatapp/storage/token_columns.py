"""A reply's token records as column arrays: compact to store, exact to read back.

One dict per candidate would repeat every key 10 times per token; a 200-turn chat holds some
200,000 candidates. Instead each field is one list (a column), candidates are flattened across
steps with a per-step count, raw bytes (`piece`) are one base64 blob plus lengths, and floats
are base64 of little-endian IEEE float64 (`FLOAT_LAYOUT`): bit-identical, a third of the size of
their decimal form, and parsed at C speed (a 200-turn chat holds some 460,000 of them).

Pure Python: no torch, no Textual.
"""

from __future__ import annotations

import base64
import sys
from array import array
from itertools import accumulate
from typing import Any, Iterable

from chatapp.chat.records import Candidate, Step

STEP_INT_COLUMNS = ("step", "token_id", "rank")
"""Integer fields of `Step` stored as columns."""
STEP_FLOAT_COLUMNS = ("prob", "raw_prob", "entropy")
"""Float fields of `Step` stored as columns."""
STEP_FLAG_COLUMNS = ("is_stop", "forced")
"""Boolean fields of `Step`, stored as the sorted indices of the steps where they are true."""
FLOAT_LAYOUT = "<f8"
"""How float columns are packed, in numpy's notation: `np.frombuffer(base64.b64decode(s), "<f8")`."""
FLOAT_BYTES = 8
"""Bytes per packed float."""


class ColumnsError(ValueError):
    """The columns are damaged: a missing key, a wrong type or mismatched lengths."""


def _pack_bytes(pieces: Iterable[bytes]) -> tuple[str, list[int]]:
    pieces = list(pieces)
    return base64.b64encode(b"".join(pieces)).decode("ascii"), [len(p) for p in pieces]


def _pack_floats(values: Iterable[float]) -> str:
    packed = array("d", values)
    if sys.byteorder == "big":
        packed.byteswap()
    return base64.b64encode(packed.tobytes()).decode("ascii")


def steps_to_columns(steps: list[Step]) -> dict[str, Any]:
    """The steps of one reply as a JSON-ready dict of columns.

    Args:
        steps: the reply's token records, in order.

    Returns:
        A dict of equal-length lists (one entry per step), `top_*` lists flattened over all
        candidates with `top_count` giving each step's share, and flags as index lists.
    """
    cands = [c for s in steps for c in s.top]
    data: dict[str, Any] = {name: [getattr(s, name) for s in steps] for name in STEP_INT_COLUMNS}
    data.update({name: _pack_floats(getattr(s, name) for s in steps) for name in STEP_FLOAT_COLUMNS})
    data["text"] = [s.text for s in steps]
    data.update({name: [i for i, s in enumerate(steps) if getattr(s, name)] for name in STEP_FLAG_COLUMNS})
    data["piece"], data["piece_len"] = _pack_bytes(s.piece for s in steps)
    data["top_count"] = [len(s.top) for s in steps]
    data["top_token_id"] = [c.token_id for c in cands]
    data["top_text"] = [c.text for c in cands]
    data["top_prob"] = _pack_floats(c.prob for c in cands)
    data["top_raw_prob"] = _pack_floats(c.raw_prob for c in cands)
    data["top_piece"], data["top_piece_len"] = _pack_bytes(c.piece for c in cands)
    return data


def _column(data: dict, name: str, kinds: tuple[type, ...], length: int | None) -> list:
    """Column `name`, checked to be a list of `kinds` (bool never counts as a number)."""
    if name not in data:
        raise ColumnsError(f"token column {name!r} is missing")
    values = data[name]
    if not isinstance(values, list):
        raise ColumnsError(f"token column {name!r} is not a list")
    if length is not None and len(values) != length:
        raise ColumnsError(f"token column {name!r} has {len(values)} entries, expected {length}")
    if not set(map(type, values)) <= set(kinds):
        raise ColumnsError(f"token column {name!r} holds a value that is not {kinds[0].__name__}")
    return values


def _base64(data: dict, name: str) -> bytes:
    blob = data.get(name)
    if not isinstance(blob, str):
        raise ColumnsError(f"token column {name!r} is missing or not text")
    try:
        return base64.b64decode(blob, validate=True)
    except ValueError:
        raise ColumnsError(f"token column {name!r} is not valid base64") from None


def _floats(data: dict, name: str, length: int) -> list[float]:
    raw = _base64(data, name)
    if len(raw) != length * FLOAT_BYTES:
        raise ColumnsError(f"token column {name!r} has {len(raw) / FLOAT_BYTES:g} floats, expected {length}")
    values = array("d", raw)
    if sys.byteorder == "big":
        values.byteswap()
    return values.tolist()


def _unpack_bytes(data: dict, name: str, length: int) -> list[bytes]:
    raw = _base64(data, name)
    lengths = _column(data, f"{name}_len", (int,), length)
    ends = list(accumulate(lengths))
    if any(n < 0 for n in lengths) or (ends[-1] if ends else 0) != len(raw):
        raise ColumnsError(f"token column {name!r} does not match its lengths")
    return [raw[end - n:end] for end, n in zip(ends, lengths)]


def _flags(data: dict, name: str, length: int) -> list[bool]:
    flags = [False] * length
    for index in _column(data, name, (int,), None):
        if not 0 <= index < length:
            raise ColumnsError(f"token column {name!r} points past the last step")
        flags[index] = True
    return flags


def columns_to_steps(data: Any) -> list[Step]:
    """Rebuild the steps written by `steps_to_columns`.

    Raises:
        ColumnsError: when a column is missing, mistyped or of the wrong length.
    """
    if not isinstance(data, dict):
        raise ColumnsError("token records are not an object")
    n = len(_column(data, "token_id", (int,), None))
    ints = {name: _column(data, name, (int,), n) for name in STEP_INT_COLUMNS}
    floats = {name: _floats(data, name, n) for name in STEP_FLOAT_COLUMNS}
    texts = _column(data, "text", (str,), n)
    flags = {name: _flags(data, name, n) for name in STEP_FLAG_COLUMNS}
    pieces = _unpack_bytes(data, "piece", n)
    counts = _column(data, "top_count", (int,), n)
    if any(c < 0 for c in counts):
        raise ColumnsError("token column 'top_count' holds a negative count")
    total = sum(counts)
    cands = list(map(
        Candidate,
        _column(data, "top_token_id", (int,), total),
        _column(data, "top_text", (str,), total),
        _floats(data, "top_prob", total),
        _floats(data, "top_raw_prob", total),
        _unpack_bytes(data, "top_piece", total),
    ))
    ends = list(accumulate(counts))
    tops = [tuple(cands[end - c:end]) for end, c in zip(ends, counts)]
    return list(map(
        Step,
        ints["step"], ints["token_id"], texts, floats["prob"], floats["raw_prob"], ints["rank"],
        floats["entropy"], tops, flags["is_stop"], flags["forced"], pieces,
    ))
