r"""Smoke run: any method's LA recipe shrunk to run in seconds on a CPU (what the tests run).

  python -m jaxseg.main --config configs/smoke.py:method=mean_teacher,steps=4 --workdir runs/smoke

Takes the method's own LA config (`RECIPES`) and shrinks it: n_filters 4, 16^3 patches from 8
synthetic phantom volumes of 24x24x16, 2 validation cases. Not a benchmark: there is no number
to reach beyond "runs end to end".
"""
import ml_collections

from jaxseg import config_lib

# Method -> the config file holding its full recipe.
RECIPES = {
    "supervised": "la_vnet.py",
    "mean_teacher": "la_mt.py",
    "uamt": "la_uamt.py",
    "dtc": "la_dtc.py",
    "upc": "la_upc.py",
    "acmt": "la_acmt.py",
    "bcp": "la_bcp.py",
    "cml": "la_cml.py",
    "mcf": "la_mcf.py",
    "dycon": "la_dycon.py",
}


def get_config(arg=None):
  a = config_lib.parse_arg(arg, method="mean_teacher", steps=4, seed=0)
  if a.method not in RECIPES:
    raise ValueError(f"configs/smoke.py: no recipe for method {a.method!r}; known: {sorted(RECIPES)}")
  c = config_lib.load_sibling(__file__, RECIPES[a.method]).get_config(f"labeled=4,seed={a.seed}")
  c.total_steps = a.steps
  c.model.kwargs.n_filters = 4
  c.data.name = "synthetic"
  c.data.root = ""
  c.data.synthetic = ml_collections.ConfigDict(dict(n_cases=8, shape=(24, 24, 16), seed=0))
  c.data.n_val = 2
  c.data.patch_size = (16, 16, 16)
  c.eval.stride_xy = 8
  c.eval.stride_z = 8
  c.eval.every_steps = 0
  c.log_every_steps = 1
  c.checkpoint_every_steps = 2
  return c
