"""DTC: Dual-Task Consistency (Luo et al., AAAI 2021), docs/methods/dtc.md.

Upstream: HiLab-git/DTC code/train_la_dtc.py (commit 2525b9c). One network, no teacher:
VNetSDF (`jaxseg.models.vnet_sdf`, n_classes = 1) returns a tanh level set `out_tanh` and
segmentation logits `out_seg`; p = sigmoid(out_seg).

Per step, batch [L1, L2, U1, U2] with labeled_batch_size 2, one forward of all four (one BN batch):
  * loss_sdf = mean((out_tanh[:2] - gt_sdf[:2])^2), gt_sdf = `jaxseg.methods.dtc.sdf.compute_sdf` of
    the augmented crop's label, computed on the host by the pipeline (batch['sdf'], declared in
    `DTC.host_targets`);
  * loss_dice = dice_loss(p[:2], label[:2] == 1) (UA-MT dice: squared denominators, one joint sum);
  * loss_bce = BCE-with-logits(out_seg[:2], label[:2]): logged, NOT part of the loss (upstream);
  * consistency = mean((sigmoid(-1500 out_tanh) - p)^2) over ALL four samples, gradients into both
    heads (no stop-gradient);
  * loss = loss_dice + 0.3 loss_sdf + w(step) consistency, w = 1.0 sigmoid_rampup(step // 150, 40).
Prediction: p > 0.5 on the eval-mode seg head (`predict` returns [1 - p, p], whose argmax is that),
then the largest connected component (config eval.largest_cc, upstream test_LA.py --nms 1).

Upstream logs `metrics.dice(argmax(p[:2], dim=1), ...)`, an argmax over a single channel (always
0); it is computed but never written, so it is not reproduced here.
"""

import types

import jax
import jax.numpy as jnp
import ml_collections
import optax

from jaxseg import losses
from jaxseg import schedules
from jaxseg.methods import base
from jaxseg.methods import common
from jaxseg.methods.dtc import sdf
from jaxseg.state import TrainState

Array = jax.Array


def sdf_to_mask(out_tanh: Array, k: float = 1500.0) -> Array:
  """sigmoid(-k out_tanh): the level set -> soft mask transform (inside, sdf < 0, -> 1).

  Upstream writes `torch.sigmoid(-1500*outputs_tanh)` (the paper's k = 1500 with the sign of
  compute_sdf's convention, docs/methods/dtc.md §2.5).
  """
  return jax.nn.sigmoid(-k * out_tanh)


def dtc_losses(
  out_tanh: Array,
  out_seg: Array,
  labels: Array,
  gt_sdf: Array,
  labeled_batch_size: int,
  beta: float = 0.3,
  k: float = 1500.0,
) -> dict[str, Array]:
  """DTC's loss terms, inline in upstream train_la_dtc.py.

  Args:
    out_tanh: level-set head [B, D, H, W, 1] (after tanh).
    out_seg: segmentation logits [B, D, H, W, 1].
    labels: integer labels [B, D, H, W] (only the first `labeled_batch_size` are read).
    gt_sdf: target SDF of at least the labeled samples, [B_l or B, D, H, W].
    labeled_batch_size: B_l, the labeled samples at the front of the batch.
    beta: weight of the SDF regression in the supervised loss.
    k: sharpness of the level set -> mask transform.

  Returns:
    dict of scalars 'loss_sdf', 'loss_dice', 'loss_bce' (not optimized), 'consistency',
    'supervised' (= loss_dice + beta loss_sdf), and the map 'dis_to_mask' [B, D, H, W, 1].
  """
  if out_tanh.shape[-1] != 1 or out_seg.shape[-1] != 1:
    raise ValueError(
      f'dtc_losses: expected one output channel per head, got out_tanh '
      f'{out_tanh.shape} and out_seg {out_seg.shape}'
    )
  lb = labeled_batch_size
  tanh_l, seg_l = out_tanh[:lb, ..., 0], out_seg[:lb, ..., 0]
  target = labels[:lb]
  p = jax.nn.sigmoid(out_seg)
  loss_sdf = jnp.mean(jnp.square(tanh_l - gt_sdf[:lb].astype(tanh_l.dtype)))
  # BCEWithLogitsLoss on the raw label values, as upstream (label_batch[:labeled_bs].float()).
  loss_bce = jnp.mean(optax.sigmoid_binary_cross_entropy(seg_l, target.astype(seg_l.dtype)))
  loss_dice = losses.dice_loss(p[:lb, ..., 0], target == 1)
  dis_to_mask = sdf_to_mask(out_tanh, k)
  consistency = jnp.mean(jnp.square(dis_to_mask - p))
  return {
    'loss_sdf': loss_sdf,
    'loss_dice': loss_dice,
    'loss_bce': loss_bce,
    'consistency': consistency,
    'supervised': loss_dice + beta * loss_sdf,
    'dis_to_mask': dis_to_mask,
  }


