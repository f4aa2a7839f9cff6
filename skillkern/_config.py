"""Run-time switches (also settable by environment variables; see README "Environment")."""
from __future__ import annotations

import os

_check_ids = os.environ.get("SKILLKERN_CHECK_IDS", "1") != "0"


def set_check_ids(enabled: bool) -> None:
    """Turn the range check of routing ids (skill_ids) on or off.

    On a GPU the check reads one bool back to the host (a sync per call). With it off,
    ids outside [-1, E) are treated as empty slots (-1) by every backend: no crash, no
    out-of-bounds access, but such a token silently gets no skill - turn it off only for
    production runs whose routing is known to be valid. Env: SKILLKERN_CHECK_IDS=0.
    """
    global _check_ids
    _check_ids = bool(enabled)


def check_ids_enabled() -> bool:
    return _check_ids
