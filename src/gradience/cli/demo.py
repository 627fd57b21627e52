"""`gradience demo` (not built yet)."""

from ._unbuilt import unbuilt
from .main import COMMANDS

demo = unbuilt("demo", COMMANDS["demo"][2])
