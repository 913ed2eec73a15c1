#!/usr/bin/env bash
# The accelerator check: on a fresh machine with one GPU or TPU, in under 8 minutes,
#   1. installs what the accelerator image lacks (grain, ml_collections, clu, nibabel, tensorboardX
#      and their pure dependencies) from the wheels in --wheels (no network);
#   2. runs the benchmark suite (python -m jaxseg.bench --suite) at recipe size in float32 and
#      bfloat16, UA-MT first, within --suite_budget_s (configs not started in time are rows
#      marked skipped);
#   3. times the UA-MT step at recipe size with rematerialisation off and on
#      (python -m jaxseg.bench --compare_remat) within --remat_budget_s;
#   4. trains configs/la_uamt.py for --steps steps (1000) and evaluates it on the validation split:
#      on LA if --data_root (or $JAXSEG_DATA_DIR) holds it, through the reproduce command at full
#      scale (python -m jaxseg.reproduce --table la16 --scale full --methods uamt --seeds 1
#      --steps N, which also renders the run beside the published number), else on synthetic
#      phantoms at the recipe's patch size (python -m jaxseg.main); killed at the overall
#      --budget_s, resumable by running it again;
#   5. writes the docs/benchmarks.md section (bench/device_report.py) to OUT_DIR/benchmarks_rows.md
#      and appends it to docs/benchmarks.md (not with --dry_run).
#
#   launch/device_check.sh [--wheels DIR] [--out_dir DIR] [--data_root DIR] [--steps N]
#                          [--budget_s S] [--suite_budget_s S] [--remat_budget_s S] [--dry_run]
#
# --dry_run: the same stages on the CPU at tiny sizes (one smoke config in the suite and the remat
# comparison, a 2-step reproduce run on the synthetic phantoms) and without the time budgets
# (unless given), for tests/test_device_check.py.
# OUT_DIR defaults to $OUT/device_check when $OUT is set (the device machine's returned folder),
# else runs/device_check.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WHEELS="$REPO/.whl"
OUT_DIR="${OUT:+$OUT/device_check}"
OUT_DIR="${OUT_DIR:-$REPO/runs/device_check}"
DATA_ROOT="${JAXSEG_DATA_DIR:-}"
STEPS=1000
BUDGET_S=""
SUITE_BUDGET_S=""
REMAT_BUDGET_S=""
DRY_RUN=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --wheels) WHEELS="$2"; shift 2 ;;
    --out_dir) OUT_DIR="$2"; shift 2 ;;
    --data_root) DATA_ROOT="$2"; shift 2 ;;
    --steps) STEPS="$2"; shift 2 ;;
    --budget_s) BUDGET_S="$2"; shift 2 ;;
    --suite_budget_s) SUITE_BUDGET_S="$2"; shift 2 ;;
    --remat_budget_s) REMAT_BUDGET_S="$2"; shift 2 ;;
    --dry_run) DRY_RUN=1; shift ;;
    *) echo "device_check.sh: unknown argument $1 (see the header of $0)" >&2; exit 2 ;;
  esac
done
COMMAND="launch/device_check.sh $*"
# The accelerator budget: 8 minutes in all. A dry run on a (shared) CPU only has to finish.
if [[ $DRY_RUN == 1 ]]; then
  BUDGET_S="${BUDGET_S:-3600}"; SUITE_BUDGET_S="${SUITE_BUDGET_S:-0}"
  REMAT_BUDGET_S="${REMAT_BUDGET_S:-1200}"
else
  BUDGET_S="${BUDGET_S:-450}"; SUITE_BUDGET_S="${SUITE_BUDGET_S:-150}"
  REMAT_BUDGET_S="${REMAT_BUDGET_S:-60}"
fi
START=$SECONDS
PY="${PYTHON:-python}"
mkdir -p "$OUT_DIR"
cd "$REPO"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
log() { echo "[device_check $((SECONDS - START)) s] $*"; }

# 1. Install what is missing, from the given wheels only.
missing=$("$PY" - <<'EOF'
import importlib.util
need = {"grain": "grain", "ml_collections": "ml_collections", "clu": "clu", "nibabel": "nibabel",
        "tensorboardX": "tensorboardX"}
print(" ".join(pkg for mod, pkg in need.items() if importlib.util.find_spec(mod) is None))
EOF
)
if [[ -n "$missing" ]]; then
  if [[ ! -d "$WHEELS" ]]; then
    echo "device_check.sh: $missing not installed and no wheel folder $WHEELS (pass --wheels DIR;" \
         "make one with: pip download --no-deps -d .whl grain array_record cloudpickle portpicker" \
         "ml_collections clu wrapt nibabel importlib_resources tensorboardX etils)" >&2
    exit 1
  fi
  log "installing $missing from $WHEELS"
  "$PY" -m pip install -q --no-index --find-links "$WHEELS" $missing
fi
"$PY" -c "import jax; print('devices:', jax.devices())" | tee "$OUT_DIR/devices.txt"

# 2. The suite.
if [[ $DRY_RUN == 1 ]]; then
  SUITE_ARGS=(--suite_configs "configs/la_uamt.py:smoke=1,labeled=4,seed=0" --size recipe --steps 1)
