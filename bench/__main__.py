"""`python -m bench [--runs N] [NAME ...] [-- ARGS]`: every benchmark module in bench/ (or the named ones).

Arguments after ``--`` go to each named module's ``main``; `python -m bench.NAME --help` shows a
module's own options. ``--runs N`` (default 5) goes to the headline modules, those that declare
``RUNS = True`` (bench.e2e, bench.host): each measures its baseline and its run N times and prints the
median of the N runs with the same-run baseline beside it. The other modules run once.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
import time

import bench

DEFAULT_RUNS = 5


def main(argv: list[str]) -> int:
    names, passthrough = argv, []
    if "--" in argv:
        cut = argv.index("--")
        names, passthrough = argv[:cut], argv[cut + 1 :]
    runs = DEFAULT_RUNS
    if names[:1] == ["--runs"] or (names and names[0].startswith("--runs=")):
        value = names[0].split("=", 1)[1] if "=" in names[0] else (names[1] if len(names) > 1 else "")
        if not value.isdigit() or int(value) < 1:
            print("bench: --runs needs a whole number of runs, at least 1", file=sys.stderr)
            return 2
        runs = int(value)
        names = names[1:] if "=" in names[0] else names[2:]
    every = sorted(m.name for m in pkgutil.iter_modules(bench.__path__) if not m.name.startswith("_"))
    for name in names or every:
        if name not in every:
            print(f"bench: no benchmark named {name!r}; have {', '.join(every)}", file=sys.stderr)
            return 2
        module = importlib.import_module(f"bench.{name}")
        args = list(passthrough)
        # the module's own --runs, when given after --, wins
        if getattr(module, "RUNS", False) and not any(a == "--runs" or a.startswith("--runs=") for a in args):
            args += ["--runs", str(runs)]
        print(f"== bench.{name}" + (f" {' '.join(args)}" if args else ""), flush=True)
        t = time.perf_counter()
        module.main(args)
        print(f"== bench.{name}: {time.perf_counter() - t:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
