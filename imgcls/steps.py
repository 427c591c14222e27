"""What training and inference share: the state, building and splitting the model, the jitted
train and eval steps, casting to the compute dtype, and preparing inputs (augmentation on the
device, normalisation). `train.py` runs the loop on top of it (and `lr_find.py` a short one); `restore.py`, `evaluate.py`,
`features.py`, `feature_cache.py` and `bench/` use it without the loop.
"""

from __future__ import annotations

import dataclasses
import functools

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from imgcls import metrics, models, parallel
from imgcls import mix as mix_lib
from imgcls.data import augment, sources


@flax.struct.dataclass
class TrainState:
  """Everything a step changes: a pytree that Orbax saves as it is."""

  step: jax.Array
  params: nnx.State  # Trained parameters.
  frozen: nnx.State  # Parameters that are not trained (frozen backbone layers).
  stats: nnx.State  # BatchNorm statistics and any other non-parameter variables.
  opt_state: optax.OptState
  epoch_sums: dict  # Running loss sum, example count and confusion matrix of the epoch.
  window_sums: dict  # The same since the last per-batch log line.
  ema: dict = dataclasses.field(default_factory=dict)  # {"params", "stats"} averaged over steps (train.ema_decay); {}: off.


def initial_state(
  params: nnx.State,
  frozen: nnx.State,
  stats: nnx.State,
  tx: optax.GradientTransformation,
  num_classes: int,
  ema: bool = False,
) -> TrainState:
  """The state at step 0: fresh optimizer state and metric sums (`ema`: averages start at the weights)."""
  return TrainState(
    step=jnp.zeros((), jnp.int32),
    params=params,
    frozen=frozen,
    stats=stats,
    opt_state=tx.init(params),
    epoch_sums=zero_sums(num_classes),
    window_sums=zero_sums(num_classes),
    ema=start_ema(params, stats) if ema else {},
  )


def start_ema(params: nnx.State, stats: nnx.State) -> dict:
  """Moving averages equal to the weights now (copies: the step donates the state's buffers)."""
  return {"params": jax.tree.map(jnp.copy, params), "stats": jax.tree.map(jnp.copy, stats)}


def ema_decay(decay: float, warmup: bool, step: jax.Array) -> jax.Array:
  """The EMA's decay at `step`; with `warmup`, min(decay, (1 + step) / (10 + step)), as
  tf.train.ExponentialMovingAverage with num_updates: early averages forget the random start."""
  if not warmup:
    return jnp.float32(decay)
  step = step.astype(jnp.float32)
  return jnp.minimum(jnp.float32(decay), (1.0 + step) / (10.0 + step))


def update_ema(ema: dict, params: nnx.State, stats: nnx.State, decay: jax.Array) -> dict:
  """ema <- decay * ema + (1 - decay) * weights, for the parameters and the floating statistics."""

  def average(e, x):
    return decay * e + (1.0 - decay) * x if jnp.issubdtype(x.dtype, jnp.floating) else x

  return {"params": jax.tree.map(average, ema["params"], params), "stats": jax.tree.map(average, ema["stats"], stats)}


def ema_view(state: TrainState) -> TrainState:
  """The state with its EMA weights in place of the trained ones (itself when EMA is off)."""
  if not state.ema:
    return state
  return state.replace(params=state.ema["params"], stats=state.ema["stats"])


def zero_sums(num_classes: int) -> dict:
  """Empty running metric sums: loss, example count, confusion matrix."""
  return {
    "loss": jnp.zeros((), jnp.float32),
    "count": jnp.zeros((), jnp.float32),
    "confusion": jnp.zeros((num_classes, num_classes), jnp.float32),
  }


# ---------------------------------------------------------------------------------------------
# The model.


