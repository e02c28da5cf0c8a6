"""Training-step throughput of flaxderm models against the same model in PyTorch.

For each model and batch size: a jitted train step (forward, loss, backward, Adam update; the train
state is donated), compiled once ahead of time so that its FLOPs and memory come from XLA's own
cost and memory analyses, then warm-up steps (untimed) and timed steps (each `block_until_ready`);
the median step time is reported. The same model, batch and optimiser then run in PyTorch with the
same thread count. A large float32 matmul measured in the same run gives the machine's ceiling, so
each row also shows which fraction of it the train step reaches. Steps compile with the XLA
options flaxderm's training uses (``flaxderm.train.parallel.compiler_options``; ``--xla-defaults``
for XLA's own). The largest batch that fits comes from XLA's memory analysis of compile-only steps.

GFLOP/s of both frameworks is XLA's FLOP count of the flaxderm step divided by the step time: the
same math, counted once (PyTorch has no compiled cost analysis to read).

  python benchmarks/train_step.py                   # default table, appended to RESULTS.md
  python benchmarks/train_step.py --quick --no-append
  python benchmarks/train_step.py --models unet,resnet50 --batch-sizes 4,16 --steps 5
  python benchmarks/train_step.py --device gpu      # bfloat16 compute on a GPU, PyTorch under AMP
  python benchmarks/train_step.py --device gpu --models resnet50,vit_base \
      --batch-sizes resnet50=256,vit_base=128     # a batch size per model
  python benchmarks/train_step.py --no-bf16         # without the bfloat16-compute column
  python benchmarks/train_step.py --models unet --xla-defaults --no-append

On the CPU the main columns are float32 compute and a "bf16 ms/step" column times the same step
with bfloat16 compute (``config.compute_dtype="bfloat16"``: float32 params, BatchNorm statistics,
loss and optimizer), with its speed relative to float32; on a GPU the main columns are bf16 already, and PyTorch runs the same step under automatic mixed
precision (``torch.autocast(bfloat16)``, float32 weights and Adam) in channels-last layout (NHWC,
as XLA's), each framework at its usual best for convolutions on tensor cores.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from flaxderm.models import create_model
from flaxderm.train import parallel

import environment  # benchmarks/environment.py, beside this script

SEED = 0
PACKAGES = ("jax", "jaxlib", "flax", "optax", "numpy", "torch", "timm",
            "segmentation-models-pytorch")


@dataclasses.dataclass(frozen=True)
class Spec:
  """One benchmarked model: flaxderm options, input size, default batches, PyTorch twin.
  ``name`` is the row's name and, unless ``arch`` gives another, the registered model."""
  name: str
  size: int
  batch_sizes: tuple[int, ...]
  num_classes: int
  flax_kwargs: dict[str, Any]
  torch_builder: str | None  # name of a function below, None = no PyTorch equivalent
  torch_note: str = ""
  arch: str = ""

  @property
  def model(self) -> str:
    return self.arch or self.name

  @property
  def segmentation(self) -> bool:
    return self.num_classes == 1


SPECS = {s.name: s for s in [
    Spec("unet", 128, (2, 8), 1, dict(base_width=32), "torch_unet"),
    Spec("sepdilated_codec", 128, (2, 8), 1, {}, None,
         "no PyTorch equivalent written (paper 004's codec has no public implementation)"),
    # Batch 2, not 1: PyTorch's BatchNorm refuses the ASPP image-pooling branch's 1x1 map at batch 1.
    Spec("deeplabv3plus", 224, (2, 4), 1, dict(encoder_name="resnet50"), "torch_smp"),
    Spec("unetplusplus", 224, (2, 4), 1, dict(encoder_name="resnet34"), "torch_smp"),
    Spec("unet_resnet34", 256, (2, 4), 1, dict(encoder_name="resnet34"), "torch_smp",
         arch="unet"),
    Spec("fpn", 224, (2, 4), 1, dict(encoder_name="resnet34"), "torch_smp"),
    Spec("transunet", 224, (2, 4), 1, dict(encoder_name="vit_base", img_size=224), None,
         "no PyTorch twin (smp has no TransUNet, and flaxderm's is the pure-ViT form with its own "
         "neck, see transunet.py)"),
    Spec("resnet50", 224, (1, 4), 1000, {}, "torch_timm"),
    Spec("efficientnet_lite0", 224, (4, 16), 1000, {}, "torch_timm"),
    Spec("vit_small", 224, (1, 4), 1000, {}, "torch_timm"),
    Spec("vit_base", 224, (1, 4), 1000, {}, "torch_timm"),
    Spec("swin_tiny", 224, (1, 4), 1000, {}, "torch_timm"),
]}
SMP_CLASSES = {"deeplabv3plus": "DeepLabV3Plus", "unetplusplus": "UnetPlusPlus", "fpn": "FPN",
               "unet_resnet34": "Unet"}
