"""HTML and Markdown for crafted runs: sections present, the run's numbers shown."""

from __future__ import annotations

import html as _html
import json
import math
import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from gradience.errors import GradienceError
from gradience.report import build_report, render_html, render_markdown
from gradience.report.html import SECTIONS

sys.path.insert(0, str(Path(__file__).parent))
from conftest import audit_dict, write_audited_run, write_peft_adapter


def _section(html: str, sid: str) -> str:
    m = re.search(rf'<section id="{sid}">(.*?)</section>', html, re.S)
    assert m, f"section {sid} missing"
    return m.group(1)


def _charts(html: str) -> dict[str, int]:
    return {m.group(1): int(m.group(2)) for m in re.finditer(r'data-chart="([^"]+)" data-points="(\d+)"', html)}


def test_healthy_run_html(healthy_run: Path) -> None:
    rep = build_report(healthy_run)
    html = render_html(rep)
    for sid, _ in SECTIONS:
        _section(html, sid)
    charts = _charts(html)
    assert charts["loss"] == 300 and charts["lr"] == 300
    assert charts["grad_norm"] == 600  # pre and post clip
    assert charts["eval_accuracy"] == 6 and charts["eval_loss"] == 6 and charts["kappa"] == 6
    # acc_gap (a difference, ~0.05) and loss_gap (a ratio, ~1.2) each on their own axis.
    assert charts["eval_acc_gap"] == 3 and charts["eval_loss_gap"] == 3 and "eval_gaps" not in charts
    ov = _section(html, "overview")
    assert "<h1>Gradience report — tiny-bert</h1>" in html  # the model is the page's title
    assert "sst2" in ov and "easy_classification" in ov and "300 / 300" in ov
    assert 'class="badge b-ok"' in ov
    assert "gradient health" in ov and "healthy" in ov and "memorisation" in ov  # health beside the status
    # Reference tables come last: configuration after the curves, the audit and the alerts.
    assert html.index('id="configuration"') > html.index('id="alerts"') > html.index('id="training"')
    assert "max_grad_norm" in _section(html, "configuration") and "max_grad_norm" not in ov
    ev = _section(html, "eval")
    assert "0.855" in ev and "0.045" in ev  # test accuracy and acc_gap = 0.9 - 0.855
    assert "LEARNING" in _section(html, "spectral")
    assert "not enabled" in _section(html, "guard")
    assert "no adapter audit" in _section(html, "audit")
    assert "every line of the file is valid" in _section(html, "issues")
    assert "<script" not in html and "http://" not in html.replace("http://www.w3.org/2000/svg", "")
    # Every chart is well-formed XML (the page is static SVG, parsed strictly here).
    for svg in re.findall(r"<svg .*?</svg>", html, re.S):
        ET.fromstring(svg)


def test_guard_run_html_and_markdown(guarded_run: Path) -> None:
    rep = build_report(guarded_run)
    html = render_html(rep)
    guard = _section(html, "guard")
    assert re.search(r"rollbacks</div><div class=\"v\">2<", guard)
    assert re.search(r"final LR scale</div><div class=\"v\">0.25<", guard)
    assert "LOCKOUT" in guard and "rolled back to snapshot at step 75" in guard
    assert 'data-chart="guard"' in guard
    training = _section(html, "training")
    assert "non-finite loss ×1 at step 80" in training
    assert "loss spike at step 120" in training
    assert training.count('class="vline"') >= 6  # rollbacks 80, 150 and lockout 190 on loss and lr charts
    assert "b-aborted" in _section(html, "overview")
    assert "guard lockout after repeated faults" in _section(html, "overview")
    alerts = _section(html, "alerts")
    assert "GUARD_ROLLBACK" in alerts and "GUARD_LOCKOUT" in alerts
    md = render_markdown(rep)
    assert "| 8 | 2 | 2 | 1 | yes | 0.25 | LOCKOUT |" in md
    assert "Rollbacks at steps: 80, 150" in md
    assert "| non-finite losses | 1 |" in md and "| loss spikes | 1 |" in md


