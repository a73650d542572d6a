"""Inference with flows: guides for SVI, fitting, importance diagnostics, density estimation."""

from .amortized import AutoAmortizedCNF
from .density import DensityFitResult, fit_density
from .diagnostics import (
    ImportanceDiagnostics,
    ImportanceDraws,
    importance_diagnostics,
    importance_draws,
    pareto_khat,
)
from .fit import FitError, FitResult, fit_svi
from .flow_matching import fit_flow_matching, ot_coupling, reflow, reflow_pairs
from .guides import AutoCNF, AutoFlow
from .objectives import InclusiveKL

__all__ = [
    "AutoAmortizedCNF",
    "AutoCNF",
    "AutoFlow",
    "DensityFitResult",
    "FitError",
    "FitResult",
    "ImportanceDiagnostics",
    "ImportanceDraws",
    "InclusiveKL",
    "fit_density",
    "fit_flow_matching",
    "fit_svi",
    "importance_diagnostics",
    "importance_draws",
    "ot_coupling",
    "pareto_khat",
    "reflow",
    "reflow_pairs",
]
