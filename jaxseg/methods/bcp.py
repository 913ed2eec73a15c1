"""BCP: Bidirectional Copy-Paste (Bai et al., CVPR 2023), docs/methods/bcp.md, 3D LA and 2D ACDC.

Upstream: DeepMed-Lab-ECNU/BCP (7879f98) code/LA_BCP_train.py, code/ACDC_BCP_train.py,
code/utils/BCP_utils.py (context_mask, mix_loss, update_ema_variables), code/utils/losses.py
(mask_DiceLoss, DiceLoss after the mask fix a925e30). One method, two phases in one run:

  pretrain (steps [0, bcp.pretrain_steps)), labeled copy-paste, docs/methods/bcp.md §3b:
    img_a, img_b = labeled halves; M = box mask (1 outside a cube/square of side 2/3, 0 inside);
    X = img_a M + img_b (1 - M), Y likewise; student forward (train mode);
    3D (LA): loss = (CE(z, Y) + mask_DiceLoss(z, Y)) / 2;
    2D (ACDC): mix_loss(z, lab_a, lab_b, M, u_weight=1, unlab=True) -> (dice + ce) / 2.
  selftrain (the rest), docs/methods/bcp.md §3c (LA) / §3d (ACDC); at entry the teacher := the student (params
  and BN statistics) and, on LA only (`bcp.reset_optimizer`), a fresh optimizer state (`load_net`;
  ACDC `load_net_opt` keeps the momentum):
    teacher (train mode: dropout, batch statistics) on the two unlabeled halves, two forwards;
    pseudo-labels: 3D softmax[..., 1] >= 0.5 then the largest 26-connected component per sample;
      2D argmax then per class the largest 8-connected component (jaxseg/postprocess.py, in-graph);
    bidirectional mixing with one box mask M, two student forwards:
      3D: mixl = img_a M + unimg_a (1 - M), mixu = unimg_b M + img_b (1 - M);
      2D: unl = uimg_a M + img_a (1 - M),    l = img_b M + uimg_b (1 - M);
    each output gets `mix_loss`: the region from a labeled image weight 1, the pseudo-labeled region
    `bcp.u_weight` (0.5); total = (sum of dice terms + sum of CE terms) / 2 (identical to upstream's
    loss_l + loss_u on LA and (unl_dice + l_dice + unl_ce + l_ce) / 2 on ACDC);
    after the optimizer step: teacher <- 0.99 teacher + 0.01 student (constant alpha, no warm-up);
    parameters only on LA (its BN buffers are its own forwards'), parameters AND BN statistics on
    ACDC (`bcp.ema_batch_stats`, upstream `update_model_ema` over the state_dict).

The LA / ACDC behaviour is `bcp.recipe` ('la' needs a 3D patch, 'acdc' a 2D one); the other knobs
that differ between the upstream scripts (`reset_optimizer`, `ema_batch_stats`, `mask_bounds`,
`acdc_dice_mask`) are config fields too, set in configs/la_bcp.py and configs/acdc_bcp.py. Unlike upstream, which resumes self-training from the
best pre-train checkpoint chosen ON THE TEST LIST (LA) or the validation list (ACDC), jaxseg
continues from the LAST pre-train state.

Learning rate: pretrain `bcp.pretrain_lr_schedule` (constant upstream); self-train
`config.optimizer` whose schedule counts the optimizer's own steps, i.e. from the self-train start
on LA (fresh state: 0.01 x 0.1^(t // 2500)) and constant on ACDC.
"""

from __future__ import annotations

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

# `bcp.recipe`: which upstream script the step follows (LA_BCP_train.py or ACDC_BCP_train.py), and
# the patch rank each needs.
RECIPES = {"la": 3, "acdc": 2}
MASK_BOUNDS = ("upstream", "shape")
# LA `context_mask`'s hard-coded corner bounds (the LA patch size 112 x 112 x 80).
LA_MASK_BOUNDS = (112, 112, 80)
ACDC_DICE_MASKS = ("head", "legacy")


# ---------------------------------------------------------------------------------------------
# Losses (docs/methods/bcp.md §2). Channels-last: logits [B, *spatial, C], integer labels [B, *spatial],
# masks [B, *spatial] (1 = the voxel counts).
# ---------------------------------------------------------------------------------------------


