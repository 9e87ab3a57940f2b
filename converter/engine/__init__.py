"""One engine for every comparison over images: validate, parity and evaluate.

A library: it knows no command. Top down:

run         run_engine(): the entry point
engine      feeds workers chunks of images, writes each image's results
            atomically and reuses those already there (resume)
executors   local worker processes, or Ray actors (ray_address checks a cluster's)
worker      the worker process: one backend loaded at a time, a chunk of images held
items       what is compared: images (and labels), their content hashes, result keys
results     the per-image result's schema: sealed, checked, read
gates       what is measured per image (compare) and the gate of each precision
aggregate   per-image results -> metrics per backend, the gates, the reports
"""
