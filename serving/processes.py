"""Local server processes (vLLM, MLflow): spawn in a process group, wait for /health, stop the group.

One implementation for both servers, on psutil (no /proc parsing): a server is the process group its
leader starts (`start_new_session=True`), because vLLM's API server, engine core and worker, and
uvicorn's workers, outlive a leader that dies first.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import psutil
import requests


def free_port(host: str = "127.0.0.1") -> int:
    """A port the OS reports free on `host` now (another process may take it before it is bound)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def log_tail(path: Path, n: int = 40, drop: str = "") -> str:
    """The last `n` lines of a log (lines containing `drop` left out), for error messages."""
    try:
        lines = Path(path).read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join([line for line in lines if not drop or drop not in line][-n:])


def spawn(cmd: Sequence[str], log_path: Path, env: Mapping[str, str], cwd: Path) -> subprocess.Popen:
    """Start `cmd` as the leader of a new process group, stdout and stderr appended to `log_path`."""
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(cmd)}\n".encode())
        log.flush()
        return subprocess.Popen(
            list(cmd),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(env),
            cwd=cwd,
            start_new_session=True,
        )


def _live(proc: psutil.Process) -> bool:
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def group_members(pgid: int) -> list[psutil.Process]:
    """Live (non-zombie) processes of process group `pgid`."""
    members = []
    for proc in psutil.process_iter():
        try:
            if os.getpgid(proc.pid) == pgid and _live(proc):
                members.append(proc)
        except (OSError, psutil.Error):  # gone meanwhile
            continue
    return sorted(members, key=lambda p: p.pid)


def alive(pid: int) -> bool:
    """`pid` exists and is not a zombie."""
    try:
        return _live(psutil.Process(pid))
    except psutil.Error:
        return False


def cmdline(pid: int) -> str:
    try:
        return " ".join(psutil.Process(pid).cmdline())
    except psutil.Error:
        return ""


def rss_bytes(procs: Sequence[psutil.Process]) -> int:
    total = 0
    for proc in procs:
        try:
            total += proc.memory_info().rss
        except psutil.Error:
            continue
    return total


def stop_group(pgid: int, timeout: float = 30.0, kill_timeout: float = 10.0) -> list[int]:
    """SIGTERM process group `pgid`, wait up to `timeout`, SIGKILL what is left; pids still alive after that."""
    for sig, wait_s in ((signal.SIGTERM, timeout), (signal.SIGKILL, kill_timeout)):
        members = group_members(pgid)
        if not members:
            return []
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return []
        _, still = psutil.wait_procs(members, timeout=wait_s)
        # wait_procs counts a zombie (a child of someone else, not yet reaped) as still running
        if not [p for p in still if _live(p)]:
            return []
    return [p.pid for p in group_members(pgid)]


def wait_healthy(
    url: str,
    exited: Callable[[], int | None],
    timeout: float,
    describe_failure: Callable[[str], str],
    error: type[Exception] | None = None,
) -> None:
    """Poll `url` until it answers 200. `exited()` returns the leader's exit code once it has exited;
    `describe_failure(what)` builds the error message (with the log tail) for what went wrong, raised as
    `error` (default ServerStartError)."""
    error = error or ServerStartError
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        code = exited()
        if code is not None:
            raise error(describe_failure(f"exited with code {code} before {url} answered"))
        try:
            if requests.get(url, timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise error(describe_failure(f"did not answer {url} within {timeout:.0f}s (stopped it)"))


class ServerStartError(RuntimeError):
    """A server process exited, or never became healthy, during start."""
