"""One engine for every comparison over images: validate, parity and evaluate.

items    what is compared: images (and labels), their content hashes, result keys
host     runs in a worker (a local process or a Ray actor): loads its backends
         once and turns one image into small results
executors  local worker processes, or Ray actors
engine   plans the workers, feeds them images, writes each image's results
         atomically and skips those already there (resume)
aggregate  per-image results -> metrics per backend, the gates, the reports
"""
