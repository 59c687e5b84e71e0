"""Files written whole or not at all, timestamps as UTC, and progress bars: one implementation each.

A reader (a resumed run, the ingest, vLLM loading an adapter, the next drift check) must never see half a
file or half a folder. Everything the loop writes in place goes through here: a temp file or folder
beside the target, then one rename (atomic on a POSIX file system). With `durable=True` the data and the
rename are fsynced too, for what a crash must not lose (checkpoints, landed events, the store).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import date, datetime, timezone
from pathlib import Path
from typing import IO, Any

# mkstemp and mkdtemp create private (0600/0700) entries; what the loop writes is read by other users
# (the ingesting service account, vLLM's pods, a person), so files end 0644 and folders 0755.
FILE_MODE = 0o644
DIR_MODE = 0o755


def fsync_dir(path: str | os.PathLike) -> None:
    """Make a folder's entries (a rename, a new file) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(folder: str | os.PathLike) -> None:
    """fsync every file under `folder`, then every folder (itself included)."""
    folder = Path(folder)
    for p in folder.rglob("*"):
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
    for d in [folder, *[p for p in folder.rglob("*") if p.is_dir()]]:
        fsync_dir(d)


def atomic_write(
    path: str | os.PathLike,
    write: Callable[[IO[bytes]], Any],
    *,
    durable: bool = False,
    mode: int = FILE_MODE,
) -> Path:
    """Call `write(f)` on a binary temp file beside `path`, then rename it onto `path`.

    The parent folder is created. On any error the temp file is removed and `path` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            write(f)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if durable:
        fsync_dir(path.parent)
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes, **kw) -> Path:
    return atomic_write(path, lambda f: f.write(data), **kw)


def atomic_write_text(path: str | os.PathLike, text: str, **kw) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"), **kw)


@contextmanager
def atomic_dir(final: str | os.PathLike, *, durable: bool = False) -> Iterator[Path]:
    """Yield a temp folder beside `final` to fill; on a clean exit it replaces `final` whole.

    On an error the temp folder is removed and `final` is untouched. Files in it end FILE_MODE, folders
    DIR_MODE (libraries such as safetensors write private files).
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    try:
        yield tmp
        for p in tmp.rglob("*"):
            p.chmod(DIR_MODE if p.is_dir() else FILE_MODE)
        tmp.chmod(DIR_MODE)
        if durable:
            fsync_tree(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        if durable:
            fsync_dir(final.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def utc(value: date | datetime | str) -> datetime:
    """A timezone-aware UTC datetime from a date (its midnight), a datetime (naive = UTC) or ISO-8601 text."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if not isinstance(value, datetime):
        value = datetime(value.year, value.month, value.day)
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


def progress(
    items: Iterable | None = None,
    *,
    total: int | None = None,
    desc: str = "",
    unit: str = "it",
    show: bool = True,
    **tqdm_kw,
):
    """A tqdm bar on stderr over `items` (or a manual one: `total` steps, `.update(n)`); off when not `show`."""
    from tqdm import tqdm

    return tqdm(
        items, total=total, desc=desc or None, unit=unit, disable=not show, file=sys.stderr, **tqdm_kw
    )
