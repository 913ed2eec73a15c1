"""notebooks/colab_tpu.ipynb end to end on CPU: 8 simulated devices, the smoke run of
configs/la_uamt.py, evaluation, report figure; the parameters cell is rewritten (no install)."""

import importlib.util
import json
import pathlib

import pytest

from tests.conftest import require_import
from tests.conftest import xla_flags

nbformat = require_import("nbformat")
nbclient = require_import("nbclient")

REPO = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "colab_tpu.ipynb"


def _execute(tmp_path, monkeypatch, **params):
  """Runs the notebook with the parameters cell replaced by `params` (Python literals); returns the
  executed notebook."""
  nb = nbformat.read(NOTEBOOK, as_version=4)
  tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
  assert len(tagged) == 1, "the notebook needs exactly one cell tagged 'parameters'"
  names = {
    l.partition("=")[0].strip()
    for l in tagged[0].source.splitlines()
    if "=" in l and not l.startswith("#")
  }
  assert set(params) == names, f"test parameters {sorted(params)} != notebook's {sorted(names)}"
  tagged[0].source = "\n".join(f"{k} = {v!r}" for k, v in params.items())
  # The kernel and its subprocesses inherit these: 8 CPU devices for every jax process.
  monkeypatch.setenv("XLA_FLAGS", xla_flags(8))
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  monkeypatch.setenv("MPLBACKEND", "Agg")
  client = nbclient.NotebookClient(
    nb, timeout=1500, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
  )
  client.execute()
  return nb


def _params(tmp_path, **overrides):
  params = dict(
    REPO_URL="",
    REPO_DIR=str(REPO),
    INSTALL=False,
    DATA_ROOT="",
    FULL=False,
    WORKDIR=str(tmp_path / "run"),
    EXTRA_FLAGS=["--config.total_steps=2"],
    # Exercises the guard where the extension is absent; never starts a server.
    TENSORBOARD=importlib.util.find_spec("tensorboard") is None,
  )
  params.update(overrides)
  return params


def _text(nb) -> str:
  return "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)


@pytest.mark.slow
def test_notebook_runs_end_to_end_on_8_cpu_devices(tmp_path, monkeypatch):
  params = _params(tmp_path)
  nb = _execute(tmp_path, monkeypatch, **params)
  text = _text(nb)
  assert "8 x cpu (cpu)" in text
  # The recipe's batch of 4 on 8 devices: 4 on the "data" axis, the rest on "space".
  assert "batch 4 on 8 cpu device(s)" in text and "data 4" in text

  run = pathlib.Path(params["WORKDIR"])
  config = json.loads((run / "config.json").read_text())
  assert (config["method"], config["batch_size"], config["labeled_batch_size"]) == ("uamt", 4, 2)
  assert config["total_steps"] == 2 and config["data"]["name"] == "synthetic"
  steps = [json.loads(l)["step"] for l in (run / "metrics.jsonl").read_text().splitlines()]
  assert steps == [1, 2]
  for name, mode in (("eval/val", "parity"), ("eval/val/clean", "clean")):
    summary = json.loads((run / name / "summary.json").read_text())
    assert summary["mode"] == mode and summary["n_cases"] == 2
    assert 0.0 <= summary["dice"] <= 1.0
  figures = sorted((run / "report" / "figures").glob("*.png"))
  assert figures and all(f.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for f in figures)
  images = [
    o
    for c in nb.cells
    if c.cell_type == "code"
    for o in c.outputs
    if "image/png" in o.get("data", {})
  ]
  assert len(images) == len(figures) + 1  # the report figures and the loss curves
  assert (run / "report" / "losses.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  markdown = [
    o["data"]["text/markdown"]
    for c in nb.cells
    if c.cell_type == "code"
    for o in c.outputs
    if "text/markdown" in o.get("data", {})
  ]
  assert len(markdown) == 1 and markdown[0].count("\n| eval/val") == 2
  if params["TENSORBOARD"]:
    assert "TensorBoard inline is off or not installed here" in text


def test_notebook_names_a_missing_data_root(tmp_path, monkeypatch):
  missing = tmp_path / "no_such_LA"
  with pytest.raises(
    nbclient.exceptions.CellExecutionError, match=f"DATA_ROOT={missing}: no train.list there"
  ):
    _execute(tmp_path, monkeypatch, **_params(tmp_path, DATA_ROOT=str(missing)))
