"""DyCON: dynamic uncertainty-aware consistency and contrastive learning (Assefa et al., CVPR 2025).

Upstream: KU-CVML/DyCON code/train_DyCON_BraTS19.py and train_DyCON_Pancreas.py (commit 69c1384),
losses in code/utils/dycon_losses.py (here jaxseg/methods/dycon/losses.py). Method notes: docs/methods/dycon.md §3.
Network: `unet3d_dycon` (returns output_sdf, logits, projection features).

One step, batch x = [labeled (labeled_batch_size), unlabeled], y its labels (ground truth for every
sample; the unlabeled ones are used by FeCL, see below):
  * teacher: EMA params, train mode (dropout on, batch-statistics BN in the projection head) on
    x + clamp(0.1 N(0, 1), +-0.2) (the whole batch), no gradient;
  * student on x: L_sup = CE(zS[:lb], y[:lb]) + Dice(softmax(zS)[:lb, fg], y[:lb] == 1) (weight
    l_weight = 1, not UA-MT's 0.5);
  * FeCL on the L2-normalised projection embeddings of the unlabeled half (HEAD; 'all' = the whole
    batch, as before the 2025-11-01 commits), patch labels from y downsampled to the feature grid
    (trilinear > 0.5 at HEAD, 'avgpool' = the earlier majority rule). This reads the ground truth
    of the UNLABELED volumes (DyCON issues #1 / #9, "label leakage"); `patch_label_source='teacher'`
    uses argmax of the teacher's softmax instead, downsampled the same way (a clean variant);
  * UnCL(zS, zT, beta(epoch)) on the whole batch, beta = 5 (0.5 / 5)^(e / E) per sampler epoch;
  * L_mse = mean((softmax(pS[lb:]) - softmax(pT[lb:]))^2) (double softmax, upstream quirk);
  * L = l_weight L_sup + w(t) L_mse + u_weight (FeCL + UnCL), w(t) = 0.1 sigmoid_rampup(t // 150,
    200);
  * a non-finite L skips the update (no optimizer step, no EMA, t unchanged) as upstream's
    `continue`; BN running statistics keep the forward's update, as in torch;
  * SGD (gradient norm clipped to `optimizer.clip_grad_norm`, 1.0 upstream, inside the optimizer
    chain), then EMA alpha = min(1 - 1/(t + 1), 0.99) of the parameters; t += 1.

Counters: `state.step` counts batches (the training loop's step); the sampler epoch is
e = state.step // iters_per_epoch with iters_per_epoch = data.labeled // labeled_batch_size
(upstream len(trainloader), the TwoStreamBatchSampler epoch), E = total_steps // iters_per_epoch + 1
(upstream max_epoch). `aux['iter_num']` is upstream's t, which skipped batches do not advance; it
drives the EMA warm-up and the consistency ramp. Upstream stops after max_iterations successful
updates; here a run is total_steps batches, so skipped batches shorten it (metric
`skipped_total`).
"""

import jax
import jax.numpy as jnp
import ml_collections

# `losses` in this package's namespace is the submodule jaxseg.methods.dycon.losses.
from jaxseg import losses as seg_losses
from jaxseg import schedules
from jaxseg.methods import base
from jaxseg.methods import common
from jaxseg.methods.dycon import losses as dycon_losses
from jaxseg.state import TrainState

FECL_ON = ("unlabeled", "all")
LABEL_SOURCES = ("ground_truth", "teacher")


