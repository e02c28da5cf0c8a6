"""flaxderm's entry point in a checkout, the same as the installed ``flaxderm`` command::

    python launch.py                                  # the default experiment (a few CPU minutes)
    python launch.py EXPERIMENT[:runlocal] [--config.KEY=VALUE ...] [--workdir DIR] [--resume]
    python launch.py EXPERIMENT --sweep               # every run of the experiment's sweep()
    python launch.py EXPERIMENT --folds K [--resume]  # K-fold cross-validation into fold_i/
    python launch.py --list                           # experiments, one line each
    python launch.py evaluate|predict|export|explain|report|compare ...  # run tools, TOOL --help

It parses the first word and dispatches (``flaxderm/cli.py``) to a command module of
``flaxderm/tools/``: ``experiment.py`` trains, the others work on trained runs.
"""
import sys

from flaxderm.cli import main

if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
