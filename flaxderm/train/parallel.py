"""Data parallelism: a 1-D device mesh, batch placement, compiled steps, multi-host start-up.

Both modes keep one state layout -- every array replicated over the mesh
(``NamedSharding(mesh, P())``) -- so checkpoints, evaluation and restores never depend on the mode
or on the device count:

* ``"auto"``: ``jax.jit`` of the global-batch step; the batch is sharded on the mesh axis "data"
  and XLA inserts the collectives (BatchNorm statistics and gradients are global by construction).
* ``"pmap"``: ``jax.pmap`` of the per-device step over the same devices, axis name "data", the
  state broadcast in (``in_axes=None``) and returned unmapped (``out_axes=None``, valid because
  the step averages everything that could differ with ``lax.pmean``); BatchNorm statistics are
  synchronised by ``synced_batchnorm`` without touching the models.

Multi-host: ``initialize_distributed`` starts JAX's runtime (explicit coordinator flags, or
auto-detected SLURM / Open MPI / JAX_COORDINATOR_ADDRESS environments); each process passes only
its own shard of the batch and ``jax.make_array_from_process_local_data`` assembles the global one.

Steps compiled with ``jax.jit`` for CPU devices get ``compiler_options("cpu")``; see there. Steps
lowered on this host for other platforms (``jax.export`` for GPUs and TPUs from a CPU machine) name
them in ``DataParallel(platforms=...)`` and get none.
"""
from __future__ import annotations

import contextlib
import functools
import logging
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec as P

log = logging.getLogger(__name__)

AXIS = "data"
MODES = ("auto", "pmap")
# jax device platforms ("gpu") and jax.export's lowering platforms ("cuda", "rocm").
PLATFORMS = ("cpu", "gpu", "cuda", "rocm", "tpu")


# ------------------------------------------------------------------------------------------------
# Multi-host start-up.


def _cluster_detected() -> bool:
  """A multi-process launcher JAX can read its coordinates from (SLURM, Open MPI, env vars)."""
  def count(var):
    try:
      return int(os.environ.get(var, "1"))
    except ValueError:
      return 1
  return (count("SLURM_NTASKS") > 1 or count("OMPI_COMM_WORLD_SIZE") > 1
          or bool(os.environ.get("JAX_COORDINATOR_ADDRESS")))


def initialize_distributed(coordinator_address: str | None = None,
                           num_processes: int | None = None,
                           process_id: int | None = None) -> bool:
  """Starts ``jax.distributed`` when this is one process of several; returns whether it did.

  Explicit arguments win; otherwise a SLURM (``srun``) / Open MPI / ``JAX_COORDINATOR_ADDRESS``
  environment is auto-detected. Must run before anything else touches JAX devices. On CPU the
  processes talk through gloo.
  """
  explicit = coordinator_address is not None or num_processes is not None
  if explicit and (coordinator_address is None or num_processes is None or process_id is None):
    raise ValueError("multi-process training needs all of --coordinator_address, "
                     "--num_processes and --process_id")
  if explicit and not 0 <= process_id < num_processes:
    raise ValueError(f"--process_id {process_id} is not in [0, --num_processes={num_processes})")
  if not explicit and not _cluster_detected():
    return False
  jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU devices only
  if explicit:
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id)
  else:
    jax.distributed.initialize()
  log.info("process %d of %d, %d local / %d global devices", jax.process_index(),
           jax.process_count(), jax.local_device_count(), jax.device_count())
  return True


# ------------------------------------------------------------------------------------------------
# BatchNorm synchronisation for per-device (pmap) code.


