"""The ``rayscore`` command: ``rayscore run CONFIG``.

Exit codes: 0 done; 2 bad input (config, model, data, output location), with
one line on stderr naming the cause; 1 a failure while running; 130 Ctrl-C or
SIGTERM (after stopping what was started).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from collections.abc import Sequence
from types import FrameType

from . import __version__
from ._errors import RayscoreError

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rayscore",
        description="Distributed batch prediction with Keras models over Spark data, on Ray actors.",
    )
    parser.add_argument("--version", action="version", version=f"rayscore {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = sub.add_parser("run", help="run a scoring job described by a YAML config",
                         description="Score the config's input with its model and write the predictions.")
    run.add_argument("config", help="path to the job's YAML config (see configs/example.yaml)")
    run.add_argument("--json", action="store_true", help="print the run report as JSON on stdout")
    return parser


def _terminate(signum: int, frame: FrameType | None) -> None:
    # Turn SIGTERM into the same unwinding as Ctrl-C, so sessions stop cleanly.
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    from ._pipeline import run  # noqa: PLC0415 - keep --help fast

    try:
        result = run(args.config)
    except RayscoreError as exc:
        print(f"rayscore: error: {exc}", file=sys.stderr)
        return 2 if exc.user_error else 1
    except KeyboardInterrupt:
        print("rayscore: interrupted; stopped the actors, Spark and Ray it had started", file=sys.stderr)
        return 130
    if args.json:
        print(result.to_json())
    else:
        s = result.seconds
        print(
            f"rayscore: scored {result.rows_in} rows -> {result.rows_out} rows in {result.output} "
            f"with {result.model_loads} actor(s); seconds: "
            + ", ".join(f"{k} {s.get(k, 0.0):.1f}" for k in ("startup", "read_convert", "load", "predict", "write"))
        )
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
