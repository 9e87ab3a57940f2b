"""Run by the Paddle 3 toolchain's interpreter: paddle2onnx 2.x with its
Polygraphy optimiser (which pip-installs what it misses), inside the
project's no-install guard. Prints what it tried to start, as JSON.

    python -I tests/paddle3_guard.py MODEL_DIR OUT.onnx
"""
import importlib.util
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
tried, passed = [], []


def _noting(into):
    def hook(event, args):
        if event == "subprocess.Popen":
            argv = args[1] if isinstance(args[1], (list, tuple)) else [args[1]]
            into.append(" ".join(map(str, argv)))
    return hook


# audit hooks run in the order they were added, and one that raises stops the
# rest: the first sees every attempt, the last only those the guard let through
sys.addaudithook(_noting(tried))
from converter.util.no_install import no_runtime_installs  # noqa: E402
from converter.util.paddle_env import import_paddle  # noqa: E402

with no_runtime_installs():
    pass   # installs the guard's hook
sys.addaudithook(_noting(passed))
import_paddle()
import paddle2onnx  # noqa: E402

with no_runtime_installs():
    paddle2onnx.export(os.path.join(sys.argv[1], "model.json"), os.path.join(sys.argv[1], "model.pdiparams"),
                       save_file=sys.argv[2], opset_version=13, optimize_tool="polygraphy")
print(json.dumps({"tried": tried, "passed": passed, "installed": [m for m in ("onnx_graphsurgeon", "onnxruntime")
                                                     if importlib.util.find_spec(m)]}))
