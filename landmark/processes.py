"""Whether a process on this machine still runs: the team stack's services, a study's workers."""

from __future__ import annotations

import os
from pathlib import Path


def alive(pid: int) -> bool:
    """Is `pid` a live process of any user (a zombie, exited but not yet reaped, is not)?"""
    try:
        status = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    except OSError:  # no /proc (macOS): ask the kernel; another user's process exists too
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    return status.rsplit(")", 1)[1].split()[0] != "Z"
