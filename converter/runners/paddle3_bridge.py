"""The Paddle 3 toolchain's side: run by the isolated interpreter of `make setup`
(paddlepaddle 3.3.1, paddle2onnx 2.1.0, numpy 2), never imported by the project.

    python -I paddle3_bridge.py versions
    python -I paddle3_bridge.py convert MODEL.json PARAMS OUT.onnx OPSET
    python -I paddle3_bridge.py serve MODEL.json PARAMS THREADS

It imports only the standard library, numpy, paddle, paddle2onnx and two
dependency-free modules of this package (its paddle import and its
no-install guard). `serve` answers on stdout, which it keeps for itself
(anything a library prints goes to stderr): after a first JSON line (what it
runs), for each .npy array read from stdin, a JSON line naming the outputs
and then each output as .npy. An error is one line `error: ...` on stderr
and exit status 2.
"""
import json
import os
import sys


class BridgeError(Exception):
    pass


def write_npy(fp, array):
    """One array in .npy format onto a pipe (numpy's own writer seeks)."""
    import numpy as np

    array = np.ascontiguousarray(array)
    header = {"descr": np.lib.format.dtype_to_descr(array.dtype), "fortran_order": False, "shape": array.shape}
    np.lib.format.write_array_header_2_0(fp, header)
    fp.write(array.tobytes())


def read_npy(fp, max_bytes=1 << 32):
    """One .npy array from a pipe; None at its end."""
    import numpy as np

    if not fp.peek(1):
        return None
    version = np.lib.format.read_magic(fp)
    reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, fortran, dtype = reader(fp)
    size = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if fortran or dtype.hasobject or size > max_bytes:
        raise ValueError("an array this bridge does not take: %s %s" % (dtype, shape))
    data = fp.read(size)
    if len(data) != size:
        raise ValueError("an array cut short")
    return np.frombuffer(data, dtype).reshape(shape)


def _versions():
    import importlib.metadata as md

    return {name: md.version(name) for name in ("paddlepaddle", "paddle2onnx", "onnx", "numpy")}


class _Errors:
    """paddle2onnx logs its failure (logging.error) and then fails for lack of
    a result: the logged line says what went wrong."""

    def __init__(self):
        import logging

        self.lines = []
        handler = logging.Handler(logging.ERROR)
        handler.emit = lambda record: self.lines.append(record.getMessage())
        logging.getLogger().addHandler(handler)


def convert(model, params, out, opset):
    from converter.util.no_install import no_runtime_installs
    from converter.util.paddle_env import import_paddle

    import_paddle()
    errors = _Errors()
    with no_runtime_installs():
        import paddle2onnx

        try:
            # save_file=None: no optimiser runs (paddle2onnx's Polygraphy one sets
            # POLYGRAPHY_AUTOINSTALL_DEPS=1 itself, and its onnxoptimizer one names a
            # pass that does not exist); the project checks the graph itself
            raw = paddle2onnx.export(model, params, save_file=None, opset_version=int(opset),
                                     auto_upgrade_opset=False, verbose=False, enable_onnx_checker=True,
                                     enable_experimental_op=False, enable_optimize=True)
        except Exception as exc:
            said = [ln for ln in errors.lines if ln.strip()] or [str(exc) or type(exc).__name__]
            raise BridgeError("paddle2onnx %s failed: %s" % (paddle2onnx.__version__,
                                                             said[0].strip().splitlines()[0][:300]))
    if not raw:
        raise BridgeError("paddle2onnx %s returned no model" % paddle2onnx.__version__)
    with open(out, "wb") as fh:
        fh.write(raw)


def _predictor(model, params, threads):
    from converter.util.paddle_env import import_paddle

    import_paddle()
    import paddle.inference as pi

    config = pi.Config(model, params)
    config.disable_gpu()
    config.disable_glog_info()
    # Paddle 3.3.1's oneDNN path cannot run a PIR program's bilinear_interp
    # ("ConvertPirAttribute2RuntimeAttribute not support
    # ArrayAttribute<DoubleAttribute>"): its own CPU kernels do.
    config.disable_mkldnn()
    config.set_cpu_math_library_num_threads(int(threads))
    # no enable_memory_optim(): under 3.3.1 it fails on every PIR program
    # ("Expected map.count(predictor_id) && ...", pass_result_info.h:48)
    return pi.create_predictor(config)


def serve(model, params, threads):
    import numpy as np

    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)   # what a library prints goes to stderr: stdout carries answers only
    predictor = _predictor(model, params, threads)
    names = predictor.get_output_names()
    out.write((json.dumps({"outputs": names, "versions": _versions()}) + "\n").encode())
    out.flush()
    while True:
        x = read_npy(sys.stdin.buffer)
        if x is None:
            return
        handle = predictor.get_input_handle(predictor.get_input_names()[0])
        handle.reshape(list(x.shape))
        handle.copy_from_cpu(np.ascontiguousarray(x))
        predictor.run()
        out.write((json.dumps({"outputs": names}) + "\n").encode())
        for name in names:
            write_npy(out, predictor.get_output_handle(name).copy_to_cpu())
        out.flush()


def main(argv):
    commands = {"versions": (0, lambda: print(json.dumps(_versions()))), "convert": (4, convert),
                "serve": (3, serve)}
    if not argv or argv[0] not in commands or len(argv) - 1 != commands[argv[0]][0]:
        print("error: usage: paddle3_bridge.py versions | convert MODEL PARAMS OUT OPSET | serve MODEL PARAMS "
              "THREADS", file=sys.stderr)
        return 2
    try:
        commands[argv[0]][1](*argv[1:])
    except (BridgeError, OSError, RuntimeError, ValueError) as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        print("error: " + (lines[-1] if lines else type(exc).__name__)[:400], file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    # run by path, as a script: the package's parent goes first on its path
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    sys.exit(main(sys.argv[1:]))
