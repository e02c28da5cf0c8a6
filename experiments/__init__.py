"""Experiments: one ``get_config(arg=None)`` file each, run by ``python launch.py NAME``.

Each file's docstring gives its command and its paper; ``get_config("runlocal")`` is the same
experiment shrunk to a seconds-long smoke run (tests/test_experiments.py runs every one).
Files starting with "_" hold shared pieces, not experiments.
"""
