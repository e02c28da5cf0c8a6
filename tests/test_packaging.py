"""The installed package: a wheel holds every package folder and the experiments, and its
``flaxderm`` command runs them from anywhere."""
from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import tomllib
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_every_package_folder_is_installed():
  listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
               ["packages"])
  folders = {".".join(p.parent.relative_to(ROOT).parts)
             for p in (ROOT / "flaxderm").rglob("__init__.py")}
  assert folders | {"flaxderm.experiments"} == listed


@pytest.mark.slow
def test_wheel_installs_a_command_that_lists_and_runs_the_experiments(tmp_path):
  source = tmp_path / "source"  # setuptools builds in the source folder: not in the checkout
  source.mkdir()
  for name in ("pyproject.toml", "README.md"):
    shutil.copy(ROOT / name, source)
  for name in ("flaxderm", "experiments"):
    shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
  wheels = tmp_path / "wheels"
  subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                  "-q", "-w", str(wheels), str(source)], check=True, cwd=tmp_path)
  (wheel,) = wheels.glob("flaxderm-*.whl")
  # A fresh environment holding the wheel alone; its dependencies are this one's, reached by a
  # path entry (not a site directory, so this checkout's editable install stays out of it).
  env_dir = tmp_path / "venv"
  venv.create(env_dir, with_pip=False)
  python = env_dir / "bin" / "python"
  purelib = "import sysconfig; print(sysconfig.get_path('purelib'))"
  target = subprocess.run([str(python), "-c", purelib],
                          check=True, capture_output=True, text=True).stdout.strip()
  (Path(target) / "dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n")
  subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", target,
                  str(wheel)], check=True)
  command = Path(target) / "bin" / "flaxderm"  # pip --target puts the scripts there
  environment = {**os.environ, "FLAXDERM_DATA_DIR": str(tmp_path / "tfds")}
  environment.pop("PYTHONPATH", None)
  run = lambda *args: subprocess.run([str(python), str(command), *args], cwd=tmp_path,
                                     env=environment, capture_output=True, text=True, check=False)
  where = subprocess.run([str(python), "-c", "import flaxderm; print(flaxderm.__file__)"],
                         cwd=tmp_path, env=environment, capture_output=True, text=True, check=True)
  assert where.stdout.startswith(target), where.stdout
  listed = run("--list")
  assert listed.returncode == 0, listed.stderr
  shipped = sorted(p.stem for p in (ROOT / "experiments").glob("[!_]*.py"))
  assert [line.split()[0] for line in listed.stdout.splitlines()] == shipped
  trained = run("default:runlocal", "--workdir", str(tmp_path / "run"))
  assert trained.returncode == 0, trained.stderr[-3000:]
  assert "validation dice/per_image" in trained.stdout
  assert (tmp_path / "run" / "config.json").is_file()
