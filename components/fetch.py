"""Pipeline stage: make one dataset ready under `<data root>/<data.source>/<DATASET>/`.

    python components/fetch.py DATASET [--params params.yaml] [--data-root data]

Bad input (unknown dataset, failed mirrors, md5 mismatch; an archive that is unsafe, corrupt, too
large to unpack, or lacks the dataset's root folder or annotation files) is one `error: ...` line
on stderr and exit status 2; earlier unpacked data is left as it was.
"""

from __future__ import annotations

import sys
from pathlib import Path

from talbench.commandline import DATA_ROOT_HELP, PARAMS_HELP, StageParser
from talbench.data.fetch import prepare_dataset
from talbench.data.registry import load_params, load_registry
from talbench.errors import exit_status


def arguments() -> StageParser:
    parser = StageParser("fetch", "Fetch or build a dataset's archive, verify its md5 and unpack it.",
                         writes="DATA_ROOT/<data.source>/DATASET/, the dataset laid out as its real release.")
    parser.add_argument("dataset", help="A dataset of the registry, e.g. thumos14 or anet13_tsp.")
    parser.add_argument("--params", type=Path, default=None, help=PARAMS_HELP)
    parser.add_argument("--data-root", type=Path, default=None, help=DATA_ROOT_HELP)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = arguments().parse_args(argv)
    return exit_status(lambda: prepare_dataset(args.dataset, load_registry(args.params), load_params(args.params)[1], args.data_root))


if __name__ == "__main__":
    sys.exit(main())
