r"""CML (Cross-view Mutual Learning) on LA, the recipe of SongwuJob/CML code/CML_LA_train.py (spec cml.md).

  python -m jaxseg.main --config configs/la_cml.py:labeled=8,seed=1337 \
      --config.data.root=../shared/data/LA --workdir runs/la_cml_l8

Recipe (cml.md sections 1a, 3, 4): the two-branch VNet `cml_vnet` (two encoders; decoder1 transposed
convs, decoder2 trilinear align_corners=True + conv; 16 filters, batchnorm, Dropout3d 0.5), patch
112x112x80, RandomRotFlip + RandomCrop, batch 8 = 4 labeled + 4 unlabeled, SGD 0.01 momentum 0.9
wd 1e-4. Two phases in one run: `cml.pretrain_steps` = 2000 steps of labeled CutMix (box 2/3 of each
side) at a constant lr, then 15000 main steps (total_steps = 17000) with labeled CutMix +
heterogeneous pseudo-label supervision of unlabeled CutMix (largest-component pseudo-labels from the
same model in train mode), lr x0.1 after every 2500 MAIN steps; l_weight 1, u_weight 1, dis_weight
0.2 (feature discrepancy between the two encoders' bottlenecks). The SGD momentum carries over
between the phases, as upstream reloads the optimizer state with the pre-trained weights.
Evaluation (test_LA.py): both branches, softmax of the averaged logits, foreground p > 0.5 (argmax),
largest connected component (`eval.largest_cc`), parity sliding window 18/18/4, medpy metrics in
voxels.

Protocol differences: upstream validates every 200 iterations ON THE TEST LIST (`var_all_case_LA`)
and keeps the best checkpoint of each phase (the main phase starts from the best pre-trained one,
and the reported model is the best main one); jaxseg never selects on the test list: the main phase
starts from the last pre-training state and the final state is evaluated on the validation split
(the last 4 ids of train.list). The data shipped to developers has 32 of the 80 training cases, so
the unlabeled pool is smaller than upstream's. labeled = 8 is upstream's 10% setting, 16 is 20%.

Published numbers (LA 10% / 20% labels, Dice % / Jaccard % / 95HD / ASD): UNVERIFIED, the spec
(cml.md section 6) could not check them against the paper's table, so no target is quoted here;
read them from Wu et al., "Cross-View Mutual Learning for Semi-Supervised Medical Image
Segmentation", ACM MM 2024, before comparing.
"""
import ml_collections

from jaxseg import config_lib


def get_config(arg=None):
  a = config_lib.parse_arg(arg, labeled=8, seed=1337)
  c = config_lib.la_recipe("cml", labeled=a.labeled, seed=a.seed)
  del c.mt  # the shared recipe's Mean Teacher block; CML has no teacher
  c.model.name = "cml_vnet"
  c.batch_size = 8
  c.labeled_batch_size = 4
  c.cml = ml_collections.ConfigDict(dict(
      pretrain_steps=2000,  # upstream --pre_max_iteration; then --train_max_iteration 15000
      l_weight=1.0, u_weight=1.0, dis_weight=0.2,
      mask_ratio=2 / 3,  # CutMix box side / patch side, per axis
  ))
  c.total_steps = c.cml.pretrain_steps + 15000
  # 'step' counts MAIN-phase steps (jaxseg/methods/cml.py lr_schedule); pretrain is constant.
  c.optimizer.lr_schedule = "step"
  c.optimizer.lr_step_every = 2500
  c.optimizer.lr_step_factor = 0.1
  c.eval.largest_cc = True  # test_LA.py --nms 1
  return c
