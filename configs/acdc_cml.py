r"""CML (Cross-view Mutual Learning) on ACDC, what SongwuJob/CML code/CML_ACDC_train.py runs
(docs/methods/cml.md).

  python -m jaxseg.main --config configs/acdc_cml.py --config.data.root=/path/to/ACDC \
      --workdir runs/acdc_cml_l7
  python -m jaxseg.main --config configs/acdc_cml.py:smoke=1 --workdir runs/acdc_cml_smoke

Arguments: `labeled` PATIENTS (default 7 = 136 slices, 10%; 3 = 68 slices, 5%), `seed` (1337),
`smoke` (1: the shrunk CPU run of config_lib.smoke on the synthetic ACDC stand-in, 32x32 slices,
batch 4 = 2 + 2, no number to reach).

Target: none stated. The paper's ACDC 5% / 10% rows (3 / 7 labeled of the 70 training patients; Wu et al., "Cross-View Mutual Learning for Semi-Supervised Medical
Image Segmentation", ACM MM 2024) are UNVERIFIED here (docs/methods/cml.md §6); read them from the
paper before comparing.

THE NETWORK IS UPSTREAM'S AS RELEASED, NOT THE PAPER'S (docs/methods/cml.md §1b): CML's `unet.py`
assigns `self.encoder` twice and its forward runs that one encoder twice and `decoder1` (bilinear,
align_corners=True) twice; `decoder2` (transposed conv) is built but never used. So on ACDC the two
"views" are two dropout samples of ONE network (identical in eval), and the feature discrepancy loss
pushes apart two dropout samples of the same bottleneck. jaxseg reproduces that for parity
(`cml_unet2d`, `model.kwargs.shared_branches=True`); `--config.model.kwargs.shared_branches=False`
gives the intended heterogeneous two-encoder network (not what any published ACDC number used).

Recipe (docs/methods/cml.md §3, §4): SSL4MIS UNet channels 16..256, slices zoomed to 256x256
(RandomGenerator: rot90/flip or +-20 degree rotation), batch 24 = 12 labeled + 12 unlabeled slices,
SGD 0.01 momentum 0.9 wd 1e-4, constant lr. Two phases in one run: `cml.pretrain_steps` = 10000
steps of labeled CutMix (box 1/2 of each side), then 30000 main steps (total_steps = 40000) with
labeled CutMix + heterogeneous supervision of unlabeled CutMix by per-class largest-component argmax
pseudo-labels of the same model in train mode; l_weight 1, u_weight 0.5, dis_weight 0.1. The SGD
momentum carries over between the phases (upstream reloads the optimizer state). Evaluation
(test_ACDC.py): slice-wise at 256x256 (nearest zoom and back), argmax of softmax((z1 + z2) / 2), no
post-processing, per-class medpy metrics in voxels, mean over RV / Myo / LV.

Protocol differences: upstream validates every 200 iterations on the 20 val volumes and keeps the
best checkpoint of each phase (the main phase starts from the best pre-trained one); jaxseg starts
the main phase from the last pre-training state and evaluates the final state (the best-on-val state
is also kept, see jaxseg/checkpoints.py). The developer data holds the first 14 training patients'
slices (enough for labeled = 3 or 7; the unlabeled pool is smaller than upstream's) and the 20 val
volumes.
"""

import ml_collections

from jaxseg import config_lib


def get_config(arg=None):
  a = config_lib.parse_arg(arg, labeled=7, seed=1337, smoke=False)
  c = config_lib.run(
    "cml", seed=a.seed, total_steps=10000 + 30000, batch_size=24, labeled_batch_size=12
  )
  # Upstream's single encoder + decoder1 twice (docstring).
  c.model = config_lib.unet2d_model("cml_unet2d", shared_branches=True)
  c.data = config_lib.acdc_data(a.labeled)
  c.optimizer = config_lib.sgd("constant")
  c.cml = ml_collections.ConfigDict(
    dict(
      pretrain_steps=10000,  # upstream --pre_iterations; then --train_iterations 30000
      l_weight=1.0,
      u_weight=0.5,
      dis_weight=0.1,
      mask_ratio=1 / 2,
    )
  )
  c.eval = config_lib.parity_eval(batch_size=16)  # slices per forward; argmax, no largest_cc
  if a.smoke:
    config_lib.smoke(c)
    c.batch_size, c.labeled_batch_size = 4, 2
    c.cml.pretrain_steps = 2
  return c
