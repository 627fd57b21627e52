"""`gradience report` as a user runs it: outputs, formats, and one-line errors on bad input."""

from __future__ import annotations

import json
from pathlib import Path


def test_report_html_default_output_beside_run(cli, healthy_run: Path, audit_file: Path) -> None:
    r = cli("report", str(healthy_run), "--audit", str(audit_file))
    assert r.returncode == 0, r.stderr
    out = healthy_run.parent / "report.html"
    assert out.exists() and "wrote" in r.stdout and "healthy-run" in r.stdout
    html = out.read_text()
    assert html.startswith("<!DOCTYPE html>") and 'data-chart="heat_k90"' in html


def test_report_markdown_to_stdout_and_json(cli, guarded_run: Path, tmp_path: Path) -> None:
    r = cli("report", str(guarded_run), "--format", "md", "-o", "-")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("## Gradience report") and "Rollbacks at steps: 80, 150" in r.stdout
    out = tmp_path / "g.md"
    r = cli("report", str(guarded_run), "--format", "md", "-o", str(out), "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["output"] == str(out) and info["bytes"] == out.stat().st_size
    assert info["status"] == "aborted" and info["run_id"] == "guard-run" and info["format"] == "md"


def _one_line_error(r) -> str:
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gradience: error:"), r.stderr
    assert "Traceback" not in r.stderr
    return lines[0]


def test_bad_inputs_exit_2_with_one_line(cli, healthy_run: Path, tmp_path: Path) -> None:
    assert "not found" in _one_line_error(cli("report", str(tmp_path / "missing.jsonl")))
    corrupt = tmp_path / "audit.json"
    corrupt.write_text("{\"total_lora_params\": ")
    before = corrupt.read_bytes()
    assert "not valid JSON" in _one_line_error(cli("report", str(healthy_run), "--audit", str(corrupt)))
    assert corrupt.read_bytes() == before
    assert "is a directory" in _one_line_error(cli("report", str(healthy_run), "-o", str(tmp_path)))
    run_bytes = healthy_run.read_bytes()
    assert "refusing to overwrite" in _one_line_error(cli("report", str(healthy_run), "-o", str(healthy_run)))
    assert "refusing to overwrite" in _one_line_error(
        cli("report", str(healthy_run), "--audit", str(corrupt), "-o", str(corrupt)))
    assert healthy_run.read_bytes() == run_bytes and corrupt.read_bytes() == before
    assert "either --audit or --peft-dir" in _one_line_error(
        cli("report", str(healthy_run), "--audit", str(corrupt), "--peft-dir", str(tmp_path)))
    assert "run id 'nope' not found" in _one_line_error(cli("report", str(healthy_run), "--run-id", "nope"))
    assert not (healthy_run.parent / "report.html").exists()  # no partial page after a failure


def test_report_does_not_import_torch(healthy_run: Path, tmp_path: Path) -> None:
    import subprocess
    import sys

    code = ("import sys; from gradience.cli.main import main\n"
            "try:\n    main(['report', sys.argv[1], '-o', sys.argv[2]])\nexcept SystemExit:\n    pass\n"
            "print('torch' in sys.modules, 'transformers' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code, str(healthy_run), str(tmp_path / "r.html")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "False False"
    assert (tmp_path / "r.html").exists()


def test_audit_option_help_names_the_command_that_gives_spectra() -> None:
    """The --audit help gives the audit command whose JSON has per-module rows and singular values."""
    from gradience.cli.report import report

    opt = next(p for p in report.params if p.name == "audit_path")
    assert "`gradience audit --json --layers --top-singular-values 16`" in (opt.help or "")
    assert "--top-singular-values 16" in (report.help or "")