# A random init runs once: on the CPU, compiling its Threefry draws with XLA's backend optimisations
# takes longer than running them without (the insects CNN 0.65 s in all instead of 2.6 s eagerly).
_INIT_CPU_COMPILER_OPTIONS = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def create_model(config: ml_collections.ConfigDict, num_classes: int, load_weights: bool = True) -> models.Classifier:
  """The configured model for `num_classes` (`load_weights=False`: for a checkpoint to fill).

  A randomly initialised model is drawn in one jitted program (the same values as eagerly); one
  with a weights file only draws its head, eagerly (its backbone stays abstract until loaded).
  """
  outputs = metrics.num_outputs(config.data.label_mode, num_classes)

  def build() -> models.Classifier:
    rngs = nnx.Rngs(params=config.seed, dropout=config.seed + 1)
    return models.build_model(config, outputs, rngs=rngs, load_weights=load_weights)

  if config.model.weights:
    return build()
  graphdef, _ = nnx.split(nnx.eval_shape(build))
  options = _INIT_CPU_COMPILER_OPTIONS if jax.default_backend() == "cpu" else None
  return nnx.merge(graphdef, jax.jit(lambda: nnx.state(build()), compiler_options=options)())


def check_image_sizes(
  eval_graphdef: nnx.GraphDef, variables: tuple[nnx.State, ...], sizes: list[tuple[int, int]], config: ml_collections.ConfigDict
) -> None:
  """Fails naming the size if the model (`split_model`'s inference graph and its variables) cannot
  take training images of one of `sizes` (progressive resizing needs a head that pools globally)."""
  channels = 1 if config.data.color_mode == "grayscale" else 3
  for height, width in sizes:
    try:
      jax.eval_shape(
        lambda v, x: nnx.merge(eval_graphdef, *v)(x), variables, jax.ShapeDtypeStruct((1, height, width, channels), jnp.float32)
      )
    except Exception as e:  # noqa: BLE001  (any shape error of any model)
      raise ValueError(
        f"data.progressive_sizes: {config.model.name} cannot take {height}x{width} images ({type(e).__name__}: "
        f"{str(e)[:200]}). Progressive resizing needs a head that pools globally: set model.pooling (Keras "
        "backbones) or model.head.pooling to 'avg' or 'max'."
      ) from e


def split_model(model: models.Classifier) -> tuple[nnx.GraphDef, nnx.GraphDef, nnx.State, nnx.State, nnx.State]:
  """(train graphdef, eval graphdef, trained params, frozen params, other variables)."""
  trainable = nnx.All(nnx.Param, nnx.Not(model.frozen))
  model.eval()
  eval_graphdef = nnx.graphdef(model)
  model.train()
  graphdef, params, frozen, stats = nnx.split(model, trainable, nnx.Param, ...)
  return graphdef, eval_graphdef, params, frozen, stats


# ---------------------------------------------------------------------------------------------
# The jitted steps.


def add_to_sums(sums: dict, losses: jax.Array, labels: jax.Array, predictions: jax.Array, mask: jax.Array) -> dict:
  """`sums` with a batch's losses and (label, prediction) pairs added, padding (mask 0) left out."""
  k = sums["confusion"].shape[0]
  confusion = (jax.nn.one_hot(labels, k) * mask[:, None]).T @ jax.nn.one_hot(predictions, k)
  return {
    "loss": sums["loss"] + jnp.sum(losses * mask),
    "count": sums["count"] + jnp.sum(mask),
    "confusion": sums["confusion"] + confusion,
  }


@dataclasses.dataclass(frozen=True)
class StepConfig:
  """What the jitted steps need besides the state: static, hashable."""

  num_classes: int
  threshold: float
  label_smoothing: float
  class_weights: tuple[float, ...]
  dtype: str = "float32"  # Compute dtype; parameters and optimizer state stay float32.
  on_features: bool = False  # Inputs are cached backbone features: only the head runs.
  mix: mix_lib.Mix = mix_lib.Mix()  # Mixup / CutMix of the batch (soft targets).
  accumulate_steps: int = 1  # Micro-batches per update: gradients summed, one update per batch.
  ema_decay: float = 0.0  # Moving average of the weights (0: off).
  ema_warmup: bool = True


def compute_cast(tree, dtype: str):
  """Floating-point leaves of `tree` in the compute dtype (identity for float32)."""
  if dtype == "float32":
    return tree
  target = jnp.dtype(dtype)
  return jax.tree.map(lambda x: x.astype(target) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)


def identity_prepare(images: jax.Array, key: jax.Array | None) -> jax.Array:
  return images


