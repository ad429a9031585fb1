"""Pipeline stage: one benchmark report over every experiment, Markdown and self-contained HTML.

    python components/report.py [--params params.yaml] [--outputs outputs] [--validation reports/validation] [--out reports/benchmark]

Reads each experiment's outputs of the evaluate stage, its test split and the validation results;
writes OUT/benchmark.md with its PNG figures beside it and OUT/benchmark.html (figures inlined),
then attaches them and the headline metrics to the invocation's MLflow parent run (talbench.report).
"""

from __future__ import annotations

import sys
from pathlib import Path

from talbench.commandline import OUTPUTS_HELP, PARAMS_HELP, StageParser
from talbench.errors import exit_status


def arguments() -> StageParser:
    parser = StageParser("report", "Write the benchmark report over every experiment of params.yaml.",
                         writes="OUT/benchmark.md with its PNG figures and OUT/benchmark.html (figures inlined); "
                                "both and the headline metrics to the MLflow parent run.")
    parser.add_argument("--params", type=Path, default=None, help=PARAMS_HELP)
    parser.add_argument("--outputs", type=Path, default=Path("outputs"), help=OUTPUTS_HELP)
    parser.add_argument("--validation", type=Path, default=Path("reports/validation"), help="Folder of the validate stage's results.")
    parser.add_argument("--out", type=Path, default=Path("reports/benchmark"), help="Report folder.")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = arguments().parse_args(argv)
    return exit_status(lambda: report(args.params, args.outputs, args.validation, args.out))


def report(params: Path | None, outputs: Path, validation: Path, out: Path) -> None:
    from talbench.report import write_report
    from talbench.tracking import log_report

    written = write_report(params, outputs, validation, out)
    parent = log_report(params, out, written.summary)
    print(f"report: {written.html} and {written.markdown.name} ({len(written.experiments)} experiments); "
          f"MLflow parent run {parent or 'not tracked'}")


if __name__ == "__main__":
    sys.exit(main())
