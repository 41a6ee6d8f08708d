"""Every Numba kernel compiled for the host's CPU and for other LLVM CPU names (default
x86-64-v4 and znver4), each in a child process of its own, timed in turns; a kernel whose times
differ by more than 2x between targets is flagged:
``python benchmarks/targets.py [TARGETS] [--quick] [--rounds N] [--json]``
(e.g. ``python benchmarks/targets.py sapphirerapids,znver3 --quick``). The same report as
``polycnn bench --targets``."""

import sys

from polycnn.cli.main import main

if __name__ == "__main__":
    main(["bench", "--targets", *sys.argv[1:]])