def acdc_dice_loss(
  probs: Array,
  labels: Array,
  mask: Array | None = None,
  legacy_mask: bool = False,
  smooth: float = 1e-10,
) -> Array:
  """BCP ACDC `DiceLoss(n_classes)(probs, target, mask)`: mean over classes of
  1 - (2 sum p t m + s) / (sum p^2 m + sum t^2 m + s), sums over the whole batch (squared
  denominators, smooth 1e-10).

  Args:
    probs: softmax probabilities [B, *spatial, C].
    labels: int [B, *spatial].
    mask: [B, *spatial] or None.
    legacy_mask: the loss before BCP commit a925e30 (issue #25, the paper's numbers): class 0 ignores
      the mask (its `_one_hot_mask_encoder` gave an all-ones background mask).
  """
  probs = probs.astype(jnp.float32)
  c = probs.shape[-1]
  t = jax.nn.one_hot(labels, c, dtype=probs.dtype)
  if mask is None:
    m = jnp.ones(probs.shape[:-1] + (1,), probs.dtype)
  else:
    m = jnp.broadcast_to(mask.astype(probs.dtype)[..., None], probs.shape)
    if legacy_mask:
      m = m.at[..., 0].set(1.0)
  axes = tuple(range(probs.ndim - 1))
  inter = jnp.sum(probs * t * m, axis=axes)
  y_sum = jnp.sum(t * t * m, axis=axes)
  z_sum = jnp.sum(probs * probs * m, axis=axes)
  return jnp.mean(1.0 - (2.0 * inter + smooth) / (z_sum + y_sum + smooth))


def mix_loss(
  logits: Array,
  img_l: Array,
  patch_l: Array,
  mask: Array,
  l_weight: float = 1.0,
  u_weight: float = 0.5,
  unlab: bool = False,
  dice: str = "la",
  legacy_mask: bool = False,
) -> tuple[Array, Array]:
  """BCP `mix_loss` as (dice, ce): `img_l` labels the mask == 1 region, `patch_l` the box.

  Weights (image, patch) = (l_weight, u_weight), swapped when `unlab`. dice = image_weight D(z,
  img_l, m) + patch_weight D(z, patch_l, 1 - m), ce likewise with the masked CE. `dice` = 'la'
  (`mask_DiceLoss` on logits, LA's BCP_utils.mix_loss, which returns (dice + ce) / 2) or 'acdc'
  (`DiceLoss` on softmax, ACDC_BCP_train.mix_loss, which returns the pair).
  """
  image_w, patch_w = (u_weight, l_weight) if unlab else (l_weight, u_weight)
  mask = mask.astype(jnp.float32)
  patch_mask = 1.0 - mask
  if dice == "la":
    d = image_w * losses.mask_dice_loss(logits, img_l, mask) + patch_w * losses.mask_dice_loss(
      logits, patch_l, patch_mask
    )
  elif dice == "acdc":
    probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
    d = image_w * acdc_dice_loss(probs, img_l, mask, legacy_mask) + patch_w * acdc_dice_loss(
      probs, patch_l, patch_mask, legacy_mask
    )
  else:
    raise ValueError(f"mix_loss: dice={dice!r}, expected 'la' or 'acdc'")
  ce = image_w * losses.masked_cross_entropy(
    logits, img_l, mask
  ) + patch_w * losses.masked_cross_entropy(logits, patch_l, patch_mask)
  return d, ce


def sup_loss(logits: Array, labels: Array) -> Array:
  """BCP `sup_loss` / the LA pre-train loss: (mask_DiceLoss(z, y) + mean CE(z, y)) / 2."""
  return 0.5 * (losses.mask_dice_loss(logits, labels) + losses.cross_entropy(logits, labels))


def constant_ema(ema, new, decay: float):
  """ema <- decay ema + (1 - decay) new, leafwise (BCP `update_ema_variables`, no warm-up)."""
  return optax.incremental_update(new_tensors=new, old_tensors=ema, step_size=1.0 - decay)


