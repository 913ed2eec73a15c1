r"""Default job: Mean Teacher on the synthetic phantom, small enough for a 2-core CPU.

  python -m jaxseg.main --config configs/demo.py --workdir runs/demo

Generates the phantom dataset (deterministic by `data.synthetic.seed`, LA h5 layout) under
<workdir>/data, trains Mean Teacher (the la_mt.py recipe at a reduced width, patch and step count,
with a higher learning rate so that it converges in a few hundred steps), evaluates the final
student on the validation cases in parity mode and prints the results table.

Target: Dice >= 0.80 on the synthetic validation split in under 10 minutes on 2 CPU cores.
Arguments: `labeled=N,seed=S,steps=K`.
"""
import ml_collections

from jaxseg import config_lib


def get_config(arg=None):
  a = config_lib.parse_arg(arg, labeled=6, seed=0, steps=400)
  c = config_lib.la_recipe("mean_teacher", labeled=a.labeled, seed=a.seed)
  c.total_steps = a.steps
  c.model.kwargs.n_filters = 8
  c.data.name = "synthetic"
  c.data.synthetic = ml_collections.ConfigDict(dict(n_cases=24, shape=(48, 48, 32), seed=0))
  c.data.n_val = 4
  c.data.patch_size = (32, 32, 32)
  c.optimizer.lr = 0.05
  c.optimizer.lr_step_every = max(1, int(a.steps * 0.75))
  c.mt.iters_per_epoch = max(1, a.steps // 40)  # the consistency ramp spans the run, as upstream
  c.eval.stride_xy = 16
  c.eval.stride_z = 16
  c.eval.every_steps = 0
  c.log_every_steps = 20
  c.checkpoint_every_steps = 100
  return c
