"""``python -m fsmis.tracking store-spool [SPOOL] [--uri URI]``: store the runs that wait in a spool.

The workflow stores its jobs' runs when it ends. Runs it could not store (the MLflow
server was down) wait in ``results/mlflow/spool/`` and the next invocation that runs a
job stores them; this command stores them now, into the store each was recorded for
(``--uri``: into that store instead). It prints how many were stored and how many
still wait; exit status 0 when none waits, 1 when some still wait, 2 for bad usage.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

DEFAULT_SPOOL = "results/mlflow/spool"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fsmis.tracking", description=__doc__.split("\n\n")[1])
    commands = parser.add_subparsers(dest="command", required=True)
    flush = commands.add_parser("store-spool", help="store the runs recorded in a spool folder")
    flush.add_argument("spool", nargs="?", default=DEFAULT_SPOOL,
                       help=f"the spool folder (default: {DEFAULT_SPOOL}, the workflow's, from its directory)")
    flush.add_argument("--uri", help="store every run in this tracking URI instead of the one it was recorded for")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")

    from fsmis.tracking import spool, store

    folder = Path(args.spool)
    if not folder.is_dir():
        print(f"python -m fsmis.tracking store-spool: spool folder {folder.absolute()} does not exist "
              "(the workflow's is results/mlflow/spool in its working directory)", file=sys.stderr)
        return 2
    if not store.enabled():
        print("python -m fsmis.tracking store-spool: FSMIS_TRACKING is off; nothing stored", file=sys.stderr)
        return 2
    if args.uri is not None:
        try:
            store.resolve(args.uri)
        except ValueError as err:
            print(f"python -m fsmis.tracking store-spool: --uri: {err}", file=sys.stderr)
            return 2
    stored = spool.flush_spool(folder, uri=args.uri)
    left = spool.waiting(folder)
    print(f"stored {stored} record(s) from {folder.absolute()}; {left} still wait")
    return 1 if left else 0


if __name__ == "__main__":
    sys.exit(main())
