"""Stage 7: how far to trust the trained classifier, measured before it is tested or served.

Two numbers travel with every model (`trust.json` in its folder, then the exported model card)
and tell the app when to answer "not sure" (`runtime.answer`):

- a *temperature* T fitted on the validation split (`training.calibration`), so that the
  confidence shown, softmax(logits / T), means what it says. It is fitted on the validation
  images as the app sees them (`Seen`): decoded as an upload, looked at whole and at the crop
  around the evidence (`runtime.second_look`), logits averaged. The average of two views is less
  peaked than either, so a temperature fitted on one view would leave the shown confidence too low;
- a *threshold* on the unknown score, chosen on species held out of training
  (`training.unknown.held_out_species`): k classes are left out, a linear head is refitted on the
  pooled features of the others, and the held-out species' images play the photos of species
  the model has never seen. The threshold answers 95% of the known validation images of each
  fold; the median over folds is kept. The test split and field photos never choose anything.

The folds refit the head on the fine-tuned backbone's pooled features, which saw every species
in training: the held-out species are then somewhat easier to tell apart than truly new ones,
so the figures measured here are an upper bound (docs/BENCHMARKS.md measures field photos).

First the step sets the classifier's ReAct ceiling (`cap_head`, `training.model`): the head
then reads pooled features capped at the 90th percentile of the training images'. On species
held out of training altogether and on the field set's unknown species, the served score told
them apart better with the cap than without, for a point or less of top-1 on known species
(docs/BENCHMARKS.md, "ReAct"). The fold heads are capped the same way, each at its own training
features' percentile (`unknown.fit_linear_head`).

Every score of `training.unknown` is measured on the folds and recorded; the one served is
"max_softmax+knn": calibrated max-softmax and the kNN similarity of the pooled features to a
feature bank of training images, each turned into its rank among known validation images and
averaged. On held-out species it answers fewer unknown images than max-softmax alone at the same
share of known ones, and on field photos it also separates photos that show no butterfly at all
(docs/BENCHMARKS.md, `bench/field.py`). Its threshold, a rank, carries from the fold heads to the
real head: each head's ranks are measured against its own validation images. (Logit and energy
scales differ from head to head, so their fold thresholds would not carry.) The app scores a
photo by its better look, the whole photo or the crop around the evidence, whichever scores
higher (`runtime.answer.photo_score`). The real head's ranks are measured on the validation
images' first pass, as the app decodes them, as the fold heads' are on whole images: on clean
images like these the crop seldom scores higher, and the share of known images the threshold
answers moves by a point at most (docs/BENCHMARKS.md, `bench/held_out.py`). The bank, a few
dozen training images per class (`unknown.BANK_PER_CLASS`), is saved beside trust.json
(`runtime.model_folder.BANK_FILE`), and the validation quantiles of both scores in trust.json
(`ranks`): the app needs both.

Beside trust.json, the step keeps what it predicted (`Predictions`, in trust.npz): the validation
logits and each fold head's logits. An ensemble of backbones (`training.ensemble`) is calibrated
and measured on held-out species from its members' predictions, without refitting anything.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from runtime import answer, second_look
from training import calibration, unknown
from training.finetune import batches
from training.model import ceiling, set_ceiling, top

SERVED_SCORE = "+".join(unknown.COMBINED)  # "max_softmax+knn"
PREDICTIONS_FILE = "trust.npz"


@dataclass(frozen=True)
class FoldLogits:
    """One leave-species-out fold as its refitted head saw it."""

    held_out: np.ndarray  # the classes left out
    logits: np.ndarray  # (queries, kept classes): the kept classes' validation images, then the held-out classes' images
    known_labels: np.ndarray  # the classes of the first queries (the known ones), numbered among the kept classes


@dataclass(frozen=True)
class Seen:
    """Images as the app sees them: what the temperature and the served score's ranks are fitted on."""

    whole_logits: np.ndarray  # (images, classes): the first pass, on the whole image, which the score's ranks are fitted on
    whole_features: np.ndarray  # (images, channels): its pooled features
    logits: np.ndarray  # (images, classes): the passes' averaged logits, which the shown probabilities read

    @classmethod
    def of(cls, looks: list[second_look.Look]) -> Seen:
        return cls(np.stack([answer.logits(look.full) for look in looks]),
                   np.stack([look.full["features"] for look in looks]),
                   np.stack([answer.logits(*look.passes) for look in looks]))


@dataclass(frozen=True)
class Predictions:
    """What the trust step predicted, saved as `PREDICTIONS_FILE` for ensembles."""

    valid_logits: np.ndarray
    folds: list[FoldLogits]  # none below three classes

    def arrays(self) -> dict[str, np.ndarray]:
        """As saved: `np.savez` takes flat named arrays."""
        arrays = {"valid_logits": self.valid_logits, "folds": np.array(len(self.folds))}
        for index, fold in enumerate(self.folds):
            arrays |= {f"fold{index}_{name}": value for name, value in dataclasses.asdict(fold).items()}
        return arrays

    @classmethod
    def read(cls, path: Path) -> Predictions:
        with np.load(path) as arrays:
            names = [f.name for f in dataclasses.fields(FoldLogits)]
            folds = [FoldLogits(*(arrays[f"fold{index}_{name}"] for name in names)) for index in range(int(arrays["folds"]))]
            return cls(arrays["valid_logits"], folds)


