r"""UPC on LA (left atrium LGE-MRI), the recipe of AIforMS/UPC-Pytorch code/train_LA_UPC.py (spec upc.md).

  python -m jaxseg.main --config configs/la_upc.py:labeled=16,seed=1337 \
      --config.data.root=../shared/data/LA --workdir runs/la_upc_l16

Default variant = the shipped defaults (`--pseudo` on, `--pseudo_rect` off): consistency is the
confidence-thresholded (max prob >= 0.9, T = 1) hard pseudo-label CE of the noisy student against the
clean teacher on all 4 samples, averaged over all voxels. `--config.upc.pseudo_rect=True` selects the
KL-rectified variant mean(CE exp(-KL)) + mean(KL). Which one the paper's tables used is unverified.

Recipe: VNet(16, batchnorm) with Dropout3d p = 0.9 (`--dropout_rate 0.9`) in student AND teacher (both
`create_model(has_dropout=True)`, both train mode), patch 112x112x80, batch 4 = 2 labeled + 2 unlabeled,
SGD 0.01 (x0.1 every 2500), momentum 0.9, wd 1e-4, 6000 steps, EMA decay 0.9999 (so the teacher is the
running average of all student iterates), student input noise clamp(0.2 N, +-0.4) on the whole batch,
consistency 1.0 * sigmoid_rampup(step // 150, 40). Upstream hard-codes 16 labels (`num_labeled`).
Evaluation: the last-step student, parity sliding window 18/18/4, medpy metrics in voxels (upstream's
test prints ASD before HD95; jaxseg reports named columns).

Published numbers: none in the repository (its README has no results table) and the paper was not
available to us (upc.md §6); no target to reach yet.
"""
import ml_collections

from jaxseg import config_lib


def get_config(arg=None):
  a = config_lib.parse_arg(arg, labeled=16, seed=1337)
  c = config_lib.la_recipe("upc", labeled=a.labeled, seed=a.seed)
  del c.mt  # the shared recipe's Mean Teacher block; UPC's own is c.upc
  c.model.kwargs.dropout_rate = 0.9
  c.upc = ml_collections.ConfigDict(dict(
      ema_decay=0.9999, consistency=1.0, consistency_rampup=40.0, iters_per_epoch=150,
      noise_std=0.2, noise_clip=0.4,  # upstream --ratio 0.2, clamp +-2 ratio
      pseudo=True,  # store_true with default True upstream: always on
      pseudo_rect=False,
      threshold=0.9,
      temperature=1.0,  # upstream --T
  ))
  return c
