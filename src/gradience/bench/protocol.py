"""The bench protocol: probe → eval → audit → variants → retrain/truncate → eval → verdicts.

Per seed, in ``OUTPUT/seed_<seed>/<variant>/``: ``run.jsonl`` (telemetry), ``peft/`` (the
adapter), ``eval.json`` (exact counts, real ranks, parameter counts); the probe also keeps
``audit.json``. ``eval.json`` is written last and atomically, so its presence means "done":
re-running with the same output directory reuses every finished variant whose plan and config
match and retrains only what is missing. Reports are rewritten after every variant, so an
interrupted bench still leaves readable partial results.

Printing is not done here: progress goes to a :class:`Reporter` the caller supplies.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .._version import __version__
from ..errors import ConfigError
from ..telemetry.encoding import write_json_atomic
from .config import BenchConfig
from .strategies import VariantPlan, plan_variants
from .verdicts import Policy, Score, SeedResult, judge, load_policy

__all__ = ["BenchOutcome", "Reporter", "run_bench"]

EVAL_FILE = "eval.json"
PROBE = "probe"


class Reporter:
    """Progress sink; the default does nothing. Units are optimizer steps (a truncation or a
    reused variant counts as a whole job of ``max_steps`` units, so the ETA stays honest)."""

    def start(self, total_units: int, jobs: int) -> None: ...
    def job_start(self, seed: int, variant: str, units: int, reused: bool) -> None: ...
    def advance(self, units: int) -> None: ...
    def job_done(self, seed: int, variant: str, record: dict[str, Any], reused: bool) -> None: ...
    def note(self, message: str) -> None: ...
    def stop(self) -> None: ...


@dataclass
class BenchOutcome:
    status: str
    reason: str
    output: Path
    bench: dict[str, Any] = field(default_factory=dict)
    verdicts: dict[str, Any] = field(default_factory=dict)


# Atomic writes: a crash never leaves a half-written eval.json that resume would trust.
_write_json = write_json_atomic


def _read_json(path: Path) -> dict[str, Any] | None:
    from ..bounded import loads_json
    from ..errors import GradienceError

    try:
        data = loads_json(path.read_bytes(), path=path, what="bench record")
    except (OSError, GradienceError):
        return None  # unreadable: redone, never trusted
    return data if isinstance(data, dict) else None


def environment(device: str | None = None) -> dict[str, Any]:
    """Library versions and machine facts recorded in bench.json (no host names, no paths)."""
    env: dict[str, Any] = {"gradience": __version__, "python": platform.python_version(),
                           "platform": platform.platform(terse=True), "cpu_count": os.cpu_count(),
                           "device": device}
    for mod in ("torch", "transformers", "peft", "numpy"):
        m = sys.modules.get(mod)
        env[mod] = getattr(m, "__version__", None) if m else None
    torch = sys.modules.get("torch")  # imported by run_bench's import_stack before any report is written
    if torch is not None:
        env["torch_threads"] = torch.get_num_threads()
    return env


def _probe_plan(cfg: BenchConfig) -> VariantPlan:
    return VariantPlan(PROBE, r=cfg.lora.probe_r, alpha=cfg.lora.alpha, note="high-rank probe")


def _metric_key(cfg: BenchConfig) -> str:
    return "accuracy" if cfg.task.profile == "classification" else "exact_match"


def _reusable(rec: dict[str, Any] | None, cfg_hash: str, plan: VariantPlan) -> bool:
    if not rec:
        return False
    return rec.get("config_hash") == cfg_hash and rec.get("plan_fingerprint") == plan.fingerprint() \
        and isinstance(rec.get("correct"), int) and isinstance(rec.get("n"), int)


def audit_probe(adapter_dir: Path, cfg: BenchConfig) -> dict[str, Any]:
    """Audit the probe adapter: summary, per-module ranks and the budgeted allocation.

    Returns ``{"summary", "per_module", "budget", "budget_params"}``; ``per_module`` and ``budget``
    hold ``ranks: {module: r}`` plus PEFT-ready ``r``/``lora_alpha``/``rank_pattern``/``alpha_pattern``.
    The budget is ``compression.budget_fraction`` of the probe's LoRA parameters (raised to the
    rank-1-everywhere minimum when smaller, noted in ``budget["note"]``).
    """
    from ..audit import audit_adapter
    from ..audit.suggest import ALLOWED_RANKS, per_module_suggestion, round_up_rank
    from ..errors import UsageError

    first = audit_adapter(str(adapter_dir), udr=False)
    summary = first.summary
    total = summary.total_lora_params or 0
    budget = max(1, int(cfg.compression.budget_fraction * total))
    note = None
    try:
        result = audit_adapter(str(adapter_dir), udr=False, budget_params=budget)
    except UsageError:
        # Below rank 1 everywhere: PEFT needs r >= 1, so the smallest possible adapter is the budget.
        floor = sum((r.in_features or 0) + (r.out_features or 0) for r in first.layers)
        note = f"budget {budget:,} is below rank 1 everywhere; used the minimum {floor:,}"
        budget = floor
        result = audit_adapter(str(adapter_dir), udr=False, budget_params=budget)
    per_module = dict(result.per_layer)
    allowed = sorted(cfg.compression.allowed_ranks)
    if tuple(allowed) != tuple(ALLOWED_RANKS):
        measured = [r.to_dict() for r in result.layers if (r.frob_sq or 0) > 0]
        per_module = per_module_suggestion(measured, bool(summary.use_rslora), allowed=allowed)
        r_max = max(r.r or 0 for r in result.layers)
        summary = replace(
            summary, suggested_r_global_median=round_up_rank(summary.energy_rank_90_p50, r_max, allowed),
            suggested_r_global_90=round_up_rank(summary.energy_rank_90_p90, r_max, allowed))
    alloc = dict(result.allocation or {})
    if note:
        alloc["note"] = note
    return {"summary": summary.to_dict(), "per_module": per_module, "budget": alloc, "budget_params": budget}


class _Runner:
    def __init__(self, cfg: BenchConfig, output: Path, device: str, reporter: Reporter, policy: Policy) -> None:
        self.cfg, self.output, self.device, self.reporter, self.policy = cfg, output, device, reporter, policy
        self.cfg_hash = cfg.config_hash()
        self.probe_hash = cfg.probe_hash()
        self.data: Any = None
        self.records: dict[int, dict[str, Any]] = {}  # seed -> {variant: eval record}
        self.audits: dict[int, dict[str, Any]] = {}
        self.started = time.time()

    # -- per variant -----------------------------------------------------------------------
    def _task_data(self) -> Any:
        if self.data is None:
            from .data import load_task_data

            tr = self.cfg.train
            self.data = load_task_data(self.cfg.task, tr.train_samples, tr.eval_samples, val_samples=tr.val_samples)
        return self.data

    def _finish_record(self, seed: int, plan: VariantPlan, vdir: Path, metrics: dict[str, Any],
                       train_info: dict[str, Any] | None) -> dict[str, Any]:
        from .train import ADAPTER_DIR, adapter_stats

        stats = adapter_stats(vdir / ADAPTER_DIR)
        key = _metric_key(self.cfg)
        rec = {
            "strategy": plan.strategy, "seed": seed, "config_hash": self.cfg_hash, "probe_hash": self.probe_hash,
            "plan": plan.to_dict(), "plan_fingerprint": plan.fingerprint(),
            "metric": key, "correct": int(metrics["correct"]), "n": int(metrics["n"]),
            "value": float(metrics[key]), "loss": metrics.get("loss"),
            "eval_seconds": metrics.get("eval_seconds"),
            "retrained": plan.retrain, "control": plan.control,
            "ranks": stats["ranks"], "r_min": stats["r_min"], "r_max": stats["r_max"],
            "r_median": stats["r_median"], "lora_params": stats["lora_params"], "head_params": stats["head_params"],
            "train": train_info, "finished_at": time.time(),
        }
        _write_json(vdir / EVAL_FILE, rec)
        return rec

    def _units(self, plan: VariantPlan) -> int:
        return plan.heal_steps if not plan.retrain and plan.heal_steps else self.cfg.train.max_steps

    def _retrain_steps(self, seed: int, plan: VariantPlan) -> tuple[int, bool]:
        """(step cap, plateau rule on?) of a trained-from-scratch run: the probe always uses the rule;
        variants too, or (``plateau_variants: false``) train as many steps as their seed's probe did."""
        tr = self.cfg.train
        if plan.strategy == PROBE or tr.plateau_variants or not tr.plateau_every:
            return tr.max_steps, bool(tr.plateau_every)
        probe = self.records.get(seed, {}).get(PROBE) or {}
        return int((probe.get("train") or {}).get("steps") or tr.max_steps), False

    def run_variant(self, seed: int, plan: VariantPlan, *, audit: bool = False) -> dict[str, Any]:
        from .train import evaluate_adapter, train_variant

        vdir = self.output / f"seed_{seed}" / plan.strategy
        units = self._units(plan)
        existing = _read_json(vdir / EVAL_FILE)
        if existing is not None and existing.get("config_hash") == self.cfg_hash and existing.get("probe_hash") is None:
            existing["probe_hash"] = self.probe_hash  # a record from before probe hashes: same config, same probe
            _write_json(vdir / EVAL_FILE, existing)
        if existing is not None and existing.get("probe_hash") == self.probe_hash:
            # A probe depends on no compression setting, and a variant only on its probe and its plan
            # (checked by the fingerprint below): results copied from another bench are reused as they are.
            existing = {**existing, "config_hash": self.cfg_hash}
        if existing is not None and existing.get("config_hash") not in (None, self.cfg_hash):
            raise ConfigError(f"{vdir / EVAL_FILE} was made with a different bench config",
                              hint="use a new --output directory (or delete the old one)")
        if _reusable(existing, self.cfg_hash, plan):
            assert existing is not None
            self.reporter.job_start(seed, plan.strategy, units, True)
            self.reporter.advance(units)
            self.reporter.job_done(seed, plan.strategy, existing, True)
            return existing
        if vdir.exists():  # an interrupted or outdated variant: start it clean
            shutil.rmtree(vdir)
        vdir.mkdir(parents=True)
        self.reporter.job_start(seed, plan.strategy, units, False)
        data = self._task_data()
        if plan.retrain:
            done = [0]

            def on_step(step: int) -> None:
                if step > done[0]:
                    self.reporter.advance(step - done[0])
                    done[0] = step

            cap, plateau = self._retrain_steps(seed, plan)
            info = train_variant(self.cfg, data, plan, seed, vdir, self.device, on_step=on_step, audit=audit,
                                 max_steps=cap, plateau=plateau)
            self.reporter.advance(max(0, units - done[0]))
        elif plan.heal_steps:
            info = self._truncate_heal(seed, plan, vdir)
            self.reporter.advance(units)
        else:
            info = self._truncate(seed, plan, vdir)
            self.reporter.advance(units)
        metrics = evaluate_adapter(self.cfg, data, vdir / "peft", self.device, run_jsonl=vdir / "run.jsonl")
        if not plan.retrain and not plan.heal_steps:
            from ..telemetry.reader import TelemetryReader
            from ..telemetry.writer import TelemetryWriter

            with TelemetryWriter(vdir / "run.jsonl", run_id=TelemetryReader(vdir / "run.jsonl").last_run_id()) as w:
                w.run_end(status="ok", reason="truncated from the probe, evaluated without training")
        rec = self._finish_record(seed, plan, vdir, metrics, info)
        self.reporter.job_done(seed, plan.strategy, rec, False)
        return rec

    def _truncate_heal(self, seed: int, plan: VariantPlan, vdir: Path) -> dict[str, Any]:
        """SVD-truncate the probe exactly as ``truncate`` (and ``gradience compress``) does, then train the
        truncated adapter (LoRA factors and head) for ``plan.heal_steps`` steps at ``compression.heal_lr``."""
        from .train import train_variant

        truncated = vdir / "_truncated"
        info = self._truncate(seed, plan, vdir, dest=truncated, telemetry=False)
        healed = train_variant(self.cfg, self._task_data(), plan, seed, vdir, self.device,
                               max_steps=plan.heal_steps, init_adapter=truncated, lr=plan.heal_lr or self.cfg.train.lr)
        shutil.rmtree(truncated, ignore_errors=True)  # the same adapter as the `truncate` variant's
        return {**healed, "compress_seconds": info["compress_seconds"], "compress": info["compress"]}

    def _truncate(self, seed: int, plan: VariantPlan, vdir: Path, *, dest: Path | None = None,
                  telemetry: bool = True) -> dict[str, Any]:
        from ..audit.compress import compress_adapter
        from ..telemetry.writer import TelemetryWriter
        from .train import ADAPTER_DIR, config_snapshot

        src = self.output / f"seed_{seed}" / PROBE / ADAPTER_DIR
        t0 = time.perf_counter()
        info = compress_adapter(str(src), str(dest or vdir / ADAPTER_DIR), rank=plan.truncate_rank,
                                energy=plan.truncate_energy, budget_params=plan.truncate_budget)
        seconds = time.perf_counter() - t0
        summary = info.get("summary", info) if isinstance(info, dict) else None
        if not telemetry:
            return {"steps": 0, "compress_seconds": round(seconds, 3), "compress": _small(summary)}
        w = TelemetryWriter(vdir / "run.jsonl")
        w.run_start(config_snapshot(self.cfg, plan, seed), meta={"framework": "gradience.bench",
                                                                 "derived_from": "probe", "training": False})
        w.close()
        # compress_adapter's report: {"summary": {...scalars}, "modules": [...]}; keep the summary.
        return {"steps": 0, "compress_seconds": round(seconds, 3), "compress": _small(summary)}

    # -- per seed ----------------------------------------------------------------------------
    def run_seed(self, seed: int) -> bool:
        """Probe, audit, variants for one seed; False when the probe missed its quality gate."""
        cfg = self.cfg
        recs = self.records.setdefault(seed, {})
        probe = self.run_variant(seed, _probe_plan(cfg), audit=True)
        recs[PROBE] = probe
        self.write_reports(partial=True)
        gate = self.policy.quality_gate(cfg.task.name, cfg.task.quality_gate)
        if Score.from_eval(probe).fraction < gate:
            self.reporter.note(f"seed {seed}: probe {probe['metric']} {probe['value']:.4f} is below the "
                               f"quality gate {float(gate):.4f}: UNDERTRAINED, variants skipped")
            return False
        audit_path = self.output / f"seed_{seed}" / PROBE / "audit.json"
        audit = _read_json(audit_path)
        if audit is None or audit.get("probe_fingerprint") != probe.get("plan_fingerprint") \
                or audit.get("finished_at") != probe.get("finished_at") \
                or audit.get("config_hash", self.cfg_hash) != self.cfg_hash:
            audit = audit_probe(self.output / f"seed_{seed}" / PROBE / "peft", cfg)
            audit["probe_fingerprint"] = probe.get("plan_fingerprint")
            audit["finished_at"] = probe.get("finished_at")
            audit["config_hash"] = self.cfg_hash  # the allowed ranks and the budget shape the audit
            _write_json(audit_path, audit)
        self.audits[seed] = audit
        co = cfg.compression
        plans = plan_variants(
            audit["summary"], co.strategies, probe_r=cfg.lora.probe_r, probe_alpha=cfg.lora.alpha,
            per_module_ranks=audit["per_module"].get("ranks"),
            budget_ranks=audit["budget"].get("ranks"), truncate_rank=co.truncate_rank,
            truncate_energy=co.truncate_energy, retrain_scaling=co.retrain_scaling, heal_steps=co.heal_steps,
            heal_lr=co.heal_lr, budget_params=audit.get("budget_params"))
        for plan in plans:
            if plan.control and plan.retrain and plan.r == cfg.lora.probe_r and not plan.rank_pattern:
                # Same rank, alpha, seed and data as the probe: retraining reproduces the probe, so the
                # control reuses its adapter and score instead of spending a training run on it.
                recs[plan.strategy] = self._control_from_probe(seed, plan, probe)
            else:
                recs[plan.strategy] = self.run_variant(seed, plan)
            self.write_reports(partial=True)
        return True

    def _control_from_probe(self, seed: int, plan: VariantPlan, probe: dict[str, Any]) -> dict[str, Any]:
        """The probe's record under the control's name; ``eval.json`` points at the probe's adapter."""
        units = self._units(plan)
        self.reporter.job_start(seed, plan.strategy, units, True)
        self.reporter.advance(units)
        rec = dict(probe)
        rec.update({"strategy": plan.strategy, "plan": plan.to_dict(), "plan_fingerprint": plan.fingerprint(),
                    "control": True, "retrained": False, "same_as": PROBE, "adapter": f"../{PROBE}/peft"})
        vdir = self.output / f"seed_{seed}" / plan.strategy
        old = _read_json(vdir / EVAL_FILE)
        if not (_reusable(old, self.cfg_hash, plan) and old and old.get("finished_at") == probe.get("finished_at")):
            vdir.mkdir(parents=True, exist_ok=True)
            _write_json(vdir / EVAL_FILE, rec)
        self.reporter.job_done(seed, plan.strategy, rec, True)
        return rec

    # -- reports -----------------------------------------------------------------------------
    def seed_results(self) -> list[SeedResult]:
        out = []
        for seed, recs in sorted(self.records.items()):
            if PROBE not in recs:
                continue
            r = SeedResult(seed=seed, probe=Score.from_eval(recs[PROBE]))
            for name, rec in recs.items():
                if name != PROBE:
                    r.variants[name] = Score.from_eval(rec)
                    if rec.get("control"):
                        r.controls.add(name)
            out.append(r)
        return out

    def write_reports(self, partial: bool) -> tuple[dict[str, Any], dict[str, Any]]:
        from .report import build_bench, write_outputs

        verdicts = judge(self.seed_results(), self.policy, self.cfg.task.name, self.cfg.compression.strategies,
                         quality_gate=self.cfg.task.quality_gate)
        bench = build_bench(self.cfg, self.records, self.audits, verdicts, environment(self.device),
                            wall_seconds=time.time() - self.started, partial=partial,
                            data=self._task_data().describe())
        write_outputs(self.output, bench, verdicts)
        return bench, verdicts


