"""Settings for every test and doctest: one torch thread, and where the posteriordb posteriors are.

The tests' tensors are small: a second OpenMP thread gains nothing on them, and when another
process keeps a core busy every operation waits for it (many times slower), so one thread.

``PYRO_CNF_POSTERIORDB`` names the folder (``.ci/run`` sets it); when it is unset and the
folder ``shared/posteriordb`` lies beside this checkout, that folder is used.
"""

import os
from pathlib import Path

import torch

torch.set_num_threads(1)

_BESIDE = Path(__file__).resolve().parent.parent / "shared" / "posteriordb"
if not os.environ.get("PYRO_CNF_POSTERIORDB") and _BESIDE.is_dir():
    os.environ["PYRO_CNF_POSTERIORDB"] = str(_BESIDE)
