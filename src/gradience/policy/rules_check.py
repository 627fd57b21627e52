"""Pre-flight rules (``gradience check``): small pure functions over a ConfigSnapshot.

Each rule takes a :class:`CheckContext` and returns zero or more Recommendations. The
core rules are tabled in ``docs/policy.md#core-rules`` and the rules beyond them in
``docs/policy.md#further-rules``, each with its trigger, severity and confidence. Learning rates are in optimizer units
(the peak LR), ranks are LoRA ``r`` (integer), α/r is the LoRA scale (α/√r with rsLoRA).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from ..telemetry.schema import ConfigSnapshot, Recommendation, TaskProfile
from .config_parse import coerce_numbers
from .profiles import resolve_profile
from .targets import TargetSummary, summarize_targets

__all__ = ["CHECK_RULES", "CheckContext"]

HARD_LR_SUGGESTED = 5e-5
HARD_LR_HIGH = 1e-4
HARD_RANK_SUGGESTED = 8
EASY_RANK_MAX = 16
EASY_LR_HIGH = 5e-4
EASY_LR_SUGGESTED = 1e-4
ANY_LR_EXTREME = 1e-3
ALPHA_RATIO_RANGE = (0.25, 4.0)
ALPHA_RATIO_FAR = (1 / 16, 16.0)
RSLORA_RANK = 64
DROPOUT_HIGH = 0.3


@dataclass
class CheckContext:
    """Everything a pre-flight rule reads, derived once from the ConfigSnapshot."""

    cfg: ConfigSnapshot
    profile: TaskProfile
    profile_source: str
    targets: TargetSummary

    @classmethod
    def build(cls, cfg: ConfigSnapshot) -> CheckContext:
        cfg = coerce_numbers(cfg)
        profile, source = resolve_profile(cfg)
        return cls(cfg=cfg, profile=profile, profile_source=source,
                   targets=summarize_targets(cfg.lora.target_modules))

    @property
    def lr(self) -> float | None:
        return self.cfg.optimizer.lr

    @property
    def r(self) -> int | None:
        return self.cfg.lora.r

    @property
    def scale_ratio(self) -> tuple[float | None, str]:
        """The LoRA scale and its name: α/r, or α/√r with rsLoRA."""
        lora = self.cfg.lora
        if lora.alpha is None or not lora.r or lora.r <= 0:
            return None, "alpha/r"
        if lora.use_rslora:
            return float(lora.alpha) / math.sqrt(lora.r), "alpha/sqrt(r)"
        return float(lora.alpha) / float(lora.r), "alpha/r"


Rule = Callable[[CheckContext], Iterable[Recommendation]]


def _rec(severity: str, action: str, message: str, why: str, confidence: float,
         evidence: dict[str, object], scope: str = "config") -> Recommendation:
    return Recommendation(severity=severity, action=action, message=message, rationale=why,
                          confidence=confidence, scope=scope, evidence=dict(evidence))


# -- hard_reasoning (docs/policy.md#core-rules) -----------------------------------------
def hard_lr(ctx: CheckContext) -> Iterable[Recommendation]:
    if ctx.profile is not TaskProfile.HARD_REASONING:
        return
    lr = ctx.lr
    if lr is None:
        yield _rec("warning", "set_lr", f"Set the learning rate explicitly; start at {HARD_LR_SUGGESTED:g}.",
                   "Reasoning tasks are sensitive to the LR and an implicit default hides the most important "
                   "knob; 5e-5 is a conservative starting point for LoRA.", 0.8,
                   {"lr": None, "suggested_lr": HARD_LR_SUGGESTED, "profile": ctx.profile.value})
    elif lr > HARD_LR_HIGH:
        yield _rec("warning", "lower_lr", f"Lower the learning rate from {lr:g} to {HARD_LR_SUGGESTED:g}.",
                   "Above 1e-4, LoRA on multi-step reasoning tends to memorise the training set or destabilise; "
                   "compare held-out accuracy at 5e-5.", 0.8,
                   {"lr": lr, "threshold": HARD_LR_HIGH, "suggested_lr": HARD_LR_SUGGESTED})
    elif lr > HARD_LR_SUGGESTED:
        yield _rec("info", "consider_lower_lr", f"Consider lowering the learning rate from {lr:g} to {HARD_LR_SUGGESTED:g}.",
                   "Between 5e-5 and 1e-4 reasoning runs often still overfit; one run at 5e-5 tells you whether "
                   "the higher LR buys anything.", 0.6,
                   {"lr": lr, "range": [HARD_LR_SUGGESTED, HARD_LR_HIGH], "suggested_lr": HARD_LR_SUGGESTED})


def hard_targets(ctx: CheckContext) -> Iterable[Recommendation]:
    if ctx.profile is not TaskProfile.HARD_REASONING:
        return
    t = ctx.targets
    if t.empty:
        yield _rec("warning", "set_target_modules",
                   "Set target_modules explicitly; start with the attention projections (e.g. q_proj, k_proj, v_proj, o_proj).",
                   "Without explicit targets PEFT falls back to per-architecture defaults, so the run's capacity "
                   "is not what you reviewed.", 0.7, {"target_modules": None})
        return
    if t.has_mlp and not t.has_attn:
        yield _rec("warning", "include_attention_targets",
                   f"Add the attention projections to target_modules (currently MLP only: {', '.join(t.mlp)}).",
                   "On reasoning tasks attention-side adapters carry most of the useful update; MLP-only LoRA "
                   "mainly adds capacity to memorise.", 0.7, {"mlp_targets": t.mlp, "attention_targets": []})
    elif t.has_mlp:
        yield _rec("info", "prefer_attention_only",
                   f"Try attention-only targets (drop {', '.join(t.mlp + t.ambiguous)}) and compare held-out accuracy.",
                   "MLP adapters roughly double the trainable parameters and, on reasoning tasks, tend to "
                   "increase the train/test gap more than accuracy.", 0.7,
                   {"mlp_targets": t.mlp, "ambiguous_targets": t.ambiguous, "attention_targets": t.attn})


def hard_rank(ctx: CheckContext) -> Iterable[Recommendation]:
    if ctx.profile is not TaskProfile.HARD_REASONING:
        return
    r = ctx.r
    if r is None:
        yield _rec("info", "set_rank", f"Set the LoRA rank explicitly; start at r={HARD_RANK_SUGGESTED}.",
                   "r=8 is enough for most reasoning adapters; audit the trained adapter to see whether it "
                   "used the rank.", 0.6, {"r": None, "suggested_r": HARD_RANK_SUGGESTED})
    elif r >= 32:
        yield _rec("info", "consider_reduce_rank", f"Consider r={HARD_RANK_SUGGESTED}–16 instead of r={r}.",
                   "High ranks rarely help reasoning fine-tunes and make memorisation easier; `gradience audit` "
                   "on the trained adapter shows how much rank was used.", 0.6,
                   {"r": r, "suggested_r": [HARD_RANK_SUGGESTED, 16]})
    elif r > 16:
        yield _rec("info", "consider_reduce_rank", f"Consider r=16 or lower instead of r={r}.",
                   "Between 16 and 32 the extra rank is usually unused; audit the trained adapter to confirm.",
                   0.5, {"r": r, "suggested_r": 16})


def hard_alpha(ctx: CheckContext) -> Iterable[Recommendation]:
    if ctx.profile is not TaskProfile.HARD_REASONING:
        return
    ratio, name = ctx.scale_ratio
    lr = ctx.lr
    if lr is not None and lr > HARD_LR_HIGH and ratio is not None and ratio >= 1.0:
        yield _rec("info", "consider_lower_alpha_over_r", f"With lr={lr:g}, consider {name}=0.25 (now {ratio:g}).",
                   "The effective step of a LoRA update scales with lr × α/r; when the LR is already high a "
                   "smaller scale keeps the update size reasonable.", 0.5,
                   {"lr": lr, name: ratio, "suggested": 0.25})


# -- easy_classification (docs/policy.md#core-rules) -----------------------------------
def easy_rules(ctx: CheckContext) -> Iterable[Recommendation]:
    if ctx.profile is not TaskProfile.EASY_CLASSIFICATION:
        return
    r, lr, t = ctx.r, ctx.lr, ctx.targets
    if r is not None and r > EASY_RANK_MAX:
        yield _rec("info", "reduce_rank_for_efficiency", f"Use r=4–8 instead of r={r}.",
                   "Easy classification tasks typically need very little rank; the published SST-2 bench lost "
                   "under a point of accuracy going from r=32 to r=2–4.", 0.6,
                   {"r": r, "threshold": EASY_RANK_MAX, "suggested_r": [4, 8]})
    if t.has_mlp:
        yield _rec("info", "prefer_attention_only_for_efficiency",
                   f"Attention-only targets are usually enough here (MLP targets: {', '.join(t.mlp + t.ambiguous)}).",
                   "MLP adapters add parameters that classification rarely needs; drop them and compare eval "
                   "accuracy.", 0.5, {"mlp_targets": t.mlp, "ambiguous_targets": t.ambiguous})
    if lr is not None and lr > EASY_LR_HIGH:
        yield _rec("warning", "lower_lr", f"Lower the learning rate from {lr:g} to {EASY_LR_SUGGESTED:g}.",
                   "Above 5e-4 LoRA classification runs often oscillate or collapse to one class.", 0.7,
                   {"lr": lr, "threshold": EASY_LR_HIGH, "suggested_lr": EASY_LR_SUGGESTED})


# -- unknown / generation (docs/policy.md#core-rules) ----------------------------------
def calibration_probe(ctx: CheckContext) -> Iterable[Recommendation]:
    if ctx.profile not in (TaskProfile.UNKNOWN, TaskProfile.GENERATION):
        return
    yield _rec("info", "calibration_probe",
               "Run a short calibration probe first: attention-only targets, r=8, lr=5e-5; then audit the adapter.",
               f"The task profile is {ctx.profile.value} ({ctx.profile_source}), so no task-specific table applies; "
               "a cheap conservative probe gives a baseline to compare your configuration against.", 0.5,
               {"profile": ctx.profile.value, "probe": {"targets": "attention", "r": 8, "lr": 5e-5}})


# -- any profile -----------------------------------------------------------------------
def weight_decay(ctx: CheckContext) -> Iterable[Recommendation]:
    wd = ctx.cfg.optimizer.weight_decay
    if wd is not None and wd < 0:
        yield _rec("error", "fix_weight_decay", f"weight_decay is {wd:g}; set it to 0 or a small positive value (e.g. 0.01).",
                   "Negative weight decay pushes weights away from zero every step and eventually diverges.",
                   0.9, {"weight_decay": wd})


def invalid_values(ctx: CheckContext) -> Iterable[Recommendation]:
    lora, lr = ctx.cfg.lora, ctx.lr
    if lr is not None and (not math.isfinite(lr) or lr <= 0):
        yield _rec("error", "fix_lr", f"The learning rate is {lr:g}; it must be a positive finite number.",
                   "With lr ≤ 0 (or NaN) the adapter cannot learn.", 0.9, {"lr": lr})
    if lora.r is not None and lora.r < 1:
        yield _rec("error", "fix_rank", f"r={lora.r} is not a valid LoRA rank; use a positive integer (e.g. 8).",
                   "PEFT rejects r < 1.", 0.9, {"r": lora.r})
    if lora.alpha is not None and lora.alpha == 0:
        yield _rec("error", "fix_alpha", "lora_alpha is 0, so the adapter's update is multiplied by zero.",
                   "The scale α/r is zero: training changes nothing at inference.", 0.9, {"alpha": lora.alpha})


def extreme_lr(ctx: CheckContext) -> Iterable[Recommendation]:
    lr = ctx.lr
    if lr is not None and math.isfinite(lr) and lr > ANY_LR_EXTREME and ctx.profile not in (
            TaskProfile.HARD_REASONING, TaskProfile.EASY_CLASSIFICATION):
        # The profile tables above already cover their own LR range.
        yield _rec("warning", "lower_lr", f"lr={lr:g} is above the usual LoRA range (1e-5 to 5e-4); try 1e-4.",
                   "Far above 1e-3 LoRA updates tend to produce NaN losses or loss spikes.", 0.6,
                   {"lr": lr, "threshold": ANY_LR_EXTREME, "suggested_lr": 1e-4})


def alpha_ratio(ctx: CheckContext) -> Iterable[Recommendation]:
    ratio, name = ctx.scale_ratio
    if ratio is None or ratio <= 0:
        return
    lo, hi = ALPHA_RATIO_RANGE
    if lo <= ratio <= hi:
        return
    far = not (ALPHA_RATIO_FAR[0] <= ratio <= ALPHA_RATIO_FAR[1])
    direction = "large" if ratio > hi else "small"
    yield _rec("warning" if far else "info", "review_alpha_over_r",
               f"{name}={ratio:g} is {'far ' if far else ''}outside the usual {lo:g}–{hi:g}; "
               f"{'lower lora_alpha' if ratio > hi else 'raise lora_alpha'} (e.g. α = r for {name}=1).",
               f"The LoRA scale multiplies every update; a very {direction} scale acts like a "
               f"{'much higher' if ratio > hi else 'much lower'} learning rate for the adapter.",
               0.6 if far else 0.5, {name: ratio, "range": [lo, hi], "r": ctx.r, "alpha": ctx.cfg.lora.alpha})


def rslora_hint(ctx: CheckContext) -> Iterable[Recommendation]:
    r = ctx.r
    if r is not None and r >= RSLORA_RANK and not ctx.cfg.lora.use_rslora:
        yield _rec("info", "consider_rslora", f"At r={r}, consider use_rslora=True (scale α/√r instead of α/r).",
                   "With the standard α/r scale the update shrinks as r grows, so high ranks learn slowly; "
                   "rank-stabilised LoRA keeps the update size independent of r.", 0.4,
                   {"r": r, "threshold": RSLORA_RANK, "use_rslora": ctx.cfg.lora.use_rslora})


def dropout(ctx: CheckContext) -> Iterable[Recommendation]:
    p = ctx.cfg.lora.dropout
    if p is not None and p > DROPOUT_HIGH:
        yield _rec("info", "lower_lora_dropout", f"lora_dropout={p:g} is high; 0.05–0.1 is typical.",
                   "Above 0.3 dropout on the adapter input mostly slows learning; regularise with fewer steps "
                   "or a lower rank instead.", 0.5, {"dropout": p, "threshold": DROPOUT_HIGH})


def grad_clipping(ctx: CheckContext) -> Iterable[Recommendation]:
    mgn = ctx.cfg.training.max_grad_norm
    if mgn is not None and (mgn <= 0 or not math.isfinite(mgn)):
        yield _rec("info", "enable_grad_clipping", "Gradient clipping is disabled; set max_grad_norm=1.0.",
                   "Clipping bounds the damage of a single bad batch; without it one spike can derail a run "
                   "(the guard can roll back, but clipping is cheaper).", 0.5, {"max_grad_norm": mgn})


def unrecognised_targets(ctx: CheckContext) -> Iterable[Recommendation]:
    t = ctx.targets
    if t.unrecognised:
        yield _rec("info", "review_target_modules",
                   f"Check target_modules: {', '.join(t.unrecognised)} is not a known attention or MLP projection name.",
                   "A name that matches no module makes PEFT fail, and one that matches something unexpected "
                   "(an embedding, a head) changes what is trained.", 0.4,
                   {"unrecognised": t.unrecognised, "target_modules": t.names})


CHECK_RULES: tuple[Rule, ...] = (
    hard_lr, hard_targets, hard_rank, hard_alpha,
    easy_rules,
    calibration_probe,
    weight_decay, invalid_values, extreme_lr, alpha_ratio, rslora_hint, dropout, grad_clipping,
    unrecognised_targets,
)
