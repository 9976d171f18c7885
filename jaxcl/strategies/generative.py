"""Generative replay: a VAE trained alongside the classifier replays old data.

Shin et al., "Continual Learning with Deep Generative Replay", NeurIPS 2017,
as Avalanche implements it (``GenerativeReplay``, ``GenerativeReplayPlugin``,
``MlpVAE``, ``VAE_loss``, ``VAETraining``). A *scholar* is a solver (the
trained model) and a generator (:class:`MlpVAE`). From the second experience
on, every training batch is extended with samples drawn from the generator
frozen at the end of the previous experience, labelled with the argmax of the
solver frozen at the same moment (restricted to the classes seen by then).
The generator learns on the same extended batches, one Adam step per
training step, so it keeps modelling the old data while it learns the new.

Everything lives in the strategy's ``cl_state`` at fixed shapes (the
generator's parameters and optimizer state, the frozen generator and solver),
so a stream still compiles once. The generator models raw inputs scaled to
``[0, 1]`` (integer inputs are divided by their dtype's maximum, 255 for
uint8 images; float inputs are taken to be in ``[0, 1]`` already); its
encoder reads the benchmark's preprocessed inputs, flattened, and generated
samples are written back in the raw dtype, so the training loop preprocesses
them like real ones.

Example:
  >>> import optax, jaxcl
  >>> strategy = generative_replay(latent_dim=8)
  >>> strategy.name
  'generative_replay'
  >>> result = jaxcl.fit(jaxcl.models.MLP(10), strategy, optax.adam(1e-3),
  ...                    jaxcl.benchmarks.split_mnist())  # doctest: +SKIP
"""

from __future__ import annotations

import math
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax
from flax import linen as nn

from jaxcl import _validation
from jaxcl.models.mlp import TorchLinear
from jaxcl.strategies.base import Strategy, StrategyContext
from jaxcl.strategies.buffers import concat_batches
from jaxcl.strategies.model_utils import init_model_state, refuse_task_labels

__all__ = [
    "RECONSTRUCTIONS",
    "GenerativeReplayState",
    "MlpVAE",
    "gaussian_kl",
    "generate",
    "generative_replay",
    "vae_loss",
]

PyTree = Any

RECONSTRUCTIONS = ("bce", "mse")
"""Reconstruction terms of :func:`vae_loss`."""

# Widths of Avalanche's MlpVAE between the 400-unit layer and the latent
# heads, and of its decoder's hidden layers.
_ENCODER_FEATURES = 128
_DECODER_HIDDEN = (64, 128, 256)


