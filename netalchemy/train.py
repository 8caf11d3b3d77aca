"""One training run as a pure, jittable function of its keys.

A run's randomness comes in three independent streams (`Streams`): `init` (weights), `data`
(minibatch order) and `dropout`. Step t draws its minibatch from `fold_in(data, epoch or t)`
and its dropout masks from `fold_in(dropout, t)`, so any stretch of training can be replayed
exactly from the state at its start: that is what makes chunked, checkpointed, resumed
sweeps bit-identical to uninterrupted ones.

Training is `lax.scan` over steps inside `lax.scan` over evaluation intervals. After every
`eval_every` steps, and after the last step, the run is evaluated on the full train and test
sets (evaluation mode): `steps=600, eval_every=250` evaluates at 0, 250, 500 and 600.
A run whose minibatch loss turns NaN/Inf is marked diverged at that step and frozen: its
state goes back to the start of that interval and stays there, while other runs go on.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from netalchemy import backprop, index_shuffle, losses, mlp, optim
from netalchemy.config import RANDOMNESS_STREAMS, Config

Array = jax.Array


class Streams(NamedTuple):
    """The independent random streams of one run (typed PRNG keys)."""

    init: Array
    data: Array
    dropout: Array


def stream_key(seed: int | Array, stream: str) -> Array:
    """The key of one randomness stream of one seed: fold_in(key(seed), stream index)."""
    return jax.random.fold_in(jax.random.key(seed), RANDOMNESS_STREAMS.index(stream))


class Data(NamedTuple):
    """The dataset as device arrays (passed as arguments, never baked into the program)."""

    x_train: Array  # (n_train, features)
    y_train: Array  # (n_train,) int32
    x_test: Array  # (n_test, features)
    y_test: Array  # (n_test,) int32


class TrainState(NamedTuple):
    step: Array  # () int32: steps taken
    params: mlp.Params
    bn_state: mlp.State
    opt_state: optax.OptState
    diverged_at: Array  # () int32: first step with a non-finite loss, -1 while finite


class Metrics(NamedTuple):
    """One evaluation; in a history every field gains a leading (evaluations,) axis."""

    step: Array
    train_loss: Array  # full training set, evaluation mode, no penalties
    train_acc: Array
    test_loss: Array
    test_acc: Array
    batch_loss: Array  # mean minibatch objective over the interval (training mode)
    grad_norm: Array  # mean global norm of the minibatch gradient over the interval (NaN: not logged)
    param_norm: Array  # global norm of the params
    diverged: Array  # bool


def interval_plan(cfg: Config) -> tuple[int, int]:
    """(full intervals, steps of a shorter last interval or 0): `divmod(steps, eval_every)`."""
    return divmod(cfg.train.steps, cfg.train.eval_every)


def evaluation_steps(cfg: Config) -> list[int]:
    """The steps at which a run is evaluated: 0, every `eval_every`, and the last step."""
    full, tail = interval_plan(cfg)
    return [i * cfg.train.eval_every for i in range(full + 1)] + ([cfg.train.steps] if tail else [])


def optimizer(cfg: Config, lr: Array) -> optax.GradientTransformation:
    return optim.make(cfg.optim, cfg.train.steps, lr=lr)


def init_state(streams: Streams, lr: Array, *, cfg: Config, in_features: int, num_classes: int) -> TrainState:
    """Initial params (from the init stream), BN state and optimizer state."""
    params, bn_state = mlp.init(streams.init, cfg.model, in_features=in_features, num_classes=num_classes)
    opt_state = optimizer(cfg, lr).init(params)
    return TrainState(jnp.zeros((), jnp.int32), params, bn_state, opt_state, jnp.full((), -1, jnp.int32))


def batch_indices(data_key: Array, step: Array, *, n: int, batch_size: int, sampling: str) -> Array:
    """Indices (batch,) of step `step`'s minibatch: the definition of the data order.

    "shuffle": epoch e visits the training set in the order of the pseudorandom permutation
    keyed by fold_in(data_key, e) (`index_shuffle.permute`, read at this step's positions
    only), cut into n // batch_size consecutive minibatches (the remainder is dropped); a
    full batch is the training set in order. "replace": batch_size indices uniform with
    replacement.
    """
    if sampling == "replace":
        return jax.random.randint(jax.random.fold_in(data_key, step), (batch_size,), 0, n)
    per_epoch = n // batch_size
    if per_epoch == 1 and batch_size == n:
        return jnp.arange(n)
    positions = (step % per_epoch) * batch_size + jnp.arange(batch_size)
    return index_shuffle.permute(jax.random.fold_in(data_key, step // per_epoch), positions, n)


def train_step(state: TrainState, streams: Streams, data: Data, lr: Array, *, cfg: Config):
    """One optimizer step on one minibatch. Returns (state, (minibatch loss, gradient norm))."""
    t = cfg.train
    n = data.x_train.shape[0]
    idx = batch_indices(streams.data, state.step, n=n, batch_size=t.batch_size, sampling=t.sampling)
    x, y = data.x_train[idx], data.y_train[idx]  # (batch, features), (batch,)
    grad_fn = backprop.gradient_fn(t.grad)
    grads, aux = grad_fn(state.params, state.bn_state, x, y, cfg=cfg.model, l1=t.l1, l2=t.l2,
                         key=jax.random.fold_in(streams.dropout, state.step))
    updates, opt_state = optimizer(cfg, lr).update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    new = TrainState(state.step + 1, params, aux.state, opt_state, state.diverged_at)
    # The norm reads every gradient once more (see TrainConfig.grad_norm): logged only when asked for.
    gnorm = optax.tree.norm(grads) if t.grad_norm else jnp.full((), jnp.nan, aux.loss.dtype)
    return new, (aux.loss, gnorm)


def evaluate_split(params, bn_state, x: Array, y: Array, *, cfg: Config, max_batch: int = 8192):
    """Mean loss and accuracy over a whole split, in evaluation mode, in slices of `max_batch`."""
    total_loss = total_correct = 0.0
    for start in range(0, x.shape[0], max_batch):
        xs, ys = x[start:start + max_batch], y[start:start + max_batch]
        logits, _ = mlp.apply(params, bn_state, xs, cfg=cfg.model, train=False)
        total_loss += losses.cross_entropy(logits, ys) * xs.shape[0]
        total_correct += losses.accuracy(logits, ys) * xs.shape[0]
    return total_loss / x.shape[0], total_correct / x.shape[0]


def evaluate(state: TrainState, data: Data, *, cfg: Config, batch_loss=jnp.nan, grad_norm=jnp.nan) -> Metrics:
    train_loss, train_acc = evaluate_split(state.params, state.bn_state, data.x_train, data.y_train, cfg=cfg)
    test_loss, test_acc = evaluate_split(state.params, state.bn_state, data.x_test, data.y_test, cfg=cfg)
    dtype = train_loss.dtype
    return Metrics(state.step, train_loss, train_acc, test_loss, test_acc, jnp.asarray(batch_loss, dtype),
                   jnp.asarray(grad_norm, dtype), optax.tree.norm(state.params), state.diverged_at >= 0)


def train_interval(state: TrainState, streams: Streams, data: Data, lr: Array, *, cfg: Config,
                   length: int | None = None):
    """`length` steps (default `eval_every`), the divergence check, then an evaluation.

    Returns:
      (state, Metrics). `diverged_at` becomes the step index (`state.step` before the update)
      of the first step whose minibatch loss was non-finite.
    """
    start = state

    def body(carry, _):
        s, first_bad = carry
        s, (loss, gnorm) = train_step(s, streams, data, lr, cfg=cfg)
        first_bad = jnp.where((first_bad < 0) & ~jnp.isfinite(loss), s.step - 1, first_bad)
        return (s, first_bad), (loss, gnorm)

    (end, first_bad), (step_losses, grad_norms) = jax.lax.scan(
        body, (state, jnp.full((), -1, jnp.int32)), None, length=length or cfg.train.eval_every)
    newly = (start.diverged_at < 0) & (first_bad >= 0)
    frozen = (start.diverged_at >= 0) | newly
    kept = jax.tree.map(lambda a, b: jnp.where(frozen, a, b), start._replace(step=end.step), end)
    state = kept._replace(diverged_at=jnp.where(newly, first_bad, start.diverged_at))
    return state, evaluate(state, data, cfg=cfg, batch_loss=jnp.mean(step_losses), grad_norm=jnp.mean(grad_norms))


def measured(measure, state: TrainState, streams: Streams, data: Data, *, cfg: Config) -> dict[str, Array]:
    """What a measurement hook reports about one run's `state` ({} without a hook).

    A hook is a hashable callable `measure(state, streams, data, cfg) -> {name: array}` (a
    module-level function, or a frozen dataclass instance whose fields are its settings). The
    engine compiles it into a program of its own, run on the device at step 0 and after every
    evaluation interval on the state the evaluation sees (so what is measured never changes
    the training program's arithmetic); its arrays land in the sweep's history beside the metrics.
    """
    return {} if measure is None else dict(measure(state, streams, data, cfg))


def train_intervals(state: TrainState, streams: Streams, data: Data, lr: Array, *, cfg: Config, intervals: int,
                    length: int | None = None):
    """`intervals` evaluation intervals of `length` steps (default `eval_every`) in one scan.

    Returns:
      (state, Metrics with (intervals,) fields).
    """
    def body(s, _):
        return train_interval(s, streams, data, lr, cfg=cfg, length=length)

    return jax.lax.scan(body, state, None, length=intervals)


@partial(jax.jit, static_argnames=("cfg", "in_features", "num_classes"))
def train_run(streams: Streams, data: Data, lr: Array, *, cfg: Config, in_features: int, num_classes: int):
    """A whole run for one seed: init, evaluation at step 0, then `steps` steps.

    Returns:
      (final TrainState, Metrics history with (len(evaluation_steps(cfg)),) fields).
    """
    state = init_state(streams, lr, cfg=cfg, in_features=in_features, num_classes=num_classes)
    parts = [jax.tree.map(lambda a: a[None], evaluate(state, data, cfg=cfg))]
    full, tail = interval_plan(cfg)
    if full:
        state, history = train_intervals(state, streams, data, lr, cfg=cfg, intervals=full)
        parts.append(history)
    if tail:
        state, history = train_intervals(state, streams, data, lr, cfg=cfg, intervals=1, length=tail)
        parts.append(history)
    return state, jax.tree.map(lambda *a: jnp.concatenate(a), *parts)


def predict(params, bn_state, x: Array, *, cfg: Config) -> Array:
    """Predicted classes (batch,) in evaluation mode."""
    logits, _ = mlp.apply(params, bn_state, x, cfg=cfg.model, train=False)
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
