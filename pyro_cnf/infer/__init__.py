"""Inference with flows: guides for SVI."""

from .guides import AutoCNF, AutoFlow

__all__ = ["AutoCNF", "AutoFlow"]
