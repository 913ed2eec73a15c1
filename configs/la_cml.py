r"""CML (Cross-view Mutual Learning) on LA, the recipe of SongwuJob/CML code/CML_LA_train.py
(docs/methods/cml.md).

  python -m jaxseg.main --config configs/la_cml.py --config.data.root=/path/to/LA \
      --workdir runs/la_cml_l16
  python -m jaxseg.main --config configs/la_cml.py:labeled=8 --config.data.root=/path/to/LA \
      --workdir runs/la_cml_l8
  python -m jaxseg.main --config configs/la_cml.py:smoke=1 --workdir runs/la_cml_smoke

Arguments: `labeled` (default 16), `seed` (1337), `smoke` (1: the shrunk CPU run of
config_lib.smoke, synthetic phantoms, pre-train 2 steps then the main phase, no number to reach).

Target: the seed table's 90.36 Dice (%) for CML, listed under 16 labeled + 64 unlabeled of the 80
LA training cases (20%), which is this config's default. The paper (Wu et al., "Cross-View Mutual
Learning for Semi-Supervised Medical Image Segmentation", ACM MM 2024) reports LA at 10% = 8 labeled
(`labeled=8`) and 20%; its table is unverified here (docs/methods/cml.md §6).

Recipe (docs/methods/cml.md §1a, §3, §4): the two-branch VNet `cml_vnet` (two encoders; decoder1
transposed convs, decoder2 trilinear align_corners=True + conv; 16 filters, batchnorm, Dropout3d
0.5), patch 112x112x80, RandomRotFlip + RandomCrop, batch 8 = 4 labeled + 4 unlabeled, SGD 0.01
momentum 0.9 wd 1e-4. Two phases in one run: `cml.pretrain_steps` = 2000 steps of labeled CutMix
(box 2/3 of each side) at a constant lr, then 15000 main steps (total_steps = 17000) with labeled
CutMix + heterogeneous pseudo-label supervision of unlabeled CutMix (largest-component pseudo-labels
from the same model in train mode), lr x0.1 after every 2500 MAIN steps; l_weight 1, u_weight 1,
dis_weight 0.2 (feature discrepancy between the two encoders' bottlenecks). The SGD momentum carries
over between the phases, as upstream reloads the optimizer state with the pre-trained weights.
Evaluation (test_LA.py): both branches, softmax of the averaged logits, foreground p > 0.5 (argmax),
largest connected component (`eval.largest_cc`), parity sliding window 18/18/4, medpy metrics in
voxels.

Protocol differences: upstream validates every 200 iterations ON THE TEST LIST (`var_all_case_LA`)
and keeps the best checkpoint of each phase (the main phase starts from the best pre-trained one,
and the reported model is the best main one); jaxseg never selects on the test list: the main phase
starts from the last pre-training state and the final state is evaluated on the validation split
(the last 4 ids of train.list). The data shipped to developers has 32 of the 80 training cases, so
the unlabeled pool is smaller than upstream's.
"""

import ml_collections

from jaxseg import config_lib


def get_config(arg=None):
  a = config_lib.parse_arg(arg, labeled=16, seed=1337, smoke=False)
  c = config_lib.run(
    "cml", seed=a.seed, total_steps=2000 + 15000, batch_size=8, labeled_batch_size=4
  )
  c.model = config_lib.vnet_model("cml_vnet")
  c.data = config_lib.la_data(a.labeled)
  # 'step' counts MAIN-phase steps (jaxseg/methods/cml.py lr_schedule); pretrain is constant.
  c.optimizer = config_lib.sgd()
  c.cml = ml_collections.ConfigDict(
    dict(
      pretrain_steps=2000,  # upstream --pre_max_iteration; then --train_max_iteration 15000
      l_weight=1.0,
      u_weight=1.0,
      dis_weight=0.2,
      mask_ratio=2 / 3,  # CutMix box side / patch side, per axis
    )
  )
  c.eval = config_lib.parity_eval(largest_cc=True)  # test_LA.py --nms 1
  if a.smoke:
    config_lib.smoke(c)
    c.cml.pretrain_steps = 2
  return c
