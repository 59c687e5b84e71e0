"""Test-only: run an ingest in this process and SIGKILL it at a chosen point of a commit.

    python -m tests.crash_hook POINT LOGS STORE BATCH_SIZE

Production code has no crash hooks; this module wraps features.store's table writes from outside:

- `quarantine:<k>`, `_keys:<k>`, `interactions:<k>`: killed right after the k-th commit's write to
  that table is in the table's log, before the ledger (the commit point) names the commit.
- `datafile:<k>`: killed inside the k-th commit's interactions write, once delta-rs has written its
  data file and before its log entry exists: a named pipe stands where that entry would go, so the
  commit cannot land; the process is killed as the write gives up (the test then removes the pipe).
- `ledger:<k>`: killed right after the k-th commit's ledger entry (the commit is complete).
- `hold:<k>`: not killed: after the k-th commit, waits until the file <store>.release exists (the
  test runs a second ingest meanwhile), then goes on.
"""

from __future__ import annotations

import os
import signal
import sys
import time

import features.store as store_mod


def _kill() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def data_files(folder: str) -> set[str]:
    """The parquet files under a table folder, its _delta_log aside."""
    out = set()
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if not d.startswith("_")]
        out.update(os.path.join(dirpath, f) for f in filenames if f.endswith(".parquet"))
    return out


def install(point: str) -> None:
    where, k = point.rsplit(":", 1)
    k = int(k)
    real_write, real_merge, real_commit = store_mod._write, store_mod._merge_keys, store_mod.Commit.commit
    calls = {"n": 0}

    def commit(self, entries):
        calls["n"] += 1
        out = real_commit(self, entries)
        if where == "ledger" and calls["n"] == k:
            _kill()
        if where == "hold" and calls["n"] == k:
            while not os.path.exists(self.store.root + ".release"):
                time.sleep(0.05)
        return out

    def write(store, table, rows, properties):
        if where == "datafile" and calls["n"] == k and table == store_mod.INTERACTIONS:
            # A named pipe where the write's log entry would go: delta-rs writes the data file, then
            # cannot land its commit; killed right there (the test removes the pipe afterwards).
            os.mkfifo(
                os.path.join(
                    store.table_path(table), "_delta_log", f"{store.delta(table).version() + 1:020d}.json"
                )
            )
            try:
                real_write(store, table, rows, properties)
            finally:
                _kill()
        real_write(store, table, rows, properties)
        if where == table and calls["n"] == k:
            _kill()

    def merge(store, keys, properties):
        inserted = real_merge(store, keys, properties)
        if where == store_mod.KEYS and calls["n"] == k:
            _kill()
        return inserted

    store_mod._write, store_mod._merge_keys, store_mod.Commit.commit = write, merge, commit


def main(argv: list[str]) -> int:
    point, logs, store, batch_size = argv
    install(point)
    from features.ingest import IngestConfig, ingest

    ingest(logs, IngestConfig(store=store, batch_size=int(batch_size), progress=False))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
