"""The base-norms cache: σ₁ and ‖·‖_F of base tensors on disk, so a base is measured once.

One JSON file per weights fingerprint (:meth:`.base_model.BaseWeights.fingerprint`) under the
cache directory, holding per tensor ``sigma_max``, ``fro_norm`` and ``converged``. A file
written with another σ₁ tolerance, or a damaged one, is ignored and rebuilt.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..bounded import read_json
from ..errors import GradienceError
from .lanczos import SIGMA1_TOL

__all__ = ["NormCache"]


class NormCache:
    """Base-weight norms on disk, one file per weights fingerprint. ``owner`` (the base model's
    directory) is recorded so that saving drops the files of the same directory's earlier,
    superseded weights instead of letting them pile up."""

    def __init__(self, cache_dir: str | os.PathLike[str] | None, key: str, owner: str = "") -> None:
        self.path = Path(cache_dir) / f"base_norms_{key}.json" if cache_dir is not None else None
        self.owner = owner
        self.data: dict[str, dict[str, Any]] = {}
        self.dirty = False
        if self.path is not None and self.path.exists():
            try:
                loaded = read_json(self.path, what="base-norms cache")
                if isinstance(loaded, dict) and loaded.get("tol") == SIGMA1_TOL:
                    self.data = dict(loaded.get("tensors", {}))
            except (GradienceError, ValueError, TypeError):
                self.data = {}  # a damaged cache is rebuilt, never trusted

    def save(self) -> None:
        if self.path is None or not self.dirty:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps({"tol": SIGMA1_TOL, "owner": self.owner, "tensors": self.data}))
            os.replace(tmp, self.path)
        except OSError as exc:
            raise GradienceError(f"cannot write base-norms cache: {exc.strerror}", path=self.path) from None
        if self.owner:
            self._drop_superseded()

    def _drop_superseded(self) -> None:
        assert self.path is not None
        for old in self.path.parent.glob("base_norms_*.json"):
            if old == self.path:
                continue
            try:
                if read_json(old, what="base-norms cache").get("owner") == self.owner:
                    old.unlink()
            except (GradienceError, OSError, AttributeError):
                continue  # not ours to judge: leave it
