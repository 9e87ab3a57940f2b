"""Typed errors. The CLI turns each into one line on stderr and its exit code."""


class ConverterError(Exception):
    """A user-facing failure: bad input, missing file, no network..."""
    exit_code = 2


class ConfigError(ConverterError):
    exit_code = 3


class FetchError(ConverterError):
    exit_code = 4


class ChecksumError(FetchError):
    exit_code = 5


class CheckpointError(ConverterError):
    """A checkpoint that does not fit the model, or is unsafe to load."""
    exit_code = 6


class UnsafeCheckpointError(CheckpointError):
    exit_code = 7


class StageError(ConverterError):
    """A conversion tool failed, or an input artifact is missing."""
    exit_code = 8


class DiskFullError(StageError):
    """No space left while writing an artifact (nothing is left at a final path)."""
    exit_code = 11


class StaleBuild(StageError):
    """A build whose own files are intact but which was made from inputs
    that have changed since (an INT8 IR of an FP32 IR rebuilt since)."""


class RuntimeInstallBlocked(StageError):
    """A converter tried to install packages while running (util.no_install)."""
    exit_code = 9


class InputRefused(ConverterError):
    """A file that util.fsutil.read_limited will not read (too large, a FIFO,
    a folder); the message says why and the reader adds the path."""


class GateFailure(ConverterError):
    """A gate that fails the build: the CLI prints it as the verdict,
    `FAILED: ...` on stdout, where a passed gate prints `PASSED`."""


class ParityFailure(GateFailure):
    """Converted models disagree with the original beyond the config's gate."""
    exit_code = 10


class GateNotPassed(ConverterError):
    """A build whose parity gate failed or was not run, where a gated build is
    needed (package); an error line, not a verdict."""
    exit_code = ParityFailure.exit_code


class WorkerLost(StageError):
    """A worker process (or Ray actor) of the validate engine died."""


class WorkerCallFailed(ConverterError):
    """A call into a worker failed there; it carries the exit code of the
    worker's own error (a bad image is 2, a tampered model 8, ...)."""

    def __init__(self, message, exit_code=StageError.exit_code):
        super().__init__(message)
        self.exit_code = exit_code


class GuardMissed(GateFailure):
    """bench --engine: the engine missed a speed or memory guard."""
    exit_code = 12
