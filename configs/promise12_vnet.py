r"""The original V-Net (Milletari et al. 2016) on PROMISE12 prostate MRI, supervised.

  python -m jaxseg.prepare promise12 --raw /path/to/PROMISE12 --out /path/to/promise12_h5
  python -m jaxseg.main --config configs/promise12_vnet.py --config.data.root=/path/to/promise12_h5 \
      --workdir runs/promise12_vnet
  python -m jaxseg.main --config configs/promise12_vnet.py:smoke=1 --workdir runs/promise12_smoke

Arguments: `labeled` (default 45: every training id left after validation), `seed` (0), `smoke`
(1: config_lib.smoke: 16^3 patches of 24x24x16 synthetic phantoms in the PROMISE12 layout,
n_filters 4; no number to reach).

Target (the paper, Table 1): Dice 0.869 +- 0.033 and Hausdorff 5.71 mm on the 30 PROMISE12
challenge test cases, scored by the challenge server (their labels are not public), after
training on the 50 challenge training cases.

Recipe, from the original Caffe release (faustomilletari/VNet: `main.py`, `VNet.py`,
`DataManager.py`, `pyLayer.py`):
  * data (`python -m jaxseg.prepare promise12`, jaxseg/data/promise12.py): intensities rescaled to
    [0, 1], linear resampling to 1 x 1 x 1.5 mm (`dstRes`), centre crop 128 x 128 x 64
    (`VolSize`), z-score over the voxels > 0. The network sees whole 128 x 128 x 64 volumes, in
    training (the crop below is the identity) and at test (one window).
  * loss: the release's Dice layer (losses.vnet_caffe_dice_loss: hard-prediction Dice in the
    forward, the paper's Dice gradient with intersection and union of the argmax prediction in the
    backward, summed over the batch), `loss="vnet_caffe_dice"`.
  * optimisation (the solver `VNet.py` writes): SGD base_lr 1e-4, momentum 0.99, weight decay
    5e-4, lr x0.1 every 20000 iterations ("step" policy), 100000 iterations, batch 2.
  * network: the vnet.pytorch port (mattmacy/vnet.pytorch `vnet.py`, `VNet(elu=False)`), i.e. the
    Caffe topology (5^3 convolutions, PReLU, residual stages of depth 1/2/3/2 as the release's
    prototxt) with the port's batch-statistics BatchNorm and Dropout3d 0.5; the channel repeat of
    the input transition as the paper describes it (`literal_batch_repeat=False`).
Deviations, on purpose: no histogram-matching and B-spline-deformation augmentation (the release
applies them to half of the samples; jaxseg has neither); validation = the last 5 ids of
train.list, so 45 cases train (the release trains on all 50 and has no validation); jaxseg's SGD
applies the lr after the momentum (optax / torch) where Caffe applies it before, which differs only
at the two lr steps. vnet.pytorch itself has no PROMISE12 code (it trains LUNA16 with a weighted
NLL loss, batch 10, Adam). The batch-statistics BatchNorm also normalises each evaluation window
batch by its own statistics, as upstream does at test.
"""

from jaxseg import config_lib

SPACING = (1.0, 1.0, 1.5)  # mm of the prepared (x, y, z) voxels: the release's dstRes
VOLUME = (128, 128, 64)  # the release's VolSize: every prepared volume has this shape


def get_config(arg=None):
  a = config_lib.parse_arg(arg, labeled=45, seed=0, smoke=False)
  c = config_lib.run(
    "supervised",
    seed=a.seed,
    total_steps=100000,
    batch_size=2,
    labeled_batch_size=2,
    checkpoint_every_steps=5000,
  )
  c.loss = "vnet_caffe_dice"
  c.model = config_lib.ConfigDict(
    dict(
      name="vnet_milletari",
      kwargs=config_lib.ConfigDict(
        dict(n_filters=16, n_classes=2, dropout_rate=0.5, literal_batch_repeat=False)
      ),
    )
  )
  c.data = config_lib.ConfigDict(
    dict(
      name="promise12",
      root="",
      list_file="train.list",
      labeled=a.labeled,
      n_val=5,
      num_classes=2,
      patch_size=VOLUME,
      augment="crop",
      worker_count=0,
      spacing=SPACING,
    )
  )
  c.optimizer = config_lib.sgd(lr=1e-4, momentum=0.99, weight_decay=5e-4, lr_step_every=20000)
  # One window per volume; each case is normalised by its own batch statistics.
  c.eval = config_lib.parity_eval(
    stride_xy=VOLUME[0], stride_z=VOLUME[2], batch_size=1, every_steps=10000
  )
  if not a.smoke:
    return c
  config_lib.smoke(c)
  # The 4 windows of a smoke volume share one forward, so the batch-statistics BatchNorm sees more
  # than one value per channel at the 1^3 bottleneck of a 16^3 window.
  c.eval.batch_size = 4
  return c
