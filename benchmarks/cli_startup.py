"""Start-up time of ``wsi-seg --help`` and ``wsi-seg CMD --help``, source trees side by side.

    python benchmarks/cli_startup.py --tree before=/path/to/old/checkout --tree after=. [--repeats 5]

Each tree is put first on PYTHONPATH and its help commands run interleaved with the other
trees' (so a busy machine slows all of them alike). Printed: the median CPU time
(user + sys of the child process: on an idle machine its wall time, and much less noisy
than wall time on a shared one), the median wall time, and the CPU ratio to the first
tree. Compile the trees first (``python -m compileall``) so no run pays for
bytecode. Needs ``wsi-seg`` installed (its entry points name the commands).
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time

COMMANDS = ((), ("segment",), ("train",), ("view",), ("export",))


def timed(argv: list[str], env: dict[str, str] | None = None) -> tuple[float, float]:
    """(CPU seconds, wall seconds) of one child process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), wall


def run_once(tree: str, command: tuple[str, ...]) -> tuple[float, float]:
    env = {**os.environ, "PYTHONPATH": tree}
    code = "import sys; from wsi_seg.cli.main import main; sys.argv[0] = 'wsi-seg'; sys.exit(main())"
    return timed([sys.executable, "-c", code, *command, "--help"], env)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tree", action="append", required=True, metavar="NAME=PATH", help="a source tree to time")
    ap.add_argument("--repeats", type=int, default=5, help="runs per tree and command (default: %(default)s)")
    args = ap.parse_args()
    trees = [t.split("=", 1) for t in args.tree]
    print(f"{'command':<24}" + "".join(f"{name + ' cpu / wall':>24}" for name, _ in trees) + "   cpu ratio")
    for command in COMMANDS:
        runs: dict[str, list[tuple[float, float]]] = {name: [] for name, _ in trees}
        for _ in range(args.repeats):
            for name, path in trees:
                runs[name].append(run_once(os.path.abspath(path), command))
        cpu = [statistics.median(c for c, _ in runs[name]) for name, _ in trees]
        wall = [statistics.median(w for _, w in runs[name]) for name, _ in trees]
        label = " ".join(("wsi-seg", *command, "--help"))
        print(f"{label:<24}" + "".join(f"{c:>13.2f} / {w:5.2f} s" for c, w in zip(cpu, wall)) + "   " +
              " ".join(f"{c / cpu[0]:.2f}" for c in cpu[1:]))
    bare = [timed([sys.executable, "-c", "pass"]) for _ in range(args.repeats)]
    print(f"(python -c pass, for reference: {statistics.median(c for c, _ in bare):.2f} s CPU, "
          f"{statistics.median(w for _, w in bare):.2f} s wall)")


if __name__ == "__main__":
    main()
