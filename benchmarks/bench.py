"""Run the speed harness: ``python benchmarks/bench.py [--quick] ...`` (the same as ``python benchmarks/bench.py``)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from benchmarks.harness import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
