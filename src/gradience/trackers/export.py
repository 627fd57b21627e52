"""A telemetry run as tracker series: ``train/…``, ``eval/…``, ``gradience/…`` keyed scalars and texts.

:func:`tracker_points` turns one run's events into ``(key, step, value, wall_time)`` scalars and
``(key, step, text)`` notes (pure Python, no tracker imported); :func:`export_tensorboard` and
:func:`export_mlflow` write them with the trackers' own clients (TensorBoard's ``SummaryWriter``,
MLflow's ``MlflowClient``), imported only when called. Keys: docs/trackers.md#keys.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import MissingExtraError, UsageError

__all__ = ["Note", "Point", "export_mlflow", "export_tensorboard", "guard_marks", "live_step_signals",
           "tracker_points"]

# train_step keys → tracker key (HF's own names where the Trainer logs the same quantity).
TRAIN_KEYS = {"loss": "train/loss", "lr": "train/learning_rate", "grad_norm": "train/grad_norm",
              "grad_norm_clipped": "train/grad_norm_clipped", "epoch": "train/epoch", "ppl": "train/ppl",
              "steps_per_second": "train/steps_per_second", "samples_per_second": "train/samples_per_second",
              "mean_token_accuracy": "train/mean_token_accuracy", "entropy": "train/entropy",
              "num_tokens": "train/num_tokens"}
SEVERITY_RANK = {"info": 0, "warning": 1, "error": 2, "critical": 3}
RISK_RANK = {"STABLE": 0, "WARNING": 1, "DANGER": 2, "INSTABILITY": 3}
GUARD_ACTION_RANK = {"snapshot": 0, "backoff": 1, "rollback": 2, "lockout": 3}


@dataclass(frozen=True)
class Point:
    """One scalar: ``key`` at optimizer ``step`` (``wall_time``: unix seconds)."""

    key: str
    step: int
    value: float
    wall_time: float | None = None


@dataclass(frozen=True)
class Note:
    """One text entry (an alert, the audit summary) at ``step``."""

    key: str
    step: int
    text: str


def _num(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v)


def guard_marks(action: str, lr_scale: float | None) -> dict[str, float]:
    """The scalars that mark a guard action on a tracker's step axis (the same keys live and in
    an export): ``gradience/guard/action`` (1 backoff, 2 rollback, 3 lockout) and the LR scale."""
    out = {"gradience/guard/action": float(GUARD_ACTION_RANK.get(action, 0))}
    if lr_scale is not None:
        out["gradience/guard/lr_scale"] = float(lr_scale)
    return out


GRAD_LEVEL_RANK = {"vanishing": 0, "healthy": 1, "warning": 2, "critical": 3, "nonfinite": 4}


def live_step_signals(loss: float | None, grad_norm: float | None, level: str | None) -> dict[str, float]:
    """A step's live signals: the recorded loss (non-finite where it was, unlike a Trainer's
    NaN-filtered log), the pre-clip gradient norm and its health level (0 vanishing … 4 non-finite)."""
    out: dict[str, float] = {}
    if loss is not None:
        out["gradience/loss"] = float(loss)
    if grad_norm is not None:
        out["gradience/grad_norm"] = float(grad_norm)
    if level in GRAD_LEVEL_RANK:
        out["gradience/grad_norm_level"] = float(GRAD_LEVEL_RANK[str(level)])
    return out


def tracker_points(events: Iterable[dict[str, Any]]) -> tuple[list[Point], list[Note]]:
    """Scalars and notes of one run's events (non-finite values are kept: a tracker shows NaN)."""
    points: list[Point] = []
    notes: list[Note] = []

    def add(key: str, step: Any, value: Any, ts: Any) -> None:
        v = _num(value)
        if v is not None and isinstance(step, int):
            points.append(Point(key, step, v, _num(ts)))

    for e in events:
        name, step, ts = e.get("event"), e.get("step"), e.get("ts")
        if name == "train_step":
            for k, v in e.items():
                if k == "lr" and isinstance(v, list):
                    v = v[0] if v else None
                if k in TRAIN_KEYS:
                    add(TRAIN_KEYS[k], step, v, ts)
        elif name == "eval":
            split = str(e.get("split") or "test")
            for k, v in (e.get("metrics") or {}).items():
                add(f"eval/{split}/{k}", step, v, ts)
        elif name == "alert" and isinstance(step, int):
            sev = str(e.get("severity", "info"))
            add("gradience/alert_severity", step, SEVERITY_RANK.get(sev, 0), ts)
            notes.append(Note("gradience/alerts", step, f"[{sev}] {e.get('code')}: {e.get('message', '')}"))
        elif name == "metrics":
            kind, m = e.get("kind"), e.get("metrics") or {}
            if kind == "guard" and e.get("action") in ("backoff", "rollback", "lockout"):
                for key, value in guard_marks(str(e["action"]), _num(m.get("lr_scale"))).items():
                    add(key, step, value, ts)
                if e["action"] != "backoff":
                    add("gradience/guard/restored_step", step, m.get("restored_step"), ts)
            elif kind == "spectral":
                add("gradience/spectral/kappa_tilde", step, m.get("kappa_tilde"), ts)
                add("gradience/spectral/risk_level", step, RISK_RANK.get(str(m.get("risk_level")), None), ts)
            elif kind == "lora_audit" and isinstance(step, int):
                for k, v in m.items():
                    add(f"gradience/audit/{k}", step, v, ts)
                notes.append(Note("gradience/audit", step, json.dumps(m, sort_keys=True, default=str)))
            elif kind == "fault_injection":
                add("gradience/fault_injection", step, 1, ts)
    return points, notes


