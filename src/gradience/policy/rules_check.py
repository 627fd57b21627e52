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
from .model_modules import ModuleNames, module_names
from .peft_match import REGEX_CHARS, Resolution, is_all_linear, resolve
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
    # the model's module names (a local checkpoint's, or the family's usual ones) and what the
    # config adapts in them with PEFT's matching rules; None when the model is unknown
    names: ModuleNames | None = None
    resolution: Resolution | None = None

    @classmethod
    def build(cls, cfg: ConfigSnapshot) -> CheckContext:
        cfg = coerce_numbers(cfg)
        profile, source = resolve_profile(cfg)
        names = module_names(cfg.model_name)
        lora = cfg.lora
        target = peft_targets(cfg)
        resolution = None
        if names is not None and target is not None and lora.r and lora.r > 0 and lora.alpha is not None:
            x = lora.extras
            resolution = resolve(names.names, target_modules=target, r=int(lora.r), alpha=float(lora.alpha),
                                 rank_pattern=lora.rank_pattern, alpha_pattern=lora.alpha_pattern,
                                 exclude_modules=x.get("exclude_modules"), modules_to_save=x.get("modules_to_save"),
                                 layers_to_transform=x.get("layers_to_transform"),
                                 layers_pattern=x.get("layers_pattern"))
        return cls(cfg=cfg, profile=profile, profile_source=source,
                   targets=_effective_targets(cfg, target, resolution), names=names, resolution=resolution)

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


def peft_targets(cfg: ConfigSnapshot) -> str | list[str] | None:
    """``target_modules`` as PEFT sees it: one regex string, or a list of literal names."""
    tm = cfg.lora.target_modules
    if tm and len(tm) == 1 and (cfg.lora.extras.get("target_modules_is_regex") or is_all_linear(tm[0])):
        return tm[0]
    return list(tm) if tm else None


def _effective_targets(cfg: ConfigSnapshot, target: str | list[str] | None,
                       resolution: Resolution | None) -> TargetSummary:
    """The target summary the profile rules read: with ``exclude_modules`` (or a regex target) and
    known module names, the leaves PEFT actually adapts; with a list and ``exclude_modules``
    alone, the list minus what the exclusion removes; else ``target_modules`` as written."""
    exclude = cfg.lora.extras.get("exclude_modules")
    if resolution is not None and (exclude or isinstance(target, str)) and resolution.targeted:
        return summarize_targets(sorted({n.rsplit(".", 1)[-1] for n in resolution.targeted}))
    if isinstance(target, list) and isinstance(exclude, list) and exclude:
        kept = [t for t in target if not any(t == e or t.endswith("." + e) for e in exclude)]
        return summarize_targets(kept or None)
    return summarize_targets(cfg.lora.target_modules)


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


# -- PEFT's matching rules (docs/policy.md#target-and-pattern-rules) ----------------------
def target_form(ctx: CheckContext) -> Iterable[Recommendation]:
    target = peft_targets(ctx.cfg)
    if not isinstance(target, list):
        return
    regexy = [t for t in target if any(c in REGEX_CHARS for c in t)]
    shorthand = [t for t in target if is_all_linear(t)] if len(target) > 1 else []
    if regexy:
        yield _rec("error", "fix_target_modules_form",
                   f"target_modules entries {', '.join(regexy)} look like regexes, but PEFT matches list entries "
                   "literally (the module name or its `.`-suffix), so they match nothing; give a regex as one "
                   f"string: target_modules=\"{regexy[0]}\".",
                   "A list entry matches a module only if it equals the name or its last components; regex "
                   "characters in it are taken literally.", 0.8, {"entries": regexy, "target_modules": target})
    elif shorthand:
        yield _rec("error", "fix_target_modules_form",
                   "\"all-linear\" inside a list is a literal module name and matches nothing; pass it as the "
                   "whole value: target_modules=\"all-linear\".",
                   "PEFT expands all-linear only when target_modules is that string.", 0.8,
                   {"entries": shorthand, "target_modules": target})


def pattern_regex(ctx: CheckContext) -> Iterable[Recommendation]:
    import re

    lora = ctx.cfg.lora
    bad: list[tuple[str, str, str]] = []
    for fld, keys in (("rank_pattern", list(lora.rank_pattern or {})), ("alpha_pattern", list(lora.alpha_pattern or {}))):
        for k in keys:
            try:
                re.compile(rf"(.*\.)?({k})$")
            except re.error as exc:
                bad.append((fld, k, str(exc)))
    target = peft_targets(ctx.cfg)
    if isinstance(target, str) and not is_all_linear(target):
        try:
            re.compile(target)
        except re.error as exc:
            bad.append(("target_modules", target, str(exc)))
    if bad:
        fld, k, err = bad[0]
        yield _rec("error", "fix_pattern_regex", f"{fld} key {k!r} is not a valid regex ({err}); PEFT fails to load "
                   "the config.", "PEFT compiles target_modules strings and pattern keys as regular expressions.",
                   0.9, {"invalid": [{"field": f, "key": key, "error": e} for f, key, e in bad]})


def _names_evidence(ctx: CheckContext) -> dict[str, object]:
    assert ctx.names is not None
    return {"module_names": ctx.names.source, "n_modules": len(ctx.names.names)}


