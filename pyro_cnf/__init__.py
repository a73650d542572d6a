"""pyro-cnf: continuous and discrete normalizing flows for Pyro."""

from .anomaly import AnomalyDetector, AnomalyReport
from .arviz import pareto_smooth, to_inference_data, vi_loo
from .datasets import eight_gaussians, gaussian_mixture
from .distributions import ConditionalFlowDistribution, FlowDistribution
from .divergence import Divergence, Exact, Hutchinson
from .infer import (
    AutoAmortizedCNF,
    AutoCNF,
    AutoFlow,
    DensityFitResult,
    FitError,
    FitResult,
    ImportanceDiagnostics,
    ImportanceDraws,
    InclusiveKL,
    fit_density,
    fit_flow_matching,
    fit_svi,
    importance_diagnostics,
    importance_draws,
    ot_coupling,
    pareto_khat,
    reflow,
    reflow_pairs,
)
from .nn import MLPField
from .ode import Solver, SolverError, solve
from .reference import compare_to_reference
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
    "AnomalyDetector",
    "AnomalyReport",
    "AutoAmortizedCNF",
    "AutoCNF",
    "AutoFlow",
    "ConditionalCNF",
    "ConditionalFlowDistribution",
    "ConditionalFlowStack",
    "DensityFitResult",
    "Divergence",
    "Exact",
    "FitError",
    "FitResult",
    "FlowDistribution",
    "FlowSpec",
    "FlowStack",
    "Hutchinson",
    "ImportanceDiagnostics",
    "ImportanceDraws",
    "InclusiveKL",
    "MLPField",
    "SolveStats",
    "Solver",
    "SolverError",
    "cnf",
    "compare_to_reference",
    "conditional_cnf",
    "eight_gaussians",
    "fit_density",
    "fit_flow_matching",
    "fit_svi",
    "flow_names",
    "flow_spec",
    "gaussian_mixture",
    "importance_diagnostics",
    "importance_draws",
    "make_flow",
    "ot_coupling",
    "pareto_khat",
    "pareto_smooth",
    "reflow",
    "reflow_pairs",
    "register_flow",
    "solve",
    "to_inference_data",
    "vi_loo",
]
