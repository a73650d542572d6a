"""Thin wrapper: the example lives in :mod:`pyro_cnf.examples.eight_schools`.

``pyro-cnf run eight_schools`` runs the same module.

Run ``python examples/eight_schools.py --help`` for its options, ``--smoke`` for a run of a few seconds.
"""

import sys

from pyro_cnf.examples.eight_schools import main

if __name__ == "__main__":
    sys.exit(main())
