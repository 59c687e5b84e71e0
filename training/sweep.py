"""LoRA hyper-parameter sweep: an Optuna study on RDB storage, each trial a nested MLflow run.

    result = run_sweep(SweepConfig(n_trials=8), TrainConfig(max_steps=200), snapshot)
    result.best_adapter_dir, result.best_overrides, result.parent_run_id

Storage is SQLite here (sqlite:///$AGENTLOOP_HOME/optuna/optuna.db) and Postgres on the cluster
(postgresql://...); the study is loaded when it exists, so running the same study again adds trials
to it rather than starting over, and the trials stay under the same MLflow parent run (its id is a
study attribute). The TPE sampler is seeded with `seed + trials already in the study`: a rerun is
reproducible and does not repeat the first session's random start-up proposals.

Pruning: the trainer calls `on_eval(step, val_loss)` at every evaluation; the trial reports it and
stops with optuna.TrialPruned when the pruner says so (median of the completed trials at that step,
or successive halving). A trial whose loss goes non-finite or that runs out of memory is marked
FAIL and the sweep goes on; any other error stops the sweep (it is a bug, it would fail every trial).
A trial whose process died (OOM-killed pod, preemption) stops sending heartbeats; the next session
marks it FAIL and retries it once, continuing from the dead trial's last checkpoint.

The search space (SweepConfig): learning rate (log-uniform), LoRA rank, alpha as a multiple of the
rank (LoRA scales updates by alpha/r, so a ratio keeps the scale comparable across ranks), dropout,
training steps and warmup as a fraction of them. A range with equal bounds, or one choice, fixes
that parameter instead of searching it.
"""

from __future__ import annotations

import gc
import json
import logging
import math
import os
import re
import time
import warnings
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from features.mlflow_experiments import ensure_experiment
from training.sweep_tracking import (
    PARENT_RUN_ATTR,
    log_metrics,
    log_study,
    open_parent_run,
    tag_trial_run,
)

log = logging.getLogger(__name__)


@dataclass
class SweepConfig:
    """The study, its storage, pruner and search space. Simple types only: Flyte passes it as an input."""

    study_name: str = "agentloop-lora"
    storage: str = (
        ""  # "" = sqlite:///$AGENTLOOP_HOME/optuna/optuna.db; cluster: postgresql://user@host:5432/optuna
    )
    n_trials: int = 8  # trials to add in this call (the study may hold more from earlier calls)
    timeout_s: float = 0.0  # stop starting trials after this long; 0 = no limit
    seed: int = 0
    sampler_startup_trials: int = 4  # TPE: random proposals before it models the results
    pruner: str = "median"  # "median" | "halving" | "none"
    pruner_startup_trials: int = 2  # median: completed trials needed before any pruning
    pruner_warmup_steps: int = 0  # median: no pruning before this training step
    halving_min_resource: int = 1  # halving: first rung, in training steps
    halving_reduction_factor: int = 3
    learning_rate: list[float] = field(default_factory=lambda: [2e-5, 2e-3])  # [low, high], log-uniform
    lora_r: list[int] = field(default_factory=lambda: [8, 16, 32])  # choices
    lora_alpha_ratio: list[float] = field(default_factory=lambda: [1.0, 2.0])  # choices; alpha = ratio * r
    lora_dropout: list[float] = field(default_factory=lambda: [0.0, 0.1])  # [low, high]
    max_steps: list[int] = field(default_factory=list)  # choices; empty = the base config's max_steps
    warmup_fraction: list[float] = field(default_factory=lambda: [0.0, 0.1])  # [low, high] of max_steps
    output_dir: str = ""  # trial outputs: <output_dir>/<study_name>/trial-NNNN; "" = $AGENTLOOP_HOME/sweeps
    heartbeat_s: int = 60  # a trial whose process died is marked FAIL after 2x this, and retried once

    def __post_init__(self) -> None:
        for name in ("learning_rate", "lora_dropout", "warmup_fraction"):
            bounds = getattr(self, name)
            if len(bounds) != 2 or bounds[0] > bounds[1]:
                raise ValueError(f"SweepConfig.{name} must be [low, high] with low <= high, got {bounds}")
        if self.learning_rate[0] <= 0:
            raise ValueError(
                f"SweepConfig.learning_rate is searched log-uniformly: low must be > 0, got "
                f"{self.learning_rate}"
            )
        for name in ("lora_r", "lora_alpha_ratio"):
            if not getattr(self, name):
                raise ValueError(f"SweepConfig.{name} needs at least one choice")
        if self.pruner not in ("median", "halving", "none"):
            raise ValueError(f"SweepConfig.pruner must be 'median', 'halving' or 'none', got {self.pruner!r}")
        if self.n_trials < 1:
            raise ValueError(f"SweepConfig.n_trials must be >= 1, got {self.n_trials}")


