"""``python -m pyro_cnf``: the ``pyro-cnf`` command (see :mod:`pyro_cnf.cli`)."""

import sys

from .cli import main

sys.exit(main())