def test_audited_run_sections_and_savings(healthy_run: Path, audit_file: Path) -> None:
    rep = build_report(healthy_run, audit_path=audit_file)
    view = rep.audit
    assert view is not None and view.source == "file"
    # 12 modules of 12,288 params at r=16; per-module ranks from k@90% = layer base + module offset.
    expected = sum(round(12_288 * min(r, 16) / 16) for r in
                   [2, 4, 4, 4, 4, 8, 8, 8, 8, 16, 16, 16])
    assert view.per_module_params_after == expected == 75_264
    html = render_html(rep)
    audit = _section(html, "audit")
    charts = _charts(audit)
    assert charts["heat_utilization"] == 12 and charts["heat_k90"] == 12
    assert charts["spectra"] == 6 * 16 and charts["udr"] == 7
    assert "73,728" in audit and "50.0%" in audit and "75,264" in audit and "49.0%" in audit
    assert "query (attn)" in audit and "dense (mlp)" in audit
    assert "most: L3 dense (u=0.49)" in audit and "least: L0 query (u=0.05)" in audit
    md = render_markdown(rep)
    assert "| uniform r=8 (median) | 73,728 | 50.0% |" in md
    assert "| per-module ranks | 75,264 | 49.0% |" in md
    assert "UDR per module: < 0.01: 1," in md and "> 3: 2" in md


def test_run_lora_audit_used_when_no_audit_given(tmp_path: Path) -> None:
    from gradience.telemetry import TelemetryWriter

    summary = {k: v for k, v in audit_dict().items() if k != "layers"}
    path = tmp_path / "run.jsonl"
    with TelemetryWriter(path) as w:
        w.run_start({"model_name": "m", "lora": {"r": 16}})
        w.train_step(1, loss=1.0)
        w.metrics("lora_audit", summary)
    rep = build_report(path)
    assert rep.audit is not None and rep.audit.source == "telemetry"
    audit = _section(render_html(rep), "audit")
    assert "the run&#x27;s lora_audit event" in audit and "73,728" in audit


def test_run_lora_audit_block_shows_what_it_has(tmp_path: Path) -> None:
    """The golden path (no --peft-dir): the run's lora_audit block has no per-module rows, but its
    by-type table, UDR figures and suggested ranks with savings are all on the page."""
    rep = build_report(write_audited_run(tmp_path / "run.jsonl"))
    view = rep.audit
    assert view is not None and view.source == "telemetry" and not view.has_layers
    audit = _section(render_html(rep), "audit")
    # Suggested ranks: the audit's own parameter counts, and the per-module suggestion's savings.
    assert re.search(r"uniform r=2 \(median of k@90%\)</td><td class=\"n\">18,432</td><td class=\"n\">75.0%", audit)
    assert re.search(r"uniform r=4 \(p90 of k@90%\)</td><td class=\"n\">36,864</td><td class=\"n\">50.0%", audit)
    assert re.search(r"per-module ranks[^<]*</td><td class=\"n\">17,664</td><td class=\"n\">76.0%", audit)
    assert "default r = 1" in audit
    # By module type.
    by_type = re.search(r"<h3>By module type</h3>(.*?)</table>", audit, re.S)
    assert by_type, audit
    rows = re.findall(r"<tr>(.*?)</tr>", by_type.group(1))
    cells = [re.findall(r"<td[^>]*>(.*?)</td>", r) for r in rows[1:]]
    assert cells[0][:4] == ["attn", "8", "49,152", "0.176"] and "81.0%" in cells[0]
    assert cells[1][:4] == ["mlp", "4", "24,576", "0.142"] and "19.0%" in cells[1]
    # UDR summary figures (no histogram without per-module values).
    udr = re.search(r"<h3>Update dominance \(UDR\)</h3>(.*?)</table>", audit, re.S)
    assert udr, audit
    for text in ("0.3695", "0.3535", "0.5576", "1.021", "91.7%", "58.3%", "12"):
        assert text in udr.group(1), text
    assert 'data-chart="udr"' not in audit and 'data-chart="heat_utilization"' not in audit
    # One line saying where the per-module views come from.
    note = re.search(r'<p class="note">Per-module heatmaps.*?</p>', audit, re.S)
    assert note, audit
    assert "--peft-dir DIR" in note.group(0)
    assert "gradience audit --json --layers --top-singular-values 16" in note.group(0)
    md = render_markdown(rep)
    assert "| per-module ranks | 17,664 | 76.0% |" in md
    assert "| attn | 8 | 49,152 | 0.176 |" in md
    assert "UDR mean 0.3695, median 0.3535, p90 0.5576, max 1.021; 91.7% > 0.1, 58.3% > 0.3" in md
    assert "--peft-dir" in md


