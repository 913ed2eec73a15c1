"""CML: Cross-view Mutual Learning (Wu et al., ACM MM 2024), docs/methods/cml.md.

Upstream: SongwuJob/CML code/CML_LA_train.py (LA, 3D, `cml_vnet`) and code/CML_ACDC_train.py (ACDC, 2D
slices, `cml_unet2d`); losses from code/utils/CML_utils.py and code/utils/losses.py (mask_DiceLoss).
One method for both: images [B, D, H, W, 1] (3D) or [B, H, W, 1] (2D); the network returns
(logits1, logits2, features1, features2) from its two branches.

Two phases in one run (docs/design.md "phases"), batch = [labeled (lb) | unlabeled (B - lb)], each half
split again into a / b:
  * pretrain (`cml.pretrain_steps`, docs/methods/cml.md §3b): labeled CutMix only,
      X = box_paste(img_a, img_b), Y likewise (1 outside the box -> a, the box -> b);
      loss = l_w (sup(z1, Y) + sup(z2, Y)) + dis_w (L_dis(f1, f2) + L_dis(f2, f1)).
  * main (section 3c): the labeled term above, plus heterogeneous supervision of mixed unlabeled
    images by pseudo-labels of the SAME model in train mode (dropout on, batch statistics, no
    gradient): plab = LCC(p1 >= 0.5) (3D) or per-class LCC(argmax p1) (2D), plab_sub the same on the
    second branch; Xu = box_paste(u_a, u_b), target_1 = box_paste(plab_sub[a], plab[b]),
    target_2 = box_paste(plab[a], plab_sub[b]);
      loss = L_l + u_w (sup(z1u, target_1) + sup(z2u, target_2)) + dis_w (L_dis terms, both mixes).
sup = (CE + mask Dice) / 2; L_dis = 1 + mean cosine(f_A, stopgrad(f_B)) over batch and positions
(minimising it pushes the branches' features apart). No EMA teacher.

Per-step order as upstream (BN running statistics are updated by every train-mode forward, in this
order): labeled mix -> pseudo-label pass on all unlabeled -> unlabeled mix. SGD is one optimizer over
both phases: its momentum carries over, as upstream reloads the optimizer state with the pre-trained
model. lr: constant in pretrain; in main `optimizer.lr_schedule` counted from the start of the main
phase (LA: x0.1 every 2500 main steps, ACDC: constant). Differences from upstream: main training
starts from the LAST pretrain state, not the best one on a validation pass (upstream picks the LA one
on the test list); box corners come from jax.random, not numpy's global RNG.
"""

import jax
import jax.numpy as jnp
import ml_collections
import optax

from jaxseg import losses
from jaxseg import mixing
from jaxseg import postprocess
from jaxseg.methods import base
from jaxseg.methods import common
from jaxseg.state import TrainState

Array = jax.Array


def features_discrepancy_loss(features_a: Array, features_b: Array) -> Array:
  """1 + mean cosine similarity of A and stopgrad(B) along the channel axis (the CFL "conflict"
  loss, CML_utils.py `features_discrepancy_loss`); gradient flows to A only.

  Both are L2-normalised first (F.normalize, eps 1e-12), then torch `CosineSimilarity(dim=1,
  eps=1e-6)`: (a / max(|a|, eps)) . (b / max(|b|, eps)). A zero feature vector (a dropped channel set
  at a position) stays zero and contributes cos = 0.

  Args:
    features_a, features_b: [B, *spatial, C] (channels-last).

  Returns:
    Scalar in [0, 2].
  """
  if features_a.shape != features_b.shape:
    raise ValueError(
      f"features_discrepancy_loss: shapes differ: {features_a.shape} vs {features_b.shape}"
    )
  a = _l2_normalize(features_a.astype(jnp.float32), 1e-12)
  b = _l2_normalize(jax.lax.stop_gradient(features_b).astype(jnp.float32), 1e-12)
  cos = jnp.sum(_l2_normalize(a, 1e-6) * _l2_normalize(b, 1e-6), axis=-1)
  return 1.0 + jnp.mean(cos)


def _l2_normalize(x: Array, eps: float) -> Array:
  """x / max(|x|_2, eps) along the last axis, with torch's zero gradient of the norm at x = 0
  (a plain sqrt would give NaN there)."""
  sq = jnp.sum(jnp.square(x), axis=-1, keepdims=True)
  positive = sq > 0
  norm = jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, 1.0)), 0.0)
  return x / jnp.maximum(norm, eps)


