"""Configs: pure data (imports, no `del`, no config loading another), every file loads and
validates with and without `smoke=1`, the smoke shrink, the seed table's targets and defaults, and
argument parsing."""

import ast
import pathlib
import subprocess
import sys

import pytest

from jaxseg import config_check
from jaxseg import config_lib

REPO = pathlib.Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "configs").glob("*.py"))
IDS = [p.stem for p in CONFIGS]


def _load(name: str, arg: str | None = None):
  return config_lib.load_config_module(REPO / "configs" / name).get_config(arg)


def _imports(path: pathlib.Path) -> list[tuple[str, str | None]]:
  """(module, imported name) for every import statement of a python file."""
  out = []
  for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
    if isinstance(node, ast.Import):
      out += [(a.name, None) for a in node.names]
    elif isinstance(node, ast.ImportFrom):
      out += [(node.module or "", a.name) for a in node.names]
  return out


def test_config_dir_holds_the_configs():
  assert len(CONFIGS) >= 16 and not (REPO / "configs" / "smoke.py").exists()


@pytest.mark.parametrize("path", CONFIGS, ids=IDS)
def test_config_imports_only_config_lib_from_jaxseg(path):
  imports = _imports(path)
  jaxseg_imports = [(m, n) for m, n in imports if m.split(".")[0] == "jaxseg"]
  assert jaxseg_imports == [("jaxseg", "config_lib")], jaxseg_imports
  others = {m.split(".")[0] for m, _ in imports} - {"jaxseg"}
  assert others <= {"ml_collections"}, others  # no importlib: configs never load each other


def test_config_lib_imports_nothing_from_jaxseg():
  roots = {m.split(".")[0] for m, _ in _imports(REPO / "jaxseg" / "config_lib.py")}
  assert "jaxseg" not in roots and roots <= {"importlib", "pathlib", "ml_collections"}, roots


