"""Calibration: how far a model's confidence can be trusted, and one number that fixes most of it.

A network trained with cross-entropy (label smoothing or not) is rarely calibrated: among answers
given with 90% confidence, far more or fewer than 90% may be right. *Temperature scaling* (Guo et
al., "On Calibration of Modern Neural Networks", 2017) divides the logits by one scalar T fitted
on the validation split, minimising its negative log-likelihood. It never changes which class
wins (so accuracy is untouched), only how sure the answer sounds, which is what a "not sure"
threshold reads.

*Expected calibration error* (ECE) measures the gap: answers are grouped into 15 equal-width bins
of confidence (the top probability: [0, 1/15), [1/15, 2/15), ..., [14/15, 1]); ECE is the
average, weighted by each bin's share of answers, of |accuracy - mean confidence| in the bin.
0 is perfect; 0.03 means confidence is off by three points on average. 15 bins is the usual choice
since Guo et al., which keeps numbers comparable with the literature.

Pure numpy/scipy: the app and tests use it without TensorFlow.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, softmax

BINS = 15
TEMPERATURE_RANGE = (0.05, 20.0)  # wide enough for any sane classifier; bounds keep the search finite


def scaled_probabilities(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """softmax(logits / T) along the last axis."""
    return softmax(np.asarray(logits, dtype=np.float64) / temperature, axis=-1)


def negative_log_likelihood(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    """Mean -log p(true class) of softmax(logits / T)."""
    log_p = log_softmax(np.asarray(logits, dtype=np.float64) / temperature, axis=-1)
    return float(-np.mean(log_p[np.arange(len(labels)), labels]))


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The T that minimises the validation split's NLL of softmax(logits / T).

    A bounded 1-D search over log T (the NLL is smooth and unimodal in it), so T stays positive.
    """
    labels = np.asarray(labels)
    result = minimize_scalar(lambda log_t: negative_log_likelihood(logits, labels, float(np.exp(log_t))),
                             bounds=tuple(np.log(TEMPERATURE_RANGE)), method="bounded", options={"xatol": 1e-4})
    return float(np.exp(result.x))


def reliability(probabilities: np.ndarray, labels: np.ndarray, bins: int = BINS) -> dict[str, np.ndarray]:
    """Per equal-width confidence bin: the answers' count, mean confidence and accuracy
    (NaN for empty bins), with the bin edges: what a reliability diagram draws."""
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == np.asarray(labels)
    edges = np.linspace(0.0, 1.0, bins + 1)
    # Bin i holds [edges[i], edges[i + 1]); a confidence of exactly 1 goes to the last bin.
    index = np.clip(np.digitize(confidence, edges[1:-1], right=False), 0, bins - 1)
    count = np.bincount(index, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_confidence = np.bincount(index, weights=confidence, minlength=bins) / count
        accuracy = np.bincount(index, weights=correct, minlength=bins) / count
    return {"edges": edges, "count": count, "confidence": mean_confidence, "accuracy": accuracy}


def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray, bins: int = BINS) -> float:
    """Sum over bins of (share of answers) * |accuracy - mean confidence| (see the module doc)."""
    table = reliability(probabilities, labels, bins)
    filled = table["count"] > 0
    gaps = np.abs(table["accuracy"][filled] - table["confidence"][filled])
    return float(np.sum(table["count"][filled] / table["count"].sum() * gaps))