def sequential_running_stats(batch_stats, stacked, momentum: float = 0.1):
  """Running BN statistics after K forwards run one after the other, from K vmapped ones.

  Each of the K vmapped forwards started from `batch_stats` r0 and returned r0' = (1 - m) r0 + m s_k
  (`stacked`, leading axis K). Run in sequence (upstream: separate module calls) they give
  r_k = (1 - m) r_{k-1} + m s_k, with m s_k = stacked[k] - (1 - m) r0. m is torch's momentum (0.1,
  `jaxseg.models.layers.BatchNorm`).
  """

  def combine(r0, rk):
    r = r0
    for k in range(rk.shape[0]):
      r = (1.0 - momentum) * r + (rk[k] - (1.0 - momentum) * r0)
    return r.astype(r0.dtype)

  return jax.tree.map(combine, batch_stats, stacked)


def paired_train_forward(model, params, batch_stats, xs: Array, keys: Array):
  """K train-mode forwards of xs [K, B, *spatial, C] as one vmapped call.

  Each forward normalises with its own batch statistics (as K separate upstream calls do); the
  running statistics come back as if the calls ran in order (`sequential_running_stats`). One
  forward in the compiled graph instead of K keeps compile time down.

  Returns:
    (logits [K, B, *spatial, n_classes], batch_stats).
  """
  logits, stacked = jax.vmap(
    lambda x, key: common.train_forward(model, params, batch_stats, x, key)
  )(xs, keys)
  return logits, sequential_running_stats(batch_stats, stacked)


# ---------------------------------------------------------------------------------------------
# The method.
# ---------------------------------------------------------------------------------------------