@dataclass
class SweepResult:
    study_name: str
    parent_run_id: str
    best_trial_number: int
    best_value: float  # the best trial's best validation loss
    best_overrides: dict[str, Any]  # TrainConfig fields the best trial set: apply_overrides(base, ...)
    best_adapter_dir: str
    best_run_id: str  # the MLflow run that produced best_adapter_dir
    retrained: bool  # True when the best trial's adapter was gone and was trained again
    n_trials: int  # in the study, all sessions
    n_complete: int
    n_pruned: int
    n_failed: int
    wall_s: float  # this call


class TrialFailure(Exception):
    """A trial that cannot finish for reasons of its own (non-finite loss, out of memory): only it fails."""


# --- storage, sampler, pruner ----------------------------------------------------------------------


def default_storage() -> str:
    from training.base_model import agentloop_home

    path = agentloop_home() / "optuna" / "optuna.db"
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


def redacted(url: str) -> str:
    """A storage URL safe to log (password hidden)."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - not a SQLAlchemy URL; never log it whole
        return re.sub(r"//[^@/]*@", "//***@", url)


def _with_driver(url: str) -> str:
    """postgresql://... with the driver we ship (psycopg2): SQLAlchemy 2.1 defaults to psycopg 3, not installed."""
    import importlib.util

    if re.match(r"postgres(ql)?://", url) and importlib.util.find_spec("psycopg") is None:
        return "postgresql+psycopg2://" + url.split("://", 1)[1]
    return url


def make_storage(config: SweepConfig):
    import optuna
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    url = _with_driver(config.storage or default_storage())
    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": 60}}  # the heartbeat thread writes too
    else:
        kwargs["engine_kwargs"] = {"pool_pre_ping": True}
    try:
        with warnings.catch_warnings():  # heartbeat_interval is "experimental" since Optuna 2.8
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            retry = RetryHeartbeatStaleTrialCallback(max_retry=1) if config.heartbeat_s else None
            return optuna.storages.RDBStorage(
                url,
                heartbeat_interval=config.heartbeat_s or None,
                grace_period=2 * config.heartbeat_s if config.heartbeat_s else None,
                heartbeat_stale_trial_callback=retry,
                **kwargs,
            )
    except Exception as e:
        raise RuntimeError(
            f"cannot open the Optuna storage {redacted(url)} (SweepConfig.storage): {e}"
        ) from e


def make_pruner(config: SweepConfig):
    import optuna

    if config.pruner == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=config.pruner_startup_trials, n_warmup_steps=config.pruner_warmup_steps
        )
    if config.pruner == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(
            min_resource=config.halving_min_resource, reduction_factor=config.halving_reduction_factor
        )
    return optuna.pruners.NopPruner()


def load_study(config: SweepConfig):
    """Create the study, or load it when it exists (so a rerun adds trials to it)."""
    import optuna

    study = optuna.create_study(
        storage=make_storage(config),
        study_name=config.study_name,
        direction="minimize",
        pruner=make_pruner(config),
        load_if_exists=True,
    )
    study.sampler = optuna.samplers.TPESampler(
        seed=config.seed + len(study.trials), n_startup_trials=config.sampler_startup_trials
    )
    return study