def supervision_loss(logits: Array, labels: Array, weight_mask: Array | None = None) -> Array:
  """(CE + mask Dice) / 2, CML_utils.py `supervison_loss` (labels cast to int as upstream's .long()).

  Without weight_mask CE is the mean over all voxels; with it sum(CE w) / (sum w + 1e-16) and the
  Dice is masked too (the path exists upstream; CML training never uses it).

  Args:
    logits: [B, *spatial, C]; labels: [B, *spatial] (integer or 0/1 float pseudo-labels).
  """
  labels = labels.astype(jnp.int32)
  logits = logits.astype(jnp.float32)
  if weight_mask is None:
    ce = losses.cross_entropy(logits, labels)
  else:
    ce = losses.masked_cross_entropy(logits, labels, weight_mask)
  return 0.5 * (ce + losses.mask_dice_loss(logits, labels, weight_mask))


def cutmix_box(rng: Array, images: Array, ratio: float) -> Array:
  """float32 [*spatial] box mask for images [B, *spatial, C]: 0 on a box of side int(S * ratio) per
  axis, corner uniform in {0 .. S - side - 1} (`generate_mask_3D/2D`, real image dims), 1 outside."""
  return mixing.box_mask(rng, images.shape[1:-1], ratio)


def mix_pair(first: Array, second: Array, mask: Array) -> Array:
  """`first * mask + second * (1 - mask)`: `second`'s box pasted onto `first` (mask 1 outside)."""
  return mixing.copy_paste(first, second, mask)


def heterogeneous_targets(plab: Array, plab_sub: Array, mask: Array) -> tuple[Array, Array]:
  """Targets of the two branches on the unlabeled mix `box_paste(u[:half], u[half:])`.

  CML_LA_train.py / CML_ACDC_train.py: `mixu_plab = plab_sub[:half] * m + plab[half:] * (1 - m)`
  (branch 1: the OTHER branch's pseudo-label outside the box, its own inside) and `mixu_plab_sub =
  plab[:half] * m + plab_sub[half:] * (1 - m)` (branch 2, symmetric); m = 1 outside the box.

  Args:
    plab, plab_sub: [U, *spatial] pseudo-labels of branch 1 and branch 2 on all unlabeled samples.
    mask: [*spatial] box mask.

  Returns:
    (target1, target2), each [U / 2, *spatial].
  """
  half = plab.shape[0] // 2
  return (
    mix_pair(plab_sub[:half], plab[half:], mask),
    mix_pair(plab[:half], plab_sub[half:], mask),
  )


def lr_schedule(config: ml_collections.ConfigDict) -> optax.Schedule:
  """lr per global step: `optimizer.lr` during pretrain (upstream: constant), then the configured
  schedule counted from the first main step (LA 'step': lr * 0.1 ** (main_step // 2500), set after
  the 2500th main step as upstream; ACDC 'constant'; 'poly' over the main steps)."""
  opt, pre = config.optimizer, int(config.cml.pretrain_steps)
  main = common.lr_schedule(opt, max(config.total_steps - pre, 1))
  if pre <= 0:
    return main
  return optax.join_schedules([optax.constant_schedule(opt.lr), main], [pre])


