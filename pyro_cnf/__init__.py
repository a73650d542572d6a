"""pyro-cnf: continuous and discrete normalizing flows for Pyro."""

from .arviz import compare_to_reference, pareto_smooth, to_inference_data, vi_loo
from .distributions import ConditionalFlowDistribution, FlowDistribution
from .divergence import Divergence, Exact, Hutchinson
from .infer import (
    AutoCNF,
    AutoFlow,
    FitError,
    FitResult,
    ImportanceDiagnostics,
    fit_svi,
    importance_diagnostics,
    pareto_khat,
)
from .nn import MLPField
from .ode import Solver, SolverError, solve
from .transforms import (
    CNF,
    ConditionalCNF,
    ConditionalFlowStack,
    FlowSpec,
    FlowStack,
    SolveStats,
    cnf,
    conditional_cnf,
    flow_names,
    flow_spec,
    make_flow,
    register_flow,
)

__version__ = "0.1.0.dev0"

__all__ = [
    "CNF",
    "AutoCNF",
    "AutoFlow",
    "ConditionalCNF",
    "ConditionalFlowDistribution",
    "ConditionalFlowStack",
    "Divergence",
    "Exact",
    "FitError",
    "FitResult",
    "FlowDistribution",
    "FlowSpec",
    "FlowStack",
    "Hutchinson",
    "ImportanceDiagnostics",
    "MLPField",
    "SolveStats",
    "Solver",
    "SolverError",
    "cnf",
    "compare_to_reference",
    "conditional_cnf",
    "fit_svi",
    "flow_names",
    "flow_spec",
    "importance_diagnostics",
    "make_flow",
    "pareto_khat",
    "pareto_smooth",
    "register_flow",
    "solve",
    "to_inference_data",
    "vi_loo",
]
