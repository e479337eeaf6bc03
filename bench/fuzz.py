"""Long fuzz run (not part of ``make test``): the hostile-input tests of tests/hardening/test_hardening_fuzz.py
with many more examples, drawn at random (the suite's run is derandomised and bounded). Prints how many inputs
were tried by kind. Run as root in the loopback-only namespace:

    scripts/in-private-net.sh .venv/bin/python bench/fuzz.py --examples 2000
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=2000, help="examples per hostile-input test")
    args = parser.parse_args()
    env = {**os.environ, "SPINE_GATEWAY_FUZZ_EXAMPLES": str(args.examples), "SPINE_GATEWAY_FUZZ_RANDOM": "1"}
    return subprocess.run([sys.executable, "-m", "pytest", "tests/hardening/test_hardening_fuzz.py", "-q", "-s",
                           "-p", "no:cacheprovider"], cwd=REPO, env=env).returncode


if __name__ == "__main__":
    sys.exit(main())
