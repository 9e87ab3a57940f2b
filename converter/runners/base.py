"""The one interface every runtime's runner has."""
from __future__ import annotations

import numpy as np

class Runner:
    """A model loaded for inference, set up in the constructor.

        runner = SomeRunner(model_path, threads=2, logits=False, **options)
        outputs = runner.infer(x)   # {output name: ndarray}; "logits" too when asked
        runner.info                 # what it actually runs with (threads, precision, ...)

    logits=True also returns the input of the model's ArgMax as "logits",
    added in memory (or in a temporary copy of the program): the model file
    itself is never changed.
    """
    runtime = ""
    info: dict   # what it runs with: threads, precision, ...

    def __init__(self, model_path: str, threads: int = 2, logits: bool = False):
        self.model_path = model_path
        self.threads = threads
        self.info = {"threads": threads}

    def infer(self, x: np.ndarray) -> dict[str, np.ndarray]:
        raise NotImplementedError