class BCP:
  """Method protocol: init / phases (pretrain, selftrain) / predict (jaxseg/methods/base.py).

  `tx` is the pre-train optimizer (the state `init` builds), `self_tx` the self-train one; both
  are SGD(momentum) with coupled weight decay and a schedule, so their states share one structure.
  """

  name = "bcp"
  samples_unlabeled = True
  host_targets = base.NO_HOST_TARGETS

  def __init__(self, config: ml_collections.ConfigDict):
    hp = config.bcp
    lb, b = config.labeled_batch_size, config.batch_size
    if lb % 2 or b != 2 * lb:
      raise ValueError(
        f"bcp: labeled_batch_size={lb} must be even and batch_size={b} twice it "
        "(two labeled and two unlabeled sub-batches of the same size, as upstream)"
      )
    if hp.recipe not in RECIPES:
      raise ValueError(f"config.bcp.recipe={hp.recipe!r}: expected one of {sorted(RECIPES)}")
    if len(config.data.patch_size) != RECIPES[hp.recipe]:
      raise ValueError(
        f"config.bcp.recipe={hp.recipe!r} is a {RECIPES[hp.recipe]}D recipe, but "
        f"config.data.patch_size={tuple(config.data.patch_size)}"
      )
    if hp.mask_bounds not in MASK_BOUNDS:
      raise ValueError(f"config.bcp.mask_bounds={hp.mask_bounds!r}: expected one of {MASK_BOUNDS}")
    if hp.get("acdc_dice_mask", "head") not in ACDC_DICE_MASKS:
      raise ValueError(
        f"config.bcp.acdc_dice_mask={hp.acdc_dice_mask!r}: expected one of {ACDC_DICE_MASKS}"
      )
    if not 0 <= hp.pretrain_steps:
      raise ValueError(f"config.bcp.pretrain_steps={hp.pretrain_steps} must be >= 0")
    self.config = config
    self.hp = hp
    self.sub = lb // 2
    self.model = common.build_model(config)
    self.tx = common.sgd(
      config.optimizer,
      common.lr_schedule(config.optimizer, config.total_steps, kind=hp.pretrain_lr_schedule),
    )
    self.self_tx = common.make_optimizer(config)

  def phases(self) -> tuple[base.Phase, ...]:
    """Pre-train for `bcp.pretrain_steps`, then self-train (teacher := student) to the end."""
    pretrain = self.hp.pretrain_steps
    phases = []
    if pretrain > 0:
      phases.append(base.Phase("pretrain", 0, self.pretrain_step))
    if pretrain == 0 or pretrain < self.config.total_steps:
      phases.append(
        base.Phase(
          "selftrain", pretrain, self.selftrain_step, self.enter_selftrain if pretrain > 0 else None
        )
      )
    return tuple(phases)

  # -- state ------------------------------------------------------------------------------------

  def init(self, rng: jax.Array, example_batch) -> TrainState:
    """Student from `init`; the teacher (aux) a copy of it, replaced at the self-train entry anyway.
    Everything both phases need is in the state from the start (one checkpoint structure)."""
    return common.new_state(
      self,
      rng,
      example_batch,
      aux_fn=lambda _, v: self._teacher_copy(v["params"], v["batch_stats"]),
    )

  @staticmethod
  def _teacher_copy(params, batch_stats) -> dict:
    # Fresh buffers: the jitted steps donate the state, which must not alias a buffer twice.
    return {
      "ema_params": jax.tree.map(jnp.copy, params),
      "ema_batch_stats": jax.tree.map(jnp.copy, batch_stats),
    }

  def enter_selftrain(self, state: TrainState) -> TrainState:
    """teacher := student (params and BN statistics); LA: a fresh optimizer (`load_net`), ACDC:
    the pre-train momentum kept (`load_net_opt`)."""
    opt_state = self.self_tx.init(state.params) if self.hp.reset_optimizer else state.opt_state
    return state.replace(
      aux=self._teacher_copy(state.params, state.batch_stats), opt_state=opt_state
    )

  # -- pieces -------------------------------------------------------------------------------------

  def _mask(self, rng: jax.Array, spatial) -> Array:
    """The step's box mask [*spatial] (1 outside the box), shared by every sample and image."""
    hp = self.hp
    # Only LA's context_mask hard-codes its corner bounds; ACDC's generate_mask uses the shape.
    la_bounds = hp.recipe == "la" and hp.mask_bounds == "upstream"
    return mixing.box_mask(rng, spatial, hp.mask_ratio, LA_MASK_BOUNDS if la_bounds else None)

  def _region_loss(self, logits, img_l, patch_l, mask, image_w, patch_w):
    """(dice, ce) of one mixed output; `img_l` labels mask == 1, `patch_l` the box."""
    return mix_loss(
      logits,
      img_l,
      patch_l,
      mask,
      l_weight=image_w,
      u_weight=patch_w,
      dice=self.hp.recipe,
      legacy_mask=self.hp.get("acdc_dice_mask", "head") == "legacy",
    )

  # -- phases -------------------------------------------------------------------------------------

  def pretrain_step(self, state: TrainState, batch):
    """Labeled copy-paste (docs/methods/bcp.md §3b): only the labeled half of the batch is used."""
    rng = jax.random.fold_in(state.rng, state.step)
    mask_rng, student_rng = jax.random.split(rng)
    s, lb = self.sub, 2 * self.sub
    images, labels = batch["image"], batch["label"]
    img_a, img_b, lab_a, lab_b = images[:s], images[s:lb], labels[:s], labels[s:lb]
    m = self._mask(mask_rng, images.shape[1:-1])
    x = mixing.copy_paste(img_a, img_b, m)
    loss_mask = jnp.broadcast_to(m, lab_a.shape)

    def loss_fn(params):
      logits, batch_stats = common.train_forward(
        self.model, params, state.batch_stats, x, student_rng
      )
      if self.hp.recipe == "la":
        y = mixing.copy_paste(lab_a, lab_b, m)
        ce = losses.cross_entropy(logits, y)
        dice = losses.mask_dice_loss(logits, y)
      else:
        dice, ce = self._region_loss(logits, lab_a, lab_b, loss_mask, 1.0, 1.0)
      loss = 0.5 * (dice + ce)
      return loss, (
        batch_stats,
        {"loss": loss, "loss_ce": ce, "loss_dice": dice, "mask_box_fraction": 1.0 - jnp.mean(m)},
      )

    grads, (batch_stats, metrics) = jax.grad(loss_fn, has_aux=True)(state.params)
    return common.apply_gradients(self.tx, state, grads, batch_stats), metrics

  def selftrain_step(self, state: TrainState, batch):
    """Bidirectional copy-paste with EMA-teacher pseudo-labels (docs/methods/bcp.md §3c LA, §3d ACDC)."""
    hp, s = self.hp, self.sub
    lb = 2 * s
    rng = jax.random.fold_in(state.rng, state.step)
    mask_rng, t_rng_a, t_rng_b, s_rng_1, s_rng_2 = jax.random.split(rng, 5)
    images, labels = batch["image"], batch["label"]
    img_a, img_b, lab_a, lab_b = images[:s], images[s:lb], labels[:s], labels[s:lb]
    unimg_a, unimg_b = images[lb : lb + s], images[lb + s :]
    ema_params, ema_stats = state.aux["ema_params"], state.aux["ema_batch_stats"]

    # Teacher in train mode on the two unlabeled halves: two forwards (BN batch statistics per call).
    z, ema_stats = paired_train_forward(
      self.model,
      ema_params,
      ema_stats,
      jnp.stack([unimg_a, unimg_b]),
      jnp.stack([t_rng_a, t_rng_b]),
    )
    plab = postprocess.cut_mask_pseudo_labels(
      z.reshape((2 * s,) + z.shape[2:]), hp.pseudo_threshold
    )
    plab_a, plab_b = plab[:s], plab[s:]
    m = self._mask(mask_rng, images.shape[1:-1])
    loss_mask = jnp.broadcast_to(m, lab_a.shape)
    u = hp.u_weight
    if hp.recipe == "la":
      # LA: mixl = img_a outside + unimg_a box; mixu = unimg_b outside + img_b box.
      pairs = (
        (mixing.copy_paste(img_a, unimg_a, m), lab_a, plab_a, 1.0, u),
        (mixing.copy_paste(unimg_b, img_b, m), plab_b, lab_b, u, 1.0),
      )
    else:
      # ACDC: unl = uimg_a outside + img_a box; l = img_b outside + uimg_b box.
      pairs = (
        (mixing.copy_paste(unimg_a, img_a, m), plab_a, lab_a, u, 1.0),
        (mixing.copy_paste(img_b, unimg_b, m), lab_b, plab_b, 1.0, u),
      )

    xs = jnp.stack([p[0] for p in pairs])

    def loss_fn(params):
      # The two mixed images are two student forwards (their own BN batches), as upstream.
      logits, batch_stats = paired_train_forward(
        self.model, params, state.batch_stats, xs, jnp.stack([s_rng_1, s_rng_2])
      )
      dices, ces = [], []
      for k, (_, y_out, y_in, w_out, w_in) in enumerate(pairs):
        d, c = self._region_loss(logits[k], y_out, y_in, loss_mask, w_out, w_in)
        dices.append(d)
        ces.append(c)
      dice, ce = dices[0] + dices[1], ces[0] + ces[1]
      loss = 0.5 * (dice + ce)
      metrics = {
        "loss": loss,
        "loss_ce": ce,
        "loss_dice": dice,
        "loss_first": 0.5 * (dices[0] + ces[0]),
        "loss_second": 0.5 * (dices[1] + ces[1]),
        "pseudo_fg_fraction": jnp.mean((jnp.concatenate([plab_a, plab_b]) > 0).astype(jnp.float32)),
        "mask_box_fraction": 1.0 - jnp.mean(m),
      }
      return loss, (batch_stats, metrics)

    grads, (batch_stats, metrics) = jax.grad(loss_fn, has_aux=True)(state.params)
    new_state = common.apply_gradients(self.self_tx, state, grads, batch_stats)
    ema_params = constant_ema(ema_params, new_state.params, hp.ema_decay)
    if hp.ema_batch_stats:
      ema_stats = constant_ema(ema_stats, new_state.batch_stats, hp.ema_decay)
    return new_state.replace(aux={"ema_params": ema_params, "ema_batch_stats": ema_stats}), metrics

  def predict(self, state: TrainState, images):
    """The student in eval mode (upstream test_LA.py / test_ACDC.py); softmax probabilities whose
    argmax is the decision (LA: p1 > 0.5, then LCC via config eval.largest_cc)."""
    return common.eval_probabilities(self.model, state.params, state.batch_stats, images)
