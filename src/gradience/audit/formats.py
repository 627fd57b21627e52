"""Which LoRA file format a weights file is in, and each module's r and α in that format.

Three formats are plain low-rank products ΔW = s·B·A and are read here:

- ``peft``: ``…lora_A[.name].weight`` / ``…lora_B…`` keys (``base_model.model.`` prefix), with
  r and α in the ``adapter_config.json`` beside them (:mod:`.adapter_config`).
- ``kohya``: sd-scripts LoRA and LoCon files. ``<module>.lora_down.weight`` (A: r × in, or
  r × in × kh × kw for conv) and ``<module>.lora_up.weight`` (B: out × r, or out × r × 1 × 1),
  with an optional 0-d ``<module>.alpha`` tensor; modules are named ``lora_unet_…``,
  ``lora_te_…`` (SD 1/2), ``lora_te1_…``/``lora_te2_…`` (SDXL's two text encoders) and so on.
  s = α/r; a module without an ``alpha`` tensor has s = 1 (what sd-scripts and diffusers do).
  Training metadata lives in the file's ``ss_*`` keys.
- ``diffusers``: PEFT-style ``lora_A``/``lora_B`` keys in one ``.safetensors`` whose modules sit
  under a pipeline component (``unet.``, ``text_encoder.``, ``text_encoder_2.``, ``transformer.``…).
  Each component's ``LoraConfig`` (r, α, patterns) is the JSON in the ``lora_adapter_metadata``
  metadata key, under ``<component>.<field>`` names, when diffusers wrote it; without it diffusers
  loads every module with α = r (s = 1).

Formats that are not a product of two factors (LyCORIS LoHa, LoKr, Tucker-core LoCon, OFT, full
diffs, DoRA's ``dora_scale``) are refused by :func:`refuse_unsupported` with one line naming the
format.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..bounded import loads_json
from ..errors import AdapterFormatError
from .weights import FLOAT_DTYPES, PEFT_PREFIX, LoraModule, ModuleScan, TensorSource, _geometry, _natural_key

__all__ = [
    "DIFFUSERS_COMPONENTS",
    "DIFFUSERS_METADATA_KEY",
    "SUPPORTED",
    "FileFormat",
    "ModuleScale",
    "detect_format",
    "diffusers_scales",
    "kohya_scales",
    "refuse_unsupported",
    "scan_kohya",
]

SUPPORTED = "PEFT LoRA, kohya sd-scripts LoRA/LoCon (lora_down/lora_up) and diffusers LoRA (lora_A/lora_B) files"
DIFFUSERS_METADATA_KEY = "lora_adapter_metadata"
# Pipeline components diffusers' LoRA loaders prefix their modules with.
DIFFUSERS_COMPONENTS = ("unet", "text_encoder", "text_encoder_2", "text_encoder_3", "transformer", "prior",
                        "transformer_2", "controlnet")

# (key fragment, format name) for files that are not B·A products. Checked on tensor names.
_NOT_LOW_RANK: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"\.hada_w[12]_[ab]$"), "LyCORIS LoHa (hada_w1_a/hada_w2_b: a Hadamard product of two low-rank pairs)"),
    (re.compile(r"\.lokr_w[12](_[ab])?$"), "LyCORIS LoKr (lokr_w1/lokr_w2: a Kronecker product)"),
    (re.compile(r"\.lora_mid\.weight$"), "LyCORIS LoCon with a Tucker core (lora_mid)"),
    (re.compile(r"\.oft_(blocks|diag)$"), "LyCORIS OFT/BOFT (orthogonal rotations)"),
    (re.compile(r"\.dora_scale$"), "DoRA in the kohya/LyCORIS layout (dora_scale: a learned magnitude that rescales W + ΔW)"),
    (re.compile(r"\.diff$"), "a full weight difference (.diff tensors, not a low-rank pair)"),
)

_KOHYA_DOWN = re.compile(r"^(?P<mod>.+)\.lora_down\.weight$")
_KOHYA_UP = re.compile(r"^(?P<mod>.+)\.lora_up\.weight$")
_KOHYA_ALPHA = re.compile(r"^(?P<mod>.+)\.alpha$")


@dataclass(frozen=True)
class FileFormat:
    """The format of one weights file: ``name`` is ``peft``, ``kohya`` or ``diffusers``;
    ``needs_config`` is true when r/α live in an ``adapter_config.json`` beside the file."""

    name: str
    needs_config: bool

    @property
    def label(self) -> str:
        return {"peft": "PEFT LoRA", "kohya": "kohya sd-scripts LoRA", "diffusers": "diffusers LoRA"}[self.name]


def refuse_unsupported(names: list[str], path: Any) -> None:
    """Raise :class:`AdapterFormatError` naming the format when a tensor shows the file is not
    a B·A product."""
    for key in names:
        for pat, what in _NOT_LOW_RANK:
            if pat.search(key):
                raise AdapterFormatError(
                    f"{what} file (tensor {key!r}): not a plain low-rank product B·A, so it has no exact "
                    "LoRA spectrum to audit or truncate", path=path,
                    hint=f"gradience reads {SUPPORTED}; merge this one into the base with the tool that made it")


_LEGACY_DIFFUSERS = re.compile(r"(\.lora|_lora)\.(down|up)\.weight$")


def detect_format(names: list[str], metadata: Mapping[str, str], path: Any = None) -> FileFormat:
    """Tell the format from the tensor names (and the metadata), refusing non-B·A formats.

    kohya: any ``….lora_down.weight``; diffusers: ``lora_A``/``lora_B`` keys under a pipeline
    component prefix, or diffusers' ``lora_adapter_metadata``; otherwise PEFT.
    """
    refuse_unsupported(names, path)
    legacy = next((k for k in names if _LEGACY_DIFFUSERS.search(k)), None)
    if legacy is not None:
        raise AdapterFormatError(
            f"diffusers' legacy attention-processor LoRA file (tensor {legacy!r}: lora.down/lora.up), a layout "
            "this audit does not map to modules", path=path,
            hint="load it with a diffusers pipeline's load_lora_weights and re-save it with save_lora_weights "
                 f"(the current layout); gradience reads {SUPPORTED}")
    if any(_KOHYA_DOWN.match(k) or _KOHYA_UP.match(k) for k in names):
        return FileFormat("kohya", needs_config=False)
    lora = [k for k in names if ".lora_A" in k or ".lora_B" in k]
    if lora and not any(k.startswith(PEFT_PREFIX) for k in lora):
        if DIFFUSERS_METADATA_KEY in metadata or all(k.split(".", 1)[0] in DIFFUSERS_COMPONENTS for k in lora):
            return FileFormat("diffusers", needs_config=False)
    return FileFormat("peft", needs_config=True)


# ---------------------------------------------------------------------------------------
# kohya sd-scripts
# ---------------------------------------------------------------------------------------
def scan_kohya(src: TensorSource) -> ModuleScan:
    """Pair every ``lora_down`` with its ``lora_up`` (and ``alpha``) into :class:`LoraModule`\\ s.

    A module is named by its kohya prefix (``lora_unet_down_blocks_0_…_to_q``); A is
    ``lora_down`` and B is ``lora_up``, so conv LoCon (3×3 down, 1×1 up) has the PEFT conv geometry.
    """
    downs: dict[str, str] = {}
    ups: dict[str, str] = {}
    alphas: dict[str, str] = {}
    other: list[str] = []
    for key in src.names():
        if m := _KOHYA_DOWN.match(key):
            downs[m.group("mod")] = key
        elif m := _KOHYA_UP.match(key):
            ups[m.group("mod")] = key
        elif (m := _KOHYA_ALPHA.match(key)) and src.shape(key) in ((), (1,)):
            alphas[m.group("mod")] = key
        else:
            other.append(key)
    modules: list[LoraModule] = []
    problems: list[dict[str, Any]] = []
    for mod in sorted(set(downs) | set(ups), key=_natural_key):
        if mod not in downs or mod not in ups:
            have, miss = ("lora_up", "lora_down") if mod in ups else ("lora_down", "lora_up")
            raise AdapterFormatError(f"module {mod!r} has {have} but no {miss}", path=src.path,
                                     hint="the LoRA file is incomplete; re-save it")
        a_key, b_key = downs[mod], ups[mod]
        for k in (a_key, b_key):
            if src.dtype(k) not in FLOAT_DTYPES:
                raise AdapterFormatError(f"tensor {k!r} has non-float dtype {src.dtype(k)}", path=src.path)
        a_shape, b_shape = src.shape(a_key), src.shape(b_key)
        geom = _geometry(a_shape, b_shape, False)
        if isinstance(geom, str):
            problems.append({"code": "SHAPE_MISMATCH", "severity": "error", "module": mod,
                             "message": f"{mod}: {geom} (lora_down {list(a_shape)}, lora_up {list(b_shape)}); "
                                        "module skipped"})
            continue
        kind, r, out_f, in_f = geom
        modules.append(LoraModule(name=mod, key_prefix=mod, a_key=a_key, b_key=b_key, kind=kind, r=r,
                                  out_features=out_f, in_features=in_f, a_shape=a_shape, b_shape=b_shape,
                                  alpha_key=alphas.get(mod)))
    stray = [alphas[m] for m in alphas if m not in downs]
    if not modules:
        detail = f"; {len(problems)} module(s) had unusable shapes" if problems else ""
        raise AdapterFormatError(f"no LoRA modules found (no lora_down/lora_up tensor pairs){detail}", path=src.path)
    return ModuleScan(modules=modules, skipped=sorted(other + stray), problems=problems)


@dataclass
class ModuleScale:
    """Per module (by :attr:`LoraModule.name`): the r the scale is computed with, α, and s."""

    r: dict[str, int] = field(default_factory=dict)
    alpha: dict[str, float] = field(default_factory=dict)
    scale: dict[str, float] = field(default_factory=dict)
    rslora: set[str] = field(default_factory=set)  # modules whose scale is α/√r


def kohya_scales(src: TensorSource, modules: list[LoraModule]) -> ModuleScale:
    """s = α/r from each module's ``alpha`` tensor; α = r (s = 1) when it has none."""
    out = ModuleScale()
    for m in modules:
        if m.alpha_key is not None:
            alpha = float(src.read(m.alpha_key).reshape(-1)[0])
            if not math.isfinite(alpha):
                raise AdapterFormatError(f"alpha of module {m.name!r} is {alpha}", path=src.path,
                                         hint="the LoRA file is corrupt; re-save it")
        else:
            alpha = float(m.r)
        out.r[m.name] = m.r
        out.alpha[m.name] = alpha
        out.scale[m.name] = alpha / m.r
    return out