TIMM_NAMES = {"resnet50": "resnet50", "efficientnet_lite0": "tf_efficientnet_lite0",
              "vit_small": "vit_small_patch16_224", "vit_base": "vit_base_patch16_224",
              "swin_tiny": "swin_tiny_patch4_window7_224"}


# ------------------------------------------------------------------------------------------------
# Timing helpers.
# ------------------------------------------------------------------------------------------------
def time_steps(step: Callable[[], Any], warmup: int, steps: int) -> list[float]:
  """Runs ``step`` (which must block until its result is ready) and returns timed durations."""
  for _ in range(warmup):
    step()
  times = []
  for _ in range(steps):
    t = time.perf_counter()
    step()
    times.append(time.perf_counter() - t)
  return times


def matmul_ceiling(n: int, reps: int, use_gpu: bool) -> dict[str, float]:
  """GFLOP/s of an n x n float32 (bf16 on GPU) matmul in JAX and numpy: the machine's limit."""
  dtype = jnp.bfloat16 if use_gpu else jnp.float32
  a = jax.random.normal(jax.random.PRNGKey(0), (n, n), dtype)
  b = jax.random.normal(jax.random.PRNGKey(1), (n, n), dtype)
  f = jax.jit(jnp.dot)
  f(a, b).block_until_ready()
  flops = 2.0 * n ** 3
  out = {"jax": flops / statistics.median(
      time_steps(lambda: f(a, b).block_until_ready(), 1, reps)) / 1e9}
  if not use_gpu:
    an, bn = np.asarray(a), np.asarray(b)
    out["numpy"] = flops / statistics.median(time_steps(lambda: an @ bn, 1, reps)) / 1e9
  return out


# ------------------------------------------------------------------------------------------------
# flaxderm.
# ------------------------------------------------------------------------------------------------
def loss_fn(logits, labels, segmentation: bool):
  if segmentation:
    return optax.sigmoid_binary_cross_entropy(logits[..., 0], labels.astype(logits.dtype)).mean()
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def batch_shapes(spec: Spec, batch: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
  """Shapes of the images and the labels (masks or class ids) of one batch."""
  labels = (batch, spec.size, spec.size) if spec.segmentation else (batch,)
  return (batch, spec.size, spec.size, 3), labels


def compile_flax(spec: Spec, batch: int, dtype, compiler_options) -> tuple[Any, tuple, float]:
  """(compiled train step, initial train state, compile seconds) for ``batch`` examples; the
  batch itself is abstract here, so compiling a huge batch allocates nothing."""
  model = create_model(spec.model, num_classes=spec.num_classes, dtype=dtype, **spec.flax_kwargs)
  image_shape, label_shape = batch_shapes(spec, batch)
  variables = jax.jit(lambda k: model.init(k, jnp.zeros((1, *image_shape[1:])), train=False))(
      jax.random.PRNGKey(SEED))
  params = variables["params"]
  batch_stats = variables.get("batch_stats", {})
  tx = optax.adam(1e-3)
  state = (params, batch_stats, tx.init(params))

  def train_step(state, x, y, key):
    params, batch_stats, opt_state = state

    def compute_loss(p):
      logits, updates = model.apply({"params": p, "batch_stats": batch_stats}, x, train=True,
                                    mutable=["batch_stats"], rngs={"dropout": key})
      return loss_fn(logits.astype(jnp.float32), y, spec.segmentation), updates

    (loss, updates), grads = jax.value_and_grad(compute_loss, has_aux=True)(params)
    upd, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, upd)
    return (params, updates.get("batch_stats", batch_stats), opt_state), loss

  t = time.perf_counter()
  compiled = jax.jit(train_step, donate_argnums=0, compiler_options=compiler_options).lower(
      state, jax.ShapeDtypeStruct(image_shape, jnp.float32),
      jax.ShapeDtypeStruct(label_shape, jnp.int32), jax.random.PRNGKey(SEED)).compile()
  return compiled, state, time.perf_counter() - t


