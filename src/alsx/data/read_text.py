"""The reader of delimited text: CSV / TSV and whitespace edge lists, optionally compressed.

Text is parsed block by block with ``pyarrow.csv`` (vectorised, bounded memory); only
after pyarrow rejects a block is that block re-scanned line by line in Python to name
the bad line.  A header line, the column roles and the id type of each id column are
decided from the first data lines (see :func:`alsx.data.ingest.load_interactions`).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from alsx.data import text_blocks as tb  # by module: tests shrink tb.BLOCK_BYTES
from alsx.data.columns import FLAGS, columns_note, narrow, resolve_names
from alsx.data.raw import Location, Raw, fail, first_index
from alsx.data.text_sniff import TYPES, WS, Dialect, field_problem, is_number, peek_lines
from alsx.errors import UsageError

log = logging.getLogger("alsx.data.ingest")  # the logger name users configure, as before the split


class _StringIds(Exception):
    """Raised inside a text pass when an id column turns out not to be integers."""

    def __init__(self, role: str) -> None:
        self.role = role


@dataclasses.dataclass
class _TextLayout:
    """Where the entries of one text file are; enough to re-read any block later."""

    path: str
    dialect: Dialect
    data_start: int  # byte offset of the first entry line (after any header)
    header_lines: int  # physical lines before data_start; -1: not counted yet (see lines_before)
    n_fields: int
    pos: dict[str, int]  # role -> field number
    labels: dict[str, str]
    types: dict[str, str]  # role -> "int" / "str" / "float" / "bool"
    data_end: int | None = None  # end of the part read (None: the end of the file)

    def lines_before(self) -> int:
        """Physical lines before data_start; for a part of the file counted on first use
        (only an error message needs it, so a process never reads the bytes before its part)."""
        if self.header_lines < 0:
            self.header_lines = tb.count_newlines(self.path, self.data_start)
        return self.header_lines


def _explain_block(block: bytes, lines_before: int, lay: _TextLayout) -> tuple[int, str, str, str | None] | None:
    """The first line of ``block`` pyarrow would refuse: (line number, text, problem, role)."""
    for k, raw in enumerate(block.split(b"\n")):
        lineno = lines_before + k + 1
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            return lineno, raw.decode("utf-8", "replace"), "invalid UTF-8", None
        if not lay.dialect.is_data(line):
            continue
        text = line.rstrip("\r\n")
        fields = lay.dialect.split(line)
        if len(fields) != lay.n_fields:
            return lineno, text, f"expected {lay.n_fields} fields, got {len(fields)}", None
        for role, p in lay.pos.items():
            why = field_problem(fields[p], lay.types[role])
            if why:
                what = {"row": "row id", "col": "column id", "is_test": "is_test flag"}.get(role, role)
                return lineno, text, f"{what} {fields[p]!r} in {lay.labels[role]} {why}", role
    return None


def _parse_text(lay: _TextLayout, ids: str) -> tuple[dict[str, list], list[tuple[int, int]]]:
    """One pass over the file: per-role column pieces, and (first entry, lines before) per block.

    Raises:
      _StringIds: an integer-typed id column holds something else and ids != "index".
      IngestError: any other malformed line.
    """
    path = lay.path
    internal = [f"c{i}" for i in range(lay.n_fields)]  # header names may repeat or be empty
    used = [internal[p] for p in dict.fromkeys(lay.pos.values())]
    convert = pacsv.ConvertOptions(
        column_types={internal[p]: TYPES[lay.types[r]] for r, p in lay.pos.items()},
        include_columns=used,
        null_values=[],  # an empty field is an error, never a silent null
        strings_can_be_null=False,
        quoted_strings_can_be_null=False,
        true_values=["true", "True", "TRUE", "1"],
        false_values=["false", "False", "FALSE", "0"],
    )
    parse = pacsv.ParseOptions(
        delimiter=lay.dialect.sep,
        quote_char=False if lay.dialect.edgelist else '"',
        newlines_in_values=False,  # one physical line = one entry, so line numbers stay exact
        ignore_empty_lines=True,
    )
    read = pacsv.ReadOptions(column_names=internal, block_size=8 << 20)
    pieces: dict[str, list] = {role: [] for role in lay.pos}
    blocks: list[tuple[int, int]] = []
    n_entries, rel = 0, 0  # rel: lines since data_start
    for _, block in tb.blocks(path, lay.data_start, tb.BLOCK_BYTES, lay.data_end):
        data = tb.normalise_whitespace(block) if lay.dialect.edgelist else block
        table = None
        if len(data):
            try:
                table = pacsv.read_csv(
                    pa.py_buffer(data), read_options=read, parse_options=parse, convert_options=convert
                )
            except pa.ArrowInvalid as e:
                found = _explain_block(block, 0, lay)  # line numbers within the block
                if found is not None and found[3] in ("row", "col") and ids != "index" and lay.types[found[3]] == "int":
                    raise _StringIds(found[3]) from None
                lines_before = lay.lines_before() + rel  # only now: counting may read the bytes before a part
                if found is None:  # our scan disagrees with pyarrow: still name the file and lines
                    last = lines_before + block.count(b"\n")
                    raise fail(path, f"lines {lines_before + 1}-{last}", f"unparseable ({e})") from None
                lineno, text, problem, role = found
                lineno += lines_before
                if role in ("row", "col"):
                    problem += (
                        " (--ids index needs non-negative integer indices; pass --ids map (ids='map') for other ids)"
                    )
                raise fail(path, f"line {lineno} ({text!r})", problem) from None
        blocks.append((n_entries, rel))
        if table is not None and table.num_rows:
            for role, p in lay.pos.items():
                c = table.column(internal[p])
                if lay.types[role] == "str":
                    pieces[role].extend(c.chunks)
                elif role in ("row", "col"):
                    pieces[role].append(narrow(c.to_numpy()))
                else:
                    pieces[role].append(c.to_numpy(zero_copy_only=False))
            n_entries += table.num_rows
        rel += block.count(b"\n")
    return pieces, blocks


def _text_locator(lay: _TextLayout, blocks: list[tuple[int, int]]) -> Location:
    entry_starts = np.array([b[0] for b in blocks], dtype=np.int64)

    def locate(positions: Sequence[int]) -> list[str]:
        """Re-reads only the blocks holding ``positions`` to name their lines (error path only)."""
        want: dict[int, dict[int, int]] = {}  # block -> {data line within block: position}
        for p in positions:
            b = int(np.searchsorted(entry_starts, p, side="right") - 1)
            want.setdefault(b, {})[int(p) - blocks[b][0]] = int(p)
        found: dict[int, str] = {}
        for b, (_, block) in enumerate(tb.blocks(lay.path, lay.data_start, tb.BLOCK_BYTES, lay.data_end)):
            if b in want:
                j = 0
                for k, raw in enumerate(block.split(b"\n")):
                    line = raw.decode("utf-8", "replace")
                    if not lay.dialect.is_data(line):
                        continue
                    if j in want[b]:
                        found[want[b][j]] = f"line {lay.lines_before() + blocks[b][1] + k + 1} ({line.rstrip(WS)!r})"
                    j += 1
            if b >= max(want):
                break
        return [found.get(int(p), f"entry {int(p)}") for p in positions]

    return locate


def read_text(
    path: str,
    *,
    fmt: str,
    refs: dict,
    sep: str | None,
    header,
    ids: str,
    square: bool,
    part: tuple[int, int] | None = None,
    str_roles: tuple[str, ...] = (),
) -> Raw:
    if fmt == "edgelist" and sep is not None:
        raise UsageError("edge lists are whitespace-separated; sep= applies to CSV (fmt='csv', --format csv)")
    peek = peek_lines(path, edgelist=fmt == "edgelist")
    if not peek:
        raise fail(path, None, "no entries (the file is empty or only comments)")
    if fmt == "txt":  # '#'/'%' comments or no comma: a whitespace edge list; otherwise CSV
        first = peek[0][2].lstrip(WS)
        fmt = "csv" if sep is not None or ("," in first and first[:1] not in "#%") else "edgelist"
        if fmt == "edgelist":
            peek = peek_lines(path, edgelist=True)
    edgelist = fmt == "edgelist"
    dialect = Dialect(edgelist, " " if edgelist else (sep if sep is not None else ("\t" if fmt == "tsv" else ",")))
    if len(dialect.sep) != 1:
        raise UsageError(f"sep must be one character, got {sep!r}")

    first_line, first_end, first_text = peek[0]
    fields = dialect.split(first_text)
    first_where = f"line {first_line} ({first_text.rstrip(WS)!r})"
    named = {role: r for role, r in refs.items() if isinstance(r, str)}
    if header == "infer":  # see load_interactions: names need a header; else CSV: no number in the first line
        header = bool(named) or (not edgelist and not any(is_number(f) for f in fields))
    if header:
        names = [n.strip() for n in fields]
        header_lines, data_start = first_line, first_end
        log.info("%s: header on line %d: %s", path, first_line, names)
        missing = [role for role, r in named.items() if r not in names]
        numbers = [f for f in fields if is_number(f)]
        if missing and numbers:  # the "header" is an entry: names cannot refer to anything
            role = missing[0]
            raise fail(
                path,
                first_where,
                (
                    f"{FLAGS[role]} {named[role]!r} names a column, but the first line is not a header (it holds "
                    f"numbers, e.g. {numbers[0]!r}): add a header line naming the columns, or give them by 0-based "
                    f"number ({FLAGS[role]} 0 ...; this line has {len(fields)} fields)"
                ),
            )
        described = f"the header (line {first_line}) names the columns {names}"
    else:
        if named:
            role = next(iter(named))
            raise fail(
                path,
                None,
                f"{FLAGS[role]} {named[role]!r} is a column name but header=False; give columns by 0-based number",
            )
        names = [str(i) for i in range(len(fields))]
        header_lines, data_start = 0, 0
        described = f"there is no header, and {first_where} has {len(fields)} fields"

    defaults = {"row": 0, "col": 1}
    if edgelist and len(names) >= 3:
        defaults["value"] = 2  # src dst weight
    pos = resolve_names(names, refs, path, defaults, where=first_where if header else None, described=described)
    lay = _TextLayout(
        path=path,
        dialect=dialect,
        data_start=data_start,
        header_lines=header_lines,
        n_fields=len(names),
        pos=pos,
        labels={role: (f"column {names[p]!r}" if header else f"column {p}") for role, p in pos.items()},
        types={"row": "int", "col": "int", "value": "float", "timestamp": "int", "is_test": "bool"},
    )
    if part is not None:  # only this part's lines (see part_byte_range)
        if path.lower().endswith(tb.COMPRESSION_SUFFIXES):
            raise fail(
                path,
                None,
                "a compressed text file cannot be split between processes (its bytes cannot be "
                "addressed without decompressing all before them); decompress it, convert it to Parquet, or "
                "build a dataset folder (alsx webgraph build)",
            )
        start, end = tb.part_byte_range(path, data_start, *part)
        lay.header_lines = header_lines if start == data_start else -1
        lay.data_start, lay.data_end = start, end
    for role in str_roles:
        lay.types[role] = "str"
    inferred = list(str_roles)
    while True:  # integer ids first (compact); a column with other ids is re-read as strings
        try:
            pieces, blocks = _parse_text(lay, ids)
            break
        except _StringIds as e:
            switch = ("row", "col") if square else (e.role,)  # a shared vocabulary needs one id type
            for role in switch:
                lay.types[role] = "str"
                inferred.append(role)
            log.info("%s: non-integer ids in %s; re-reading them as strings", path, ", ".join(switch))
    locate = _text_locator(lay, blocks)

    def joined(role: str) -> Any:
        if role not in pos:
            return None
        parts = pieces[role]
        if lay.types[role] == "str":
            return pa.chunked_array(parts, type=TYPES["str"])
        if not parts:
            return np.zeros(
                0,
                dtype={"row": np.int32, "col": np.int32, "value": np.float64, "timestamp": np.int64, "is_test": bool}[
                    role
                ],
            )
        return np.concatenate(parts) if len(parts) > 1 else parts[0]

    raw = Raw.by_role(
        path,
        joined,
        lay.labels,
        locate,
        inferred_str=tuple(dict.fromkeys(inferred)),
        columns=columns_note(lay.labels, f"header line {first_line}" if header else "no header line"),
    )
    for role, c in (("row", raw.rows), ("col", raw.cols)):  # an empty string id is a missing field
        if isinstance(c, pa.ChunkedArray) and len(c):
            empty = pc.equal(pc.utf8_length(c), 0)
            if pc.any(empty).as_py():
                i = first_index(empty.to_numpy(zero_copy_only=False))
                raise fail(path, locate([i])[0], f"empty {role} id in {lay.labels[role]}")
    return raw
