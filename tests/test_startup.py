"""Start-up cost and profiling: the persistent compilation cache (`config.compile_cache`) and the
jax.profiler trace of `config.profile_steps`."""

import os
import pathlib

import pytest

from jaxseg import errors
from jaxseg import train
from tests.conftest import run_script
from tests.conftest import tiny_config

REPO = pathlib.Path(__file__).resolve().parents[1]

# A fresh process (jax reads the cache folder once, at its first compilation) compiles one function
# under `setting` and lists the cache folder it ends up with.
_CACHE_SCRIPT = r"""
import json, pathlib, sys
import jax, jax.numpy as jnp
from jaxseg import train
train.enable_compile_cache(sys.argv[1])
jax.jit(lambda x: jnp.sin(x) @ x.T)(jnp.ones((64, 64))).block_until_ready()
folder = pathlib.Path(sys.argv[2])
print(json.dumps(sorted(p.name for p in folder.iterdir()) if folder.exists() else None))
"""


def _cache_files(setting: str, folder: pathlib.Path, environ: dict) -> list | None:
  env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
  env.update(environ, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
  return run_script(_CACHE_SCRIPT, setting, str(folder), env=env, timeout=300)


def test_compile_cache_folder_auto_and_off(tmp_path):
  # An explicit folder receives the compiled executable.
  assert _cache_files(str(tmp_path / "explicit"), tmp_path / "explicit", {})
  # 'auto' (the default) uses ~/.cache/jaxseg/xla ...
  home = tmp_path / "home"
  assert _cache_files("auto", home / ".cache" / "jaxseg" / "xla", {"HOME": str(home)})
  # ... unless $JAX_COMPILATION_CACHE_DIR names one (the tests' own cache).
  env_dir = tmp_path / "env"
  assert _cache_files(
    "auto", env_dir, {"HOME": str(home), "JAX_COMPILATION_CACHE_DIR": str(env_dir)}
  )
  # '' turns it off, even with the variable set.
  off = tmp_path / "off"
  assert _cache_files("", off, {"JAX_COMPILATION_CACHE_DIR": str(off)}) in (None, [])


@pytest.mark.parametrize("spec", ["3", "2:2", "a:b", "-1:2", "1:9"])
def test_bad_profile_steps_is_a_config_error(spec, tmp_path):
  config = tiny_config("supervised", steps=4)
  config.profile_steps = spec
  with pytest.raises(errors.ConfigError, match="profile_steps"):
    train.train_and_evaluate(config, tmp_path)
  assert not list(tmp_path.iterdir())


def test_profile_steps_writes_a_tensorboard_trace(tmp_path):
  config = tiny_config("supervised", steps=3)
  config.profile_steps = "1:2"
  train.train_and_evaluate(config, tmp_path)
  traces = list((tmp_path / "profile").rglob("*.xplane.pb"))
  assert len(traces) == 1 and traces[0].stat().st_size > 0
  # TensorBoard's profile plugin reads plugins/profile/<run>/<host>.xplane.pb.
  assert traces[0].parents[1].name == "profile" and traces[0].parents[2].name == "plugins"
  assert train.profile_window("1:2", 3) == (1, 2) and train.profile_window("", 3) is None
