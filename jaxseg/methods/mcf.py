"""MCF: Mutual Correction Framework (Wang et al., CVPR 2023), docs/methods/mcf.md.

Upstream: WYC-321/MCF code/train_MCF.py (losses, dynamic pseudo-label generator, schedule),
code/utils/losses.py (dice_loss; its softmax_mse_loss has the softmax commented out, so it is a
plain squared difference), code/test_LA_MCF.py (the two-network average). Channels-last: logits
[B, D, H, W, C], labels [B, D, H, W].

Two heterogeneous students, no teacher: a VNet (`config.model`) and a ResVNet (3D ResNet-34
encoder + VNet decoder, `config.mcf.second_model`), both built from `config.model.kwargs`, each
with its own SGD optimizer state. Per step, batch [L1, L2, U1, U2] (labeled_batch_size 2), the
same crop for both networks (upstream's two "views" are identical tensors):
  * both networks forward on all four volumes (train mode: batch-statistics BN over labeled and
    unlabeled together, dropout on);
  * supervised on [:2] per network: CE + Dice (foreground channel, squared denominators) + 0.5 *
    contrastive difference review, the CDR being sum(diff * (p[..., 1] - y)^2) / (sum(diff) +
    1e-16) over the voxels where the two networks' argmax predictions disagree about class 1
    (diff = XOR, no gradient through the mask);
  * the pseudo-label generator ("good student") is re-chosen every step inside the compiled step:
    the VNet when its supervised Dice loss is strictly lower, else the ResVNet (ties -> ResVNet);
  * its unlabeled softmax sharpened with T = 0.1 (p^10 renormalised over classes, no gradient) is
    the target of the other network only: mean((p_loser[2:] - PL)^2) over every element, weighted
    0.1 * sigmoid_rampup(step // 150, 40);
  * loss_V and loss_R are minimised by their own optimizers (they share no parameters and PL is
    detached, so one gradient of loss_V + loss_R splits into the two upstream backward passes).
`predict` = (softmax(VNet) + softmax(ResVNet)) / 2 in eval mode, no post-processing.
"""

import jax
import jax.numpy as jnp
import ml_collections
import optax

from jaxseg import losses
from jaxseg import schedules
from jaxseg.methods import base
from jaxseg.methods import common
from jaxseg.models import resvnet
from jaxseg.state import TrainState

Array = jax.Array

NETWORKS = ("vnet", "resvnet")
_INITS = ("kaiming_normal", "torch")
VNET, RESVNET = 0, 1  # upstream `Good_student` codes


def plain_mse(a: Array, b: Array) -> Array:
  """MCF `losses.softmax_mse_loss`: elementwise (a - b)^2, no softmax, no reduction."""
  diff = a - b
  return diff * diff


def sharpen(probs: Array, temperature: float) -> Array:
  """p^(1/T) / sum_c p^(1/T) over the class axis (MCF's pseudo label, T = 0.1)."""
  powered = probs ** (1.0 / temperature)
  return powered / jnp.sum(powered, axis=-1, keepdims=True)


def foreground(probs: Array) -> Array:
  """probs[..., 1] as a static slice (a gather's scatter gradient is slow to compile on XLA:CPU)."""
  return jax.lax.index_in_dim(probs, 1, axis=-1, keepdims=False)


def difference_review(
  probs_v: Array, probs_r: Array, labels: Array
) -> tuple[Array, Array, Array, Array, Array]:
  """The contrastive difference review of the labeled slice.

  Args:
    probs_v, probs_r: softmax of the two networks [B_l, ..., C].
    labels: int [B_l, ...].

  Returns:
    (diff_mask int32 [B_l, ...], dist_v, dist_r [B_l, ...] = (p[..., 1] - y)^2, cdr_v, cdr_r
    scalars = sum(diff * dist) / (sum(diff) + 1e-16)). The mask carries no gradient.
  """
  pred_v = jnp.argmax(probs_v, axis=-1) == 1
  pred_r = jnp.argmax(probs_r, axis=-1) == 1
  diff = jnp.logical_xor(pred_v, pred_r).astype(jnp.int32)
  y = labels.astype(probs_v.dtype)
  dist_v = plain_mse(foreground(probs_v), y)
  dist_r = plain_mse(foreground(probs_r), y)
  return (diff, dist_v, dist_r, losses.masked_mean(dist_v, diff), losses.masked_mean(dist_r, diff))