def targets_match_nothing(ctx: CheckContext) -> Iterable[Recommendation]:
    res = ctx.resolution
    if res is None or ctx.names is None or res.bad_regex:
        return
    target = peft_targets(ctx.cfg)
    exact = ctx.names.exact
    if not res.targeted and not res.excluded:
        yield _rec("error" if exact else "warning", "fix_target_modules",
                   f"target_modules matches no module of the model ({ctx.names.source}); PEFT refuses to build "
                   "this adapter.", "PEFT raises when no module matches the targets.", 0.8 if exact else 0.5,
                   {**_names_evidence(ctx), "target_modules": target})
    elif res.unmatched_targets:
        yield _rec("warning" if exact else "info", "fix_unmatched_targets",
                   f"target_modules entries {', '.join(res.unmatched_targets)} match no module of the model "
                   f"({ctx.names.source}); remove or rename them.",
                   "An entry that matches nothing adapts nothing: the capacity you planned for it is not there.",
                   0.7 if exact else 0.4, {**_names_evidence(ctx), "unmatched": res.unmatched_targets})


def patterns_match_nothing(ctx: CheckContext) -> Iterable[Recommendation]:
    lora = ctx.cfg.lora
    res = ctx.resolution
    unmatched: list[str] = []
    if res is not None and ctx.names is not None and not res.bad_regex and res.targeted:
        for fld in ("rank_pattern", "alpha_pattern"):
            unmatched += [f"{fld}[{k!r}]" for k in res.unmatched_patterns.get(fld, [])]
        exact = ctx.names.exact
        evidence: dict[str, object] = _names_evidence(ctx)
    else:
        # Without module names: a key anchored with ^ matches only a top-level module of that exact name.
        for fld, pat in (("rank_pattern", lora.rank_pattern), ("alpha_pattern", lora.alpha_pattern)):
            unmatched += [f"{fld}[{k!r}]" for k in (pat or {}) if k.startswith("^") and "." not in k]
        exact = True
        evidence = {}
    if unmatched:
        yield _rec("warning" if exact else "info", "fix_pattern_keys",
                   f"{', '.join(unmatched)} match no adapted module, so PEFT ignores them (keys match the end of "
                   "the module path at a `.`: `^` anchors at the start of the whole path).",
                   "PEFT matches a pattern key as the regex (.*\\.)?(key)$ against each adapted module's name; a key "
                   "that matches none has no effect.", 0.7 if exact else 0.4, {**evidence, "unmatched": unmatched})


def module_alpha_ratio(ctx: CheckContext) -> Iterable[Recommendation]:
    """α/r per module where rank_pattern/alpha_pattern change it (the global one is alpha_ratio's)."""
    lora = ctx.cfg.lora
    if not (lora.rank_pattern or lora.alpha_pattern) or not lora.r or lora.alpha is None:
        return
    rs = bool(lora.use_rslora)
    name = "alpha/sqrt(r)" if rs else "alpha/r"
    res = ctx.resolution
    if res is not None and res.targeted:
        scales = res.scales(rs)
        where = ctx.names.source if ctx.names else ""
    else:
        # No module names: each pattern key on its own (its α over its r, or the global value).
        keys = list(dict.fromkeys([*(lora.rank_pattern or {}), *(lora.alpha_pattern or {})]))
        scales = {}
        for k in keys:
            r_k = (lora.rank_pattern or {}).get(k, lora.r)
            a_k = (lora.alpha_pattern or {}).get(k, lora.alpha)
            if r_k and r_k > 0:
                scales[f"modules matching {k!r}"] = float(a_k) / (math.sqrt(r_k) if rs else float(r_k))
        where = "per pattern key"
    lo, hi = ALPHA_RATIO_RANGE
    out = {m: v for m, v in scales.items() if not (lo <= v <= hi) and v > 0}
    glob = float(lora.alpha) / (math.sqrt(lora.r) if rs else float(lora.r))
    out = {m: v for m, v in out.items() if v != glob}  # the global scale is alpha_ratio's finding
    if not out:
        return
    far = {m: v for m, v in out.items() if not (ALPHA_RATIO_FAR[0] <= v <= ALPHA_RATIO_FAR[1])}
    worst = max(out, key=lambda m: max(out[m], 1 / out[m]))
    shown = ", ".join(f"{m} {name}={out[m]:g}" for m in sorted(out, key=lambda m: -max(out[m], 1 / out[m]))[:3])
    yield _rec("warning" if far else "info", "review_module_alpha_over_r",
               f"rank_pattern/alpha_pattern give {len(out)} module(s) a scale {'far ' if far else ''}outside "
               f"{lo:g}–{hi:g}: {shown}{' …' if len(out) > 3 else ''}; set their alpha_pattern so {name} is near 1.",
               "The LoRA scale multiplies the module's update: a per-module α/r of 64 acts like a 64× learning "
               "rate on that module.", 0.6 if far else 0.5,
               {"modules": {m: out[m] for m in sorted(out)[:20]}, "worst": worst, "range": [lo, hi], "source": where})


CHECK_RULES: tuple[Rule, ...] = (
    hard_lr, hard_targets, hard_rank, hard_alpha,
    easy_rules,
    calibration_probe,
    weight_decay, invalid_values, extreme_lr, alpha_ratio, rslora_hint, dropout, grad_clipping,
    unrecognised_targets,
    target_form, pattern_regex, targets_match_nothing, patterns_match_nothing, module_alpha_ratio,
)
