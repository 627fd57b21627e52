"""Assemble a :class:`Report` (run + audit + recommendations) and write it to disk."""

from __future__ import annotations

import dataclasses
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import GradienceError, UsageError
from ..policy import run_recommendations
from ..telemetry.snapshot import SignalSnapshot
from .audit_view import AuditView, audit_from_peft_dir, build_audit_view, load_audit_json, validate_audit
from .collect import DEFAULT_MAX_POINTS, RunData, collect_run

__all__ = ["FORMATS", "Report", "build_report", "policy_recommendations", "resolve_output", "write_report"]

FORMATS = ("html", "md")


@dataclass
class Report:
    """Everything one page shows. ``recommendations`` are dicts (Recommendation.to_dict shape)."""

    run: RunData
    audit: AuditView | None
    recommendations: list[dict[str, Any]]
    rec_source: str  # "policy": the run rules applied to this run (``recommendation_source`` in --json)
    recorded_recommendations: list[dict[str, Any]]
    generated_ts: float = field(default_factory=time.time)

    @property
    def snapshot(self) -> SignalSnapshot:
        return self.run.snapshot


def _rec_dict(rec: Any) -> dict[str, Any]:
    if isinstance(rec, dict):
        return rec
    to_dict = getattr(rec, "to_dict", None)
    if callable(to_dict):
        out = to_dict()
        if isinstance(out, dict):
            return out
    raise TypeError(f"recommendation of unexpected type {type(rec).__name__}")


def policy_recommendations(snap: SignalSnapshot) -> list[dict[str, Any]]:
    """Recommendations from the policy engine's run rules (the same rules as ``gradience monitor``)."""
    return [_rec_dict(r) for r in run_recommendations(snap)]


def build_report(
    run_path: str | os.PathLike[str],
    *,
    run_id: str | None = None,
    audit_path: str | os.PathLike[str] | None = None,
    peft_dir: str | os.PathLike[str] | None = None,
    audit: dict[str, Any] | None = None,
    max_points: int = DEFAULT_MAX_POINTS,
    top_singular_values: int = 16,
) -> Report:
    """Read a run (one pass) and, optionally, an adapter audit; derive everything the page shows.

    Audit source, first found: ``audit`` (a dict), ``audit_path`` (``gradience audit --json
    --layers`` output), ``peft_dir`` (audited now), else the run's own ``lora_audit`` block.
    """
    given = [x is not None for x in (audit, audit_path, peft_dir)]
    if sum(given) > 1:
        raise UsageError("give at most one audit source (--audit or --peft-dir)")
    if peft_dir is not None and not Path(peft_dir).is_dir():
        raise GradienceError("adapter directory not found", path=peft_dir,
                             hint="pass the folder holding adapter_config.json")
    # Validate the audit file before the (possibly long) telemetry pass, so bad input fails fast.
    audit_dict: dict[str, Any] | None = None
    source = ""
    if audit is not None:
        audit_dict, source = validate_audit(audit), "given"
    elif audit_path is not None:
        audit_dict, source = load_audit_json(audit_path), "file"
    run = collect_run(run_path, run_id, max_points=max_points)
    if peft_dir is not None:
        audit_dict, source = audit_from_peft_dir(peft_dir, top_singular_values), "peft-dir"
    snap = run.snapshot
    if audit_dict is None and snap.lora_audit:
        audit_dict, source = validate_audit(snap.lora_audit.to_dict(), path=run.path), "telemetry"
    view = build_audit_view(audit_dict, source) if audit_dict is not None else None

    policy_snap = snap
    if view is not None and not snap.lora_audit:
        # Let the run rules see the audit the user supplied (e.g. compress_rank), summary only.
        policy_snap = dataclasses.replace(snap, lora_audit=view.summary)
    return Report(run=run, audit=view, recommendations=policy_recommendations(policy_snap), rec_source="policy",
                  recorded_recommendations=list(snap.recommendations))


def resolve_output(run_path: str | os.PathLike[str], output: str | os.PathLike[str] | None, fmt: str,
                   protected: Sequence[str | os.PathLike[str]] = ()) -> Path | None:
    """Where to write: ``output``, or ``report.<ext>`` beside the run (inside it when the run is given
as its folder: an HF output_dir, a TensorBoard log, a run directory); ``-`` means stdout (``None``).

    Refuses a directory, a missing parent folder, and any path that is one of the inputs.
    """
    if fmt not in FORMATS:
        raise UsageError(f"unknown format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    if output is not None and str(output) == "-":
        return None
    ext = "html" if fmt == "html" else "md"
    base = Path(run_path) if Path(run_path).is_dir() else Path(run_path).parent
    out = Path(output) if output is not None else base / f"report.{ext}"
    if out.is_dir():
        raise GradienceError("output path is a directory", path=out, hint=f"pass a file, e.g. {out / ('report.' + ext)}")
    if not out.parent.exists():
        raise GradienceError("output folder does not exist", path=out.parent, hint="create it first")
    for p in [run_path, *protected]:
        if p is not None and Path(p).exists() and out.exists() and os.path.samefile(out, p):
            raise GradienceError("refusing to overwrite an input file with the report", path=out,
                                 hint="choose another -o path")
    return out


def write_report(text: str, out: Path) -> int:
    """Write atomically (temp file + rename, so a reader never sees half a page); returns bytes."""
    data = text.encode("utf-8")
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    except OSError as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise GradienceError(f"cannot write report: {exc.strerror}", path=out) from None
    return len(data)
