"""Anomaly detection by likelihood threshold: exact quantiles, realised rates, ROC AUC, errors."""

import math

import pyro.distributions as dist
import pytest
import torch

from pyro_cnf import (
    AnomalyDetector,
    ConditionalFlowDistribution,
    MLPField,
    conditional_cnf,
    fit_density,
    make_flow,
)
from pyro_cnf.anomaly import roc_auc


def standard_normal(dim):
    return dist.Normal(torch.zeros(dim), 1.0).to_event(1)


@pytest.mark.parametrize("target", [0.01, 0.05, 0.2])
def test_threshold_is_the_exact_quantile_and_realises_the_target_rate(target):
    """For N(0, I_2), -log p = log 2 pi + r^2 / 2 with r^2 / 2 ~ Exp(1): tau = log 2 pi - log(alpha)."""
    p = standard_normal(2)
    detector = AnomalyDetector(p)
    detector.fit_threshold(p.sample((20_000,)), target_fpr=target)
    exact = math.log(2 * math.pi) - math.log(target)
    standard_error = math.sqrt(target * (1 - target) / 20_000) / target  # quantile s.e.
    assert detector.threshold == pytest.approx(exact, abs=4 * standard_error)
    flags = detector.predict(p.sample((50_000,)))
    assert flags.dtype == torch.bool
    assert float(flags.double().mean()) == pytest.approx(target, abs=0.01)


def test_at_most_the_target_fraction_of_held_out_points_is_flagged():
    scores = torch.arange(1000.0)  # distinct scores
    detector = AnomalyDetector(dist.Normal(torch.zeros(1), 1.0).to_event(1))
    detector.score = lambda x, context=None: scores  # the quantile rule alone
    detector.fit_threshold(torch.zeros(1000, 1), target_fpr=0.05)
    assert int((scores > detector.threshold).sum()) == 50  # exactly floor(alpha n) above it


def pairwise_auc(normal, anomalous):
    """Mann-Whitney: P(anomalous score > normal score) + P(tie) / 2, by comparing every pair."""
    diff = anomalous.unsqueeze(1) - normal.unsqueeze(0)
    return float((diff > 0).double().mean() + 0.5 * (diff == 0).double().mean())


@pytest.mark.parametrize("ties", [False, True])
def test_roc_auc_equals_the_pairwise_probability(ties):
    normal, anomalous = torch.randn(300), torch.randn(200) + 1.0
    if ties:
        normal, anomalous = normal.round(), anomalous.round()
    assert roc_auc(normal, anomalous) == pytest.approx(pairwise_auc(normal, anomalous), abs=1e-12)


def test_a_fitted_flow_detector_realises_its_target_rate_on_fresh_data():
    m, sigma = torch.tensor([1.0, -1.0]), torch.tensor([2.0, 0.5])
    normal = dist.Normal(m, sigma).to_event(1)
    result = fit_density(
        make_flow("maf", 2), normal.sample((4096,)), num_steps=300, lr=1e-2, progress=False, seed=0
    )
    detector = AnomalyDetector(result.distribution)
    detector.fit_threshold(normal.sample((5000,)), target_fpr=0.05)
    report = detector.evaluate(
        normal.sample((20_000,)), normal.sample((2000,)) + torch.tensor([0.0, 3.0])
    )
    assert abs(report.fpr - 0.05) < 0.02  # within 2 points of the target
    assert report.roc_auc > 0.97 and report.tpr > 0.8
    assert report.num_normal == 20_000 and report.num_anomalous == 2000
    assert "ROC AUC" in str(report)


def test_conditional_detector_scores_against_each_rows_context():
    flow = conditional_cnf(2, 1, hidden_dims=(8,))
    flow.field = MLPField(2, (8,), context_dim=1, zero_init=False)
    density = ConditionalFlowDistribution(standard_normal(2), flow)
    x, c = torch.randn(10, 2), torch.randn(10, 1)
    detector = AnomalyDetector(density)
    scores = detector.score(x, c)
    flow.eval()
    with torch.no_grad():
        expected = -torch.stack([density.condition(c[i]).log_prob(x[i]) for i in range(10)])
    assert torch.allclose(scores, expected, atol=1e-5)
    flow.train()
    detector.score(x, c)
    assert flow.training  # the mode is restored after scoring
    with pytest.raises(ValueError, match="the density is conditional: pass context="):
        detector.score(x)
    with pytest.raises(ValueError, match="context has 9 rows but x has 10"):
        detector.score(x, c[:9])


def test_detector_errors():
    detector = AnomalyDetector(standard_normal(2))
    with pytest.raises(RuntimeError, match="call fit_threshold"):
        detector.predict(torch.randn(5, 2))
    with pytest.raises(ValueError, match="target_fpr must be a float in"):
        detector.fit_threshold(torch.randn(100, 2), target_fpr=1.5)
    with pytest.raises(
        ValueError,
        match="x_normal has 50 points, too few to set a threshold at FPR 0.01: need at least 100",
    ):
        detector.fit_threshold(torch.randn(50, 2), target_fpr=0.01)
    x = torch.randn(100, 2)
    x[42, 1] = float("nan")
    with pytest.raises(ValueError, match=r"x has NaN or inf in row \[42\]"):
        detector.score(x)
    with pytest.raises(ValueError, match="x has dimension 3"):
        detector.score(torch.randn(4, 3))
    with pytest.raises(ValueError, match="context was given but the density is not conditional"):
        detector.score(torch.randn(4, 2), torch.randn(4, 1))
    with pytest.raises(TypeError, match="must have a log_prob method"):
        AnomalyDetector(object())