def mcf_losses(
  logits_v: Array,
  logits_r: Array,
  labels: Array,
  labeled_batch_size: int,
  weight,
  temperature: float = 0.1,
  cdr_weight: float = 0.5,
) -> dict[str, Array]:
  """Every loss of one MCF iteration (train_MCF.py's inline code), for both networks.

  Args:
    logits_v, logits_r: VNet / ResVNet logits [B, ..., C], the first `labeled_batch_size` labeled.
    labels: int [B, ...] (only the labeled slice is read).
    labeled_batch_size: lb.
    weight: the consistency weight (host or traced scalar).
    temperature: sharpening T.
    cdr_weight: weight of the difference review in the supervised loss (0.5).

  Returns:
    dict with 'loss_v', 'loss_r' (what each optimizer minimises), 'good_student' (int32: 0 VNet,
    1 ResVNet), 'ce_v', 'dice_v', 'cdr_v', 'supervised_v' (and _r), 'diff_mask', 'dist_v',
    'dist_r', 'pseudo_label_v', 'pseudo_label_r' (both sharpened maps, gradient stopped) and
    'consistency' (the weaker network's mean squared distance to the chosen pseudo label).
  """
  lb = labeled_batch_size
  probs_v = jax.nn.softmax(logits_v.astype(jnp.float32), axis=-1)
  probs_r = jax.nn.softmax(logits_r.astype(jnp.float32), axis=-1)
  y = labels[:lb]
  out = {}
  for key, logits, probs in (("v", logits_v, probs_v), ("r", logits_r, probs_r)):
    out[f"ce_{key}"] = losses.cross_entropy(logits[:lb].astype(jnp.float32), y)
    out[f"dice_{key}"] = losses.dice_loss(foreground(probs[:lb]), y == 1)
  diff, dist_v, dist_r, cdr_v, cdr_r = difference_review(probs_v[:lb], probs_r[:lb], y)
  out.update(diff_mask=diff, dist_v=dist_v, dist_r=dist_r, cdr_v=cdr_v, cdr_r=cdr_r)
  for key in ("v", "r"):
    out[f"supervised_{key}"] = (
      out[f"ce_{key}"] + out[f"dice_{key}"] + cdr_weight * out[f"cdr_{key}"]
    )

  # Strict <: ties go to the ResVNet, as upstream's `if v_dice < r_dice: 0 else: 1`.
  vnet_good = out["dice_v"] < out["dice_r"]
  good = jnp.where(vnet_good, VNET, RESVNET).astype(jnp.int32)
  pl_v = jax.lax.stop_gradient(sharpen(probs_v[lb:], temperature))
  pl_r = jax.lax.stop_gradient(sharpen(probs_r[lb:], temperature))
  pseudo = jnp.where(vnet_good, pl_v, pl_r)
  cons_v = jnp.mean(plain_mse(probs_v[lb:], pseudo))
  cons_r = jnp.mean(plain_mse(probs_r[lb:], pseudo))
  # Only the weaker network learns from the pseudo label (the other term is computed but unused).
  out["loss_v"] = out["supervised_v"] + jnp.where(vnet_good, 0.0, weight * cons_v)
  out["loss_r"] = out["supervised_r"] + jnp.where(vnet_good, weight * cons_r, 0.0)
  out.update(
    good_student=good,
    pseudo_label_v=pl_v,
    pseudo_label_r=pl_r,
    consistency=jnp.where(vnet_good, cons_r, cons_v),
  )
  return out


