"""Runs trained without Gradience, read into telemetry v1: an HF ``output_dir`` /
``trainer_state.json`` or a TensorBoard log directory.

:func:`detect_source` says what a path is; :func:`import_events` turns it into telemetry events
(``run_start``, ``train_step``, ``eval``, ``run_end`` dicts); :func:`write_import` writes them with
the :class:`~gradience.telemetry.writer.TelemetryWriter`; :func:`resolve_input` is what
``monitor`` / ``watch`` / ``report`` call on their argument: a telemetry file is returned as it is,
an importable log is converted into a temporary file, anything else is a one-line error (exit 2).
Rules: docs/trackers.md#import.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path
from typing import Any

from ..errors import GradienceError, MissingExtraError
from ..training.recorder import split_eval_metrics

__all__ = ["detect_source", "import_events", "resolve_input", "write_import"]

_TB_PREFIX = "events.out.tfevents."
# HF log keys → train_step keys (TRL's metrics keep their names).
_TRAIN_KEYS = {"loss": "loss", "learning_rate": "lr", "grad_norm": "grad_norm", "epoch": "epoch",
               "mean_token_accuracy": "mean_token_accuracy", "entropy": "entropy", "num_tokens": "num_tokens"}
_NOT_A_SERIES = ("train_runtime", "train_samples_per_second", "train_steps_per_second", "total_flos", "train_loss")


def _tb_files(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob(f"{_TB_PREFIX}*") if p.is_file())


def _trainer_state(path: Path) -> Path | None:
    """``trainer_state.json`` of an HF output_dir: its own, else its newest ``checkpoint-N``'s."""
    if (path / "trainer_state.json").is_file():
        return path / "trainer_state.json"
    ckpts = [(int(p.name.rpartition("-")[2]), p) for p in path.glob("checkpoint-*")
             if p.name.rpartition("-")[2].isdigit() and (p / "trainer_state.json").is_file()]
    return max(ckpts)[1] / "trainer_state.json" if ckpts else None


def _looks_like_trainer_state(path: Path) -> bool:
    if path.stat().st_size > 512 * 1024 * 1024:
        return False
    from ..bounded import loads_json

    try:
        data = loads_json(path.read_bytes(), path=path, what="trainer_state.json", error=GradienceError)
    except (OSError, GradienceError):
        return False
    return isinstance(data, dict) and isinstance(data.get("log_history"), list)


def detect_source(path: Path) -> tuple[str, Path] | None:
    """``("telemetry" | "trainer_state" | "tensorboard", the file or directory to read)``, or
    ``None`` when ``path`` is neither telemetry nor an importable log."""
    if path.is_dir():
        if (path / "run.jsonl").is_file():
            return "telemetry", path / "run.jsonl"
        state = _trainer_state(path)
        if state is not None:
            return "trainer_state", state
        if _tb_files(path):
            return "tensorboard", path
        return None
    if not path.is_file():
        return None
    if path.name.startswith(_TB_PREFIX):
        return "tensorboard", path.parent
    if path.suffix == ".json" and _looks_like_trainer_state(path):
        return "trainer_state", path
    return "telemetry", path


def _num(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v)


def _config(state: dict[str, Any]) -> dict[str, Any]:
    return {"training": {"max_steps": state.get("max_steps") or None, "batch_size": state.get("train_batch_size"),
                         "epochs": state.get("num_train_epochs")}}


def _from_logs(entries: list[tuple[int, dict[str, Any]]], source: str, kind: str, state: dict[str, Any],
               finished: bool) -> list[dict[str, Any]]:
    """Events from HF-style log entries ``(step, {key: value})`` in step order."""
    start = {"event": "run_start", "step": None, "config": _config(state),
             "meta": {"framework": "transformers.Trainer", "imported_from": source, "import_format": kind}}
    events: list[dict[str, Any]] = [start]
    train: dict[int, dict[str, Any]] = {}
    evals: dict[tuple[int, str], dict[str, Any]] = {}
    for step, entry in entries:
        if not isinstance(step, int) or isinstance(step, bool) or step < 0:
            continue  # not a step a Trainer logs
        if any(k.startswith("eval_") for k in entry):
            split, metrics = split_eval_metrics({k: v for k, v in entry.items() if k.startswith("eval_")})
            clean = {("n" if k == "samples" else k): v for k, v in metrics.items() if _num(v) is not None}
            if clean:
                evals.setdefault((step, split), {}).update(clean)  # a resumed run's re-logged step: the last
            continue
        row = {_TRAIN_KEYS[k]: float(v) for k, v in entry.items() if k in _TRAIN_KEYS and _num(v) is not None}
        if row and not any(k in entry for k in _NOT_A_SERIES):
            train.setdefault(step, {}).update(row)
    for step in sorted(train):
        events.append({"event": "train_step", "step": step, **train[step]})
    for (step, split), metrics in sorted(evals.items()):
        events.append({"event": "eval", "step": step, "split": split, "metrics": metrics})
    events.sort(key=lambda e: (0, 0, 0) if e["event"] == "run_start" else
                (1, e["step"], 0 if e["event"] == "train_step" else 1))
    last = max((e["step"] for e in events[1:]), default=0)
    if finished:
        events.append({"event": "run_end", "step": last, "status": "ok",
                       "summary": {"total_steps": int(state.get("global_step") or last)}})
    return events


