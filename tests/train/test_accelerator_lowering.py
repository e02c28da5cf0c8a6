"""The accelerator path, checked on a CPU: the steps ``DataParallel`` compiles are exported with
``jax.export`` for ``("cuda", "tpu")`` and must lower for both -- the training step on a mesh of 8
simulated host devices (bfloat16 compute, donated state, batch sharded on "data"), and the
evaluation and prediction steps of one model of every registry family -- and XLA:CPU's compiler
options (``parallel.compiler_options("cpu")``) must never reach a lowering for an accelerator.

Nothing is compiled or run: the states are abstract (``jax.eval_shape``), so each family costs
its tracing and lowering only. The 8-device export runs in a subprocess (the device count is fixed
when JAX starts) that imports this file for its helpers.
"""
from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import pytest

from flaxderm.models import list_models, model_entry
from flaxderm.train import config as config_lib
from flaxderm.train import optim, parallel, setup
from flaxderm.train import step as step_lib
from flaxderm.train.state import create_train_state

ACCELERATORS = ("cuda", "tpu")
SIZE = 32
# Where 32 px is too small for the architecture: PAN's feature pyramid attention needs a 4x4 map
# at the encoder's stride 16.
LARGER_SIZE = {"pan": 64}
# XLA:CPU's options are all named xla_cpu_*: none may appear in an accelerator's lowering.
CPU_OPTION = re.compile(r"xla_cpu_")


def pieces(name: str, options: dict[str, Any]
           ) -> tuple[ml_collections.ConfigDict, Any, step_lib.Task]:
  """(config, model, task) of a bfloat16-compute run of ``name`` at ``SIZE`` px (or the least its
  architecture takes), built as ``loop.train`` builds them, without a dataset."""
  entry = model_entry(name)
  size = max(LARGER_SIZE.get(name, SIZE), entry.min_input_size or 0)
  cfg = config_lib.default_config()
  cfg.model.name = name
  cfg.model.kwargs = dict(options, **({"img_size": size} if "img_size" in options else {}))
  cfg.data.image_size = size
  cfg.compute_dtype = "bfloat16"
  if entry.task == "segmentation":
    info = setup.RunInfo("segmentation", ("background", "lesion"), 1)
  else:
    cfg.loss.name = "cross_entropy"
    info = setup.RunInfo("classification", ("nevus", "melanoma", "other"), 3)
  model = setup.make_model(cfg, info)
  return cfg, model, setup.make_task(cfg, info)


def abstract_state(par: parallel.DataParallel, model, cfg: ml_collections.ConfigDict):
  """(optimiser, the train state as ``ShapeDtypeStruct``s replicated over ``par``'s mesh)."""
  size = cfg.data.image_size
  variables = jax.eval_shape(lambda: model.init(
      {"params": jax.random.key(0), "dropout": jax.random.key(1)},
      jnp.zeros((1, size, size, 3)), train=False))
  tx = optim.make_optimizer(cfg.optimizer, variables["params"], labels=None)
  state = jax.eval_shape(lambda v: create_train_state(v, tx, seed=0, ema=False), variables)
  return tx, jax.tree.map(
      lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=par.replicated), state)


def abstract_batch(par: parallel.DataParallel, task: step_lib.Task, cfg, batch_size: int):
  size = cfg.data.image_size
  label = ((batch_size, size, size) if task.kind == "segmentation" else (batch_size,))
  shapes = {"image": ((batch_size, size, size, 3), jnp.float32),
            task.label_key: (label, jnp.int32), "valid": ((batch_size,), jnp.bool_)}
  return {k: jax.ShapeDtypeStruct(shape, dtype, sharding=par.sharded)
          for k, (shape, dtype) in shapes.items()}


def export_for_accelerators(step, *abstract_args) -> jax.export.Exported:
  """``step`` exported for ``ACCELERATORS``, after checking that its lowering for them carries
  none of XLA:CPU's compile options (jax keeps a jit's options on the lowering, not in the
  module, so both are looked at)."""
  lowered = step.trace(*abstract_args).lower(lowering_platforms=ACCELERATORS)
  options = dict(lowered._lowering._compiler_options_kvs)  # pylint: disable=protected-access
  assert not any(CPU_OPTION.match(k) for k in options), options
  exported = jax.export.export(step, platforms=ACCELERATORS)(*abstract_args)
  assert exported.platforms == ACCELERATORS
  assert not CPU_OPTION.search(exported.mlir_module())
  return exported


def compute_operand_types(module: str) -> set[str]:
  """Element types of the operands of every convolution and matrix product in ``module``."""
  types = set()
  for line in re.findall(r"stablehlo\.(?:convolution|dot_general)\(.*", module):
    operands = re.search(r": \((.*?)\) ->", line)
    types.update(re.findall(r"tensor<(?:\d+x)*([a-z]\w*)>", operands.group(1)))
  return types


