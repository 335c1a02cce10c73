"""`python -m bench [NAME ...] [-- ARGS]`: run every benchmark module in bench/ (or the named ones).

Arguments after ``--`` go to each named module's ``main``; `python -m bench.NAME --help` shows a
module's own options.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys

import bench


def main(argv: list[str]) -> int:
    names, passthrough = argv, []
    if "--" in argv:
        cut = argv.index("--")
        names, passthrough = argv[:cut], argv[cut + 1 :]
    every = sorted(m.name for m in pkgutil.iter_modules(bench.__path__) if not m.name.startswith("_"))
    for name in names or every:
        if name not in every:
            print(f"bench: no benchmark named {name!r}; have {', '.join(every)}", file=sys.stderr)
            return 2
        module = importlib.import_module(f"bench.{name}")
        print(f"== bench.{name}", flush=True)
        module.main(passthrough)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
