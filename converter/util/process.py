"""Child processes that do not outlive the process that started them."""
from __future__ import annotations


def die_with_parent() -> None:
    """Linux: SIGKILL this worker when the driver dies, even by SIGKILL."""
    try:
        import ctypes
        import signal
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
