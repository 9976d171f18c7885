"""Expert Gate: one expert model per experience, chosen by autoencoders.

Aljundi, Chakravarty and Tuytelaars, "Expert Gate: Lifelong Learning with a
Network of Experts", CVPR 2017, as Avalanche's ``ExpertGateStrategy``. Each
experience gets an undercomplete autoencoder of its inputs and an expert: a
copy of the model trained on that experience alone. The new expert starts
from the most related earlier expert (the one whose autoencoder
reconstructs the new data best, relative to the new autoencoder), and is
trained with LwF against it when the two are related enough. At test time
each sample goes to the expert whose autoencoder reconstructs it best, so
no task label is needed.

Example:
  >>> import optax, jaxcl
  >>> strategy = expert_gate(ae_latent_dim=100, rel_thresh=0.85)
  >>> strategy.name
  'expert_gate'
  >>> result = jaxcl.fit(jaxcl.models.MLP(10), strategy, optax.sgd(0.01),
  ...                    jaxcl.benchmarks.split_mnist())  # doctest: +SKIP
"""

from __future__ import annotations

import math
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

from jaxcl import _validation
from jaxcl.strategies.base import Strategy, StrategyContext
from jaxcl.strategies.model_utils import (MASK_VALUE, init_model_state,
                                          refuse_task_labels,
                                          require_optimizer,
                                          restrict_current_classes,
                                          shuffled_batches)
from jaxcl.strategies.regularization import distillation_kl

__all__ = ["ExpertGateState", "autoencoder_errors", "expert_gate"]

PyTree = Any

# Avalanche's autoencoder optimizer: SGD with momentum 0.9, weight decay
# 5e-4 (added to the gradient, as torch's SGD does).
_AE_MOMENTUM = 0.9
_AE_WEIGHT_DECAY = 5e-4


@flax.struct.dataclass
class ExpertGateState:
  """State of :func:`expert_gate`.

  Attributes:
    experts: The experts' parameters, stacked on a leading axis of one slot
      per experience of the stream.
    expert_model_states: Their model states, stacked likewise.
    expert_classes: ``bool[E, n_classes]``, the classes each expert learnt.
    trained: ``bool[E]``, the slots holding a trained expert.
    autoencoders: The autoencoders' parameters (``w_enc [E, d, L]``,
      ``b_enc [E, L]``, ``w_dec [E, L, d]``, ``b_dec [E, d]``).
    current: The slot of the experience being trained.
    current_classes: Its classes.
    related: The expert it started from (-1 for the first).
    relatedness: Its relatedness to the new experience (0 for the first).
    teacher: That expert's parameters, LwF's teacher.
    teacher_model_state: Its model state.
    teacher_classes: Its classes (those LwF distils).
    use_lwf: Whether the experience trains with LwF.
    rel_thresh: Relatedness above which LwF is used.
    lwf_alpha: LwF's weight.
    lwf_temperature: LwF's temperature.
    ae_lr: The autoencoders' learning rate.
  """

  experts: PyTree
  expert_model_states: PyTree
  expert_classes: jax.Array
  trained: jax.Array
  autoencoders: dict[str, jax.Array]
  current: jax.Array
  current_classes: jax.Array
  related: jax.Array
  relatedness: jax.Array
  teacher: PyTree
  teacher_model_state: PyTree
  teacher_classes: jax.Array
  use_lwf: jax.Array
  rel_thresh: jax.Array
  lwf_alpha: jax.Array
  lwf_temperature: jax.Array
  ae_lr: jax.Array


def _gate_inputs(ctx: StrategyContext, x: jax.Array) -> jax.Array:
  """What the autoencoders reconstruct: the preprocessed inputs, flattened
  and squashed by a sigmoid (Avalanche squashes its AlexNet features)."""
  h = ctx.preprocess(x).astype(jnp.float32)
  return jax.nn.sigmoid(h.reshape(h.shape[0], -1))


def _init_autoencoder(key: jax.Array, d: int, latent: int) -> dict:
  """PyTorch's ``nn.Linear`` initialisation: ``U(±1/sqrt(fan_in))``."""
  keys = jax.random.split(key, 4)

  def uniform(k, shape, fan_in):
    bound = 1.0 / math.sqrt(fan_in)
    return jax.random.uniform(k, shape, jnp.float32, -bound, bound)

  return {"w_enc": uniform(keys[0], (d, latent), d),
          "b_enc": uniform(keys[1], (latent,), d),
          "w_dec": uniform(keys[2], (latent, d), latent),
          "b_dec": uniform(keys[3], (d,), latent)}


