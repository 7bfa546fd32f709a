"""Generic interaction-table reader (CSV/TSV/whitespace/``::`` text, optionally .gz, and Parquet).

Parsing uses pandas' C parser for speed; validation is vectorized over whole columns. When a
check fails, the offending row is mapped back to its 1-based physical file line (the header
counts as line 1), so every :class:`~tfmf.errors.DataError` names ``file:line``.
"""
from __future__ import annotations

import gzip
import io
import os
import re
import zlib
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import pandas as pd

from tfmf.data.interactions import InteractionData
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
_INT64_MAX = np.iinfo(np.int64).max


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
      path: file path; ``.gz`` text files are decompressed.
      format: "auto" (from the extension), "csv", "tsv" or "parquet". "csv"/"tsv" only pick the
        default delimiter; any delimited text is read by the same parser.
      delimiter: field separator (",", "\\t", "::", ";", "|", ... or "whitespace"); None sniffs
        it from the extension, then from the first line.
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
    if not os.path.exists(path):
        raise DataError("no such file", path)
    columns = dict(columns or {})
    bad_roles = set(columns) - set(ROLES)
    if bad_roles:
        raise DataError(f"unknown column role(s) {sorted(bad_roles)}; use {list(ROLES)}", path)
    fmt = _infer_format(path, format)
    if fmt == "parquet":
        frame = _read_parquet(path)
        cols = _map_columns(list(frame.columns), columns, True, implicit, path, None)
        frame.columns = range(frame.shape[1])  # address columns by position, like text
        src = _Source(path, np.arange(1, len(frame) + 1, dtype=np.int64))
    else:
        frame, src, cols = _read_text(path, fmt, delimiter, header, columns, implicit, encoding)
    return _to_interactions(frame, cols, src, rating_scale, duplicates, implicit, name)


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


def _read_parquet(path: str) -> pd.DataFrame:
    try:
        frame = pd.read_parquet(path)
    except Exception as e:  # pyarrow raises several types for corrupt files
        raise DataError(f"cannot read Parquet file: {e}", path) from None
    if len(frame) == 0:
        raise DataError("no rows (empty Parquet table)", path)
    return frame


def _read_bytes(path: str) -> bytes:
    try:
        if path.lower().endswith(".gz"):
            with gzip.open(path, "rb") as f:
                return f.read()
        with open(path, "rb") as f:
            return f.read()
    except (EOFError, gzip.BadGzipFile, zlib.error, OSError) as e:
        raise DataError(f"truncated or corrupt gzip file ({type(e).__name__}: {e})", path) from None


def _sniff_delimiter(path: str, fmt: str, first_line: str) -> str:
    ext = os.path.splitext(_strip_gz(path))[1].lower()
    if fmt == "csv":
        return ","
    if fmt == "tsv":
        return "\t"
    if ext in _EXT_DELIMITERS:
        return _EXT_DELIMITERS[ext]
    for d in ("::", "\t", ",", ";", "|"):
        if d in first_line:
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