else
  SUITE_ARGS=(--suite_configs configs/la_uamt.py)
  for f in configs/*.py; do
    [[ "$f" == configs/la_uamt.py ]] || SUITE_ARGS+=(--suite_configs "$f")
  done
  SUITE_ARGS+=(--size recipe --steps 5)
fi
log "suite"
"$PY" -m jaxseg.bench --suite "${SUITE_ARGS[@]}" --compute_dtype float32,bfloat16 \
    --suite_budget_s "$SUITE_BUDGET_S" --out_dir "$OUT_DIR/suite" 2>&1 | tee "$OUT_DIR/suite.log"

# 3. Rematerialisation off and on, the UA-MT step at recipe size. On the CPU, XLA's CSE would
# merge the recomputed forward back into the original (jaxseg/bench.py --compare_remat).
if [[ $DRY_RUN == 1 ]]; then
  REMAT_ARGS=(--config "configs/la_uamt.py:smoke=1,labeled=4,seed=0" --size recipe --steps 1)
  REMAT_XLA_FLAGS="${XLA_FLAGS:+$XLA_FLAGS }--xla_disable_hlo_passes=cse_barrier_expander"
else
  REMAT_ARGS=(--config configs/la_uamt.py --size recipe --steps 3)
  REMAT_XLA_FLAGS="${XLA_FLAGS:-}"
fi
log "rematerialisation (at most ${REMAT_BUDGET_S} s)"
set +e
XLA_FLAGS="$REMAT_XLA_FLAGS" timeout --signal=TERM --kill-after=10 "$REMAT_BUDGET_S" \
    "$PY" -m jaxseg.bench "${REMAT_ARGS[@]}" --compare_remat --out "$OUT_DIR/remat.json" \
    > "$OUT_DIR/remat.log" 2>&1
remat_rc=$?
set -e
(( remat_rc == 0 )) || { log "rematerialisation stage: exit $remat_rc (see remat.log)"; rm -f "$OUT_DIR/remat.json"; }

# 4. The UA-MT run and its evaluation: through the reproduce command where its data is at hand (the
# run lands in REPRO_DIR/la16/<scale>/uamt/seed1337 with the table beside the published number).
REPRO_DIR="$OUT_DIR/reproduce"
RESULTS_MD=""
if [[ $DRY_RUN == 1 ]]; then
  STEPS=2
  RUN=("$PY" -m jaxseg.reproduce --table la16 --methods uamt --seeds 1 --data synthetic
       --steps "$STEPS" --root "$REPRO_DIR")
  TRAIN_DIR="$REPRO_DIR/la16/full/uamt/seed1337"
  RESULTS_MD="$REPRO_DIR/la16/full/results.md"
elif [[ -n "$DATA_ROOT" ]]; then
  RUN=("$PY" -m jaxseg.reproduce --table la16 --scale full --methods uamt --seeds 1
       --steps "$STEPS" --root "$REPRO_DIR" --data_root "$DATA_ROOT")
  TRAIN_DIR="$REPRO_DIR/la16/full/uamt/seed1337"
  RESULTS_MD="$REPRO_DIR/la16/full/results.md"
else
  # No LA data on this machine: the smoke stand-in (synthetic phantoms) at the recipe's network,
  # patch and evaluation strides; volumes a little larger than the patch.
  TRAIN_DIR="$OUT_DIR/train"
  RUN=("$PY" -m jaxseg.main --config "configs/la_uamt.py:smoke=1" --config.total_steps="$STEPS"
       --config.model.kwargs.n_filters=16 "--config.data.patch_size=(112,112,80)"
       "--config.data.synthetic.shape=(128,128,96)" --config.eval.stride_xy=18
       --config.eval.stride_z=4 --config.checkpoint_every_steps=500
       --config.log_every_steps=50 --workdir "$TRAIN_DIR")
fi
left=$((BUDGET_S - (SECONDS - START) - 20))
(( left > 30 )) || left=30
log "training ${STEPS} steps (at most ${left} s)"
t0=$SECONDS
set +e
timeout --signal=TERM --kill-after=20 "$left" "${RUN[@]}" 2>&1 | tee "$OUT_DIR/train.log"
rc=${PIPESTATUS[0]}
set -e
wall=$((SECONDS - t0))

# 5. The benchmarks.md section.
APPEND=()
[[ $DRY_RUN == 1 ]] || APPEND=(--append "$REPO/docs/benchmarks.md")
"$PY" bench/device_report.py --suite "$OUT_DIR/suite/suite.json" --train_workdir "$TRAIN_DIR" \
    --train_wall_s "$wall" --train_rc "$rc" --total_steps "$STEPS" --command "$COMMAND" \
    --train_command "${RUN[*]}" --out "$OUT_DIR/benchmarks_rows.md" \
    --remat "$OUT_DIR/remat.json" ${RESULTS_MD:+--results_md "$RESULTS_MD"} "${APPEND[@]}"
log "done in $((SECONDS - START)) s; rows in $OUT_DIR/benchmarks_rows.md"