def _reconstruct(ae: dict, h: jax.Array) -> jax.Array:
  code = jax.nn.relu(h @ ae["w_enc"] + ae["b_enc"])
  return jax.nn.sigmoid(code @ ae["w_dec"] + ae["b_dec"])


def autoencoder_errors(autoencoders: dict, h: jax.Array) -> jax.Array:
  """Each autoencoder's squared reconstruction error of each row.

  Args:
    autoencoders: Stacked parameters (``w_enc [E, d, L]``, ...).
    h: ``[n, d]`` gate inputs.

  Returns:
    ``[n, E]``: ``Σ_j (h_j − r_j)²`` per row and autoencoder (Avalanche's
    ``AE_loss`` sums it over the rows of a batch too).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> ae = jax.tree.map(lambda a: a[None], _init_autoencoder(
    ...     jax.random.key(0), 4, 2))
    >>> autoencoder_errors(ae, jnp.ones((3, 4))).shape
    (3, 1)
  """
  recon = jax.vmap(_reconstruct, in_axes=(0, None))(autoencoders, h)
  return jnp.sum(jnp.square(recon - h[None]), -1).T


def _train_autoencoder(ae: dict, h: jax.Array, valid: jax.Array,
                       key: jax.Array, lr: jax.Array, epochs: int,
                       batch_size: int) -> dict:
  """Avalanche's ``AETraining``: SGD on the summed squared error of each
  mini-batch of the valid rows, reshuffled every epoch."""
  optimizer = optax.chain(optax.add_decayed_weights(_AE_WEIGHT_DECAY),
                          optax.sgd(lr, momentum=_AE_MOMENTUM))

  def loss(ae, rows, weight):
    error = jnp.sum(jnp.square(_reconstruct(ae, rows) - rows), -1)
    return jnp.sum(error * weight)

  def step(carry, batch):
    idx, weight = batch
    ae, opt_state = carry
    grads = jax.grad(loss)(ae, h[idx], weight)
    updates, new_opt = optimizer.update(grads, opt_state, ae)
    # A batch of padding alone takes no step (Avalanche has no such batch).
    keep = jnp.any(weight > 0)
    return jax.tree.map(lambda new, old: jnp.where(keep, new, old),
                        (optax.apply_updates(ae, updates), new_opt),
                        (ae, opt_state)), None

  def epoch(carry, epoch_key):
    carry, _ = jax.lax.scan(step, carry,
                            shuffled_batches(epoch_key, valid, batch_size))
    return carry, None

  (ae, _), _ = jax.lax.scan(epoch, (ae, optimizer.init(ae)),
                            jax.random.split(key, epochs))
  return ae


def _stack(tree: PyTree, n: int) -> PyTree:
  return jax.tree.map(lambda a: jnp.repeat(a[None], n, axis=0), tree)


def _take(stacked: PyTree, i: jax.Array) -> PyTree:
  return jax.tree.map(lambda a: a[i], stacked)


def _put(stacked: PyTree, i: jax.Array, tree: PyTree) -> PyTree:
  return jax.tree.map(lambda a, b: a.at[i].set(b), stacked, tree)


def _pick(flag: jax.Array, a: PyTree, b: PyTree) -> PyTree:
  return jax.tree.map(lambda x, y: jnp.where(flag, x, y), a, b)


