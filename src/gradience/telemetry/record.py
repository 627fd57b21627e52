"""Typed records with a fixed JSON shape: the base of the snapshot sections and the audit summary.

A record is a dataclass whose fields have concrete types. It serialises (:meth:`Record.to_dict`)
to the same keys, in the same order, as the plain dicts these contracts were before they were
typed, so JSON output and telemetry bytes do not change.

Records are read back from payloads written by any release (:meth:`Record.from_dict`), and
that read is lenient, as the event fold always was:

- a missing key leaves the field at its default and stays missing when serialised again;
- an unknown key (a newer writer, an older release) is kept verbatim in ``extras``;
- a value of the wrong type reads as missing (the field keeps its default) and the value as
  recorded is kept in ``recorded``, so re-serialising writes back what was read.

For code written against the earlier dict sections, a record also answers read access by its
serialised key (``rec["key"]``, ``rec.get("key")``, ``"key" in rec``, ``dict(rec)``) and compares
equal to the dict it serialises to; new code reads the attributes. Two records are equal when
they serialise to the same object.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, TypeVar

from .schema import real_number, typed_value

__all__ = ["Record", "plain"]

R = TypeVar("R", bound="Record")

_BOOKKEEPING = frozenset({"extras", "recorded", "key_order"})
_MISSING = object()


def plain(value: Any) -> Any:
    """A JSON-ready deep copy: records become their dicts, dicts and lists are copied."""
    if isinstance(value, Record):
        return value.to_dict()
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def _conform(annotation: str, value: Any) -> tuple[bool, Any]:
    """``(ok, typed value)``: whether ``value`` fits a field declared ``annotation``.

    ``None`` fits every field (all record fields are optional in recorded data). Integers fit a
    ``float`` field unchanged; an integral float fits an ``int`` field and reads as that int.
    Containers are checked one level deep (a list is a list; the values of ``dict[str, float]``
    are numbers).
    """
    if value is None:
        return True, None
    kind = annotation.replace(" | None", "").strip()
    if kind == "Any":
        return True, value
    if kind in ("str", "bool", "int", "float"):
        return typed_value(kind, value)  # the ConfigSnapshot's rule for scalars
    if kind.startswith("list["):
        if not isinstance(value, list):
            return False, value
        if kind == "list[float]":
            return all(real_number(v) is not None for v in value), value
        if kind == "list[int]":
            return all(type(v) is int for v in value), value
        if kind == "list[int | None]":
            return all(v is None or type(v) is int for v in value), value
        return True, value
    if kind.startswith("dict["):
        if not isinstance(value, dict):
            return False, value
        if kind == "dict[str, float]":
            return all(real_number(v) is not None for v in value.values()), value
        return True, value
    return True, value


def _nested(sub: type[Record], value: Any, strict: bool) -> tuple[Any, bool]:
    """``(records, exact)``: the objects of a conforming container read as records of ``sub``.
    An entry that is not an object is left out (``exact`` is then false: the container as
    recorded is what serialises)."""
    if isinstance(value, dict):
        out: Any = {k: sub.from_dict(v, strict=strict) for k, v in value.items() if isinstance(v, Mapping)}
    else:
        out = [sub.from_dict(v, strict=strict) for v in value if isinstance(v, Mapping)]
    exact = len(out) == len(value)
    if strict and not exact:
        raise ValueError(f"{sub.__name__}: an entry is not an object")
    return out, exact


@dataclass(eq=False)
class Record:
    """Base of a typed JSON record (see the module docstring).

    Bookkeeping (not part of the JSON shape of its own):

    - ``extras``: keys this type does not know, as recorded;
    - ``recorded``: ``key -> (value as recorded, field value as read)`` where the recorded value
      could not be kept in its typed field (ill-typed: the field reads as missing, i.e. its
      default; or converted, such as ``4.0`` read as ``int`` 4). It is written back while the
      field still holds what was read;
    - ``key_order``: the keys present, in order, when read from a payload; ``None`` for a
      record built in code, which has every field (less the ``OMIT_IF_NONE`` ones left unset).
    """

    OMIT_IF_NONE: ClassVar[frozenset[str]] = frozenset()
    # Fields holding records: a ``dict[str, X]`` or ``list[X]`` of the record type X.
    NESTED: ClassVar[dict[str, type[Record]]] = {}

    extras: dict[str, Any] = field(default_factory=dict, repr=False, compare=False, kw_only=True)
    recorded: dict[str, tuple[Any, Any]] = field(default_factory=dict, repr=False, compare=False, kw_only=True)
    key_order: tuple[str, ...] | None = field(default=None, repr=False, compare=False, kw_only=True)

    # -- shape -----------------------------------------------------------------------------
    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        """The JSON keys this type knows, in their serialised order."""
        return tuple(f.name for f in fields(cls) if f.name not in _BOOKKEEPING)

    @classmethod
    def empty(cls: type[R]) -> R:
        """A record with no key present (serialises to ``{}``; attributes read their defaults)."""
        return cls(key_order=())

    def present_keys(self) -> list[str]:
        """The keys :meth:`to_dict` writes, in order."""
        if self.key_order is not None:
            return list(self.key_order)
        keys = [n for n in self.field_names() if not (n in self.OMIT_IF_NONE and getattr(self, n) is None)]
        return keys + [k for k in self.extras if k not in keys]

    def _value(self, key: str) -> Any:
        if key in self.extras:
            return self.extras[key]
        current = getattr(self, key)
        if key in self.recorded:
            raw, read = self.recorded[key]
            if type(current) is type(read) and current == read:  # not reassigned since it was read
                return raw
        return current

    def to_dict(self) -> dict[str, Any]:
        """The JSON object: the same keys, order and values as the dict this contract was."""
        return {k: plain(self._value(k)) for k in self.present_keys()}

    # -- reading ---------------------------------------------------------------------------
    @classmethod
    def from_dict(cls: type[R], data: Any, *, strict: bool = False) -> R:
        """Read a recorded payload (leniently, see the module docstring); ``None`` or a
        non-object reads as :meth:`empty`. With ``strict`` an unknown key or an ill-typed value
        raises ``ValueError`` (for producers checking their own output against the contract)."""
        if isinstance(data, cls):
            return data
        if isinstance(data, Record):
            data = data.to_dict()
        if not isinstance(data, Mapping):
            if strict:
                raise ValueError(f"{cls.__name__}: expected an object, got {type(data).__name__}")
            return cls.empty()
        types = {f.name: str(f.type) for f in fields(cls) if f.name not in _BOOKKEEPING}
        values: dict[str, Any] = {}
        recorded: dict[str, Any] = {}
        extras: dict[str, Any] = {}
        for key, raw in data.items():
            annotation = types.get(key)
            if annotation is None:
                if strict:
                    raise ValueError(f"{cls.__name__}: unknown key {key!r}")
                extras[key] = raw
                continue
            ok, value = _conform(annotation, raw)
            exact = True
            if ok and key in cls.NESTED and value is not None:
                value, exact = _nested(cls.NESTED[key], value, strict)
            if not ok:
                if strict:
                    raise ValueError(f"{cls.__name__}.{key}: {raw!r} is not {annotation}")
                recorded[key] = raw
                continue
            values[key] = value
            if type(value) is not type(raw) or not exact:
                recorded[key] = raw
        out = cls(**values, extras=extras, key_order=tuple(data.keys()))
        out.recorded = {key: (raw, getattr(out, key)) for key, raw in recorded.items()}
        return out

    # -- read access by serialised key (compatibility with the earlier dict sections) -------
    def __getitem__(self, key: str) -> Any:
        if key not in self.present_keys():
            raise KeyError(key)
        return self._value(key)

    def get(self, key: str, default: Any = None) -> Any:
        return self._value(key) if key in self.present_keys() else default

    def __contains__(self, key: object) -> bool:
        return key in self.present_keys()

    def keys(self) -> list[str]:
        return self.present_keys()

    def __iter__(self) -> Iterator[str]:
        return iter(self.present_keys())

    def __eq__(self, other: object) -> bool:
        """Equal when the JSON objects are (a plain dict compares with the record's dict)."""
        if isinstance(other, Record):
            return type(other) is type(self) and other.to_dict() == self.to_dict()
        if isinstance(other, Mapping):
            return dict(other) == self.to_dict()
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __len__(self) -> int:
        """The number of keys present: a record with none is falsy, as the empty dict was."""
        return len(self.present_keys())