def _small(d: Any) -> Any:
    """Keep a compress summary's scalars (its per-module detail belongs in its own files)."""
    if not isinstance(d, dict):
        return None
    return {k: v for k, v in d.items() if isinstance(v, (int, float, str, bool)) or v is None}


def check_output_dir(output: Path, cfg: BenchConfig) -> None:
    """Refuse to mix two different bench configs in one output directory (exit 2)."""
    prev = _read_json(output / "bench.json")
    if prev is not None and prev.get("config_hash") not in (None, cfg.config_hash()):
        raise ConfigError(f"{output} holds a bench made with a different config "
                          f"({prev.get('config_hash')} ≠ {cfg.config_hash()})",
                          hint="use a new --output directory to compare configs")
    if output.exists() and not output.is_dir():
        raise ConfigError("--output exists and is not a directory", path=output)


def run_bench(cfg: BenchConfig, output: str | Path, *, device: str = "auto",
              reporter: Reporter | None = None) -> BenchOutcome:
    """Run (or resume) a bench; returns the outcome with ``bench.json`` and ``verdicts.json`` data.

    ``status`` is the verdicts status: PASS, FAIL, UNDERTRAINED or INCOMPLETE.
    """
    from .train import import_stack, pick_device

    import_stack()
    out = Path(output)
    check_output_dir(out, cfg)
    out.mkdir(parents=True, exist_ok=True)
    policy = load_policy(cfg.policy, max_drop_points=cfg.compression.acc_tolerance)
    dev = pick_device(device if device != "auto" else cfg.runtime.device)
    rep = reporter or Reporter()
    runner = _Runner(cfg, out, dev, rep, policy)
    (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2, sort_keys=True) + "\n", encoding="utf-8")
    n_jobs = len(cfg.train.seeds) * (1 + len(cfg.compression.strategies))
    per_seed = cfg.train.max_steps * (1 + sum(s != "truncate_heal" for s in cfg.compression.strategies)) \
        + cfg.compression.heal_steps * sum(s == "truncate_heal" for s in cfg.compression.strategies)
    rep.start(len(cfg.train.seeds) * per_seed, n_jobs)
    try:
        for seed in cfg.train.seeds:
            if not runner.run_seed(seed):
                break  # an undertrained probe makes every verdict meaningless: stop early
        bench, verdicts = runner.write_reports(partial=False)
    finally:
        rep.stop()
    status = verdicts["status"]
    return BenchOutcome(status=status, reason=verdicts["reason"], output=out, bench=bench, verdicts=verdicts)

