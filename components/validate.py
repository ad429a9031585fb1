"""Pipeline stage: check an unpacked dataset against the registry with great-expectations.

    python components/validate.py DATASET [--params params.yaml] [--data-root data] [--out reports/validation/DATASET]

Reads the dataset where the fetch stage unpacked it, `<data root>/<data.source>/DATASET/`, and writes
`validation.json` and Data Docs (`data_docs/index.html`) under --out: one run, named DATASET@<data
version> (the first characters of the fetched archive's md5), whose pages open offline from any copy
of the folder (their CSS/JS are copied in from web/node_modules, which `npm ci --prefix web`
installs; $TALBENCH_WEB_ASSETS names another such folder). A failed expectation is one
`error: ...` line on stderr and exit status 2, after the report is written (input that cannot be
read at all, such as a missing annotation file, is the same line with no report); the dataset
itself is never modified.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from talbench.commandline import DATA_ROOT_HELP, PARAMS_HELP, StageParser
from talbench.data.fetch import dataset_dir
from talbench.data.registry import load_params, load_registry
from talbench.data.validation import validate_dataset
from talbench.errors import exit_status


def arguments() -> StageParser:
    parser = StageParser("validate", "Validate an unpacked dataset with great-expectations: annotations, feature files, splits.",
                         writes="OUT/validation.json and the Data Docs OUT/data_docs/index.html.")
    parser.add_argument("dataset", help="A dataset of the registry, e.g. thumos14 or anet13_tsp.")
    parser.add_argument("--params", type=Path, default=None, help=PARAMS_HELP)
    parser.add_argument("--data-root", type=Path, default=None, help=DATA_ROOT_HELP)
    parser.add_argument("--out", type=Path, default=None, help="Report folder (default: reports/validation/DATASET).")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = arguments().parse_args(argv)
    return exit_status(lambda: _validate(args))


def _validate(args: argparse.Namespace) -> None:
    registry = load_registry(args.params)
    _, params = load_params(args.params)
    out_dir = args.out if args.out is not None else Path("reports/validation") / args.dataset
    report = validate_dataset(args.dataset, registry, dataset_dir(args.dataset, params, args.data_root), out_dir)
    counts = report["counts"]
    print(
        f"{args.dataset}: {len(report['expectations'])} expectations passed on {counts['videos']} videos, "
        f"{counts['feature_files']} feature files, {counts['instances']} instances (run {report['run_name']}); "
        f"report {out_dir / 'validation.json'}, Data Docs {report['data_docs']}"
    )

if __name__ == "__main__":
    sys.exit(main())