@contextlib.contextmanager
def synced_batchnorm(axis_name: str) -> Iterator[None]:
  """Within this context every ``nn.BatchNorm`` without an ``axis_name`` of its own averages its
  batch statistics over ``axis_name`` (the global-batch mean and variance, as
  ``nn.BatchNorm(axis_name=...)``), so per-device steps normalise like a single-device step on the
  global batch. Works for any flax model without plumbing an axis name through its layers; enter
  it inside the per-device function (interceptors act at trace time)."""
  def interceptor(next_fun, args, kwargs, context):
    module = context.module
    if (context.method_name != "__call__" or not isinstance(module, nn.BatchNorm)
        or module.axis_name is not None or module.is_initializing()):
      return next_fun(*args, **kwargs)
    # The same module bound to the same variables, with the axis: flax's own statistics code.
    return module.clone(parent=module.scope, axis_name=axis_name)(*args, **kwargs)

  with nn.intercept_methods(interceptor):
    yield


# ------------------------------------------------------------------------------------------------
# XLA options for the compiled steps.

# jaxlib 0.10's XLA:CPU sends convolutions, dots and reductions to YNNPACK, which runs the narrow,
# high-resolution convolutions that dominate a U-Net on one thread; Eigen's convolutions use every
# core (2 cores, 3x3 conv 8x64x64x64: forward / input gradient / weight gradient 13.0 / 11.8 /
# 23.0 ms -> 8.2 / 7.8 / 9.1 ms; benchmarks/NOTES.md). The list is jaxlib 0.10's default without
# INDIVIDUAL_CONVOLUTION (compile options take no "-type" form).
CPU_COMPILER_OPTIONS = {
    "xla_cpu_experimental_ynn_fusion_type":
        "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE",
}


@functools.cache
def compiler_options(platform: str) -> dict[str, str] | None:
  """``jax.jit(..., compiler_options=...)`` for flaxderm's model steps on ``platform`` (None:
  XLA's defaults). Tried once on a tiny function: a jaxlib that no longer knows an option gets
  XLA's defaults and a warning instead of a step that fails to compile."""
  if platform != "cpu":
    return None
  cpu = jax.local_devices(backend="cpu")[0]
  try:
    jax.jit(lambda x: x + 1, compiler_options=CPU_COMPILER_OPTIONS).lower(
        jax.device_put(np.zeros(1, np.float32), cpu)).compile()
  except jax.errors.JaxRuntimeError as e:
    log.warning("XLA:CPU options %s not accepted by this jaxlib (%s); compiling with XLA's "
                "defaults", CPU_COMPILER_OPTIONS, e)
    return None
  return CPU_COMPILER_OPTIONS


# ------------------------------------------------------------------------------------------------
# The mesh and what runs on it.


