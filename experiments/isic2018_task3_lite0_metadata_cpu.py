"""ISIC 2018 Task 3 from the image and the patient's age, sex and anatomical site, concatenated
with the pooled features (Gessert et al. 2020), on a 2-core CPU: ``isic2018_task3_lite0_cpu``
plus the metadata.

    python launch.py isic2018_task3_lite0_metadata_cpu --config.data.manual_dir=../shared/data
    python launch.py isic2018_task3_lite0_metadata_cpu --folds 5 \
        --config.data.manual_dir=../shared/data

Everything as ``isic2018_task3_lite0_cpu`` (same images, lesion split, recipe and 900 s budget),
and HAM10000's ``age`` (standardised, with a missing flag), ``sex`` and ``localization`` (one-hot,
with an unknown slot; ``flaxderm.data.metadata``) through a two-layer MLP whose output joins the
EfficientNet's pooled features (``model.metadata_fusion="concat"``; "metablock" gates the feature
map instead). Not ``dx_type`` or ``dataset``: they derive from the label and the collection
(``flaxderm.data.clinical.NEVER_INPUTS``).
"""
from ._lite0_cpu import isic_task3, runlocal
from ._metadata import with_metadata

FIELDS = ("age", "sex", "site")


def get_config(arg=None):
  c = with_metadata(isic_task3(), FIELDS, "concat")
  if arg == "runlocal":
    runlocal(c)
  return c
