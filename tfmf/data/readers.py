"""Generic interaction-table reader (CSV/TSV/``;``/``|``/whitespace/``::`` text, optionally
gzip-compressed, and Parquet).

Text is read in blocks of complete lines (:data:`BLOCK_BYTES`), so the file's bytes are never
held whole. Each block is parsed by pyarrow's multithreaded CSV reader into typed columns
(int64 ids, float64 ratings, int64 timestamps) and validated vectorized. A block pyarrow
rejects (a short or long row, a non-numeric field, string ids, Latin-1 text, whitespace
delimiters) is re-parsed by pandas' C parser and the same checks, which locate the offending
row; only that block pays for it, so one bad row in the middle of a big file is reported about
as fast as a clean read. Ids are then encoded to int32 indices without a sort over all rows
(:func:`tfmf.data.interactions.encode_ids`).

Every :class:`~tfmf.errors.DataError` names ``file:line`` (1-based physical lines, the header
counts as line 1): a block records its first line, and its blank lines when it has any.
"""
from __future__ import annotations

import gzip
import io
import os
import re
import zlib
from dataclasses import dataclass
from typing import Any, BinaryIO, Iterator, Mapping

import numpy as np
import pandas as pd

from tfmf.data.interactions import InteractionData, encode_ids
from tfmf.errors import DataError

