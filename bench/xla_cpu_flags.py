"""XLA:CPU options, measured per network: eval forward and train step under each set of XLA_FLAGS.

  python bench/xla_cpu_flags.py --rounds 5 --out runs/xla_cpu_flags

One worker process per flag set and convolution lowering (`--lowerings xla,matmul`: each flag set
under each JAXSEG_CONV_LOWERING, jaxseg/models/layers.py; XLA reads XLA_FLAGS once, when its
backend starts). Every worker compiles every
case first; then the coordinator runs the cases round-robin, one call in one worker at a time, so
that all flag sets see the same machine load, and reports the median ms per (case, flag set) and
each output's largest deviation from the no-flag baseline relative to the baseline's scale.

Cases (small sizes, float32): the UA-MT VNet, MCF's ResVNet, DyCON's UNet3D (n_filters 8, batch 4,
32x32x32) and the SSL4MIS 2D UNet (channels 8..128, batch 8, 64x64), each as an eval forward and a
train step (train-mode forward, softmax cross-entropy, gradients, SGD update); and one 16-channel
3x3x3 convolution (batch 4, 32x32x24) in NDHWC and NCDHW layouts, forward and forward+backward.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import time

FLAG_SETS = {
  "baseline": "",
  "onednn_conv": "--xla_cpu_experimental_onednn_fusion_type="
  "LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION",
  "onednn_conv_dot": "--xla_cpu_experimental_onednn_fusion_type="
  "LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION,"
  "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT",
  "xnn_conv": "--xla_cpu_experimental_xnn_fusion_type=LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION",
  "ynn_conv_dot": "--xla_cpu_experimental_ynn_fusion_type="
  "LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION,LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT",
  "xnn_conv_dot": "--xla_cpu_experimental_xnn_fusion_type="
  "LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION,LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT",
  "ynn_no_reduce": "--xla_cpu_experimental_ynn_fusion_type=-LIBRARY_FUSION_TYPE_REDUCE",
  "onednn_custom_call": "--xla_cpu_experimental_onednn_custom_call=true",
  "xnnpack": "--xla_cpu_use_xnnpack=true",
  "one_thread": "--xla_cpu_multi_thread_eigen=false",
}


NETS = ("vnet", "resvnet", "unet3d_dycon", "unet2d", "conv16")


def _cases(nets: tuple[str, ...] = NETS):
  """{name: (jitted fn, args)} of the cases of `nets`; imports jax here, after XLA_FLAGS is set."""
  import jax
  import jax.numpy as jnp
  import numpy as np

  from jaxseg import models

  rng = np.random.default_rng(0)
  out = {}
  networks = {
    "vnet": ("vnet", dict(n_filters=8, has_dropout=True), (4, 32, 32, 32, 1)),
    "resvnet": ("resvnet", dict(n_filters=8, has_dropout=True), (4, 32, 32, 32, 1)),
    "unet3d_dycon": ("unet3d_dycon", dict(n_filters=8), (4, 32, 32, 32, 1)),
    "unet2d": ("unet2d", dict(n_classes=4, feature_chns=(8, 16, 32, 64, 128)), (8, 64, 64, 1)),
  }
  for name, (model_name, kwargs, shape) in networks.items():
    if name not in nets:
      continue
    model = models.get(model_name, **kwargs)
    x = jnp.asarray(rng.normal(size=shape), jnp.float32)
    variables = model.init({"params": jax.random.PRNGKey(0)}, x, train=False)
    params, stats = variables["params"], variables.get("batch_stats", {})

    def logits_of(y):
      return y[0] if isinstance(y, (tuple, list)) else y

    def forward(params, stats, x, model=model):
      return logits_of(model.apply({"params": params, "batch_stats": stats}, x, train=False))

    def train(params, stats, x, model=model):
      def loss_fn(p):
        y, new = model.apply(
          {"params": p, "batch_stats": stats},
          x,
          train=True,
          rngs={"dropout": jax.random.PRNGKey(1)},
          mutable=["batch_stats"],
        )
        y = logits_of(y)
        labels = (x[..., 0] > 0).astype(jnp.int32)
        logp = jax.nn.log_softmax(y.astype(jnp.float32), axis=-1)
        return -jnp.mean(jnp.take_along_axis(logp, labels[..., None], -1)), new

      (loss, _), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
      return loss, jax.tree.map(lambda p, g: p - 0.01 * g, params, grads)

    out[f"{name}/forward"] = (jax.jit(forward), (params, stats, x))
    out[f"{name}/train"] = (jax.jit(train), (params, stats, x))

  layouts = {
    "NDHWC": ((4, 32, 32, 24, 16), (3, 3, 3, 16, 16), ("NDHWC", "DHWIO", "NDHWC")),
    "NCDHW": ((4, 16, 32, 32, 24), (16, 16, 3, 3, 3), ("NCDHW", "OIDHW", "NCDHW")),
  }
  for layout, (x_shape, w_shape, dn) in layouts.items() if "conv16" in nets else ():
    x = jnp.asarray(rng.normal(size=x_shape), jnp.float32)
    w = jnp.asarray(rng.normal(size=w_shape), jnp.float32) * 0.05

    def conv(x, w, dn=dn):
      return jax.lax.conv_general_dilated(x, w, (1, 1, 1), [(1, 1)] * 3, dimension_numbers=dn)

    out[f"conv16_{layout}/forward"] = (jax.jit(conv), (x, w))
    out[f"conv16_{layout}/train"] = (
      jax.jit(jax.value_and_grad(lambda x, w, conv=conv: jnp.sum(conv(x, w) ** 2), argnums=(0, 1))),
      (x, w),
    )
  return out


def _checksum(tree) -> list[float]:
  """A few numbers per output leaf (sum, sum of squares), to compare flag sets' results."""
  import jax
  import numpy as np

  leaves = [np.asarray(l, np.float64) for l in jax.tree.leaves(tree)]
  return [float(v) for l in leaves for v in (l.sum(), np.square(l).sum())]


