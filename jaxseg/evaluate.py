"""Command line: evaluate a run's checkpoint on a split.

  python -m jaxseg.evaluate --workdir RUN [--split val|test] [--mode parity|clean]
                            [--checkpoint final|best_val] [--largest_cc] [--save_predictions]
  python -m jaxseg.evaluate --workdir JOB/run1 ...     # replica 1 of a runs job (config.runs > 1)

The modes and where the results go: jaxseg/evaluation.py.
"""

import argparse
import sys

from jaxseg import checkpoints as checkpoints_lib
from jaxseg import evaluation


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
    prog="python -m jaxseg.evaluate",
    description="Evaluate a run's checkpoint on a split (parity or clean mode).",
  )
  parser.add_argument("--workdir", required=True, help="run directory (holds config.json)")
  parser.add_argument("--split", default="val", choices=["val", "test"])
  parser.add_argument(
    "--mode",
    default=None,
    choices=list(evaluation.MODES),
    help="default: the run's config.eval.mode",
  )
  parser.add_argument(
    "--checkpoint",
    default="final",
    help="final (default) or best_val (chosen on the validation split in training)",
  )
  parser.add_argument("--overlap", type=float, default=None, help="clean mode: window overlap")
  parser.add_argument(
    "--sigma_scale", type=float, default=None, help="clean mode: gaussian sigma / window"
  )
  parser.add_argument(
    "--largest_cc",
    action="store_true",
    help="clean mode: keep each class's largest connected component",
  )
  parser.add_argument(
    "--save_predictions",
    action="store_true",
    help="save each case's label map as predictions/<case>.npz (launch/report.py)",
  )
  parser.add_argument(
    "--replica",
    type=int,
    default=None,
    help="a runs job (config.runs > 1): the replica K to evaluate (or pass --workdir JOB/run<K>)",
  )
  parser.add_argument("--max_cases", type=int, default=0, help="evaluate only the first N cases")
  parser.add_argument("--batch_size", type=int, default=None, help="windows per network call")
  args = parser.parse_args(argv)
  if args.largest_cc and args.mode == "parity":
    parser.error(
      "--largest_cc is a clean-mode option; parity mode applies the method's own rule "
      "(the run's config eval.largest_cc)"
    )
  try:
    checkpoints_lib.resolve_choice(args.checkpoint)
  except checkpoints_lib.CheckpointError as e:
    parser.error(str(e))
  try:
    evaluation.evaluate_workdir(
      args.workdir,
      split=args.split,
      mode=args.mode,
      checkpoint=args.checkpoint,
      overlap=args.overlap,
      sigma_scale=args.sigma_scale,
      largest_cc=args.largest_cc,
      save_predictions=args.save_predictions,
      max_cases=args.max_cases,
      batch_size=args.batch_size,
      replica=args.replica,
    )
  except (FileNotFoundError, ValueError) as e:  # CheckpointError and DataError are ValueErrors
    print(f"{parser.prog}: error: {e}", file=sys.stderr, flush=True)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
