"""Settings for every test and doctest: where the posteriordb reference posteriors are.

``PYRO_CNF_POSTERIORDB`` names the folder (``.ci/run`` sets it); when it is unset and the
folder ``shared/posteriordb`` lies beside this checkout, that folder is used.
"""

import os
from pathlib import Path

_BESIDE = Path(__file__).resolve().parent.parent / "shared" / "posteriordb"
if not os.environ.get("PYRO_CNF_POSTERIORDB") and _BESIDE.is_dir():
    os.environ["PYRO_CNF_POSTERIORDB"] = str(_BESIDE)
