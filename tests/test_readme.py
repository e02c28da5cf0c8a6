"""README.md and .ci/run must state the same test command: CI runs exactly what the README says."""
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ci_runs_the_readme_test_command():
  readme = (ROOT / "README.md").read_text()
  ci_lines = [l.strip() for l in (ROOT / ".ci/run").read_text().splitlines()]
  test_command = "python -m pytest -n 2 -q"
  assert test_command in readme
  assert ci_lines[-1] == test_command
