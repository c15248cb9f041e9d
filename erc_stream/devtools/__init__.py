"""Local tooling that is not the daemon: the embedded broker, replay, tail, demo, and the manifest
of the untrained versions tests and benchmarks publish.

Only this subpackage may import ``trainer`` (replay and demo load datasets, demo may train
a quick model); the worker and the rest of ``erc_stream`` never do.
"""
