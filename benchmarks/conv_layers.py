"""Conv and max-pool forward / forward+backward on the layers of notes/perf-baseline.md, every
backend side by side with PyTorch CPU: ``python benchmarks/conv_layers.py [polycnn bench options]``
(e.g. ``--backends numpy,numba --layers b,c --json``). The same table as ``polycnn bench``."""

import sys

from polycnn.cli.main import main

if __name__ == "__main__":
    main(["bench", "--no-training", "--no-startup", *sys.argv[1:]])
