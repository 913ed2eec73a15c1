"""The command line as a new user meets it: a mistake the user can fix is one line on stderr and
exit status 2, leaving no files behind; --debug / JAXSEG_DEBUG=1 show the traceback."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

from jaxseg import io_utils
from tests.conftest import tiny_config

REPO = pathlib.Path(__file__).resolve().parents[1]
SMOKE = "configs/la_mt.py:smoke=1,labeled=4,seed=0"


def _main(*args, env_extra=None, cwd=REPO):
  env = dict(os.environ, **(env_extra or {}))
  env.pop("JAXSEG_DATA_DIR", None)
  env.pop("JAXSEG_DEBUG", None) if not env_extra else None
  return subprocess.run(
    [sys.executable, "-m", "jaxseg.main", *args],
    cwd=cwd,
    env=env,
    capture_output=True,
    text=True,
    timeout=600,
  )


def _one_line_error(result, *fragments):
  assert result.returncode == 2, result.stderr[-3000:]
  assert result.stdout == ""
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("jaxseg: error: "), result.stderr[-3000:]
  for fragment in fragments:
    assert fragment in lines[0], (fragment, lines[0])
  # No developer-machine or internal paths: the repo, its sibling shared folder, site-packages.
  for leak in ("shared/", "site-packages", "Traceback", str(REPO)):
    assert leak not in lines[0], (leak, lines[0])
  return lines[0]


def test_missing_data_root_is_one_line_and_leaves_no_workdir(tmp_path):
  workdir = tmp_path / "W"
  result = _main(
    "--config", "configs/la_uamt.py", "--workdir", str(workdir), "--config.data.root=/nonexistent"
  )
  _one_line_error(result, "LA data not found", "/nonexistent", "train.list")
  assert not workdir.exists()


@pytest.mark.parametrize(
  "args, fragments",
  [
    (["--config", "configs/la_uatm.py"], ["configs/la_uatm.py", "No such file"]),
    (["--config", "configs/la_uamt.py:labeld=3"], ["labeld", "is not one of"]),
    (["--config", "configs/la_uamt.py", "--config.totl_steps=3"], ["totl_steps", "total_steps"]),
    (["--config", "configs/la_uamt.py", "--config.total_steps=abc"], ["total_steps=abc"]),
    (["--config", "configs/la_uamt.py", "--config.method=nope"], ["method='nope'"]),
    (["--config", "configs/la_uamt.py", "--config.model.name=nope"], ["model.name='nope'"]),
    (["--config", "configs/la_uamt.py", "--config.data.name=nope"], ["data.name='nope'"]),
    (["--workdir", "x"], ["--config is required"]),
  ],
)
def test_bad_command_line_is_one_line(tmp_path, args, fragments):
  workdir = tmp_path / "W"
  if "--workdir" not in args:
    args = [*args, "--workdir", str(workdir)]
  _one_line_error(_main(*args, cwd=REPO), *fragments)
  assert not workdir.exists()


@pytest.mark.parametrize("how", ["flag", "env"])
def test_debug_shows_the_traceback(tmp_path, how):
  args = [
    "--config",
    "configs/la_uamt.py",
    "--workdir",
    str(tmp_path / "W"),
    "--config.data.root=/nonexistent",
  ]
  result = (
    _main(*args, "--debug") if how == "flag" else _main(*args, env_extra={"JAXSEG_DEBUG": "1"})
  )
  assert result.returncode != 0
  assert "Traceback" in result.stderr and "DataError" in result.stderr


def test_workdir_of_another_config_is_refused_untouched(tmp_path):
  io_utils.write_json(tmp_path / "config.json", dict(tiny_config().to_dict(), seed=7))
  before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
  line = _one_line_error(
    _main("--config", SMOKE, "--workdir", str(tmp_path)),
    "holds a run with another config",
    "differs in seed",
  )
  assert "new --workdir" in line
  assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_finished_run_asked_for_more_steps_is_refused(tmp_path):
  io_utils.write_json(tmp_path / "config.json", tiny_config(steps=2).to_dict())
  io_utils.write_json(tmp_path / "eval" / "val" / "summary.json", {"dice": 0.5})
  _one_line_error(
    _main("--config", SMOKE, "--workdir", str(tmp_path)),
    "finished at total_steps=2",
    "total_steps=4",
    "new --workdir",
  )
  assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "eval"]
  assert json.loads((tmp_path / "eval" / "val" / "summary.json").read_text()) == {"dice": 0.5}
