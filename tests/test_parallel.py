"""The mesh: simulated CPU devices (the recipe's batch of 4 on 8 as data 4 x space 2, each patch
split over "space") give the one-device losses (sync-BN over the global batch); the arrangement
chosen and its checks; the on-device sliding window equals the host loop; the XLA bug that keeps
XLA's own convolution out of a spatially partitioned step."""

import functools
import json
import os
import pathlib
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from jaxseg import parallel
from tests.conftest import run_script
from tests.conftest import xla_flags

REPO = pathlib.Path(__file__).resolve().parents[1]

_SCRIPT = r"""
import json, sys
import jax, numpy as np
from jaxseg import methods, parallel
from tests.conftest import tiny_config
config = tiny_config("mean_teacher")
# At 16^3 the bottleneck BN normalises 4 values per channel (1 voxel x 4 samples), which makes the
# gradient ill-conditioned: fp32 reduction-order noise then grows to 1e-3 in two steps (the torch
# fixtures show the same, docs/parity.md). 32^3 and the upstream lr keep the comparison well posed.
config.data.patch_size = (32, 32, 32)
config.optimizer.lr = 0.01
method = methods.build(config)
rng = np.random.default_rng(0)
shape = (config.batch_size, *config.data.patch_size)
label = (rng.random(shape) > 0.7).astype(np.int32)
image = (rng.normal(size=shape) + 2 * label).astype(np.float32)[..., None]
batch = {"image": image, "label": label}
out = []
for shape in sys.argv[1].split(";"):
  config.mesh.shape = shape
  mesh = parallel.mesh_for(config)
  state = parallel.put_replicated(method.init(jax.random.PRNGKey(0), batch), mesh)
  step = jax.jit(parallel.for_mesh(method.train_step, mesh), donate_argnums=0)
  losses = []
  for _ in range(2):
    sharded = parallel.put_batch(batch, mesh)
    state, m = step(state, sharded)
    losses.append(float(m["loss"]))
  out.append({"devices": len(jax.devices()), "losses": losses, "mesh": dict(mesh.shape),
              "image": str(sharded["image"].sharding.spec),
              "label": str(sharded["label"].sharding.spec)})
print(json.dumps(out))
"""


def _losses(n_devices: int, mesh_shapes: str = "auto") -> list[dict]:
  return run_script(_SCRIPT, mesh_shapes, n_devices=n_devices, timeout=900)


def test_eight_devices_match_one_device_after_two_steps():
  """The recipe's batch of 4 on 8 devices: 4 samples over "data" and each patch's first spatial axis
  over "space" (data 4 x space 2, the automatic choice), or the 4 samples whole and that axis over
  all 8 devices (space 8, where the deepest feature maps are smaller than the axis): both give one
  device's losses (sync-BN over the global batch, the halos of every convolution exchanged)."""
  (one,) = _losses(1)
  split, space8 = _losses(8, "auto;space:8")
  assert one["devices"] == 1 and split["devices"] == space8["devices"] == 8
  assert split["mesh"] == {"runs": 1, "data": 4, "space": 2}
  assert space8["mesh"] == {"runs": 1, "data": 1, "space": 8}
  for eight in (split, space8):
    assert eight["image"] == eight["label"] == str(P("data", "space"))
    np.testing.assert_allclose(eight["losses"], one["losses"], rtol=1e-5, atol=1e-5)
  assert one["losses"][0] != one["losses"][1]


_XLA_SCRIPT = r"""
import json
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from jaxseg.models import layers
mesh = Mesh(np.asarray(jax.devices()).reshape(4, 2), ("data", "space"))
rng = np.random.default_rng(0)
x = rng.normal(size=(4, 16, 16, 16, 2)).astype(np.float32)
t = rng.normal(size=(4, 16, 16, 16, 3)).astype(np.float32)
w = rng.normal(size=(3, 3, 3, 2, 3)).astype(np.float32)
def loss(w, x, t):
  return jnp.sum(layers.conv(x, w, (1, 1, 1)) * t)
want = np.asarray(jax.jit(jax.grad(loss))(w, x, t))
out = {}
for lowering, trace in (("xla", loss), ("partitioned", layers.partitioned_trace(loss))):
  layers.CONV_LOWERING = "xla"
  grad = jax.jit(jax.grad(trace))
  for name, spec in (("data", P("data")), ("depth", P(None, "space")),
                     ("data+depth", P("data", "space")), ("depth8", P(None, ("data", "space")))):
    s = NamedSharding(mesh, spec)
    got = np.asarray(grad(w, jax.device_put(x, s), jax.device_put(t, s)))
    out[f"{lowering}:{name}"] = float(np.abs(got - want).max() / np.abs(want).max())
print(json.dumps(out))
"""


