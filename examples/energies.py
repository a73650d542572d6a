"""Thin wrapper: the example lives in :mod:`pyro_cnf.examples.energies`.

``pyro-cnf run energies`` runs the same module.

Run ``python examples/energies.py --help`` for its options, ``--smoke`` for a run of a few seconds.
"""

import sys

from pyro_cnf.examples.energies import main

if __name__ == "__main__":
    sys.exit(main())
