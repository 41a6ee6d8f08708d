"""Training throughput (images/s) of LeNet-5 on 1x28x28, batch 64, and the shapes CNN on 3x64x64,
batch 32, every backend side by side with the same model in PyTorch CPU:
``python benchmarks/training.py [polycnn bench options]``. The same table as ``polycnn bench``."""

import sys

from polycnn.cli.main import main

if __name__ == "__main__":
    main(["bench", "--no-ops", "--training", "--no-startup", *sys.argv[1:]])
