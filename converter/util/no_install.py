"""Guarantee that converting never installs or fetches packages at run time.

Some converter stacks (paddle2onnx via polygraphy's auto-install) may call pip
when they miss a package. Inside `no_runtime_installs()`, the environment
switches those mechanisms off, and a Python audit hook refuses any attempt to
start pip or another package installer, in this process, with RuntimeInstallBlocked.
"""
from __future__ import annotations

import contextlib
import os
import sys
from typing import Iterator

from converter.errors import RuntimeInstallBlocked

_INSTALLERS = ("pip", "pip3", "ensurepip", "conda", "mamba", "uv", "easy_install")
_ENV = {
    "POLYGRAPHY_AUTOINSTALL_DEPS": "0",  # polygraphy: never pip-install missing modules
    "PIP_NO_INDEX": "1",                 # any pip that does start finds no index
    "PIP_DISABLE_PIP_VERSION_CHECK": "1",
}
_active = [False]
_installed = [False]


def _looks_like_installer(argv):
    words = [os.path.basename(str(a)).lower() for a in argv]
    for i, word in enumerate(words):
        stem = word.split(".")[0]
        if stem in _INSTALLERS or word.startswith("pip3."):
            return True
        if word == "-m" and i + 1 < len(words) and words[i + 1].split(".")[0] in _INSTALLERS:
            return True
    return False


def _hook(event, args):
    if not _active[0]:
        return
    argv = None
    if event == "subprocess.Popen":
        argv = args[1] if isinstance(args[1], (list, tuple)) else str(args[1]).split()
        argv = [args[0], *argv] if args[0] else argv
    elif event == "os.system":
        command = args[0]
        argv = (command.decode(errors="replace") if isinstance(command, bytes) else str(command)).split()
    elif event in ("os.exec", "os.posix_spawn", "os.spawn"):
        argv = [args[0], *(args[1] or [])]
    elif event == "import" and args[0] in ("pip", "pip._internal"):
        argv = ["pip"]
    if argv and _looks_like_installer(argv):
        raise RuntimeInstallBlocked(
            "a converter tried to install packages at run time (" + " ".join(map(str, argv))[:120]
            + "); refused: install everything with `make setup`")


@contextlib.contextmanager
def no_runtime_installs() -> Iterator[None]:
    if not _installed[0]:
        sys.addaudithook(_hook)  # audit hooks cannot be removed; _active gates it
        _installed[0] = True
    saved = {k: os.environ.get(k) for k in _ENV}
    os.environ.update(_ENV)
    _active[0] = True
    try:
        yield
    finally:
        _active[0] = False
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
