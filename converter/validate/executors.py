"""Where the hosts run: local worker processes, or Ray actors.

Both executors offer the same four calls to the engine:

    ex = Executor(specs)               # one host per spec, each loads its backends once
    h = ex.submit(i, method, *args)    # call host i; args may hold handles of earlier calls
    small, big = ex.submit2(i, ...)    # a call returning (small, big): only small is waited for
    for handle, value in ex.wait(): ...  # blocks until at least one call finished
    ex.close()

A host call that fails raises from wait() as HostError (the host's own
exception text); a worker that dies raises WorkerLost. The Ray executor lets
Ray restart a dead actor and retry its call (max_restarts, max_task_retries),
so a worker lost there costs a reload, not the run.
"""
import itertools
import multiprocessing
import os
import queue
import threading

from converter.errors import ConverterError


class HostError(ConverterError):
    """A host call failed; carries the exit code of the host's own error."""
    exit_code = 8

    def __init__(self, message, exit_code=8):
        super().__init__(message)
        self.exit_code = exit_code


class WorkerLost(ConverterError):
    exit_code = 8


def _first_line(exc):
    from converter.errors import ConverterError as Known

    if isinstance(exc, Known):
        return str(exc)
    lines = [ln for ln in str(exc).splitlines() if ln.strip()]
    return f"{type(exc).__name__}: {(lines or [''])[0][:300]}"


def worker_env(specs):
    """What a worker's environment must hold: its thread count, and the
    tests' fault injection when set (converter.validate.host.CRASH_ONCE_ENV)."""
    from converter.validate.host import CRASH_ONCE_ENV

    env = {"OMP_NUM_THREADS": str(specs[0]["threads"])} if specs else {}
    if os.environ.get(CRASH_ONCE_ENV):
        env[CRASH_ONCE_ENV] = os.environ[CRASH_ONCE_ENV]
    return env


def _serve(conn, spec, env):
    """A local worker: build the host, then answer calls until told to stop."""
    import signal

    # Ctrl-C reaches the whole process group: the driver handles it and
    # stops the workers; a worker interrupted mid-call would only add noise.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.environ.update(env)
    from converter.validate.host import Host, _die_with_parent

    _die_with_parent()   # before the models load: a driver killed meanwhile takes this worker along

    try:
        host = Host(spec)
        conn.send(("ready", None, host.describe()))
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
            conn.send(("ok", call_id, getattr(host, method)(*args)))
        except KeyboardInterrupt:
            return
        except BaseException as exc:
            code = exc.exit_code if isinstance(exc, ConverterError) else 8
            conn.send(("error", call_id, (_first_line(exc), code)))


class _Big:
    """The second value of a local submit2, filled when its call returns."""
    value = None


class LocalExecutor:
    """Hosts in worker processes, each behind a pipe. Requests go out through
    one sender thread per worker: a request (an image and the reference's
    logits, megabytes) and a reply crossing in one pipe would otherwise
    block both ends, each waiting for the other to read."""
    name = "local"

    def __init__(self, specs):
        ctx = multiprocessing.get_context("spawn")   # no fork of a driver that may hold threads
        self.conns, self.procs, self.pending, self.info = [], [], {}, []
        self.outboxes, self.senders = [], []
        self.ids = itertools.count()
        env = worker_env(specs)
        try:
            for spec in specs:
                parent, child = ctx.Pipe()
                proc = ctx.Process(target=_serve, args=(child, spec, env), daemon=True)
                proc.start()
                child.close()
                self.conns.append(parent)
                self.procs.append(proc)
            for i, conn in enumerate(self.conns):
                kind, _, value = self._recv(i)
                if kind != "ready":
                    raise HostError(f"worker {i}: {value}")
                self.info.append(value)
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
            raise WorkerLost(f"local worker {i} died (exit {self.procs[i].exitcode})") from None

    def _resolve(self, arg):
        return arg.value if isinstance(arg, _Big) else arg

    def _send_loop(self, i):
        while True:
            msg = self.outboxes[i].get()
            if msg is None:
                return
            try:
                self.conns[i].send(msg)
            except (BrokenPipeError, OSError):
                return   # the worker is gone: wait() reports it when reading its pipe

    def submit(self, i, method, *args, split=False):
        call_id = next(self.ids)
        if not self.procs[i].is_alive():
            raise WorkerLost(f"local worker {i} died (exit {self.procs[i].exitcode})")
        self.outboxes[i].put((call_id, method, tuple(self._resolve(a) for a in args)))
        big = _Big() if split else None
        self.pending[call_id] = (i, big)
        return (call_id, big) if split else call_id

    def submit2(self, i, method, *args):
        return self.submit(i, method, *args, split=True)

    def wait(self):
        from multiprocessing.connection import wait

        busy = {self.conns[i] for i, _ in self.pending.values()}
        done = []
        for conn in wait(list(busy)):
            i = self.conns.index(conn)
            kind, call_id, value = self._recv(i)
            _, big = self.pending.pop(call_id)
            if kind == "error":
                raise HostError(value[0], value[1])
            if big is not None:
                value, big.value = value
            done.append((call_id, value))
        return done

    def release(self, big):
        big.value = None

    def share(self, obj):
        return obj

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


