"""features/fsutil.py: what the loop writes in place appears whole or not at all, and readable by others."""

from __future__ import annotations

import stat
from datetime import date, datetime, timedelta, timezone

import pytest

from features.fsutil import atomic_dir, atomic_write, atomic_write_text, utc


def mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("durable", [False, True])
def test_a_failed_write_leaves_the_old_file_and_no_temp_file(tmp_path, durable):
    target = tmp_path / "sub" / "state.json"
    atomic_write_text(target, "old", durable=durable)

    def half(f):
        f.write(b"new, half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, half, durable=durable)
    assert target.read_text() == "old"
    assert sorted(p.name for p in target.parent.iterdir()) == ["state.json"]
    assert mode(target) == 0o644  # not mkstemp's 0600: the ingesting user and vLLM read these


def test_a_folder_is_replaced_whole_and_a_failed_one_leaves_the_old(tmp_path):
    final = tmp_path / "adapter"
    with atomic_dir(final) as tmp:
        (tmp / "a.bin").write_bytes(b"1")
        (tmp / "nested").mkdir()
        (tmp / "nested" / "b.json").write_text("{}")
        (tmp / "nested" / "b.json").chmod(0o600)  # as safetensors writes its files
    assert mode(final) == 0o755 and mode(final / "nested" / "b.json") == 0o644
    with pytest.raises(RuntimeError, match="boom"), atomic_dir(final, durable=True) as tmp:
        (tmp / "c.bin").write_bytes(b"2")
        raise RuntimeError("boom")
    assert sorted(p.name for p in final.iterdir()) == ["a.bin", "nested"]
    assert [p.name for p in tmp_path.iterdir()] == ["adapter"]  # no temp folder left behind
    with atomic_dir(final, durable=True) as tmp:
        (tmp / "c.bin").write_bytes(b"2")
    assert [p.name for p in final.iterdir()] == ["c.bin"]  # replaced, not merged


@pytest.mark.parametrize(
    "value",
    [
        "2026-03-01",
        "2026-03-01T00:00:00Z",
        "2026-03-01T01:00:00+01:00",
        date(2026, 3, 1),
        datetime(2026, 3, 1),
        datetime(2026, 2, 28, 19, tzinfo=timezone(timedelta(hours=-5))),
    ],
)
def test_utc_reads_dates_naive_and_zoned_times_alike(value):
    assert utc(value) == datetime(2026, 3, 1, tzinfo=timezone.utc)
    assert utc(value).tzinfo == timezone.utc
