r"""DyCON on BraTS 2019 (whole tumour), the recipe of KU-CVML/DyCON code/run_brats19.sh (spec dycon.md).

  python -m jaxseg.main --config configs/brats_dycon.py:labeled=25,seed=1337 \
      --config.data.root=/path/to/BraTS2019 --workdir runs/brats_dycon_l25

Data (jaxseg/data/brats.py, SSL4MIS h5 layout): <root>/{train,val,test}.txt and <root>/data/<id>.h5.
Labeled = the first `labeled` ids of train.txt (25 = 10 % of 250; 50 = 20 %), validation = val.txt.

Recipe (train_DyCON_BraTS19.py + run_brats19.sh, dycon.md sections 3-4): DyCON UNet3D (filters
16..256, InstanceNorm, dropout 0.3, projection head 512 -> 256 at 1/8 resolution) for student and
train-mode EMA teacher (0.99 with warm-up); batch 8 = 4 labeled + 4 unlabeled; patch 96^3 (hard-coded
upstream); SagittalToAxial transpose (2, 1, 0), RandomCrop THEN RandomRotFlip (data.augment
'crop_rot_flip'); SGD lr 0.01 CONSTANT, momentum 0.9, wd 1e-4, gradient norm clipped to 1.0; 20000
iterations. Loss = (CE + Dice) + 0.1 sigmoid_rampup(t // 150, 200) double-softmax MSE + 0.5 (FeCL +
UnCL); UnCL beta 5 -> 0.5 per sampler epoch (6 iterations at 25 labels, E = 3334); FeCL tau 0.6,
gamma 2, focal on, teacher cross-negatives, thresholds ramped over 1500 epochs, on the unlabeled half
with patch labels from the (unlabeled!) ground truth, trilinear > 0.5 (HEAD; issues #1 / #9 call it
label leakage: `--config.dycon.patch_label_source=teacher` is the clean variant;
`fecl_on=all, patch_label_rule=avgpool` is the pre-2025-11-01 code the paper ran).

Evaluation. Upstream validates every 200 iterations on val.txt (stride 64), keeps the best, and
test_BraTS19.py scores that best checkpoint ON val.txt (not test.txt) with stride 16/16/4, class-1
probability > 0.5, largest connected component, medpy metrics in voxels. Here: the final student on
val.txt at stride 16/16/4 with the largest-component rule (eval.largest_cc), plus a best-on-val
checkpoint every eval.every_steps (evaluate --checkpoint best_val gives upstream's selection, which
like upstream's uses the reported cases). Orientation: evaluation volumes are transposed (2, 1, 0) as
in training (upstream's training-time validation). test_BraTS19.py does NOT transpose, so the
upstream test protocol feeds the network volumes in the other orientation: that mismatch is not
reproduced by data.name='brats' (jaxseg.data.brats.UPSTREAM_TEST_DATASET reproduces it).

Published numbers (paper, BraTS-2019 at 10 % / 20 % labels): UNVERIFIED, not available in the spec's
index; read them from Assefa et al., CVPR 2025 before comparing. DyCON issue #8 reports reproductions
below the paper (one user ~83 Dice at 25 labels with SSL4MIS preprocessing).
"""
import ml_collections

from jaxseg import config_lib


def dycon_block() -> ml_collections.ConfigDict:
  """`config.dycon`: the hyper-parameters of train_DyCON_BraTS19.py / run_brats19.sh."""
  return ml_collections.ConfigDict(dict(
      ema_decay=0.99,
      consistency=0.1, consistency_rampup=200.0, consistency_iters_per_epoch=150,
      noise_std=0.1, noise_clip=0.2,
      l_weight=1.0, u_weight=0.5,
      beta_max=5.0, beta_min=0.5,
      static_beta=0.0,  # > 0: constant UnCL beta (upstream --s_beta); 0: adaptive beta_max -> beta_min
      temperature=0.6, gamma=2.0, use_focal=True, rampup_epochs=1500.0, lambda_cross=1.0,
      use_teacher_loss=True,
      fecl_on="unlabeled",  # 'unlabeled' (HEAD) | 'all' (before 2025-11-01)
      patch_label_rule="trilinear",  # 'trilinear' (HEAD) | 'avgpool' (before 2025-11-01)
      patch_label_source="ground_truth",  # 'ground_truth' (upstream) | 'teacher' (argmax pT)
      use_gambling=False,  # gambling-softmax uncertainty weighting (commented out upstream)
      iters_per_epoch=0,  # sampler epoch length; 0 = data.labeled // labeled_batch_size
      skip_nonfinite=True,  # upstream skips a batch whose loss is NaN / inf
  ))


def dycon_recipe(dataset: str, labeled: int, seed: int) -> ml_collections.ConfigDict:
  """The released DyCON training setup on `dataset`; data and evaluation fields are the caller's."""
  c = config_lib.la_recipe("dycon", labeled=labeled, seed=seed)
  del c.mt  # the shared recipe's Mean Teacher block; DyCON's own is c.dycon
  c.total_steps = 20000
  c.batch_size = 8
  c.labeled_batch_size = 4
  c.model.name = "unet3d_dycon"
  c.model.kwargs = ml_collections.ConfigDict(dict(
      in_channels=1, n_classes=2, feature_scale=4, scale_factor=2, dropout_rate=0.3))
  c.data.name = dataset
  c.optimizer = ml_collections.ConfigDict(dict(
      name="sgd", lr=0.01, momentum=0.9, weight_decay=1e-4, lr_schedule="constant",
      clip_grad_norm=1.0))
  c.eval.largest_cc = True  # test_*.py --nms 1
  c.dycon = dycon_block()
  return c


def get_config(arg=None):
  a = config_lib.parse_arg(arg, labeled=25, seed=1337)
  c = dycon_recipe("brats", a.labeled, a.seed)
  del c.data.list_file, c.data.n_val  # BraTS has its own train.txt / val.txt
  c.data.val_list = "val.txt"
  c.data.patch_size = (96, 96, 96)
  c.data.augment = "crop_rot_flip"  # upstream: RandomCrop, then RandomRotFlip
  c.data.spacing = (1.0, 1.0, 1.0)  # BraTS is resampled to 1 mm isotropic
  c.eval.stride_xy = 16
  c.eval.stride_z = 4
  # Upstream validates every 200 iterations at stride 64; here the periodic validation uses the
  # evaluation stride (16/16/4 on 25 volumes), so it runs less often.
  c.eval.every_steps = 2000
  c.checkpoint_every_steps = 1000
  return c
