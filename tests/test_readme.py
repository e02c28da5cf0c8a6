"""README.md and .ci/run must state the same test command: CI runs exactly what the README says."""
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ci_runs_the_readme_test_command():
  readme = (ROOT / "README.md").read_text()
  ci_lines = [l.strip() for l in (ROOT / ".ci/run").read_text().splitlines()]
  test_command = "python -m pytest -n 2 -q"
  assert test_command in readme
  assert ci_lines[-1] == test_command


def test_readme_lists_every_registered_model():
  from flaxderm.models import list_models  # pylint: disable=g-import-not-at-top

  readme = (ROOT / "README.md").read_text()
  section = readme[readme.index("## Models"):]
  section = section[:section.index("\n## ", 1)]
  missing = [n for n in list_models() if f"`{n}`" not in section]
  assert not missing, f"README.md's model list lacks {missing}"
