"""The contract the code relies on lives in docs/, and cannot drift from the code silently.

- No file of the repository cites the original design document, which is not part of it.
- Every event name, `metrics` kind and alert code the code writes is in docs/telemetry.md; the
  keys of the snapshot sections, the gradient-norm summary, the guard and spectral payloads and
  the audit summary and rows are in the page that documents them.
- Every `docs/<page>.md#<anchor>` pointer in the code, and every link between the pages, lands
  on a heading that exists.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT, shared_path

DOCS = REPO_ROOT / "docs"
SRC = REPO_ROOT / "src" / "gradience"
SCANNED = ("src", "tests", "benchmarks", "examples", "docs", "configs", "scripts")
TEXT_SUFFIXES = {".py", ".md", ".yaml", ".yml", ".toml", ".txt", ".sh", ".cfg", ".ini", ".json"}
# "<the design document's name> §N", "<its name>.md" or "<its name>:" (as in a comment); the name is
# spelled in two halves so this file does not match itself.
_NAME = "SP" + "EC"
EXTERNAL_SPEC = re.compile(rf"\b{_NAME}(?:\s*§|\.md\b|:)")


def _text_files() -> list[Path]:
    files = [REPO_ROOT / "README.md"]
    for top in SCANNED:
        root = REPO_ROOT / top
        if root.is_dir():
            files += [p for p in root.rglob("*") if p.is_file() and p.suffix in TEXT_SUFFIXES
                      and "__pycache__" not in p.parts and "golden" not in p.parts]
    return files


def _doc(name: str) -> str:
    return (DOCS / name).read_text(encoding="utf-8")


def _expand_braces(text: str) -> str:
    """``a_{x,y}_b`` → ``a_x_b a_y_b`` (the docs' shorthand for key families)."""
    pat = re.compile(r"([\w.]*)\{([\w,]+)\}([\w.]*)")
    while True:
        new = pat.sub(lambda m: " ".join(m[1] + part + m[3] for part in m[2].split(",")), text)
        if new == text:
            return text
        text = new


def _documented_names(text: str) -> set[str]:
    """Every identifier written in backticks in ``text`` (brace families expanded, dotted and
    ``name(...)`` forms split into their parts)."""
    names: set[str] = set()
    for span in re.findall(r"`([^`\n]+)`", text):
        for word in re.findall(r"[\w.]+", _expand_braces(span)):
            names.add(word)
            names.update(word.split("."))
    return names


def _missing(keys: set[str] | list[str], page: str) -> list[str]:
    documented = _documented_names(_doc(page))
    return sorted(k for k in set(keys) if k not in documented)


def _src_text() -> list[tuple[Path, str]]:
    return [(p, p.read_text(encoding="utf-8")) for p in sorted(SRC.rglob("*.py"))]


def _module_constant(path: Path, name: str) -> object:
    """A literal module-level constant, read without importing the module (no torch needed)."""
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            return ast.literal_eval(node.value)
    raise AssertionError(f"{name} not found in {path}")


# -- the external document ------------------------------------------------------------------
def test_no_file_cites_the_design_document_outside_the_repository() -> None:
    hits = []
    for path in _text_files():
        for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            if EXTERNAL_SPEC.search(line):
                hits.append(f"{path.relative_to(REPO_ROOT)}:{n}: {line.strip()}")
    assert not hits, "point to the docs/ section instead:\n" + "\n".join(hits)


# -- telemetry: events, metrics kinds, alert codes --------------------------------------------
def test_every_event_name_and_severity_is_documented() -> None:
    from gradience.telemetry.schema import ENVELOPE_KEYS, RUN_STATUSES, Event, Severity

    names = [e.value for e in Event] + [s.value for s in Severity] + list(ENVELOPE_KEYS) + list(RUN_STATUSES)
    assert not _missing(names, "telemetry.md")
    headings = re.findall(r"^### `(\w+)`", _doc("telemetry.md"), re.M)
    assert [e.value for e in Event if e.value not in headings] == [], "each event has its own section"


_METRICS_CALL = re.compile(r"\.metrics\(\s*(?:kind\s*=\s*)?[\"']([a-z_]+)[\"']")


def test_every_metrics_kind_written_is_documented() -> None:
    kinds = {m for _, text in _src_text() for m in _METRICS_CALL.findall(text)}
    assert kinds, "no metrics(...) call found: the pattern no longer matches how the code writes them"
    assert not _missing(kinds, "telemetry.md")


_ALERT_CALL = re.compile(
    r"\.alert\(\s*(?:severity\s*=\s*)?(?:[\"'][a-z]+[\"']|[\w.]+)\s*,\s*(?:code\s*=\s*)?(f?)[\"']([^\"']+)[\"']")
_CODE_TABLE = re.compile(r"^_?[A-Z_]*CODES?\s*=\s*\{(.*?)\}", re.M | re.S)
_UPPER_SNAKE = re.compile(r"[\"']([A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+)[\"']")


def written_alert_codes() -> tuple[set[str], set[str]]:
    """(codes, prefixes of f-string codes such as ``SPECTRAL_{level}``) the code base writes:
    literal ``code`` arguments of ``.alert(...)`` calls and the values of ``*_CODE`` tables."""
    codes: set[str] = set()
    prefixes: set[str] = set()
    for _, text in _src_text():
        for is_f, code in _ALERT_CALL.findall(text):
            if is_f and "{" in code:
                prefixes.add(code.split("{", 1)[0])
            else:
                codes.add(code)
        for table in _CODE_TABLE.findall(text):
            codes.update(_UPPER_SNAKE.findall(table))
    return codes, prefixes


def test_every_alert_code_written_is_documented() -> None:
    codes, prefixes = written_alert_codes()
    assert codes, "no alert(...) call found: the pattern no longer matches how the code writes them"
    assert not _missing(codes, "telemetry.md")
    documented = _documented_names(_doc("telemetry.md"))
    for prefix in prefixes:
        assert any(name.startswith(prefix) and name != prefix for name in documented), \
            f"alert codes {prefix}<...> are not listed in docs/telemetry.md"


def test_config_snapshot_fields_are_documented() -> None:
    from dataclasses import fields

    from gradience.telemetry.schema import ConfigSnapshot, LoRAConfig, OptimizerConfig, TrainingConfig

    keys = {f.name for cls in (ConfigSnapshot, OptimizerConfig, LoRAConfig, TrainingConfig) for f in fields(cls)}
    assert not _missing(keys, "telemetry.md")


# -- what monitor, watch and report read ------------------------------------------------------
def _nested_keys(d: object, depth: int = 2) -> set[str]:
    out: set[str] = set()
    if isinstance(d, dict) and depth > 0:
        for k, v in d.items():
            out.add(k)
            out |= _nested_keys(v, depth - 1)
    return out


def test_signal_snapshot_sections_are_documented(tmp_path: Path) -> None:
    from gradience.telemetry import TelemetryReader, TelemetryWriter

    path = tmp_path / "run.jsonl"
    with TelemetryWriter(path) as w:
        w.run_start({"model_name": "m", "dataset_name": "sst2", "lora": {"r": 8, "alpha": 16}})
        for step in range(1, 13):
            w.train_step(step, loss=1.0 / step, lr=1e-4, grad_norm=0.5, grad_norm_clipped=0.5)
        w.eval(12, split="train", metrics={"loss": 0.2, "accuracy": 0.9, "n": 10})
        w.eval(12, split="test", metrics={"loss": 0.4, "accuracy": 0.8, "n": 10})
        w.metrics("guard", {"action": "snapshot", "snapshot_step": 0, "bytes": 1, "held": 1}, step=0, action="snapshot")
        w.metrics("spectral", {"kappa_tilde": 3.0, "risk_level": "STABLE"}, step=10)
        w.metrics("grad_norm", {"n": 12}, step=12)
    snap = TelemetryReader(path).summarize().to_dict()
    top = set(snap)
    sections = {k: set(v) for k, v in snap.items()
                if k in ("loss", "lr", "grad_norm", "guard", "spectral", "gaps") and isinstance(v, dict)}
    assert set(sections) == {"loss", "lr", "grad_norm", "guard", "spectral", "gaps"}
    assert not _missing(top | set().union(*sections.values()), "telemetry.md")
    assert set(snap["evals"]["test"]) <= _documented_names(_doc("telemetry.md"))


def test_grad_norm_summary_keys_are_documented() -> None:
    from gradience.training.gradnorm import GradNormMonitor

    mon = GradNormMonitor()
    for step, g in enumerate((0.5, 7.0, float("nan")), 1):
        mon.update(step, g, g)
    summary = mon.summary()
    assert not _missing(_nested_keys(summary, 2) - set(summary["level_counts"]), "telemetry.md")


# -- guard and spectral -------------------------------------------------------------------------
def test_guard_triggers_levels_and_payloads_are_documented() -> None:
    triggers = _module_constant(SRC / "training" / "guard.py", "TRIGGERS")
    levels = _module_constant(SRC / "training" / "kappa_risk.py", "RISK_LEVELS")
    assert not _missing(list(triggers) + list(levels) + ["WARMUP", "ALARM_LEVELS"], "guard.md")  # type: ignore[arg-type]

    torch = pytest.importorskip("torch")
    from dataclasses import fields

    from gradience.training.guard import GuardConfig, GuardDecision, TrainingGuard
    from gradience.training.spectral import SpectralMonitor

    guard = TrainingGuard(GuardConfig(), {"w": torch.nn.Parameter(torch.ones(2, 2))})
    keys = set(guard.summary()) | {f.name for f in fields(GuardDecision)} | {f.name for f in fields(GuardConfig)}
    assert not _missing(keys, "guard.md")

    model = torch.nn.Linear(4, 3)
    payload = SpectralMonitor(interval=1).observe(1, model)
    assert payload is not None
    assert not _missing(set(payload), "guard.md")
    assert payload["method"] in _documented_names(_doc("guard.md"))


# -- audit ---------------------------------------------------------------------------------------
def test_audit_summary_and_layer_row_keys_are_documented() -> None:
    from gradience.audit import audit_adapter

    res = audit_adapter(shared_path("compat", "adapters", "tiny_lora"), udr=False, top_singular_values=2,
                        budget_params=10_000_000)
    d = res.to_dict(layers=True)
    summary_keys = set(res.summary) | set().union(*(set(v) for v in res.summary["by_type"].values()))
    assert not _missing(summary_keys, "audit.md")
    assert not _missing(set().union(*(set(r) for r in d["layers"])), "audit.md")
    assert not _missing(set(d) | set(d["adapter"]) | set(d["per_layer_suggestion"]) | set(d["allocation"]),
                        "audit.md")
    audit_src = "".join(p.read_text(encoding="utf-8") for p in sorted((SRC / "audit").rglob("*.py")))
    issue_codes = re.findall(r'(?:"code"\s*:\s*|\bcode\s*=\s*)"([A-Z][A-Z0-9_]+)"', audit_src)
    assert issue_codes and not _missing(issue_codes, "audit.md")


def test_policy_actions_are_documented() -> None:
    actions: set[str] = set()
    for name in ("rules_check.py", "rules_run.py"):
        text = (SRC / "policy" / name).read_text(encoding="utf-8")
        actions |= set(re.findall(r"_rec\(\s*(?:\"[a-z]+\"|[^,]+),\s*\"([a-z_]+)\"", text))
    assert len(actions) > 20, "the pattern no longer finds the rules' action codes"
    assert not _missing(actions | {"config_ok"}, "policy.md")


# -- pointers land on headings ------------------------------------------------------------------
def slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    return {slug(h) for h in re.findall(r"^#{1,6}\s+(.+?)\s*$", page.read_text(encoding="utf-8"), re.M)}


def test_slug_matches_github() -> None:
    assert slug("JSON (`--json`)") == "json---json"
    assert slug("UDR / SDI") == "udr--sdi"
    assert slug("### `run_start`".lstrip("# ")) == "run_start"


def test_every_docs_pointer_lands_on_a_heading() -> None:
    pointer = re.compile(r"docs/([\w-]+\.md)#([\w-]+)")
    link = re.compile(r"\]\(([\w-]+\.md)?#([\w-]+)\)")
    bad = []
    for path in _text_files():
        text = path.read_text(encoding="utf-8", errors="replace")
        found = [(DOCS / page, anchor) for page, anchor in pointer.findall(text)]
        if path.suffix == ".md":
            found += [((path.parent / page) if page else path, anchor) for page, anchor in link.findall(text)]
        for page, anchor in found:
            if not page.is_file() or anchor not in anchors(page):
                bad.append(f"{path.relative_to(REPO_ROOT)} → {page.name}#{anchor}")
    assert not bad, "pointers to missing sections:\n" + "\n".join(bad)
