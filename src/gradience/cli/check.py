"""`gradience check` (not built yet)."""

from ._unbuilt import unbuilt
from .main import COMMANDS

check = unbuilt("check", COMMANDS["check"][2])