def _read_text(path, fmt, delimiter, header, columns, implicit, encoding):
    """Parses delimited text; returns (frame, _Source, role -> column position).

    pandas parses the raw bytes (a decoded ``str`` in StringIO would cost 4 bytes per char);
    only the first lines are decoded here, to sniff the delimiter and header.
    """
    raw = _read_bytes(path)
    enc = encoding or "utf-8"
    head = [(k, ln.decode(enc, "replace")) for k, ln in
            enumerate(raw[: 1 << 20].splitlines(), start=1) if ln.strip()]
    if not head:
        raise DataError("empty file (no lines)", path)
    first_lineno, first = head[0]
    second = head[1][1] if len(head) > 1 else None
    delim = delimiter or _sniff_delimiter(path, fmt, first)
    if delim in (" ", r"\s+"):
        delim = _WHITESPACE
    first_fields = _split(first, delim)
    if header is None:
        named = any(isinstance(v, str) and not v.isdigit() for v in columns.values())
        no_numbers = not any(_is_number(f) for f in first_fields)
        has_next_number = second is not None and any(_is_number(f) for f in _split(second, delim))
        known = sum(any(_norm(f) in a for a in _ALIASES.values()) for f in first_fields)
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
    cols = _map_columns(names or list(range(len(data_first))), columns, bool(header), implicit,
                        path, first_lineno)
    ncols = max(len(data_first), max(cols.values()) + 1)
    if delim == "::":
        # The C parser takes single-character separators only; "::" never occurs inside
        # MovieLens ratings fields, so mapping it to a tab is lossless and fast.
        raw, delim = raw.replace(b"::", b"\t"), "\t"
    skip = first_lineno if header else 0
    kwargs: dict[str, Any] = dict(header=None, names=list(range(ncols)), skip_blank_lines=False,
                                  engine="c", skiprows=skip, index_col=False)
    if delim == _WHITESPACE:
        kwargs["sep"] = r"\s+"
    else:
        kwargs["sep"] = delim
        kwargs["skipinitialspace"] = True
    src = _Source(path, np.empty(0, np.int64), raw, enc, delim, max(cols.values()) + 1)
    try:
        try:
            frame = pd.read_csv(io.BytesIO(raw), encoding=enc, **kwargs)
        except UnicodeDecodeError:
            if encoding:
                raise
            src.encoding = "latin-1"  # e.g. MovieLens files; every byte decodes
            frame = pd.read_csv(io.BytesIO(raw), encoding="latin-1", **kwargs)
    except Exception as e:  # ParserError (too many fields, bad quoting, ...)
        src.raise_first_bad_line(ncols, skip)
        raise DataError(f"cannot parse: {type(e).__name__}: {e}", path) from None
    # Physical line numbers: with skip_blank_lines=False row k is line skip + k + 1; blank
    # lines come back as all-NaN rows and are dropped here.
    line_of = np.arange(len(frame), dtype=np.int64) + skip + 1
    blank = frame.isna().all(axis=1).to_numpy()
    if blank.any():
        frame = frame.loc[~blank].reset_index(drop=True)
        line_of = line_of[~blank]
    if len(frame) == 0:
        raise DataError("no data rows", path, first_lineno)
    src.line_of = line_of
    return frame, src, cols


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
    """Where rows came from, to turn a row number into a file line in error messages.

    ``line_of[k]`` is the 1-based line of row k (for Parquet: the 1-based row number);
    ``raw`` is the file's bytes (text formats), re-split only when reporting an error.
    """

    path: str
    line_of: np.ndarray
    raw: bytes | None = None
    encoding: str = "utf-8"
    delim: str | None = None
    need: int = 0

    def _fields(self, line: bytes) -> list[str]:
        return _split(line.decode(self.encoding, "replace"), self.delim)

    def error(self, row: int, message: str) -> DataError:
        """A DataError for a row; reports 'too few fields' when the raw line is short."""
        line = int(self.line_of[row])
        if self.raw is not None:
            fields = self._fields(self.raw.splitlines()[line - 1])
            if len(fields) < self.need:
                message = f"too few fields: expected {self.need}, found {len(fields)}"
        return DataError(message, self.path, line)

    def raise_first_bad_line(self, ncols: int, skip: int) -> None:
        """Slow path after a parser failure: names the first line with a wrong field count."""
        for k, ln in enumerate(self.raw.splitlines()[skip:], start=skip + 1):
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
        return arr.astype(np.int64)
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
        return arr.astype(np.float64)
    if arr.dtype.kind == "u" and (r := _first(arr > _INT64_MAX)) is not None:
        raise src.error(r, f"{role} overflows int64")
    if arr.dtype.kind == "f" and (r := _first(np.abs(arr) >= 2.0 ** 63)) is not None:
        raise src.error(r, f"{role} overflows int64")
    return arr.astype(np.int64)


def _to_interactions(frame, cols, src: _Source, rating_scale, duplicates, implicit, name):
    src.need = max(cols.values()) + 1
    users = _id_column(frame[cols["user"]], "user", src)
    items = _id_column(frame[cols["item"]], "item", src)
    values = (_numeric_column(frame[cols["rating"]], "rating", src, integer=False)
              if "rating" in cols else None)
    ts = (_numeric_column(frame[cols["timestamp"]], "timestamp", src, integer=True)
          if "timestamp" in cols else None)
    scale = tuple(rating_scale) if rating_scale is not None else None
    return InteractionData.from_raw(
        users, items, values, ts, rating_scale=scale, implicit=True if implicit else None,
        duplicates=duplicates, name=name or os.path.basename(_strip_gz(src.path)),
        source=src.path, line_numbers=src.line_of)
