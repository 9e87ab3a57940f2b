"""One line on how fast this machine is right now: single-thread float32
matrix products, the best of five. The same tree's test tiers have taken
543 s to 692 s here within an hour (docs/measurements.md, test tiers), so a
tier's time is read beside this figure, taken just before it."""
import os
import time

os.environ["OPENBLAS_NUM_THREADS"] = "1"   # before numpy loads its BLAS
os.environ["OMP_NUM_THREADS"] = "1"

import numpy as np  # noqa: E402

SIZE = 512


def main():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((SIZE, SIZE), dtype=np.float32)
    b = rng.standard_normal((SIZE, SIZE), dtype=np.float32)
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(20):
            a @ b
        best = min(best, (time.perf_counter() - start) / 20)
    print(f"machine speed: sgemm {2 * SIZE ** 3 / best / 1e9:.1f} GFLOPS on one thread (float32, {SIZE}x{SIZE})")


if __name__ == "__main__":
    main()
