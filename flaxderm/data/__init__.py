"""Input data: TFDS builders (``flaxderm.data.builders``) and grain pipelines (``pipeline``)."""
