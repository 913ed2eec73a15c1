r"""Default job: Mean Teacher on the synthetic phantom, small enough for a 2-core CPU.

  python -m jaxseg.main --config configs/demo.py --workdir runs/demo
  python -m jaxseg.main --config configs/demo.py:smoke=1 --workdir runs/demo_smoke

Generates the phantom dataset (deterministic by `data.synthetic.seed`, LA h5 layout) under
<workdir>/data, trains Mean Teacher (the configs/la_mt.py recipe at a reduced width, patch and step
count, with a higher learning rate so that it converges in a few hundred steps), evaluates the final
student on the validation cases in parity mode and prints the results table.

Arguments: `labeled` (default 6 of the 20 training phantoms), `seed` (0), `steps` (400), `smoke`
(1: the shrunk run of config_lib.smoke).

Target: no published number (the seed table has none for synthetic data): Dice >= 0.80 on the
synthetic validation split in under 10 minutes on 2 CPU cores.
"""

import ml_collections

from jaxseg import config_lib


def get_config(arg=None):
  a = config_lib.parse_arg(arg, labeled=6, seed=0, steps=400, smoke=False)
  c = config_lib.run(
    "mean_teacher",
    seed=a.seed,
    total_steps=a.steps,
    batch_size=4,
    labeled_batch_size=2,
    checkpoint_every_steps=100,
  )
  c.model = config_lib.vnet_model(n_filters=8)
  c.data = config_lib.la_data(a.labeled, name="synthetic", patch_size=(32, 32, 32))
  c.data.synthetic = ml_collections.ConfigDict(dict(n_cases=24, shape=(48, 48, 32), seed=0))
  c.optimizer = config_lib.sgd(lr=0.05, lr_step_every=max(1, int(a.steps * 0.75)))
  # The consistency ramp spans the run, as upstream's.
  c.mt = config_lib.mean_teacher_block(iters_per_epoch=max(1, a.steps // 40))
  c.eval = config_lib.parity_eval(stride_xy=16, stride_z=16, every_steps=0)
  return config_lib.smoke(c) if a.smoke else c
