"""Pyro transforms: continuous normalizing flows (and, later, discrete flows)."""

from .continuous import CNF, ConditionalCNF, SolveStats, cnf, conditional_cnf

__all__ = ["CNF", "ConditionalCNF", "SolveStats", "cnf", "conditional_cnf"]
