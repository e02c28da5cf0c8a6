"""What every benchmark records beside its table (the machine and the package versions), and
where: ``record`` prints the section and appends it to benchmarks/RESULTS.md."""
from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def cpu() -> str:
  """``"<CPU model> (<widest SIMD>), <n> cores"``, from lscpu where it exists."""
  try:
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    model = next(l.split(":", 1)[1].strip() for l in lscpu.splitlines()
                 if l.startswith("Model name"))
    simd = "AVX-512" if "avx512f" in lscpu else "AVX2" if "avx2" in lscpu else "no AVX2"
  except (OSError, subprocess.CalledProcessError, StopIteration):
    model, simd = platform.processor() or "unknown CPU", "?"
  return f"{model} ({simd}), {os.cpu_count()} cores"


def versions(packages: tuple[str, ...]) -> str:
  """``"Python x.y.z, pkg 1.2, ..."``; a package that is not installed shows as ``absent``."""
  found = []
  for name in packages:
    try:
      found.append(f"{name} {importlib.metadata.version(name)}")
    except importlib.metadata.PackageNotFoundError:
      found.append(f"{name} absent")
  return f"Python {platform.python_version()}, " + ", ".join(found)


def record(section: str, append: bool = True) -> None:
  """Prints ``section`` and, with ``append``, adds it to RESULTS.md after a blank line."""
  print("\n" + section)
  if append:
    with RESULTS.open("a") as f:
      f.write("\n" + section)
    print(f"appended to {RESULTS}")
