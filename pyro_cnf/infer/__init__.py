"""Inference with flows: guides for SVI, fitting, importance diagnostics."""

from .diagnostics import ImportanceDiagnostics, importance_diagnostics, pareto_khat
from .fit import FitError, FitResult, fit_svi
from .guides import AutoCNF, AutoFlow

__all__ = [
    "AutoCNF",
    "AutoFlow",
    "FitError",
    "FitResult",
    "ImportanceDiagnostics",
    "fit_svi",
    "importance_diagnostics",
    "pareto_khat",
]
