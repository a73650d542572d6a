"""``python -m pyro_cnf``: the ``pyro-cnf`` command (see :mod:`pyro_cnf.cli`)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
