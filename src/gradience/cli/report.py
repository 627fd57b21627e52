"""`gradience report` (not built yet)."""

from ._unbuilt import unbuilt
from .main import COMMANDS

report = unbuilt("report", COMMANDS["report"][2])
