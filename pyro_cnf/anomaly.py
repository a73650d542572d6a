r"""Anomaly detection by likelihood: score points by their negative log-density under a fitted flow.

A point :math:`x` is flagged when its score :math:`s(x) = -\log q(x)` exceeds a threshold
:math:`\tau`. The threshold is set for a target false-positive rate :math:`\alpha` from held-out
*normal* points :math:`x_1, \dots, x_n`: :math:`\tau` is their empirical
:math:`(1 - \alpha)`-quantile (the smallest score with at most a fraction :math:`\alpha` of the
held-out scores above it), so on fresh normal data the flagged fraction is :math:`\alpha` up to
sampling error of order :math:`\sqrt{\alpha(1-\alpha)/n}`.
:meth:`AnomalyDetector.evaluate` reports the ROC AUC (scikit-learn's ``roc_auc_score``) and the
realised false- and true-positive rates at :math:`\tau`.
"""

from __future__ import annotations

import math
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ._checks import check_positive_int, check_rows, chunks, parameter_dtype
from .distributions import ConditionalFlowDistribution
from .infer.diagnostics import exact_scoring

__all__ = ["AnomalyDetector", "AnomalyReport"]


@dataclass(frozen=True)
class AnomalyReport:
    r"""How well a threshold separates normal from anomalous points.

    Attributes:
        roc_auc: Area under the ROC curve of the scores (anomalous = positive); threshold-free.
        fpr: Realised false-positive rate: fraction of the normal points flagged.
        tpr: Realised true-positive rate: fraction of the anomalous points flagged.
        threshold: The score threshold :math:`\tau` used.
        target_fpr: The false-positive rate the threshold was chosen for.
        num_normal: Normal points evaluated.
        num_anomalous: Anomalous points evaluated.
    """

    roc_auc: float
    fpr: float
    tpr: float
    threshold: float
    target_fpr: float
    num_normal: int
    num_anomalous: int

    def __str__(self) -> str:
        return (
            f"ROC AUC {self.roc_auc:.4f}; at threshold {self.threshold:.4g} (target FPR "
            f"{self.target_fpr:.3f}): FPR {self.fpr:.4f} on {self.num_normal} normal points, "
            f"TPR {self.tpr:.4f} on {self.num_anomalous} anomalous points"
        )


def roc_auc(normal_scores: Tensor, anomalous_scores: Tensor) -> float:
    """ROC AUC of scores where higher means more anomalous (scikit-learn's ``roc_auc_score``)."""
    try:
        from sklearn.metrics import roc_auc_score
    except ImportError as error:  # pragma: no cover - scikit-learn is a test/density dependency
        raise ImportError(
            "evaluating a detector needs scikit-learn: pip install scikit-learn "
            "(or pyro-cnf[density])"
        ) from error
    labels = torch.cat([torch.zeros(len(normal_scores)), torch.ones(len(anomalous_scores))])
    scores = torch.cat([normal_scores, anomalous_scores]).to(torch.float64)
    return float(roc_auc_score(labels.numpy(), scores.cpu().numpy()))


