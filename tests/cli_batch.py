"""Run many command lines through the real CLI entry point (converter.cli.main)
in one process, for the corpus tests: one process start and one paddle
import instead of one per case.

    python -m tests.cli_batch < argvs.json   ->   [{"code", "stderr"}, ...] on stdout

An exception that escapes main() is recorded with its traceback (the test
fails on it); a crash of the process fails the test as a whole."""
import contextlib
import io
import json
import sys
import traceback


def run(argvs):
    from converter.cli import main

    results = []
    for argv in argvs:
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            try:
                code = main(argv)
            except SystemExit as exc:
                code = exc.code
            except BaseException:   # what a user would see as a traceback
                code = None
                err.write(traceback.format_exc())
        results.append({"code": code, "stderr": err.getvalue()})
    return results


if __name__ == "__main__":
    json.dump(run(json.load(sys.stdin)), sys.stdout)
