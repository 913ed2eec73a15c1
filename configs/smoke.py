r"""Smoke run: any method on a tiny phantom in seconds on a CPU (what the tests run).

  python -m jaxseg.main --config configs/smoke.py:method=mean_teacher,steps=4 --workdir runs/smoke

The demo recipe (configs/demo.py) with n_filters 4, 16^3 patches from 8 phantom volumes of
24x24x16. Not a benchmark: there is no number to reach beyond "runs end to end".
"""
from jaxseg import config_lib


def get_config(arg=None):
  a = config_lib.parse_arg(arg, method="mean_teacher", steps=4, seed=0)
  c = config_lib.load_sibling(__file__, "demo.py").get_config(
      f"labeled=3,seed={a.seed},steps={a.steps}")
  c.method = a.method
  if a.method == "supervised":
    c.labeled_batch_size = c.batch_size
    c.data.labeled = 4
  c.model.kwargs.n_filters = 4
  c.data.synthetic.n_cases = 8
  c.data.synthetic.shape = (24, 24, 16)
  c.data.n_val = 2
  c.data.patch_size = (16, 16, 16)
  c.eval.stride_xy = 8
  c.eval.stride_z = 8
  c.log_every_steps = 1
  c.checkpoint_every_steps = 2
  return c
