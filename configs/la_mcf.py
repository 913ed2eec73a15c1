r"""MCF (Mutual Correction Framework) on LA, the recipe of WYC-321/MCF code/train_MCF.py (spec mcf.md).

  python -m jaxseg.main --config configs/la_mcf.py:labeled=16,seed=1337 \
      --config.data.root=../shared/data/LA --workdir runs/la_mcf_l16

Recipe (mcf.md §4): a VNet (UA-MT topology, 16 filters, batchnorm, dropout 0.5 on x5 and x9) and a
ResVNet (3D ResNet-34 encoder + VNet decoder, dropout 0.5 on x9 only), both kaiming-normal
initialised, each with its own SGD 0.01 momentum 0.9 wd 1e-4; lr x0.1 after the updates of
iterations 2500 and 5000 (one step later than UA-MT: `optimizer.lr_step_begin = 1`); 6000 steps;
patch 112x112x80, batch 4 = 2 labeled + 2 unlabeled, RandomCrop only (no rotation / flip), the same
crop fed to both networks. Losses: CE + Dice + 0.5 * difference review per network; the network with
the lower supervised Dice (strict <, ties -> ResVNet) sharpens (T = 0.1) its unlabeled softmax into
the pseudo label of the other, weighted 0.1 * sigmoid_rampup(step // 150, 40). Evaluation
(test_LA_MCF.py): (softmax(VNet) + softmax(ResVNet)) / 2, argmax, no largest-component
post-processing, parity sliding window 18/18/4, medpy metrics in voxels.

Protocol differences: MCF reports the mean over a 5-fold cross-validation of LA (fold lists
dataset/LA/Flods/train{0..4}.list, fold 0 = the standard UA-MT train/test split), where jaxseg trains
one split (train.list, validation = its last 4 ids; the test split is held out). Upstream keeps only
the final iteration's weights and picks no checkpoint on the test list; jaxseg likewise evaluates the
final state, on its validation split. The data shipped to developers has 32 of the 80 training cases,
so the unlabeled pool is smaller than upstream's. `labeled` = 16 is upstream's 20% setting (8 = 10%).

Published numbers (paper, LA, Dice % / Jaccard % / 95HD / ASD in voxels, 5-fold mean): UNVERIFIED,
the spec (mcf.md §6) could not check them against the paper's table, so no target is quoted here;
read them from Wang et al., "MCF: Mutual Correction Framework for Semi-Supervised Medical Image
Segmentation", CVPR 2023, Table 1 (10% and 20% labels) before comparing.
"""
import ml_collections

from jaxseg import config_lib


def get_config(arg=None):
  a = config_lib.parse_arg(arg, labeled=16, seed=1337)
  c = config_lib.la_recipe("mcf", labeled=a.labeled, seed=a.seed)
  del c.mt  # the shared recipe's Mean Teacher block; MCF has no teacher
  c.data.augment = "crop"  # la_heart.py RandomCrop only (mcf.md §5)
  # train_MCF.py decays after the update of iteration t % 2500 == 0, t != 0 (before iter_num += 1):
  # counts 0..2500 at 0.01, 2501..5000 at 1e-3, 5001..5999 at 1e-4.
  c.optimizer.lr_step_begin = 1
  c.mcf = ml_collections.ConfigDict(dict(
      second_model="resvnet",  # built with the same model.kwargs as the VNet branch
      init="kaiming_normal",  # 'kaiming_normal' (upstream __init_weight) | 'torch' (torch defaults)
      consistency=0.1, consistency_rampup=40.0, iters_per_epoch=150,
      temperature=0.1,  # pseudo-label sharpening T
      cdr_weight=0.5,  # weight of the contrastive difference review in the supervised loss
  ))
  return c