class AnomalyDetector:
    r"""Flag points whose negative log-likelihood under a density exceeds a calibrated threshold.

    Arguments:
        distribution: A fitted density with ``log_prob`` over rows ``(N, d)`` -- typically
            ``fit_density(...).distribution`` or ``fit_flow_matching(...).distribution``. A
            :class:`~pyro_cnf.ConditionalFlowDistribution` scores against a context per row.
        batch_size: Points scored at once.

    Attributes:
        threshold: The score threshold :math:`\tau` (``None`` until :meth:`fit_threshold`).
        target_fpr: The false-positive rate it was chosen for.

    Scoring switches the flows in ``distribution`` to ``.eval()`` (their accurate
    ``eval_solver``, exact traces) and runs without gradients; their modes are restored after.

    Example:
        >>> import pyro.distributions as dist
        >>> normal = dist.Normal(torch.zeros(2), 1.0).to_event(1)
        >>> detector = AnomalyDetector(normal)
        >>> detector.fit_threshold(normal.sample((20000,)), target_fpr=0.05)
        >>> round(detector.threshold, 1)  # -log N(x) at the 95% radius: log 2 pi + chi2_2(0.95) / 2
        4.8
        >>> report = detector.evaluate(normal.sample((20000,)), 4.0 + normal.sample((1000,)))
        >>> abs(report.fpr - 0.05) < 0.01, report.roc_auc > 0.99
        (True, True)
    """

    def __init__(self, distribution: Any, batch_size: int = 4096) -> None:
        if not (
            isinstance(distribution, ConditionalFlowDistribution)
            or callable(getattr(distribution, "log_prob", None))
        ):
            raise TypeError(
                "distribution must have a log_prob method (or be a ConditionalFlowDistribution), "
                f"got {type(distribution).__name__}"
            )
        check_positive_int("batch_size", batch_size)
        self.distribution = distribution
        self.batch_size = batch_size
        self.threshold: float | None = None
        self.target_fpr: float | None = None
        self._conditional = isinstance(distribution, ConditionalFlowDistribution)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(threshold={self.threshold!r}, target_fpr={self.target_fpr!r})"
        )

    @property
    def _dim(self) -> int | None:
        distribution = self.distribution
        shape = getattr(distribution, "event_shape", None)
        if shape is not None and len(shape) == 1:
            return int(shape[0])
        base = getattr(distribution, "base_dist", None)
        shape = getattr(base, "event_shape", None)
        return int(shape[0]) if shape is not None and len(shape) == 1 else None

    def _modules(self) -> list[nn.Module]:
        transforms = getattr(self.distribution, "transforms", [])
        return [t for t in transforms if isinstance(t, nn.Module)]

    def score(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        r"""Anomaly scores :math:`-\log q(x_i)` (nats), one per row of ``x`` ``(N, d)``.

        Raises:
            ValueError: Rows with NaN/inf (named), the wrong dimension, or a context missing
                (conditional density) or given (unconditional).
        """
        modules = self._modules()
        x = check_rows("x", x, self._dim, parameter_dtype(modules[0]) if modules else None)
        if self._conditional:
            if context is None:
                raise ValueError(
                    "the density is conditional: pass context= with one context row per point"
                )
            context = check_rows("context", context, None)
            if context.shape[0] != x.shape[0]:
                raise ValueError(
                    f"context has {context.shape[0]} rows but x has {x.shape[0]}; give one "
                    "context row per point"
                )
        elif context is not None:
            raise ValueError("context was given but the density is not conditional")
        scores = []
        with torch.no_grad(), ExitStack() as stack:
            for module in self._modules():
                stack.enter_context(exact_scoring(module))
            for rows in chunks(x.shape[0], self.batch_size):
                if context is None:
                    log_q = self.distribution.log_prob(x[rows])
                else:
                    log_q = self.distribution.condition(context[rows]).log_prob(x[rows])
                scores.append(-log_q)
        return torch.cat(scores)

    def fit_threshold(
        self, x_normal: Tensor, target_fpr: float = 0.05, context: Tensor | None = None
    ) -> None:
        r"""Set the threshold for a false-positive rate ``target_fpr`` from held-out normal points.

        The threshold is the empirical :math:`(1-\alpha)`-quantile of their scores: the
        :math:`(n - \lfloor \alpha n \rfloor)`-th smallest, so :math:`\lfloor \alpha n \rfloor` of
        them (fewer with ties) lie above it.
        Use points not seen in training: training points score too well.

        Arguments:
            x_normal: Held-out normal points ``(n, d)``; ``n >= 1 / target_fpr`` at least (for a
                realised rate within a point of the target use ``n`` in the thousands).
            target_fpr: :math:`\alpha \in (0, 1)`.
            context: Their context rows (conditional densities).

        Raises:
            ValueError: ``target_fpr`` outside ``(0, 1)``, too few points, or bad rows.
        """
        if not (isinstance(target_fpr, float) and 0.0 < target_fpr < 1.0):
            raise ValueError(f"target_fpr must be a float in (0, 1), got {target_fpr!r}")
        scores = self.score(x_normal, context)
        needed = math.ceil(1.0 / target_fpr - 1e-9)
        if scores.numel() < needed:
            raise ValueError(
                f"x_normal has {scores.numel()} points, too few to set a threshold at FPR "
                f"{target_fpr}: need at least {needed} (ideally thousands)"
            )
        n = scores.numel()
        flagged = math.floor(target_fpr * n + 1e-9)  # held-out points allowed above the threshold
        self.threshold = float(torch.kthvalue(scores, n - flagged).values)
        self.target_fpr = target_fpr

    def _require_threshold(self) -> float:
        if self.threshold is None:
            raise RuntimeError("no threshold yet: call fit_threshold(x_normal, target_fpr) first")
        return self.threshold

    def predict(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """Boolean flags, ``True`` for points scored above the threshold (anomalous)."""
        threshold = self._require_threshold()
        return self.score(x, context) > threshold

    def evaluate(
        self,
        x_normal: Tensor,
        x_anomalous: Tensor,
        context_normal: Tensor | None = None,
        context_anomalous: Tensor | None = None,
    ) -> AnomalyReport:
        """ROC AUC and realised FPR/TPR at the threshold, on fresh normal and anomalous points.

        Returns:
            An :class:`AnomalyReport`.
        """
        threshold = self._require_threshold()
        normal = self.score(x_normal, context_normal)
        anomalous = self.score(x_anomalous, context_anomalous)
        return AnomalyReport(
            roc_auc=roc_auc(normal, anomalous),
            fpr=float((normal > threshold).double().mean()),
            tpr=float((anomalous > threshold).double().mean()),
            threshold=threshold,
            target_fpr=float(self.target_fpr),  # type: ignore[arg-type]
            num_normal=normal.numel(),
            num_anomalous=anomalous.numel(),
        )
