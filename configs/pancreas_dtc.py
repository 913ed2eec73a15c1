r"""DTC on NIH Pancreas-CT, the paper's second setting (docs/methods/dtc.md §5).

  python -m jaxseg.main --config configs/pancreas_dtc.py --config.data.root=/path/to/Pancreas \
      --workdir runs/pancreas_dtc_l12
  python -m jaxseg.main --config configs/pancreas_dtc.py:smoke=1 --workdir runs/pancreas_dtc_smoke

Arguments: `labeled` (default 12), `seed` (1337), `smoke` (1: the shrunk CPU run of
config_lib.smoke on the synthetic Pancreas stand-in, no number to reach).

Target: the paper's table (12 labeled of the 62 training volumes, 20%; Dice %, Jaccard %, 95HD, ASD in voxels; recollection, not verified against the PDF):
DTC 78.27 / 64.75 / 8.36 / 2.25 (UA-MT 77.26 / 63.82 / 11.90 / 3.06).

Data: DTC's h5 layout (jaxseg/data/pancreas.py: <root>/train.list, <root>/test.list,
<root>/data/<name>.h5). The DTC repository has the Pancreas dataset class but no Pancreas training,
test or preprocessing script, so this recipe is assembled from the paper:
  * configs/la_dtc.py's recipe for everything the paper does not change (VNetSDF 16 filters,
    batchnorm, dropout 0.5; batch 4 = 2 labeled + 2 unlabeled; SGD 0.01 x0.1 every 2500, momentum
    0.9, wd 1e-4; 6000 steps; beta 0.3; consistency 1.0 sigmoid_rampup(step // 150, 40));
  * 62 train / 20 test volumes, 12 labeled (20 %), patch 96x96x96 [paper, unverified];
  * augmentation: random crop ONLY (data.augment='crop'). The maintainer advises against LA's
    RandomRotFlip on Pancreas (HiLab-git/DTC issue #10: random crop, or small rotations in +-15
    degrees; a user reports ~40.9 Dice with rot/flip);
  * test: sliding window 96^3 with stride 16 in-plane and 16 in z, as follow-up repositories run it
    [unverified]; sigmoid > 0.5 and the largest connected component, as DTC's LA test.
Validation is the last 4 names of train.list (our carve-out; the test list is held out).
"""

from jaxseg import config_lib


def get_config(arg=None):
  a = config_lib.parse_arg(arg, labeled=12, seed=1337, smoke=False)
  c = config_lib.run("dtc", seed=a.seed, total_steps=6000, batch_size=4, labeled_batch_size=2)
  c.model = config_lib.vnet_model("vnet_sdf", n_classes=1)
  # Spacing varies per CT volume and is not stored in the h5; follow-up works resample to 1 mm
  # [unverified]. Only clean-mode distances use it.
  c.data = config_lib.la_data(
    a.labeled,
    name="pancreas",
    patch_size=(96, 96, 96),
    augment="crop",  # no rot/flip on Pancreas (DTC issue #10)
    spacing=(1.0, 1.0, 1.0),
  )
  c.optimizer = config_lib.sgd()
  c.dtc = config_lib.dtc_block()
  c.eval = config_lib.parity_eval(stride_xy=16, stride_z=16, largest_cc=True)
  return config_lib.smoke(c) if a.smoke else c
