"""Streaming readers for raw agent logs: JSONL, CloudEvents (single and batched), gzip; local or fsspec URLs.

A reader yields raw items, never parsed records: decoding and JSON parsing happen in ingest.py so
that bad bytes become quarantine reasons (`encoding`, `invalid_json`, `oversized`) instead of
exceptions. Memory stays flat on any file: lines are read with a bounded readline, and a line over
`max_line_bytes` keeps only a short preview (its full size and sha256 are measured while skipping it).

Gzip is recognised by its magic bytes (whatever the file is called); concatenated members are read
through, and a truncated or corrupt stream ends the file with one error item (quarantined as
`encoding`) after the lines it did yield.

A line whose first non-blank byte is `[` is a CloudEvents JSON batch (`application/cloudevents-batch+json`):
each element is yielded as its own item, with its own index, and its exact bytes. The split is a
byte-level scan (strings, brackets, commas), so an element with invalid UTF-8 or invalid JSON is
quarantined alone; an array that cannot be split (unterminated string, unbalanced brackets, an
empty element) is yielded whole and fails as `invalid_json` in ingest.

An OTLP export request longer than `max_line_bytes` (normal for collector batches) is not cut:
it is read in chunks and split into one small request per span or log record, each its own item
with its index in the line (features/traces/stream.py); memory stays bounded by one span.

Sources are a local folder or file, or an fsspec URL (`s3://bucket/prefix`). For S3/MinIO the
endpoint and keys come from the usual variables: AWS_ENDPOINT_URL (or AWS_ENDPOINT_URL_S3),
AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY (read by botocore), or fsspec's FSSPEC_S3_* variables
(FSSPEC_S3_ENDPOINT_URL, FSSPEC_S3_KEY, FSSPEC_S3_SECRET), read at call time.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, NamedTuple, Sequence

from features.traces.stream import StreamError, looks_like_otlp, split_otlp

# Log files the readers pick up in a folder; anything else (and any dot- or underscore-named file or
# folder: temp files of atomic writers, `_rejected/`, `_manifest/`) is skipped.
DEFAULT_SUFFIXES = (".jsonl", ".jsonl.gz", ".ndjson", ".ndjson.gz", ".json", ".json.gz")
DEFAULT_MAX_LINE_BYTES = 1 << 20
# What an oversized line keeps (for the quarantine copy): its first bytes only.
OVERSIZED_PREVIEW_BYTES = 4096
GZIP_MAGIC = b"\x1f\x8b"
_READ_BUFFER = 1 << 20
_DRAIN_CHUNK = 1 << 20


class RawItem(NamedTuple):
    """One input record as bytes: a line, or one element of a batched line."""

    source: str
    line_number: int  # 1-based line in the (decompressed) file
    index_in_line: int | None  # position in a CloudEvents batch array; None for a line holding one object
    raw: bytes  # the record's exact bytes; only a preview when oversized
    size: int  # the record's full size in bytes (> len(raw) when oversized)
    sha256: str | None = None  # of the full bytes when `raw` is only a preview (oversized)
    error: str | None = None  # the file could not be read past this point (corrupt gzip): no bytes

    @property
    def oversized(self) -> bool:
        return self.sha256 is not None and self.error is None


@dataclass(frozen=True)
class SourceFile:
    """A log file as listed: enough to tell next time whether it changed."""

    path: str  # absolute local path, or a URL with its protocol (s3://bucket/key)
    size: int
    fingerprint: str  # "etag:<etag>" for object stores, "mtime:<ns>" for local files

    @property
    def is_local(self) -> bool:
        return "://" not in self.path


@dataclass
class ReadStats:
    """What a reader saw in one file besides records (filled while iterating)."""

    lines: int = 0
    blank_lines: int = 0
    empty_batches: int = 0
    items: int = 0
    bytes_read: int = 0  # bytes of the file as stored (compressed for gzip)
    sha256: str = ""  # of the file as stored, set once the file was read to its end
    gzip: bool = False
    errors: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------------------------- fsspec


def storage_options(url: str, overrides: dict | None = None) -> dict:
    """fsspec options for a URL from the environment at call time, then `overrides`.

    fsspec reads FSSPEC_<PROTOCOL>_* only when it is imported; reading them again here lets a test
    or a Flyte task set them later. For s3, AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL give the endpoint
    (botocore also reads them; s3fs is given it explicitly so that old botocores agree).
    """
    protocol = _protocol(url)
    opts: dict[str, Any] = {}
    if protocol in ("s3", "s3a"):
        from fsspec.config import set_conf_env

        conf: dict[str, dict] = {}
        set_conf_env(conf)
        opts.update(conf.get("s3", {}))
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint and "endpoint_url" not in opts and "endpoint_url" not in opts.get("client_kwargs", {}):
            opts["endpoint_url"] = endpoint
    opts.update(overrides or {})
    return opts


def _protocol(url: str) -> str:
    return url.split("://", 1)[0].lower() if "://" in url else "file"


def filesystem(url: str, overrides: dict | None = None):
    """(fsspec filesystem, path within it) for a local path or URL."""
    import fsspec

    if "://" not in url:
        return fsspec.filesystem("file"), str(Path(url).expanduser().resolve())
    fs, path = fsspec.core.url_to_fs(url, **storage_options(url, overrides))
    return fs, path


def _url(fs, path: str) -> str:
    """The canonical source string of a path on fs: absolute local path, or protocol://path."""
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    if protocol in ("file", "local"):
        return path
    return f"{protocol}://{path}"


