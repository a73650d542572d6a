"""Thin wrapper: the example lives in :mod:`pyro_cnf.examples.conditional`.

``pyro-cnf run conditional`` runs the same module.

Run ``python examples/conditional.py --help`` for its options, ``--smoke`` for a run of a few seconds.
"""

import sys

from pyro_cnf.examples.conditional import main

if __name__ == "__main__":
    sys.exit(main())