def worker(nets: tuple[str, ...]) -> None:
  """Compile every case of `nets`, print one 'ready' JSON line, then run the case named on each
  stdin line and print its seconds."""
  import jax

  cases = _cases(nets)
  compiled, info = {}, {}
  for name, (fn, args) in cases.items():
    t = time.perf_counter()
    compiled[name] = fn.lower(*args).compile()
    result = jax.block_until_ready(compiled[name](*args))
    info[name] = {"compile_s": time.perf_counter() - t, "checksum": _checksum(result)}
  print(json.dumps({"ready": info}), flush=True)
  for line in sys.stdin:
    name = line.strip()
    fn, args = compiled[name], cases[name][1]
    t = time.perf_counter()
    jax.block_until_ready(fn(*args))
    print(json.dumps({"s": time.perf_counter() - t}), flush=True)


def _deviation(got: list[float], want: list[float]) -> float:
  scale = max(abs(w) for w in want) or 1.0
  return max(abs(g - w) for g, w in zip(got, want)) / scale


def worker_sets(flag_sets: dict[str, str], lowerings: tuple[str, ...]) -> dict[str, tuple]:
  """{worker name: (XLA_FLAGS, JAXSEG_CONV_LOWERING)} of every flag set under every lowering; a
  lowering other than the first is named as a suffix ('baseline+matmul')."""
  return {
    name + ("" if i == 0 else f"+{lowering}"): (flags, lowering)
    for i, lowering in enumerate(lowerings)
    for name, flags in flag_sets.items()
  }


