"""Import paddle quietly and with sane threading.

paddle prints a multi-line OMP_NUM_THREADS warning on import whenever that
variable is above 1 (and otherwise forces it to 1, which halves dygraph speed
on two cores), and its C++ side logs at INFO level. Neither helps a user.
"""
import contextlib
import io
import os
import sys
import warnings


def import_paddle():
    if "paddle" in sys.modules:
        return sys.modules["paddle"]
    os.environ.setdefault("GLOG_minloglevel", "2")
    os.environ.setdefault("OMP_NUM_THREADS", str(min(os.cpu_count() or 2, 8)))
    # Only the import's own chatter is swallowed; real import errors still raise.
    with contextlib.redirect_stderr(io.StringIO()):
        import paddle
    warnings.filterwarnings("ignore", category=UserWarning, module=r"paddle\.")
    warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"paddle\.")
    paddle.set_device("cpu")
    return paddle