def peak_bytes(compiled) -> float:
  mem = compiled.memory_analysis()
  return float(mem.temp_size_in_bytes + mem.argument_size_in_bytes + mem.output_size_in_bytes)


def bench_flax(spec: Spec, batch: int, warmup: int, steps: int, dtype,
               compiler_options) -> dict[str, float]:
  compiled, state, compile_s = compile_flax(spec, batch, dtype, compiler_options)
  rng = np.random.default_rng(SEED)
  image_shape, label_shape = batch_shapes(spec, batch)
  x = jnp.asarray(rng.standard_normal(image_shape, np.float32))
  y = jnp.asarray(rng.integers(0, max(spec.num_classes, 2), label_shape), jnp.int32)
  key = jax.random.PRNGKey(SEED)
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  holder = [state]

  def step():
    holder[0], loss = compiled(holder[0], x, y, key)
    loss.block_until_ready()

  times = time_steps(step, warmup, steps)
  return {"step_s": statistics.median(times), "min_s": min(times), "max_s": max(times),
          "flops": float(cost["flops"]), "peak_bytes": peak_bytes(compiled),
          "compile_s": compile_s}


def largest_batch(spec: Spec, peaks: dict[int, float], limit: float, dtype,
                  compiler_options) -> int | None:
  """The largest batch whose compiled step's XLA peak fits in ``limit`` bytes: the straight line
  through the measured (batch, peak) points, then compile-only checks (nothing is allocated)
  stepping down until one fits. None without two measured batch sizes."""
  if len(peaks) < 2:
    return None
  (b0, p0), (b1, p1) = sorted(peaks.items())[:2]
  per_example = (p1 - p0) / (b1 - b0)
  if per_example <= 0:
    return None
  batch = int((limit - (p0 - per_example * b0)) // per_example)
  while batch >= 1:
    if peak_bytes(compile_flax(spec, batch, dtype, compiler_options)[0]) <= limit:
      return batch
    batch = min(batch - 1, int(batch * 0.9))
  return None


def memory_limit(use_gpu: bool) -> float:
  """Bytes one step may use: the GPU's allocator limit, or the host's physical memory."""
  if use_gpu:
    return float(jax.devices()[0].memory_stats()["bytes_limit"])
  return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


# ------------------------------------------------------------------------------------------------
# PyTorch twins.
# ------------------------------------------------------------------------------------------------
def torch_unet(torch, spec: Spec):
  """The original U-Net as flaxderm builds it (depth 4, conv-BN-ReLU x2, max pool, 2x2
  transposed conv up, 1x1 head), in plain PyTorch: smp's Unet needs an encoder."""
  nn = torch.nn
  width, depth = spec.flax_kwargs["base_width"], 4

  def block(cin, cout):
    return nn.Sequential(*[m for i in range(2) for m in (
        nn.Conv2d(cin if i == 0 else cout, cout, 3, padding=1), nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True))])

  class UNet(nn.Module):
    def __init__(self):
      super().__init__()
      widths = [width * 2 ** i for i in range(depth + 1)]
      self.enc = nn.ModuleList([block(3 if i == 0 else widths[i - 1], w)
                                for i, w in enumerate(widths)])
      self.up = nn.ModuleList([nn.ConvTranspose2d(widths[i + 1], widths[i], 2, 2)
                               for i in reversed(range(depth))])
      self.dec = nn.ModuleList([block(2 * widths[i], widths[i]) for i in reversed(range(depth))])
      self.head = nn.Conv2d(width, spec.num_classes, 1)

    def forward(self, x):
      skips = []
      for i, b in enumerate(self.enc):
        if i:
          skips.append(x)
          x = torch.nn.functional.max_pool2d(x, 2)
        x = b(x)
      for up, b, skip in zip(self.up, self.dec, reversed(skips)):
        x = b(torch.cat([up(x), skip], 1))
      return self.head(x)

  return UNet()


