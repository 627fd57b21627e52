"""`gradience audit` (not built yet)."""

from ._unbuilt import unbuilt
from .main import COMMANDS

audit = unbuilt("audit", COMMANDS["audit"][2])
