"""Policy: conservative, testable recommendations before (``check``) and after (``monitor``) a run.

Rules are small pure functions over a ConfigSnapshot (``rules_check``) or a
SignalSnapshot (``rules_run``); ``engine`` dedupes and orders their output.
"""

from ..telemetry.schema import Recommendation, Severity, TaskProfile
from .config_parse import load_config
from .engine import INFORMATIONAL_ACTIONS, check_config, finalize, is_actionable, run_recommendations
from .profiles import infer_task_profile, resolve_profile
from .rules_run import generalisation_summary
from .targets import classify_target, summarize_targets

__all__ = [
    "INFORMATIONAL_ACTIONS",
    "Recommendation",
    "Severity",
    "TaskProfile",
    "check_config",
    "classify_target",
    "finalize",
    "generalisation_summary",
    "infer_task_profile",
    "is_actionable",
    "load_config",
    "resolve_profile",
    "run_recommendations",
    "summarize_targets",
]
