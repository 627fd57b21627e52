"""`gradience compress` (not built yet)."""

from ._unbuilt import unbuilt
from .main import COMMANDS

compress = unbuilt("compress", COMMANDS["compress"][2])
