r"""UA-MT on LA (left atrium LGE-MRI), the recipe of yulequan/UA-MT (docs/methods/uamt.md).

  python -m jaxseg.main --config configs/la_uamt.py --config.data.root=/path/to/LA \
      --workdir runs/la_uamt_l16
  python -m jaxseg.main --config configs/la_uamt.py:labeled=8,seed=1337 \
      --config.data.root=/path/to/LA --workdir runs/la_uamt_l8
  python -m jaxseg.main --config configs/la_uamt.py:smoke=1 --workdir runs/la_uamt_smoke

Arguments: `labeled` (default 16), `seed` (1337), `smoke` (1: the shrunk CPU run of
config_lib.smoke, synthetic phantoms, no number to reach).

Target: the seed table's UA-MT row, 16 labeled of the 80 LA training cases (20%), 20-case LA test
split: Dice 88.88 % / Jaccard 80.21 % / 95HD 7.32 / ASD 2.26 (voxels; the paper, reproduced in the
HiLab-git/DTC README). With 8 labels (10%) the DTC README lists 84.25 / 73.48 / 13.84 / 3.36. Users
report +-1.5 Dice run to run (docs/methods/uamt.md §7.9).

Default variant: `code/train_LA_meanteacher_certainty_unlabel.py` (the README's script, `UAMT_unlabel`):
teacher noise, the T = 8 Monte-Carlo passes and the masked consistency on the unlabeled half only.
`--config.uamt.consistency_on=all` selects `code/train_LA_meanteacher_certainty.py` (`UAMT`): noise, MC
(8 volumes per teacher forward) and consistency on the whole batch of 4. `--config.uamt.consistency_type=kl`
selects upstream's `--consistency_type kl`.

Recipe: VNet(16, batchnorm, dropout 0.5) for student and train-mode teacher, patch 112x112x80, batch 4 =
2 labeled + 2 unlabeled, SGD 0.01 (x0.1 every 2500), momentum 0.9, wd 1e-4, 6000 steps, EMA 0.99,
consistency 0.1 * sigmoid_rampup(step // 150, 40), teacher noise clamp(0.1 N, +-0.2), T = 8 MC passes,
uncertainty threshold (0.75 + 0.25 sigmoid_rampup(step, total_steps)) ln 2. Evaluation: the last-step
student, parity sliding window 18/18/4, medpy metrics in voxels.

The data shipped to developers has 32 of the 80 training cases, so the unlabeled pool is smaller
than upstream's, and validation is the last 4 ids of train.list (the test split is held out).
"""

import ml_collections

from jaxseg import config_lib


def get_config(arg=None):
  a = config_lib.parse_arg(arg, labeled=16, seed=1337, smoke=False)
  c = config_lib.run("uamt", seed=a.seed, total_steps=6000, batch_size=4, labeled_batch_size=2)
  c.model = config_lib.vnet_model()
  c.data = config_lib.la_data(a.labeled)
  c.optimizer = config_lib.sgd()
  c.uamt = ml_collections.ConfigDict(
    dict(
      ema_decay=0.99,
      consistency=0.1,
      consistency_rampup=40.0,
      iters_per_epoch=150,
      noise_std=0.1,
      noise_clip=0.2,
      consistency_type="mse",  # 'mse' | 'kl'
      consistency_on="unlabeled",  # 'unlabeled' (..._certainty_unlabel.py) | 'all' (..._certainty.py)
      mc_passes=8,  # T, hard-coded upstream; run as T / 2 forwards of the sub-batch repeated twice
      # MC forwards per vmapped group; 0 = auto: all T / 2 in one vmap on GPU/TPU, one at a time
      # (lax.map) on CPU, where XLA cannot allocate the 16-volume batched forward at 112x112x80.
      mc_chunk=0,
    )
  )
  c.eval = config_lib.parity_eval()
  return config_lib.smoke(c) if a.smoke else c
