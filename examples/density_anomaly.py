"""Thin wrapper: the example lives in :mod:`pyro_cnf.examples.density_anomaly`.

``pyro-cnf run density_anomaly`` runs the same module.

Run ``python examples/density_anomaly.py --help`` for its options, ``--smoke`` for a run of a few seconds.
"""

import sys

from pyro_cnf.examples.density_anomaly import main

if __name__ == "__main__":
    sys.exit(main())
