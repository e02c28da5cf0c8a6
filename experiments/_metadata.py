"""What the metadata experiments share: turning an image-only recipe into its image + metadata
twin (their ``runlocal`` smoke runs take the synthetic lesions' fields, see
``flaxderm.train.config.runlocal``)."""


def with_metadata(c, fields: tuple[str, ...], fusion: str):
  """``c`` taking ``fields`` beside the image through ``fusion`` (``model.metadata_fusion``)."""
  c.data.metadata = fields
  c.model.metadata_fusion = fusion
  return c