def check_eight_device_train_step() -> None:
  """Run in a process with 8 host devices: the "auto" train step of a bfloat16 U-Net on all of
  them, exported for the accelerators."""
  assert jax.device_count() == 8, jax.devices()
  cfg, model, task = pieces("unet", {"base_width": 4, "depth": 2})
  par = parallel.DataParallel("auto", platforms=ACCELERATORS)
  assert par.compiler_options is None
  tx, state = abstract_state(par, model, cfg)
  batch = abstract_batch(par, task, cfg, batch_size=16)
  progress = jax.ShapeDtypeStruct((), jnp.float32, sharding=par.replicated)
  step = par.compile_train_step(step_lib.make_train_step(model, tx, task, cfg))
  exported = export_for_accelerators(step, state, batch, progress)
  module = exported.mlir_module()

  assert exported.nr_devices == 8
  main = re.search(r"func\.func public @main\((.*?)\) ->", module, re.S).group(1)
  # The donated state: each of its arrays is aliased to an output buffer.
  assert main.count("tf.aliasing_output") == len(jax.tree.leaves(state)), "state not donated"
  # The batch is split over the mesh axis, the state replicated.
  image = re.search(r'tensor<16x32x32x3xf32> \{sdy\.sharding = ([^}]*\})', main)
  assert image and f'{{"{parallel.AXIS}"}}' in image.group(1), image
  types = compute_operand_types(module)
  assert types == {"bf16"}, f"convolutions / matmuls in {types}, not bfloat16 alone"
  print("8-device train step exported for", exported.platforms)


def test_train_step_on_eight_devices_lowers_for_cuda_and_tpu(tmp_path):
  script = textwrap.dedent(f"""
      import sys
      import jax
      jax.config.update("jax_num_cpu_devices", 8)
      sys.path.insert(0, {str(Path(__file__).parent)!r})
      import test_accelerator_lowering
      test_accelerator_lowering.check_eight_device_train_step()
  """)
  result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)
  assert result.returncode == 0, (result.stdout + result.stderr)[-6000:]
  assert "exported for ('cuda', 'tpu')" in result.stdout


def one_model_per_family() -> list[tuple[str, dict]]:
  """The variant of each family that declares ``test_options`` (its tiny configuration)."""
  return [(n, dict(model_entry(n).test_options)) for n in list_models()
          if model_entry(n).test_options is not None]


@pytest.mark.slow
@pytest.mark.parametrize("name,options", one_model_per_family(),
                         ids=[n for n, _ in one_model_per_family()])
def test_eval_and_predict_steps_lower_for_cuda_and_tpu(name, options):
  cfg, model, task = pieces(name, options)
  par = parallel.DataParallel("auto", platforms=ACCELERATORS)
  _, state = abstract_state(par, model, cfg)
  batch = abstract_batch(par, task, cfg, batch_size=2)
  eval_step = par.compile_eval_step(step_lib.make_eval_step(model, task, cfg, use_ema=False))
  export_for_accelerators(eval_step, state, batch)
  predict = par.compile_case_step(step_lib.make_predict_step(model, cfg, use_ema=False))
  exported = export_for_accelerators(predict, state, batch["image"])
  assert "bf16" in compute_operand_types(exported.mlir_module())


def test_cpu_options_stay_with_cpu_lowerings():
  """The options follow the platforms a step is lowered for, not the devices of the host; and the
  check above sees them where they are (a CPU step's lowering carries them)."""
  on_cpu = parallel.DataParallel("auto")
  assert on_cpu.compiler_options == parallel.compiler_options("cpu")
  for platforms in (ACCELERATORS, ("cuda",), ("tpu",), ("cpu", "cuda")):
    assert parallel.DataParallel("auto", platforms=platforms).compiler_options is None
  if on_cpu.compiler_options is None:
    pytest.skip("this jaxlib takes none of flaxderm's XLA:CPU options")
  step = on_cpu.compile_eval_step(lambda state, batch: jnp.sum(batch * state))
  x = jax.ShapeDtypeStruct((2,), jnp.float32, sharding=on_cpu.sharded)
  lowered = step.trace(jax.ShapeDtypeStruct((), jnp.float32), x).lower()
  assert any(CPU_OPTION.match(k) for k, _ in lowered._lowering._compiler_options_kvs)  # pylint: disable=protected-access


def test_unknown_platform_is_named():
  with pytest.raises(ValueError, match="platforms must be some of.*'gpus'"):
    parallel.DataParallel("auto", platforms=("gpus",))
