"""Thin wrapper: the example lives in :mod:`pyro_cnf.examples.logistic_regression`.

``pyro-cnf run logistic_regression`` runs the same module.

Run ``python examples/logistic_regression.py --help`` for its options, ``--smoke`` for a run of a few seconds.
"""

import sys

from pyro_cnf.examples.logistic_regression import main

if __name__ == "__main__":
    sys.exit(main())