# ---------------------------------------------------------------------------------------
# diffusers
# ---------------------------------------------------------------------------------------
def diffusers_component(name: str) -> tuple[str, str]:
    """(component, module path inside it) of a diffusers module name."""
    comp, _, rest = name.partition(".")
    return (comp, rest) if comp in DIFFUSERS_COMPONENTS and rest else ("", name)


def diffusers_configs(metadata: Mapping[str, str], path: Any = None) -> dict[str, dict[str, Any]]:
    """Each component's ``LoraConfig`` fields from diffusers' ``lora_adapter_metadata`` JSON
    (``{"unet.r": 4, "unet.lora_alpha": 8, …}``); empty when the file has none."""
    raw = metadata.get(DIFFUSERS_METADATA_KEY)
    if not raw:
        return {}
    data = loads_json(raw, path=path, what=f"the {DIFFUSERS_METADATA_KEY!r} metadata", error=AdapterFormatError)
    if not isinstance(data, dict):
        raise AdapterFormatError(f"the {DIFFUSERS_METADATA_KEY!r} metadata is not a JSON object", path=path)
    out: dict[str, dict[str, Any]] = {}
    for key, value in data.items():
        comp, _, fld = str(key).partition(".")
        if fld:
            out.setdefault(comp, {})[fld] = value
        else:  # a single-component file saved without prefixes
            out.setdefault("", {})[comp] = value
    return out


def diffusers_scales(modules: list[LoraModule], metadata: Mapping[str, str], path: Any = None) -> ModuleScale:
    """r, α and s per module as diffusers' loader assigns them: from the component's config in
    the metadata (PEFT's pattern rules), else α = r (s = 1)."""
    from .adapter_config import AdapterConfig
    from .naming import resolve_rank_alpha

    configs = {comp: AdapterConfig.from_dict(d, path=path) for comp, d in diffusers_configs(metadata, path).items()}
    out = ModuleScale()
    for m in modules:
        comp, inner = diffusers_component(m.name.split("[")[0])
        cfg = configs.get(comp) or configs.get("")
        if cfg is None:
            r, alpha, rs = m.r, float(m.r), False
        else:
            r, alpha = resolve_rank_alpha(inner, cfg.r, cfg.lora_alpha, cfg.rank_pattern, cfg.alpha_pattern)
            rs = cfg.use_rslora
            if rs:
                out.rslora.add(m.name)
        denom = math.sqrt(r) if rs else float(r)
        out.r[m.name] = r
        out.alpha[m.name] = alpha
        out.scale[m.name] = alpha / denom if denom > 0 else 0.0
    return out
