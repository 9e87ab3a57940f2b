"""Where the workers run: local worker processes, or Ray actors.

Both executors offer the engine the same calls:

    ex = Executor(specs)              # one worker per spec (engine.worker.Worker)
    h = ex.submit(i, method, *args)   # queue a call on worker i; calls to one worker run in order
    for handle, value in ex.wait(): ...   # blocks until at least one call finished
    ex.close()

A call that fails raises from wait() as WorkerCallFailed (the worker's own message
and exit code); a worker that dies raises WorkerLost, with `worker` (its
index) and `restarted` (whether the executor brings up a fresh one, so that
the engine may give it the lost chunk again). Local workers are not
restarted: a local worker dies of something that would kill it again (the
out-of-memory killer, a crash in a runtime), so the run ends with one line
and a rerun resumes. Ray restarts a dead actor (up to RETRIES times), as a
lost node is what a cluster is for.

worker_class is the Worker to build (default engine.worker.Worker); the engine's
fault-injection tests pass a subclass of their own. Nothing in the
environment changes it.
"""
import contextlib
import itertools
import multiprocessing
import os
import queue
import threading

from converter.errors import ConverterError, WorkerCallFailed, WorkerLost

RETRIES = 3


def _first_line(exc):
    if isinstance(exc, ConverterError):
        return str(exc)
    lines = [ln for ln in str(exc).splitlines() if ln.strip()]
    return f"{type(exc).__name__}: {(lines or [''])[0][:300]}"


def _lost(message, worker, restarted=False):
    exc = WorkerLost(message)
    exc.worker, exc.restarted = worker, restarted
    return exc


def worker_env(specs):
    """What a worker's environment must hold: its thread count."""
    return {"OMP_NUM_THREADS": str(specs[0]["threads"])} if specs else {}


@contextlib.contextmanager
def _environment(env):
    """os.environ with env set, for as long as a worker process is spawned:
    the new interpreter then has it from its first instruction, before
    numpy (imported to unpickle the worker class) starts its thread pool."""
    old = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for key, value in old.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def default_worker_class():
    from converter.engine.worker import Worker

    return Worker


def _serve(conn, spec, env, worker_class):
    """A local worker: build the worker, then answer calls until told to stop."""
    import signal

    # Ctrl-C reaches the whole process group: the driver handles it and
    # stops the workers; a worker interrupted mid-call would only add noise.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.environ.update(env)
    from converter.util.process import die_with_parent

    die_with_parent()   # at once: a driver killed meanwhile takes this worker along
    try:
        worker = worker_class(spec)
        conn.send(("ready", None, None))
    except BaseException as exc:  # the driver reports it as one line
        conn.send(("failed", None, _first_line(exc)))
        return
    while True:
        try:
            msg = conn.recv()
        except (EOFError, KeyboardInterrupt):
            return
        if msg is None:
            return
        call_id, method, args = msg
        try:
            conn.send(("ok", call_id, getattr(worker, method)(*args)))
        except KeyboardInterrupt:
            return
        except BaseException as exc:
            code = exc.exit_code if isinstance(exc, ConverterError) else 8
            conn.send(("error", call_id, (_first_line(exc), code)))


def _exit_text(code):
    import signal

    if code is not None and code < 0:
        name = signal.Signals(-code).name if -code in signal.Signals._value2member_map_ else str(-code)
        hint = " (out of memory?)" if -code == signal.SIGKILL else ""
        return f"killed by {name}{hint}"
    return f"exit {code}"


class LocalExecutor:
    """Workers in worker processes, each behind a pipe. Requests go out through
    one sender thread per worker, so that a large request and a reply
    crossing in one pipe cannot block both ends."""
    name = "local"

    def __init__(self, specs, worker_class=None):
        ctx = multiprocessing.get_context("spawn")   # no fork of a driver that may hold threads
        self.conns, self.procs, self.pending = [], [], {}
        self.outboxes, self.senders = [], []
        self.ids = itertools.count()
        env, worker_class = worker_env(specs), worker_class or default_worker_class()
        try:
            for spec in specs:
                parent, child = ctx.Pipe()
                proc = ctx.Process(target=_serve, args=(child, spec, env, worker_class), daemon=True)
                with _environment(env):
                    proc.start()
                child.close()
                self.conns.append(parent)
                self.procs.append(proc)
            for i in range(len(self.conns)):
                kind, _, value = self._recv(i)
                if kind != "ready":
                    raise WorkerCallFailed(f"worker {i}: {value}")
                self.outboxes.append(queue.Queue())
                self.senders.append(threading.Thread(target=self._send_loop, args=(i,), daemon=True))
                self.senders[-1].start()
        except BaseException:
            self.close(kill=True)
            raise

    def _recv(self, i):
        try:
            return self.conns[i].recv()
        except (EOFError, OSError):
            self.procs[i].join(timeout=5)
            raise _lost(f"local worker {i} died ({_exit_text(self.procs[i].exitcode)})", i) from None

    def _send_loop(self, i):
        while True:
            msg = self.outboxes[i].get()
            if msg is None:
                return
            try:
                self.conns[i].send(msg)
            except (BrokenPipeError, OSError):
                return   # the worker is gone: wait() reports it when reading its pipe

    def submit(self, i, method, *args):
        if not self.procs[i].is_alive():
            raise _lost(f"local worker {i} died ({_exit_text(self.procs[i].exitcode)})", i)
        call_id = next(self.ids)
        self.outboxes[i].put((call_id, method, args))
        self.pending[call_id] = i
        return call_id

    def wait(self):
        from multiprocessing.connection import wait

        busy = {self.conns[i] for i in self.pending.values()}
        done = []
        for conn in wait(list(busy)):
            i = self.conns.index(conn)
            kind, call_id, value = self._recv(i)
            self.pending.pop(call_id, None)
            if kind == "error":
                raise WorkerCallFailed(value[0], value[1])
            done.append((call_id, value))
        return done

    def forget(self, handles):
        for h in handles:
            self.pending.pop(h, None)

    def close(self, kill=False):
        """Stop the workers: after their queued calls, or (kill: the run was
        interrupted or failed) at once."""
        if kill:
            for proc in self.procs:
                proc.kill()
        for outbox in self.outboxes:
            outbox.put(None)    # after what is queued: the worker then stops
        for sender in self.senders:
            sender.join(timeout=10)
        for conn in self.conns:
            try:
                conn.send(None)
            except (BrokenPipeError, OSError):
                pass
        for proc in self.procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()
                proc.join()
        for conn in self.conns:
            conn.close()
        self.conns, self.procs = [], []


