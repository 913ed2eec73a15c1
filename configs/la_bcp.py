r"""BCP (Bidirectional Copy-Paste) on LA, the recipe of DeepMed-Lab-ECNU/BCP code/LA_BCP_train.py
(docs/methods/bcp.md).

  python -m jaxseg.main --config configs/la_bcp.py --config.data.root=/path/to/LA \
      --workdir runs/la_bcp_l8
  python -m jaxseg.main --config configs/la_bcp.py:smoke=1 --workdir runs/la_bcp_smoke

Arguments: `labeled` (default 8: upstream's 10% setting; 16 = 20%), `seed` (1337), `smoke` (1: the
shrunk CPU run of config_lib.smoke, synthetic phantoms, pre-train 2 steps then self-train, no number
to reach).

Target: the paper's numbers (Dice % / Jaccard % / 95HD / ASD, 20-case LA test split), UNVERIFIED (recalled in docs/methods/bcp.md §6, not checked against the
paper's tables): 8 labeled of the 80 training cases (10%) 89.62 / 81.31 / 6.81 / 1.76; 16 labeled
(20%) 90.34 / 82.50 / 6.75 / 1.77. Upstream's numbers use test-set checkpoint selection (below).

Recipe (docs/methods/bcp.md §1a, §3b-c, §4): BCP's VNet (`bcp_vnet`: encoder/decoder VNet, 16
filters, batchnorm, Dropout3d 0.5 on x5 and x9) for student and train-mode teacher, patch
112x112x80, RandomRotFlip + RandomCrop, batch 8 = 4 labeled + 4 unlabeled (sub-batches of 2), SGD
0.01 momentum 0.9 wd 1e-4. Two phases in one run and one workdir (`bcp.pretrain_steps`):
  * pre-train, 2000 steps at a constant lr: labeled copy-paste, loss (CE + mask_DiceLoss) / 2 on the
    mixed labels;
  * self-train, 15000 steps: teacher := student and a FRESH optimizer (upstream `load_net`); the
    teacher's largest-component pseudo-labels (softmax fg >= 0.5, 26-connectivity), bidirectional
    copy-paste of labeled / unlabeled pairs with one box of 2/3 of each side, mix_loss with the
    pseudo-labeled region weighted u_weight = 0.5; EMA 0.99 of the parameters only, no warm-up;
    lr 0.01 x 0.1^(t // 2500), t counted from the self-train start (total_steps = 2000 + 15000).
The box corner is drawn with upstream's HARD-CODED bounds 112/112/80 (`context_mask`) when
`bcp.mask_bounds` is 'upstream' (the default here), or from the real patch shape ('shape', e.g. for
a patch smaller than LA's). Evaluation (test_LA.py): the student, softmax
class-1 probability > 0.5 (= argmax), largest connected component (`eval.largest_cc`), parity
sliding window 18/18/4, medpy metrics in voxels.

Protocol difference: upstream evaluates every 200 iterations ON THE TEST LIST and keeps the best
checkpoint of each phase (self-training starts from the best pre-trained one, and the reported model
is the best self-trained one; BCP issue #19). jaxseg never selects on the test list: self-training
starts from the LAST pre-training state and the final state is evaluated on the validation split
(the last 4 ids of train.list). The data shipped to developers has 32 of the 80 training cases, so
the unlabeled pool is smaller than upstream's.
"""

import ml_collections

from jaxseg import config_lib


def get_config(arg=None):
  a = config_lib.parse_arg(arg, labeled=8, seed=1337, smoke=False)
  c = config_lib.run(
    "bcp", seed=a.seed, total_steps=2000 + 15000, batch_size=8, labeled_batch_size=4
  )
  # The projection / prediction / class-selector heads never enter a loss (docs/methods/bcp.md
  # §1a); they are built only for checkpoint import (torch_import drops their keys here).
  c.model = config_lib.vnet_model("bcp_vnet", with_heads=False)
  c.data = config_lib.la_data(a.labeled)
  # Self-train schedule; its count restarts with the fresh optimizer at the self-train entry.
  c.optimizer = config_lib.sgd()
  c.bcp = ml_collections.ConfigDict(
    dict(
      pretrain_steps=2000,  # upstream --pre_max_iteration; then --self_max_iteration 15000
      pretrain_lr_schedule="constant",
      mask_ratio=2 / 3,  # --mask_ratio: box side / patch side, per axis
      recipe="la",  # LA_BCP_train.py's losses, mixing and pseudo-labels (a 3D patch)
      mask_bounds="upstream",  # 'upstream' (context_mask's 112/112/80 corner bounds) | 'shape'
      u_weight=0.5,  # --u_weight: weight of the pseudo-labeled region
      pseudo_threshold=0.5,  # get_cut_mask thres
      ema_decay=0.99,  # update_ema_variables(model, ema_model, 0.99): constant, params only
      ema_batch_stats=False,
      reset_optimizer=True,  # self_train builds a new SGD (load_net, not load_net_opt)
    )
  )
  c.eval = config_lib.parity_eval(largest_cc=True)  # test_LA.py --nms 1
  if a.smoke:
    config_lib.smoke(c)
    c.bcp.pretrain_steps = 2
  return c
