"""The guard's detection rules (gradience.training.detect): the loss-spike floor and limit, the
replay over a recorded series, the task's loss prior, and a healthy run through the real callback."""

from __future__ import annotations

import math
import random

import pytest

from gradience.training.config import GuardConfig
from gradience.training.detect import GuardDetector, loss_prior, model_loss_prior, replay_guard

LN2 = math.log(2)


def _low_loss_run_with_hard_batches(seed: int = 0, steps: int = 300) -> list[tuple[int, float, float]]:
    """A healthy binary classifier: loss from ln 2 down to ≈ 0.02, and from step 150 on a batch of
    rare examples every 7th step (finite loss 0.9–1.8, gradients clipped: pre-clip norm ≈ 3)."""
    rng = random.Random(seed)
    out = []
    for step in range(1, steps + 1):
        loss = (0.02 + 0.68 * math.exp(-step / 30)) * (1 + 0.3 * rng.uniform(-1, 1))
        grad = 0.5
        if step > 150 and step % 7 == 0:
            loss, grad = rng.uniform(0.9, 1.8), 3.0
        out.append((step, loss, grad))
    return out


@pytest.mark.parametrize("prior", [LN2, None])
def test_hard_batches_on_a_low_loss_run_are_not_spikes(prior):
    series = _low_loss_run_with_hard_batches()
    hard = [s for s, loss, _ in series if s > 150 and loss > 0.8]
    late = [loss for step, loss, _ in series if step > 150 and loss < 0.8]
    assert len(hard) >= 20 and 0.01 < sum(late) / len(late) < 0.03  # the baseline: ≈ 0.02
    assert replay_guard(series, GuardConfig(), loss_prior=prior) == []
    # The rule without its floor (as before) counted nearly every one of them as a spike (and only
    # them): 3 rollbacks and a lockout within the first few.
    old = replay_guard(series, GuardConfig(spike_floor=0, spike_limit=0), loss_prior=prior)
    assert set(s for s, _ in old) <= set(hard) and len(old) >= 0.9 * len(hard)
    assert all(t == ["loss_spike"] for _, t in old)


def test_a_sustained_divergence_is_a_spike():
    series = [(s, 0.7 - 0.002 * s, 0.8) for s in range(1, 101)]
    climb = [3.5, 9.0, 25.0, 80.0, 300.0]
    series += [(101 + i, loss, 50.0) for i, loss in enumerate(climb)]
    got = replay_guard(series, GuardConfig(), loss_prior=LN2)
    assert got == [(101 + i, ["loss_spike"]) for i in range(len(climb))]
    # Without a prior the first healthy losses (≈ 0.7) are the reference: the same answer.
    assert replay_guard(series, GuardConfig()) == got


def test_a_spike_at_step_1_is_caught_by_the_limit():
    series = [(1, 100 * 0.69, 1.0)] + [(s, 0.69 - 0.001 * s, 1.0) for s in range(2, 30)]
    assert replay_guard(series, GuardConfig(), loss_prior=LN2) == [(1, ["loss_spike"])]
    # ... and in any of the first steps, before the baseline exists (spike_warmup 20).
    early = [(s, 0.69, 1.0) for s in range(1, 6)] + [(6, 69.0, 1.0)] + [(s, 0.68, 1.0) for s in range(7, 12)]
    assert replay_guard(early, GuardConfig(), loss_prior=LN2) == [(6, ["loss_spike"])]
    # Without a prior, the first healthy losses stand in from step 2 on (step 1 has no reference).
    assert replay_guard(early, GuardConfig()) == [(6, ["loss_spike"])]
    assert replay_guard(series, GuardConfig()) == []
    # spike_limit=0 turns the limit off: nothing before the baseline.
    assert replay_guard(series, GuardConfig(spike_limit=0), loss_prior=LN2) == []


def test_without_a_prior_the_limit_stops_once_the_baseline_exists():
    # A run that starts already good (loss 0.05, no prior): a hard batch of 0.9 later is 18 × the
    # stand-in reference, but no spike by the limit once the baseline exists (here the baseline
    # rule, with spike_ratio 20, says no: 0.9 < 20 × 0.05).
    series = [(s, 0.05, 1.0) for s in range(1, 41)] + [(41, 0.9, 1.0)]
    assert replay_guard(series, GuardConfig(spike_ratio=20)) == []
    # Before the baseline exists the limit applies to the stand-in reference too.
    assert replay_guard([(1, 0.05, 1.0), (2, 0.9, 1.0)], GuardConfig()) == [(2, ["loss_spike"])]
    # With the prior (ln 2) it applies at every step: 0.9 is far below 10 × ln 2.
    assert replay_guard(series, GuardConfig(spike_ratio=20), loss_prior=LN2) == []


def test_floor_and_limit_thresholds_are_as_documented():
    cfg = GuardConfig(spike_warmup=3)
    det = GuardDetector(cfg, loss_prior=1.0)
    for loss in (0.1, 0.1, 0.1, 0.1):
        assert det.check(0, loss, 1.0) == []
    # Baseline 0.1: 3.9 passes ratio and deviation but not the floor 4 × 1.0; 4.1 passes all three.
    assert not det.is_spike(3.9) and det.is_spike(4.1)
    det = GuardDetector(cfg, loss_prior=1.0)
    assert not det.is_spike(9.9) and det.is_spike(10.1)  # the limit, with no baseline at all
    assert det.reference == 1.0


