"""fsseg prepare BENCHMARK ...: build the on-disk layout a benchmark is read from, out of the official
downloads. Each registered benchmark with a converter (its module in data_modules/benchmarks/: COCO-20i's
masks from the instances JSON, PASCAL-5i's SegmentationClassAug from VOC + SBD, PATNet's Deepglobe
tiles) is one subcommand.

Every subcommand skips outputs that already exist (rerun it after an interruption: files are
published by rename, so a killed run never leaves a half-written one), shows a progress bar and ends
with a summary of what it wrote. Layouts and rules: README "Preparing the datasets",
docs/protocols/cdfss.md (Deepglobe).
"""

from __future__ import annotations

import argparse
from typing import List, Optional


def main(argv: Optional[List[str]] = None) -> None:
    from data_modules.benchmarks import BENCHMARKS

    p = argparse.ArgumentParser(prog="fsseg prepare", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    sub = p.add_subparsers(dest="dataset", required=True)
    for name in BENCHMARKS.names(where=lambda b: bool(b.prepare_help)):
        BENCHMARKS.get(name).add_prepare_arguments(sub.add_parser(name, help=BENCHMARKS.get(name).prepare_help))
    a = p.parse_args(argv)
    try:
        BENCHMARKS.get(a.dataset).prepare(a)
    except (FileNotFoundError, ValueError) as e:  # bad input: one line naming the file, no traceback
        raise SystemExit(f"fsseg prepare {a.dataset}: {e}") from e


if __name__ == "__main__":
    main()
