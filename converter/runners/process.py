"""Run a backend in a worker process (converter.runners.worker) and collect
its result, its wall time and its own peak RSS."""
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

from converter.errors import StageError


def _peak_rss_mb(rusage):
    return round(rusage.ru_maxrss / 1024, 1)  # Linux reports KiB


def _die_with_parent():
    """In the worker, before exec: Linux sends it SIGKILL when the parent
    dies, even by SIGKILL, so no 3 GB worker outlives an interrupted run."""
    try:
        import ctypes
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def run_spec(spec, name):
    """Run one worker; return its JSON line plus wall time and the
    child's own peak RSS (VmHWM from the worker; wait4's rusage where /proc is absent).
    An interrupt (SIGINT, or SIGTERM turned into one by the CLI) terminates
    and reaps the worker before it propagates."""
    spec_path = os.path.join(spec["out"], "spec.json")
    with open(spec_path, "w") as fh:
        json.dump(spec, fh)
    env = dict(os.environ, OMP_NUM_THREADS=str(spec["threads"]))
    start = time.perf_counter()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen([sys.executable, "-m", "converter.runners.worker", spec_path],
                                stdout=out, stderr=err, env=env,
                                preexec_fn=_die_with_parent if sys.platform == "linux" else None)
        try:
            _, status, rusage = os.wait4(proc.pid, 0)
        except BaseException:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            raise
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - start
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(errors="replace"), err.read().decode(errors="replace")
    if proc.returncode != 0:
        tail = stderr.strip().splitlines()[-1:] or ["(no output)"]
        raise StageError(f"{name} backend failed (exit {proc.returncode}): {tail[0][:200]}")
    try:
        result = json.loads(stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        raise StageError(f"{name} backend printed no result") from None
    result.update(wall_seconds=round(wall, 1), peak_rss_mb=result.get("peak_rss_mb") or _peak_rss_mb(rusage))
    return result


def run_worker(backend, workdir, config, inputs, out, threads, logits=False, save=False, repeat=1, options=None):
    """backend (a backends.Backend) on the inputs (npy of uint8 RGB) in its own process."""
    from converter.data.images import input_contract

    spec = {"runtime": backend.runtime, "model": backend.model_path(workdir, config), "precision": backend.precision,
            "threads": threads, "logits": logits, "options": options or {},
            "contract": input_contract(config, backend.side), "output": backend.output_name(config),
            "inputs": list(inputs), "repeat": repeat, "save": save, "out": out}
    return run_spec(spec, backend.name)
