"""`gradience watch` (not built yet)."""

from ._unbuilt import unbuilt
from .main import COMMANDS

watch = unbuilt("watch", COMMANDS["watch"][2])
