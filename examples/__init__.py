"""The example scripts, installed as ``pyro_cnf.examples``: ``pyro-cnf run NAME`` runs ``NAME.py``.

Each script is meant to be read and run on its own (``python examples/NAME.py --help``); this
file only makes the folder a package, so that a wheel carries the scripts along.
"""