# --------------------------------------------------------------------------------------------- listing


def _wanted(rel_parts: Sequence[str], suffixes: Sequence[str]) -> bool:
    if any(part.startswith((".", "_")) for part in rel_parts):
        return False
    return rel_parts[-1].endswith(tuple(suffixes))


def _fingerprint(info: dict) -> str:
    etag = info.get("ETag") or info.get("etag") or info.get("e_tag")
    if etag:
        return "etag:" + str(etag).strip('"')
    mtime = info.get("mtime") or info.get("LastModified") or info.get("last_modified") or info.get("created")
    if hasattr(mtime, "timestamp"):
        mtime = mtime.timestamp()
    if isinstance(mtime, (int, float)):
        return f"mtime:{int(mtime * 1_000_000_000)}"
    return f"mtime:{mtime}"


def list_sources(
    specs: str | Sequence[str], *, suffixes: Sequence[str] = DEFAULT_SUFFIXES, options: dict | None = None
) -> list[SourceFile]:
    """The log files under each spec (a folder, a file, or a glob; local or URL), sorted by path.

    A spec that names a file is taken whatever its suffix; folders are searched recursively for
    `suffixes`, skipping dot- and underscore-named files and folders.
    """
    if isinstance(specs, (str, os.PathLike)):
        specs = [specs]
    found: dict[str, SourceFile] = {}
    for spec in specs:
        spec = os.fspath(spec)
        fs, root = filesystem(spec, options)
        fs.invalidate_cache()
        if any(ch in root for ch in "*?["):
            infos = fs.glob(root, detail=True)
        elif not fs.exists(root):
            raise FileNotFoundError(
                f"log source {spec!r} does not exist (expected a folder, a file or a glob)"
            )
        elif fs.isfile(root):
            info = fs.info(root)
            found[_url(fs, info["name"])] = SourceFile(
                _url(fs, info["name"]), int(info["size"]), _fingerprint(info)
            )
            continue
        else:
            infos = fs.find(root, detail=True)
        base = root.rstrip("/")
        for name, info in sorted(infos.items()):
            if info.get("type") == "directory":
                continue
            rel = name[len(base) :].lstrip("/") if name.startswith(base) else name.rsplit("/", 1)[-1]
            if not rel or not _wanted(rel.split("/"), suffixes):
                continue
            url = _url(fs, name)
            found[url] = SourceFile(url, int(info.get("size") or 0), _fingerprint(info))
    return [found[k] for k in sorted(found)]


# --------------------------------------------------------------------------------------------- reading


class _HashingRaw(io.RawIOBase):
    """A raw stream over any file-like `read`, hashing and counting the bytes that pass."""

    def __init__(self, f, stats: ReadStats):
        self._f = f
        self._stats = stats
        self._hash = hashlib.sha256()
        self.eof = False

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        data = self._f.read(len(b))
        n = len(data)
        if n == 0:
            self.eof = True
            return 0
        b[:n] = data
        self._hash.update(data)
        self._stats.bytes_read += n
        return n

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


# A JSON string (possessive: no backtracking on long strings), a bracket or comma, or a lone quote
# (an unterminated string).
_BATCH_TOKENS = re.compile(rb'"(?:[^"\\]++|\\.)*+"|[\[\]{},]|"', re.DOTALL)
_CLOSE = {ord("]"): ord("["), ord("}"): ord("{")}


def split_batch(line: bytes) -> list[bytes] | None:
    """The elements of a JSON array line as exact byte slices; None when it cannot be split.

    `line` must start with `[` (leading blanks stripped). Does not parse elements: `[1, tru]` gives
    [b"1", b"tru"] and leaves the verdicts to the JSON parser.
    """
    stack: list[int] = []
    elements: list[bytes] = []
    start = 0
    for m in _BATCH_TOKENS.finditer(line):
        tok = m.group()
        c = tok[0]
        if c == 0x22:  # '"'
            if len(tok) == 1:
                return None
            continue
        if c in (0x5B, 0x7B):  # [ {
            if not stack and m.start() != 0:
                return None
            stack.append(c)
            if len(stack) == 1:
                start = m.end()
        elif c in (0x5D, 0x7D):  # ] }
            if not stack or stack.pop() != _CLOSE[c]:
                return None
            if not stack:
                element = line[start : m.start()].strip()
                if element:
                    elements.append(element)
                elif elements:  # "[1,]"
                    return None
                if line[m.end() :].strip():
                    return None
                return elements
        elif len(stack) == 1:  # a comma between elements
            element = line[start : m.start()].strip()
            if not element:
                return None
            elements.append(element)
            start = m.end()
    return None


