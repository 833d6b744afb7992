"""``make bench``: every benchmark section, figures and ratios against a baseline measured
in the same run. Sections are modules of this package with a ``run(workdir)`` function."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import logging
import tempfile
from pathlib import Path

SECTIONS = ("shards", "buckets", "train", "rnnt_loss", "pipeline")


def main() -> None:
    parser = argparse.ArgumentParser(prog="make bench", description=__doc__)
    parser.add_argument("sections", nargs="*", default=list(SECTIONS), help="which sections to run")
    parser.add_argument("--workdir", type=Path, help="keep inputs and outputs here (default: a temp dir)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="asrflow-bench-") as tmp:
        workdir = args.workdir or Path(tmp)
        for section in args.sections:
            module_name = f"tests.bench.{section}"
            if importlib.util.find_spec(module_name) is None:
                print(f"== {section}: not present, skipped")
                continue
            print(f"== {section}", flush=True)
            importlib.import_module(module_name).run(workdir / section)


if __name__ == "__main__":
    main()
