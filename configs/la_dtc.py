r"""DTC on LA (left atrium LGE-MRI), the recipe of HiLab-git/DTC code/train_la_dtc.py (spec dtc.md).

  python -m jaxseg.main --config configs/la_dtc.py:labeled=16,seed=1337 \
      --config.data.root=../shared/data/LA --workdir runs/la_dtc_l16

Recipe: VNetSDF (VNet 16 filters, batchnorm, Dropout3d 0.5, a tanh level-set head and a sigmoid
segmentation head, n_classes = 1), patch 112x112x80, batch 4 = 2 labeled + 2 unlabeled, RandomRotFlip
then RandomCrop (as UA-MT), SGD 0.01 (x0.1 every 2500), momentum 0.9, wd 1e-4, 6000 steps, seed 1337.
Loss = dice(sigmoid seg, label) + 0.3 MSE(tanh head, normalised SDF of the crop's label) on the
labeled half + 1.0 sigmoid_rampup(step // 150, 40) mean((sigmoid(-1500 tanh) - sigmoid(seg))^2) on all
four. No teacher. Evaluation: the last-step network, parity sliding window 18/18/4, sigmoid > 0.5,
largest connected component (test_LA.py --nms 1), medpy metrics in voxels.

Which checkpoint upstream reported: test_LA.py loads `best_model.pth`, which the training script
selected on the TEST set until commit 1db1700 (it no longer writes it); the maintainer says the last
iteration was used (issue #14) and that the released model was the best of several seeds. jaxseg
evaluates the final step and never selects on the test set.

Published numbers (HiLab-git/DTC README, 20-case LA test split; Dice %, Jaccard %, 95HD, ASD in
voxels): 16 labels 89.42 / 80.98 / 7.32 / 2.10; 8 labels 87.51 / 78.17 / 8.23 / 2.36 (MC-Net's re-run).
The maintainer reports about 0.8 Dice spread across seeds / GPUs. The data shipped to developers has 32
of the 80 training cases, so the unlabeled pool is smaller than upstream's, and validation is the last
4 ids of train.list (the test split is held out).
"""
import ml_collections

from jaxseg import config_lib


def dtc_block() -> ml_collections.ConfigDict:
  """DTC's loss hyper-parameters (train_la_dtc.py defaults; --consistency_weight, --gamma, --D_lr,
  --ema_decay and --consistency_type are parsed upstream but unused)."""
  return ml_collections.ConfigDict(dict(
      beta=0.3,             # --beta: weight of the SDF regression in the supervised loss
      consistency=1.0,      # --consistency: final weight of the dual-task consistency
      consistency_rampup=40.0, iters_per_epoch=150,  # sigmoid_rampup(step // 150, 40)
      sdf_to_mask_k=1500.0,  # sigmoid(-k tanh): level set -> soft mask
  ))


def get_config(arg=None):
  a = config_lib.parse_arg(arg, labeled=16, seed=1337)
  c = config_lib.la_recipe("dtc", labeled=a.labeled, seed=a.seed)
  del c.mt  # the shared recipe's Mean Teacher block; DTC has no teacher
  c.model.name = "vnet_sdf"
  c.model.kwargs.n_classes = 1  # upstream VNet(n_classes=num_classes - 1); data.num_classes stays 2
  c.data.sdf = True  # the pipeline adds batch['sdf'] = compute_sdf(augmented crop label)
  c.eval.largest_cc = True
  c.dtc = dtc_block()
  return c
