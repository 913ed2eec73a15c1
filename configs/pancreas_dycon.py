r"""DyCON on NIH Pancreas-CT, after KU-CVML/DyCON code/train_DyCON_Pancreas.py / run_Panc.sh
(spec dycon.md sections 3-5).

  python -m jaxseg.main --config configs/pancreas_dycon.py:labeled=12,seed=1337 \
      --config.data.root=/path/to/Pancreas --workdir runs/pancreas_dycon_l12

Data: dataset 'pancreas' (jaxseg/data/pancreas.py, DTC's h5 layout: <root>/train.list, test.list,
data/<name>.h5). Upstream DyCON reads data/Pancreas/{train,test}{,1,2,3}.list and validates on
test1.list; here validation is the last `n_val` names of train.list (our carve-out; the test list is
held out), so the cases differ from upstream's.

Recipe: the released BraTS recipe (configs/brats_dycon.py: UNet3D with projection head, batch 8 =
4 + 4, SGD 0.01 constant, clip 1.0, 20000 iterations, all DyCON loss settings), with the Pancreas
differences of dycon.md sections 4-5: labelnum 12, patch 112x112x96, RandomCrop then RandomRotFlip,
no SagittalToAxial. The spec lists no other Pancreas-specific hyper-parameter; that run_Panc.sh keeps
the BraTS ones is [unverified]. Evaluation: sliding window at stride 16/16/16 [unverified: the
test_Pancreas.py strides are not in the spec], largest connected component, medpy metrics in voxels.

Published numbers (paper, Pancreas-CT): UNVERIFIED, not available in the spec's index; read them from
Assefa et al., CVPR 2025 before comparing.
"""
from jaxseg import config_lib


def get_config(arg=None):
  a = config_lib.parse_arg(arg, labeled=12, seed=1337)
  c = config_lib.load_sibling(__file__, "brats_dycon.py").dycon_recipe("pancreas", a.labeled, a.seed)
  c.data.list_file = "train.list"
  c.data.n_val = 6
  c.data.patch_size = (112, 112, 96)
  c.data.augment = "crop_rot_flip"  # dataloaders/pancreas.py: RandomCrop, then RandomRotFlip
  # Spacing varies per CT volume and is not stored in the h5; only clean-mode distances use it.
  c.data.spacing = (1.0, 1.0, 1.0)
  c.eval.stride_xy = 16
  c.eval.stride_z = 16
  return c
