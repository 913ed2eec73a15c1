r"""Supervised-only V-Net on LA (the "V-Net" rows of the LA tables; spec vnet.md §7).

  python -m jaxseg.main --config configs/la_vnet.py:labeled=16,seed=1337 \
      --config.data.root=../shared/data/LA --workdir runs/la_vnet_l16

Recipe (yulequan/UA-MT code/train_LA.py): VNet(16, batchnorm, dropout 0.5), patch 112x112x80,
batch 4 all labeled from the first `labeled` cases of train.list, loss 0.5 (CE + Dice), SGD 0.01
(x0.1 every 2500), momentum 0.9, wd 1e-4, 6000 steps (upstream runs 6001 and evaluates the
iteration-6000 snapshot, i.e. the same model as our final state).

Published numbers (20-case LA test split, as copied in DTC / MC-Net tables; unverified against
the PDFs): 8 labels 79.99 Dice / 68.12 Jaccard / 21.11 95HD / 5.48 ASD; 16 labels 86.03 / 76.06 /
14.26 / 3.51. Validation here is the last 4 ids of train.list (the test split is held out).
"""
from jaxseg import config_lib


def get_config(arg=None):
  a = config_lib.parse_arg(arg, labeled=16, seed=1337)
  c = config_lib.la_recipe("supervised", labeled=a.labeled, seed=a.seed)
  c.labeled_batch_size = c.batch_size  # all four volumes are labeled
  del c.mt
  return c