class DTC:
  """Method protocol: init / phases (one: train_step) / predict (jaxseg/methods/base.py)."""

  name = 'dtc'
  samples_unlabeled = True
  host_targets = types.MappingProxyType({'sdf': sdf.compute_sdf})

  def __init__(self, config: ml_collections.ConfigDict):
    self.config = config
    self.hp = config.dtc
    n_classes = config.model.kwargs.get('n_classes')
    if n_classes != 1:
      raise ValueError(
        f'dtc: model.kwargs.n_classes={n_classes}; DTC trains one sigmoid channel per '
        'head (upstream VNet(n_classes=num_classes - 1)), set it to 1'
      )
    self.model = common.build_model(config)
    self.tx = common.make_optimizer(config)
    self.labeled_batch_size = config.labeled_batch_size

  def init(self, rng: jax.Array, example_batch) -> TrainState:
    return common.new_state(self, rng, example_batch)

  def phases(self) -> tuple[base.Phase, ...]:
    return (base.Phase('train', 0, self.train_step),)

  def train_step(self, state: TrainState, batch):
    """batch: image [B, D, H, W, 1], label [B, D, H, W], sdf float32 [B, D, H, W] (the labeled
    first labeled_batch_size are read)."""
    hp, lb = self.hp, self.labeled_batch_size
    if 'sdf' not in batch:
      raise KeyError(
        "dtc: the batch has no 'sdf'; build it with the data pipeline (or "
        "methods.base.example_batch) from DTC.host_targets"
      )
    rng = jax.random.fold_in(state.rng, state.step)
    weight = schedules.consistency_weight(
      state.step, hp.consistency, hp.consistency_rampup, hp.iters_per_epoch
    )

    def loss_fn(params):
      (out_tanh, out_seg), batch_stats = common.train_forward(
        self.model, params, state.batch_stats, batch['image'], rng
      )
      terms = dtc_losses(
        out_tanh, out_seg, batch['label'], batch['sdf'], lb, beta=hp.beta, k=hp.sdf_to_mask_k
      )
      loss = terms['supervised'] + weight * terms['consistency']
      metrics = {
        'loss': loss,
        'loss_dice': terms['loss_dice'],
        'loss_sdf': terms['loss_sdf'],
        'loss_bce': terms['loss_bce'],
        'loss_consistency': terms['consistency'],
        'consistency_weight': weight,
      }
      return loss, (batch_stats, metrics)

    grads, (batch_stats, metrics) = jax.grad(loss_fn, has_aux=True)(state.params)
    return common.apply_gradients(self.tx, state, grads, batch_stats), metrics

  def predict(self, state: TrainState, images):
    """[1 - p, p] with p = sigmoid(seg head) in eval mode: [B, D, H, W, 2], argmax == p > 0.5
    (upstream test_util.py thresholds the count-averaged sigmoid at 0.5; averaging [1 - p, p]
    window by window gives the same decision)."""
    _, out_seg = self.model.apply(
      {'params': state.params, 'batch_stats': state.batch_stats}, images, train=False
    )
    p = jax.nn.sigmoid(out_seg.astype(jnp.float32))
    return jnp.concatenate([1.0 - p, p], axis=-1)