def expert_gate(ae_latent_dim: int = 100, ae_train_epochs: int = 2,
                ae_train_mb_size: int = 1, ae_lr: float = 1e-3,
                rel_thresh: float = 0.85, lwf_alpha: float = 0.01,
                lwf_temperature: float = 2.0) -> Strategy:
  """Expert Gate (Avalanche's ``ExpertGateStrategy``).

  At the start of experience ``i``:

  1. **Gate.** An autoencoder ``h → sigmoid(W_d relu(W_e h + b_e) + b_d)``
     with ``ae_latent_dim`` units learns to reconstruct the experience's
     gate inputs ``h`` (the preprocessed inputs, flattened, through a
     sigmoid), by SGD (``ae_lr``, momentum 0.9, weight decay 5e-4) on the
     summed squared error of mini-batches of ``ae_train_mb_size`` for
     ``ae_train_epochs`` epochs.
  2. **Relatedness.** With ``Er_k`` the mean reconstruction error of
     autoencoder ``k`` on the new data, each earlier expert ``a`` has
     ``rel(a) = 1 − (Er_a − Er_i) / Er_i``; the most related one ``a*``
     is chosen.
  3. **Expert.** The new expert starts as a copy of ``a*`` (the first one
     from the model's initialisation), with a fresh optimizer state, and
     trains on the experience's classes alone (its cross-entropy is
     restricted to them). When ``rel(a*) > rel_thresh`` it also trains
     with LwF against ``a*``: ``lwf_alpha · KL`` of the two models' softmaxes
     at ``lwf_temperature`` over ``a*``'s classes.

  After the experience the expert is stored. **Prediction** (``predict``
  slot): each sample goes to the expert whose autoencoder reconstructs it
  with the smallest error, which predicts among its experience's classes.

  Differences from Avalanche, documented in ``docs/strategies_experts.md``:
  the gate reconstructs the preprocessed inputs, where Avalanche's
  reconstructs the features of an ImageNet-pretrained AlexNet (jaxcl runs
  offline with any model); the experts are copies of the user's model, not
  AlexNets; the gate picks an expert per sample, as the paper does, where
  Avalanche's picks one per evaluation mini-batch (summing the errors of
  its samples), and so its softmax temperature ``temp``, which cannot change
  an argmax, is left out; each expert is restricted to its own classes.

  Args:
    ae_latent_dim: Units of each autoencoder's code.
    ae_train_epochs: Epochs of autoencoder training per experience.
    ae_train_mb_size: Autoencoder mini-batch size.
    ae_lr: Autoencoder learning rate (> 0).
    rel_thresh: Relatedness above which the new expert trains with LwF.
    lwf_alpha: LwF's weight (≥ 0).
    lwf_temperature: LwF's temperature (> 0).

  Returns:
    The strategy; its ``cl_state`` is an :class:`ExpertGateState`, with one
    expert slot per experience of the stream (the model's parameters are
    held that many times).

  Raises:
    ValueError: Bad arguments; (at ``init``) a stream with task labels (the
      gate infers the task) or a context without the optimizer.

  Example:
    >>> expert_gate(ae_train_mb_size=32).name
    'expert_gate'
  """
  ae_latent_dim = _validation.check_positive_int("ae_latent_dim",
                                                 ae_latent_dim)
  ae_train_epochs = _validation.check_positive_int("ae_train_epochs",
                                                   ae_train_epochs)
  ae_train_mb_size = _validation.check_positive_int("ae_train_mb_size",
                                                    ae_train_mb_size)
  ae_lr = _validation.check_float32_positive("ae_lr", ae_lr)
  rel_thresh = _validation.check_in_range("rel_thresh", rel_thresh)
  lwf_alpha = _validation.check_non_negative("lwf_alpha", lwf_alpha)
  lwf_temperature = _validation.check_float32_positive("lwf_temperature",
                                                       lwf_temperature)

  def init(ctx, params, key):
    refuse_task_labels(ctx, "expert_gate infers each sample's task with its "
                       "autoencoders and keys its experts by the "
                       "experience's position (Avalanche's "
                       "ExpertGateStrategy keys them by task label); got a "
                       "stream with task labels, which jaxcl would use to "
                       "restrict the predictions: build the benchmark "
                       "without them (no return_task_id / "
                       "--return-task-id).")
    require_optimizer(ctx, "expert_gate gives each new expert a fresh "
                      "optimizer state")
    n = ctx.n_experiences
    model_state = init_model_state(ctx, key)
    x = jnp.zeros((1, *ctx.input_shape), ctx.x_dtype)
    d = jax.eval_shape(lambda x: _gate_inputs(ctx, x), x).shape[-1]
    no_classes = jnp.zeros(ctx.n_classes, bool)
    return ExpertGateState(
        experts=_stack(params, n), expert_model_states=_stack(model_state, n),
        expert_classes=jnp.zeros((n, ctx.n_classes), bool),
        trained=jnp.zeros(n, bool),
        autoencoders=_stack(_init_autoencoder(key, d, ae_latent_dim), n),
        current=jnp.zeros((), jnp.int32), current_classes=no_classes,
        related=jnp.full((), -1, jnp.int32), relatedness=jnp.zeros(()),
        teacher=params, teacher_model_state=model_state,
        teacher_classes=no_classes, use_lwf=jnp.zeros((), bool),
        rel_thresh=jnp.float32(rel_thresh), lwf_alpha=jnp.float32(lwf_alpha),
        lwf_temperature=jnp.float32(lwf_temperature),
        ae_lr=jnp.float32(ae_lr))

  def begin_experience(ctx, state, data, key):
    # Here, not at the top: jaxcl.training's package imports the strategies.
    from jaxcl.training import optim
    cl = state.cl_state
    i = data.index
    init_key, train_key = jax.random.split(key)
    h = _gate_inputs(ctx, data.x)
    ae = _train_autoencoder(
        _init_autoencoder(init_key, h.shape[-1], ae_latent_dim), h,
        data.valid, train_key, cl.ae_lr, ae_train_epochs, ae_train_mb_size)
    autoencoders = _put(cl.autoencoders, i, ae)
    valid = data.valid.astype(jnp.float32)[:, None]
    errors = jnp.sum(autoencoder_errors(autoencoders, h) * valid, 0) / (
        jnp.maximum(jnp.sum(valid), 1.0))
    own = jnp.maximum(errors[i], jnp.finfo(jnp.float32).tiny)
    earlier = cl.trained & (jnp.arange(cl.trained.shape[0]) != i)
    relatedness = 1.0 - (errors - own) / own
    # A diverged autoencoder (non-finite error) is never the most related.
    relatedness = jnp.where(earlier & jnp.isfinite(relatedness), relatedness,
                            -jnp.inf)
    best = jnp.argmax(relatedness)
    found = jnp.any(earlier)
    teacher = _take(cl.experts, best)
    teacher_state = _take(cl.expert_model_states, best)
    params = _pick(found, teacher, state.params)
    model_state = _pick(found, teacher_state, state.model_state)
    return state.replace(
        params=params, model_state=model_state,
        opt_state=optim.reset_optimizer_state(ctx.optimizer, state.opt_state,
                                              params, keep_schedules=True),
        cl_state=cl.replace(
            autoencoders=autoencoders, current=i.astype(jnp.int32),
            current_classes=data.classes_mask,
            related=jnp.where(found, best, -1).astype(jnp.int32),
            relatedness=jnp.where(found, relatedness[best], 0.0),
            teacher=teacher, teacher_model_state=teacher_state,
            teacher_classes=cl.expert_classes[best],
            use_lwf=found & (relatedness[best] > cl.rel_thresh)))

  def transform_batch(ctx, cl_state, batch, key):
    del key
    return restrict_current_classes(ctx, batch, cl_state.current_classes)

  def penalty(ctx, params, cl_state, batch, logits):
    del params
    cl = cl_state

    def lwf(_):
      teacher = ctx.logits(cl.teacher, cl.teacher_model_state, batch["x"],
                           batch["task"])
      return cl.lwf_alpha * distillation_kl(
          logits, teacher, cl.teacher_classes, cl.lwf_temperature,
          batch["weight"])

    return jax.lax.cond(cl.use_lwf, lwf, lambda _: jnp.zeros(()), None)

  def end_experience(ctx, state, data, key):
    del ctx, data, key
    cl = state.cl_state
    i = cl.current
    return state.replace(cl_state=cl.replace(
        experts=_put(cl.experts, i, state.params),
        expert_model_states=_put(cl.expert_model_states, i,
                                 state.model_state),
        expert_classes=cl.expert_classes.at[i].set(cl.current_classes),
        trained=cl.trained.at[i].set(True)))

  def predict(ctx, params, model_state, cl, x, task):
    # The expert being trained is the model itself (evaluations inside an
    # experience see it there; after it, it is stored).
    experts = _put(cl.experts, cl.current, params)
    states = _put(cl.expert_model_states, cl.current, model_state)
    available = cl.trained.at[cl.current].set(True)
    classes = cl.expert_classes.at[cl.current].set(cl.current_classes)
    errors = autoencoder_errors(cl.autoencoders, _gate_inputs(ctx, x))
    # A non-finite error (a diverged autoencoder) never wins the gate.
    choice = jnp.argmin(jnp.where(available & jnp.isfinite(errors), errors,
                                  jnp.inf), -1)
    outputs = jax.vmap(lambda p, s: ctx.logits(p, s, x, task))(experts,
                                                                states)
    logits = outputs[choice, jnp.arange(x.shape[0])]
    own = classes[choice]
    # Before any training no expert has classes: the model's own logits.
    return jnp.where(own | ~jnp.any(own, -1, keepdims=True), logits,
                     MASK_VALUE)

  return Strategy(name="expert_gate", init=init,
                  begin_experience=begin_experience,
                  transform_batch=transform_batch, penalty=penalty,
                  end_experience=end_experience, predict=predict)


STRATEGIES = {"expert_gate": expert_gate}