class MCF:
  """Method protocol: init / phases (one: train_step) / predict (jaxseg/methods/base.py).

  State layout: `params`, `batch_stats` and `opt_state` are dicts {'vnet': ..., 'resvnet': ...},
  one optimizer state per network (same transformation `tx`, as upstream's two identical SGDs);
  `aux` is empty.
  """

  name = "mcf"
  samples_unlabeled = True
  host_targets = base.NO_HOST_TARGETS

  def __init__(self, config: ml_collections.ConfigDict):
    hp = config.mcf
    if hp.init not in _INITS:
      raise ValueError(f"config.mcf.init={hp.init!r}: expected one of {_INITS}")
    if not 0.0 < hp.temperature:
      raise ValueError(f"config.mcf.temperature={hp.temperature}: must be > 0")
    self.config = config
    self.hp = hp
    self.labeled_batch_size = config.labeled_batch_size
    self.model = common.build_model(config)  # the VNet branch
    # Same constructor arguments, compute dtype and remat as the VNet (upstream builds both with
    # n_channels=1, n_classes=2, batchnorm, has_dropout=True).
    self.second_model = common.build_model(
      ml_collections.ConfigDict(
        dict(
          model=dict(
            name=hp.second_model,
            kwargs=dict(config.model.get("kwargs", {})),
            remat=config.model.get("remat", False),
          ),
          compute_dtype=config.get("compute_dtype", "float32"),
        )
      )
    )
    self.networks = {"vnet": self.model, "resvnet": self.second_model}
    self.tx = common.make_optimizer(config)

  def init(self, rng: jax.Array, example_batch) -> TrainState:
    # One compiled program: eager flax init of the ResNet-34 dispatches (and compiles) hundreds of
    # small ops, which took longer than compiling them together on XLA:CPU.
    return jax.jit(self._init)(rng, jnp.asarray(example_batch["image"]))

  def _init(self, rng: jax.Array, images: Array) -> TrainState:
    *net_rngs, step_rng = jax.random.split(rng, len(NETWORKS) + 1)
    params, batch_stats = {}, {}
    for name, key in zip(NETWORKS, net_rngs):
      net = self.networks[name]
      init_key, kaiming_key = jax.random.split(key)
      variables = common.init_variables(net, init_key, images)
      params[name] = variables["params"]
      if self.hp.init == "kaiming_normal":
        params[name] = resvnet.kaiming_normal_conv_kernels(params[name], kaiming_key)
      batch_stats[name] = variables["batch_stats"]
    return TrainState(
      step=jnp.zeros((), jnp.int32),
      params=params,
      batch_stats=batch_stats,
      opt_state={name: self.tx.init(params[name]) for name in NETWORKS},
      rng=step_rng,
      aux={},
    )

  def phases(self) -> tuple[base.Phase, ...]:
    return (base.Phase("train", 0, self.train_step),)

  def train_step(self, state: TrainState, batch):
    """batch: image [B, D, H, W, 1], label [B, D, H, W]; the first labeled_batch_size are labeled."""
    hp, lb = self.hp, self.labeled_batch_size
    rng = jax.random.fold_in(state.rng, state.step)
    dropout_rngs = dict(zip(NETWORKS, jax.random.split(rng, len(NETWORKS))))
    images, labels = batch["image"], batch["label"]
    weight = schedules.consistency_weight(
      state.step, hp.consistency, hp.consistency_rampup, hp.iters_per_epoch
    )

    def loss_fn(params):
      logits, new_stats = {}, {}
      for name, net in self.networks.items():
        logits[name], new_stats[name] = common.train_forward(
          net, params[name], state.batch_stats[name], images, dropout_rngs[name]
        )
      out = mcf_losses(
        logits["vnet"],
        logits["resvnet"],
        labels,
        lb,
        weight,
        temperature=hp.temperature,
        cdr_weight=hp.cdr_weight,
      )
      # d(loss_v + loss_r)/d vnet = d loss_v/d vnet and likewise for the ResVNet (no shared
      # parameters, pseudo label detached): the two upstream backward passes in one.
      return out["loss_v"] + out["loss_r"], (new_stats, out)

    grads, (batch_stats, out) = jax.grad(loss_fn, has_aux=True)(state.params)
    params, opt_state = {}, {}
    for name in NETWORKS:
      updates, opt_state[name] = self.tx.update(
        grads[name], state.opt_state[name], state.params[name]
      )
      params[name] = optax.apply_updates(state.params[name], updates)
    new_state = state.replace(
      step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state
    )
    metrics = {
      "loss": out["loss_v"] + out["loss_r"],
      "loss_vnet": out["loss_v"],
      "loss_resvnet": out["loss_r"],
      "good_student": out["good_student"],
      "consistency": out["consistency"],
      "consistency_weight": weight,
      "diff_fraction": jnp.mean(out["diff_mask"].astype(jnp.float32)),
    }
    for key, name in (("v", "vnet"), ("r", "resvnet")):
      for term in ("ce", "dice", "cdr"):
        metrics[f"loss_{term}_{name}"] = out[f"{term}_{key}"]
    return new_state, metrics

  def predict(self, state: TrainState, images) -> Array:
    """(softmax(VNet) + softmax(ResVNet)) / 2, eval mode, as test_LA_MCF.py."""
    probs = [
      common.eval_probabilities(net, state.params[name], state.batch_stats[name], images)
      for name, net in self.networks.items()
    ]
    return 0.5 * (probs[0] + probs[1])
