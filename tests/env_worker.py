"""A worker class for tests/test_validate.py: what OMP_NUM_THREADS its
process had when this module was imported, i.e. while the worker was being
unpickled, before the executor's own code ran in it."""
import os

AT_IMPORT = os.environ.get("OMP_NUM_THREADS")


class EnvWorker:
    def __init__(self, spec):
        self.spec = spec

    def describe(self):
        return {"omp_num_threads_at_import": AT_IMPORT}
