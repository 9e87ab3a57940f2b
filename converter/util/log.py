"""Tiny logging helpers: progress to stderr, one prefix per stage."""
from __future__ import annotations

import sys


def info(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def banner(lines: list[str]) -> None:
    width = max(len(line) for line in lines) + 4
    info("!" * width)
    for line in lines:
        info(f"! {line.ljust(width - 4)} !")
    info("!" * width)
