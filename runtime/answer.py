"""The answer to a photo: a species when the model is sure enough, else "not sure" and what it could be.

A classifier always names its most probable class, even for a photo of a plant. The model card
says how far to trust it (`ModelCard.unknown`, chosen by the exporter on species held out of
training): an *unknown score*, where higher means more likely a known class, and a threshold. At
or above the threshold the answer is sure and names the top class; below it the answer is "not
sure", with the top classes as candidates. The app and `predict` share this one decision, so the
page and the CSV never disagree.

The logits come straight from the exported model: its head is linear, so the mean of
`class_maps` over positions is the logit vector (`logits`). Temperature `T` (fitted on the
validation split) divides them before any softmax, so the confidence shown is calibrated.

The score the pipeline serves, "max_softmax+knn", also asks how close the photo is to what the
model was trained on: the mean cosine similarity of the model's pooled `features` to their `k`
nearest in a *feature bank* (a few training images per class, `model_folder.BANK_FILE`). A photo
of a plant or of a look-alike species can get a confident softmax; it rarely sits near the
training photos too. Each of the two numbers becomes its rank among the validation images (the
card's `ranks`: quantiles of each score over them) and the two ranks are averaged.
A photo seen twice (the whole photo and a crop, `runtime.second_look`) is scored by the better
of its two looks (`photo_score`).
`training.unknown` measures every score on held-out species and `training.trust` says why this one.
TensorFlow-free: numpy only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

TOP_K = 5  # how many classes "could be" lists

# The unknown scores a card may name, higher = more likely known. The first three read the logits
# and the temperature only; "max_softmax+knn" also needs the photo's features and the feature bank.
SCORES = ("max_softmax", "max_logit", "energy", "max_softmax+knn")
NEEDS_BANK = ("max_softmax+knn",)
SETTINGS = ("score", "temperature", "threshold", "k", "ranks")  # a card's `unknown` keys (k and ranks: for the bank)

Outputs = Mapping[str, np.ndarray]


@dataclass(frozen=True)
class Answer:
    """What to tell a visitor about one photo."""

    sure: bool  # whether the unknown score reached the card's threshold
    label: str  # the most probable class (named as the answer only when `sure`)
    confidence: float  # its probability, softmax of the logits / T
    could_be: list[tuple[str, float]]  # the TOP_K most probable (label, probability), most probable first
    score: float  # the unknown score, comparable with the card's threshold


def served(measured: Mapping[str, Any]) -> dict[str, Any]:
    """The settings of a trust measurement (trust.json) that a card's `unknown` carries."""
    return {key: measured[key] for key in SETTINGS if key in measured}


def logits(*passes: Outputs) -> np.ndarray:
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


def normalised(features: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (float32), so that a dot product is a cosine similarity."""
    features = np.asarray(features, dtype=np.float32)
    return features / np.maximum(np.linalg.norm(features, axis=-1, keepdims=True), 1e-12)


def knn(features: np.ndarray, bank: np.ndarray, k: int) -> np.ndarray:
    """The mean cosine similarity of each row of `features` to its `k` nearest rows of `bank`
    (unit rows): high near the training images, low far from all of them."""
    similarity = normalised(features) @ np.asarray(bank, dtype=np.float32).T
    return -np.partition(-similarity, k - 1, axis=-1)[..., :k].mean(axis=-1)


def rank(score: np.ndarray, quantiles: Sequence[float]) -> np.ndarray:
    """The share of validation images that `score` beats, read off their score's quantiles
    (evenly spaced levels from 0 to 1): it puts scores of any scale on one scale."""
    return np.interp(score, np.asarray(quantiles, dtype=np.float64), np.linspace(0, 1, len(quantiles)))


def unknown_score(logits: np.ndarray, score: str, temperature: float) -> float:
    """A logit score of `logits`: higher means more likely one of the known classes.

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


def pass_score(outputs: Outputs, unknown: Mapping[str, Any], bank: np.ndarray | None = None) -> float:
    """The card's unknown score of one pass of the model (`{"class_maps": ..., "features": ...}`).

    The logit scores read the pass's logits. "max_softmax+knn" averages the rank of its
    max-softmax with the rank of its kNN similarity to the bank.
    """
    pass_logits = logits(outputs)
    if unknown["score"] not in NEEDS_BANK:
        return unknown_score(pass_logits, unknown["score"], unknown["temperature"])
    if bank is None:
        raise ValueError(f"the unknown score {unknown['score']!r} needs the model's feature bank")
    similarity = float(knn(outputs["features"], bank, unknown["k"]))
    confidence = unknown_score(pass_logits, "max_softmax", unknown["temperature"])
    ranks = unknown["ranks"]
    return float((rank(confidence, ranks["max_softmax"]) + rank(similarity, ranks["knn"])) / 2)


def photo_score(passes: Sequence[Outputs], unknown: Mapping[str, Any], bank: np.ndarray | None = None) -> float:
    """The card's unknown score of a photo: that of its better look, the higher of its passes'
    (the whole photo, and the crop around the evidence when the second look took one).

    A butterfly small in a visitor's photo is a few dozen pixels of the whole photo's pass, and
    often scores "unknown" there; seen up close in the crop, it scores as the training photos do.
    A photo of an unknown species or of no butterfly rarely scores high in either look. On field
    photos the better look tells unknown species from known ones better than the whole photo
    alone, and answers more of the known ones at the same threshold; on clean images like the
    validation split that set the card's ranks and threshold, the crop seldom scores higher, so
    the threshold keeps its promise there (docs/BENCHMARKS.md, `bench/field.py` and
    `bench/held_out.py`). The passes are not averaged instead: the average of a good look and a
    poor one is a poor look, and scored so, clean images were answered far less often than the
    threshold promises (the same tables).
    """
    return max(pass_score(outputs, unknown, bank) for outputs in passes)


def answer(passes: Sequence[Outputs], card: Mapping[str, Any], bank: np.ndarray | None = None) -> Answer:
    """The answer for a photo seen in `passes` (the whole photo first), by the card's classes and
    `unknown` settings (`bank`: the model folder's feature bank, for a score that needs it): the
    probabilities of the passes' averaged logits, the unknown score of its better look (`photo_score`)."""
    unknown = card["unknown"]
    probabilities = softmax(logits(*passes), unknown["temperature"])
    order = np.argsort(-probabilities, kind="stable")[:TOP_K]
    could_be = [(card["classes"][index], float(probabilities[index])) for index in order]
    score = photo_score(passes, unknown, bank)
    label, confidence = could_be[0]
    return Answer(sure=score >= unknown["threshold"], label=label, confidence=confidence, could_be=could_be, score=score)
