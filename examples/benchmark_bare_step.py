"""The naive MLP step without the library, against jaxcl's loop, same process.

A bare `lax.scan` over pre-sliced float batches (the same Flax MLP 784-512-10
and optax SGD, FLOPs per step from XLA's cost analysis) next to
`benchmark_throughput.py`'s measurement of jaxcl's loop: what the library adds
on top of what XLA achieves for this step, as fractions of the matmul peak.

Usage:
  python examples/benchmark_bare_step.py [--steps 2000] [--batch-size 32]
"""

import argparse
import sys
import time
from pathlib import Path

import jax
import optax

import jaxcl

sys.path.insert(0, str(Path(__file__).parent))
import benchmark_throughput  # noqa: E402  (sibling script)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=2000)
  parser.add_argument("--batch-size", type=int, default=32)
  args = parser.parse_args()
  peak = jaxcl.evaluation.system.matmul_peak_flops(chain=4, repeats=10)
  model = jaxcl.models.MLP(10, hidden_size=512, drop_rate=0.0)
  key = jax.random.key(0)
  xs = jax.random.normal(key, (args.steps, args.batch_size, 28, 28, 1))
  ys = jax.random.randint(key, (args.steps, args.batch_size), 0, 10)
  params = model.init(key, xs[0])
  optimizer = optax.sgd(0.01)

  def loss(p, x, y):
    logits = model.apply(p, x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  def train(p, xs, ys):
    def body(carry, batch):
      p, s = carry
      updates, s = optimizer.update(jax.grad(loss)(p, *batch), s, p)
      return (optax.apply_updates(p, updates), s), None
    return jax.lax.scan(body, (p, optimizer.init(p)), (xs, ys))[0]

  run = jax.jit(train)
  jax.block_until_ready(run(params, xs, ys))
  best = float("inf")
  for _ in range(3):
    start = time.perf_counter()
    jax.block_until_ready(run(params, xs, ys))
    best = min(best, time.perf_counter() - start)
  cost = jax.jit(jax.grad(loss)).lower(params, xs[0], ys[0]).compile().cost_analysis()
  flops = (cost[0] if isinstance(cost, (list, tuple)) else cost)["flops"]
  print(f"matmul peak {peak / 1e9:.1f} GFLOP/s")
  print(f"bare scan: {args.steps / best:.0f} steps/s, {flops / 1e6:.1f} MFLOP/step, "
        f"{args.steps * flops / best / peak:.0%} of peak")
  settings = argparse.Namespace(batch_size=args.batch_size, steps=args.steps,
                                model="mlp", jax_conv_gradients=False,
                                hidden_size=512, drop_rate=0.0, repeats=3,
                                epochs=1)
  row = benchmark_throughput.measure("naive", settings, peak)
  print(f"jaxcl loop: {row['steps_per_s']:.0f} steps/s, "
        f"{row['flops_per_step'] / 1e6:.1f} MFLOP/step, "
        f"{row['peak_fraction']:.0%} of peak")


if __name__ == "__main__":
  main()
