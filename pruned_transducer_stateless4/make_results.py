#!/usr/bin/env python3
"""Gather what the recipe produced in an experiment directory into RESULTS.md and plots.

Usage (from the project root, after run.sh or any of its steps):

  ./pruned_transducer_stateless4/make_results.py --exp-dir exp/pruned_transducer_stateless4

  # as run.sh calls it: with the wall time of the whole command and its step log
  ./pruned_transducer_stateless4/make_results.py --exp-dir exp/pruned_transducer_stateless4 \\
      --total-minutes 83.5 --run-log exp/pruned_transducer_stateless4/log/run-sh.log

  # print the section of this run for the project's RESULTS.md (icefall's style)
  ./pruned_transducer_stateless4/make_results.py --exp-dir exp/pruned_transducer_stateless4 \\
      --results-section true --title "default configuration" --plots false

Reads only the records the scripts write next to their outputs (shared/run_record.py),
never file names or log lines; each input is optional, and a section whose inputs are
absent says "not run":

  EXP_DIR/**/record-*.json        one per decode.py, streaming_decode.py and
                                  sherpa_onnx_decode.py run and test set: arguments,
                                  settings, WER, recogs file, RTF, latency, agreement
  EXP_DIR/train-record.json       train.py: arguments, parameters, batches, audio and
                                  training seconds
  EXP_DIR/train-points.jsonl      train.py: training loss and throughput per progress
                                  line, validation loss and WER per validation
  --run-log                       run.sh's step lines, for the wall time of each step

A record that cannot be read is named in one line at the top of the report and skipped.

Writes EXP_DIR/RESULTS.md (also printed), EXP_DIR/results-section.md and
EXP_DIR/plots/{loss,valid_wer,wer_by_method}.png:

  1. WER (%) of every decoding setting on every test part, with the settings and the
     command that produced each row; greedy search's WER per speaker (on the generated
     corpus a speaker is a TTS voice), marked by whether training heard that speaker;
  2. agreement of real streaming (streaming_decode.py) with simulated streaming
     (decode.py --simulate-streaming true), greedy search, per part, and of sherpa-onnx
     with streaming_decode.py;
  3. RTF, token latency and final-result latency of real streaming; RTF of decode.py
     and sherpa-onnx;
  4. training: parameters, training time, batches, throughput, validation loss and WER
     over time;
  5. the wall time of run.sh (--total-minutes, --run-log).

results-section.md is the run's section for the root RESULTS.md: date, commit, the
exact commands (from the records' arguments), the WER table per decoding method and
test set, model selection, parameters, training time, throughput, streaming
agreement, RTF and the hardware.

The work is done by library modules: experiment_results.py gathers the records,
results_report.py and results_section.py write the two markdown files,
results_plots.py draws the plots and shared/run_sh_log.py reads run.sh's log.
"""

import argparse
import logging
import sys
from pathlib import Path

from pruned_transducer_stateless4.experiment_results import gather_experiment
from pruned_transducer_stateless4.results_plots import draw_plots
from pruned_transducer_stateless4.results_report import render_report
from pruned_transducer_stateless4.results_section import render_section
from shared.run_sh_log import read_run_log
from shared.utils import HelpFormatter, str2bool


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=HelpFormatter
    )
    parser.add_argument("--exp-dir", type=Path, default=Path("exp/pruned_transducer_stateless4"),
                        help="Experiment directory to summarise; RESULTS.md, "
                        "results-section.md and plots/ are written into it.")
    parser.add_argument("--total-minutes", type=float, default=None,
                        help="Wall time of the whole run.sh command in minutes, shown in the "
                        "wall-time section (run.sh passes it).")
    parser.add_argument("--run-log", type=Path, default=None,
                        help="File with run.sh's progress lines ('[run.sh HH:MM:SS, +Ns] STEP: "
                        "starting/finished'); the wall time of each step's last completed "
                        "run is taken from it.")
    parser.add_argument("--plots", type=str2bool, default=True,
                        help="Draw EXP_DIR/plots/*.png (matplotlib, Agg backend).")
    parser.add_argument("--max-valid-rows", type=int, default=20,
                        help="At most this many validation points in the table of validation "
                        "over time (first and last always included; the plots show all).")
    parser.add_argument("--results-section", type=str2bool, default=False,
                        help="Print the run's section for the project's RESULTS.md "
                        "(results-section.md) instead of the report.")
    parser.add_argument("--title", type=str, default=None,
                        help="What the run was, for the heading of the RESULTS.md section "
                        "(e.g. 'default configuration'); default: the experiment directory.")
    parser.add_argument("--quiet", type=str2bool, default=False,
                        help="Print nothing to stdout (the files are still written).")
    return parser


def make_report(args: argparse.Namespace) -> tuple[str, str]:
    """(RESULTS.md's text, the RESULTS.md section); draws the plots."""
    results = gather_experiment(args.exp_dir)

    step_seconds: dict[str, float] = {}
    if args.run_log is not None:
        if args.run_log.is_file():
            step_seconds = read_run_log(args.run_log)
        else:
            logging.warning(f"--run-log {args.run_log} does not exist")

    plots = draw_plots(results, args.exp_dir / "plots") if args.plots else None
    report = render_report(results, plots, args.max_valid_rows, args.total_minutes,
                           step_seconds, args.run_log)
    try:
        section = render_section(results, args.title or str(args.exp_dir), step_seconds,
                                 args.total_minutes)
    except Exception as error:  # the report is written all the same
        logging.exception("the RESULTS.md section failed")
        section = f"could not be made: {type(error).__name__}: {error}\n"
    return report, section


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s "
                        "[%(filename)s:%(lineno)d] %(message)s")
    args = get_parser().parse_args(argv)
    if not args.exp_dir.is_dir():
        # A mistyped --exp-dir; an existing but empty one gives a report of "not run"s.
        print(f"make_results.py: error: {args.exp_dir} is not a directory", file=sys.stderr)
        return 1
    report, section = make_report(args)
    output = args.exp_dir / "RESULTS.md"
    output.write_text(report)
    (args.exp_dir / "results-section.md").write_text(section)
    if not args.quiet:
        print(section if args.results_section else report)
    logging.info(f"wrote {output} and {args.exp_dir / 'results-section.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
