r"""DyCON on NIH Pancreas-CT, after KU-CVML/DyCON code/train_DyCON_Pancreas.py / run_Panc.sh
(docs/methods/dycon.md §3-§5).

  python -m jaxseg.main --config configs/pancreas_dycon.py --config.data.root=/path/to/Pancreas \
      --workdir runs/pancreas_dycon_l12
  python -m jaxseg.main --config configs/pancreas_dycon.py:smoke=1 --workdir runs/pancreas_dycon_smoke

Arguments: `labeled` (default 12 of the 62 training volumes, 20%), `seed` (1337), `smoke` (1: the
shrunk CPU run of config_lib.smoke on the synthetic Pancreas stand-in, no number to reach).

Target: none for Pancreas-CT. The seed table's DyCON number is for ISLES-2022 with 5% labels
(Dice 61.48 %, 95HD 17.61 voxels; configs/isles_dycon.py). The paper's Pancreas-CT numbers are UNVERIFIED here; read
them from Assefa et al., CVPR 2025 before comparing.

Data: dataset 'pancreas' (jaxseg/data/pancreas.py, DTC's h5 layout: <root>/train.list, test.list,
data/<name>.h5). Upstream DyCON reads data/Pancreas/{train,test}{,1,2,3}.list and validates on
test1.list; here validation is the last `n_val` names of train.list (our carve-out; the test list is
held out), so the cases differ from upstream's.

Recipe: the released BraTS recipe (configs/brats_dycon.py: UNet3D with projection head, batch 8 =
4 + 4, SGD 0.01 constant, clip 1.0, 20000 iterations, all DyCON loss settings), with the Pancreas
differences of docs/methods/dycon.md §4-§5: labelnum 12, patch 112x112x96, RandomCrop then
RandomRotFlip, no SagittalToAxial. No other Pancreas-specific hyper-parameter is known; that
run_Panc.sh keeps the BraTS ones is [unverified]. Evaluation: sliding window at stride 16/16/16
[unverified: the test_Pancreas.py strides are not known], largest connected component, medpy metrics
in voxels.
"""

from jaxseg import config_lib


def get_config(arg=None):
  a = config_lib.parse_arg(arg, labeled=12, seed=1337, smoke=False)
  c = config_lib.run("dycon", seed=a.seed, total_steps=20000, batch_size=8, labeled_batch_size=4)
  c.model = config_lib.unet3d_dycon_model()
  # Spacing varies per CT volume and is not stored in the h5; only clean-mode distances use it.
  c.data = config_lib.la_data(
    a.labeled,
    name="pancreas",
    n_val=6,
    patch_size=(112, 112, 96),
    augment="crop_rot_flip",  # dataloaders/pancreas.py: crop, rot/flip
    spacing=(1.0, 1.0, 1.0),
  )
  c.optimizer = config_lib.sgd("constant", clip_grad_norm=1.0)
  c.dycon = config_lib.dycon_block()
  c.eval = config_lib.parity_eval(stride_xy=16, stride_z=16, largest_cc=True)
  return config_lib.smoke(c) if a.smoke else c
