"""Tiny logging helpers: progress to stderr, one prefix per stage."""
import sys


def info(msg):
    print(msg, file=sys.stderr, flush=True)


def banner(lines):
    width = max(len(line) for line in lines) + 4
    info("!" * width)
    for line in lines:
        info(f"! {line.ljust(width - 4)} !")
    info("!" * width)