def check_reachable(address, timeout=5.0):
    """HOST:PORT must accept a TCP connection: ray.init(address=...) would
    otherwise retry an unreachable head for minutes, logging as it goes."""
    import socket

    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConverterError(f"--ray-address {address!r}: expected HOST:PORT")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            pass
    except OSError as exc:
        raise ConverterError(f"cannot reach the Ray cluster at {address}: "
                             f"{exc.strerror or type(exc).__name__}") from None


class RayExecutor:
    """Hosts as Ray actors. Without an address, a local Ray instance is
    started for the run (num_cpus: this machine's cores) and stopped after;
    with one, the run joins that cluster and leaves it running. An actor
    that dies is restarted by Ray (its backends reloaded) and its call
    retried, up to RETRIES times."""
    name = "ray"
    RETRIES = 3

    def __init__(self, specs, address=None):
        import logging

        if address:
            check_reachable(address)
        if address and "RAY_AUTH_MODE" not in os.environ and (
                os.environ.get("RAY_AUTH_TOKEN") or os.path.isfile(os.path.expanduser("~/.ray/auth_token"))):
            # `ray start` turns token auth on when it finds a token; a driver
            # joining by address does not, and is then refused: do as ray
            # start does (before ray is imported: it reads this at import)
            os.environ["RAY_AUTH_MODE"] = "token"
        try:
            import ray
        except ImportError:
            raise ConverterError("the ray executor needs ray (pip install ray==2.60.0)") from None
        self.ray, self.owned, self.actors, self.pending, self.info = ray, False, [], {}, []
        try:
            if address:
                ray.init(address=address, logging_level=logging.ERROR, log_to_driver=False,
                         configure_logging=True)
            else:
                ray.init(num_cpus=os.cpu_count() or 2, include_dashboard=False, logging_level=logging.ERROR,
                         log_to_driver=False, configure_logging=True)
                self.owned = True
        except ConverterError:
            raise
        except Exception as exc:
            raise ConverterError(f"cannot {'join the Ray cluster at ' + address if address else 'start Ray'}: "
                                 f"{_first_line(exc)}") from None
        try:
            cls = ray.remote(_RayHost)
            env = worker_env(specs)
            self.actors = [cls.options(num_cpus=spec["threads"], max_restarts=self.RETRIES,
                                       max_task_retries=self.RETRIES).remote(spec, env) for spec in specs]
            self.info = self._get([a.describe.remote() for a in self.actors])
        except BaseException:
            self.close()
            raise

    def _get(self, refs):
        try:
            return self.ray.get(refs)
        except self.ray.exceptions.RayActorError as exc:
            raise WorkerLost(f"a Ray worker was lost for good: {_first_line(exc)}") from None
        except self.ray.exceptions.RayTaskError as exc:
            cause = exc.cause if getattr(exc, "cause", None) is not None else exc
            raise HostError(_first_line(cause), getattr(cause, "exit_code", 8)) from None

    def submit(self, i, method, *args):
        ref = getattr(self.actors[i], method).remote(*args)
        self.pending[ref] = i
        return ref

    def submit2(self, i, method, *args):
        small, big = getattr(self.actors[i], method).options(num_returns=2).remote(*args)
        self.pending[small] = i
        return small, big

    def wait(self):
        ready, _ = self.ray.wait(list(self.pending), num_returns=1)
        done = []
        for ref in ready:
            self.pending.pop(ref)
            done.append((ref, self._get(ref)))
        return done

    def release(self, big):
        pass  # dropping the last reference frees it in the object store

    def share(self, obj):
        """One copy in the object store for every actor the image goes to."""
        return self.ray.put(obj)

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
    """converter.validate.host.Host as a Ray actor (wrapped by ray.remote)."""

    def __init__(self, spec, env):
        os.environ.update(env)
        from converter.validate.host import Host

        self.host = Host(spec)

    def describe(self):
        return self.host.describe()

    def reference(self, item, name):
        return self.host.reference(item, name)

    def compare(self, item, ref, names):
        return self.host.compare(item, ref, names)
