"""`gradience monitor` (not built yet)."""

from ._unbuilt import unbuilt
from .main import COMMANDS

monitor = unbuilt("monitor", COMMANDS["monitor"][2])
