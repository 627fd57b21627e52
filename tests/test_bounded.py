"""The bounded JSON/YAML readers: nesting measured without recursion, refusals name the file."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gradience.bounded import MAX_DEPTH, json_depth_exceeded, load_yaml, loads_json
from gradience.errors import ConfigError


def _nested(depth: int) -> str:
    return '{"r": ' + "[" * depth + "]" * depth + "}"


def test_depth_of_a_200k_deep_value_is_refused_without_recursion() -> None:
    with pytest.raises(ConfigError, match="nests deeper than 64 levels") as e:
        loads_json(_nested(200_000), path="adapter_config.json", what="adapter config")
    assert e.value.one_line().startswith("adapter_config.json: ")


def test_depth_at_the_limit_is_read() -> None:
    assert loads_json(_nested(MAX_DEPTH - 1), path="a.json", what="config")["r"] is not None


def test_brackets_inside_strings_do_not_count() -> None:
    text = json.dumps({"note": "[" * 500, "escaped": '\\"[[[[' * 50})
    assert json_depth_exceeded(text, limit=2) is None
    assert json_depth_exceeded(text.encode(), limit=2) is None


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=5),
                           lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=3), kids, max_size=3),
                           max_leaves=30)


def _depth(v: object) -> int:
    if isinstance(v, list):
        return 1 + max((_depth(x) for x in v), default=0)
    if isinstance(v, dict):
        return 1 + max((_depth(x) for x in v.values()), default=0)
    return 0


@given(json_values, st.integers(min_value=0, max_value=8))
def test_measured_depth_agrees_with_the_value(value: object, limit: int) -> None:
    text = json.dumps(value)
    assert (json_depth_exceeded(text, limit) is not None) == (_depth(value) > limit)


def test_not_json_and_not_utf8_are_one_line_errors() -> None:
    with pytest.raises(ConfigError, match=r"not valid JSON \(line 1 column"):
        loads_json("{oops", path="x.json", what="training arguments")
    with pytest.raises(ConfigError, match="not UTF-8"):
        loads_json(b'{"a": "\xff"}', path="x.json", what="training arguments")


def test_yaml_depth_and_aliases_are_bounded() -> None:
    with pytest.raises(ConfigError, match="nests deeper"):
        load_yaml("a: " + "[" * 100_000 + "]" * 100_000, path="b.yaml", what="bench config")
    bomb = "a: &a [x, x]\n" + "".join(f"{c}: &{c} [*{p}, *{p}]\n" for p, c in zip("abcdefghijkl", "bcdefghijklm", strict=True))
    with pytest.raises(ConfigError, match="aliases"):
        load_yaml(bomb, path="b.yaml", what="bench config", max_aliases=10)
    assert load_yaml("task: {name: sst2}\n", path="b.yaml", what="bench config") == {"task": {"name": "sst2"}}