def pooled_features(classifier: keras.Model, frozen_until: str | None, splits: list[np.ndarray],
                    batch_size: int) -> list[np.ndarray]:
    """The classifier's pooled features (not capped) for each split's cached activations of its
    frozen bottom, through one model: Keras traces its predict function again for every model."""
    features = top(classifier, frozen_until, pooled_only=True)
    return [features.predict(batches((activations, np.zeros(len(activations))), batch_size), verbose=0)
            for activations in splits]


def cap_head(classifier: keras.Model, train_pooled: np.ndarray) -> unknown.LinearHead:
    """Set the classifier's ReAct ceiling from its training images' pooled features
    (`unknown.react_ceiling`, `training.model.set_ceiling`), and return its head as it now reads them."""
    set_ceiling(classifier, unknown.react_ceiling(train_pooled))
    return served_head(classifier)


def served_head(classifier: keras.Model) -> unknown.LinearHead:
    """The classifier's dense layer and ceiling, as numpy."""
    weights, bias = classifier.get_layer("logits").get_weights()
    return unknown.LinearHead(weights, bias, ceiling(classifier))


def held_out_species(train: tuple[np.ndarray, np.ndarray], valid: tuple[np.ndarray, np.ndarray], held_out: int,
                     folds: int, seed: int) -> tuple[list[unknown.Fold], list[FoldLogits]]:
    """`unknown.held_out_species`, keeping each fold head's logits as well. The folds depend on
    the seed and the number of classes only, so every backbone of a run holds out the same species
    and an ensemble can average its members' fold predictions."""
    kept = []

    def score(train_x, train_y, valid_x, valid_y, queries):
        head = unknown.fit_linear_head(train_x, train_y)
        kept.append((head.logits(queries), valid_y))
        return unknown.Scorer.fit(head, (train_x, train_y), (valid_x, valid_y)).scores(queries)

    measured = unknown.leave_species_out(train, valid, score, held_out=held_out, folds=folds, seed=seed)
    return measured, [FoldLogits(fold.held_out, logits, labels) for fold, (logits, labels) in zip(measured, kept)]


def measure(train: tuple[np.ndarray, np.ndarray], valid: tuple[np.ndarray, np.ndarray],
            head: unknown.LinearHead, seen: Seen, classes: int, seed: int) -> tuple[dict, Predictions, np.ndarray]:
    """The temperature, the served score's settings and threshold and what every score did on
    held-out species (trust.json, with the head's ReAct ceiling as `clip`), the predictions they
    came from and the feature bank.

    `train` and `valid` are (pooled features, labels) of the plain training and validation images
    (cached, as the folds refit heads on them), `head` the classifier's (`cap_head`), and `seen`
    the validation images as the app sees them, through the capped classifier.
    With fewer than three classes no species can be held out: the threshold then answers 95% of
    the validation images, and nothing is said about unknown species.
    """
    temperature = calibration.fit_temperature(seen.logits, valid[1])
    bank = unknown.FeatureBank.build(train[0], per_class=unknown.BANK_PER_CLASS, labels=train[1])
    known = {"max_softmax": unknown.max_softmax(seen.whole_logits, temperature), "knn": bank.score(seen.whole_features)}
    ranks = unknown.RankCombination.fit(known)
    valid_logits = head.logits(valid[0])
    settings = {"temperature": temperature, "score": SERVED_SCORE, "k": bank.k, "clip": head.ceiling,
                "ranks": {name: quantiles.tolist() for name, quantiles in ranks.quantiles.items()}}
    held_out, folds = unknown.folds_for(classes)
    if folds < 1:
        return ({**settings, "threshold": unknown.threshold_at_tpr(ranks.score(known)), "held_out": None, "scores": {}},
                Predictions(valid_logits, []), bank.features)
    measured, fold_logits = held_out_species(train, valid, held_out, folds, seed)
    summary = unknown.summarise(measured)
    return ({**settings, "threshold": summary[SERVED_SCORE]["threshold"],
             "held_out": {"classes_per_fold": held_out, "folds": folds}, "scores": summary},
            Predictions(valid_logits, fold_logits), bank.features)


def log_probabilities(probabilities: np.ndarray) -> np.ndarray:
    """Logits that give `probabilities`: softmax ignores a constant added to every logit, so
    log-probabilities serve. A probability that underflowed to 0 counts as the smallest normal
    number of its type: a higher floor would flatten the tails that rank a confident model's
    answers by the served score."""
    probabilities = np.asarray(probabilities)
    return np.log(np.maximum(probabilities, np.finfo(probabilities.dtype).tiny))


def max_softmax(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """Calibrated max-softmax of each row of a model's probabilities: the unknown score of an
    ensemble, whose members' features live in different spaces and share no feature bank."""
    return unknown.max_softmax(log_probabilities(probabilities), temperature)


def calibration_on_test(probabilities: np.ndarray, labels: np.ndarray, temperature: float) -> dict[str, float]:
    """Expected calibration error of the test split's answers, as trained and after temperature scaling."""
    return {"ece": calibration.expected_calibration_error(probabilities, labels),
            "ece_scaled": calibration.expected_calibration_error(
                calibration.scaled_probabilities(log_probabilities(probabilities), temperature), labels)}