# --- search space ----------------------------------------------------------------------------------


def suggest(trial, config: SweepConfig, base) -> dict[str, Any]:
    """TrainConfig overrides for one trial (what the trial trains with, beyond the base config)."""

    def num(name: str, bounds: list[float], log: bool = False) -> float:
        lo, hi = bounds
        return float(lo) if lo == hi else trial.suggest_float(name, lo, hi, log=log)

    def choice(name: str, options: list):
        return options[0] if len(options) == 1 else trial.suggest_categorical(name, list(options))

    r = int(choice("lora_r", config.lora_r))
    steps = int(choice("max_steps", config.max_steps)) if config.max_steps else int(base.max_steps)
    return {
        "learning_rate": num("learning_rate", config.learning_rate, log=True),
        "lora_r": r,
        "lora_alpha": float(choice("lora_alpha_ratio", config.lora_alpha_ratio)) * r,
        "lora_dropout": num("lora_dropout", config.lora_dropout),
        "max_steps": steps,
        "warmup_steps": int(round(num("warmup_fraction", config.warmup_fraction) * steps)),
    }


def apply_overrides(base, overrides: dict[str, Any]):
    """base with a trial's overrides, each cast to the type of the base's value (JSON turns ints into floats)."""
    known = {f.name for f in fields(base)}
    unknown = set(overrides) - known
    if unknown:
        raise KeyError(f"overrides {sorted(unknown)} are not TrainConfig fields ({type(base).__name__})")

    def cast(like, value):
        return type(like)(value) if isinstance(like, (int, float)) and not isinstance(like, bool) else value

    return replace(base, **{k: cast(getattr(base, k), v) for k, v in overrides.items()})


def _is_trial_failure(e: BaseException) -> bool:
    """A failure of the trial's configuration (diverged, too big for memory), not of the code."""
    import torch

    from training.loss import NonFiniteLossError

    if isinstance(e, (NonFiniteLossError, TrialFailure, MemoryError, torch.OutOfMemoryError)):
        return True
    # CPU allocation failures are plain RuntimeErrors: "DefaultCPUAllocator: can't allocate memory"
    return isinstance(e, RuntimeError) and bool(
        re.search(r"out of memory|can't allocate memory|failed to allocate", str(e), re.IGNORECASE)
    )


# --- the sweep -------------------------------------------------------------------------------------


def trial_dir(config: SweepConfig, number: int) -> Path:
    from training.base_model import agentloop_home

    root = Path(config.output_dir or agentloop_home() / "sweeps").expanduser()
    return root / config.study_name / f"trial-{number:04d}"


