"""What the metadata experiments share: turning an image-only recipe into its image + metadata
twin, and the smoke version of such a twin."""
from flaxderm.train import config as config_lib

# The clinical fields of the synthetic lesions (flaxderm.data.builders.synthetic), which the
# runlocal smoke runs train on whatever dataset the experiment names.
SYNTHETIC_FIELDS = ("age", "sex", "site")


def with_metadata(c, fields: tuple[str, ...], fusion: str, arg=None):
  """``c`` taking ``fields`` beside the image through ``fusion`` (``model.metadata_fusion``);
  ``arg="runlocal"``: the smoke version, on the synthetic lesions' fields."""
  c.data.metadata = fields
  c.model.metadata_fusion = fusion
  if arg == "runlocal":
    config_lib.runlocal(c)
    c.data.metadata = SYNTHETIC_FIELDS
  return c
