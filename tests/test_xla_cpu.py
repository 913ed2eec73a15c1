"""jaxseg's XLA:CPU default (jaxseg/xla_cpu.py): which environments get the flag, that a user's own
setting and an accelerator are left alone, and that with it XLA:CPU keeps an optimization barrier
(what `_conv_matmul` and `model.remat` rely on) while without it the barrier is gone."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

from jaxseg import xla_cpu

REPO = pathlib.Path(__file__).resolve().parents[1]

FLAG = "--xla_disable_hlo_passes=cse_barrier_expander"


def test_flags_to_add():
  assert xla_cpu.flags_to_add({"JAX_PLATFORMS": "cpu"}) == [FLAG]
  assert xla_cpu.flags_to_add({"JAX_PLATFORMS": "cpu", "XLA_FLAGS": "-O0 --x=1"}) == [FLAG]
  # The user's own pass list stands, even when it names other passes.
  own = {"JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_disable_hlo_passes=algsimp"}
  assert xla_cpu.flags_to_add(own) == []
  assert xla_cpu.flags_to_add({"JAX_PLATFORMS": "cpu", "JAXSEG_XLA_CPU_DEFAULTS": "0"}) == []
  for platforms in ("cuda", "tpu", "cuda,cpu"):
    assert xla_cpu.flags_to_add({"JAX_PLATFORMS": platforms}) == [], platforms


def test_an_installed_accelerator_plugin_means_no_flag(monkeypatch):
  found = {"jax_cuda12_plugin"}
  monkeypatch.setattr(
    xla_cpu.importlib.util, "find_spec", lambda name: object() if name in found else None
  )
  assert not xla_cpu.cpu_only({})
  assert xla_cpu.flags_to_add({}) == []
  assert xla_cpu.cpu_only({"JAX_PLATFORMS": "cpu"})  # asked for the CPU explicitly
  found.clear()
  assert xla_cpu.flags_to_add({}) == [FLAG]


def test_apply_appends_to_xla_flags_before_the_backend_starts(monkeypatch):
  env = {"JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_backend_optimization_level=0"}
  monkeypatch.setattr(xla_cpu, "_backend_started", lambda: False)
  assert xla_cpu.apply(env) == [FLAG]
  assert env["XLA_FLAGS"] == f"--xla_backend_optimization_level=0 {FLAG}"
  assert xla_cpu.apply(env) == []  # already there
  later = {"JAX_PLATFORMS": "cpu"}
  monkeypatch.setattr(xla_cpu, "_backend_started", lambda: True)
  assert xla_cpu.apply(later) == [] and "XLA_FLAGS" not in later


_BARRIER = r"""
import json, os, sys
import jaxseg  # before jax starts
import jax, jax.numpy as jnp
from jax import lax
hlo = jax.jit(lambda x: lax.optimization_barrier(x * 2.0) + 1.0).lower(jnp.ones(8)).compile()
print(json.dumps({"xla_flags": os.environ.get("XLA_FLAGS", ""),
                  "barrier": "opt-barrier" in hlo.as_text()}))
"""


@pytest.mark.parametrize("defaults", ["1", "0"])
def test_the_flag_keeps_optimization_barriers(defaults):
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env.update(JAX_PLATFORMS="cpu", JAXSEG_XLA_CPU_DEFAULTS=defaults)
  out = subprocess.run(
    [sys.executable, "-c", _BARRIER], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
  )
  assert out.returncode == 0, out.stderr[-3000:]
  got = json.loads(out.stdout.strip().splitlines()[-1])
  assert (FLAG in got["xla_flags"]) == (defaults == "1")
  assert got["barrier"] == (defaults == "1")