def test_audit_without_singular_values_says_how_to_get_spectra(healthy_run: Path, tmp_path: Path) -> None:
    data = audit_dict()
    for row in data["layers"]:
        del row["top_singular_values"]
    p = tmp_path / "audit.json"
    p.write_text(json.dumps(data))
    audit = _section(render_html(build_report(healthy_run, audit_path=p)), "audit")
    assert 'data-chart="heat_utilization"' in audit and 'data-chart="spectra"' not in audit
    m = re.search(r"<h3>Spectra</h3><p class=\"note\">(.*?)</p>", audit, re.S)
    assert m, "the Spectra section vanished without a word"
    assert "gradience audit --json --layers --top-singular-values 16" in m.group(1) and "--peft-dir" in m.group(1)
    # With singular values the chart is there and the note is not.
    full = _section(render_html(build_report(healthy_run, audit_path=_write(tmp_path / "full.json", audit_dict()))),
                    "audit")
    assert 'data-chart="spectra"' in full and "--top-singular-values 16" not in full


def _write(p: Path, obj: object) -> Path:
    p.write_text(json.dumps(obj))
    return p


def _peft_fragment(audit_html: str) -> dict:
    m = re.search(r"<h3>PEFT config for the per-module ranks</h3>.*?<pre>(.*?)</pre>", audit_html, re.S)
    assert m, "no PEFT-ready fragment on the page"
    return json.loads(_html.unescape(m.group(1)))


def _check_scales_kept(frag: dict, rows: list[dict], ranks: dict[str, int], rslora: bool = False) -> None:
    """Applying the fragment (global r/lora_alpha + patterns) keeps every module's scale α/r (α/√r)."""
    assert set(frag) == {"r", "lora_alpha", "rank_pattern", "alpha_pattern"}
    for row in rows:
        name = row["name"]
        r = frag["rank_pattern"].get(name, frag["r"])
        alpha = frag["alpha_pattern"].get(name, frag["lora_alpha"])
        assert r == ranks[name], name
        assert alpha / (math.sqrt(r) if rslora else r) == pytest.approx(row["scale"]), name


def test_per_module_suggestion_carries_alpha_pattern(healthy_run: Path, audit_file: Path) -> None:
    """rank_pattern alone with one lora_alpha changes each module's scale; the page gives both."""
    rows = audit_dict()["layers"]
    frag = _peft_fragment(_section(render_html(build_report(healthy_run, audit_path=audit_file)), "audit"))
    # k@90% per layer 2,3,5,9 + module offset -> ranks 2,4,4 / 4,4,8 / 8,8,8 / 16,16,16; mode 4 (ties: smaller).
    ranks = {row["name"]: r for row, r in zip(rows, [2, 4, 4, 4, 4, 8, 8, 8, 8, 16, 16, 16], strict=True)}
    assert frag["r"] == 4 and frag["lora_alpha"] == 8.0
    assert len(frag["rank_pattern"]) == 8 and len(frag["alpha_pattern"]) == 8
    _check_scales_kept(frag, rows, ranks)


@pytest.mark.parametrize("rslora", [False, True])
def test_per_module_suggestion_from_the_audit_is_shown_whole(healthy_run: Path, tmp_path: Path, rslora: bool) -> None:
    """The audit's own per_layer_suggestion (r, lora_alpha, rank_pattern, alpha_pattern) is shown as
    written; the report's fallback rule gives the same fragment for the same rows."""
    from gradience.audit import audit_adapter

    adapter = write_peft_adapter(tmp_path / "peft", use_rslora=rslora)
    expected = audit_adapter(adapter, top_singular_values=16).to_dict(layers=True)
    want = {k: expected["per_layer_suggestion"][k] for k in ("r", "lora_alpha", "rank_pattern", "alpha_pattern")}
    assert want["rank_pattern"] and want["alpha_pattern"]  # the adapter does exercise both patterns
    got = _peft_fragment(_section(render_html(build_report(healthy_run, peft_dir=adapter)), "audit"))
    assert got == want
    _check_scales_kept(got, expected["layers"], expected["per_layer_suggestion"]["ranks"], rslora)
    without = {k: v for k, v in expected.items() if k != "per_layer_suggestion"}
    again = _peft_fragment(_section(render_html(build_report(healthy_run, audit=without)), "audit"))
    assert again == want


