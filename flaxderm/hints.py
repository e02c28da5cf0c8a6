"""The one hint every layer's errors give for a misspelt name: the close matches, if any."""
from __future__ import annotations

import difflib
from collections.abc import Iterable


def did_you_mean(word: str, choices: Iterable[object], *, n: int = 3, cutoff: float = 0.5) -> str:
  """``" (did you mean a, b?)"`` for the choices close to ``word``, ``""`` when none is."""
  close = difflib.get_close_matches(word, [str(c) for c in choices], n=n, cutoff=cutoff)
  return f" (did you mean {', '.join(close)}?)" if close else ""
