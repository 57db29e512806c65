"""Stage 7: how far to trust the trained classifier, measured before it is tested or served.

Two numbers travel with every model (`trust.json` in its folder, then the exported model card)
and tell the app when to answer "not sure" (`runtime.answer`):

- a *temperature* T fitted on the validation split (`training.calibration`), so that the
  confidence shown, softmax(logits / T), means what it says;
- a *threshold* on the unknown score, chosen on species held out of training
  (`training.unknown.held_out_species`): k classes are left out, a linear head is refitted on the
  pooled features of the others, and the held-out species' images play the photos of species
  the model has never seen. The threshold answers 95% of the known validation images of each
  fold; the median over folds is kept. The test split and field photos never choose anything.

The folds refit the head on the fine-tuned backbone's pooled features, which saw every species
in training: the held-out species are then somewhat easier to tell apart than truly new ones,
so the figures measured here are an upper bound (docs/BENCHMARKS.md measures field photos).

Every score of `training.unknown` is measured on the folds and recorded; the one served is
calibrated max-softmax, the only one whose threshold carries from the fold heads to the real
head unchanged: both are calibrated by their own temperature, while logit and energy scales, and
feature-bank distances, differ from head to head or need features the exported model lacks.
"""

from __future__ import annotations

import keras
import numpy as np

from training import calibration, unknown
from training.finetune import batches
from training.model import top

SERVED_SCORE = "max_softmax"
HELD_OUT_SHARE = 0.2  # of the classes, left out in each fold (10 of 50)
FOLDS = 5


def pooled_and_logits(classifier: keras.Model, frozen_until: str | None, activations: np.ndarray,
                      batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """The classifier's pooled features and logits for cached activations of its frozen bottom."""
    features = top(classifier, frozen_until, pooled_only=True)
    pooled = features.predict(batches((activations, np.zeros(len(activations))), batch_size), verbose=0)
    weights, bias = classifier.get_layer("logits").get_weights()
    return pooled, pooled @ weights + bias


def folds_for(classes: int) -> tuple[int, int]:
    """(classes held out per fold, folds): a fifth of the classes, up to five disjoint folds,
    and at least two classes kept, so that every fold still trains a classifier."""
    held_out = max(1, round(HELD_OUT_SHARE * classes))
    return held_out, min(FOLDS, classes // held_out, classes - 2)


def measure(train: tuple[np.ndarray, np.ndarray], valid: tuple[np.ndarray, np.ndarray],
            valid_logits: np.ndarray, classes: int, seed: int) -> dict:
    """The temperature, the served score's threshold and what every score did on held-out species.

    `train` and `valid` are (pooled features, labels) of the plain training and validation images.
    With fewer than three classes no species can be held out: the threshold then answers 95% of
    the validation images, and nothing is said about unknown species.
    """
    temperature = calibration.fit_temperature(valid_logits, valid[1])
    held_out, folds = folds_for(classes)
    if folds < 1:
        known = unknown.max_softmax(valid_logits, temperature)
        return {"temperature": temperature, "score": SERVED_SCORE,
                "threshold": unknown.threshold_at_tpr(known), "held_out": None, "scores": {}}
    summary = unknown.summarise(unknown.held_out_species(train, valid, held_out=held_out, folds=folds, seed=seed))
    return {"temperature": temperature, "score": SERVED_SCORE, "threshold": summary[SERVED_SCORE]["threshold"],
            "held_out": {"classes_per_fold": held_out, "folds": folds}, "scores": summary}


def calibration_on_test(probabilities: np.ndarray, labels: np.ndarray, temperature: float) -> dict[str, float]:
    """Expected calibration error of the test split's answers, as trained and after temperature scaling.

    Softmax ignores a constant added to every logit, so log-probabilities serve as logits here.
    """
    logits = np.log(np.clip(probabilities, 1e-12, None))
    return {"ece": calibration.expected_calibration_error(probabilities, labels),
            "ece_scaled": calibration.expected_calibration_error(
                calibration.scaled_probabilities(logits, temperature), labels)}
