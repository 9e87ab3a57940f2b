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


class ParityFailure(ConverterError):
    """Converted models disagree with the original beyond the config's gate."""
    exit_code = 10


class WorkerLost(StageError):
    """A worker process (or Ray actor) of the validate engine died."""


class HostError(ConverterError):
    """A call into a worker failed there; it carries the exit code of the
    worker's own error (a bad image is 2, a tampered model 8, ...)."""

    def __init__(self, message, exit_code=StageError.exit_code):
        super().__init__(message)
        self.exit_code = exit_code


class GuardMissed(ConverterError):
    """bench --engine: the engine missed a speed or memory guard."""
    exit_code = 12