def torch_smp(torch, spec: Spec):
  """smp's model of the same name on the same encoder, smp's defaults otherwise (flaxderm's
  defaults are smp's; deeplab.py lists where its DeepLabV3+ differs)."""
  import segmentation_models_pytorch as smp
  return getattr(smp, SMP_CLASSES[spec.name])(encoder_name=spec.flax_kwargs["encoder_name"],
                                               encoder_weights=None, classes=spec.num_classes)


def torch_timm(torch, spec: Spec):
  import timm
  return timm.create_model(TIMM_NAMES[spec.name], pretrained=False, num_classes=spec.num_classes)


def bench_torch(torch, spec: Spec, batch: int, warmup: int, steps: int, use_gpu: bool):
  device = "cuda" if use_gpu else "cpu"
  layout = torch.channels_last if use_gpu else torch.contiguous_format
  torch.manual_seed(SEED)
  model = globals()[spec.torch_builder](torch, spec).to(device, memory_format=layout).train()
  opt = torch.optim.Adam(model.parameters(), lr=1e-3)
  rng = np.random.default_rng(SEED)
  x = torch.from_numpy(rng.standard_normal((batch, 3, spec.size, spec.size), np.float32)).to(
      device, memory_format=layout)
  if spec.segmentation:
    y = torch.from_numpy(rng.integers(0, 2, (batch, 1, spec.size, spec.size)).astype(np.float32))
    criterion = torch.nn.BCEWithLogitsLoss()
  else:
    y = torch.from_numpy(rng.integers(0, spec.num_classes, (batch,)))
    criterion = torch.nn.CrossEntropyLoss()
  y = y.to(device)

  def step():
    opt.zero_grad(set_to_none=True)
    with torch.autocast(device, dtype=torch.bfloat16, enabled=use_gpu):
      out = model(x)
    loss = criterion(out.float(), y)
    loss.backward()
    opt.step()
    if use_gpu:
      torch.cuda.synchronize()
    else:
      loss.item()

  times = time_steps(step, warmup, steps)
  return {"step_s": statistics.median(times), "min_s": min(times), "max_s": max(times)}


# ------------------------------------------------------------------------------------------------
# Reporting.
# ------------------------------------------------------------------------------------------------
def machine(use_gpu: bool) -> str:
  if use_gpu:
    return f"{jax.devices()[0].device_kind}, host {os.cpu_count()} cores"
  return environment.cpu()


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--models", default=",".join(SPECS), help="comma-separated, from: "
                 + ", ".join(SPECS))
  p.add_argument("--batch-sizes", default=None,
                 help="comma-separated batch sizes for every model, or MODEL=BATCH entries for "
                      "one model (repeat for several; the others keep theirs; default: per model, "
                      "2,8 at 128 px, 1,4 at 224 px, 2,4 for the encoder-decoders)")
  p.add_argument("--steps", type=int, default=3, help="timed steps (median reported)")
  p.add_argument("--warmup", type=int, default=1, help="untimed steps after compilation")
  p.add_argument("--quick", action="store_true",
                 help="smoke run: unet and resnet50, batch 2, 1 warm-up, 1 timed step")
  p.add_argument("--device", choices=("cpu", "gpu"), default="cpu",
                 help="gpu: bfloat16 compute (float32 params) on a GPU; errors if none")
  p.add_argument("--no-torch", action="store_true", help="skip the PyTorch rows")
  p.add_argument("--no-bf16", action="store_true",
                 help="CPU: skip the bfloat16-compute column (it compiles every step twice)")
  p.add_argument("--no-append", action="store_true", help=f"do not append to {environment.RESULTS.name}")
  p.add_argument("--matmul-n", type=int, default=2048, help="size of the ceiling matmul")
  p.add_argument("--xla-defaults", action="store_true",
                 help="compile with XLA's default options instead of flaxderm's "
                      "(flaxderm.train.parallel.compiler_options), to measure what they change")
  args = p.parse_args(argv)
  if args.quick:
    args.models, args.batch_sizes, args.steps, args.warmup = "unet,resnet50", "2", 1, 1
  names = [m.strip() for m in args.models.split(",") if m.strip()]
  unknown = [m for m in names if m not in SPECS]
  if unknown:
    p.error(f"--models: unknown {unknown}; choose from {list(SPECS)}")
  args.models = names
  if args.batch_sizes:
    try:
      args.batch_sizes = parse_batch_sizes(args.batch_sizes)
    except ValueError as e:
      p.error(f"--batch-sizes: {e}")
  if args.steps < 1 or args.warmup < 0:
    p.error("--steps must be >= 1 and --warmup >= 0")
  return args