def iters_per_epoch(config: ml_collections.ConfigDict) -> int:
  """`dycon.iters_per_epoch`, or for 0 the two-stream sampler's epoch length
  data.labeled // labeled_batch_size (upstream len(trainloader); BraTS 25 labels: 6)."""
  n = config.dycon.get("iters_per_epoch", 0)
  return int(n) if n else max(1, config.data.labeled // config.labeled_batch_size)


def _forward(model, params, batch_stats, images, rng):
  """Train-mode forward returning (logits, features, new batch_stats); sdf head unused by DyCON."""
  (_, logits, features), mutated = model.apply(
    {"params": params, "batch_stats": batch_stats},
    images,
    train=True,
    return_all=True,
    rngs={"dropout": rng},
    mutable=["batch_stats"],
  )
  return logits.astype(jnp.float32), features.astype(jnp.float32), mutated["batch_stats"]


class DyCON:
  """Method protocol: init / phases (one: train_step) / predict (jaxseg/methods/base.py)."""

  name = "dycon"
  samples_unlabeled = True
  host_targets = base.NO_HOST_TARGETS

  def __init__(self, config: ml_collections.ConfigDict):
    hp = config.dycon
    if config.model.name != "unet3d_dycon":
      raise ValueError(
        f"dycon needs model.name='unet3d_dycon' (logits + projection features), got "
        f"{config.model.name!r}"
      )
    if hp.fecl_on not in FECL_ON:
      raise ValueError(f"config.dycon.fecl_on={hp.fecl_on!r}: expected one of {FECL_ON}")
    if hp.patch_label_rule not in dycon_losses.LABEL_RULES:
      raise ValueError(
        f"config.dycon.patch_label_rule={hp.patch_label_rule!r}: expected one of "
        f"{dycon_losses.LABEL_RULES}"
      )
    if hp.patch_label_source not in LABEL_SOURCES:
      raise ValueError(
        f"config.dycon.patch_label_source={hp.patch_label_source!r}: expected one of "
        f"{LABEL_SOURCES}"
      )
    self.config = config
    self.hp = hp
    self.model = common.build_model(config)
    self.tx = common.make_optimizer(config)
    self.labeled_batch_size = config.labeled_batch_size
    self.iters_per_epoch = iters_per_epoch(config)
    self.max_epoch = dycon_losses.max_epoch(config.total_steps, self.iters_per_epoch)

  def init(self, rng: jax.Array, example_batch) -> TrainState:
    state = common.new_teacher_state(self, rng, example_batch)
    return state.replace(aux={**state.aux, "iter_num": jnp.zeros((), jnp.int32)})

  def beta(self, epoch):
    """UnCL's beta at sampler epoch `epoch`: `static_beta` if > 0 (upstream --s_beta), else
    adaptive 5 -> 0.5 over max_epoch."""
    hp = self.hp
    if hp.get("static_beta", 0.0) > 0:
      return jnp.asarray(hp.static_beta, jnp.float32)
    return dycon_losses.adaptive_beta(epoch, self.max_epoch, hp.beta_max, hp.beta_min)

  def phases(self) -> tuple[base.Phase, ...]:
    return (base.Phase("train", 0, self.train_step),)

  def train_step(self, state: TrainState, batch):
    """batch: image [B, D, H, W, 1], label [B, D, H, W]; the first labeled_batch_size are labeled."""
    hp, lb = self.hp, self.labeled_batch_size
    rng = jax.random.fold_in(state.rng, state.step)
    student_rng, noise_rng, teacher_rng = jax.random.split(rng, 3)
    images, labels = batch["image"], batch["label"]
    iter_num = state.aux["iter_num"]
    epoch = state.step // self.iters_per_epoch
    beta = self.beta(epoch)
    weight = schedules.consistency_weight(
      iter_num, hp.consistency, hp.consistency_rampup, hp.consistency_iters_per_epoch
    )

    noisy = images + common.teacher_noise(noise_rng, images.shape, hp.noise_std, hp.noise_clip)
    t_logits, t_features, teacher_stats = _forward(
      self.model, state.aux["ema_params"], state.aux["ema_batch_stats"], noisy, teacher_rng
    )
    t_logits, t_features = jax.lax.stop_gradient((t_logits, t_features))
    t_probs = jax.nn.softmax(t_logits, axis=-1)
    t_embed = dycon_losses.embeddings(t_features)
    fecl_rows = slice(lb, None) if hp.fecl_on == "unlabeled" else slice(None)
    fecl_kwargs = dict(
      temperature=hp.temperature,
      gamma=hp.gamma,
      use_focal=hp.use_focal,
      rampup_epochs=hp.rampup_epochs,
      lambda_cross=hp.lambda_cross,
    )

    def loss_fn(params):
      logits, features, batch_stats = _forward(
        self.model, params, state.batch_stats, images, student_rng
      )
      probs = jax.nn.softmax(logits, axis=-1)
      ce = seg_losses.cross_entropy(logits[:lb], labels[:lb])
      # A static slice, not probs[..., 1] (see jaxseg.losses.supervised_ce_dice).
      foreground = jax.lax.index_in_dim(probs[:lb], 1, axis=-1, keepdims=False)
      dice = seg_losses.dice_loss(foreground, labels[:lb] == 1)

      factor = images.shape[1] // features.shape[1]  # voxels per feature-grid cell (8 upstream)
      source = labels if hp.patch_label_source == "ground_truth" else jnp.argmax(t_probs, axis=-1)
      mask = dycon_losses.patch_labels(source, factor, hp.patch_label_rule)
      gambling = dycon_losses.gambling_uncertainty(logits, factor) if hp.use_gambling else None
      fecl = dycon_losses.fecl_terms(
        dycon_losses.embeddings(features)[fecl_rows],
        mask[fecl_rows],
        t_embed[fecl_rows] if hp.use_teacher_loss else None,
        None if gambling is None else gambling[fecl_rows],
        epoch,
        **fecl_kwargs,
      )
      uncl = dycon_losses.uncl_loss(logits, t_logits, beta)
      mse = dycon_losses.double_softmax_consistency(probs[lb:], t_probs[lb:])
      loss = hp.l_weight * (ce + dice) + weight * mse + hp.u_weight * (fecl["total"] + uncl)
      metrics = {
        "loss": loss,
        "loss_ce": ce,
        "loss_dice": dice,
        "loss_consistency": mse,
        "loss_uncl": uncl,
        "loss_fecl": fecl["total"],
        "loss_fecl_student": fecl["student"],
        "loss_fecl_cross": fecl["cross"],
        "consistency_weight": weight,
        "beta": beta,
        "patch_foreground": jnp.mean(mask[fecl_rows]),
      }
      return loss, (batch_stats, metrics)

    grads, (batch_stats, metrics) = jax.grad(loss_fn, has_aux=True)(state.params)
    stepped = common.apply_gradients(self.tx, state, grads, batch_stats)
    aux = common.update_teacher(state.aux, stepped.params, iter_num, hp.ema_decay, teacher_stats)
    aux["iter_num"] = iter_num + 1
    stepped = stepped.replace(aux=aux)
    ok = jnp.isfinite(metrics["loss"]) if hp.skip_nonfinite else jnp.bool_(True)
    # Skipped batch: parameters, momentum, teacher and t stay; the step (batch) counter advances
    # and BN running statistics keep the update of the forwards, which ran (as in torch).
    keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)
    new_state = stepped.replace(
      params=keep(stepped.params, state.params),
      opt_state=keep(stepped.opt_state, state.opt_state),
      aux={
        **aux,
        "ema_params": keep(aux["ema_params"], state.aux["ema_params"]),
        "iter_num": jnp.where(ok, aux["iter_num"], iter_num),
      },
    )
    # The loop stops on non-finite logged values; a skipped batch logs zeros and the flag instead.
    metrics = {k: jnp.where(ok, v, 0.0) for k, v in metrics.items()}
    metrics["skipped"] = 1.0 - ok.astype(jnp.float32)
    metrics["skipped_total"] = (new_state.step - new_state.aux["iter_num"]).astype(jnp.float32)
    metrics["epoch"] = epoch.astype(jnp.float32)
    return new_state, metrics

  def predict(self, state: TrainState, images):
    """The student in eval mode, as upstream test_BraTS19.py evaluates the saved student; the
    class-1 rule softmax[1] > 0.5 is the argmax of these two-class probabilities."""
    return common.eval_probabilities(self.model, state.params, state.batch_stats, images)