class MlpVAE(nn.Module):
  """Avalanche's ``MlpVAE``: a fully connected variational autoencoder.

  Encoder ``n_features -> hidden`` (batch normalisation) ``-> 128``, two
  linear heads for the mean and log-variance of ``q(z|x)``; decoder
  ``latent_dim -> 64 -> 128 -> 256 -> n_features``, whose outputs are the
  logits of pixel intensities in ``[0, 1]``. Hidden layers use leaky ReLU;
  layers are initialised like PyTorch's ``nn.Linear``. The encoder only runs
  while the VAE trains, so its batch normalisation always uses the batch's
  statistics (over the rows of ``mask``); apply it with
  ``mutable=["batch_stats"]`` and drop the running averages, which nothing
  reads (generation only decodes).

  Attributes:
    n_features: Size of a flattened input sample.
    latent_dim: Dimension of the latent code ``z``.
    hidden: Width of the encoder's first layer.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> vae = MlpVAE(n_features=6, latent_dim=2, hidden=8)
    >>> x, eps = jnp.zeros((3, 6)), jnp.zeros((3, 2))
    >>> params = vae.init(jax.random.key(0), x, eps)["params"]
    >>> out, _ = vae.apply({"params": params}, x, eps, mutable=["batch_stats"])
    >>> [a.shape for a in out]
    [(3, 6), (3, 2), (3, 2)]
  """

  n_features: int
  latent_dim: int = 2
  hidden: int = 400

  def setup(self):
    self.encoder_in = TorchLinear(self.hidden)
    self.norm = nn.BatchNorm(use_running_average=False, epsilon=1e-5)
    self.encoder_out = TorchLinear(_ENCODER_FEATURES)
    self.mean = TorchLinear(self.latent_dim)
    self.logvar = TorchLinear(self.latent_dim)
    self.decoder = [TorchLinear(w) for w in _DECODER_HIDDEN]
    self.output = TorchLinear(self.n_features)

  def encode(self, x: jax.Array, mask: jax.Array | None = None
             ) -> tuple[jax.Array, jax.Array]:
    """Means and log-variances of ``q(z|x)``, ``[batch, latent_dim]`` each.

    ``mask`` (``bool[batch]``) selects the rows of the batch statistics.
    """
    if mask is not None:
      mask = mask[:, None]
    x = nn.leaky_relu(self.norm(self.encoder_in(x), mask=mask))
    x = nn.leaky_relu(self.encoder_out(x))
    return self.mean(x), self.logvar(x)

  def decode(self, z: jax.Array) -> jax.Array:
    """``[batch, latent_dim] ->`` intensity logits ``[batch, n_features]``."""
    for layer in self.decoder:
      z = nn.leaky_relu(layer(z))
    return self.output(z)

  def __call__(self, x: jax.Array, eps: jax.Array,
               mask: jax.Array | None = None
               ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Encodes, samples ``z = mean + exp(logvar / 2) * eps`` and decodes.

    Returns:
      ``(logits, mean, logvar)``.
    """
    mean, logvar = self.encode(x, mask)
    return self.decode(mean + jnp.exp(0.5 * logvar) * eps), mean, logvar


def gaussian_kl(mean: jax.Array, logvar: jax.Array) -> jax.Array:
  """``KL(N(mean, exp(logvar)) ‖ N(0, I))`` per sample (summed over dims).

  Closed form ``½ Σ (exp(logvar) + mean² − 1 − logvar)``.

  Example:
    >>> import jax.numpy as jnp
    >>> float(gaussian_kl(jnp.array([[1.0, 0.0]]), jnp.zeros((1, 2)))[0])
    0.5
  """
  return 0.5 * jnp.sum(jnp.exp(logvar) + mean ** 2 - 1.0 - logvar, axis=-1)


def _unit_scale(dtype) -> float:
  """The raw value of intensity 1: an integer dtype's maximum, else 1."""
  if jnp.issubdtype(dtype, jnp.integer):
    return float(jnp.iinfo(dtype).max)
  return 1.0


def _flat(x: jax.Array) -> jax.Array:
  return x.reshape(x.shape[0], -1)


def vae_loss(ctx: StrategyContext, vae: MlpVAE, params: PyTree, x: jax.Array,
             key: jax.Array, reconstruction: str = "mse",
             mask: jax.Array | None = None) -> jax.Array:
  """Per-sample negative ELBO of raw inputs ``x``: reconstruction + KL.

  The encoder reads ``ctx.preprocess(x)`` flattened; ``z`` is drawn with
  ``eps = jax.random.normal(key, [batch, latent_dim])``. The reconstruction
  term, summed over input features, is

  - ``"mse"`` (Avalanche's ``VAE_loss``): the squared error between the
    preprocessed input and the preprocessed decoded intensities,
    ``Σ (preprocess(scale · sigmoid(logits)) − preprocess(x))²``, i.e. in
    the normalised space the classifier sees;
  - ``"bce"``: the Bernoulli negative log-likelihood of the intensities
    ``x / scale`` in ``[0, 1]`` under ``sigmoid(logits)``.

  ``scale`` is the raw value of intensity 1 (255 for uint8 inputs, 1 for
  floats).

  Args:
    ctx: Strategy context (preprocessing, input shape and dtype).
    vae: The generator module.
    params: Its parameters.
    x: Raw inputs ``[batch, *ctx.input_shape]``.
    key: Key of the reparameterisation noise.
    reconstruction: ``"mse"`` or ``"bce"``.
    mask: ``bool[batch]``, the rows of the encoder's batch statistics
      (default: all).

  Returns:
    ``[batch]`` losses.

  Example:
    >>> losses = vae_loss(ctx, MlpVAE(784), params, x, key)  # doctest: +SKIP
  """
  inputs = _flat(ctx.preprocess(x))
  eps = jax.random.normal(key, (x.shape[0], vae.latent_dim))
  (logits, mean, logvar), _ = vae.apply({"params": params}, inputs, eps, mask,
                                       mutable=["batch_stats"])
  scale = _unit_scale(ctx.x_dtype)
  if reconstruction == "bce":
    target = _flat(x).astype(jnp.float32) / scale
    error = optax.sigmoid_binary_cross_entropy(logits, target)
  else:
    decoded = (scale * jax.nn.sigmoid(logits)).reshape(x.shape)
    error = (_flat(ctx.preprocess(decoded)) - inputs) ** 2
  return jnp.sum(error, axis=-1) + gaussian_kl(mean, logvar)


def generate(ctx: StrategyContext, vae: MlpVAE, params: PyTree, key: jax.Array,
             n: int) -> jax.Array:
  """Draws ``n`` raw inputs: the decoded intensities of ``z ~ N(0, I)``.

  The mean intensities are scaled to the raw range and cast to
  ``ctx.x_dtype`` (rounded for integer dtypes), so that they concatenate
  with real batches and are preprocessed like them.

  Args:
    ctx: Strategy context (input shape and dtype).
    vae: The generator module.
    params: Its parameters.
    key: Key of the latent codes.
    n: Number of samples.

  Returns:
    ``[n, *ctx.input_shape]`` of ``ctx.x_dtype``.

  Example:
    >>> x = generate(ctx, MlpVAE(784), params, key, 32)  # doctest: +SKIP
  """
  z = jax.random.normal(key, (n, vae.latent_dim))
  logits = vae.apply({"params": params}, z, method=MlpVAE.decode)
  x = _unit_scale(ctx.x_dtype) * jax.nn.sigmoid(logits)
  if jnp.issubdtype(ctx.x_dtype, jnp.integer):
    x = jnp.round(x)
  return x.astype(ctx.x_dtype).reshape((n, *ctx.input_shape))


@flax.struct.dataclass
class GenerativeReplayState:
  """State of :func:`generative_replay`.

  Attributes:
    generator: Parameters of the :class:`MlpVAE` being trained.
    generator_opt_state: Its optax state (the learning rate and weight decay
      sit in it as arrays, ``optax.inject_hyperparams``, so they can be swept
      with ``vmap``).
    old_generator: The generator frozen at the end of the last experience.
    old_params: The solver's parameters frozen at the same moment.
    old_model_state: The solver's model state frozen at the same moment.
    old_seen: ``bool[n_classes]``, the classes seen up to then: the labels
      given to generated samples.
    experiences: Number of experiences trained so far (float32); replay
      starts when it is positive.
  """

  generator: PyTree
  generator_opt_state: PyTree
  old_generator: PyTree
  old_params: PyTree
  old_model_state: PyTree
  old_seen: jax.Array
  experiences: jax.Array


def _rows_that_count(x: jax.Array, counts: jax.Array) -> jax.Array:
  """``x`` with the rows outside ``counts`` (``bool[batch]``) set to row 0.

  Rows that weigh nothing (padding, generated rows before replay starts)
  get no gradient and are left out of the batch statistics, so the encoder
  may drift far on them; an infinite loss there would still poison the
  gradient (``0 · ∞ = NaN``).
  """
  keep = counts.reshape((-1,) + (1,) * (x.ndim - 1))
  return jnp.where(keep, x, x[:1])


def _generator_adam(learning_rate: float,
                    weight_decay: float) -> optax.GradientTransformation:
  """Adam with PyTorch's ``weight_decay`` (added to the gradient, not AdamW)."""
  return optax.chain(optax.add_decayed_weights(weight_decay),
                     optax.adam(learning_rate))


def generative_replay(latent_dim: int = 2, generator_hidden: int = 400,
                      generator_lr: float = 1e-3, reconstruction: str = "mse",
                      replay_size: int = 0,
                      increasing_replay_size: bool = False,
                      generator_weight_decay: float = 0.0,
                      reset_generator_optimizer: bool = False) -> Strategy:
  """Deep generative replay with an MLP VAE (Avalanche's ``GenerativeReplay``).

  Each step, ``replay_size`` samples drawn from the frozen previous generator
  and labelled ``argmax`` of the frozen previous solver over the classes seen
  before are appended to the batch (from the second experience on; before,
  they weigh 0). The task loss is the weighted mean over the extended batch:
  with ``replay_size=0`` the generated rows together weigh as much as the
  real rows (Avalanche: as many generated as real samples, one mean), or
  ``k`` times as much with ``increasing_replay_size`` after ``k`` experiences
  (Avalanche generates ``k`` times the batch; the new experience's share of
  the loss is then ``1/(k+1)``, Shin et al.'s ratio); with ``replay_size > 0``
  every row weighs 1. After the solver's update, the generator takes one
  Adam step on the VAE loss (:func:`vae_loss`, summed over the batch's rows
  with the same weights, as Avalanche sums it). At the end of each experience the generator, the
  solver and the seen classes are frozen for the next one.

  Args:
    latent_dim: Dimension of the VAE's latent code (Avalanche's ``nhid``,
      2 in ``GenerativeReplay``).
    generator_hidden: Width of the VAE encoder's first layer.
    generator_lr: Adam learning rate of the generator.
    reconstruction: ``"mse"`` (in the preprocessed space, as Avalanche) or
      ``"bce"`` (Bernoulli likelihood of intensities in ``[0, 1]``).
    replay_size: Generated samples per step; 0 means the training batch size
      (Avalanche's ``None``).
    increasing_replay_size: Weigh the generated rows by the number of
      experiences trained (only with ``replay_size=0``, as Avalanche ignores
      it otherwise).
    generator_weight_decay: L2 weight decay of the generator's Adam, added to
      its gradient as PyTorch's ``Adam(weight_decay=...)`` does (Avalanche's
      default generator: 1e-4).
    reset_generator_optimizer: Start every experience with a fresh Adam
      state for the generator (its learning rate kept), as the Avalanche
      releases that reset optimizers between experiences did for the
      generator's trainer too; ``fit(reset_optimizer=True)`` resets the
      solver's only.

  Returns:
    The strategy; its ``cl_state`` is a :class:`GenerativeReplayState`.

  Raises:
    ValueError: On invalid hyperparameters; at initialisation, if the stream
      has several task labels (generated samples have no task of their own)
      or signed integer inputs (the decoder's intensities in [0, 1] map to
      raw values in [0, the dtype's maximum]).

  Example:
    >>> generative_replay(latent_dim=16, reconstruction="bce").name
    'generative_replay'
  """
  latent_dim = _validation.check_positive_int("latent_dim", latent_dim)
  generator_hidden = _validation.check_positive_int("generator_hidden",
                                                    generator_hidden)
  generator_lr = _validation.check_in_range(
      "generator_lr", generator_lr, low=0.0, low_inclusive=False)
  reconstruction = _validation.check_choice("reconstruction", reconstruction,
                                            RECONSTRUCTIONS)
  # False and 0.0 equal 0 but are not sizes.
  replay_size = _validation.check_non_negative_int(
      "replay_size (0: the training batch size)", replay_size)
  if not isinstance(increasing_replay_size, bool):
    raise TypeError(f"increasing_replay_size must be a bool, got "
                    f"{increasing_replay_size!r}.")
  if increasing_replay_size and replay_size:
    raise ValueError(f"increasing_replay_size applies only with replay_size=0 "
                     f"(replay as many samples as the batch), got "
                     f"replay_size={replay_size}.")
  generator_weight_decay = _validation.check_in_range(
      "generator_weight_decay", generator_weight_decay, low=0.0)
  _validation.check_bool("reset_generator_optimizer",
                         reset_generator_optimizer)
  optimizer = optax.inject_hyperparams(_generator_adam)(
      learning_rate=generator_lr, weight_decay=generator_weight_decay)

  def vae_for(ctx):
    return MlpVAE(n_features=math.prod(ctx.input_shape), latent_dim=latent_dim,
                  hidden=generator_hidden)

  def init(ctx, params, key):
    refuse_task_labels(
        ctx, "generative_replay needs a stream with one task label: "
        "generated samples are labelled by the previous solver and carry no "
        "task of their own (Avalanche's GenerativeReplay ignores task "
        "labels).")
    if jnp.issubdtype(ctx.x_dtype, jnp.signedinteger):
      raise ValueError(
          f"generative_replay maps the decoder's intensities in [0, 1] to raw "
          f"inputs in [0, max] of an unsigned integer dtype (uint8 pixels: "
          f"[0, 255]) or to floats in [0, 1]; got inputs of dtype "
          f"{jnp.dtype(ctx.x_dtype).name}, whose maximum "
          f"({jnp.iinfo(ctx.x_dtype).max}) is no pixel's intensity. Give the "
          f"benchmark uint8 pixels or floats in [0, 1].")
    vae = vae_for(ctx)
    vae_key, state_key = jax.random.split(key)
    generator = vae.init(vae_key, jnp.zeros((1, vae.n_features)),
                         jnp.zeros((1, latent_dim)))["params"]
    return GenerativeReplayState(
        generator=generator, generator_opt_state=optimizer.init(generator),
        old_generator=generator, old_params=params,
        old_model_state=init_model_state(ctx, state_key),
        old_seen=jnp.zeros(ctx.n_classes, bool),
        experiences=jnp.zeros((), jnp.float32))

  def transform_batch(ctx, cl_state, batch, key):
    n = replay_size or ctx.batch_size
    x = generate(ctx, vae_for(ctx), cl_state.old_generator, key, n)
    task = jnp.broadcast_to(batch["task"][0], (n,))
    logits = ctx.logits(cl_state.old_params, cl_state.old_model_state, x, task)
    y = jnp.argmax(jnp.where(cl_state.old_seen, logits, -jnp.inf), axis=-1)
    if replay_size:
      weight = 1.0
    else:
      times = cl_state.experiences if increasing_replay_size else 1.0
      # The current rows only: a strategy before it in a chain may have
      # appended memory rows.
      weight = jnp.sum(batch["weight"][:ctx.batch_size]) * times / n
    weight = jnp.where(cl_state.experiences > 0, weight, 0.0)
    return concat_batches(batch, {
        "x": x, "y": y.astype(batch["y"].dtype), "task": task,
        "weight": jnp.full((n,), weight, jnp.float32)})

  def after_step(ctx, old_state, new_state, grads, batch, key):
    del old_state, grads
    cl_state = new_state.cl_state
    vae = vae_for(ctx)

    def loss(generator):
      counts = batch["weight"] > 0
      x = _rows_that_count(batch["x"], counts)
      # Batch statistics over every row when none counts (a 0/0 otherwise).
      losses = vae_loss(ctx, vae, generator, x, key, reconstruction,
                        counts | ~jnp.any(counts))
      # Summed over the batch as Avalanche's VAE loss is: Adam ignores the
      # gradient's scale, but its weight decay and eps do not.
      return jnp.sum(losses * batch["weight"])

    updates, opt_state = optimizer.update(
        jax.grad(loss)(cl_state.generator), cl_state.generator_opt_state,
        cl_state.generator)
    return cl_state.replace(
        generator=optax.apply_updates(cl_state.generator, updates),
        generator_opt_state=opt_state)

  def begin_experience(ctx, state, data, key):
    # Here, not at the top: jaxcl.training's package imports the strategies.
    from jaxcl.training import optim
    del ctx, data, key
    cl_state = state.cl_state
    return state.replace(cl_state=cl_state.replace(
        generator_opt_state=optim.reset_optimizer_state(
            optimizer, cl_state.generator_opt_state, cl_state.generator)))

  def end_experience(ctx, state, data, key):
    del ctx, data, key
    cl_state = state.cl_state
    return state.replace(cl_state=cl_state.replace(
        old_generator=cl_state.generator, old_params=state.params,
        old_model_state=state.model_state, old_seen=state.seen_classes,
        experiences=cl_state.experiences + 1))

  resets = ({"begin_experience": begin_experience}
            if reset_generator_optimizer else {})
  return Strategy(name="generative_replay", init=init,
                  transform_batch=transform_batch, after_step=after_step,
                  end_experience=end_experience, **resets)


STRATEGIES = {"generative_replay": generative_replay}
