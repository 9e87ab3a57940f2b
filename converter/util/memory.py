"""Giving memory back between runtimes, and measuring a process's peak."""
from __future__ import annotations

import gc


def release_memory() -> None:
    """Return freed heap to the system: glibc keeps freed arenas otherwise,
    and the next runtime's allocations would land beside them."""
    gc.collect()
    try:
        import ctypes
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def peak_rss_mb() -> float | None:
    """This process's own peak RSS (VmHWM, reset by exec). The parent's
    rusage would also count the parent's size at fork time, which is large
    when `convert` has run the export in-process first."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None

