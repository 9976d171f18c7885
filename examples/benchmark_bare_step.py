"""The naive MLP step without the library, against jaxcl's loop, same process.

A bare `lax.scan` over pre-sliced float batches (the same Flax MLP 784-512-10
and optax SGD, FLOPs per step from XLA's cost analysis) next to
`benchmark_throughput.py`'s measurement of jaxcl's loop: what the library adds
on top of what XLA achieves for this step, as fractions of the matmul peak.

With ``--penalty``, also an EWC-style penalty ``λ Σ F ⊙ (θ − θ*)²`` in the
bare step: its gradient alone, then with its value in the loss (as EWC's
training loss has it) summed by one reduction and as the sums of two halves
(as jaxcl sums it on a CPU), next to jaxcl's EWC step (marginal cost of a step,
without the importance pass; see benchmark_throughput.py). With ``--si``,
that step plus SI's path integral ``ω += g ⊙ (θ_new − θ_old)``, and with the
optimizer's updates in place of ``θ_new − θ_old``, next to jaxcl's SI step.

Usage:
  python examples/benchmark_bare_step.py [--steps 2000] [--batch-size 32]
      [--penalty] [--si]
"""

import argparse
import sys
import time
from pathlib import Path

import jax
import optax

import jaxcl
# The helper jaxcl's penalties sum with, timed here in the bare step.
from jaxcl.strategies.regularization import _sum_in_halves

sys.path.insert(0, str(Path(__file__).parent))
import benchmark_throughput  # noqa: E402  (sibling script)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=2000)
  parser.add_argument("--batch-size", type=int, default=32)
  parser.add_argument("--penalty", action="store_true",
                      help="also time an EWC-style quadratic penalty")
  parser.add_argument("--si", action="store_true",
                      help="also time the penalty with SI's path integral")
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

  def timed(value_and_grads, path_step=None):
    """Best of 3 seconds of a scan over every batch with this step's gradients.

    ``path_step(path, grads, updates, new, old) -> path`` accumulates a
    parameter-sized path integral as well (SI's).
    """
    def train(p, xs, ys):
      def body(carry, batch):
        p, s, path, total = carry
        value, grads = value_and_grads(p, *batch)
        updates, s = optimizer.update(grads, s, p)
        new = optax.apply_updates(p, updates)
        if path_step is not None:
          path = path_step(path, grads, updates, new, p)
        return (new, s, path, total + value), None
      path = None if path_step is None else jax.tree.map(jax.numpy.zeros_like, p)
      return jax.lax.scan(body, (p, optimizer.init(p), path, 0.0), (xs, ys))[0]

    run = jax.jit(train)
    jax.block_until_ready(run(params, xs, ys))
    best = float("inf")
    for _ in range(3):
      start = time.perf_counter()
      jax.block_until_ready(run(params, xs, ys))
      best = min(best, time.perf_counter() - start)
    return best

  best = timed(jax.value_and_grad(loss))

  def one_step(p, s, x, y):  # The scan body's work: gradient and update.
    grads = jax.grad(loss)(p, x, y)
    updates, s = optimizer.update(grads, s, p)
    return optax.apply_updates(p, updates), s
  cost = jax.jit(one_step).lower(params, optimizer.init(params), xs[0],
                                 ys[0]).compile().cost_analysis()
  flops = (cost[0] if isinstance(cost, (list, tuple)) else cost)["flops"]
  print(f"matmul peak {peak / 1e9:.1f} GFLOP/s")
  print(f"bare scan: {args.steps / best:.0f} steps/s, {flops / 1e6:.1f} MFLOP/step, "
        f"{args.steps * flops / best / peak:.0%} of peak")
  settings = argparse.Namespace(batch_size=args.batch_size, steps=args.steps,
                                model="mlp", jax_conv_gradients=False,
                                hidden_size=512, drop_rate=0.0, repeats=3,
                                epochs=1)
  row = benchmark_throughput.measure("naive", settings, peak)
  # A whole fit's steps/s carries its per-fit constant (the new program's
  # first run, the end-of-experience wait: 16-20 ms); the marginal step,
  # from fits of one and two epochs, is the per-step cost the bare scan's is.
  print(f"jaxcl loop: {row['steps_per_s']:.0f} steps/s over a whole fit, "
        f"{row['flops_per_step'] / 1e6:.1f} MFLOP/step, "
        f"{row['peak_fraction']:.0%} of peak; marginal step "
        f"{row['marginal_step_s'] * 1e6:.0f} us against the bare "
        f"{best / args.steps * 1e6:.0f} us")
  if args.penalty or args.si:
    time_penalty(timed, loss, params, best / args.steps, row, settings, peak,
                 penalty_steps=args.penalty, si_steps=args.si)


def time_penalty(timed, loss, params, naive_step, naive_row, settings, peak,
                 penalty_steps, si_steps):
  """Bare steps with an EWC-style penalty (and SI's path), jaxcl's, x naive."""
  key = jax.random.key(1)
  importance = jax.tree.map(
      lambda p: jax.random.uniform(key, p.shape, p.dtype, 0.0, 1e-3), params)
  anchor = jax.tree.map(lambda p: p + 0.01, params)
  lam = 1.0

  def penalty(p, total=jax.numpy.sum):
    return lam * sum(
        total(f * jax.numpy.square(q - a)) for f, q, a in zip(
            *map(jax.tree.leaves, (importance, p, anchor))))

  def gradient_only(p, x, y):
    value, grads = jax.value_and_grad(loss)(p, x, y)
    return value, jax.tree.map(lambda g, f, q, a: g + 2 * lam * f * (q - a),
                               grads, importance, p, anchor)

  with_value = jax.value_and_grad(lambda p, x, y: loss(p, x, y) + penalty(p))
  with_value_in_halves = jax.value_and_grad(
      lambda p, x, y: loss(p, x, y) + penalty(p, _sum_in_halves))
  steps = []
  if penalty_steps:
    steps += [("penalty gradient only", gradient_only, None),
              ("penalty gradient and value", with_value, None)]
  steps.append(("penalty gradient and value summed in halves",
                with_value_in_halves, None))
  if si_steps:
    steps += [("SI step (halves, path from new - old params)",
               with_value_in_halves,
               lambda path, g, u, new, old: jax.tree.map(
                   lambda w, g, n, o: w + g * (n - o), path, g, new, old)),
              ("SI step (halves, path from the optimizer's updates)",
               with_value_in_halves,
               lambda path, g, u, new, old: jax.tree.map(
                   lambda w, g, u: w + g * u, path, g, u))]
  for name, step, path_step in steps:
    per_step = timed(step, path_step) / settings.steps
    print(f"bare {name}: {per_step * 1e6:.0f} us/step, "
          f"{per_step / naive_step:.2f}x the bare naive step")
  for strategy in [name for name, wanted in (("ewc", penalty_steps),
                                             ("si", si_steps)) if wanted]:
    row = benchmark_throughput.measure(strategy, settings, peak)
    print(f"jaxcl {strategy} step: {row['marginal_step_s'] * 1e6:.0f} us, "
          f"{row['marginal_step_s'] / naive_row['marginal_step_s']:.2f}x "
          "jaxcl's naive step")


if __name__ == "__main__":
  main()