def parse_batch_sizes(text: str) -> dict[str | None, tuple[int, ...]]:
  """"2,8" -> {None: (2, 8)} (every model); "resnet50=256,unet=16,unet=32" -> per model."""
  sizes: dict[str | None, list[int]] = {}
  for item in filter(None, (i.strip() for i in text.split(","))):
    name, _, batch = item.rpartition("=")
    if name and name not in SPECS:
      raise ValueError(f"unknown model {name!r} in {item!r}; choose from {list(SPECS)}")
    if not batch.isdigit() or int(batch) < 1:
      raise ValueError(f"{item!r}: a batch size must be a positive integer")
    sizes.setdefault(name or None, []).append(int(batch))
  return {k: tuple(v) for k, v in sizes.items()}


def batch_sizes_of(spec: Spec, chosen: dict[str | None, tuple[int, ...]] | None) -> tuple[int, ...]:
  chosen = chosen or {}
  return chosen.get(spec.name) or chosen.get(None) or spec.batch_sizes


def main(argv=None):
  args = parse_args(argv)
  command = "python " + " ".join([os.path.relpath(__file__, Path.cwd())] + sys.argv[1:])
  use_gpu = args.device == "gpu"
  if use_gpu:
    try:
      jax.devices("gpu")
    except RuntimeError as e:
      raise SystemExit(f"--device gpu: JAX sees no GPU ({e}); devices: {jax.devices()}") from None
  elif jax.default_backend() != "cpu":
    jax.config.update("jax_platforms", "cpu")
  dtype = jnp.bfloat16 if use_gpu else None
  options = None if args.xla_defaults else parallel.compiler_options(jax.devices()[0].platform)
  limit = memory_limit(use_gpu)

  try:
    import torch
    torch.set_num_threads(os.cpu_count())
    if use_gpu and not torch.cuda.is_available():
      print("PyTorch sees no GPU: PyTorch rows skipped")
      torch = None
  except ImportError:
    print("torch is not installed: PyTorch rows skipped")
    torch = None
  if args.no_torch:
    torch = None

  load_start = os.getloadavg()
  started = time.perf_counter()
  ceiling = matmul_ceiling(args.matmul_n, 5, use_gpu)
  print(f"ceiling ({args.matmul_n}^2 matmul): " + ", ".join(
      f"{k} {v:.1f} GFLOP/s" for k, v in ceiling.items()), flush=True)

  bf16_column = not use_gpu and not args.no_bf16
  header = ("| model | px | batch | flaxderm img/s | ms/step (min-max) | GFLOP/step | GFLOP/s | "
            "% of JAX matmul | XLA peak MiB | compile s | bf16 ms/step (f32/bf16) | "
            "PyTorch img/s | ms/step (min-max) | PyTorch GFLOP/s | flaxderm/PyTorch | "
            "largest batch |")
  rows = [header, "|" + "---|" * 3 + "---:|" * 13]
  notes = []
  print(header, flush=True)
  for name in args.models:
    spec = SPECS[name]
    peaks, model_rows = {}, []
    for batch in batch_sizes_of(spec, args.batch_sizes):
      f = bench_flax(spec, batch, args.warmup, args.steps, dtype, options)
      peaks[batch] = f["peak_bytes"]
      gflops = f["flops"] / f["step_s"] / 1e9
      cells = [name, spec.size, batch, f"{batch / f['step_s']:.2f}",
               f"{1e3 * f['step_s']:.0f} ({1e3 * f['min_s']:.0f}-{1e3 * f['max_s']:.0f})",
               f"{f['flops'] / 1e9:.1f}", f"{gflops:.1f}", f"{100 * gflops / ceiling['jax']:.0f}%",
               f"{f['peak_bytes'] / 2 ** 20:.0f}", f"{f['compile_s']:.0f}"]
      if bf16_column:
        b = bench_flax(spec, batch, args.warmup, args.steps, jnp.bfloat16, options)
        cells.append(f"{1e3 * b['step_s']:.0f} ({f['step_s'] / b['step_s']:.2f}x)")
      else:
        cells.append("-")
      t, why = None, "PyTorch absent or --no-torch" if torch is None else spec.torch_note
      if torch is not None and spec.torch_builder is not None:
        try:
          t = bench_torch(torch, spec, batch, args.warmup, args.steps, use_gpu)
        except (ValueError, RuntimeError, ImportError) as e:  # BatchNorm on a 1x1 map; no smp
          why = f"PyTorch failed at batch {batch}: {type(e).__name__}: {str(e)[:120]}"
          print(why, flush=True)
      if t is not None:
        cells += [f"{batch / t['step_s']:.2f}",
                  f"{1e3 * t['step_s']:.0f} ({1e3 * t['min_s']:.0f}-{1e3 * t['max_s']:.0f})",
                  f"{f['flops'] / t['step_s'] / 1e9:.1f}", f"{t['step_s'] / f['step_s']:.2f}x"]
      else:
        if why and f"{name}: {why}" not in notes:
          notes.append(f"{name}: {why}")
        cells += ["-"] * 4
      model_rows.append(cells)
      print("| " + " | ".join(str(c) for c in cells) + " |", flush=True)
    fits = largest_batch(spec, peaks, limit, dtype, options)
    for cells in model_rows:
      rows.append("| " + " | ".join(str(c) for c in cells + [fits or "-"]) + " |")
  runtime = time.perf_counter() - started
  load_end = os.getloadavg()

  lines = [
      f"## Training step, {datetime.date.today().isoformat()}", "",
      f"- command: `{command}`",
      f"- machine: {machine(use_gpu)}; 1-min load average {load_start[0]:.2f} at start, "
      f"{load_end[0]:.2f} at end (other jobs share the cores)",
      f"- versions: {environment.versions(PACKAGES)}",
      f"- compute: {'bfloat16 on GPU' if use_gpu else 'float32 on CPU'}"
      f"{' (bf16 column: the same step with bfloat16 compute)' if bf16_column else ''}; "
      + ("PyTorch under torch.autocast(bfloat16), channels-last" if use_gpu else
         f"JAX on all cores, PyTorch torch.set_num_threads({os.cpu_count()})"),
      f"- step: forward + loss (sigmoid BCE for segmentation, softmax CE over 1000 classes for "
      f"classifiers) + backward + Adam, BatchNorm in train mode; jitted with the state donated; "
      f"{args.warmup} warm-up step(s) after compilation, median of {args.steps} timed step(s)",
      f"- ceiling: {args.matmul_n}x{args.matmul_n} matmul, " + ", ".join(
          f"{k} {v:.1f} GFLOP/s" for k, v in ceiling.items()),
      "- GFLOP/step: XLA cost analysis of the compiled flaxderm step; PyTorch GFLOP/s divides the "
      "same count by PyTorch's step time. XLA peak = temp + argument + output bytes of the "
      "compiled step. flaxderm/PyTorch > 1 means flaxderm is faster.",
      f"- largest batch: the largest batch whose compiled step's XLA peak fits in "
      f"{limit / 2 ** 30:.0f} GiB ({'the GPU allocator limit' if use_gpu else 'physical memory'}),"
      f" from the line through the two batch sizes' peaks, checked by compiling it",
      f"- XLA options: {options or 'XLA defaults'}"
      f"{' (--xla-defaults)' if args.xla_defaults else ''}",
      *(f"- {n}" for n in notes),
      f"- runtime of the whole run: {runtime:.0f} s", "", *rows, ""]
  environment.record("\n".join(lines), append=not args.no_append)


if __name__ == "__main__":
  main()