def test_policy_recommendations_are_shown_and_recorded_ones_kept_apart(guarded_run: Path) -> None:
    from gradience.telemetry import TelemetryWriter

    with TelemetryWriter(guarded_run, run_id="guard-run") as w:
        w.recommendation([{"severity": "warning", "action": "recorded_action", "message": "from the run",
                           "confidence": 0.7}])
    rep = build_report(guarded_run)
    assert rep.rec_source == "policy"
    actions = {r["action"] for r in rep.recommendations}
    assert "guard_aborted_run" in actions and "recorded_action" not in actions
    assert "recorded_action" in {r["action"] for r in rep.recorded_recommendations}
    assert "Gradience run rules applied to this run" in _section(render_html(rep), "recommendations")


def test_policy_errors_are_not_hidden(healthy_run: Path, monkeypatch) -> None:
    import gradience.report.build

    def boom(snap):
        raise RuntimeError("bug in a rule")

    monkeypatch.setattr(gradience.report.build, "run_recommendations", boom)
    with pytest.raises(RuntimeError, match="bug in a rule"):
        build_report(healthy_run)


def test_telemetry_issues_listed(healthy_run: Path) -> None:
    with open(healthy_run, "ab") as f:
        f.write(b"{not json}\n")
    html = render_html(build_report(healthy_run))
    issues = _section(html, "issues")
    assert "1 unreadable line(s)" in issues and "malformed_json" in issues


def test_bad_audit_inputs(healthy_run: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{\"layers\": [1, 2")
    with pytest.raises(GradienceError, match="not valid JSON"):
        build_report(healthy_run, audit_path=bad)
    bad.write_text(json.dumps({"hello": 1}))
    with pytest.raises(GradienceError, match="not a Gradience audit"):
        build_report(healthy_run, audit_path=bad)
    bad.write_text("[1, 2]")
    with pytest.raises(GradienceError, match="must be an object"):
        build_report(healthy_run, audit_path=bad)


def test_peft_dir_is_audited_now(healthy_run: Path, compat_dir: Path) -> None:
    """--peft-dir runs the real adapter audit (gradience.audit) and shows its numbers."""
    from gradience.audit import audit_adapter

    adapter = compat_dir / "adapters" / "tiny_lora"
    expected = audit_adapter(adapter, top_singular_values=16).to_dict(layers=True)
    rep = build_report(healthy_run, peft_dir=adapter)
    assert rep.audit is not None and rep.audit.source == "peft-dir"
    assert rep.audit.total_params == expected["total_lora_params"]
    assert len(rep.audit.modules) == len(expected["layers"])
    audit = _section(render_html(rep), "audit")
    assert f"{expected['total_lora_params']:,}" in audit
    charts = _charts(audit)
    assert charts["heat_utilization"] == len(expected["layers"])
    assert charts["spectra"] > 0
    first = expected["layers"][0]
    assert f"{first['utilization']:.2f}" in audit


def test_missing_peft_dir_is_a_one_line_error(healthy_run: Path, tmp_path: Path) -> None:
    with pytest.raises(GradienceError, match="adapter directory not found"):
        build_report(healthy_run, peft_dir=tmp_path / "nope")


@pytest.mark.parametrize("name", ["hf_callback_tiny_distilbert.jsonl", "bench_probe_distilbert_r32.jsonl",
                                  "vnext_minimal.jsonl"])
def test_files_from_earlier_releases_render(compat_dir: Path, name: str) -> None:
    rep = build_report(compat_dir / "telemetry" / name)
    html = render_html(rep)
    for sid, _ in SECTIONS:
        _section(html, sid)
    assert 'data-chart="loss"' in html
    if name != "vnext_minimal.jsonl":
        # The held-out split these releases called "eval" is shown as "test".
        assert "<td>test</td>" in _section(html, "eval")
    assert render_markdown(rep).startswith("## Gradience report")


def test_recommendation_backticks_render_as_code() -> None:
    from gradience.report.html import _inline_code

    assert _inline_code("run `gradience audit --append` <now>") == (
        "run <code>gradience audit --append</code> &lt;now&gt;")
    assert _inline_code("an odd ` backtick") == "an odd ` backtick"  # unpaired: shown as written