@functools.cache
def _conv_gradient_errors() -> dict:
  """{lowering:sharding: max relative error} of one convolution's weight gradient on 8 devices
  against one device's, for XLA's convolution and for the partitioned step's matmul form."""
  return run_script(_XLA_SCRIPT, n_devices=8, timeout=600)


@pytest.mark.xfail(
  strict=True,
  reason="XLA: a depth-sharded convolution replicated along another "
  "mesh axis gets its weight gradient summed once per replica (parallel.py)",
)
def test_xla_depth_sharded_conv_gradient():
  """Why XLA's convolution is kept out of a spatially partitioned step: the weight gradient of one
  convolution, its input replicated over "data" (4) and its depth sharded over "space" (2), is 4x
  the one-device gradient. Strict: once XLA computes it right this test fails, and
  `layers.spatially_partitioned` could keep XLA's convolution."""
  err = _conv_gradient_errors()
  assert err["xla:data"] < 1e-5  # samples over "data" alone are right
  assert err["xla:depth"] < 1e-5, err


def test_partitioned_conv_gradient_is_right_where_xla_is_not():
  """The same convolution traced inside `layers.spatially_partitioned` (matmuls, pads and slices)
  has one device's weight gradient under every sharding, that of the XLA bug included."""
  err = _conv_gradient_errors()
  assert err["xla:depth"] > 0.5  # the bug is there to be avoided (else the xfail above flips)
  for sharding in ("data", "depth", "data+depth", "depth8"):
    assert err[f"partitioned:{sharding}"] < 1e-5, err


def _config(batch_size=4, shape="auto", runs=1):
  return ml_collections.ConfigDict(dict(batch_size=batch_size, runs=runs, mesh=dict(shape=shape)))


@pytest.mark.parametrize(
  "n_devices, batch_size, want",
  [
    (1, 4, {"data": 1, "space": 1}),
    (2, 4, {"data": 2, "space": 1}),
    (8, 4, {"data": 4, "space": 2}),
    (8, 8, {"data": 8, "space": 1}),
    (64, 4, {"data": 4, "space": 16}),
    (6, 4, {"data": 2, "space": 3}),
    (8, 24, {"data": 8, "space": 1}),
  ],
)
def test_auto_arrangement(n_devices, batch_size, want):
  assert parallel.auto_mesh_shape(n_devices, batch_size) == {"runs": 1, **want}


@pytest.mark.parametrize(
  "n_devices, batch_size, runs, want",
  [
    (1, 4, 3, (1, 1, 1)),
    (8, 4, 2, (2, 4, 1)),
    (8, 4, 8, (8, 1, 1)),
    (8, 4, 3, (1, 4, 2)),  # 3 replicas cannot split 8 devices: the batch takes them
    (8, 2, 4, (4, 2, 1)),
    (64, 4, 4, (4, 4, 4)),
    (6, 4, 3, (3, 2, 1)),
  ],
)
def test_auto_arrangement_with_runs(n_devices, batch_size, runs, want):
  """The runs axis takes what divides the replica count first, then "data" the batch."""
  got = parallel.auto_mesh_shape(n_devices, batch_size, runs)
  assert (got["runs"], got["data"], got["space"]) == want


def test_mesh_from_config_and_its_errors():
  cpu = jax.devices()[:1]
  mesh = parallel.mesh_for(_config(batch_size=3), cpu)  # one device takes any batch
  assert dict(mesh.shape) == {"runs": 1, "data": 1, "space": 1}
  assert mesh.axis_names == parallel.AXES == ("runs", "data", "space")
  assert parallel.describe(mesh) == "data 1 x space 1"
  assert parallel.describe({"runs": 2, "data": 4, "space": 1}) == "runs 2 x data 4 x space 1"
  assert parallel.parse_mesh_shape("space:2") == {"runs": 1, "data": 1, "space": 2}
  assert parallel.parse_mesh_shape("data:4,space:2") == {"runs": 1, "data": 4, "space": 2}
  assert parallel.parse_mesh_shape("runs:2,data:4") == {"runs": 2, "data": 4, "space": 1}
  for bad in ("4x2", "data:0", "batch:2", "data:-1", ""):
    with pytest.raises(parallel.MeshError, match="expected 'auto' or axis:size"):
      parallel.parse_mesh_shape(bad)
  with pytest.raises(parallel.MeshError, match="needs 2 devices, there are 1"):
    parallel.mesh_for(_config(shape="data:2"), cpu)
  fake = [object()] * 8  # the checks come before any device is touched
  with pytest.raises(parallel.MeshError, match="batch_size=3 is not divisible by the data axis"):
    parallel.mesh_for(_config(batch_size=3, shape="data:8"), fake)
  with pytest.raises(parallel.MeshError, match="runs=3 is not divisible by the runs axis"):
    parallel.mesh_for(_config(runs=3, shape="runs:2,data:4"), fake)