ROLES = ("user", "item", "rating", "timestamp")
# Header names recognised for each role (lower-cased, with '_' and spaces removed).
_ALIASES = {
    "user": {"user", "userid", "uid", "users", "customer", "customerid"},
    "item": {"item", "itemid", "iid", "movie", "movieid", "items", "product", "productid"},
    "rating": {"rating", "ratings", "score", "value", "weight", "stars"},
    "timestamp": {"timestamp", "ts", "time", "date", "datetime"},
}
_EXT_DELIMITERS = {".csv": ",", ".tsv": "\t", ".tab": "\t"}
_WHITESPACE = "whitespace"
# Sniffed in this order when the extension's delimiter does not split the sample lines.
_CANDIDATES = ("::", "\t", ",", ";", "|", _WHITESPACE)
_INT64_MAX = np.iinfo(np.int64).max
#: Bytes of complete lines parsed per block (pyarrow splits a block over its threads).
BLOCK_BYTES = 32 << 20
_HEAD_BYTES = 1 << 20
# Leading bytes of formats people pass by mistake -> what to call them.
_MAGIC = [
    (b"\x89PNG\r\n\x1a\n", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF8", "a GIF image"), (b"%PDF", "a PDF document"),
    (b"PK\x03\x04", "a zip archive (unzip it first)"), (b"PK\x05\x06", "an empty zip archive"),
    (b"BZh", "a bzip2 file (decompress it first)"), (b"\xfd7zXZ\x00", "an xz file "
     "(decompress it first)"), (b"(\xb5/\xfd", "a zstd file (decompress it first)"),
    (b"7z\xbc\xaf\x27\x1c", "a 7-zip archive"), (b"\x7fELF", "an executable (ELF)"),
    (b"\x89HDF", "an HDF5 file"), (b"SQLite format 3", "an SQLite database"),
    (b"\x93NUMPY", "a NumPy .npy array"),
]


def read_table(
    path: str | os.PathLike,
    *,
    format: str = "auto",
    delimiter: str | None = None,
    header: bool | None = None,
    columns: Mapping[str, str | int] | None = None,
    rating_scale: tuple[float, float] | list[float] | None = None,
    duplicates: str = "error",
    implicit: bool = False,
    name: str = "",
    encoding: str | None = None,
) -> InteractionData:
    """Reads a user/item/rating/timestamp table into an :class:`InteractionData`.

    Args:
      path: file path; gzip-compressed text (``.gz`` or not) is decompressed. A directory
        written by ``tfmf data convert`` (it holds ``manifest.json``) is read whole.
      format: "auto" (from the extension and the file's first bytes), "csv", "tsv" or
        "parquet". "csv"/"tsv" only pick the preferred delimiter.
      delimiter: field separator (",", "\\t", "::", ";", "|", ... or "whitespace"); None sniffs
        it: the extension's (or format's) delimiter when it splits the first lines into a
        consistent number (>= 2) of fields, else the first of ``::``, tab, ``,``, ``;``,
        ``|``, whitespace that does.
      header: whether line 1 is a header; None auto-detects: a first line with no numeric field
        followed by a line with one, or naming >= 2 known roles (userId, movieId, rating, ...),
        or role columns given by name.
      columns: role -> column name or 0-based index, roles among user/item/rating/timestamp.
        Missing roles default to recognised header names, else positions 0, 1, 2, 3.
      rating_scale: declared (min, max); ratings outside it are errors.
      duplicates: repeated (user, item) pairs: "error", "last" or "mean".
      implicit: implicit feedback; the rating column becomes optional (1.0 when absent).
      name: dataset name stored on the result.
      encoding: text encoding; None tries UTF-8, then Latin-1.

    Returns:
      InteractionData with sorted raw-id maps (ids may be ints or strings).

    Raises:
      DataError: naming the file and, where it applies, the 1-based line.
    """
    path = os.fspath(path)
    columns = dict(columns or {})
    bad_roles = set(columns) - set(ROLES)
    if bad_roles:
        raise DataError(f"unknown column role(s) {sorted(bad_roles)}; use {list(ROLES)}", path)
    kind = _check_path(path)
    if kind == "shards":
        from tfmf.data.shards import read_shards

        return read_shards(path)
    fmt = _infer_format(path, format)
    if kind == "parquet" and fmt != "parquet" and format == "auto":
        fmt = "parquet"  # Parquet bytes under another extension
    opts = _Options(rating_scale=None if rating_scale is None else tuple(rating_scale),
                    implicit=implicit)
    if fmt == "parquet":
        cols, blocks = _read_parquet(path, columns, implicit, opts)
    else:
        cols, blocks = _read_text(path, fmt, delimiter, header, columns, implicit, encoding,
                                  opts, gz=kind == "gzip")
    return _assemble(blocks, cols, path, opts, duplicates,
                     name or os.path.basename(_strip_gz(path)), implicit)


# ---------------------------------------------------------------------------- formats
def _strip_gz(path: str) -> str:
    return path[:-3] if path.lower().endswith(".gz") else path


def _infer_format(path: str, fmt: str) -> str:
    if fmt not in ("auto", "csv", "tsv", "parquet", "text"):
        raise DataError(f"unknown format {fmt!r}; use auto, csv, tsv or parquet", path)
    if fmt != "auto":
        return fmt
    ext = os.path.splitext(_strip_gz(path))[1].lower()
    return "parquet" if ext in (".parquet", ".pq") else "text"


def _check_path(path: str) -> str:
    """What ``path`` is: "shards", "parquet", "gzip" or "text"; else a DataError naming it.

    A missing path, a directory that is not a converted dataset, a file that cannot be read
    (permissions) and a file of another format (image, archive, binary) each get their own
    message.
    """
    if not os.path.exists(path):
        raise DataError("no such file", path)
    if os.path.isdir(path):
        if os.path.isfile(os.path.join(path, "manifest.json")):
            return "shards"
        raise DataError("is a directory, not a ratings file: give a .csv/.tsv/.dat/.txt/.parquet "
                        "file (optionally .gz), or a directory written by `tfmf data convert` "
                        "(this one has no manifest.json)", path)
    try:
        with open(path, "rb") as f:
            magic = f.read(16)
    except PermissionError:
        raise DataError("permission denied: cannot read this file (check its permissions)",
                        path) from None
    except OSError as e:
        raise DataError(f"cannot read this file: {e.strerror or e}", path) from None
    if magic[:2] == b"\x1f\x8b":
        return "gzip"
    if path.lower().endswith(".gz") and magic:
        raise DataError("truncated or corrupt gzip file (not gzip data)", path)
    if magic[:4] == b"PAR1":
        return "parquet"
    for sig, what in _MAGIC:
        if magic.startswith(sig):
            raise DataError(f"not a ratings table: this is {what}", path)
    return "text"


def _gzip_error(path: str, e: Exception) -> DataError:
    return DataError(f"truncated or corrupt gzip file ({type(e).__name__}: {e})", path)


def _read(f: BinaryIO, n: int, path: str, gz: bool) -> bytes:
    """``f.read(n)`` with decompression errors reported as a DataError naming the file."""
    try:
        return f.read(n)
    except (EOFError, gzip.BadGzipFile, zlib.error, OSError) as e:
        if gz:
            raise _gzip_error(path, e) from None
        raise DataError(f"cannot read this file: {e}", path) from None


def _sniff_delimiter(path: str, fmt: str, lines: list[str]) -> str:
    """The delimiter splitting the sample lines into the most fields, consistently.

    A candidate qualifies when it occurs in the first sample line (whitespace always may) and
    at least 80% of the sample lines have the same field count, >= 2. Among those the highest
    count wins (``1;10;4,5`` is ``;``), ties going to the format's or extension's delimiter,
    then to the order ``::``, tab, ``,``, ``;``, ``|``; runs of whitespace only when no other
    delimiter qualifies. With none qualifying (a
    malformed first line), the preferred delimiter, else the first one present, is used, so
    the parse error names the bad line.
    """
    ext = os.path.splitext(_strip_gz(path))[1].lower()
    preferred = {"csv": ",", "tsv": "\t"}.get(fmt) or _EXT_DELIMITERS.get(ext)
    order = ([preferred] if preferred else []) + [d for d in _CANDIDATES if d != preferred]
    best, best_count = None, 1
    for d in order:
        if d == _WHITESPACE and best is not None:
            break  # a real delimiter beats splitting on spaces (timestamps hold spaces)
        if d != _WHITESPACE and d not in lines[0]:
            continue
        counts = np.array([len(_split(ln, d)) for ln in lines])
        values, freq = np.unique(counts, return_counts=True)
        mode = int(values[np.argmax(freq)])
        if freq.max() >= 0.8 * len(counts) and mode > best_count:
            best, best_count = d, mode
    if best is not None:
        return best
    if preferred:
        return preferred  # the one-column / field-count error then names the line
    for d in _CANDIDATES[:-1]:
        if d in lines[0]:
            return d
    return _WHITESPACE


def _split(line: str, delim: str) -> list[str]:
    return line.split() if delim == _WHITESPACE else [f.strip() for f in line.split(delim)]


def _is_number(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


@dataclass
class _Options:
    rating_scale: tuple[float, float] | None
    implicit: bool


@dataclass
class _Layout:
    """How a text file's data rows are laid out (shared by every block)."""

    path: str
    delim: str
    ncols: int
    cols: dict
    encoding: str
    explicit_encoding: bool


def _read_text(path, fmt, delimiter, header, columns, implicit, encoding, opts, gz):
    """Sniffs the layout from the first lines, then parses the data rows block by block.

    Returns:
      (role -> column position, list of parsed :class:`_Block`).
    """
    opener = gzip.open if gz else open
    with opener(path, "rb") as f:
        buf = _read(f, _HEAD_BYTES, path, gz)
        enc = encoding or "utf-8"
        head = _head_lines(buf, enc, full=len(buf) == _HEAD_BYTES)
        if not head:
            raise DataError("empty file (no lines)", path)
        if b"\x00" in buf[:4096]:
            raise DataError("not a ratings table: binary data (NUL bytes) in a text file", path)
        first_lineno, first = head[0]
        second = head[1][1] if len(head) > 1 else None
        sample = [h[1].strip("\r\n") for h in head]
        delim = delimiter or _sniff_delimiter(path, fmt, sample if header is False or
                                              len(sample) < 2 else sample[1:])
        if delim in (" ", r"\s+"):
            delim = _WHITESPACE
        first_fields = _split(first, delim)
        if header is None:
            named = any(isinstance(v, str) and not v.isdigit() for v in columns.values())
            no_numbers = not any(_is_number(x) for x in first_fields)
            has_next_number = second is not None and any(_is_number(x)
                                                         for x in _split(second, delim))
            known = sum(any(_norm(x) in a for a in _ALIASES.values()) for x in first_fields)
            header = named or (no_numbers and (has_next_number or known >= 2))
        if header and second is None:
            raise DataError("header only: no data rows", path, first_lineno)
        data_first = _split(second, delim) if header else first_fields
        if len(data_first) < 2:
            shown = "whitespace" if delim == _WHITESPACE else repr(delim)
            raise DataError(
                f"only one column found using delimiter {shown}; wrong delimiter? "
                "Set data.delimiter", path, head[1][0] if header else first_lineno)
        names = first_fields if header else None
        cols = _map_columns(names or list(range(len(data_first))), columns, bool(header),
                            implicit, path, first_lineno)
        ncols = max(len(data_first), max(cols.values()) + 1)
        layout = _Layout(path, delim, ncols, cols, enc, encoding is not None)
        skip = first_lineno if header else 0
        pos = 0
        for _ in range(skip):
            nl = buf.find(b"\n", pos)
            pos = len(buf) if nl < 0 else nl + 1
        blocks = []
        row = 0
        state: dict = {}
        for data, line, n_lines in _line_blocks(f, buf[pos:], skip + 1, path, gz):
            block = _parse_block(data, line, n_lines, layout, opts, state)
            row += block.n
            blocks.append(block)
    if row == 0:
        raise DataError("no data rows", path, first_lineno)
    return cols, blocks


def _head_lines(buf: bytes, enc: str, full: bool, want: int = 50) -> list[tuple[int, str]]:
    """(1-based line, text) of the first ``want`` non-blank lines of the head buffer (a cut
    last line is left out when the buffer is full)."""
    out, pos, line = [], 0, 1
    while len(out) < want and pos < len(buf):
        nl = buf.find(b"\n", pos)
        if nl < 0:
            if full and out:
                break
            nl = len(buf)
        raw = buf[pos:nl]
        if raw.strip():
            out.append((line, raw.decode(enc, "replace")))
        pos, line = nl + 1, line + 1
    return out


def _line_blocks(f: BinaryIO, pending: bytes, first_line: int, path: str, gz: bool
                 ) -> Iterator[tuple[bytes, int, int]]:
    """Yields (bytes of complete lines, line number of the first, number of lines).

    Each block is ~BLOCK_BYTES read plus the rest of its last line (one copy of the bytes).
    """
    line = first_line
    while True:
        data = _read(f, BLOCK_BYTES, path, gz)
        if pending:
            data, pending = pending + data, b""
        if not data:
            return
        if not data.endswith(b"\n"):
            try:
                data += f.readline()
            except (EOFError, gzip.BadGzipFile, zlib.error, OSError) as e:
                raise (_gzip_error(path, e) if gz else DataError(f"cannot read: {e}", path)) \
                    from None
        n_lines = data.count(b"\n") + (0 if data.endswith(b"\n") else 1)
        yield data, line, n_lines
        line += n_lines


def _norm(name: Any) -> str:
    return re.sub(r"[\s_\-]", "", str(name)).lower()


def _map_columns(names, columns, header, implicit, path, line) -> dict[str, int]:
    """Resolves role -> 0-based column position from names/indices, aliases, then positions."""
    out: dict[str, int] = {}
    norm = [_norm(n) for n in names]
    for role, ref in columns.items():
        if isinstance(ref, (int, np.integer)) or (isinstance(ref, str) and ref.isdigit() and
                                                   str(ref) not in map(str, names)):
            idx = int(ref)
            if not 0 <= idx < len(names):
                raise DataError(f"column index {idx} for {role} is out of range: the file has "
                                f"{len(names)} column(s)", path, line)
        else:
            if ref not in [str(n) for n in names]:
                raise DataError(f"missing column {ref!r} for {role}; found "
                                f"{[str(n) for n in names]}", path, line)
            idx = [str(n) for n in names].index(ref)
        out[role] = idx
    if header:
        aliased = dict(out)
        for role in ROLES:
            hits = [k for k, n in enumerate(norm) if n in _ALIASES[role] and k not in out.values()]
            if role not in aliased and hits:
                aliased[role] = hits[0]
        if "user" in aliased and "item" in aliased:
            out = aliased  # a recognised header: absent roles are absent columns
            header = "resolved"
    if header != "resolved":
        free = [k for k in range(len(names)) if k not in set(out.values())]
        for role in ROLES:
            if role in out:
                continue
            if role == "rating" and implicit and len(names) < 3:
                continue
            if not free:
                if role in ("user", "item"):
                    raise DataError(f"no column for {role}: the file has {len(names)} "
                                    "column(s)", path, line)
                continue
            out[role] = free.pop(0)
    if "user" not in out or "item" not in out:
        raise DataError("missing user/item columns; set data.columns", path, line)
    if "rating" not in out and not implicit:
        raise DataError("missing rating column (set data.implicit: true for implicit data, "
                        "or data.columns.rating)", path, line)
    return out


# ---------------------------------------------------------------------------- validation
@dataclass
class _Source:
    """Where a block's rows came from, to turn a row number into a file line in errors.

    ``line_of[k]`` is the 1-based line of row k (None: ``first_line + k``; for Parquet the
    1-based row number); ``raw`` holds the block's bytes (text), re-split only to explain an
    error.
    """

    path: str
    line_of: np.ndarray | None = None
    raw: bytes | None = None
    encoding: str = "utf-8"
    delim: str | None = None
    need: int = 0
    first_line: int = 1

    def line(self, row: int) -> int:
        return int(self.line_of[row]) if self.line_of is not None else self.first_line + row

    def _fields(self, line: bytes) -> list[str]:
        return _split(line.decode(self.encoding, "replace"), self.delim)

    def error(self, row: int, message: str) -> DataError:
        """A DataError for a row; reports 'too few fields' when the raw line is short."""
        line = self.line(row)
        if self.raw is not None:
            fields = self._fields(self.raw.splitlines()[line - self.first_line])
            if len(fields) < self.need:
                message = f"too few fields: expected {self.need}, found {len(fields)}"
        return DataError(message, self.path, line)

    def raise_first_bad_line(self, ncols: int) -> None:
        """Slow path after a parser failure: names the first line with a wrong field count."""
        for k, ln in enumerate(self.raw.splitlines(), start=self.first_line):
            if not ln.strip():
                continue
            fields = self._fields(ln)
            if len(fields) < self.need:
                raise DataError(f"too few fields: expected {self.need}, found {len(fields)}",
                                self.path, k)
            if len(fields) > ncols:
                raise DataError(f"too many fields: expected {ncols}, found {len(fields)}",
                                self.path, k)


def _first(mask: np.ndarray) -> int | None:
    hits = np.flatnonzero(mask)
    return int(hits[0]) if len(hits) else None


def _id_column(s: pd.Series, role: str, src: _Source) -> np.ndarray:
    """Ids as int64 when every id is an integer, else as strings; rejects bad integer ids."""
    kind = s.dtype.kind
    if kind in "iu":
        arr = s.to_numpy()
        if kind == "u" and (r := _first(arr > _INT64_MAX)) is not None:
            raise src.error(r, f"{role} id {arr[r]} overflows int64")
        if kind == "i" and (r := _first(arr < 0)) is not None:
            raise src.error(r, f"negative {role} id {arr[r]}")
        return arr.astype(np.int64, copy=False)
    if kind == "f":  # integers with gaps (missing fields) or non-integral numbers
        arr = s.to_numpy()
        if (r := _first(np.isnan(arr))) is not None:
            raise src.error(r, f"missing {role} id")
        if (r := _first((arr != np.round(arr)) | (np.abs(arr) >= 2.0 ** 63))) is not None:
            raise src.error(r, f"{role} id {arr[r].item()!r} is not an int64 integer or a string")
        if (r := _first(arr < 0)) is not None:
            raise src.error(r, f"negative {role} id {int(arr[r])}")
        return arr.astype(np.int64)
    # object: string ids, or integers too large for uint64 mixed with others.
    if (r := _first(s.isna().to_numpy())) is not None:
        raise src.error(r, f"missing {role} id")
    vals = s.astype(str).str.strip()
    is_int = vals.str.fullmatch(r"[+-]?\d+").to_numpy()
    if not is_int.any():
        return vals.to_numpy().astype(str)
    if (r := _first(is_int & vals.str.startswith("-").to_numpy())) is not None:
        raise src.error(r, f"negative {role} id {vals.iloc[r]}")
    for r in np.flatnonzero(is_int & (vals.str.len().to_numpy() >= 19)):
        if int(vals.iloc[r]) > _INT64_MAX:
            raise src.error(int(r), f"{role} id {vals.iloc[r]} overflows int64")
    if is_int.all():
        return vals.to_numpy().astype(np.int64)
    return vals.to_numpy().astype(str)  # mixed: every id as a string so they sort together


def _numeric_column(s: pd.Series, role: str, src: _Source, integer: bool) -> np.ndarray:
    """A rating (float64) or timestamp (int64) column; rejects text, NaN, inf and overflow."""
    if s.dtype.kind not in "iuf":
        num = pd.to_numeric(s, errors="coerce")
        if (r := _first((num.isna() & s.notna()).to_numpy())) is not None:
            raise src.error(r, f"non-numeric {role} {s.iloc[r]!r}")
        s = num
    arr = s.to_numpy()
    if arr.dtype.kind == "f":
        if (r := _first(np.isnan(arr))) is not None:
            raise src.error(r, f"{role} is NaN or missing")
        if (r := _first(np.isinf(arr))) is not None:
            raise src.error(r, f"{role} is infinite")
    if not integer:
        return arr.astype(np.float64, copy=False)
    if arr.dtype.kind == "u" and (r := _first(arr > _INT64_MAX)) is not None:
        raise src.error(r, f"{role} overflows int64")
    if arr.dtype.kind == "f" and (r := _first(np.abs(arr) >= 2.0 ** 63)) is not None:
        raise src.error(r, f"{role} overflows int64")
    return arr.astype(np.int64, copy=False)


@dataclass
class _Block:
    """One block's validated columns and where its rows sit in the file."""

    n: int
    first_line: int
    line_of: np.ndarray | None  # None: row k is on line first_line + k (no blank lines)
    users: np.ndarray
    items: np.ndarray
    values: np.ndarray | None  # float32
    timestamps: np.ndarray | None
    # rating-scale violations: (count, first row in the block, its value)
    out_of_scale: tuple[int, int, float] | None = None


def _narrow(arr: np.ndarray) -> np.ndarray:
    """int64 -> int32 when every value fits: blocks wait for the whole file at half the size."""
    if arr.dtype == np.int64 and arr.size and -(1 << 31) <= arr.min() and arr.max() < (1 << 31):
        return arr.astype(np.int32)
    return arr


def _scale_check(values: np.ndarray, opts: _Options) -> tuple[int, int, float] | None:
    if opts.rating_scale is None:
        return None
    lo, hi = opts.rating_scale
    bad = np.flatnonzero((values < lo) | (values > hi))
    return (len(bad), int(bad[0]), float(values[bad[0]])) if len(bad) else None


def _block_from_columns(get, n: int, src: _Source, cols: dict, opts: _Options
                        ) -> _Block:
    """Validates a block's role columns (``get(role) -> pd.Series``) into a :class:`_Block`."""
    src.need = max(cols.values()) + 1
    users = _narrow(_id_column(get("user"), "user", src))
    items = _narrow(_id_column(get("item"), "item", src))
    values = out = None
    if "rating" in cols:
        v64 = _numeric_column(get("rating"), "rating", src, integer=False)
        out = _scale_check(v64, opts)
        values = v64.astype(np.float32)
        del v64
    ts = (_narrow(_numeric_column(get("timestamp"), "timestamp", src, integer=True))
          if "timestamp" in cols else None)
    return _Block(n, src.first_line, src.line_of, users, items, values, ts, out)


def _parse_block(data: bytes, first_line: int, n_lines: int, layout: _Layout,
                 opts: _Options, state: dict) -> _Block:
    """pyarrow's typed parse of a block, else the pandas parse that locates what is wrong."""
    if layout.delim == "::":
        # Single-character separators only; "::" never occurs inside MovieLens fields, so
        # mapping it to a tab is lossless.
        data = data.replace(b"::", b"\t")
    delim = "\t" if layout.delim == "::" else layout.delim
    if delim != _WHITESPACE and state.get("fast_failures", 0) < 2:
        block = _parse_block_fast(data, first_line, n_lines, layout, delim, opts)
        if block is not None:
            state["fast_failures"] = 0
            return block
        state["fast_failures"] = state.get("fast_failures", 0) + 1
    return _parse_block_slow(data, first_line, layout, delim, opts)


_ARROW_TYPES = {"user": "int64", "item": "int64", "rating": "float64", "timestamp": "int64"}


def _parse_block_fast(data: bytes, first_line: int, n_lines: int, layout: _Layout,
                      delim: str, opts: _Options) -> _Block | None:
    """None when pyarrow rejects the block (the slow path then explains why)."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    names = [str(k) for k in range(layout.ncols)]
    try:
        table = pacsv.read_csv(
            pa.py_buffer(data),
            read_options=pacsv.ReadOptions(column_names=names, block_size=4 << 20,
                                           encoding="utf8" if not layout.explicit_encoding
                                           else layout.encoding),
            parse_options=pacsv.ParseOptions(delimiter=delim, ignore_empty_lines=True),
            convert_options=pacsv.ConvertOptions(
                column_types={str(k): getattr(pa, _ARROW_TYPES[r])()
                              for r, k in layout.cols.items()},
                include_columns=[str(k) for k in layout.cols.values()]))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, UnicodeDecodeError, ValueError):
        return None
    n = table.num_rows
    line_of = None
    if n != n_lines:  # blank lines were skipped: number the rows that remain
        buf = np.frombuffer(data, np.uint8)
        nl = np.flatnonzero(buf == 10)
        starts = np.concatenate([[0], nl + 1])[:n_lines]
        ends = np.concatenate([nl, [len(buf)]])[:n_lines]
        length = ends - starts
        has_cr = (length > 0) & (buf[np.maximum(ends - 1, 0)] == 13)
        line_of = np.flatnonzero(length - has_cr > 0) + first_line
        if len(line_of) != n:  # e.g. quoted newlines: let pandas number the rows
            return None
    src = _Source(layout.path, line_of, None, layout.encoding, delim, 0, first_line)
    for role, k in layout.cols.items():
        col = table.column(str(k))
        if col.null_count:
            r = _first(col.is_null().to_numpy(zero_copy_only=False))
            raise src.error(r, f"missing {role} id" if role in ("user", "item") else
                            f"{role} is NaN or missing")

    def get(role: str) -> pd.Series:
        return pd.Series(table.column(str(layout.cols[role])).to_numpy(), copy=False)

    return _block_from_columns(get, n, src, layout.cols, opts)


def _parse_block_slow(data: bytes, first_line: int, layout: _Layout, delim: str,
                      opts: _Options) -> _Block:
    kwargs: dict[str, Any] = dict(header=None, names=list(range(layout.ncols)),
                                  skip_blank_lines=False, engine="c", index_col=False)
    if delim == _WHITESPACE:
        kwargs["sep"] = r"\s+"
    else:
        kwargs["sep"] = delim
        kwargs["skipinitialspace"] = True
    src = _Source(layout.path, None, data, layout.encoding, delim,
                  max(layout.cols.values()) + 1, first_line)
    try:
        try:
            frame = pd.read_csv(io.BytesIO(data), encoding=src.encoding, low_memory=False,
                                **kwargs)
        except UnicodeDecodeError:
            if layout.explicit_encoding:
                raise
            src.encoding = "latin-1"  # e.g. MovieLens files; every byte decodes
            frame = pd.read_csv(io.BytesIO(data), encoding="latin-1", low_memory=False,
                                **kwargs)
    except Exception as e:  # ParserError (too many fields, bad quoting, ...)
        src.raise_first_bad_line(layout.ncols)
        raise DataError(f"cannot parse: {type(e).__name__}: {e}", layout.path) from None
    # With skip_blank_lines=False row k is line first_line + k; blank lines come back as
    # all-NaN rows and are dropped here.
    blank = frame.isna().all(axis=1).to_numpy()
    if blank.any():
        src.line_of = np.flatnonzero(~blank) + first_line
        frame = frame.loc[~blank].reset_index(drop=True)
    return _block_from_columns(lambda role: frame[layout.cols[role]], len(frame), src,
                               layout.cols, opts)


def _read_parquet(path: str, columns, implicit, opts: _Options) -> tuple[dict, list[_Block]]:
    """Reads only the role columns of a Parquet file (row k is "line" k + 1 in errors)."""
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
        names = list(pf.schema_arrow.names)
        cols = _map_columns(names, columns, True, implicit, path, None)
        table = pf.read(columns=[names[k] for k in cols.values()])
    except DataError:
        raise
    except Exception as e:  # pyarrow raises several types for corrupt files
        raise DataError(f"cannot read Parquet file: {e}", path) from None
    if table.num_rows == 0:
        raise DataError("no rows (empty Parquet table)", path)
    src = _Source(path, None, first_line=1)

    def get(role: str) -> pd.Series:
        return table.column(names[cols[role]]).to_pandas()

    return cols, [_block_from_columns(get, table.num_rows, src, cols, opts)]


def _fill(blocks: list[_Block], attr: str, n: int, dtype) -> np.ndarray:
    """One column of every block in a preallocated array, freeing each block's part."""
    out = np.empty(n, dtype)
    off = 0
    for b in blocks:
        part = getattr(b, attr)
        out[off:off + len(part)] = part
        off += len(part)
        setattr(b, attr, None)
    return out


def _assemble(blocks: list[_Block], cols: dict, path: str, opts: _Options, duplicates: str,
              name: str, implicit: bool) -> InteractionData:
    """Concatenates validated blocks into an InteractionData (ids encoded block by block)."""
    first_row = np.cumsum([0] + [b.n for b in blocks])[:-1]

    def line_of(row: int) -> int:
        k = int(np.searchsorted(first_row, row, side="right")) - 1
        b, r = blocks[k], row - int(first_row[k])
        return int(b.line_of[r]) if b.line_of is not None else b.first_line + r

    bad = [(b.out_of_scale, int(off)) for b, off in zip(blocks, first_row) if b.out_of_scale]
    if bad:
        lo, hi = opts.rating_scale
        (_, r, v), off = bad[0]
        raise DataError(f"rating {v:g} outside the declared scale [{lo:g}, {hi:g}]; "
                        f"{sum(c for (c, _, _), _ in bad)} such row(s)", path, line_of(off + r))
    ids = {}
    for role in ("user", "item"):
        parts = [getattr(b, role + "s") for b in blocks]
        if any(p.dtype.kind not in "iu" for p in parts):
            # Some block has string ids: every id is a string, so they sort together.
            parts = [p.astype(str) if p.dtype.kind in "iu" else p for p in parts]
        ids[role] = encode_ids(parts)
        for b in blocks:
            setattr(b, role + "s", None)  # free the raw ids as soon as they are encoded
        del parts
    n = int(sum(b.n for b in blocks))
    values = _fill(blocks, "values", n, np.float32) if "rating" in cols \
        else np.ones(n, np.float32)
    ts = _fill(blocks, "timestamps", n, np.int64) if "timestamp" in cols else None
    (user_ids, users), (item_ids, items) = ids["user"], ids["item"]
    del ids
    return InteractionData.from_indices(
        users, items, values, user_ids, item_ids, ts, rating_scale=opts.rating_scale,
        implicit=bool(implicit) or "rating" not in cols, duplicates=duplicates, name=name,
        source=path, line_numbers=line_of)
