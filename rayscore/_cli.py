"""The ``rayscore`` command: ``rayscore run CONFIG``, ``rayscore validate CONFIG``, ``rayscore report OUTPUT``.

Exit codes: 0 done; 2 bad input (config, model, data, output location), with
one line on stderr naming the cause; 1 a failure while running; 130 Ctrl-C or
SIGTERM (after stopping what was started).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, TextIO

from . import __version__
from ._errors import RayscoreError
from ._logs import divert_for_good

if TYPE_CHECKING:
    from ._validate import Validation

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rayscore",
        description="Distributed batch prediction with Keras models over Spark data, on Ray actors.",
    )
    parser.add_argument("--version", action="version", version=f"rayscore {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = sub.add_parser(
        "run",
        help="run a scoring job described by a YAML config",
        description="Score the config's input with its model and write the predictions.",
    )
    run.add_argument("config", help="path to the job's YAML config (see configs/example.yaml)")
    run.add_argument("--json", action="store_true", help="print the run report as JSON on stdout")
    run.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        help="no progress: print only the final line (progress goes to stderr: a live display on a terminal, "
        "else a plain line when something changes)",
    )
    run.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="show Ray's, Spark's and TensorFlow's own logs on the terminal (by default they go to a log file)",
    )
    check = sub.add_parser(
        "validate",
        help="check a job (config, model, input, output) without scoring it",
        description="Check the config, the model, the input's columns and first rows, the "
        "output location, and predict a few rows in this process; list every "
        "problem. Starts no predictor actor and writes nothing.",
    )
    check.add_argument("config", help="path to the job's YAML config (see configs/example.yaml)")
    check.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="show Ray's, Spark's and TensorFlow's own logs on the terminal (by default they go to a log file)",
    )
    report = sub.add_parser(
        "report",
        help="show a finished job's run report",
        description="Print the figures of the run report that a finished job committed with its output, and "
        "open its page (_rayscore_report.html) in a browser when there is one.",
    )
    report.add_argument("output", help="the job's output.path (a local path)")
    report.add_argument("--no-browser", action="store_true", help="print only; do not open the page")
    return parser


def _terminate(signum: int, frame: FrameType | None) -> None:
    # Turn SIGTERM into the same unwinding as Ctrl-C, so sessions stop cleanly.
    raise KeyboardInterrupt(f"signal {signum}")


def _warnings_to(err: TextIO) -> None:
    """rayscore's own warnings (a table not mapped, a report page not written) to the user's stderr, not the log."""
    logger = logging.getLogger("rayscore")
    for old in [h for h in logger.handlers if getattr(h, "rayscore_cli", False)]:  # main() run again in-process
        logger.removeHandler(old)
    handler = logging.StreamHandler(err)
    handler.setLevel(logging.WARNING)
    handler.setFormatter(logging.Formatter("rayscore: %(message)s"))
    handler.rayscore_cli = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    logger.propagate = False


def _print_validation(validation: Validation, out: TextIO, err: TextIO) -> int:
    """``rayscore validate``: each passed check on stdout (exit 0), or each problem on stderr (exit 2)."""
    if validation.ok:
        for check in validation.checks:
            print(f"rayscore: ok: {check}", file=out)
        return 0
    for problem in validation.problems:
        print(f"rayscore: error: {problem}", file=err)
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "report":
        return _report(args.output, open_page=not args.no_browser)
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGINT, _terminate)
    from ._pipeline import run  # noqa: PLC0415 - keep --help fast

    if args.verbose:
        out, err, log = sys.stdout, sys.stderr, None
    else:
        out, err, log = divert_for_good()
    details = f" (logs: {log})" if log else ""
    _warnings_to(err)
    try:
        if args.command == "validate":
            from ._validate import validate  # noqa: PLC0415

            return _print_validation(validate(args.config), out, err)
        from ._progress import sinks_for  # noqa: PLC0415

        shown = [] if args.quiet else sinks_for(True, err)
        try:
            result = run(args.config, verbose=args.verbose, progress=shown[0] if shown else False)
        finally:
            for sink in shown:  # a run that failed before its first look never drew it; closing is safe twice
                sink.close()
    except RayscoreError as exc:
        named = exc.user_error or "(logs: " in str(exc)
        print(f"rayscore: error: {exc}" + ("" if named else details), file=err)
        return 2 if exc.user_error else 1
    except KeyboardInterrupt:
        print("rayscore: interrupted; stopped the actors, Spark and Ray it had started", file=err)
        return 130
    except Exception as exc:  # noqa: BLE001 - a bug of ours: say so in one line, keep the trace in the log
        import traceback  # noqa: PLC0415

        traceback.print_exc()
        print(f"rayscore: internal error: {type(exc).__name__}: {exc}{details}", file=err)
        return 1
    if args.json:
        print(result.to_json(), file=out)
    else:
        s = result.seconds
        print(
            f"rayscore: scored {result.rows_in} rows -> {result.rows_out} rows in {result.output} "
            f"with {result.model_loads} actor(s); seconds: "
            + ", ".join(f"{k} {s.get(k, 0.0):.1f}" for k in ("startup", "read_convert", "load", "predict", "write"))
            + f"; first prediction at {s.get('first_prediction', 0.0):.1f}, done at {s.get('total', 0.0):.1f}",
            file=out,
        )
    return 0


def _report(output: str, open_page: bool) -> int:
    """``rayscore report OUTPUT``: the committed report's figures on stdout; its page opened where a browser is."""
    from ._html import HTML_NAME, summary_rows  # noqa: PLC0415
    from ._sink import REPORT_NAME  # noqa: PLC0415
    from ._storage import local_dir  # noqa: PLC0415

    folder = local_dir(output)
    if folder is None:
        print(f"rayscore: error: output {output}: rayscore report reads local paths only", file=sys.stderr)
        return 2
    path = Path(folder)
    try:
        report = json.loads((path / REPORT_NAME).read_text())
    except FileNotFoundError:
        print(f"rayscore: error: {path} holds no {REPORT_NAME} (not a finished rayscore job's output)", file=sys.stderr)
        return 2
    except (OSError, ValueError) as exc:
        print(f"rayscore: error: {path / REPORT_NAME}: {exc}", file=sys.stderr)
        return 2
    width = max(len(k) for k, _ in summary_rows(report))
    for label, value in summary_rows(report):
        print(f"{label:<{width}}  {value}")
    page = path / HTML_NAME
    if page.exists():
        print(f"{'page':<{width}}  {page.resolve().as_uri()}")
        graphical = (
            sys.platform in ("darwin", "win32") or os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
        )
        if open_page and graphical and sys.stdout.isatty():  # never a text browser taking over the terminal
            import webbrowser  # noqa: PLC0415

            webbrowser.open(page.resolve().as_uri())
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
