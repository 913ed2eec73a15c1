"""The benchmark runs a config end to end and reports sane JSON (no timing is asserted)."""

import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxseg import bench
from jaxseg import bench_suite
from tests.conftest import require_import
from tests.conftest import tiny_config

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_bench_writes_json(tmp_path):
  out = tmp_path / "bench.json"
  proc = subprocess.run(
    [
      sys.executable,
      "-m",
      "jaxseg.bench",
      "--config",
      "configs/la_vnet.py:smoke=1,labeled=4,seed=0",
      "--config.model.remat=True",
      "--steps",
      "1",
      "--out",
      str(out),
    ],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads(out.read_text())
  assert result["method"] == "supervised" and result["steps_timed"] == 1
  assert result["patch_size"] == [16, 16, 16] and result["batch_size"] == 4
  assert result["step_s_mean"] > 0 and result["first_step_s"] > 0 and result["predict_s"] > 0
  assert result["remat"] is True and result["first_step_s"] > result["compile_s"] > 0
  assert result["xla_peak_bytes"] > 0 and result["xla_temp_bytes"] > 0
  assert result["final_loss"] == result["final_loss"]  # finite, not NaN


def test_bench_compare_mc_prints_one_line_per_case():
  proc = subprocess.run(
    [
      sys.executable,
      "-m",
      "jaxseg.bench",
      "--config",
      "configs/la_uamt.py:smoke=1,labeled=4,seed=0",
      "--steps",
      "1",
      "--compare_mc",
    ],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  lines = [json.loads(l) for l in proc.stdout.splitlines() if l.startswith("{")]
  assert [l["mc_impl"] for l in lines] == ["loop", "vmap", "vmap_chunk1"]
  for line in lines:
    assert line["compile_s"] > 0 and line["step_s_median"] > 0 and line["steps_timed"] == 1
    assert np.isfinite(line["final_loss"])
  # Same keys and data: both implementations take the same step up to float32 summation order.
  for line in lines[1:]:
    np.testing.assert_allclose(line["final_loss"], lines[0]["final_loss"], rtol=1e-4)


def test_compare_remat_takes_the_same_step_both_ways():
  plain, remat, ratios = bench.compare_remat(tiny_config("supervised"), steps=1)
  assert (plain["remat"], remat["remat"]) == (False, True)
  for line in (plain, remat):
    assert line["compile_s"] > 0 and line["step_s_median"] > 0 and line["xla_temp_bytes"] > 0
  # Same init, batch and dropout key: the same step up to float32 rounding.
  np.testing.assert_allclose(remat["final_loss"], plain["final_loss"], rtol=1e-5)
  np.testing.assert_allclose(
    ratios["step_s_median"], remat["step_s_median"] / plain["step_s_median"]
  )


def test_compare_mc_needs_a_method_with_mc_passes():
  with pytest.raises(ValueError, match="Monte-Carlo passes.*'uamt'.*'mean_teacher'"):
    bench.compare_mc(tiny_config("mean_teacher"), steps=1)


# --- `--suite`, FLOP counting and `--against_torch` (jaxseg/bench_suite.py, bench/against_torch.py)


def test_conv_matmul_flops_counts_every_tap_forward_backward_and_loops():
  x, w = jnp.ones((2, 6, 5, 4, 3)), jnp.ones((3, 3, 3, 3, 7))
  conv = lambda x, w: jax.lax.conv_general_dilated(
    x, w, (1, 1, 1), [(1, 1)] * 3, dimension_numbers=("NDHWC", "DHWIO", "NDHWC")
  )
  forward = 2.0 * (2 * 6 * 5 * 4 * 7) * 3 * 27
  assert bench_suite.conv_matmul_flops(conv, x, w) == forward
  # Gradients w.r.t. input and kernel: two more convolutions of the forward's size.
  loss = lambda x, w: jnp.sum(conv(x, w))
  assert bench_suite.conv_matmul_flops(jax.grad(loss, argnums=(0, 1)), x, w) == 3 * forward
  assert bench_suite.conv_matmul_flops(jax.grad(loss, argnums=1), x, w) == 2 * forward
  # lax.map runs its body once per element: a scan of length 4.
  mapped = lambda xs, w: jax.lax.map(lambda x: conv(x, w), xs)
  assert bench_suite.conv_matmul_flops(mapped, jnp.stack([x] * 4), w) == 4 * forward
  a, b = jnp.ones((5, 8)), jnp.ones((8, 3))
  assert bench_suite.conv_matmul_flops(jnp.matmul, a, b) == 2 * 5 * 8 * 3


def test_resize_sizes_and_bad_size():
  config = bench_suite.load("configs/la_uamt.py", "small")
  assert tuple(config.data.patch_size) == bench_suite.SMALL_PATCH_3D
  assert config.model.kwargs.n_filters == bench_suite.SMALL_N_FILTERS
  config = bench_suite.load("configs/la_uamt.py", "64x64x48", n_filters=8)
  assert tuple(config.data.patch_size) == (64, 64, 48) and config.model.kwargs.n_filters == 8
  assert tuple(bench_suite.load("configs/la_uamt.py").data.patch_size) == (112, 112, 80)
  with pytest.raises(ValueError, match="--size='64x64'.*3-D patch like 112x112x80"):
    bench_suite.load("configs/la_uamt.py", "64x64")


def test_peak_flops_by_device_kind():
  class Device:
    def __init__(self, kind):
      self.device_kind = kind

  assert bench_suite.peak_flops(Device("NVIDIA H200"), "bfloat16") == 989.4e12
  assert bench_suite.peak_flops(Device("NVIDIA A100-SXM4-80GB"), "float32") == 156e12
  assert bench_suite.peak_flops(Device("TPU v5 lite"), "bfloat16") == 197e12
  assert bench_suite.peak_flops(Device("cpu"), "float32") is None


def test_suite_writes_json_and_markdown(tmp_path):
  spec = "configs/la_vnet.py:smoke=1,labeled=4,seed=0"
  proc = subprocess.run(
    [
      sys.executable,
      "-m",
      "jaxseg.bench",
      "--suite",
      "--suite_configs",
      spec,
      "--suite_configs",
      "nope.py",
      "--size",
      "recipe",
      "--steps",
      "1",
      "--out_dir",
      str(tmp_path),
    ],
    cwd=REPO,
    # The FLOP relation below is that of XLA's convolution (matmul convolutions also multiply
    # over padded positions: tests/test_bench.py::test_against_torch_same_flops_and_loss_scale).
    env={**os.environ, "JAXSEG_CONV_LOWERING": "xla"},
    capture_output=True,
    text=True,
    timeout=900,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  suite = json.loads((tmp_path / "suite.json").read_text())
  assert suite["command"].startswith("python -m jaxseg.bench --suite")
  good, bad = suite["rows"]
  assert bad["config"] == "nope.py" and "nope.py not found" in bad["error"]
  assert good["config"] == spec and "error" not in good
  assert good["patch_size"] == [16, 16, 16] and good["batch_size"] == 4
  assert good["compile_s"] > 0 and good["step_ms_median"] > 0
  np.testing.assert_allclose(good["steps_per_s"], 1e3 / good["step_ms_median"])
  # Supervised VNet(4) at 4 x 16^3: forward, input and kernel gradients of every convolution
  # but the first one's input gradient; XLA counts fewer (padding taps excluded) plus elementwise.
  assert good["conv_matmul_flops_per_step"] > good["flops_per_step"] > 0
  np.testing.assert_allclose(
    good["achieved_flops_per_s"], good["flops_per_step"] / good["step_ms_median"] * 1e3, rtol=1e-6
  )
  assert good["xla_peak_bytes"] > 0 and good["device_peak_bytes"] > 0
  assert np.isfinite(good["final_loss"])
  table = (tmp_path / "suite.md").read_text().splitlines()
  assert table[0].startswith("`python -m jaxseg.bench --suite")
  rows = [l for l in table if l.startswith("| la_vnet.py") or l.startswith("| nope.py")]
  assert len(rows) == 2 and f"| {good['step_ms_median']:.0f} |" in rows[0]
  assert "not found" in rows[1]


def test_against_torch_same_flops_and_loss_scale(tmp_path):
  require_import("torch")
  out = tmp_path / "against.json"
  proc = subprocess.run(
    [
      sys.executable,
      "-m",
      "jaxseg.bench",
      "--against_torch",
      "--config",
      "configs/la_uamt.py:smoke=1,labeled=4,seed=0",
      "--steps",
      "1",
      "--conv_lowerings",
      "xla,matmul",
      "--out",
      str(out),
    ],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=900,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads(out.read_text())
  assert "ratio " in proc.stdout
  # The same network and step: identical convolution and matmul FLOPs, same loss from the same
  # weights and batch (dropout masks and noise differ).
  assert result["flops_jax"] == result["flops_torch"] > 0
  np.testing.assert_allclose(result["first_loss_jax"], result["first_loss_torch"], rtol=0.05)
  assert len(result["jax_step_s"]) == len(result["torch_step_s"]) == 1
  np.testing.assert_allclose(
    result["ratio_jax_over_torch"], result["jax_step_s_median"] / result["torch_step_s_median"]
  )
  # Both convolution lowerings timed in the same rounds: the same step from the same state and
  # random keys, so the same first loss; the matmul form counts its taps over padded positions.
  xla, matmul = result["lowerings"]["xla"], result["lowerings"]["matmul"]
  assert result["conv_lowering"] == "xla" and xla["jax_step_s"] == result["jax_step_s"]
  assert len(matmul["jax_step_s"]) == 1 and "(convolutions matmul)" in proc.stdout
  np.testing.assert_allclose(matmul["first_loss_jax"], xla["first_loss_jax"], rtol=1e-4)
  assert matmul["flops_jax"] >= xla["flops_jax"]


def test_against_torch_needs_the_uamt_vnet():
  with pytest.raises(ValueError, match="needs method 'uamt' with model 'vnet'"):
    bench.checkout_module("against_torch").against_torch(tiny_config("mean_teacher"), steps=1)