def _require(module: str, extra: str, feature: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtraError(module.split(".")[0], extra, feature) from exc


def export_tensorboard(points: list[Point], notes: list[Note], log_dir: Path) -> int:
    """Write every point (``add_scalar``) and note (``add_text``) with TensorBoard's
    ``SummaryWriter`` to ``log_dir``; returns the number of scalars written."""
    _require("tensorboard", "trackers", "export to TensorBoard")
    tb = _require("torch.utils.tensorboard", "hf", "export to TensorBoard (its SummaryWriter)")
    log_dir.mkdir(parents=True, exist_ok=True)
    writer = tb.SummaryWriter(log_dir=str(log_dir))
    try:
        for p in points:
            writer.add_scalar(p.key, p.value, global_step=p.step, walltime=p.wall_time)
        for n in notes:
            writer.add_text(n.key, n.text, global_step=n.step)
    finally:
        writer.close()
    return len(points)


def export_mlflow(points: list[Point], notes: list[Note], tracking_uri: str, *, experiment: str, run_name: str,
                  params: dict[str, Any]) -> str:
    """Log every point as an MLflow metric (keys as given; MLflow allows ``/``) in a new run of
    ``experiment`` at ``tracking_uri`` (e.g. ``sqlite:///mlflow.db``), ``params`` as run
    parameters and the notes as a ``gradience_notes.json`` artifact; returns the run id."""
    mlflow = _require("mlflow", "trackers", "export to MLflow")
    from mlflow.entities import Metric, Param
    from mlflow.exceptions import MlflowException

    if not tracking_uri.strip() or tracking_uri.rstrip("/") in ("sqlite:", "sqlite://", "sqlite:///"):
        raise UsageError("an MLflow tracking URI names a store", path=tracking_uri or "''",
                         hint="e.g. sqlite:///mlflow.db (MLflow's default local store) or http://host:5000")
    if not experiment.strip():  # before the store is touched (MLflow would create its tables first)
        raise UsageError("the MLflow experiment name is empty", hint="give --experiment NAME (default: gradience)")
    try:
        client = mlflow.tracking.MlflowClient(tracking_uri=tracking_uri)
        found = client.get_experiment_by_name(experiment)
        exp_id = found.experiment_id if found is not None else client.create_experiment(experiment)
        run = client.create_run(exp_id, run_name=run_name)
    except MlflowException as exc:  # MLflow's own refusal (a store it does not serve, a bad name): one line
        raise UsageError(f"MLflow refused: {str(exc).splitlines()[0][:200]}", path=tracking_uri,
                         hint="give a tracking URI such as sqlite:///mlflow.db and a non-empty --experiment") from None
    rid = run.info.run_id
    metrics = [Metric(p.key, p.value if math.isfinite(p.value) else float("nan"),
                      int((p.wall_time or 0.0) * 1000), p.step) for p in points]
    plist = [Param(str(k)[:250], str(v)[:6000]) for k, v in params.items() if v is not None]
    for i in range(0, max(len(metrics), 1), 900):  # MLflow caps a batch at 1000 entries
        client.log_batch(rid, metrics=metrics[i:i + 900], params=plist if i == 0 else [])
    if notes:
        client.log_text(rid, json.dumps([n.__dict__ for n in notes], indent=1), "gradience_notes.json")
    client.set_terminated(rid)
    return str(rid)


def run_params(start: dict[str, Any] | None) -> dict[str, Any]:
    """Flat run parameters from ``run_start``: model, dataset, LoRA r/alpha, lr, batch, steps."""
    if not start:
        return {}
    cfg = start.get("config") or {}
    lora, training = cfg.get("lora") or {}, cfg.get("training") or {}
    meta = start.get("meta") or {}
    return {"model_name": cfg.get("model_name"), "dataset_name": cfg.get("dataset_name"),
            "lora_r": lora.get("r"), "lora_alpha": lora.get("alpha"),
            "learning_rate": (cfg.get("optimizer") or {}).get("lr"), "batch_size": training.get("batch_size"),
            "max_steps": training.get("max_steps"), "parallelism": meta.get("parallelism"),
            "gradience_run_id": start.get("run_id")}


def iter_run(events: Iterable[dict[str, Any]], run_id: str | None, path: object = None) -> Iterator[dict[str, Any]]:
    """The events of ``run_id`` (full id or unique prefix, as monitor/watch/report take it; default:
    the run that started last)."""
    from ..telemetry.run_select import resolve_run_id

    evs = list(events)
    order: dict[str, None] = {}
    for e in evs:  # runs in the order they started (a resumed run becomes the latest again)
        rid = e.get("run_id")
        if isinstance(rid, str):
            if e.get("event") == "run_start":
                order.pop(rid, None)
            order.setdefault(rid, None)
    if not order:
        raise UsageError("the file holds no run to export", path=path)
    run_id = resolve_run_id(run_id, list(order), str(path) if path is not None else "the file")
    return iter([e for e in evs if e.get("run_id") == run_id])
