"""Pipeline stage: check an unpacked dataset against the registry with great-expectations.

    python components/validate.py DATASET [--params params.yaml] [--data-root data] [--out reports/validation/DATASET]

Reads the dataset where the fetch stage unpacked it, `<data root>/<data.source>/DATASET/`, and writes
`validation.json` and Data Docs (`data_docs/index.html`) under --out. A failed expectation is one
`error: ...` line on stderr and exit status 2, after the report is written (input that cannot be
read at all, such as a missing annotation file, is the same line with no report); the dataset
itself is never modified.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from talbench.data.fetch import dataset_dir
from talbench.data.registry import load_params, load_registry
from talbench.data.validation import validate_dataset
from talbench.errors import exit_status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Validate an unpacked dataset: annotations, feature files, splits.")
    parser.add_argument("dataset", help="a dataset of the registry, e.g. thumos14 or anet13_tsp")
    parser.add_argument("--params", type=Path, default=None, help="params.yaml (default: ./params.yaml)")
    parser.add_argument("--data-root", type=Path, default=None, help="data folder (default: data.root in params.yaml)")
    parser.add_argument("--out", type=Path, default=None, help="report folder (default: reports/validation/DATASET)")
    args = parser.parse_args(argv)
    return exit_status(lambda: _validate(args))


def _validate(args: argparse.Namespace) -> None:
    registry = load_registry(args.params)
    _, params = load_params(args.params)
    out_dir = args.out if args.out is not None else Path("reports/validation") / args.dataset
    report = validate_dataset(args.dataset, registry, dataset_dir(args.dataset, params, args.data_root), out_dir)
    counts = report["counts"]
    print(
        f"{args.dataset}: {len(report['expectations'])} expectations passed on {counts['videos']} videos, "
        f"{counts['feature_files']} feature files, {counts['instances']} instances; report {out_dir / 'validation.json'}, "
        f"Data Docs {report['data_docs']}"
    )

if __name__ == "__main__":
    sys.exit(main())
