"""Import paddle quietly, with sane threading, and without its signal handlers.

paddle prints a multi-line OMP_NUM_THREADS warning on import whenever that
variable is above 1 (and otherwise forces it to 1, which halves dygraph speed
on two cores), and its C++ side logs at INFO level. Neither helps a user.

Importing paddle also installs C++ handlers (paddle::framework::SignalHandle)
for SIGTERM, SIGSEGV, SIGILL, SIGFPE, SIGABRT and SIGBUS over the process's
own. Its SIGTERM handler prints a "C++ Traceback ... FatalError" to stdout and
kills the process by the signal (returncode -15, no cleanup), and as it
allocates inside the handler, a SIGTERM that lands while Paddle allocates
(building a predictor) deadlocked the process in malloc. So the import runs
with SIGTERM and SIGINT held off, paddle.disable_signal_handler() puts the
defaults back, and the Python handlers that were installed before the import
are installed again; a signal that came meanwhile is delivered after that,
to them. The handlers are installed during the import (core.init_glog), so
a process whose other threads could take the signal then should import
paddle first, while it has no other thread (cli.main does).
"""
from __future__ import annotations

import contextlib
import io
import os
import signal
import sys
import threading
import warnings
from typing import Any

_HELD = (signal.SIGTERM, signal.SIGINT)


def import_paddle() -> Any:
    if "paddle" in sys.modules:
        return sys.modules["paddle"]
    os.environ.setdefault("GLOG_minloglevel", "2")
    os.environ.setdefault("OMP_NUM_THREADS", str(min(os.cpu_count() or 2, 8)))
    with _own_signal_handlers():
        # Only the import's own chatter is swallowed; real import errors still raise.
        with contextlib.redirect_stderr(io.StringIO()):
            import paddle
        paddle.disable_signal_handler()
    warnings.filterwarnings("ignore", category=UserWarning, module=r"paddle\.")
    warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"paddle\.")
    paddle.set_device("cpu")
    return paddle


@contextlib.contextmanager
def _own_signal_handlers():
    """SIGTERM and SIGINT held off while paddle is imported, then given back
    their Python handlers (and delivered, if one came meanwhile).

    Blocking covers this thread; a signal that another thread (a runtime's
    pool) takes while it is blocked here would still run the Python handler
    in the middle of the import, where paddle turns its exception into
    "ImportError: initialization failed": a handler that only notes the
    signal stands in until the import is done."""
    if threading.current_thread() is not threading.main_thread():
        yield   # only the main thread can set handlers
        return
    handlers = {sig: signal.getsignal(sig) for sig in _HELD}
    came = []
    for sig in _HELD:
        signal.signal(sig, lambda signum, frame: came.append(signum))
    previous_mask = signal.pthread_sigmask(signal.SIG_BLOCK, _HELD)
    try:
        yield
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, previous_mask)
        for sig in dict.fromkeys(came):
            signal.raise_signal(sig)
