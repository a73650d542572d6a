"""Thin wrapper: the example lives in :mod:`pyro_cnf.examples.funnel`.

``pyro-cnf run funnel`` runs the same module.

Run ``python examples/funnel.py --help`` for its options, ``--smoke`` for a run of a few seconds.
"""

import sys

from pyro_cnf.examples.funnel import main

if __name__ == "__main__":
    sys.exit(main())