def make_prepare(aug: augment.Augment, normalize: augment.Normalize, pixel_max: float, on_device: bool):
  """`prepare(images, key)`: device augmentation (when `key` is given) then normalisation."""

  def prepare(images: jax.Array, key: jax.Array | None) -> jax.Array:
    if key is not None and on_device:
      images = augment.apply_device(aug, images, key, pixel_max)
    return normalize(images) if normalize.enabled else images

  return prepare


def make_train_step(
  graphdef: nnx.GraphDef,
  tx: optax.GradientTransformation,
  scales: nnx.State,
  cfg: StepConfig,
  prepare=identity_prepare,
  state_sharding=None,
):
  """A jitted `step(state, batch, key, lr_scale) -> state` (the state is donated).

  With `state_sharding` (replicated over a mesh) and a batch split over it, the step runs data
  parallel: XLA averages gradients and BatchNorm statistics over the global batch.
  """
  weights = jnp.asarray(cfg.class_weights or (1.0,) * cfg.num_classes, jnp.float32)

  @functools.partial(jax.jit, donate_argnums=0, out_shardings=state_sharding)
  def train_step(state: TrainState, batch: dict, key: jax.Array, lr_scale: jax.Array) -> TrainState:
    labels, mask = batch["label"], batch["mask"]
    dropout_key, augment_key = jax.random.split(key)
    images = prepare(batch["image"], augment_key)
    lam, partner = jnp.float32(1.0), jnp.arange(labels.shape[0])
    if cfg.mix.enabled:
      images, lam, partner = mix_lib.mix_batch(cfg.mix, images, mask, jax.random.fold_in(key, 1))
    count = jnp.maximum(jnp.sum(mask), 1.0)

    def loss_fn(params, frozen, stats, images, labels, partner_labels, mask, dropout_key):
      # Mixed precision: bfloat16 weights and activations; BatchNorm statistics, the loss and the
      # gradients (through the cast) stay float32.
      model = nnx.merge(graphdef, compute_cast(params, cfg.dtype), compute_cast(frozen, cfg.dtype), stats, copy=True)
      forward = model.head if cfg.on_features else model
      logits = forward(compute_cast(images, cfg.dtype), rngs=nnx.Rngs(dropout=dropout_key)).astype(jnp.float32)
      targets = metrics.targets(labels, logits.shape[-1], cfg.label_smoothing, xp=jnp)
      example_weights = weights[labels]
      if cfg.mix.enabled:  # Soft targets and weights mixed as the images were.
        targets = lam * targets + (1.0 - lam) * metrics.targets(partner_labels, logits.shape[-1], cfg.label_smoothing, xp=jnp)
        example_weights = lam * example_weights + (1.0 - lam) * weights[partner_labels]
      losses = metrics.cross_entropy(logits, targets, xp=jnp)
      loss = jnp.sum(losses * example_weights * mask) / count  # A micro-batch's share of the batch's mean.
      return loss, (logits, losses, nnx.state(model, nnx.Not(nnx.Param)))

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    inputs = (images, labels, labels[partner], mask)
    if cfg.accumulate_steps == 1:
      (_, (logits, losses, stats)), grads = grad_fn(state.params, state.frozen, state.stats, *inputs, dropout_key)
    else:  # Micro-batches in turn: the gradient of the whole batch's loss, a micro-batch's activations in memory.
      k = cfg.accumulate_steps

      def micro_step(carry, xs):
        grads, stats = carry
        *micro, micro_key = xs
        (_, (logits, losses, stats)), g = grad_fn(state.params, state.frozen, stats, *micro, micro_key)
        return (jax.tree.map(jnp.add, grads, g), stats), (logits, losses)

      n = labels.shape[0]
      pad = -n % k  # A last partial batch: padding rows (mask 0) up to k equal micro-batches.
      split = [jnp.pad(x, [(0, pad)] + [(0, 0)] * (x.ndim - 1)).reshape(k, (n + pad) // k, *x.shape[1:]) for x in inputs]
      zeros = jax.tree.map(jnp.zeros_like, state.params)
      (grads, stats), (logits, losses) = jax.lax.scan(
        micro_step, (zeros, state.stats), (*split, jax.random.split(dropout_key, k))
      )
      logits, losses = logits.reshape(-1, logits.shape[-1])[:n], losses.reshape(-1)[:n]
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    updates = jax.tree.map(lambda u, s: u * s * lr_scale, updates, scales)
    params = optax.apply_updates(state.params, updates)
    ema = state.ema
    if cfg.ema_decay > 0:
      ema = update_ema(ema, params, stats, ema_decay(cfg.ema_decay, cfg.ema_warmup, state.step))
    threshold = cfg.threshold if logits.shape[-1] == 1 else None  # One sigmoid unit: binary.
    predictions = metrics.predicted_labels(metrics.probabilities(logits, xp=jnp), threshold, xp=jnp)
    return state.replace(
      step=state.step + 1,
      params=params,
      stats=stats,
      opt_state=opt_state,
      epoch_sums=add_to_sums(state.epoch_sums, losses, labels, predictions, mask),
      window_sums=add_to_sums(state.window_sums, losses, labels, predictions, mask),
      ema=ema,
    )

  return train_step


def make_eval_step(
  eval_graphdef: nnx.GraphDef, prepare=identity_prepare, out_sharding=None, dtype: str = "float32", on_features: bool = False
):
  """A jitted `step(state, images) -> logits` with the model in inference mode (`on_features`:
  the inputs are cached backbone features and only the head runs)."""

  @functools.partial(jax.jit, out_shardings=out_sharding)
  def eval_step(state: TrainState, images: jax.Array) -> jax.Array:
    model = nnx.merge(eval_graphdef, compute_cast(state.params, dtype), compute_cast(state.frozen, dtype), state.stats)
    forward = model.head if on_features else model
    return forward(compute_cast(prepare(images, None), dtype)).astype(jnp.float32)

  return eval_step


# ---------------------------------------------------------------------------------------------
# What a training run derives from its config and data (train.py and lr_find.py).


def step_config(config: ml_collections.ConfigDict, train: sources.Split) -> StepConfig:
  """The train step's settings from the config and the training split."""
  return StepConfig(
    len(train.class_names),
    config.train.threshold,
    config.loss.label_smoothing,
    class_weights(config, train),
    config.dtype,
    mix=mix_lib.from_config(config.train),
    accumulate_steps=config.train.accumulate_steps,
    ema_decay=config.train.ema_decay,
    ema_warmup=config.train.ema_warmup,
  )


def class_weights(config: ml_collections.ConfigDict, train: sources.Split) -> tuple[float, ...]:
  """Per-class loss weights: `loss.balanced`'s n / (classes * count), else `loss.class_weights`."""
  num_classes = len(train.class_names)
  if config.loss.balanced:
    counts = np.maximum(train.class_counts(), 1)
    return tuple(float(len(train) / (num_classes * c)) for c in counts)
  weights = tuple(float(w) for w in config.loss.class_weights)
  if weights and len(weights) != num_classes:
    raise ValueError(f"config.loss.class_weights has {len(weights)} values for {num_classes} classes {train.class_names}.")
  return weights


def process_batches(
  config: ml_collections.ConfigDict, train_size: int, dp: parallel.DataParallel
) -> tuple[int, tuple[int, int], int]:
  """(this process's share of every batch, its shard, steps per epoch). A last partial batch that
  does not split evenly over the devices is left out."""
  if config.data.batch_size % dp.devices:
    raise ValueError(f"config.data.batch_size={config.data.batch_size} must be a multiple of the {dp.devices} devices.")
  batch_size = config.data.batch_size // dp.processes
  per_process = train_size // dp.processes
  last = per_process % batch_size
  steps_per_epoch = per_process // batch_size + (1 if last and dp.fits(last) else 0)
  return batch_size, (jax.process_index(), dp.processes), steps_per_epoch


def monitor_training_metrics(config: ml_collections.ConfigDict) -> tuple[ml_collections.ConfigDict, list[str]]:
  """For a run without a validation split: a copy of `config` whose monitors of val_ metrics
  watch the train_ ones, and notes saying so."""
  config, notes = config.copy_and_resolve_references(), []
  for section in ("checkpoint", "reduce_on_plateau", "early_stopping"):
    name = config[section].monitor
    if name.startswith("val_"):
      with config.unlocked():
        config[section].monitor = "train_" + name.removeprefix("val_")
      if config[section].get("enabled", True):
        notes.append(f"No validation split: {section}.monitor watches {config[section].monitor} instead of {name}.")
  return config, notes
