"""`gradience bench` (not built yet)."""

from ._unbuilt import unbuilt
from .main import COMMANDS

bench = unbuilt("bench", COMMANDS["bench"][2])
