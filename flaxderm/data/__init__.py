"""Input data, from the official download folders to batches; knows nothing of models or training.

* ``builders/``: one TFDS builder per dataset (ArrayRecord), reading a local manual directory.
* ``clinical``: the clinical fields records carry (age, sex, site, ...), their encoding, and
  the fields never to use as model inputs (``NEVER_INPUTS``).
* ``metadata``: clinical fields as a model input: their vocabulary (from the training split)
  and the encoded ``metadata`` vector of each example.
* ``sources``: a prepared dataset (or lists of records) as random-access records by split.
* ``splits``: grouped train/validation splits (hashed, k-fold, all) and process sharding.
* ``preprocess``, ``augment``: per-image preparation and training augmentation (numpy/OpenCV).
* ``config``: the data options and their checks; ``pipeline``: the grain pipelines to batches.

May import: numpy, OpenCV, TFDS/TensorFlow, grain; nothing else of flaxderm.
"""