def _open_binary(source: SourceFile | str, stats: ReadStats, options: dict | None):
    path = source.path if isinstance(source, SourceFile) else os.fspath(source)
    if "://" in path:
        fs, inner = filesystem(path, options)
        f = fs.open(inner, "rb")
    else:
        f = open(path, "rb", buffering=0)
    raw = _HashingRaw(f, stats)
    buffered = io.BufferedReader(raw, buffer_size=_READ_BUFFER)
    # The magic bytes decide, not the name: a `.gz` that is plain text is read as such (and vice versa).
    stats.gzip = buffered.peek(2)[:2] == GZIP_MAGIC
    stream = gzip.GzipFile(fileobj=buffered, mode="rb") if stats.gzip else buffered
    return f, raw, stream


def read_source(
    source: SourceFile | str,
    *,
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
    stats: ReadStats | None = None,
    options: dict | None = None,
) -> Iterator[RawItem]:
    """Yield every record of one file as a RawItem, in file order; blank lines are skipped (counted).

    A gzip stream that ends early or is corrupt yields one last item with `error` set (and no bytes)
    instead of raising; errors opening or reading the file itself (permissions, network) raise.
    """
    stats = stats if stats is not None else ReadStats()
    name = source.path if isinstance(source, SourceFile) else os.fspath(source)
    f, raw, stream = _open_binary(source, stats, options)
    line_number = 0
    try:
        while True:
            try:
                line = stream.readline(max_line_bytes + 1)
                if not line:
                    break
                line_number += 1
                full_hash = None
                size = len(line)
                if line.endswith(b"\n"):
                    size -= 1
                    line = line[:-1]
                elif size > max_line_bytes and looks_like_otlp(line[:64]):
                    # An OTLP batch over the limit is normal: stream it, one small request per span.
                    yield from _stream_otlp(name, line_number, line, stream, stats)
                    stats.lines += 1
                    continue
                elif size > max_line_bytes:
                    # Oversized: keep a preview, hash and measure the rest without keeping it.
                    full_hash = hashlib.sha256(line)
                    while True:
                        chunk = stream.readline(_DRAIN_CHUNK)
                        if not chunk:
                            break
                        if chunk.endswith(b"\n"):
                            full_hash.update(chunk[:-1])
                            size += len(chunk) - 1
                            break
                        full_hash.update(chunk)
                        size += len(chunk)
                    line = line[:OVERSIZED_PREVIEW_BYTES]
            except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
                if not stats.gzip:
                    raise
                # Python names the problem, never the content.
                error = f"gzip stream unreadable after line {line_number}: {type(exc).__name__}: {exc}"
                stats.errors.append(error)
                stats.items += 1
                yield RawItem(name, line_number + 1, None, b"", 0, hashlib.sha256(b"").hexdigest(), error)
                return
            stats.lines += 1
            if full_hash is not None:
                stats.items += 1
                yield RawItem(name, line_number, None, line, size, full_hash.hexdigest())
                continue
            stripped = line.strip()
            if not stripped:
                stats.blank_lines += 1
                continue
            if stripped[:1] == b"[":
                elements = split_batch(stripped)
                if elements is not None:
                    if not elements:
                        stats.empty_batches += 1
                    for i, element in enumerate(elements):
                        stats.items += 1
                        yield RawItem(name, line_number, i, element, len(element))
                    continue
            stats.items += 1
            yield RawItem(name, line_number, None, line, size)
        # Drain what a gzip trailer or a short read left, so the file hash covers every byte.
        while raw.readinto(bytearray(_READ_BUFFER)):
            pass
        stats.sha256 = raw.hexdigest()
    finally:
        try:
            stream.close()
        finally:
            f.close()


def _stream_otlp(name: str, line_number: int, head: bytes, stream, stats: ReadStats) -> Iterator[RawItem]:
    """The rest of a huge OTLP line read in chunks and split per span/log record (features/traces/stream.py)."""
    full_hash = hashlib.sha256()
    size = 0

    def chunks() -> Iterator[bytes]:
        nonlocal size
        chunk = head
        while chunk:
            last = chunk.endswith(b"\n")
            if last:
                chunk = chunk[:-1]
            full_hash.update(chunk)
            size += len(chunk)
            yield chunk
            if last:
                return
            chunk = stream.readline(_DRAIN_CHUNK)

    parts = chunks()
    index = 0
    try:
        for element in split_otlp(parts):
            stats.items += 1
            yield RawItem(name, line_number, index, element, len(element))
            index += 1
    except StreamError:
        for _ in parts:  # measure and hash the rest; the line is quarantined as oversized
            pass
        stats.items += 1
        yield RawItem(name, line_number, None, head[:OVERSIZED_PREVIEW_BYTES], size, full_hash.hexdigest())


def iter_raw(
    sources: Iterable[SourceFile | str],
    *,
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
    options: dict | None = None,
) -> Iterator[RawItem]:
    """Every record of every source, source after source."""
    for source in sources:
        yield from read_source(source, max_line_bytes=max_line_bytes, options=options)
