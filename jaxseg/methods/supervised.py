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
from jaxseg.methods import base
from jaxseg.methods import common
from jaxseg.state import TrainState


class Supervised:
  """Method protocol: init / phases (one: train_step) / predict (jaxseg/methods/base.py)."""

  name = "supervised"
  samples_unlabeled = False
  host_targets = base.NO_HOST_TARGETS

  def __init__(self, config: ml_collections.ConfigDict):
    self.config = config
    self.model = common.build_model(config)
    self.tx = common.make_optimizer(config)
    self.labeled_batch_size = config.labeled_batch_size
    # "ce_dice" (UA-MT train_LA.py) or "vnet_caffe_dice" (the original V-Net release's Dice layer,
    # losses.vnet_caffe_dice_loss).
    self.loss = config.get("loss", "ce_dice")
    if self.loss not in ("ce_dice", "vnet_caffe_dice"):
      raise ValueError(f"config.loss={self.loss!r}: expected 'ce_dice' or 'vnet_caffe_dice'")

  def init(self, rng: jax.Array, example_batch) -> TrainState:
    return common.new_state(self, rng, example_batch)

  def phases(self) -> tuple[base.Phase, ...]:
    return (base.Phase("train", 0, self.train_step),)

  def train_step(self, state: TrainState, batch):
    """batch: image [B, D, H, W, 1], label [B, D, H, W]; the first labeled_batch_size are labeled."""
    rng = jax.random.fold_in(state.rng, state.step)
    lb = self.labeled_batch_size
    images, labels = batch["image"], batch["label"]

    def loss_fn(params):
      logits, batch_stats = common.train_forward(self.model, params, state.batch_stats, images, rng)
      if self.loss == "vnet_caffe_dice":
        loss, hard_dice = losses.vnet_caffe_dice_loss(logits[:lb], labels[:lb])
        return loss, (batch_stats, {"loss": loss, "train_hard_dice": hard_dice})
      loss, ce, dice = losses.supervised_ce_dice(logits[:lb], labels[:lb])
      return loss, (batch_stats, {"loss": loss, "loss_ce": ce, "loss_dice": dice})

    grads, (batch_stats, metrics) = jax.grad(loss_fn, has_aux=True)(state.params)
    return common.apply_gradients(self.tx, state, grads, batch_stats), metrics

  def predict(self, state: TrainState, images):
    """Eval-mode softmax of the trained network: [B, D, H, W, C] -> [B, D, H, W, n_classes]."""
    return common.eval_probabilities(self.model, state.params, state.batch_stats, images)
