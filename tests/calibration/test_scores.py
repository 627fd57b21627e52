"""The calibration scorer: its ground truth, its mechanics on synthetic runs, and the issue's targets
on the committed corpus (tests/data/calibration), re-scored with the rules the code holds now."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from benchmarks.calibration_score import (
    COLLAPSED,
    DEFAULT_CORPUS,
    DIVERGED,
    HEALTHY,
    INJECTED,
    MEMORISATION,
    WORTH,
    divergence_step,
    ground_truth,
    main,
    render_table,
    score_corpus,
    worth_saying,
)

from gradience.telemetry.writer import TelemetryWriter

NAN = float("nan")


def series(values: list[float]) -> list[tuple[int, float | None]]:
    return [(i + 1, v) for i, v in enumerate(values)]


# -- ground truth ---------------------------------------------------------------------------------------
def test_a_transient_hard_batch_is_not_a_divergence() -> None:
    assert divergence_step(series([1.0] * 20 + [15.0] + [1.0] * 10)) is None
    # two hard batches in a row are still a minority of the five-step window
    assert divergence_step(series([1.0] * 20 + [15.0, 14.0] + [1.0] * 10)) is None


def test_a_sustained_tenfold_rise_is_a_divergence_at_its_first_step() -> None:
    assert divergence_step(series([1.0] * 20 + [12.0] * 10)) == 21
    # three of the five steps up is "stays there" (the window's median)
    assert divergence_step(series([1.0] * 20 + [12.0, 1.0, 13.0, 1.0, 11.0] + [1.0] * 5)) == 21
    # at the end of a run, the steps that exist form the window
    assert divergence_step(series([1.0] * 20 + [12.0, 12.0])) == 21


def test_a_rise_below_ten_times_the_median_is_not_a_divergence() -> None:
    assert divergence_step(series([1.0] * 20 + [9.5] * 10)) is None


def test_the_median_is_over_all_earlier_steps() -> None:
    # a loss that fell from 10 to 0.1: 1.5 is > 10x the recent losses but not 10x the median of all
    losses = [10.0] * 10 + [0.1] * 5 + [1.5] * 10
    assert divergence_step(series(losses)) is None


def test_non_finite_is_a_divergence() -> None:
    assert divergence_step(series([1.0] * 5 + [NAN] + [1.0] * 5)) == 6
    assert divergence_step(series([1.0] * 5 + [math.inf])) == 6
    assert divergence_step(series([NAN, 1.0, 1.0])) == 1
    # a non-finite loss in the window counts as blown up
    assert divergence_step(series([1.0] * 10 + [20.0, NAN, NAN, 1.0, 1.0])) == 11


def test_step_one_diverges_only_by_being_non_finite() -> None:
    assert divergence_step(series([100.0] + [1.0] * 10)) is None
    assert divergence_step(series([1e9] * 3)) is None


def test_missing_losses_are_skipped() -> None:
    assert divergence_step([(1, 1.0), (2, None), (3, 1.0), (4, 20.0), (5, 20.0), (6, 20.0)]) == 4


def test_collapsed_at_the_majority_rate_plus_one_point() -> None:
    labels = {"n_labels": 2, "majority_rate": 0.509}
    said, _ = worth_saying({"test": {"accuracy": 0.519}, "train": {"accuracy": 0.52}}, labels)
    assert said == [COLLAPSED]
    said, _ = worth_saying({"test": {"accuracy": 0.53}, "train": {"accuracy": 0.55}}, labels)
    assert said == []
    # without a majority rate, the chance level of n labels
    said, _ = worth_saying({"test": {"accuracy": 0.26}}, {"n_labels": 4})
    assert said == [COLLAPSED]


def test_memorisation_by_accuracy_gap_or_perplexity_ratio() -> None:
    labels = {"n_labels": 2, "majority_rate": 0.5}
    said, facts = worth_saying({"test": {"accuracy": 0.80}, "train": {"accuracy": 0.90}}, labels)
    assert said == [MEMORISATION] and facts["acc_gap"] == pytest.approx(0.10)
    said, _ = worth_saying({"test": {"accuracy": 0.85}, "train": {"accuracy": 0.90}}, labels)
    assert said == []
    said, facts = worth_saying({"test": {"loss": 3.0}, "train": {"loss": 2.5}}, None)  # ppl ratio e^0.5 = 1.65
    assert said == [MEMORISATION] and facts["ppl_ratio"] == pytest.approx(math.exp(0.5))
    said, _ = worth_saying({"test": {"ppl": 14.0}, "train": {"ppl": 10.0}}, None)
    assert said == []


def test_categories_in_order_injected_diverged_worth_healthy() -> None:
    ok = {"test": {"accuracy": 0.9}, "train": {"accuracy": 0.92}}
    low = {"test": {"accuracy": 0.5}, "train": {"accuracy": 0.5}}
    labels = {"n_labels": 2, "majority_rate": 0.5}
    flat = series([1.0] * 30)
    blown = series([1.0] * 10 + [NAN] * 5)
    assert ground_truth(flat, ok, labels).category == HEALTHY
    assert ground_truth(flat, low, labels).category == WORTH
    assert ground_truth(blown, low, labels).category == DIVERGED  # a diverged run is not "worth saying"
    t = ground_truth(blown, low, labels, [{"step": 11, "kind": "nan_loss"}])
    assert (t.category, t.divergence_step) == (INJECTED, 11)


# -- the scorer on a synthetic corpus -------------------------------------------------------------------
def _run(path: Path, losses: list[float], grads: list[float], *, acc: tuple[float, float] = (0.9, 0.88),
         alerts: list[dict[str, Any]] = (), kappa: float | None = 2.0) -> None:  # type: ignore[assignment]
    with TelemetryWriter(path, run_id=path.stem) as w:
        w.run_start({"model_name": "synthetic", "task_profile": "easy_classification",
                     "training": {"max_steps": len(losses)}}, {})
        for i, (loss, g) in enumerate(zip(losses, grads, strict=True)):
            step = i + 1
            w.train_step(step, loss=loss, lr=1e-3, grad_norm=g, grad_norm_clipped=min(g, 1.0))
            for a in alerts:
                if a["step"] == step:
                    w.alert(a["severity"], a["code"], a.get("message", ""), step=step)
            if kappa is not None and step % 5 == 0:
                w.metrics("spectral", {"kappa_tilde": kappa, "risk_level": "DANGER", "n_modules": 4,
                                       "method": "lora_exact", "window": 5}, step=step)
            if step % 10 == 0 or step == len(losses):
                w.eval(step, "train", {"loss": 0.3, "accuracy": acc[0], "n": 64})
                w.eval(step, "test", {"loss": 0.35, "accuracy": acc[1], "n": 64})


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("corpus")
    smooth = [1.0 - 0.01 * i for i in range(40)]
    # healthy, with a recorded alert of an older rule that the current rules do not raise
    _run(d / "healthy_s0.jsonl", smooth, [1.0] * 40,
         alerts=[{"step": 12, "severity": "error", "code": "GRAD_NORM_CRITICAL", "message": "recorded by an old rule"}])
    nan_at_7 = list(smooth)
    nan_at_7[6] = NAN
    _run(d / "fault_s0.jsonl", nan_at_7, [1.0] * 40)
    # a gradient-norm excursion at step 2, long before the LR raise (step 25) that causes the blow-up
    _run(d / "diverges_s0.jsonl", [1.0] * 30 + [50.0] * 10, [1.0, 20.0] + [1.0] * 28 + [1e5] * 10)
    _run(d / "stuck_s1.jsonl", [0.69] * 40, [1.0] * 40, acc=(0.5, 0.5))
    entries = [
        {"file": "healthy_s0.jsonl", "profile": "healthy", "seed": 0, "split": "fit",
         "labels": {"n_labels": 2, "majority_rate": 0.5}, "injected": []},
        {"file": "fault_s0.jsonl", "profile": "fault", "seed": 0, "split": "fit",
         "labels": {"n_labels": 2, "majority_rate": 0.5}, "injected": [{"step": 7, "kind": "nan_loss"}]},
        {"file": "diverges_s0.jsonl", "profile": "divergence", "seed": 0, "split": "test",
         "labels": {"n_labels": 2, "majority_rate": 0.5}, "injected": [], "lr_boost": {"step": 25, "factor": 100}},
        {"file": "stuck_s1.jsonl", "profile": "no_learning", "seed": 1, "split": "test",
         "labels": {"n_labels": 2, "majority_rate": 0.5}, "injected": []},
    ]
    (d / "manifest.json").write_text(json.dumps({"version": 1, "runs": entries}))
    return d


@pytest.fixture(scope="module")
def scored(synthetic: Path) -> Any:
    return score_corpus(synthetic)


def _by_name(result: Any) -> dict[str, Any]:
    return {rs.run.name: rs for rs in result.scores}


def test_truth_of_the_synthetic_runs(scored: Any) -> None:
    runs = _by_name(scored)
    assert runs["healthy_s0"].truth.category == HEALTHY
    assert runs["fault_s0"].truth.category == INJECTED
    assert (runs["diverges_s0"].truth.category, runs["diverges_s0"].truth.divergence_step) == (DIVERGED, 31)
    assert (runs["stuck_s1"].truth.category, runs["stuck_s1"].truth.worth) == (WORTH, [COLLAPSED])


def test_the_guard_replay_finds_faults_at_their_step(scored: Any) -> None:
    runs = _by_name(scored)
    assert runs["healthy_s0"].sources["guard"].steps == []
    assert runs["fault_s0"].sources["guard"].steps == [7]
    assert runs["diverges_s0"].sources["guard"].first_step == 31


def test_recorded_alerts_are_replaced_by_the_current_rules(scored: Any) -> None:
    healthy = _by_name(scored)["healthy_s0"]
    # grad norms of 1.0 are healthy today: the recorded GRAD_NORM_CRITICAL is gone from every view
    assert healthy.sources["grad"].steps == []
    assert not any("GRAD_NORM_CRITICAL" in text for text in healthy.sources["monitor"].items.values())


def test_kappa_levels_are_replayed_not_read(scored: Any) -> None:
    # every sample was recorded as DANGER; a constant κ̃ replays as no alarm (and no raw level)
    healthy = _by_name(scored)["healthy_s0"]
    assert healthy.sources["kappa"].steps == [] and healthy.sources["kappa"].raw_steps == []


def test_alarms_before_the_cause_of_a_divergence_lead_nothing(scored: Any) -> None:
    div = _by_name(scored)["diverges_s0"]
    assert div.truth.cause_step == 25
    grad = div.sources["grad"]
    assert grad.first_step == 2
    assert grad.first_from(25) != 2
    summary = scored.to_dict()["summary"]["all"]["sources"]["grad"]["diverged"]
    assert summary["before_cause"] == 1
    assert summary["leads"]["diverges_s0"] is None or summary["leads"]["diverges_s0"] <= 0


def test_label_facts_missing_from_a_recording_come_from_the_manifest(synthetic: Path) -> None:
    from benchmarks.calibration_score import backfill, load_corpus

    _, runs = load_corpus(synthetic)
    run = next(r for r in runs if r.name == "stuck_s1")
    events = list(backfill(run))
    start = next(e for e in events if e["event"] == "run_start")
    assert start["config"]["n_labels"] == 2
    held_out = [e["metrics"] for e in events if e["event"] == "eval" and e["split"] == "test"]
    train = [e["metrics"] for e in events if e["event"] == "eval" and e["split"] == "train"]
    assert held_out and all(m["majority_rate"] == 0.5 for m in held_out)
    assert all("majority_rate" not in m for m in train)
    assert run.entry["_backfilled"] == ["majority_rate", "n_labels"]


def test_lead_times_and_the_table(scored: Any) -> None:
    result = scored
    summary = result.to_dict()["summary"]
    guard = summary["all"]["sources"]["guard"]
    assert guard["diverged"]["leads"] == {"diverges_s0": 0}
    assert guard["injected"] == {"at_step": 1, "total": 1, "before_fault": 0}
    assert guard["false_alarms"]["healthy"] == 0
    assert set(summary) == {"fit", "test", "all"}
    table = render_table(result, runs=True)
    assert "guard triggers" in table and "target injected_detected" in table
    assert max(len(line) for line in table.splitlines()) <= 100
    json.dumps(result.to_dict("test"), default=str)


def test_command_line(synthetic: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--corpus", str(synthetic), "--split", "test", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["split"] == "test" and {r["name"] for r in out["runs"]} == {"diverges_s0", "stuck_s1"}
    assert main(["--corpus", str(synthetic), "--explain", "fault_s0"]) == 0
    assert "fault_s0" in capsys.readouterr().out


# -- the targets on the committed corpus ----------------------------------------------------------
@pytest.fixture(scope="module")
def corpus() -> Any:
    if not (DEFAULT_CORPUS / "manifest.json").exists():
        pytest.fail(f"the calibration corpus is not recorded: {DEFAULT_CORPUS}/manifest.json is missing "
                    "(python benchmarks/calibration_record.py)")
    return score_corpus(DEFAULT_CORPUS)


def _target(result: Any, name: str) -> dict[str, Any]:
    return result.to_dict()["targets"][name]


def test_corpus_no_false_alarm_on_healthy_runs(corpus: Any) -> None:
    t = _target(corpus, "no_false_alarms")
    assert t["ok"], "warning-or-worse alarms on healthy runs: " + "; ".join(
        f"{src}: {len(runs)} ({', '.join(runs)})" for src, runs in t["by_source"].items())


def test_corpus_every_injected_fault_detected_at_its_step(corpus: Any) -> None:
    t = _target(corpus, "injected_detected")
    assert any(int(i["step"]) == 1 for rs in corpus.scores for i in rs.truth.injected), \
        "the corpus must hold injected faults, one of them at step 1"
    assert t["ok"], f"{len(t['missed'])}/{t['total']} injected faults not detected at their step: {t['missed']}"


def test_corpus_every_divergence_flagged_no_later_than_its_blow_up(corpus: Any) -> None:
    t = _target(corpus, "divergences_in_time")
    assert t["total"] > 0, "the corpus must hold real divergences"
    assert t["ok"], f"{len(t['late'])}/{t['total']} divergences flagged late: {t['late']}"


def test_corpus_every_worth_saying_case_said(corpus: Any) -> None:
    t = _target(corpus, "worth_saying_said")
    assert t["ok"], f"{len(t['unsaid'])}/{t['total']} worth-saying runs not said: {t['unsaid']}"
