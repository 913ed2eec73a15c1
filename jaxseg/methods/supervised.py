"""Supervised-only V-Net baseline (the "V-Net" rows of the LA tables).

Upstream: yulequan/UA-MT code/train_LA.py. Loss 0.5 * (CE + foreground Dice) on an all-labeled
batch; SGD lr 0.01, momentum 0.9, weight decay 1e-4, step decay x0.1 every 2500 iterations.
Deviation: upstream runs 6001 iterations (`iter_num > max_iterations`) and evaluates the
iteration-6000 snapshot; jaxseg runs exactly `total_steps` and evaluates the final state, which
is the same model.
"""
import jax
import ml_collections

from jaxseg import losses
from jaxseg.methods import common
from jaxseg.state import TrainState


class Supervised:
  """Method protocol: init / train_step / predict (see jaxseg/methods/__init__.py)."""

  name = "supervised"

  def __init__(self, config: ml_collections.ConfigDict):
    self.config = config
    self.model = common.build_model(config)
    self.tx = common.make_optimizer(config)
    self.labeled_batch_size = config.labeled_batch_size

  def init(self, rng: jax.Array, example_batch) -> TrainState:
    return common.new_state(self, rng, example_batch)

  def train_step(self, state: TrainState, batch):
    """batch: image [B, D, H, W, 1], label [B, D, H, W]; the first labeled_batch_size are labeled."""
    rng = jax.random.fold_in(state.rng, state.step)
    lb = self.labeled_batch_size
    images, labels = batch["image"], batch["label"]

    def loss_fn(params):
      logits, batch_stats = common.train_forward(self.model, params, state.batch_stats, images, rng)
      loss, ce, dice = losses.supervised_ce_dice(logits[:lb], labels[:lb])
      return loss, (batch_stats, {"loss": loss, "loss_ce": ce, "loss_dice": dice})

    grads, (batch_stats, metrics) = jax.grad(loss_fn, has_aux=True)(state.params)
    return common.apply_gradients(self.tx, state, grads, batch_stats), metrics

  def predict(self, state: TrainState, images):
    """Eval-mode softmax of the trained network: [B, D, H, W, C] -> [B, D, H, W, n_classes]."""
    return common.eval_probabilities(self.model, state.params, state.batch_stats, images)
