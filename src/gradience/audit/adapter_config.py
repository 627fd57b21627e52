"""A PEFT adapter's ``adapter_config.json`` and where an adapter's files are.

:class:`AdapterConfig` holds the fields of a ``LoraConfig`` the audit needs (r, α, the
per-module patterns, rsLoRA/DoRA flags), parsed strictly: a value of the wrong type is a
:class:`ConfigError` naming the key. :func:`resolve_adapter_paths` finds the config and the
weights file of an adapter directory (the weights themselves are read by :mod:`.weights`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..bounded import loads_json, read_bytes
from ..errors import AdapterFormatError, ConfigError

__all__ = ["CONFIG_NAME", "WEIGHT_NAMES", "AdapterConfig", "load_adapter_config", "resolve_adapter_paths"]

CONFIG_NAME = "adapter_config.json"
# init_lora_weights values (prefixes) whose initialisation moves the principal part of W into B₀·A₀
BASE_REWRITING_INITS = ("pissa", "olora", "corda", "loftq")
CONVERSION_HINT = ("save the trained adapter converted to a plain LoRA with PEFT: set "
                   "peft_config.init_lora_weights = True and save_pretrained the adapter right after "
                   "get_peft_model (the initial factors), then after training "
                   "model.save_pretrained(OUT, path_initial_model_for_weight_conversion=INIT_DIR); "
                   "the converted adapter (rank 2r) holds the learned update on the original base")
WEIGHT_NAMES = ("adapter_model.safetensors", "adapter_model.bin")


# ---------------------------------------------------------------------------------------
# adapter_config.json
# ---------------------------------------------------------------------------------------
@dataclass
class AdapterConfig:
    """The fields of a PEFT ``LoraConfig`` that the audit needs (older files may lack some).

    ``lora_alpha`` and ``r`` are the global values; ``rank_pattern`` / ``alpha_pattern``
    override them per module with PEFT's key-matching rules (see :mod:`.naming`).
    """

    r: int = 8
    lora_alpha: float = 8.0
    rank_pattern: dict[str, int] = field(default_factory=dict)
    alpha_pattern: dict[str, float] = field(default_factory=dict)
    use_rslora: bool = False
    use_dora: bool = False
    fan_in_fan_out: bool = False
    target_modules: Any = None
    modules_to_save: Any = None
    base_model_name_or_path: str | None = None
    peft_type: str | None = None
    target_parameters: list[str] = field(default_factory=list)
    init_lora_weights: Any = True
    raw: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    @property
    def base_rewriting_init(self) -> str | None:
        """The ``init_lora_weights`` value when it rewrites the base weights (PiSSA, OLoRA, CorDA,
        LoftQ): W is replaced by W − s·B₀·A₀ (or a quantized residual), so B·A is not the learned
        update. ``None`` for inits that leave the base as it is."""
        init = self.init_lora_weights
        if isinstance(init, str) and init.lower().startswith(BASE_REWRITING_INITS):
            return init
        if self.raw.get("loftq_config"):
            return "loftq"
        return None

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], path: Path | None = None) -> AdapterConfig:
        where = path if path is not None else "adapter config"
        peft_type = d.get("peft_type")
        if peft_type is not None and str(peft_type).upper() not in ("LORA",):
            raise ConfigError(
                f"peft_type {peft_type!r} is not LoRA; the audit reads LoRA adapters (B·A updates) only",
                path=where,
            )

        def num(key: str, default: float | None) -> float | None:
            v = d.get(key, default)
            if v is None:
                return default
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise ConfigError(f"{key} must be a number, got {_short(v)}", path=where)
            return _finite(key, v, where)

        r = num("r", 8.0)
        assert r is not None
        # Very old configs wrote "alpha"; a missing alpha means PEFT's default (8).
        alpha = num("lora_alpha", None)
        if alpha is None:
            alpha = num("alpha", 8.0)
        assert alpha is not None

        def pattern(key: str) -> dict[str, Any]:
            v = d.get(key) or {}
            if not isinstance(v, Mapping):
                raise ConfigError(f"{key} must be an object mapping module names to numbers", path=where)
            out = {}
            for k, val in v.items():
                if isinstance(val, bool) or not isinstance(val, (int, float)):
                    raise ConfigError(f"{key}[{_short(k)}] must be a number, got {_short(val)}", path=where)
                out[str(k)] = _finite(f"{key}[{_short(k)}]", val, where)
            return out

        def strings(key: str, allow_str: bool) -> Any:
            # PEFT writes a list of names (or one regex string for target_modules), or null.
            v = d.get(key)
            if v is None or (allow_str and isinstance(v, str)):
                return v
            if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
                raise ConfigError(f"{key} must be a list of module names{' or a regex string' if allow_str else ''}, "
                                  f"got {_short(v)}", path=where)
            return v

        def flag(key: str) -> bool:
            v = d.get(key)
            if v is not None and not isinstance(v, bool):
                raise ConfigError(f"{key} must be true or false, got {_short(v)}", path=where)
            return bool(v)

        base = d.get("base_model_name_or_path")
        if base is not None and not isinstance(base, str):
            raise ConfigError(f"base_model_name_or_path must be a string, got {_short(base)}", path=where)
        init = d.get("init_lora_weights", True)
        if not isinstance(init, (bool, str)):
            raise ConfigError(f"init_lora_weights must be true, false or a method name, got {_short(init)}", path=where)
        return cls(
            r=int(r),
            lora_alpha=alpha,
            rank_pattern={k: int(v) for k, v in pattern("rank_pattern").items()},
            alpha_pattern={k: float(v) for k, v in pattern("alpha_pattern").items()},
            use_rslora=flag("use_rslora"),
            use_dora=flag("use_dora"),
            fan_in_fan_out=flag("fan_in_fan_out"),
            target_modules=strings("target_modules", True),
            modules_to_save=strings("modules_to_save", False),
            base_model_name_or_path=base or None,
            peft_type=str(peft_type) if peft_type is not None else None,
            target_parameters=list(strings("target_parameters", False) or []),
            init_lora_weights=init,
            raw=dict(d),
            path=path,
        )


def _short(v: object, n: int = 60) -> str:
    """``repr(v)`` cut to ``n`` characters: a message stays one short line whatever the file holds."""
    r = repr(v) if not isinstance(v, (list, dict)) or len(v) < 50 else f"<{type(v).__name__} of {len(v)}>"
    return r if len(r) <= n else r[: n - 1] + "…"


def _finite(key: str, v: float, where: object) -> float:
    """``float(v)``, refusing NaN, ±inf and integers too large for a float."""
    try:
        f = float(v)
    except OverflowError:
        f = math.inf
    if not math.isfinite(f):
        raise ConfigError(f"{key} must be a finite number, got {_short(v)}", path=where)
    return f


def load_adapter_config(path: str | os.PathLike[str]) -> AdapterConfig:
    """Parse ``adapter_config.json`` (a clear :class:`ConfigError` for anything unreadable)."""
    p = Path(path)
    if not p.exists():
        raise AdapterFormatError("adapter config not found", path=p,
                                 hint="a PEFT adapter directory holds adapter_config.json (save_pretrained writes it)")
    if p.is_dir():
        raise AdapterFormatError("expected a file, got a directory", path=p)
    raw = read_bytes(p, what="adapter config", error=AdapterFormatError)
    if not raw.strip():
        raise AdapterFormatError("adapter config is empty (zero-size file)", path=p)
    data = loads_json(raw, path=p, what="adapter config", error=ConfigError)
    if not isinstance(data, dict):
        raise ConfigError("adapter config must be a JSON object", path=p)
    return AdapterConfig.from_dict(data, path=p)


def _subfolder_adapters(d: Path) -> list[Path]:
    """Subfolders of ``d`` holding an adapter (``save_pretrained`` writes a non-default adapter
    to ``<dir>/<adapter name>/``)."""
    try:
        return sorted(p for p in d.iterdir() if p.is_dir() and (p / CONFIG_NAME).is_file())
    except OSError:
        return []


def resolve_adapter_paths(
    peft_dir: str | os.PathLike[str] | None = None,
    adapter_config: str | os.PathLike[str] | None = None,
    weights: str | os.PathLike[str] | None = None,
    adapter_name: str | None = None,
) -> tuple[Path, Path]:
    """Return ``(config_path, weights_path)``; safetensors preferred over ``.bin``.

    A directory without an adapter of its own whose only adapter sits in a named subfolder
    (``save_pretrained`` of an adapter not called ``default``) resolves to that subfolder;
    ``adapter_name`` picks ``<dir>/<name>/`` when it exists. Several subfolders and no
    ``adapter_name`` is an error listing them.
    """
    if peft_dir is None and adapter_config is None and weights is None:
        raise AdapterFormatError("no adapter given", hint="pass --peft-dir DIR (or --adapter-config and --weights)")
    d = Path(peft_dir) if peft_dir is not None else None
    if d is not None:
        if not d.exists():
            raise AdapterFormatError("adapter directory not found", path=d)
        if not d.is_dir():
            raise AdapterFormatError("expected an adapter directory", path=d,
                                     hint="pass the folder that holds adapter_config.json, or use --weights FILE")
        if adapter_name is not None and (d / adapter_name / CONFIG_NAME).is_file():
            d = d / adapter_name
        elif not (d / CONFIG_NAME).exists() and not any((d / n).exists() for n in WEIGHT_NAMES):
            subs = _subfolder_adapters(d)
            if adapter_name is not None:
                names = ", ".join(p.name for p in subs) or "none"
                raise AdapterFormatError(f"no adapter named {adapter_name!r} here (adapter subfolders: {names})",
                                         path=d, hint="pass --adapter-name with one of the subfolder names")
            if len(subs) == 1:
                d = subs[0]
            elif len(subs) > 1:
                raise AdapterFormatError(
                    f"{len(subs)} adapters in subfolders ({', '.join(p.name for p in subs)}); "
                    "each is audited on its own", path=d, hint="pass --adapter-name NAME")
    if adapter_config is not None:
        cfg = Path(adapter_config)
    elif d is not None:
        cfg = d / CONFIG_NAME
    else:
        cfg = Path(weights).parent / CONFIG_NAME  # type: ignore[arg-type]
    if weights is not None:
        w = Path(weights)
    else:
        base = d if d is not None else cfg.parent
        found = [base / n for n in WEIGHT_NAMES if (base / n).exists()]
        if not found:
            raise AdapterFormatError(
                "no adapter weights found (adapter_model.safetensors or adapter_model.bin)", path=base,
                hint="point --peft-dir at the folder written by save_pretrained, or pass --weights FILE")
        w = found[0]
    if not cfg.exists():
        raise AdapterFormatError("adapter config not found", path=cfg,
                                 hint="the audit needs adapter_config.json for r and alpha; pass --adapter-config FILE")
    if not w.exists():
        raise AdapterFormatError("adapter weights not found", path=w)
    return cfg, w
