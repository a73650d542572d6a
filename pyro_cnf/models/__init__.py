r"""The Bayesian model zoo: Pyro models with reference answers, for tests, examples and benchmarks.

Each entry is a :class:`BayesianModel`: a Pyro model with its data baked in, the names of its
latent sites, and a :class:`Reference` (``log_Z``, posterior ``mean`` and ``sd`` per site, and
``kind``: how it was computed), computed in float64 on first access and cached.

=============================  ============================  =========================================
name                           latent sites                  reference
=============================  ============================  =========================================
``eight_schools_centered``     mu, tau, theta (8)            quadrature over (mu, log tau), exact
``eight_schools_noncentered``  mu, tau, theta_tilde (8)      same; also the deterministic ``theta``
``funnel``                     v, x (9)                      analytic, log Z = 0
``banana``                     x0, x1                        analytic, log Z = 0
``energy_u1`` ... ``u4``       z (2)                         quadrature over z
``logistic_regression``        intercept, weights (10)       NUTS made by pyro-cnf (~1 min), no log Z
=============================  ============================  =========================================

:func:`load_posteriordb` adds eight posteriors of posteriordb (a hierarchical model, AR(5),
GARCH(1, 1), a latent Gaussian process, a mixture, two regressions with correlated coefficients,
an ODE model) whose references are posteriordb's own NUTS draws (``Reference.draws``).

With :math:`\log Z` known, :math:`\mathrm{KL}(q \,\|\, p) = \log Z - \mathrm{ELBO}` is the honest
accuracy number of a variational fit.

Example:
    >>> from pyro_cnf.models import get_model
    >>> m = get_model("eight_schools_noncentered")
    >>> round(m.reference.log_Z, 3), round(float(m.reference.mean["tau"]), 2)
    (-31.311, 3.6)
    >>> m.reference_kind.startswith("quadrature")
    True
"""

from ._base import BayesianModel, Reference, get_model, zoo
from .banana import banana
from .eight_schools import eight_schools_centered, eight_schools_noncentered
from .energies import energy_u1, energy_u2, energy_u3, energy_u4
from .funnel import funnel
from .logistic import logistic_regression
from .posteriordb import POSTERIORS, load_posteriordb, posteriordb_root

__all__ = [
    "POSTERIORS",
    "BayesianModel",
    "Reference",
    "banana",
    "eight_schools_centered",
    "eight_schools_noncentered",
    "energy_u1",
    "energy_u2",
    "energy_u3",
    "energy_u4",
    "funnel",
    "get_model",
    "load_posteriordb",
    "logistic_regression",
    "posteriordb_root",
    "zoo",
]