def coordinate(
  flag_sets: dict[str, str],
  rounds: int,
  out_dir: pathlib.Path,
  nets: tuple[str, ...] = NETS,
  lowerings: tuple[str, ...] = ("xla",),
) -> dict:
  workers = worker_sets(flag_sets, lowerings)
  procs = {}
  for name, (flags, lowering) in workers.items():
    env = dict(os.environ, XLA_FLAGS=flags, JAX_PLATFORMS="cpu", JAXSEG_CONV_LOWERING=lowering)
    procs[name] = subprocess.Popen(
      [sys.executable, __file__, "--worker", "--nets", ",".join(nets)],
      stdin=subprocess.PIPE,
      stdout=subprocess.PIPE,
      text=True,
      env=env,
    )
  ready = {}
  for name, proc in procs.items():
    line = proc.stdout.readline()
    if not line:
      raise RuntimeError(f"worker {name} ({workers[name]}) exited (rc {proc.wait()})")
    ready[name] = json.loads(line)["ready"]
  cases = list(ready["baseline"])
  times = {n: {c: [] for c in cases} for n in procs}
  for _ in range(rounds):
    for case in cases:
      for name, proc in procs.items():
        proc.stdin.write(case + "\n")
        proc.stdin.flush()
        times[name][case].append(json.loads(proc.stdout.readline())["s"])
  for proc in procs.values():
    proc.stdin.close()
    proc.wait()
  import numpy as np

  result = {
    "flag_sets": {name: flags for name, (flags, _) in workers.items()},
    "lowerings": {name: lowering for name, (_, lowering) in workers.items()},
    "rounds": rounds,
    "command": " ".join(sys.argv),
    "load_average": list(os.getloadavg()),
    "cases": {},
  }
  for case in cases:
    result["cases"][case] = {
      name: {
        "ms_median": 1e3 * float(np.median(times[name][case])),
        "compile_s": ready[name][case]["compile_s"],
        "deviation": _deviation(ready[name][case]["checksum"], ready["baseline"][case]["checksum"]),
      }
      for name in procs
    }
  out_dir.mkdir(parents=True, exist_ok=True)
  (out_dir / "xla_cpu_flags.json").write_text(json.dumps(result, indent=1))
  (out_dir / "xla_cpu_flags.md").write_text(markdown(result))
  return result


def markdown(result: dict) -> str:
  names = list(result["flag_sets"])
  lines = ["| case | " + " | ".join(names) + " | fastest |", "|---|" + "---|" * (len(names) + 1)]
  for case, by_flag in result["cases"].items():
    best = min(names, key=lambda n: by_flag[n]["ms_median"])
    cells = []
    for n in names:
      cell = f"{by_flag[n]['ms_median']:.0f}"
      if by_flag[n]["deviation"] > 1e-4:
        cell += f" (dev {by_flag[n]['deviation']:.0e})"
      cells.append(cell)
    lines.append(f"| {case} | " + " | ".join(cells) + f" | {best} |")
  lowerings = result.get("lowerings", {})
  legend = "\n".join(
    f"* `{n}`: `{f or '(none)'}`, convolutions: {lowerings.get(n, 'xla')}"
    for n, f in result["flag_sets"].items()
  )
  return (
    "Median ms per call, flag sets alternated round-robin "
    f"({result['rounds']} rounds; 1-min load average at the end "
    f"{result['load_average'][0]:.1f}); 'dev': largest output deviation from the baseline "
    "relative to its scale, shown above 1e-4.\n\n" + "\n".join(lines) + "\n\n" + legend + "\n"
  )


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
  p.add_argument("--rounds", type=int, default=5)
  p.add_argument("--sets", default=",".join(FLAG_SETS), help="comma list of FLAG_SETS names")
  p.add_argument("--nets", default=",".join(NETS), help="comma list of NETS")
  p.add_argument(
    "--lowerings",
    default="xla",
    help="comma list of JAXSEG_CONV_LOWERING values; every flag set runs under each (the first "
    "is the baseline's)",
  )
  p.add_argument("--out", type=pathlib.Path, default=pathlib.Path("runs/xla_cpu_flags"))
  a = p.parse_args()
  nets = tuple(a.nets.split(","))
  if set(nets) - set(NETS):
    raise SystemExit(f"--nets: unknown {sorted(set(nets) - set(NETS))}; known: {NETS}")
  if a.worker:
    worker(nets)
    return
  names = a.sets.split(",")
  unknown = sorted(set(names) - set(FLAG_SETS))
  if unknown or "baseline" not in names:
    raise SystemExit(f"--sets: unknown {unknown} or no 'baseline'; known: {sorted(FLAG_SETS)}")
  lowerings = tuple(a.lowerings.split(","))
  result = coordinate({n: FLAG_SETS[n] for n in names}, a.rounds, a.out, nets, lowerings)
  print(markdown(result))


if __name__ == "__main__":
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
  main()