def _trainer_state_events(path: Path) -> list[dict[str, Any]]:
    from ..bounded import loads_json

    try:  # Python's json reads the NaN the Trainer writes; the nesting is bounded first
        state = loads_json(path.read_bytes(), path=path, what="trainer_state.json", error=GradienceError)
    except OSError as exc:
        raise GradienceError(f"cannot read trainer_state.json: {exc.strerror}", path=path) from None
    if not isinstance(state, dict):
        raise GradienceError("trainer_state.json is not a JSON object", path=path,
                             hint="give the trainer_state.json the HF Trainer writes in output_dir")
    history = state.get("log_history")
    if not isinstance(history, list):
        raise GradienceError("trainer_state.json has no log_history list", path=path,
                             hint="give the trainer_state.json the HF Trainer writes in output_dir")
    # The counts the Trainer writes, kept only when they are what it writes (non-negative integers).
    state = {**state, **{k: _count(state.get(k)) for k in ("global_step", "max_steps", "train_batch_size")},
             "num_train_epochs": _num(state.get("num_train_epochs"))}
    entries = [(e["step"], e) for e in history if isinstance(e, dict) and _count(e.get("step")) is not None]
    finished = any("train_runtime" in e for _, e in entries) or (
        bool(state["max_steps"]) and (state["global_step"] or 0) >= state["max_steps"])
    return _from_logs(entries, str(path), "trainer_state", state, finished)


def _count(v: Any) -> int | None:
    """A non-negative integer as the Trainer writes it (not a bool, a float or a string); else None."""
    return v if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else None


TB_MAX_SCALARS = 1_000_000


def _tensorboard_events(log_dir: Path) -> list[dict[str, Any]]:
    """Scalars of a TensorBoard log (transformers' TensorBoardCallback: ``train/<key>``,
    ``eval/<key>``; Gradience's export: ``eval/<split>/<metric>``) as HF-style log entries."""
    try:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    except ImportError as exc:
        raise MissingExtraError("tensorboard", "trackers", "reading a TensorBoard log") from exc
    per_step: dict[int, dict[str, Any]] = {}
    dirs = sorted({p.parent for p in _tb_files(log_dir)})
    if len(dirs) > 1:  # HF writes one folder per run under output_dir/runs/: never splice runs together
        names = ", ".join(str(d.relative_to(log_dir)) if d != log_dir else "." for d in dirs[:5])
        raise GradienceError(f"the folder holds {len(dirs)} TensorBoard runs ({names}{', …' if len(dirs) > 5 else ''})",
                             path=log_dir, hint="give one run's folder")
    for d in dirs:
        # At most TB_MAX_SCALARS points per series (an HF run logs one per logging step; beyond it the
        # accumulator keeps an even reservoir sample), so a forged or runaway log cannot fill memory.
        acc = EventAccumulator(str(d), size_guidance={"scalars": TB_MAX_SCALARS})
        acc.Reload()
        for tag in acc.Tags().get("scalars", []):
            head, _, rest = tag.partition("/")
            if head == "train" and not rest.startswith("gradience/"):
                key = rest
            elif head == "eval" and rest:
                key = "eval_" + rest.replace("/", "_")
            else:
                continue
            for ev in acc.Scalars(tag):
                per_step.setdefault(int(ev.step), {})[key] = float(ev.value)
    if not per_step:
        raise GradienceError("the TensorBoard log holds no train/ or eval/ scalars", path=log_dir,
                             hint="give the log directory of a run that logged its training (report_to tensorboard)")
    # One HF log call is either eval_* or train-side: split each step's keys into both entries.
    entries: list[tuple[int, dict[str, Any]]] = []
    for step in sorted(per_step):
        values = per_step[step]
        ev = {k: v for k, v in values.items() if k.startswith("eval_")}
        # TensorBoard merges a step's logs: the end-of-training summary (train_runtime, train_loss)
        # shares the last step with its training log, so it is dropped key by key.
        tr = {k: v for k, v in values.items() if not k.startswith("eval_") and k not in _NOT_A_SERIES}
        by_split = _eval_groups(ev)
        entries.extend((step, group) for group in by_split)
        if tr:
            entries.append((step, tr))
    state = {"global_step": max(per_step)}
    return _from_logs(entries, str(log_dir), "tensorboard", state, finished=False)


