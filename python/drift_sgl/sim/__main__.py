"""Entry point of ``python -m drift_sgl.sim`` (see ``drift_sgl.sim.cli``)."""

import sys

from drift_sgl.sim.cli import main

if __name__ == "__main__":
    sys.exit(main())
