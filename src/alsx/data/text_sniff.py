"""What the text reader decides from the first lines of a file: the dialect (delimiter, comment
lines), whether a field is a number, and why a field does not parse as its column's type."""

from __future__ import annotations

import csv
import dataclasses
import re

import pyarrow as pa

from alsx.data import guards
from alsx.data import text_blocks as tb
from alsx.data.raw import fail

INT_RE = re.compile(r"^\s*-?[0-9]+\s*$")  # what pyarrow accepts as int64 text
WS_SPLIT = re.compile(r"[ \t\v\f\r]+")
WS = " \t\v\f\r\n"
BOOL_TEXT = {"true": True, "false": False, "1": True, "0": False}


@dataclasses.dataclass(frozen=True)
class Dialect:
    """How one text file is split into fields."""

    edgelist: bool
    sep: str  # "," / "\t" / ... for CSV; " " after whitespace normalisation for edge lists

    def is_data(self, line: str) -> bool:
        """Whether a physical line is an entry (mirrors what pyarrow / normalisation keep)."""
        if self.edgelist:
            s = line.strip(WS)
            return bool(s) and s[0] not in "#%"
        return line.rstrip("\r\n") != ""

    def split(self, line: str) -> list[str]:
        if self.edgelist:
            return WS_SPLIT.split(line.strip(WS))
        return next(csv.reader([line.rstrip("\r\n")], delimiter=self.sep))


def is_number(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True


def peek_lines(path: str, edgelist: bool, limit: int = 1 << 20) -> list[tuple[int, int, str]]:
    """Up to two data lines as (1-based line number, byte offset just past it, text)."""
    dialect = Dialect(edgelist, " " if edgelist else ",")
    out: list[tuple[int, int, str]] = []
    chunks, got = [], 0
    with tb.open_stream(path) as f:
        while got < limit:  # in pieces: a damaged stream still gives its first lines (the parse names the line)
            try:
                piece = f.read(min(1 << 16, limit - got))
            except (OSError, pa.ArrowInvalid) as e:
                if not got:
                    raise tb.damaged(path, e, 0, None) from None
                break
            if not piece:
                break
            chunks.append(piece)
            got += len(piece)
    head = b"".join(chunks)
    try:
        guards.sniff_text(head)
    except guards.Refused as e:
        raise fail(path, e.where, e.problem) from None
    offset = 0
    for lineno, raw in enumerate(head.split(b"\n"), start=1):
        end = offset + len(raw) + 1
        offset = end
        if end > len(head) and len(head) == limit:
            break  # a line cut by the peek limit
        text = raw.decode("utf-8", "replace")
        if dialect.is_data(text):
            try:  # the header (or first entry) must be text: names read through "replace" would not match
                raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise fail(
                    path,
                    f"line {lineno} ({text.rstrip(WS)!r})",
                    f"invalid UTF-8 (byte 0x{raw[e.start]:02x}); alsx reads UTF-8 text",
                ) from None
            out.append((lineno, min(end, len(head)), text))
            if len(out) == 2:
                break
    return out


TYPES = {"int": pa.int64(), "str": pa.string(), "float": pa.float64(), "bool": pa.bool_()}


def field_problem(field: str, typ: str) -> str | None:
    """Why pyarrow would refuse ``field`` as ``typ`` (None if it is fine)."""
    if typ == "int":
        if not INT_RE.match(field):
            return "is not an integer"
        if not -(2**63) <= int(field) < 2**63:
            return "does not fit in int64"
    elif typ == "float":
        if "_" in field or not is_number(field):
            return "is not a number"
    elif typ == "bool":
        if field.strip().lower() not in BOOL_TEXT:
            return "is not a bool (true/false/1/0)"
    return None