def test_la_recipe_batch_of_4_on_8_devices(tmp_path):
  """The command a user runs, on the shared LA data, on 8 simulated devices, at a small patch:
  UA-MT's batch of 4 (2 labeled + 2 unlabeled) trains and the summary is written."""
  from tests.conftest import data_dir
  from tests.conftest import require_shared_data

  root = data_dir() / "LA"
  require_shared_data(root / "train.list")
  env = dict(os.environ, XLA_FLAGS=xla_flags(8), JAX_PLATFORMS="cpu")
  cmd = [
    sys.executable,
    "-m",
    "jaxseg.main",
    "--config",
    "configs/la_uamt.py",
    "--config.total_steps=2",
    f"--config.data.root={root}",
    f"--workdir={tmp_path}",
    "--config.data.patch_size=(32, 32, 32)",
    "--config.model.kwargs.n_filters=4",
    "--config.eval.every_steps=0",
    "--config.eval.max_cases=1",
    "--config.eval.stride_xy=32",
    "--config.eval.stride_z=32",
  ]
  out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=1500)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "batch 4 on 8 cpu device(s) as data 4 x space 2" in out.stdout
  summary = json.loads((tmp_path / "eval" / "val" / "summary.json").read_text())
  assert summary["n_cases"] == 1 and 0.0 <= summary["dice"] <= 1.0
  records = [json.loads(r) for r in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  # log_every_steps 20: the last step is logged.
  assert [r["step"] for r in records] == [2] and np.isfinite(records[0]["loss"])


_EVAL_SCRIPT = r"""
import functools, json, sys
import jax, numpy as np
from jaxseg import inference, methods, parallel
from tests.conftest import random_batch, tiny_config
config = tiny_config("mean_teacher")
method = methods.build(config)
state = method.init(jax.random.PRNGKey(0), random_batch(config))
mesh = parallel.mesh_for(config)
image = np.random.default_rng(1).normal(size=(40, 28, 20)).astype(np.float32)
patch = tuple(config.data.patch_size)
host_predict = jax.jit(method.predict)
prob_fn = lambda w: host_predict(state, w)
windows = inference.DeviceWindows(method.predict, 2, 4, mesh)
out = {"devices": len(jax.devices()), "window_batch": windows.batch_size}
for name, grid, host in [
    ("parity", functools.partial(inference.parity_grid, stride_xy=6, stride_z=4),
     lambda: inference.sliding_window_parity(prob_fn, image, patch, 6, 4, 2, batch_size=4)),
    ("clean", functools.partial(inference.gaussian_grid, overlap=0.5, sigma_scale=0.125),
     lambda: inference.sliding_window_gaussian(prob_fn, image, patch, 2, batch_size=4))]:
  label, score = windows(windows.put(state), image, patch, grid)
  host_label, host_score = host()
  out[name] = {"labels_equal": bool(np.array_equal(label, host_label)),
               "score_err": float(np.abs(score - host_score).max()),
               "fg": int(host_label.sum()), "score_sum": float(host_score.sum())}
print(json.dumps(out))
"""


@pytest.mark.parametrize("n_devices", [1, 8])
def test_jitted_sliding_window_equals_the_host_loop(n_devices):
  """The on-device sliding window (windows sharded over every device) gives the host loop's label
  map and scores, in both modes, for a VNet's predict."""
  got = run_script(_EVAL_SCRIPT, n_devices=n_devices, timeout=900)
  assert got["devices"] == n_devices and got["window_batch"] == max(4, n_devices)
  for mode in ("parity", "clean"):
    assert got[mode]["labels_equal"], got
    assert got[mode]["score_err"] < 1e-6, got
    # The volume is covered: scores sum to one per voxel.
    np.testing.assert_allclose(got[mode]["score_sum"], 40 * 28 * 20, rtol=1e-5)


def test_a_run_resumes_on_another_arrangement(tmp_path):
  """The mesh, the compile cache and the profile window change no number: a workdir accepts them
  changed on resume, while a changed recipe field is still refused."""
  from jaxseg import errors
  from jaxseg import io_utils
  from jaxseg import train
  from tests.conftest import tiny_config

  config = tiny_config("supervised")
  io_utils.write_json(tmp_path / "config.json", config.to_dict())
  config.mesh.shape, config.compile_cache, config.profile_steps = "data:2", "", "1:2"
  config.model.remat = True  # an out-of-memory run resumes with rematerialisation
  train.check_workdir_config(config, tmp_path)
  config.model.kwargs.n_filters = 8
  with pytest.raises(errors.RunStateError, match=r"differs in model.kwargs.n_filters\)"):
    train.check_workdir_config(config, tmp_path)
  config.model.kwargs.n_filters = tiny_config("supervised").model.kwargs.n_filters
  config.seed += 1
  with pytest.raises(errors.RunStateError, match=r"differs in seed\)"):
    train.check_workdir_config(config, tmp_path)
