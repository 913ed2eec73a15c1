r"""BCP (Bidirectional Copy-Paste) on ACDC, the recipe of DeepMed-Lab-ECNU/BCP code/ACDC_BCP_train.py
(spec bcp.md).

  python -m jaxseg.main --config configs/acdc_bcp.py:labeled=7,seed=1337 \
      --config.data.root=../shared/data/ACDC --workdir runs/acdc_bcp_l7

Recipe (bcp.md §1b, §3d, §4): the SSL4MIS / BCP 2D UNet (`unet2d`: channels 16..256, encoder
dropout 0.05..0.5, bilinear align_corners=True up-sampling, 3x3 out conv) for student and
train-mode teacher, slices zoomed to 256x256 (RandomGenerator: rot90/flip or +-20 degree rotation),
batch 24 = 12 labeled + 12 unlabeled slices (sub-batches of 6), SGD 0.01 momentum 0.9 wd 1e-4,
CONSTANT lr in both phases. Two phases in one run and one workdir (`bcp.pretrain_steps`):
  * pre-train, 10000 steps (upstream --pre_iterations, issue #10): labeled copy-paste with a square of
    2/3 of each side at a corner drawn from the real shape, mix_loss with both regions weight 1;
  * self-train, 30000 steps (total_steps = 10000 + 30000): teacher := student, the optimizer state
    (momentum) KEPT (upstream `load_net_opt`); per-class largest-component argmax pseudo-labels of the
    train-mode teacher, bidirectional copy-paste, mix_loss with DiceLoss(4) on softmax (squared
    denominators, smooth 1e-10, sums over the whole batch) and the pseudo-labeled region weighted
    u_weight = 0.5; EMA 0.99 of the whole state_dict: parameters AND BN statistics
    (`update_model_ema`).
The masked Dice follows upstream HEAD (commit a925e30: the mask applies to all 4 classes);
`--config.bcp.acdc_dice_mask=legacy` gives the loss the paper's numbers were produced with (the
background class unmasked, issue #25). `labeled` counts PATIENTS (upstream --labelnum: 3 -> 68
slices (5%), 7 -> 136 (10%)). Evaluation (test_ACDC.py): the student, slice-wise at 256x256 (nearest
zoom and back), argmax of softmax, no post-processing, per-class medpy metrics in voxels, mean over
RV / Myo / LV.

Protocol differences: upstream validates every 200 iterations on the 20 val volumes and keeps the
best checkpoint of each phase (self-training starts from the best pre-trained one; BCP issue #19 on
selection); jaxseg starts self-training from the LAST pre-training state and evaluates the final
state (the best-on-val state is also kept, see jaxseg/checkpoints.py). The developer data holds the
first 14 training patients' slices (enough for labeled = 3 or 7; the unlabeled pool is smaller than
upstream's) and the 20 val volumes.

Published numbers (Dice % / Jaccard % / 95HD / ASD, 40-volume ACDC test split), UNVERIFIED (recalled
in bcp.md §6, not checked against the paper's tables; produced with the legacy Dice mask):
3 patients (5%) 87.59 / 78.67 / 1.90 / 0.67; 7 patients (10%) 88.84 / 80.62 / 3.98 / 1.17.
"""
import ml_collections

from jaxseg import config_lib


def get_config(arg=None):
  a = config_lib.parse_arg(arg, labeled=7, seed=1337)
  c = config_lib.acdc_recipe("bcp", labeled=a.labeled, seed=a.seed)

  c.bcp = ml_collections.ConfigDict(dict(
      pretrain_steps=10000,  # upstream --pre_iterations; then --max_iterations 30000
      pretrain_lr_schedule="constant",
      mask_ratio=2 / 3,  # generate_mask: int(S * 2/3), corner from the real shape
      mask_bounds="shape",  # ACDC's generate_mask reads the image shape (no hard-coded bounds)
      u_weight=0.5,  # --u_weight
      pseudo_threshold=0.5,  # unused in 2D (argmax pseudo-labels)
      ema_decay=0.99,
      ema_batch_stats=True,  # update_model_ema blends the whole state_dict
      reset_optimizer=False,  # self_train: load_net_opt (momentum kept)
      acdc_dice_mask="head",  # 'head' (a925e30 fix) | 'legacy' (paper: background unmasked)
  ))
  c.total_steps = c.bcp.pretrain_steps + 30000
  return c
