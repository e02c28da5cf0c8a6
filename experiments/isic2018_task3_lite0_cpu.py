"""ISIC 2018 Task 3 (7 classes) with ImageNet EfficientNet-Lite0 on a 2-core CPU, against the
PyTorch reference (timm, same weights) at the same wall budget.

    python launch.py isic2018_task3_lite0_cpu --config.data.manual_dir=../shared/data
    python launch.py isic2018_task3_lite0_cpu --folds 5 --config.data.manual_dir=../shared/data
    python benchmarks/quality.py isic_t3 --folds 5 --budget 300   # paired, machine alone, ~1 h
    python benchmarks/quality.py isic_t3 --folds 5 --pairs benchmarks/pairs/isic_t3_900s
        # the 900 s table (~2.7 h alone), built over several calls: each runs the missing folds

Same images, weights, optimiser (AdamW 3e-4, weight decay 1e-4, cosine over the budget), batch 16,
loss (cross-entropy with inverse-frequency class weights, torch's normalisation), flips and
90-degree rotations, horizontal-flip test-time augmentation; scored from the final parameters.
What differs:
* 192 px (the centred square of the short side, resized) instead of the reference's 224 px:
  1.4-1.5x the reference's steps in the same wall clock. That is the resolution: at 224 px
  flaxderm makes about the reference's steps (213 vs 217 in 300 s, AMD EPYC), with the train step
  compiled outside the budget and per-example depthwise kernel gradients
  (``layers.depthwise_conv``); on the folds 224 px is level on balanced accuracy, 0.009 lower
  on macro AUC (below).
* the reference also translates: it resizes the short side to 224 and crops random 224-px
  windows along the long side; this recipe trains on the centred square (``data.train_crop``
  "random" does what the reference does; it made no difference on the folds, below).

Measured on the paired 5-fold protocol (benchmarks/RESULTS.md, 2026-12-03/04, lesion-grouped
folds of ../shared/data, 1058 images, alternating runs, machine alone):

| budget | recipe | balanced accuracy (fold std) | macro AUC | steps |
|---|---|---:|---:|---:|
| 900 s | reference (AMD EPYC) | 0.6009 (0.0729) | 0.9180 | 604 |
| 900 s | this recipe, same machine | 0.5879 (0.0403) | 0.9237 | 929 |
| 300 s | reference | 0.6090 (0.0756) | 0.9006 | 255 |
| 300 s | this recipe | 0.6061 (0.0932) | 0.8987 | 363 |
| 300 s | reference, another machine (AMD EPYC) | 0.6105 (0.0676) | 0.8994 | 217 |
| 300 s | this recipe + translation crops, same machine | 0.5999 (0.0578) | 0.9009 | 313 |
| 180 s | reference | 0.5652 (0.0725) | 0.8888 | 160 |
| 180 s | reference's recipe in flaxderm (224 px) | 0.5491 (0.0869) | 0.8678 | 133 |
| 180 s | previous recipe (logit adjustment, zoom crops) | 0.4917 (0.0470) | 0.8755 | 152 |

So at 300 s this recipe is level with the reference (balanced accuracy -0.003, std of the paired
differences 0.033, ahead on 3 of 5 folds; AUC -0.002), not ahead by the fold std the claim needs;
with translation crops too (-0.011 with a paired std of 0.078; AUC +0.002; pooled out-of-fold
balanced accuracy -0.010, paired bootstrap 95% CI -0.050 to +0.029).
The previous recipe (logit adjustment ``tau = 1``, random zoom crops of scale 0.6-1) was chosen on
one 307-image hashed split (0.654 vs 0.616 at 900 s); it lost on held-out ISIC images and on these
folds (-0.074 at 180 s), so it is gone.
At 900 s (the bar's budget) the recipe is still not ahead on balanced accuracy: -0.013, std of
the paired differences 0.063, ahead on 1 of 5 folds, pooled out-of-fold paired bootstrap 95% CI
-0.060 to +0.037; it is ahead on macro AUC (+0.006, 4 of 5) and accuracy (+0.010, 4 of 5). A fold
holds 6-7 actinic keratoses, 6-7 dermatofibromas and 5-6 vascular lesions, so one image of those
moves balanced accuracy 2-3 points.
Other encoders and 224 px, 300 s, same folds, against the same reference runs (AMD EPYC; the
recipe itself rerun there as the control scored 0.5932, AUC 0.8994, 329 steps; each encoder
with its ``model.pretrained=efficientnet_liteN.imagenet`` weights):

| 300 s | balanced accuracy (fold std) | minus control | macro AUC | steps |
|---|---:|---:|---:|---:|
| Lite1 (``model.name=efficientnet_lite1``) | 0.5724 (0.0443) | -0.021 | 0.8890 | 255 |
| Lite2 (``efficientnet_lite2``) | 0.5680 (0.0468) | -0.025 | 0.8807 | 208 |
| this recipe at 224 px (``data.image_size=224``) | 0.5959 (0.0648) | +0.003 | 0.8900 | 213 |

The control against the same recipe on the Xeon (0.6061) shows the noise floor: rerunning it
moves a fold's balanced accuracy by up to 0.098 (std 0.054 over the folds) and the 5-fold mean
by 0.013, so no lever measured here (loss, crops, resolution, TTA, encoder) has shown an effect
five folds can resolve.
"""
from flaxderm.train import config as config_lib


def get_config(arg=None):
  c = config_lib.default_config()
  c.model.name = "efficientnet_lite0"
  c.model.pretrained = "efficientnet_lite0.imagenet"
  c.data.name = "isic2018_task3"
  c.data.source_split = "test"  # the images ../shared/data holds: the Task 3 test set
  c.data.split = "hashed"
  c.data.image_size = 192
  c.data.resize = "crop"
  c.data.cache = True
  c.data.augment.rot90.p = 0.75
  c.loss.name = "cross_entropy"
  c.loss.class_weight_power = 1.0
  c.optimizer.name = "adamw"
  c.optimizer.lr = 3e-4
  c.optimizer.weight_decay = 1e-4
  c.schedule.name = "cosine"
  c.batch_size = 16
  c.num_epochs = 0
  c.budget_s = 900.0
  c.eval.every_steps = 1000
  c.eval.batch_size = 32
  c.eval.best_metric = "balanced_accuracy"
  c.eval.tta = "hflip"
  c.log_every_steps = 25
  c.final_params = "last"
  if arg == "runlocal":
    config_lib.runlocal(c)
  return c
