"""The answer to a photo: a species when the model is sure enough, else "not sure" and what it could be.

A classifier always names its most probable class, even for a photo of a plant. The model card
says how far to trust it (`ModelCard.unknown`, chosen by the exporter on species held out of
training): an *unknown score* computed from the logits, where higher means more likely a known
class, and a threshold. At or above the threshold the answer is sure and names the top class;
below it the answer is "not sure", with the top classes as candidates. The app and `predict`
share this one decision, so the page and the CSV never disagree.

The logits come straight from the exported model: its head is linear, so the mean of
`class_maps` over positions is the logit vector (`logits`). Temperature `T` (fitted on the
validation split) divides them before any softmax, so the confidence shown is calibrated.
TensorFlow-free: numpy only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

TOP_K = 5  # how many classes "could be" lists

# The unknown scores a card may name; each maps (logits, temperature) to a number, higher = more likely known.
SCORES = ("max_softmax", "max_logit", "energy")


@dataclass(frozen=True)
class Answer:
    """What to tell a visitor about one photo."""

    sure: bool  # whether the unknown score reached the card's threshold
    label: str  # the most probable class (named as the answer only when `sure`)
    confidence: float  # its probability, softmax of the logits / T
    could_be: list[tuple[str, float]]  # the TOP_K most probable (label, probability), most probable first
    score: float  # the unknown score, comparable with the card's threshold


def logits(*passes: Mapping[str, np.ndarray]) -> np.ndarray:
    """The (N,) logits of one or more model passes (`{"class_maps": (h, w, N), ...}`).

    The mean of a pass's class maps over positions is exactly its logit vector (the head is a
    dense layer after global average pooling); several passes (a photo and a crop of it, the
    second look) are averaged, logit by logit.
    """
    return np.mean([np.mean(outputs["class_maps"], axis=(0, 1), dtype=np.float64) for outputs in passes], axis=0)


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """The probabilities of `logits / temperature`, computed without overflow."""
    scaled = np.asarray(logits, dtype=np.float64) / temperature
    exp = np.exp(scaled - scaled.max())
    return exp / exp.sum()


def unknown_score(logits: np.ndarray, score: str, temperature: float) -> float:
    """The card's unknown score of `logits`: higher means more likely one of the known classes.

    - "max_softmax": the largest probability of softmax(logits / T);
    - "max_logit": the largest logit (the temperature does not change the ranking, so it is unused);
    - "energy": T * logsumexp(logits / T), the negative free energy.
    """
    logits = np.asarray(logits, dtype=np.float64)
    if score == "max_softmax":
        return float(softmax(logits, temperature).max())
    if score == "max_logit":
        return float(logits.max())
    if score == "energy":
        scaled = logits / temperature
        return float(temperature * (scaled.max() + np.log(np.exp(scaled - scaled.max()).sum())))
    raise ValueError(f"unknown score {score!r}: expected one of {', '.join(SCORES)}")


def answer(logits: np.ndarray, card: Mapping[str, Any]) -> Answer:
    """The answer for a photo's `logits`, by the card's classes and `unknown` settings."""
    unknown = card["unknown"]
    probabilities = softmax(logits, unknown["temperature"])
    order = np.argsort(-probabilities, kind="stable")[:TOP_K]
    could_be = [(card["classes"][index], float(probabilities[index])) for index in order]
    score = unknown_score(logits, unknown["score"], unknown["temperature"])
    label, confidence = could_be[0]
    return Answer(sure=score >= unknown["threshold"], label=label, confidence=confidence, could_be=could_be, score=score)
