"""The rank rule (allowed ranks, rounding an energy rank up, the PEFT fragment) has one home,
``gradience.audit.suggest``; the report and the bench use it rather than copies of their own."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import gradience
from gradience.audit.naming import resolve_rank_alpha
from gradience.audit.suggest import ALLOWED_RANKS, RANK_TOLERANCE, per_module_suggestion, round_up_rank
from gradience.report.audit_view import build_audit_view

SRC = Path(gradience.__file__).parent
HOME = SRC / "audit" / "suggest.py"
RULE_FUNCTIONS = {"round_up_rank", "suggest_rank", "peft_pattern", "alpha_for"}


def _definitions(path: Path) -> list[str]:
    """What ``path`` defines of the rank rule: functions named like the rule's, assignments to
    ``ALLOWED_RANKS``, and literal copies of the rank ladder."""
    found = []
    ladder = list(ALLOWED_RANKS)
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name in RULE_FUNCTIONS:
            found.append(f"def {node.name} (line {node.lineno})")
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == "ALLOWED_RANKS" for t in targets):
                found.append(f"ALLOWED_RANKS = (line {node.lineno})")
        elif isinstance(node, (ast.Tuple, ast.List)) and len(node.elts) == len(ladder):
            try:
                value = ast.literal_eval(node)
            except ValueError:
                continue
            if list(value) == ladder:
                found.append(f"rank ladder literal (line {node.lineno})")
    return found


def test_the_rank_rule_is_defined_once() -> None:
    assert _definitions(HOME), "the rule's home no longer defines it: update this test"
    elsewhere = {str(p.relative_to(SRC)): d for p in sorted(SRC.rglob("*.py")) if p != HOME
                 if (d := _definitions(p))}
    assert not elsewhere, f"a second definition of the rank rule (import gradience.audit.suggest instead): {elsewhere}"


@pytest.mark.parametrize(("k", "current_r", "allowed", "want"), [
    (None, 8, ALLOWED_RANKS, None),
    (-3.0, None, ALLOWED_RANKS, 1),  # k <= 0: the smallest allowed rank
    (0.0, 16, ALLOWED_RANKS, 1),
    (0.5, 16, ALLOWED_RANKS, 1),
    (1.0, 16, ALLOWED_RANKS, 1),
    (4.0, 16, ALLOWED_RANKS, 4),  # exactly an allowed rank: itself
    (4.0 + RANK_TOLERANCE / 2, 16, ALLOWED_RANKS, 4),  # float noise above it: still itself
    (4.0 + 1e-6, 16, ALLOWED_RANKS, 8),  # really above it: the next one
    (4.2, 16, ALLOWED_RANKS, 8),
    (5.0, 6, ALLOWED_RANKS, 6),  # never above the current rank (even one that is not allowed)
    (10.0, 12, ALLOWED_RANKS, 12),
    (3.0, 2, ALLOWED_RANKS, 2),
    (256.0, 512, ALLOWED_RANKS, 256),  # the top of the ladder
    (300.0, 512, ALLOWED_RANKS, 512),  # above the ladder: keep the current rank, never round down
    (300.0, None, ALLOWED_RANKS, 256),  # ... or the largest allowed rank when it is unknown
    (12.0, 32, (1, 2, 4, 8), 32),  # a bench's shorter list: same rule
    (2.2, 32, (1, 2, 4, 8), 4),
    (3.0, None, (8, 2, 4), 4),  # any order
])
def test_round_up_rank_at_its_boundaries(k, current_r, allowed, want) -> None:
    assert round_up_rank(k, current_r, allowed) == want


def _row(name: str, k90: float, r: int = 16, scale: float = 2.0) -> dict:
    return {"name": name, "r": r, "scale": scale, "energy_rank_90": k90, "in_features": 32, "out_features": 32,
            "params": r * 64, "delta_fro_norm": 1.0, "module_type": "attn"}


def test_the_report_derives_ranks_and_fragment_with_the_audit_rule() -> None:
    # "a.lin" is a dotted suffix of "b.a.lin": PEFT's pattern key "a.lin" also catches "b.a.lin",
    # so b.a.lin needs a key of its own, ahead of it (the audit's exact patterns).
    rows = [_row("a.lin", 9.0), _row("b.a.lin", 3.0), _row("c.lin", 3.0), _row("d.lin", 3.0),
            _row("big.lin", 300.0, r=512)]
    view = build_audit_view({"layers": rows}, "file")
    assert [m.suggested_r for m in view.modules] == [round_up_rank(r["energy_rank_90"], r["r"]) for r in rows]
    assert [m.suggested_r for m in view.modules] == [16, 4, 4, 4, 512]
    audit = per_module_suggestion(rows, use_rslora=False)
    frag = view.peft_fragment
    assert frag == {k: audit[k] for k in ("r", "lora_alpha", "rank_pattern", "alpha_pattern")}
    for m in view.modules:
        r, alpha = resolve_rank_alpha(m.name, frag["r"], frag["lora_alpha"], frag["rank_pattern"],
                                      frag["alpha_pattern"])
        assert (r, alpha) == (m.suggested_r, 2.0 * m.suggested_r), m.name