class RayExecutor:
    """Workers as Ray actors. Without an address, a local Ray instance is
    started for the run (num_cpus: this machine's cores) and stopped after;
    with one, the run joins that cluster and leaves it running. An actor
    that dies is restarted by Ray (RETRIES times at most); its calls then
    fail with WorkerLost(restarted=True) and the engine redoes its chunk."""
    name = "ray"

    def __init__(self, specs, address=None, worker_class=None):
        import logging

        from converter.engine.ray_address import check_ray_address, enable_token_auth

        if address:
            check_ray_address(address)
            enable_token_auth()   # before ray is imported: it reads this at import
        try:
            import ray
        except ImportError:
            raise ConverterError("the ray executor needs ray (pip install ray==2.60.0)") from None
        self.ray, self.actors, self.pending = ray, [], {}
        self.restarts = [0] * len(specs)
        try:
            if address:
                ray.init(address=address, logging_level=logging.ERROR, log_to_driver=False,
                         configure_logging=True)
            else:
                ray.init(num_cpus=os.cpu_count() or 2, include_dashboard=False, logging_level=logging.ERROR,
                         log_to_driver=False, configure_logging=True)
        except ConverterError:
            raise
        except Exception as exc:
            raise ConverterError(f"cannot {'join the Ray cluster at ' + address if address else 'start Ray'}: "
                                 f"{_first_line(exc)}") from None
        need = sum(spec["threads"] for spec in specs)
        have = ray.cluster_resources().get("CPU", 0)
        if need > have:
            self.close()
            raise ConverterError(f"{len(specs)} worker(s) x {specs[0]['threads']} thread(s) need {need} CPUs; "
                                 f"the Ray cluster has {have:g}")
        try:
            cls = ray.remote(_RayHost)
            env, worker_class = worker_env(specs), worker_class or default_worker_class()
            self.actors = [cls.options(num_cpus=spec["threads"], max_restarts=RETRIES, max_task_retries=0)
                           .remote(spec, env, worker_class) for spec in specs]
            ray.get([a.ready.remote() for a in self.actors])
        except BaseException as exc:
            self.close()
            if isinstance(exc, (KeyboardInterrupt, ConverterError)):
                raise
            raise ConverterError(f"cannot start the Ray workers: {_first_line(exc)}") from None

    def submit(self, i, method, *args):
        ref = getattr(self.actors[i], method).remote(*args)
        self.pending[ref] = i
        return ref

    def wait(self):
        ready, _ = self.ray.wait(list(self.pending), num_returns=1)
        done = []
        for ref in ready:
            i = self.pending.pop(ref)
            try:
                done.append((ref, self.ray.get(ref)))
            except self.ray.exceptions.RayActorError as exc:
                self.restarts[i] += 1
                raise _lost(f"Ray worker {i} was lost: {_first_line(exc)}", i,
                            restarted=self.restarts[i] <= RETRIES) from None
            except self.ray.exceptions.RayTaskError as exc:
                cause = exc.cause if getattr(exc, "cause", None) is not None else exc
                raise WorkerCallFailed(_first_line(cause), getattr(cause, "exit_code", 8)) from None
        return done

    def forget(self, handles):
        for h in handles:
            self.pending.pop(h, None)

    def close(self, kill=False):
        for actor in self.actors:
            try:
                self.ray.kill(actor)
            except Exception:
                pass
        self.actors = []
        if self.ray.is_initialized():
            self.ray.shutdown()


class _RayHost:
    """A Worker as a Ray actor (wrapped by ray.remote): the same calls."""

    def __init__(self, spec, env, worker_class):
        os.environ.update(env)
        self.worker = worker_class(spec)

    def ready(self):
        return True

    def describe(self):
        return self.worker.describe()

    def load(self, name):
        return self.worker.load(name)

    def begin(self, slot, item):
        return self.worker.begin(slot, item)

    def reference(self, slot):
        return self.worker.reference(slot)

    def compare(self, slot):
        return self.worker.compare(slot)

    def end(self, slot):
        return self.worker.end(slot)
