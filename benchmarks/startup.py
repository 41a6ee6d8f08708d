"""Start-up time per backend: a fresh process imports polycnn, gets the backend and runs a tiny
conv and pool forward+backward, with an empty compile cache (cold) and then a warm one:
``python benchmarks/startup.py [--backends numba]``. The same table as ``polycnn bench``."""

import sys

from polycnn.cli.main import main

if __name__ == "__main__":
    main(["bench", "--no-ops", "--no-training", "--startup", "--no-torch", *sys.argv[1:]])
