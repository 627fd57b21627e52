"""The κ̃ level rule is torch-free and replayable; no level is presented as an alarm."""

from __future__ import annotations

import subprocess
import sys

from gradience.training.kappa_risk import (
    ALARM_LEVELS,
    LEVEL_WORDS,
    RISK_LEVELS,
    WARMUP,
    neutral_word,
    risk_level,
)


def test_importing_the_rule_does_not_import_torch():
    code = "import sys, gradience.training.kappa_risk; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_warm_up_scale_free_and_no_alarm_levels():
    obs = [(0, 10.0), (5, 11.0), (10, 12.1), (15, 13.31), (20, 14.641)]  # +2 % per step
    assert risk_level(obs[:2], window=5)[0] == WARMUP
    assert risk_level(obs[:4], window=5)[0] == WARMUP
    assert risk_level(obs, window=5)[0] == "DANGER"
    assert risk_level(obs, window=5)[:2] == risk_level([(s, 1e6 * k) for s, k in obs], window=5)[:2]
    assert ALARM_LEVELS == ()
    assert set(LEVEL_WORDS) == {WARMUP, *RISK_LEVELS}
    assert neutral_word("DANGER") == "changing fast" and neutral_word(None) == "—" and neutral_word("odd") == "odd"
