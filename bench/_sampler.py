"""A wall-clock stack sampler for a whole process, every thread included (cProfile sees one thread).

    python bench/_sampler.py OUT.json -m ops host serve

runs the module like ``python -m`` would and, from a daemon thread, looks at every other thread's
stack every few milliseconds (``sys._current_frames``). At exit it writes, per thread, how many samples
had each function at the top of the stack ("self") and each payswitch function anywhere on it
("inclusive"), so bench/e2e can say where a service spends its time, waiting included (a sample in
``epoll.poll`` or ``Condition.wait`` is time spent waiting). No dependency, no change to the service.

Each sample is weighted by the time since the previous one: the sampler thread needs the GIL to look,
so it gets in often while the service waits in a system call (GIL released) and only every switch
interval (5 ms) while it runs Python code; unweighted counts would overstate system calls.
"""

from __future__ import annotations

import atexit
import json
import runpy
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from types import FrameType

ROOT = Path(__file__).resolve().parent.parent
OWN = tuple(str(ROOT / p) for p in ("host", "switch", "specs", "hsm_sim", "ops", "pos", "settlement"))
INTERVAL = 0.002


def _func(frame: FrameType) -> str:
    code = frame.f_code
    name = Path(code.co_filename)
    return f"{code.co_name} ({name.parent.name}/{name.name})"


class Sampler:
    def __init__(self) -> None:
        self.self_counts: dict[str, Counter[str]] = {}
        self.incl_counts: dict[str, Counter[str]] = {}
        self.samples: Counter[str] = Counter()  # per thread: sampled time, microseconds
        self.me = threading.get_ident()
        self._stop = False

    def run(self) -> None:
        names: dict[int, str] = {}
        last = time.perf_counter()
        while not self._stop:
            time.sleep(INTERVAL)
            now = time.perf_counter()
            weight = int((now - last) * 1e6)
            last = now
            frames = sys._current_frames()
            if len(names) != len(frames):
                names = {t.ident or 0: t.name for t in threading.enumerate()}
            for ident, frame in frames.items():
                if ident == self.me:
                    continue
                thread = names.get(ident, str(ident))
                self.samples[thread] += weight
                self.self_counts.setdefault(thread, Counter())[_func(frame)] += weight
                seen: set[str] = set()
                f: FrameType | None = frame
                while f is not None:
                    if f.f_code.co_filename.startswith(OWN):
                        key = _func(f)
                        if key not in seen:
                            seen.add(key)
                            self.incl_counts.setdefault(thread, Counter())[key] += weight
                    f = f.f_back

    def report(self, top: int = 15) -> dict[str, object]:
        out: dict[str, object] = {}
        for thread, n in self.samples.most_common():
            out[thread] = {
                "seconds": round(n / 1e6, 3),
                "self": [(k, round(v / n, 4)) for k, v in self.self_counts[thread].most_common(top)],
                "inclusive": [
                    (k, round(v / n, 4)) for k, v in self.incl_counts.get(thread, Counter()).most_common(top)
                ],
            }
        return out


def main(argv: list[str]) -> None:
    if len(argv) < 3 or argv[1] != "-m":
        raise SystemExit("usage: python bench/_sampler.py OUT.json -m MODULE [ARGS...]")
    out, module, rest = Path(argv[0]), argv[2], argv[3:]
    sampler = Sampler()
    thread = threading.Thread(target=sampler.run, name="sampler", daemon=True)

    def write() -> None:
        sampler._stop = True
        out.write_text(json.dumps(sampler.report(), indent=1))

    atexit.register(write)
    thread.start()
    sampler.me = thread.ident or 0
    sys.argv = [module, *rest]
    if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
        sys.path.pop(0)  # run as a script: bench/ is not where the service's modules are
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main(sys.argv[1:])
