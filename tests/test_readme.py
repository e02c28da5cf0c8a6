"""README.md against the code: CI runs exactly the test command the README states, and the Models
table lists every registered model and family."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ci_runs_the_readme_test_command():
  readme = (ROOT / "README.md").read_text()
  ci_lines = [l.strip() for l in (ROOT / ".ci/run").read_text().splitlines()]
  test_command = "python -m pytest -n 2 -q --durations=25"
  assert test_command in readme
  assert ci_lines[-1] == test_command


def test_readme_lists_every_registered_model():
  from flaxderm.models import list_models  # pylint: disable=g-import-not-at-top

  readme = (ROOT / "README.md").read_text()
  section = readme[readme.index("## Models"):]
  section = section[:section.index("\n## ", 1)]
  missing = [n for n in list_models() if f"`{n}`" not in section]
  assert not missing, f"README.md's model list lacks {missing}"


def _model_table_rows() -> list[set[str]]:
  """The backticked names in the models column of each row of README.md's Models table."""
  readme = (ROOT / "README.md").read_text()
  section = readme[readme.index("## Models"):]
  section = section[:section.index("\n## ", 1)]
  rows = [line.split("|") for line in section.splitlines() if line.startswith("|")]
  return [set(re.findall(r"`([^`]+)`", cells[3])) for cells in rows[2:]]  # after the header


def test_readme_model_table_has_a_row_per_registered_family():
  """Each family's models share a row, and every row names a registered model (no stale rows)."""
  from flaxderm.models import list_models, model_entry  # pylint: disable=g-import-not-at-top

  rows = _model_table_rows()
  registered = set(list_models())
  for family in sorted({model_entry(n).family for n in registered}):
    models = set(list_models(family=family))
    assert any(models <= row for row in rows), (
        f"README.md's Models table has no row listing the {family} family: {sorted(models)}")
  stale = [sorted(row) for row in rows if not row & registered]
  assert not stale, f"README.md's Models table has rows without a registered model: {stale}"
