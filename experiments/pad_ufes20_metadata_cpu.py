"""PAD-UFES-20 from the image and the patient's clinical data, MetaBlock fusion (Pacheco &
Krohling 2021, on this dataset), on a 2-core CPU: ``pad_ufes20_cpu`` plus the metadata.

    python launch.py pad_ufes20_metadata_cpu --config.data.manual_dir=../shared/data
    python launch.py pad_ufes20_metadata_cpu --folds 5 --config.data.manual_dir=../shared/data

Everything as ``pad_ufes20_cpu`` (same images, split, recipe and budget), and the 21 clinical
fields Pacheco & Krohling feed their models: age, sex, region, Fitzpatrick type, the
questionnaire (smoking, drinking, parents' origins, pesticides, personal and family cancer
history, piped water, sewage) and the lesion's diameters and symptoms (itch, grew, hurt, changed,
bled, elevated). Not ``biopsed`` or ``diagnostic``: they derive from the label
(``flaxderm.data.clinical.NEVER_INPUTS``). Numbers are standardised with a missing flag,
categories one-hot with an unknown slot (``flaxderm.data.metadata``; about a third of the patients
left the questionnaire empty). The metadata gates the last feature map of the EfficientNet
(``model.metadata_fusion="metablock"``); ``--config.model.metadata_fusion=concat`` joins an MLP
of it to the pooled features instead (Gessert et al. 2020), ``late`` adds a linear metadata
classifier's logits to the image classifier's (with ``--config.optimizer.lr=3e-3
--config.optimizer.encoder_lr_scale=0.1`` on both twins, 5 folds at 240 s: macro AUC 0.920
against 0.882, balanced accuracy 0.624 against 0.615; benchmarks/RESULTS.md, 2026-12-07), and
``product`` trains those two classifiers each on its own loss (same settings: macro AUC 0.928,
balanced accuracy 0.637; the reference 0.880 and 0.535).
"""
from ._lite0_cpu import pad_ufes20, runlocal
from ._metadata import with_metadata

FIELDS = ("age", "sex", "site", "fitzpatrick", "smoke", "drink", "background_father",
          "background_mother", "pesticide", "skin_cancer_history", "cancer_history",
          "has_piped_water", "has_sewage_system", "diameter_1", "diameter_2", "itch", "grew",
          "hurt", "changed", "bleed", "elevation")


def get_config(arg=None):
  c = with_metadata(pad_ufes20(), FIELDS, "metablock")
  if arg == "runlocal":
    runlocal(c)
  return c
