"""Tiny logging helpers: progress to stderr, one prefix per stage."""
import sys
import time


def info(msg):
    print(msg, file=sys.stderr, flush=True)


def banner(lines):
    width = max(len(line) for line in lines) + 4
    info("!" * width)
    for line in lines:
        info(f"! {line.ljust(width - 4)} !")
    info("!" * width)


class Timer:
    def __enter__(self):
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.start
