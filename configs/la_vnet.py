r"""Supervised-only V-Net on LA (the "V-Net" rows of the LA tables; docs/methods/vnet.md §7).

  python -m jaxseg.main --config configs/la_vnet.py --config.data.root=/path/to/LA \
      --workdir runs/la_vnet_l16
  python -m jaxseg.main --config configs/la_vnet.py:smoke=1 --workdir runs/la_vnet_smoke

Arguments: `labeled` (default 16), `seed` (1337), `smoke` (1: the shrunk CPU run of
config_lib.smoke, synthetic phantoms, no number to reach).

Target: the seed table's 85.06 Dice (%) for V-Net trained on 16 labeled of the 80 LA training
cases (20%) alone, on the 20-case LA test split. The DTC / MC-Net tables copy other runs of this
row (unverified against the PDFs): 8 labels 79.99 Dice / 68.12 Jaccard / 21.11 95HD / 5.48 ASD;
16 labels 86.03 / 76.06 / 14.26 / 3.51. The original V-Net paper reports PROMISE12 (prostate MRI),
not LA: Dice 0.869 +- 0.033, Hausdorff 5.71 mm (configs/promise12_vnet.py).

Recipe (yulequan/UA-MT code/train_LA.py): VNet(16, batchnorm, dropout 0.5), patch 112x112x80,
batch 4 all labeled from the first `labeled` cases of train.list, loss 0.5 (CE + Dice), SGD 0.01
(x0.1 every 2500), momentum 0.9, wd 1e-4, 6000 steps (upstream runs 6001 and evaluates the
iteration-6000 snapshot, i.e. the same model as our final state). Validation here is the last 4
ids of train.list (the test split is held out).
"""

from jaxseg import config_lib


def get_config(arg=None):
  a = config_lib.parse_arg(arg, labeled=16, seed=1337, smoke=False)
  c = config_lib.run(
    "supervised", seed=a.seed, total_steps=6000, batch_size=4, labeled_batch_size=4
  )  # all four volumes are labeled
  c.model = config_lib.vnet_model()
  c.data = config_lib.la_data(a.labeled)
  c.optimizer = config_lib.sgd()
  c.eval = config_lib.parity_eval()
  return config_lib.smoke(c) if a.smoke else c
