"""Training throughput of jaxcl's loop against the machine's matmul peak.

For each strategy: compile time, steps/s, samples/s, FLOPs per step (XLA's
cost analysis of one compiled step), achieved FLOP/s and that as a fraction
of the float32 matmul peak measured on the same device in the same run, and
the cost of a step relative to the naive step. Runs one long experience of
synthetic MNIST-shaped data (steps x batch samples; CIFAR-shaped 32x32x3 for
the convolutional models), so the timed part is the library's hot loop: one
compiled executable, `lax.scan` over steps.

The experience is trained for ``--epochs`` and for twice as many: the
difference is the marginal cost of a step ("step us", "x first step"),
without the per-experience work that the strategy does once (EWC's and MAS's
importance pass, buffer insertion), which is printed apart ("per-exp s").
The other columns are of the whole ``--epochs`` run, that work included.

Usage:
  python examples/benchmark_throughput.py
  python examples/benchmark_throughput.py --strategies naive,ewc,si,mas,lwf,replay \
      --batch-size 32 --steps 2000 --hidden-size 512
  python examples/benchmark_throughput.py --seeds 8     # vmapped seeds vs one seed
  python examples/benchmark_throughput.py --model simple_cnn --steps 200 \
      [--jax-conv-gradients]   # JAX's own convolution gradients, for comparison
"""

import argparse
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxcl
from jaxcl.training import loop


CONV_MODELS = ("simple_cnn", "slim_resnet18", "resnet32")


def synthetic_benchmark(n_samples: int, image_shape=(28, 28, 1)):
  """One experience of uint8 images of 10 classes (MNIST-shaped by default)."""
  rng = np.random.default_rng(0)
  x = rng.integers(0, 256, (n_samples, *image_shape), dtype=np.uint8)
  y = np.tile(np.arange(10), n_samples // 10 + 1)[:n_samples]
  test = (x[:1000], y[:1000])
  bench = jaxcl.benchmarks.class_incremental(
      (x, y), test, 1, fixed_class_order=range(10),
      preprocess=jaxcl.benchmarks.normalizer(0.1307, 0.3081))
  return bench


def step_flops(model, strategy, optimizer, bench, batch_size: int) -> float:
  """FLOPs of one training step, from XLA's cost analysis of that step."""
  ctx = jaxcl.training.make_context(model, bench, optimizer,
                                    batch_size=batch_size)
  sample = jnp.asarray(bench.train_stream[0].x[:1])
  state = jax.eval_shape(lambda: loop.init_state(
      ctx, strategy, optimizer, jax.random.key(0), sample,
      jnp.zeros((1,), jnp.int32)))
  batch = {"x": jax.ShapeDtypeStruct((batch_size,) + sample.shape[1:], sample.dtype),
           "y": jax.ShapeDtypeStruct((batch_size,), jnp.int32),
           "task": jax.ShapeDtypeStruct((batch_size,), jnp.int32),
           "weight": jax.ShapeDtypeStruct((batch_size,), jnp.float32)}
  step = loop.make_train_step(ctx, strategy, optimizer)
  compiled = jax.jit(step).lower(state, batch, jax.random.key(0)).compile()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost["flops"])


