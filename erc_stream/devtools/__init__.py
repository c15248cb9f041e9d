"""Local tooling that is not the daemon: the embedded broker, replay, tail and demo.

Only this subpackage may import ``trainer`` (replay and demo load datasets, demo may train
a quick model); the worker and the rest of ``erc_stream`` never do.
"""