def _eval_groups(values: dict[str, Any]) -> list[dict[str, Any]]:
    """Split one step's ``eval_*`` keys into the evaluations they came from: each eval set's keys
    share the prefix of its ``…_loss`` / ``…_runtime`` key (``eval_test_``, ``eval_``); a key
    matching none (TRL's unprefixed ``eval_mean_token_accuracy``) joins the only group, if one."""
    prefixes = sorted({k[: -len(suffix)] for k in values for suffix in ("loss", "runtime") if k.endswith("_" + suffix)},
                      key=len, reverse=True)
    groups: dict[str, dict[str, Any]] = {p: {} for p in prefixes}
    orphans: dict[str, Any] = {}
    for k, v in values.items():
        owner = next((p for p in prefixes if k.startswith(p)), None)  # longest prefix first
        if owner is None:
            orphans[k] = v
        else:
            groups[owner][k] = v
    if orphans and len(groups) == 1:
        next(iter(groups.values())).update(orphans)
    return [g for g in groups.values() if g]


def import_events(path: Path) -> tuple[str, list[dict[str, Any]]]:
    """(format, events) of an importable log at ``path``; a one-line error otherwise."""
    if not path.exists():
        raise GradienceError("not found", path=path,
                             hint="give an HF output_dir, a trainer_state.json or a TensorBoard log directory")
    found = detect_source(path)
    if found is None or found[0] == "telemetry":
        raise not_importable(path)
    kind, where = found
    return kind, (_trainer_state_events(where) if kind == "trainer_state" else _tensorboard_events(where))


def not_importable(path: Path) -> GradienceError:
    return GradienceError("neither a telemetry file nor an importable training log", path=path,
                          hint="give a Gradience run.jsonl, an HF output_dir or trainer_state.json, or a "
                               "TensorBoard log directory")


def write_import(events: list[dict[str, Any]], out: Path) -> Path:
    """Write ``events`` as a new telemetry v1 run to ``out``."""
    from ..telemetry.writer import TelemetryWriter

    writer = TelemetryWriter(out)
    for e in events:
        payload = {k: v for k, v in e.items() if k not in ("event", "step")}
        if e["event"] == "run_start":
            writer.run_start(payload.get("config") or {}, payload.get("meta") or {})
        elif e["event"] == "run_end":
            writer.run_end(status=payload.get("status", "ok"), summary=payload.get("summary"), step=e["step"])
        else:
            writer.emit(e["event"], step=e["step"], **payload)
    writer.close()
    return out


_TEMP_DIRS: list[Path] = []


def _cleanup() -> None:
    for d in _TEMP_DIRS:
        shutil.rmtree(d, ignore_errors=True)


def resolve_input(path: str | Path) -> Path:
    """The telemetry file to read for ``path``: a telemetry file (or a run directory's
    ``run.jsonl``) as it is; an HF output_dir / ``trainer_state.json`` / TensorBoard log converted
    into a temporary file (removed at exit; the source is never written); otherwise a one-line
    error, exit 2. A file with lines but not one telemetry event is refused too."""
    p = Path(path)
    if not p.exists():
        raise GradienceError("telemetry file not found", path=p, hint="check the path (a run writes <out_dir>/run.jsonl)")
    found = detect_source(p)
    if found is None:
        raise not_importable(p)
    kind, where = found
    if kind == "telemetry":
        _require_telemetry(where)
        return where
    _, events = import_events(p)
    tmp = Path(tempfile.mkdtemp(prefix="gradience-import-"))
    if not _TEMP_DIRS:
        atexit.register(_cleanup)
    _TEMP_DIRS.append(tmp)
    return write_import(events, tmp / "run.jsonl")


def _require_telemetry(path: Path) -> None:
    """Refuse a non-empty file in which not one line is a telemetry event (a torn or partly bad
    file with some valid events is still read, its bad lines reported)."""
    from ..telemetry.reader import TelemetryReader

    if path.stat().st_size == 0:
        return
    reader = TelemetryReader(path)
    for _ in reader.iter_events():
        return
    if reader.issues and not _has_telemetry_envelope(path):
        raise not_importable(path)


def _has_telemetry_envelope(path: Path, head_bytes: int = 1 << 16) -> bool:
    """Some line near the start carries Gradience's schema id: a damaged run file (every line
    invalid) is still telemetry, read with its issues listed, not "neither"."""
    from ..telemetry.schema import SCHEMA_ID

    with path.open("rb") as f:
        return f'"{SCHEMA_ID}"'.encode() in f.read(head_bytes)