def test_loading_every_config_imports_no_model_code():
  """Configs are data: building all of them (smoke included) pulls in neither the methods nor
  jax / flax / optax."""
  code = (
    "import pathlib, sys\n"
    "from jaxseg import config_lib\n"
    "for p in sorted(pathlib.Path('configs').glob('*.py')):\n"
    "  m = config_lib.load_config_module(p)\n"
    "  m.get_config(); m.get_config('smoke=1')\n"
    "print(sorted(n for n in sys.modules\n"
    "             if n.split('.')[0] in ('jax', 'flax', 'optax') or n.startswith('jaxseg.')))\n"
  )
  proc = subprocess.run(
    [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  # jaxseg.xla_cpu comes with the package (its __init__ sets the CPU's XLA flags); stdlib only.
  assert proc.stdout.strip() == "['jaxseg.config_lib', 'jaxseg.xla_cpu']"


@pytest.mark.parametrize("path", CONFIGS, ids=IDS)
def test_no_config_edits_by_deletion(path):
  tree = ast.parse(path.read_text())
  assert not [n for n in ast.walk(tree) if isinstance(n, ast.Delete)]
  assert "load_sibling" not in path.read_text() and not hasattr(config_lib, "load_sibling")


@pytest.mark.parametrize("smoke", [False, True], ids=["full", "smoke"])
@pytest.mark.parametrize("path", CONFIGS, ids=IDS)
def test_every_config_loads_validates_and_documents_itself(path, smoke):
  module = config_lib.load_config_module(path)
  config = module.get_config("smoke=1" if smoke else None)
  config_check.validate(config)
  for field in ("method", "seed", "total_steps", "batch_size", "labeled_batch_size"):
    assert field in config, field
  assert config.model.name and config.data.name and "root" in config.data
  assert config.eval.mode in ("parity", "clean")
  assert "sdf" not in config.data  # DTC's target is the method's declaration, not the config's
  doc = module.__doc__
  assert "python -m jaxseg.main" in doc and f"configs/{path.name}:smoke=1" in doc
  assert "Target" in doc and "Arguments: `labeled`" in doc


@pytest.mark.parametrize("path", CONFIGS, ids=IDS)
def test_smoke_shrinks_and_keeps_the_recipe(path):
  full = config_lib.load_config_module(path).get_config()
  c = config_lib.load_config_module(path).get_config("smoke=1")
  assert (c.method, c.seed, c.data.labeled) == (full.method, full.seed, full.data.labeled)
  assert (c.total_steps, c.log_every_steps, c.checkpoint_every_steps) == (4, 1, 2)
  assert c.eval.every_steps == 0 and (c.eval.stride_xy, c.eval.stride_z) == (8, 8)
  kwargs = c.model.kwargs
  assert kwargs.get("n_filters") == 4 or tuple(kwargs.feature_chns) == (4, 8, 16, 32, 64)
  assert tuple(c.data.patch_size) == ((32, 32) if len(full.data.patch_size) == 2 else (16, 16, 16))
  assert c.data.root == "" and c.data.synthetic.n_cases >= c.data.labeled + 4
  want_name = "synthetic" if full.data.name in ("la", "synthetic") else full.data.name
  assert c.data.name == want_name
  # Only the shrink differs: the method's own block is the full recipe's.
  own = [
    k for k in full if k not in ("model", "data", "optimizer", "eval") and hasattr(full[k], "keys")
  ]
  for key in own:
    changed = {k for k in full[key] if full[key][k] != c[key][k]}
    assert changed <= {"pretrain_steps"}, (key, changed)


@pytest.mark.parametrize("path", CONFIGS, ids=IDS)
def test_smoke_data_holds_the_split(path, tmp_path):
  """Each smoke stand-in is written in its dataset's layout and splits into the labeled count,
  2 validation cases and at least 2 unlabeled ones."""
  from jaxseg.data import builder
  from jaxseg.data import get_dataset

  c = config_lib.load_config_module(path).get_config("smoke=1")
  root = builder.resolve_root(c, tmp_path)
  split = get_dataset(c.data.name, c.data).make_splits(root, c.data)
  if c.data.name == "acdc":  # labeled PATIENTS; the split lists their slices
    assert len({s.split("_")[0] for s in split["labeled"]}) == c.data.labeled
    assert len(split["labeled"]) > c.data.labeled
  else:
    assert len(split["labeled"]) == c.data.labeled
  assert len(split["val"]) == config_lib.SMOKE_VAL_CASES and len(split["unlabeled"]) >= 2


def test_smoke_keeps_the_arguments():
  c = _load("la_mt.py", "smoke=1,labeled=6,seed=3")
  assert (c.data.labeled, c.seed, c.data.synthetic.n_cases) == (6, 3, 10)
  assert _load("la_acmt.py", "smoke=1,strategy=serr").acmt.strategy == "serr"
  assert _load("demo.py", "smoke=1,steps=50").total_steps == 4  # smoke wins over steps
  # Two-phase methods run both phases in a smoke run.
  for name, block in (
    ("la_bcp.py", "bcp"),
    ("acdc_bcp.py", "bcp"),
    ("la_cml.py", "cml"),
    ("acdc_cml.py", "cml"),
  ):
    c = _load(name, "smoke=1")
    assert 0 < c[block].pretrain_steps < c.total_steps, name
  acdc = _load("acdc_bcp.py", "smoke=1")
  assert (acdc.batch_size, acdc.labeled_batch_size) == (4, 2)


# The numbers each config's docstring states (the seed table's where it has one: SEEDED) and the
# labeled count its default means.
SEEDED = {
  "la_vnet.py",
  "la_mt.py",
  "la_uamt.py",
  "la_upc.py",
  "la_mcf.py",
  "la_cml.py",
  "la_acmt.py",
  "acdc_bcp.py",
  "brats_dycon.py",
  "la_dycon.py",
  "pancreas_dycon.py",
  "isles_dycon.py",
}
SEED_TARGETS = {
  "la_vnet.py": (16, ["85.06"]),
  "la_mt.py": (16, ["85.89"]),
  "la_uamt.py": (16, ["88.88", "80.21", "7.32", "2.26"]),
  "la_upc.py": (16, ["89.65", "81.36", "6.71", "2.15", "84.37"]),
  "la_mcf.py": (16, ["88.71"]),
  "la_cml.py": (16, ["90.36"]),
  "la_acmt.py": (16, ["89.12"]),
  "acdc_bcp.py": (3, ["87.59"]),
  "la_dtc.py": (16, ["89.42"]),
  "la_bcp.py": (8, ["89.62"]),
  "isles_dycon.py": (10, ["61.48", "17.61"]),
  "brats_dycon.py": (25, ["61.48", "17.61"]),
  "la_dycon.py": (8, ["61.48"]),
  "pancreas_dycon.py": (12, ["61.48"]),
  "pancreas_dtc.py": (12, ["78.27"]),
  "acdc_cml.py": (7, []),
  "promise12_vnet.py": (45, ["0.869", "0.033", "5.71"]),
}


def _flat(text: str) -> str:
  return " ".join(text.split())


@pytest.mark.parametrize("name", sorted(SEED_TARGETS))
def test_docstring_states_the_target_of_its_default_setting(name):
  labeled, numbers = SEED_TARGETS[name]
  module = config_lib.load_config_module(REPO / "configs" / name)
  doc = _flat(module.__doc__)
  assert module.get_config().data.labeled == labeled
  for number in numbers:
    assert number in doc, number
  assert ("seed table" in doc) == (name in SEEDED)
  assert f"default {labeled}" in doc  # the Arguments line names the default labeled count


def test_every_config_has_a_stated_target():
  assert set(SEED_TARGETS) <= {p.name for p in CONFIGS}
  for name in ("la_vnet.py", "la_mt.py"):  # the numbers the issue replaced are gone as targets
    doc = _flat(config_lib.load_config_module(REPO / "configs" / name).__doc__)
    assert "about 88" not in doc and "Target: the seed table's" in doc


def test_non_default_settings_through_arguments():
  assert _load("acdc_bcp.py", "labeled=7").data.labeled == 7
  assert _load("la_cml.py", "labeled=8").data.labeled == 8
  assert _load("la_acmt.py", "labeled=8").data.labeled == 8
  assert _load("la_upc.py", "labeled=4").data.labeled == 4


def test_la_recipes_hold_the_upstream_hyperparameters():
  mt = _load("la_mt.py", "labeled=8,seed=3")
  assert (mt.data.labeled, mt.seed, mt.total_steps) == (8, 3, 6000)
  assert tuple(mt.data.patch_size) == (112, 112, 80)
  assert (mt.batch_size, mt.labeled_batch_size) == (4, 2)
  assert (mt.optimizer.lr, mt.optimizer.momentum, mt.optimizer.weight_decay) == (0.01, 0.9, 1e-4)
  assert (mt.optimizer.lr_step_every, mt.optimizer.lr_step_factor) == (2500, 0.1)
  assert (mt.mt.ema_decay, mt.mt.consistency, mt.mt.consistency_rampup) == (0.99, 0.1, 40.0)
  assert (mt.mt.noise_std, mt.mt.noise_clip, mt.mt.iters_per_epoch) == (0.1, 0.2, 150)
  assert (mt.eval.stride_xy, mt.eval.stride_z) == (18, 4)
  assert mt.model.kwargs.n_filters == 16 and mt.model.kwargs.has_dropout
  assert (mt.data.n_val, tuple(mt.data.spacing)) == (4, (0.625, 0.625, 0.625))
  sup = _load("la_vnet.py")
  assert sup.method == "supervised" and sup.labeled_batch_size == sup.batch_size == 4
  assert sup.data.labeled == 16 and "mt" not in sup
  dycon = _load("la_dycon.py")
  assert (dycon.data.name, dycon.total_steps, dycon.optimizer.lr_schedule) == (
    "la",
    15000,
    "constant",
  )
  assert dycon.optimizer.clip_grad_norm == 1.0 and dycon.dycon == _load("brats_dycon.py").dycon


def test_blocks_return_fresh_dicts_with_overrides():
  a, b = config_lib.la_data(8), config_lib.la_data(8, n_val=6)
  a.patch_size = (16, 16, 16)
  assert tuple(config_lib.la_data(8).patch_size) == (112, 112, 80) and b.n_val == 6
  assert config_lib.vnet_model("vnet_sdf", n_classes=1).kwargs.n_classes == 1
  assert config_lib.sgd("poly", poly_power=0.9).lr_schedule == "poly"
  assert config_lib.parity_eval(largest_cc=True).largest_cc is True


def test_parse_arg_types_and_errors():
  a = config_lib.parse_arg("labeled=8,seed=2", labeled=16, seed=1337, name="x", smoke=False)
  assert (a.labeled, a.seed, a.name, a.smoke) == (8, 2, "x", False)
  assert config_lib.parse_arg("smoke=1", smoke=False).smoke is True
  assert config_lib.parse_arg("smoke=0", smoke=False).smoke is False
  assert config_lib.parse_arg(None, labeled=16).labeled == 16
  with pytest.raises(ValueError, match="unknown_key"):
    config_lib.parse_arg("unknown_key=1", labeled=16)
  with pytest.raises(ValueError, match="key=value"):
    config_lib.parse_arg("labeled", labeled=16)
  with pytest.raises(ValueError, match="labeled='eight': expected int"):
    config_lib.parse_arg("labeled=eight", labeled=16)
  with pytest.raises(ValueError, match="smoke='2': expected 1 / 0"):
    config_lib.parse_arg("smoke=2", smoke=False)
  with pytest.raises(ValueError, match="'smoek' is not one of .*'smoke'"):
    _load("la_mt.py", "smoek=1")


def test_smoke_and_loading_errors(tmp_path):
  with pytest.raises(ValueError, match="data.name='kits' has no synthetic stand-in"):
    config_lib.smoke_stand_in("kits", 4)
  with pytest.raises(FileNotFoundError, match="nope.py"):
    config_lib.load_config_module(tmp_path / "nope.py")
