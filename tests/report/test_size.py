"""A 100k-step run gives a small page: curves are bucketed, so size does not grow with steps."""

from __future__ import annotations

import math
import random
from pathlib import Path

from gradience.report import build_report, render_html, render_markdown
from gradience.telemetry import TelemetryWriter

PAGE_BUDGET_BYTES = 1_500_000


def _long_run(path: Path, steps: int) -> None:
    rng = random.Random(1)
    with TelemetryWriter(path, run_id="long", flush_every=2048) as w:
        w.run_start({"model_name": "long-run", "training": {"max_steps": steps}})
        for s in range(steps):
            loss = 2.0 * math.exp(-s / 20_000) + 0.3 + rng.gauss(0, 0.02)
            if s == 55_555:
                loss = float("nan")
            w.train_step(s, loss=loss, lr=1e-4, grad_norm=1 + rng.random(), grad_norm_clipped=1.0)
            if s % 1000 == 0:
                w.eval(s, split="train", metrics={"loss": loss, "accuracy": 0.9})
                w.eval(s, split="test", metrics={"loss": loss * 1.1, "accuracy": 0.85})
            if s % 500 == 0:
                w.metrics("spectral", {"kappa_tilde": 20 + s / 1e4, "risk_level": "STABLE"}, step=s)
            if s % 100 == 0:
                w.metrics("guard", {}, step=s, action="snapshot")


def test_100k_step_page_is_small(tmp_path: Path) -> None:
    run = tmp_path / "run.jsonl"
    _long_run(run, 100_000)
    rep = build_report(run)
    c = rep.run.curves
    assert c.train_steps == 100_000
    assert len(c.loss) <= c.max_points and c.loss.width > 1
    html = render_html(rep)
    size = len(html.encode())
    print(f"\n100k-step run: telemetry {run.stat().st_size / 1e6:.1f} MB -> report {size / 1024:.0f} KB")
    assert size < PAGE_BUDGET_BYTES
    # The one NaN among 100k steps is still marked after bucketing.
    assert "non-finite loss ×1 at steps" in html
    assert "downsampled for display" in html
    assert len(render_markdown(rep).encode()) < 10_000
