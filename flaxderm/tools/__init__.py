"""The run-level tools: commands that train experiments or work on trained runs.

Each command is a module with ``add_arguments(parser)`` and ``main(args)`` (returning an exit
code, or None for 0); ``flaxderm.cli`` maps a command name to its module. ``run`` is the shared
base: a trained run read back (``load_run``, ``restore``) and the options every run tool takes.

* ``experiment``: train an experiment, its sweep or its K folds (the default command).
* ``evaluate`` (with ``calibration``), ``predict``, ``export``, ``explain``, ``report``,
  ``compare``: the commands of the same names; ``crossval`` trains and summarises K folds;
  ``case_table`` reads a run's per-case table (``evaluation/cases.csv``) for evaluate, report and
  compare.

May import: every other layer of flaxderm (``train``, ``data``, ``models``, ``losses``,
``metrics``, ``attribution``); nothing below imports ``flaxderm.tools``.
"""

# Command name -> module of flaxderm.tools; the experiment command takes every other first word.
COMMANDS = ("evaluate", "predict", "export", "explain", "report", "compare")
DEFAULT_COMMAND = "experiment"


def hide_gpus_from_tensorflow() -> None:
  """TFDS imports TensorFlow, which would reserve GPU memory JAX needs; it only reads files."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  tf.config.set_visible_devices([], "GPU")
