r"""UPC on LA (left atrium LGE-MRI), the recipe of AIforMS/UPC-Pytorch code/train_LA_UPC.py
(docs/methods/upc.md).

  python -m jaxseg.main --config configs/la_upc.py --config.data.root=/path/to/LA \
      --workdir runs/la_upc_l16
  python -m jaxseg.main --config configs/la_upc.py:labeled=4 --config.data.root=/path/to/LA \
      --workdir runs/la_upc_l4
  python -m jaxseg.main --config configs/la_upc.py:smoke=1 --workdir runs/la_upc_smoke

Arguments: `labeled` (default 16), `seed` (1337), `smoke` (1: the shrunk CPU run of
config_lib.smoke, synthetic phantoms, no number to reach).

Target: the seed table's UPC row, 16 labeled of the 80 LA training cases (20%), 20-case LA test
split: Dice 89.65 % / Jaccard 81.36 % / 95HD 6.71 / ASD 2.15 (voxels); with 4 labeled (5%,
`labeled=4`) Dice 84.37 %. The repository's README has no results table, and which consistency
variant (below) produced the paper's numbers is unverified (docs/methods/upc.md §6).

Default variant = the shipped defaults (`--pseudo` on, `--pseudo_rect` off): consistency is the
confidence-thresholded (max prob >= 0.9, T = 1) hard pseudo-label CE of the noisy student against the
clean teacher on all 4 samples, averaged over all voxels. `--config.upc.pseudo_rect=True` selects the
KL-rectified variant mean(CE exp(-KL)) + mean(KL).

Recipe: VNet(16, batchnorm) with Dropout3d p = 0.9 (`--dropout_rate 0.9`) in student AND teacher (both
`create_model(has_dropout=True)`, both train mode), patch 112x112x80, batch 4 = 2 labeled + 2 unlabeled,
SGD 0.01 (x0.1 every 2500), momentum 0.9, wd 1e-4, 6000 steps, EMA decay 0.9999 (so the teacher is the
running average of all student iterates), student input noise clamp(0.2 N, +-0.4) on the whole batch,
consistency 1.0 * sigmoid_rampup(step // 150, 40). Upstream hard-codes 16 labels (`num_labeled`).
Evaluation: the last-step student, parity sliding window 18/18/4, medpy metrics in voxels (upstream's
test prints ASD before HD95; jaxseg reports named columns).
"""

import ml_collections

from jaxseg import config_lib


def get_config(arg=None):
  a = config_lib.parse_arg(arg, labeled=16, seed=1337, smoke=False)
  c = config_lib.run("upc", seed=a.seed, total_steps=6000, batch_size=4, labeled_batch_size=2)
  c.model = config_lib.vnet_model(dropout_rate=0.9)
  c.data = config_lib.la_data(a.labeled)
  c.optimizer = config_lib.sgd()
  c.upc = ml_collections.ConfigDict(
    dict(
      ema_decay=0.9999,
      consistency=1.0,
      consistency_rampup=40.0,
      iters_per_epoch=150,
      noise_std=0.2,
      noise_clip=0.4,  # upstream --ratio 0.2, clamp +-2 ratio
      pseudo=True,  # store_true with default True upstream: always on
      pseudo_rect=False,
      threshold=0.9,
      temperature=1.0,  # upstream --T
    )
  )
  c.eval = config_lib.parity_eval()
  return config_lib.smoke(c) if a.smoke else c
