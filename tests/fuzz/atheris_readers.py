"""Coverage-guided fuzzing of the file readers with atheris (libFuzzer for Python).

Not part of the pytest suites (atheris is not a project dependency). Run it by hand:

    pip install atheris
    python tests/fuzz/atheris_readers.py -max_total_time=300 -rss_limit_mb=4096

The first byte of each input picks the reader; the rest is the file. A reader may succeed or raise a
GradienceError subclass; anything else is a crash that libFuzzer reports with the input that caused it.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import atheris

with atheris.instrument_imports():
    from gradience.audit import audit_adapter
    from gradience.audit.adapter_config import load_adapter_config
    from gradience.audit.weights import SafetensorsFile
    from gradience.bounded import load_yaml, loads_json
    from gradience.errors import GradienceError
    from gradience.policy.config_parse import load_config
    from gradience.report.audit_view import load_audit_json

_DIR = Path(tempfile.mkdtemp(prefix="gradience-atheris-"))
_CONFIG = b'{"peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": ["q"]}'


def _write(name: str, data: bytes) -> Path:
    p = _DIR / name
    p.write_bytes(data)
    return p


def _safetensors(data: bytes) -> None:
    (_DIR / "adapter_config.json").write_bytes(_CONFIG)
    p = _write("adapter_model.safetensors", data)
    with SafetensorsFile(p) as f:
        for n in f.names():
            f.read(n)
    audit_adapter(_DIR, udr=False)


READERS = (
    lambda d: load_adapter_config(_write("adapter_config.json", d)),
    lambda d: load_config(training=_write("training_args.json", d)),
    lambda d: load_config(config=_write("gradience.yaml", d)),
    lambda d: load_audit_json(_write("audit.json", d)),
    lambda d: loads_json(d, path="x", what="JSON"),
    lambda d: load_yaml(d.decode("utf-8", "replace"), path="x", what="YAML"),
    _safetensors,
)


def test_one_input(data: bytes) -> None:
    if not data:
        return
    try:
        READERS[data[0] % len(READERS)](data[1:])
    except GradienceError:
        pass


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
