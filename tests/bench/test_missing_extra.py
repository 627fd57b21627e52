"""Without the bench's libraries, training a variant is a one-line MissingExtraError naming the extra
(no degraded telemetry recorder stands in for the training integration)."""

from __future__ import annotations

import sys

import pytest

from gradience.bench.config import config_from_dict
from gradience.bench.strategies import VariantPlan
from gradience.errors import MissingExtraError


@pytest.mark.parametrize("missing", ["torch", "transformers", "peft"])
def test_train_variant_names_the_missing_extra(tmp_path, monkeypatch, missing):
    from gradience.bench.train import train_variant

    monkeypatch.setitem(sys.modules, missing, None)  # import of it raises ImportError
    cfg = config_from_dict({"task": {"data_dir": "x"}})
    with pytest.raises(MissingExtraError) as err:
        train_variant(cfg, None, VariantPlan("uniform_median", r=4, alpha=8.0), 0, tmp_path, "cpu")  # type: ignore[arg-type]
    assert err.value.extra == "bench" and err.value.module == missing
    assert "gradience[bench]" in err.value.one_line()
