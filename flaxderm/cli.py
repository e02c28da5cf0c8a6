"""The ``flaxderm`` command (and ``python launch.py``): parses the first word, then hands over to
the command's module in ``flaxderm.tools``::

    flaxderm [EXPERIMENT[:ARG]] [--config.KEY=VALUE ...] [--workdir DIR] [--resume] [--sweep]
             [--folds K]                    # train (default experiment: "default")
    flaxderm --list                         # the experiments, one line each
    flaxderm evaluate|predict|export|explain|report|compare ... (flaxderm TOOL --help)

Exit codes: 0 done, 1 an error the message explains in one line (bad input, a refused request,
a training whose loss became NaN, a file-system fault with its path), 2 a bad command line, 130
interrupted.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from flaxderm import tools

CONFIG_OVERRIDE = "--config."


def _quiet_logging() -> None:
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
  for noisy in ("absl", "jax._src", "orbax", "tensorflow"):
    logging.getLogger(noisy).setLevel(logging.WARNING)
  # TensorFlow (under TFDS) only reads files: quiet, and away from the GPUs JAX uses.
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")


def _parse(argv: list[str]) -> tuple[object, argparse.Namespace]:
  """(the command's module, its parsed arguments); ``--config.KEY=VALUE`` items, which only
  experiments take, land in ``args.overrides``."""
  name = argv[0] if argv and argv[0] in tools.COMMANDS else tools.DEFAULT_COMMAND
  module = importlib.import_module(f"{tools.__name__}.{name}")
  words = argv[1:] if name != tools.DEFAULT_COMMAND else argv
  parser = argparse.ArgumentParser(
      prog="flaxderm" + ("" if name == tools.DEFAULT_COMMAND else f" {name}"),
      description=module.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
      epilog=f"commands: {', '.join(tools.COMMANDS)} (flaxderm COMMAND --help)")
  module.add_arguments(parser)
  args, rest = parser.parse_known_args(words)
  args.overrides = [w for w in rest if w.startswith(CONFIG_OVERRIDE)]
  unknown = [w for w in rest if not w.startswith(CONFIG_OVERRIDE)]
  if unknown or (args.overrides and name != tools.DEFAULT_COMMAND):
    parser.error(f"unrecognised arguments {unknown or args.overrides}")
  return module, args


def main(argv: list[str] | None = None) -> int:
  argv = sys.argv[1:] if argv is None else list(argv)
  module, args = _parse(argv)  # argparse exits on --help (0) and a bad command line (2)
  _quiet_logging()
  try:
    if module.__name__ != f"{tools.__name__}.{tools.DEFAULT_COMMAND}":  # it checks its config first
      tools.hide_gpus_from_tensorflow()
    return module.main(args) or 0
  except (ValueError, FloatingPointError) as e:  # bad input; a diverged training (NaN loss)
    print(f"error: {e}", file=sys.stderr)
    return 1
  except OSError as e:  # a file-system fault (FileExistsError, PermissionError, ...): its path
    where = "".join(f": {name}" for name in (e.filename, e.filename2) if name is not None)
    print(f"error: {e.strerror or e}{where}", file=sys.stderr)
    return 1
  except KeyboardInterrupt:
    return 130
