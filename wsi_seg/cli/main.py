"""Entry point of ``wsi-seg``: builds the sub-commands and turns errors into one line.

Commands of the engine live in this package. Other packages of the distribution
(training, the napari plugin) add theirs through the ``wsi_seg.commands`` entry-point
group: each entry point is a ``register(subparsers)`` function.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from importlib.metadata import entry_points

from wsi_seg import __version__
from wsi_seg.cli import (
    demo_cmd,
    export_cmd,
    info_cmd,
    report_cmd,
    review_cmd,
    segment_cmd,
    summarize_cmd,
)
from wsi_seg.errors import WsiSegError
from wsi_seg.inference.allocator import pin_malloc_thresholds

log = logging.getLogger("wsi_seg")
EXIT_ERROR = 2
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE: what `cat` gives when its reader (e.g. `head`) goes away


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wsi-seg",
        description="Weakly supervised (PSCL) segmentation of histopathology whole-slide images.",
    )
    parser.add_argument("--version", action="version", version=f"wsi-seg {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv: debug)")
    parser.add_argument("--traceback", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in (segment_cmd, info_cmd, demo_cmd, export_cmd, report_cmd, review_cmd, summarize_cmd):
        module.register(sub)
    for ep in sorted(entry_points(group="wsi_seg.commands"), key=lambda e: e.name):
        ep.load()(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the process exit code."""
    return run(build_parser().parse_args(argv))


def run(args: argparse.Namespace) -> int:
    """Run a parsed command (``args.func``) with logging set up and errors as one line."""
    level = logging.WARNING - 10 * args.verbose
    logging.basicConfig(level=max(level, logging.DEBUG), format="%(levelname)s %(name)s: %(message)s")
    show_tb = args.traceback or os.environ.get("WSI_SEG_TRACEBACK") == "1"
    pin_malloc_thresholds()  # this process is ours: keep freed memory for reuse (wsi_seg.inference.allocator)
    try:
        code = int(args.func(args) or 0)
        sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
        return code
    except BrokenPipeError:
        # the reader of our output stopped (`wsi-seg info … | head -1`): not an error to
        # report; stdout goes to /dev/null so that Python's exit flush stays quiet too
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except WsiSegError as exc:
        if show_tb:
            raise
        print(f"wsi-seg: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("wsi-seg: interrupted; rerun the same command to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (OSError, MemoryError) as exc:
        if show_tb:
            raise
        print(f"wsi-seg: error: {exc}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