class DataParallel:
  """A 1-D mesh over every device of every process (or over ``devices``), and how arrays and
  steps use it.

  ``platforms``: what the compiled steps are lowered for when that is not the devices' own
  platform -- ``("cuda", "tpu")`` to ``jax.export`` them from a CPU host (with ``jax.jit``'s
  ``trace(...).lower(lowering_platforms=...)`` or ``jax.export.export(step, platforms=...)``).
  Compiler options are per platform, so steps for any platform but the CPU alone get XLA's
  defaults: XLA:CPU's options never ride along with a lowering for an accelerator."""

  def __init__(self, mode: str = "auto", devices: list[jax.Device] | None = None, *,
               platforms: Sequence[str] | None = None):
    if mode not in MODES:
      raise ValueError(f"config.parallel must be one of {MODES}, got {mode!r}")
    self.mode = mode
    devices = jax.devices() if devices is None else list(devices)
    platforms = tuple(platforms or (devices[0].platform,))
    if not set(platforms) <= set(PLATFORMS):
      raise ValueError(f"platforms must be some of {PLATFORMS}, got {platforms!r}")
    self.mesh = jax.make_mesh((len(devices),), (AXIS,), axis_types=(jax.sharding.AxisType.Auto,),
                              devices=devices)
    self.replicated = NamedSharding(self.mesh, P())
    self.sharded = NamedSharding(self.mesh, P(AXIS))
    self.compiler_options = compiler_options(platforms[0]) if len(set(platforms)) == 1 else None

  @property
  def num_devices(self) -> int:
    return self.mesh.size

  def check_batch_size(self, global_batch_size: int, what: str) -> None:
    if global_batch_size % self.num_devices:
      raise ValueError(f"config.{what}={global_batch_size} must be divisible by the "
                       f"{self.num_devices} devices ({jax.process_count()} process(es))")

  def replicate(self, tree: Any) -> Any:
    """Host values (identical on every process) -> global arrays replicated over the mesh."""
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(self.replicated, np.asarray(x)), tree)

  def shard_batch(self, batch: Mapping[str, np.ndarray]) -> dict[str, jax.Array]:
    """This process's numpy batch -> the global batch, split over the devices on axis 0."""
    return {k: jax.make_array_from_process_local_data(self.sharded, np.asarray(v))
            for k, v in batch.items()}

  def train_batch(self, batch: Mapping[str, np.ndarray]) -> dict[str, jax.Array]:
    """The global batch as the compiled train step takes it: ``shard_batch``, or for "pmap" with
    a leading device axis (each device's examples are the ones it holds either way)."""
    if self.mode == "auto":
      return self.shard_batch(batch)
    local_devices = len(self.mesh.local_devices)
    return self.shard_batch({k: np.asarray(v).reshape((local_devices, -1) + np.shape(v)[1:])
                             for k, v in batch.items()})

  def compile_train_step(self, step: Callable) -> Callable:
    """``step(state, batch, progress) -> (state, metrics)`` compiled for the mode, donating the
    input state."""
    if self.mode == "auto":
      return jax.jit(step, in_shardings=(self.replicated, self.sharded, self.replicated),
                     out_shardings=(self.replicated, self.replicated), donate_argnums=0,
                     compiler_options=self.compiler_options)

    def per_device(state, batch, progress):
      with synced_batchnorm(AXIS):
        return step(state, batch, progress)

    mapped = jax.pmap(per_device, axis_name=AXIS, in_axes=(None, 0, None), out_axes=None,
                      donate_argnums=0, devices=list(self.mesh.devices.flat))
    if jax.process_count() == 1:
      return mapped
    # Across processes pmap hands back host-local arrays; keep the state global.
    return lambda *args: multihost_utils.host_local_array_to_global_array(
        mapped(*args), self.mesh, P())

  @staticmethod
  def ahead_of_time(compiled_step: Callable, *example_args) -> Callable:
    """``compiled_step`` compiled now for the shapes of ``example_args`` rather than at its first
    call, so compilation can be timed apart (a multi-process pmap step still compiles lazily)."""
    lower = getattr(compiled_step, "lower", None)
    return lower(*example_args).compile() if lower is not None else compiled_step

  def compile_eval_step(self, step: Callable) -> Callable:
    """``step(state, batch) -> replicated result`` (summed statistics): jit in both modes, the
    state layout being the same."""
    return jax.jit(step, in_shardings=(self.replicated, self.sharded),
                   out_shardings=self.replicated, compiler_options=self.compiler_options)

  def compile_case_step(self, step: Callable) -> Callable:
    """``step(state, batch) -> per-example results`` kept sharded like the batch."""
    return jax.jit(step, in_shardings=(self.replicated, self.sharded), out_shardings=self.sharded,
                   compiler_options=self.compiler_options)

  @staticmethod
  def fetch(tree: Any) -> Any:
    """Replicated arrays -> numpy (every process holds a full copy)."""
    return jax.tree.map(lambda x: np.asarray(x.addressable_data(0)), tree)

  @staticmethod
  def gather(tree: Any) -> Any:
    """Arrays sharded on their leading axis -> full numpy arrays on every process."""
    if jax.process_count() == 1:
      return jax.tree.map(np.asarray, tree)
    return multihost_utils.process_allgather(tree, tiled=True)
