"""pyro-cnf: continuous and discrete normalizing flows for Pyro."""

from .distributions import ConditionalFlowDistribution, FlowDistribution
from .divergence import Divergence, Exact, Hutchinson
from .nn import MLPField
from .ode import Solver, SolverError, solve
from .transforms import CNF, ConditionalCNF, SolveStats, cnf, conditional_cnf

__version__ = "0.1.0.dev0"

__all__ = [
    "CNF",
    "ConditionalCNF",
    "ConditionalFlowDistribution",
    "Divergence",
    "Exact",
    "FlowDistribution",
    "Hutchinson",
    "MLPField",
    "SolveStats",
    "Solver",
    "SolverError",
    "cnf",
    "conditional_cnf",
    "solve",
]