def run_sweep(sweep_config: SweepConfig, base, snapshot, flyte_execution_id: str = "") -> SweepResult:
    """Add sweep_config.n_trials trials to the study, each a LoRA training run on `snapshot`; the best adapter.

    base: the TrainConfig every trial starts from (eval cadence, batch size, experiment, ...).
    Returns the best trial (over the whole study) and its adapter directory: the trial's own when it
    is still on disk, else trained again from its recorded overrides.
    """
    import optuna
    from mlflow.tracking import MlflowClient
    from optuna.storages import RetryHeartbeatStaleTrialCallback
    from optuna.trial import TrialState

    from training.trainer import train

    if not base.mlflow_experiment:
        raise ValueError(
            "run_sweep records every trial in MLflow: set TrainConfig.mlflow_experiment (it is empty)"
        )
    if not snapshot.splits.get("validation"):
        raise ValueError(
            f"dataset snapshot {snapshot.snapshot_hash[:12]} has no validation rows: trials are ranked "
            "and pruned by validation loss (raise DatasetConfig.val_fraction or add data)"
        )
    t0 = time.perf_counter()
    study = load_study(sweep_config)
    client = MlflowClient()
    experiment_id = ensure_experiment(base.mlflow_experiment, client)
    flyte_execution_id = flyte_execution_id or os.environ.get("FLYTE_INTERNAL_EXECUTION_ID", "")
    parent_run_id = open_parent_run(
        client,
        study,
        sweep_config,
        redacted(sweep_config.storage or default_storage()),
        base,
        snapshot,
        experiment_id,
        flyte_execution_id,
    )
    log.info(
        "sweep %s: %d trials already in the study, adding %d (MLflow parent run %s)",
        sweep_config.study_name,
        len(study.trials),
        sweep_config.n_trials,
        parent_run_id,
    )

    def objective(trial: optuna.Trial) -> float:
        overrides = suggest(trial, sweep_config, base)
        retried = None
        if sweep_config.heartbeat_s:
            with warnings.catch_warnings():  # experimental API, and it reads deprecated system_attrs itself
                warnings.simplefilter("ignore")
                retried = RetryHeartbeatStaleTrialCallback.retried_trial_number(trial)
        # a retried trial (its process died) continues from the dead one's checkpoints
        out = trial_dir(sweep_config, trial.number if retried is None else retried)
        run_name = f"{sweep_config.study_name}-trial-{trial.number:04d}"
        config = apply_overrides(base, {**overrides, "output_dir": str(out), "run_name": run_name})
        trial.set_user_attr("overrides", overrides)
        trial.set_user_attr("output_dir", str(out))

        def on_eval(step: int, val_loss: float) -> None:
            if not math.isfinite(
                val_loss
            ):  # the pruner would prune it; it is a failure of this configuration
                raise TrialFailure(f"validation loss is {val_loss} at step {step}")
            trial.report(val_loss, step)
            if trial.should_prune():
                raise optuna.TrialPruned(
                    f"trial {trial.number} pruned at step {step}: validation loss "
                    f"{val_loss:.4f} is worse than the pruner's threshold"
                )

        try:
            result = train(
                config,
                snapshot,
                on_eval=on_eval,
                mlflow_parent_run_id=parent_run_id,
                flyte_execution_id=flyte_execution_id,
            )
        except optuna.TrialPruned as e:
            tag_trial_run(client, experiment_id, parent_run_id, run_name, trial.number, "PRUNED", str(e))
            raise
        except Exception as e:
            note = f"{type(e).__name__}: {e}"
            trial.set_user_attr("error", note[:2000])
            tag_trial_run(client, experiment_id, parent_run_id, run_name, trial.number, "FAIL", note)
            if _is_trial_failure(e):
                _free_memory()
                raise TrialFailure(f"trial {trial.number} failed ({note}); the sweep goes on") from e
            raise
        value = float("nan") if result.best_val_loss is None else float(result.best_val_loss)
        if not math.isfinite(value):
            tag_trial_run(
                client,
                experiment_id,
                parent_run_id,
                run_name,
                trial.number,
                "FAIL",
                f"best validation loss {value}",
                run_id=result.mlflow_run_id,
            )
            raise TrialFailure(f"trial {trial.number} finished with best validation loss {value}")
        trial.set_user_attr("adapter_dir", str(result.adapter_dir))
        trial.set_user_attr("mlflow_run_id", result.mlflow_run_id)
        trial.set_user_attr("steps", int(result.steps))
        # by id: a retried trial's run is the dead trial's (resumed from its checkpoint), named after it
        tag_trial_run(
            client,
            experiment_id,
            parent_run_id,
            run_name,
            trial.number,
            "COMPLETE",
            run_id=result.mlflow_run_id,
        )
        return value

    status = "FAILED"
    try:
        study.optimize(
            objective,
            n_trials=sweep_config.n_trials,
            timeout=sweep_config.timeout_s or None,
            catch=(TrialFailure,),
            gc_after_trial=True,
        )
        trials = study.get_trials(deepcopy=False)
        counts = {
            s: sum(t.state == s for t in trials)
            for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
        }
        written = log_study(client, parent_run_id, study, trial_dir(sweep_config, 0).parent / "_study")
        metrics = {
            "trials": len(trials),
            "trials_complete": counts[TrialState.COMPLETE],
            "trials_pruned": counts[TrialState.PRUNED],
            "trials_failed": counts[TrialState.FAIL],
            "sweep_wall_s": time.perf_counter() - t0,
        }
        if counts[TrialState.COMPLETE] == 0:
            log_metrics(client, parent_run_id, metrics, step=len(trials))
            raise RuntimeError(
                f"sweep {sweep_config.study_name}: no trial completed ({counts[TrialState.PRUNED]} "
                f"pruned, {counts[TrialState.FAIL]} failed); see MLflow run {parent_run_id} and the "
                "trials' optuna.note tags"
            )
        best = study.best_trial
        adapter_dir, best_run_id, retrained = _best_adapter(best, base, snapshot, parent_run_id, sweep_config)
        metrics.update(best_val_loss=float(best.value), best_trial_number=best.number)
        log_metrics(client, parent_run_id, metrics, step=len(trials))
        client.set_tag(parent_run_id, "optuna.best_trial", str(best.number))
        client.set_tag(parent_run_id, "optuna.best_overrides", json.dumps(best.user_attrs["overrides"]))
        client.set_tag(parent_run_id, "optuna.best_run_id", best_run_id)
        client.set_tag(parent_run_id, "optuna.plots", ",".join(written))
        status = "FINISHED"
        return SweepResult(
            study_name=sweep_config.study_name,
            parent_run_id=parent_run_id,
            best_trial_number=best.number,
            best_value=float(best.value),
            best_overrides=dict(best.user_attrs["overrides"]),
            best_adapter_dir=str(adapter_dir),
            best_run_id=best_run_id,
            retrained=retrained,
            n_trials=len(trials),
            n_complete=counts[TrialState.COMPLETE],
            n_pruned=counts[TrialState.PRUNED],
            n_failed=counts[TrialState.FAIL],
            wall_s=time.perf_counter() - t0,
        )
    finally:
        client.set_terminated(parent_run_id, status=status)


