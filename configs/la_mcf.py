r"""MCF (Mutual Correction Framework) on LA, the recipe of WYC-321/MCF code/train_MCF.py
(docs/methods/mcf.md).

  python -m jaxseg.main --config configs/la_mcf.py --config.data.root=/path/to/LA \
      --workdir runs/la_mcf_l16
  python -m jaxseg.main --config configs/la_mcf.py:smoke=1 --workdir runs/la_mcf_smoke

Arguments: `labeled` (default 16: upstream's 20% setting; 8 = 10%), `seed` (1337), `smoke` (1: the
shrunk CPU run of config_lib.smoke, synthetic phantoms, no number to reach).

Target: the seed table's 88.71 Dice (%) for MCF with 16 labeled of the 80 LA training cases (20%).
The paper (Wang et al., "MCF: Mutual Correction Framework for Semi-Supervised Medical Image
Segmentation", CVPR 2023, Table 1) reports the mean of a 5-fold cross-validation; its other
columns are unverified here (docs/methods/mcf.md §6).

Recipe (docs/methods/mcf.md §4): a VNet (UA-MT topology, 16 filters, batchnorm, dropout 0.5 on x5
and x9) and a ResVNet (3D ResNet-34 encoder + VNet decoder, dropout 0.5 on x9 only), both
kaiming-normal initialised, each with its own SGD 0.01 momentum 0.9 wd 1e-4; lr x0.1 after the
updates of iterations 2500 and 5000 (one step later than UA-MT: `optimizer.lr_step_begin = 1`); 6000
steps; patch 112x112x80, batch 4 = 2 labeled + 2 unlabeled, RandomCrop only (no rotation / flip), the
same crop fed to both networks. Losses: CE + Dice + 0.5 * difference review per network; the network
with the lower supervised Dice (strict <, ties -> ResVNet) sharpens (T = 0.1) its unlabeled softmax
into the pseudo label of the other, weighted 0.1 * sigmoid_rampup(step // 150, 40). Evaluation
(test_LA_MCF.py): (softmax(VNet) + softmax(ResVNet)) / 2, argmax, no largest-component
post-processing, parity sliding window 18/18/4, medpy metrics in voxels.

Protocol differences: MCF reports the mean over a 5-fold cross-validation of LA (fold lists
dataset/LA/Flods/train{0..4}.list, fold 0 = the standard UA-MT train/test split), where jaxseg trains
one split (train.list, validation = its last 4 ids; the test split is held out). Upstream keeps only
the final iteration's weights and picks no checkpoint on the test list; jaxseg likewise evaluates the
final state, on its validation split. The data shipped to developers has 32 of the 80 training cases,
so the unlabeled pool is smaller than upstream's.
"""

import ml_collections

from jaxseg import config_lib


def get_config(arg=None):
  a = config_lib.parse_arg(arg, labeled=16, seed=1337, smoke=False)
  c = config_lib.run("mcf", seed=a.seed, total_steps=6000, batch_size=4, labeled_batch_size=2)
  c.model = config_lib.vnet_model()
  c.data = config_lib.la_data(a.labeled, augment="crop")  # la_heart.py RandomCrop only
  # train_MCF.py decays after the update of iteration t % 2500 == 0, t != 0 (before iter_num += 1):
  # counts 0..2500 at 0.01, 2501..5000 at 1e-3, 5001..5999 at 1e-4.
  c.optimizer = config_lib.sgd(lr_step_begin=1)
  c.mcf = ml_collections.ConfigDict(
    dict(
      second_model="resvnet",  # built with the same model.kwargs as the VNet branch
      init="kaiming_normal",  # 'kaiming_normal' (upstream __init_weight) | 'torch' (torch defaults)
      consistency=0.1,
      consistency_rampup=40.0,
      iters_per_epoch=150,
      temperature=0.1,  # pseudo-label sharpening T
      cdr_weight=0.5,  # weight of the contrastive difference review in the supervised loss
    )
  )
  c.eval = config_lib.parity_eval()
  return config_lib.smoke(c) if a.smoke else c