def test_other_rules_are_unchanged():
    cfg = GuardConfig(amp_overflow_tolerance=2)
    assert replay_guard([(1, math.nan, 1.0)], cfg) == [(1, ["nonfinite_loss"])]
    assert replay_guard([(1, 0.5, math.inf)], cfg) == [(1, ["nonfinite_grad"])]
    assert replay_guard([(1, 2e6, 2e4)], cfg) == [(1, ["loss_violation", "grad_explosion"])]
    amp = [(s, 0.5, math.inf) for s in range(1, 5)]
    assert replay_guard(amp, cfg, amp=True) == [(3, ["nonfinite_grad"]), (4, ["nonfinite_grad"])]


def test_loss_prior_and_config_validation():
    assert loss_prior(n_labels=2) == pytest.approx(LN2)
    assert loss_prior(vocab_size=50257) == pytest.approx(math.log(50257))
    assert loss_prior(n_labels=1) is None and loss_prior() is None
    assert loss_prior(n_labels=5, multi_label=True) == pytest.approx(LN2)
    for bad in (0.0, -1.0, math.nan, math.inf):
        with pytest.raises(ValueError, match="loss_prior"):
            GuardConfig(loss_prior=bad)
    with pytest.raises(ValueError, match="spike_floor"):
        GuardConfig(spike_floor=-1)


def test_model_loss_prior_from_hf_configs(tiny_tokenizer):
    from transformers import BertConfig, BertForSequenceClassification, GPT2Config, GPT2LMHeadModel

    from .conftest import tiny_model

    prior, how = model_loss_prior(tiny_model(tiny_tokenizer))  # PEFT-wrapped, 2 labels
    assert prior == pytest.approx(LN2) and how == "ln(num_labels=2)"
    lm = GPT2LMHeadModel(GPT2Config(vocab_size=300, n_embd=16, n_layer=1, n_head=2, n_positions=32))
    assert model_loss_prior(lm)[0] == pytest.approx(math.log(300))
    small = {"vocab_size": 50, "hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
             "intermediate_size": 16}
    reg = BertForSequenceClassification(BertConfig(num_labels=1, **small))
    assert model_loss_prior(reg) is None
    multi = BertForSequenceClassification(BertConfig(num_labels=7, problem_type="multi_label_classification",
                                                     **small))
    assert model_loss_prior(multi)[0] == pytest.approx(LN2)
    assert model_loss_prior(object()) is None


@pytest.mark.integration
def test_healthy_run_with_the_default_guard_has_no_intervention(tmp_path, tiny_tokenizer):
    from gradience import GradienceCallback

    from .conftest import make_trainer, read_events

    cb = GradienceCallback(tmp_path / "run", guard_config=GuardConfig(), telemetry_interval=1,
                           spectral_enabled=False, audit=False, recommend=False)
    make_trainer(tmp_path, tiny_tokenizer, [cb], steps=48, eval_steps=None).train()
    events = read_events(cb.path)
    start = events[0]
    assert start["event"] == "run_start" and start["meta"]["loss_prior"] == pytest.approx(LN2)
    summary = cb.guard_report
    assert summary["detections"] == 0 and summary["rollbacks"] == 0 and summary["lr_backoffs"] == 0
    assert summary["config"]["loss_prior"] == pytest.approx(LN2) and summary["integrity_status"] == "OK"
    assert events[-1]["status"] == "ok"
    # The recorded series replays to the same answer offline.
    series = [(e["step"], e["loss"], e["grad_norm"]) for e in events if e["event"] == "train_step"]
    assert len(series) == 48 and replay_guard(series, GuardConfig(), loss_prior=start["meta"]["loss_prior"]) == []


@pytest.mark.integration
def test_replay_of_a_recorded_run_matches_the_live_guard(tmp_path, tiny_tokenizer):
    from gradience import GradienceCallback
    from gradience.training.faults import FaultInjector

    from .conftest import make_trainer, read_events

    cfg = GuardConfig(snapshot_interval=2, cooldown=2, spike_warmup=2)
    cb = GradienceCallback(tmp_path / "run", guard_config=cfg, telemetry_interval=1, spectral_enabled=False,
                           audit=False, recommend=False)
    injectors = [FaultInjector("loss_spike", 1, factor=100.0), FaultInjector("nan_loss", 6),
                 FaultInjector("grad_explosion", 9, factor=1e6)]
    make_trainer(tmp_path, tiny_tokenizer, [cb, *(i.callback() for i in injectors)], steps=12,
                 eval_steps=None, lr=1e-3).train()
    events = read_events(cb.path)
    live = [(d.step, d.triggers) for d in cb.guard.decisions if d.action in ("rollback", "lockout")]
    assert live == [(1, ["loss_spike"]), (6, ["nonfinite_loss"]), (9, ["grad_explosion"])]
    series = [(e["step"], e["loss"], e["grad_norm"]) for e in events if e["event"] == "train_step"]
    assert replay_guard(series, cfg, loss_prior=events[0]["meta"]["loss_prior"]) == live
