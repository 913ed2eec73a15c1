r"""CML (Cross-view Mutual Learning) on ACDC, what SongwuJob/CML code/CML_ACDC_train.py runs (spec cml.md).

  python -m jaxseg.main --config configs/acdc_cml.py:labeled=7,seed=1337 \
      --config.data.root=../shared/data/ACDC --workdir runs/acdc_cml_l7

THE NETWORK IS UPSTREAM'S AS RELEASED, NOT THE PAPER'S (cml.md section 1b): CML's `unet.py` assigns
`self.encoder` twice and its forward runs that one encoder twice and `decoder1` (bilinear,
align_corners=True) twice; `decoder2` (transposed conv) is built but never used. So on ACDC the two
"views" are two dropout samples of ONE network (identical in eval), and the feature discrepancy loss
pushes apart two dropout samples of the same bottleneck. jaxseg reproduces that for parity
(`cml_unet2d`, `model.kwargs.shared_branches=True`); `--config.model.kwargs.shared_branches=False`
gives the intended heterogeneous two-encoder network (not what any published ACDC number used).

Recipe (cml.md sections 3, 4): SSL4MIS UNet channels 16..256, slices zoomed to 256x256
(RandomGenerator: rot90/flip or +-20 degree rotation), batch 24 = 12 labeled + 12 unlabeled slices,
SGD 0.01 momentum 0.9 wd 1e-4, constant lr. Two phases in one run: `cml.pretrain_steps` = 10000
steps of labeled CutMix (box 1/2 of each side), then 30000 main steps (total_steps = 40000) with
labeled CutMix + heterogeneous supervision of unlabeled CutMix by per-class largest-component argmax
pseudo-labels of the same model in train mode; l_weight 1, u_weight 0.5, dis_weight 0.1. The SGD
momentum carries over between the phases (upstream reloads the optimizer state). `labeled` counts
PATIENTS (upstream --labelnum: 3 -> 68 slices, 7 -> 136). Evaluation (test_ACDC.py): slice-wise at
256x256 (nearest zoom and back), argmax of softmax((z1 + z2) / 2), no post-processing, per-class
medpy metrics in voxels, mean over RV / Myo / LV.

Protocol differences: upstream validates every 200 iterations on the 20 val volumes and keeps the
best checkpoint of each phase (the main phase starts from the best pre-trained one); jaxseg starts
the main phase from the last pre-training state and evaluates the final state (the best-on-val state
is also kept, see jaxseg/checkpoints.py). The developer data holds the first 14 training patients'
slices (enough for labeled = 3 or 7; the unlabeled pool is smaller than upstream's) and the 20 val
volumes.

Published numbers (ACDC 5% / 10% labels = 3 / 7 patients, Dice % / Jaccard % / 95HD / ASD):
UNVERIFIED, the spec (cml.md section 6) could not check them against the paper's table, so no
target is quoted here; read them from Wu et al., "Cross-View Mutual Learning for Semi-Supervised
Medical Image Segmentation", ACM MM 2024, before comparing.
"""
import ml_collections

from jaxseg import config_lib


def get_config(arg=None):
  a = config_lib.parse_arg(arg, labeled=7, seed=1337)
  c = config_lib.acdc_recipe("cml", labeled=a.labeled, seed=a.seed)
  c.model.name = "cml_unet2d"
  c.model.kwargs.shared_branches = True  # upstream's single encoder + decoder1 twice (docstring)

  c.cml = ml_collections.ConfigDict(dict(
      pretrain_steps=10000,  # upstream --pre_iterations; then --train_iterations 30000
      l_weight=1.0, u_weight=0.5, dis_weight=0.1,
      mask_ratio=1 / 2,
  ))
  c.total_steps = c.cml.pretrain_steps + 30000
  return c
