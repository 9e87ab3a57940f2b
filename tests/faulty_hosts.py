"""Engine hosts that fail on purpose, for the fault tests: part of the test
suite, not of the installed tool (the engine takes a host class only from
code that calls it, never from the environment)."""
import os

from converter.engine.worker import Worker

MARKER = "FAULTY_HOST_MARKER"   # read by these test hosts only


class CrashOnce(Worker):
    """Its first compare() kills its own process, once per marker file: the
    marker records the pid that died."""

    def compare(self, slot):
        marker = os.environ[MARKER]
        if not os.path.exists(marker):
            with open(marker, "w") as fh:
                fh.write(str(os.getpid()))
            os._exit(17)
        return super().compare(slot)


def main(workdir, data, out, executor):
    """validate --cityscapes data --limit 2 on a lite build with CrashOnce hosts; prints the
    error line and exits with its code as the command line does."""
    import sys

    from converter.commands.validate import run_validate
    from converter.errors import ConverterError
    from converter.engine.scheduler import EngineOptions
    from tests.support import lite_config

    try:
        run_validate(lite_config(), workdir, out, cityscapes=data, limit=2,
                     options=EngineOptions(executor=executor, chunk=1),
                     backends=["onnxruntime", "openvino-fp32-f32", "openvino-fp16-default"], worker_class=CrashOnce)
    except ConverterError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main(*sys.argv[1:5]))