def measure(name: str, args, peak: float, seeds: int | None = None,
            batch_size: int | None = None) -> dict:
  batch_size = batch_size or args.batch_size
  if args.model == "mlp":
    bench = synthetic_benchmark(args.steps * batch_size)
    model = jaxcl.models.MLP(10, hidden_size=args.hidden_size,
                             drop_rate=args.drop_rate)
  else:
    bench = synthetic_benchmark(args.steps * batch_size, (32, 32, 3))
    model = jaxcl.models.MODELS[args.model](
        num_classes=10, native_cpu_gradients=not args.jax_conv_gradients)
  strategy = jaxcl.strategies.from_spec(name)
  optimizer = optax.sgd(0.01)
  batch = batch_size
  if name.split("+")[0] == "replay":
    batch = 2 * batch_size  # Current + memory samples per step.
  flops = step_flops(model, strategy, optimizer, bench, batch_size)
  best: dict[int, dict] = {}
  for _ in range(args.repeats):
    for epochs in (args.epochs, 2 * args.epochs):
      result = jaxcl.fit(model, strategy, optimizer, bench, epochs=epochs,
                         batch_size=batch_size,
                         seeds=list(range(seeds)) if seeds else None,
                         eval_before_training=False, progress=False)
      if (epochs not in best or
          result.timings["train_s"] < best[epochs]["train_s"]):
        best[epochs] = dict(result.timings)
  step_s = ((best[2 * args.epochs]["train_s"] - best[args.epochs]["train_s"])
            / (args.steps * args.epochs))
  best = best[args.epochs]
  steps_per_s = args.steps * args.epochs / best["train_s"]
  runs = seeds or 1
  label = f"{name} x{seeds} seeds" if seeds else name
  if batch_size != args.batch_size:
    label = f"{name} (batch {batch_size})"
  return {"name": label,
          "compile_s": best["compile_s"], "steps_per_s": steps_per_s,
          "samples_per_s": steps_per_s * batch * runs,
          "flops_per_step": flops * runs,
          "flops_per_s": flops * runs * steps_per_s,
          "peak_fraction": flops * runs * steps_per_s / peak,
          "step_ms": 1e3 / steps_per_s, "marginal_step_s": step_s,
          "per_experience_s": best["train_s"] - args.steps * args.epochs * step_s}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--strategies", default="naive",
                      help="comma-separated strategy specs")
  parser.add_argument("--batch-size", type=int, default=32)
  parser.add_argument("--steps", type=int, default=2000)
  parser.add_argument("--model", default="mlp", choices=("mlp", *CONV_MODELS))
  parser.add_argument("--jax-conv-gradients", action="store_true",
                      help="convolutional models: JAX's own gradient rules "
                      "instead of TorchConv's native CPU ones")
  parser.add_argument("--hidden-size", type=int, default=512)
  parser.add_argument("--drop-rate", type=float, default=0.0)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--epochs", type=int, default=1,
                      help="epochs over the experience; per-experience work "
                      "(importance estimation, buffer insertion) is amortised "
                      "over them")
  parser.add_argument("--seeds", type=int, default=0,
                      help="also time this many vmapped seeds of the first strategy")
  args = parser.parse_args()
  # A chain of four matmuls per call: dispatch overhead does not hide the peak.
  peak = jaxcl.evaluation.system.matmul_peak_flops(chain=4, repeats=10)
  print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), "
        f"jax {jax.__version__}, {os.cpu_count()} CPUs; matmul peak "
        f"{peak / 1e9:.1f} GFLOP/s")
  model = (f"MLP 784-{args.hidden_size}-10" if args.model == "mlp" else
           f"{args.model} on 32x32x3" + (", JAX's conv gradients"
                                         if args.jax_conv_gradients else ""))
  print(f"{model}, batch {args.batch_size}, "
        f"{args.steps} steps x {args.epochs} epochs, best of {args.repeats}")
  names = args.strategies.split(",")
  rows = [measure(name, args, peak) for name in names]
  if any(n.split("+")[0] == "replay" for n in names):
    # A replay step carries batch + batch_size_mem samples: compare it with a
    # naive step of the same total batch.
    rows.append(measure("naive", args, peak, batch_size=2 * args.batch_size))
  if args.seeds:
    rows.append(measure(args.strategies.split(",")[0], args, peak, args.seeds))
  naive_ms, naive_step = rows[0]["step_ms"], rows[0]["marginal_step_s"]
  header = (f"{'strategy':<22}{'compile s':>10}{'steps/s':>10}{'samples/s':>11}"
            f"{'MFLOP/step':>12}{'GFLOP/s':>9}{'of peak':>9}{'x first':>9}"
            f"{'step us':>9}{'x first step':>14}{'per-exp s':>11}")
  print(header)
  for r in rows:
    print(f"{r['name']:<22}{r['compile_s']:>10.2f}{r['steps_per_s']:>10.0f}"
          f"{r['samples_per_s']:>11.0f}{r['flops_per_step'] / 1e6:>12.1f}"
          f"{r['flops_per_s'] / 1e9:>9.1f}{r['peak_fraction']:>9.0%}"
          f"{r['step_ms'] / naive_ms:>9.2f}{r['marginal_step_s'] * 1e6:>9.0f}"
          f"{r['marginal_step_s'] / naive_step:>14.2f}"
          f"{r['per_experience_s']:>11.3f}")


if __name__ == "__main__":
  main()