class CML:
  """Method protocol: init / phases (pretrain, main) / predict (jaxseg/methods/base.py)."""

  name = "cml"
  samples_unlabeled = True
  host_targets = base.NO_HOST_TARGETS

  def __init__(self, config: ml_collections.ConfigDict):
    hp = config.cml
    lb, ub = config.labeled_batch_size, config.batch_size - config.labeled_batch_size
    if lb < 2 or lb % 2 or ub < 2 or ub % 2:
      raise ValueError(
        f"CML mixes the first half of the labeled (and of the unlabeled) samples with "
        f"the second half: labeled_batch_size={lb} and batch_size - "
        f"labeled_batch_size={ub} must both be even and >= 2"
      )
    if not 0 < hp.mask_ratio < 1:
      raise ValueError(
        f"config.cml.mask_ratio={hp.mask_ratio}: the box side ratio must be in (0, 1)"
      )
    if hp.pretrain_steps < 0:
      raise ValueError(f"config.cml.pretrain_steps={hp.pretrain_steps} must be >= 0")
    self.config = config
    self.hp = hp
    self.model = common.build_model(config)
    self.tx = common.sgd(config.optimizer, lr_schedule(config))
    self.labeled_batch_size = lb

  def phases(self) -> tuple[base.Phase, ...]:
    """Pre-train for `cml.pretrain_steps`, then the main phase. One TrainState structure for both
    (params, BN stats, one SGD state, no aux), so a checkpoint of either restores against `init`'s."""
    pretrain = int(self.hp.pretrain_steps)
    main = base.Phase("main", pretrain, self.train_step)
    return (
      (base.Phase("pretrain", 0, self.pretrain_step), main)
      if pretrain > 0
      else (base.Phase("main", 0, self.train_step),)
    )

  def init(self, rng: jax.Array, example_batch) -> TrainState:
    return common.new_state(self, rng, example_batch)

  def _forward(self, params, batch_stats, images, rng):
    """Train-mode forward: ((logits1, logits2, features1, features2), new batch_stats)."""
    return common.train_forward(self.model, params, batch_stats, images, rng)

  def _labeled_terms(self, params, batch_stats, images, labels, mask, rng):
    """CutMix of the labeled halves: (supervised, discrepancy, new batch_stats)."""
    half = self.labeled_batch_size // 2
    lb = self.labeled_batch_size
    x = mix_pair(images[:half], images[half:lb], mask)
    y = mix_pair(labels[:half], labels[half:lb], mask)
    (z1, z2, f1, f2), batch_stats = self._forward(params, batch_stats, x, rng)
    sup = supervision_loss(z1, y) + supervision_loss(z2, y)
    dis = features_discrepancy_loss(f1, f2) + features_discrepancy_loss(f2, f1)
    return sup, dis, batch_stats

  def pretrain_step(self, state: TrainState, batch):
    """Labeled CutMix only (docs/methods/cml.md §3b); the unlabeled part of the batch is not used."""
    hp = self.hp
    rng = jax.random.fold_in(state.rng, state.step)
    mask_rng, fwd_rng = jax.random.split(rng)
    images, labels = batch["image"], batch["label"]
    mask = cutmix_box(mask_rng, images, hp.mask_ratio)

    def loss_fn(params):
      sup, dis, batch_stats = self._labeled_terms(
        params, state.batch_stats, images, labels, mask, fwd_rng
      )
      loss = hp.l_weight * sup + hp.dis_weight * dis
      return loss, (
        batch_stats,
        {"loss": loss, "loss_l": hp.l_weight * sup, "loss_dis": hp.dis_weight * dis},
      )

    grads, (batch_stats, metrics) = jax.grad(loss_fn, has_aux=True)(state.params)
    return common.apply_gradients(self.tx, state, grads, batch_stats), metrics

  def train_step(self, state: TrainState, batch):
    """Main phase (docs/methods/cml.md §3c): labeled CutMix + heterogeneous pseudo-label supervision."""
    hp, lb = self.hp, self.labeled_batch_size
    rng = jax.random.fold_in(state.rng, state.step)
    lmask_rng, umask_rng, l_rng, pl_rng, u_rng = jax.random.split(rng, 5)
    images, labels = batch["image"], batch["label"]
    unlabeled = images[lb:]
    half_u = unlabeled.shape[0] // 2
    lmask = cutmix_box(lmask_rng, images, hp.mask_ratio)
    umask = cutmix_box(umask_rng, images, hp.mask_ratio)
    mixed_u = mix_pair(unlabeled[:half_u], unlabeled[half_u:], umask)

    def loss_fn(params):
      sup_l, dis_l, batch_stats = self._labeled_terms(
        params, state.batch_stats, images, labels, lmask, l_rng
      )
      # Pseudo-labels: the same network, train mode, no gradient (upstream torch.no_grad()); its BN
      # running statistics are updated in between the two mixes' forwards, as upstream.
      (u1, u2, _, _), batch_stats = self._forward(
        jax.lax.stop_gradient(params), batch_stats, unlabeled, pl_rng
      )
      plab = postprocess.cut_mask_pseudo_labels(u1)
      plab_sub = postprocess.cut_mask_pseudo_labels(u2)
      target1, target2 = heterogeneous_targets(plab, plab_sub, umask)
      (z1, z2, f1, f2), batch_stats = self._forward(params, batch_stats, mixed_u, u_rng)
      sup_u = supervision_loss(z1, target1) + supervision_loss(z2, target2)
      dis_u = features_discrepancy_loss(f1, f2) + features_discrepancy_loss(f2, f1)
      loss_l, loss_u = hp.l_weight * sup_l, hp.u_weight * sup_u
      loss_dis = hp.dis_weight * (dis_l + dis_u)
      loss = loss_l + loss_u + loss_dis
      metrics = {
        "loss": loss,
        "loss_l": loss_l,
        "loss_u": loss_u,
        "loss_dis": loss_dis,
        "pseudo_label_fg": jnp.mean((plab > 0).astype(jnp.float32)),
      }
      return loss, (batch_stats, metrics)

    grads, (batch_stats, metrics) = jax.grad(loss_fn, has_aux=True)(state.params)
    return common.apply_gradients(self.tx, state, grads, batch_stats), metrics

  def predict(self, state: TrainState, images):
    """softmax((z1 + z2) / 2) of the eval-mode network (logit averaging, docs/methods/cml.md §6); LA's
    rule p > 0.5 + largest component is argmax + `eval.largest_cc`, ACDC's is the argmax."""
    z1, z2, _, _ = self.model.apply(
      {"params": state.params, "batch_stats": state.batch_stats}, images, train=False
    )
    return jax.nn.softmax((z1.astype(jnp.float32) + z2.astype(jnp.float32)) / 2, axis=-1)
