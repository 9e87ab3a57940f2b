"""Progress of a run over many images: a bar on a terminal, JSON lines otherwise."""
from __future__ import annotations

import json
import sys
import time
from typing import Callable


def progress_printer(what: str) -> Callable[[int, int, int, float | None], None]:
    """report(done, total, reused, eta): a tqdm bar with ETA when stderr is
    a terminal; else at most one JSON line a second (and the last one):
    {"event": "progress", "stage", "done", "total", "reused", "eta_seconds"}."""
    state = {"bar": None, "last": 0.0}

    def report(done, total, reused, eta):
        if sys.stderr.isatty():
            from tqdm import tqdm

            if state["bar"] is None:
                state["bar"] = tqdm(total=total, initial=done, unit="img", desc=what, file=sys.stderr)
            else:
                state["bar"].update(done - state["bar"].n)
            if done >= total:
                state["bar"].close()
            return
        now = time.monotonic()
        if done < total and now - state["last"] < 1.0 and done != reused:
            return
        state["last"] = now
        print(json.dumps({"event": "progress", "stage": what, "done": done, "total": total, "reused": reused,
                          "eta_seconds": None if eta is None else round(eta, 1)}), file=sys.stderr, flush=True)
    return report