def _free_memory() -> None:
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:  # noqa: BLE001 - freeing cached GPU memory is best effort
        pass


def best_adapter(sweep_config: SweepConfig, base, snapshot) -> tuple[str, str, bool]:
    """(adapter dir, MLflow run id, retrained) of the study's best trial, e.g. from a pod that did not run it."""
    study = load_study(sweep_config)
    return _best_adapter(
        study.best_trial, base, snapshot, study.user_attrs.get(PARENT_RUN_ATTR), sweep_config
    )


def _best_adapter(
    best, base, snapshot, parent_run_id: str, sweep_config: SweepConfig
) -> tuple[str, str, bool]:
    """The best trial's adapter folder when it is still here (another pod's disk is not), else train it again."""
    from training.trainer import train

    adapter_dir = best.user_attrs.get("adapter_dir", "")
    if adapter_dir and (Path(adapter_dir) / "adapter_config.json").is_file():
        return adapter_dir, best.user_attrs.get("mlflow_run_id", ""), False
    log.info("best trial %d's adapter %r is not on this machine: training it again", best.number, adapter_dir)
    out = trial_dir(sweep_config, best.number).with_name(f"best-{best.number:04d}")
    config = apply_overrides(
        base,
        {
            **best.user_attrs["overrides"],
            "output_dir": str(out),
            "run_name": f"{sweep_config.study_name}-best-{best.number:04d}",
        },
    )
    result = train(config, snapshot, mlflow_parent_run_id=parent_run_id)
    return str(result.adapter_dir), result.mlflow_run_id, True


__all__ = [
    "SweepConfig",
    "SweepResult",
    "TrialFailure",
    "run_sweep",
    "best_adapter",
    "load_study",
    "suggest",
    "apply_overrides",
    "make_storage",
    "default_storage",
    "trial_dir",
]
