"""Knowing what the model does not know: scores that say "this is not one of my classes".

A classifier always names one of its classes, even for a species it never saw or a photo of a
plant. Each score below turns what the model gives for a photo into one number, *higher meaning
more like the training classes*; a threshold on it turns an answer into "not sure".

- `max_softmax`: the top probability after temperature scaling (`training.calibration`);
- `max_logit`: the top logit (no softmax, so it is not squeezed by the other classes);
- `energy`: T * logsumexp(logits / T), the negative free energy (Liu et al., 2020);
- `FeatureBank`: the mean cosine similarity of the pooled features to their k nearest training
  features: a photo far from everything the model was trained on is unknown whatever the head says;
- `Mahalanobis`: minus the smallest Mahalanobis distance to a class mean, with one covariance
  shared by all classes (Lee et al., 2018), estimated with Ledoit-Wolf shrinkage (features
  outnumber the images of a class);
- `RankCombination`: several scores, each turned into its rank among known validation images
  (the share of them it beats) and averaged.

`Scorer` fits all of them for one linear head; `held_out_species` runs the leave-species-out
folds with a head refitted on the kept classes (`fit_linear_head`), `summarise` measures each
score over the folds and sets its threshold. Which one is served, and why: `training.trust`.

Thresholds come from held-out *species*: `leave_species_out` trains a head without k of the
classes and scores those classes' images as unknown, which needs no extra data. They are never
chosen on the test split or on field photos: those only measure. AUROC and the false-positive
rate at 95% true-positive rate (the share of unknown images still answered when 95% of known ones
are) are the usual two measures; known images are the positives.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.special import logsumexp, softmax
from sklearn.covariance import LedoitWolf
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score, roc_curve
from sklearn.preprocessing import StandardScaler

from runtime import answer
from training import calibration

TARGET_TPR = 0.95
HELD_OUT_SHARE = 0.2  # of the classes, left out in each fold (10 of 50)
FOLDS = 5
SCORES = ("max_softmax", "max_logit", "energy", "knn", "mahalanobis")
COMBINED = ("max_softmax", "knn")  # the rank combination, as "max_softmax+knn": the score the app serves (`training.trust`)
# The feature bank the app ships: 50 training images per class. On held-out species a bigger bank
# separates better (docs/BENCHMARKS.md); every image would cost the app's memory more than twice as much.
BANK_PER_CLASS = 50
# ReAct's ceiling on the pooled features the head reads (`training.model`, "react"): this quantile of
# the training images' pooled features, the value its authors use (Sun et al., 2021), not one tuned here.
REACT_QUANTILE = 0.9


def max_softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """The top probability of softmax(logits / T), per row."""
    return softmax(np.asarray(logits, dtype=np.float64) / temperature, axis=-1).max(axis=-1)


def max_logit(logits: np.ndarray) -> np.ndarray:
    """The top logit, per row."""
    return np.asarray(logits, dtype=np.float64).max(axis=-1)


def energy(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """The negative free energy T * logsumexp(logits / T), per row: high for known inputs."""
    return temperature * logsumexp(np.asarray(logits, dtype=np.float64) / temperature, axis=-1)


@dataclass
class FeatureBank:
    """Unit-length training features; a photo's score is its mean cosine similarity to the `k` nearest."""

    features: np.ndarray  # (n, d), unit rows; float16 halves the model folder's file (the app holds float32)
    k: int = 5

    @classmethod
    def build(cls, features: np.ndarray, k: int = 5, per_class: int | None = None,
              labels: np.ndarray | None = None, seed: int = 0) -> FeatureBank:
        """A bank of `features`, or of at most `per_class` of them per class (chosen at random,
        seeded) to keep it small for serving; a bank smaller than `k` averages all it holds."""
        if per_class is not None:
            rng = np.random.default_rng(seed)
            keep = np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in np.unique(labels)])
            features = features[np.sort(keep)]
        return cls(answer.normalised(features).astype(np.float16), min(k, len(features)))

    def score(self, features: np.ndarray) -> np.ndarray:
        return answer.knn(features, self.features, self.k)  # the app's own kNN


@dataclass
class Mahalanobis:
    """Class means and one shared precision matrix; a photo's score is minus its squared
    Mahalanobis distance to the nearest class mean."""

    means: np.ndarray  # (classes, d)
    precision: np.ndarray  # (d, d)

    @classmethod
    def fit(cls, features: np.ndarray, labels: np.ndarray) -> Mahalanobis:
        features = np.asarray(features, dtype=np.float64)
        classes = np.unique(labels)
        means = np.stack([features[labels == c].mean(axis=0) for c in classes])
        centred = features - means[np.searchsorted(classes, labels)]
        return cls(means, LedoitWolf(assume_centered=True).fit(centred).precision_)

    def score(self, features: np.ndarray) -> np.ndarray:
        features = np.asarray(features, dtype=np.float64)
        projected_x, projected_m = features @ self.precision, self.means @ self.precision
        # (x - m)' P (x - m) = x'Px - 2 x'Pm + m'Pm, for every pair at once.
        distance = (np.sum(projected_x * features, axis=1)[:, None] - 2 * projected_x @ self.means.T
                    + np.sum(projected_m * self.means, axis=1)[None, :])
        return -distance.min(axis=1)


@dataclass
class RankCombination:
    """Scores turned into their rank among known validation images, averaged.

    Each score's scale is its own (a probability, a cosine, a distance); the empirical
    distribution of each over known images puts them on one scale: the share of known
    images that score lower. Stored as `QUANTILES` quantiles per score, a few hundred bytes.
    """

    quantiles: dict[str, np.ndarray]

    QUANTILES = 201

    @classmethod
    def fit(cls, known: dict[str, np.ndarray]) -> RankCombination:
        levels = np.linspace(0, 1, cls.QUANTILES)
        return cls({name: np.quantile(scores, levels) for name, scores in known.items()})

    def score(self, scores: dict[str, np.ndarray]) -> np.ndarray:
        return np.mean([answer.rank(scores[name], reference) for name, reference in self.quantiles.items()], axis=0)


def auroc(known: np.ndarray, unknown: np.ndarray) -> float:
    """The probability that a known image scores higher than an unknown one (ties count half)."""
    return float(roc_auc_score(np.r_[np.ones(len(known)), np.zeros(len(unknown))], np.r_[known, unknown]))


def fpr_at_tpr(known: np.ndarray, unknown: np.ndarray, tpr: float = TARGET_TPR) -> float:
    """The share of unknown images answered at the lowest threshold that answers `tpr` of known ones."""
    fpr, true_positive_rate, _ = roc_curve(np.r_[np.ones(len(known)), np.zeros(len(unknown))], np.r_[known, unknown])
    return float(fpr[np.searchsorted(true_positive_rate, tpr, side="left")])


def threshold_at_tpr(known: np.ndarray, tpr: float = TARGET_TPR) -> float:
    """The highest threshold (answer when score >= it) that still answers `tpr` of `known`."""
    known = np.sort(np.asarray(known))
    return float(known[int(np.floor((1 - tpr) * len(known) + 1e-9))])


@dataclass
class Fold:
    """One leave-species-out split: which classes were held out, and every score of the
    known (kept classes' validation images) and unknown (held-out classes' images) sets."""

    held_out: np.ndarray
    known: dict[str, np.ndarray]
    unknown: dict[str, np.ndarray]


def folds_for(classes: int) -> tuple[int, int]:
    """(classes held out per fold, folds): a fifth of the classes, up to five disjoint folds,
    and at least two classes kept, so that every fold still trains a classifier."""
    held_out = max(1, round(HELD_OUT_SHARE * classes))
    return held_out, min(FOLDS, classes // held_out, classes - 2)


def species_folds(num_classes: int, held_out: int, folds: int, seed: int) -> list[np.ndarray]:
    """`folds` disjoint sets of `held_out` classes (a seeded shuffle of the classes, cut in pieces)."""
    if held_out * folds > num_classes:
        raise ValueError(f"cannot hold out {folds} disjoint sets of {held_out} among {num_classes} classes")
    order = np.random.default_rng(seed).permutation(num_classes)
    return [np.sort(order[i * held_out:(i + 1) * held_out]) for i in range(folds)]


def leave_species_out(
    train: tuple[np.ndarray, np.ndarray], valid: tuple[np.ndarray, np.ndarray],
    score: Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray], dict[str, np.ndarray]],
    held_out: int = 10, folds: int = 5, seed: int = 0,
) -> list[Fold]:
    """Score held-out species as unknown, `folds` times.

    `train` and `valid` are (features, labels). For each fold, `score(train_x, train_y, valid_x,
    valid_y, queries)` must fit whatever it needs (a head, a temperature, a feature bank) on the
    kept classes only (train_y / valid_y relabelled 0..kept-1) and return the scores of `queries`;
    the queries are the kept classes' validation images (known) and all images of the held-out
    classes, train and validation (unknown).
    """
    (train_x, train_y), (valid_x, valid_y) = train, valid
    results = []
    for held in species_folds(int(max(train_y.max(), valid_y.max())) + 1, held_out, folds, seed):
        kept = np.setdiff1d(np.arange(int(train_y.max()) + 1), held)
        relabel = np.full(int(train_y.max()) + 1, -1)
        relabel[kept] = np.arange(len(kept))
        in_train, in_valid = np.isin(train_y, kept), np.isin(valid_y, kept)
        queries = np.concatenate([valid_x[in_valid], train_x[~in_train], valid_x[~in_valid]])
        scores = score(train_x[in_train], relabel[train_y[in_train]], valid_x[in_valid], relabel[valid_y[in_valid]], queries)
        known_count = int(in_valid.sum())
        results.append(Fold(held, {n: s[:known_count] for n, s in scores.items()},
                            {n: s[known_count:] for n, s in scores.items()}))
    return results


@dataclass
class LinearHead:
    """A dense layer reading pooled features capped at `ceiling` (`training.model`, "react"): logits =
    min(pooled, ceiling) @ weights + bias; its class maps apply it at every location of a feature
    map scaled as `training.model.capped` scales it (their average over locations is then exactly the logits)."""

    weights: np.ndarray  # (channels, classes)
    bias: np.ndarray  # (classes,)
    ceiling: float = float("inf")

    def logits(self, pooled: np.ndarray) -> np.ndarray:
        return np.minimum(np.asarray(pooled, dtype=np.float32), self.ceiling) @ self.weights + self.bias

    def class_maps(self, feature_map: np.ndarray) -> np.ndarray:
        feature_map = np.asarray(feature_map, dtype=np.float32)
        average = feature_map.mean(axis=(-3, -2), keepdims=True)
        return feature_map * np.minimum(1.0, self.ceiling / np.maximum(average, 1e-12)) @ self.weights + self.bias


def react_ceiling(features: np.ndarray) -> float:
    """ReAct's ceiling for a head trained on `features` (pooled, one row per training image)."""
    return float(np.quantile(features, REACT_QUANTILE))


def fit_linear_head(features: np.ndarray, labels: np.ndarray) -> LinearHead:
    """A multinomial logistic regression on standardised features, folded into one dense layer
    (so class maps stay exact), capped as the trained classifier's head is (`react_ceiling`): the
    head refitted on the kept classes of a leave-species-out fold."""
    x = np.asarray(features, dtype=np.float32)
    scaler = StandardScaler().fit(x)
    regression = LogisticRegression(max_iter=500).fit(scaler.transform(x), labels)
    coef, intercept = regression.coef_, regression.intercept_
    if len(regression.classes_) == 2:  # one logit z for class 1: softmax of (0, z) is the same model
        coef, intercept = np.vstack([np.zeros_like(coef), coef]), np.r_[0.0, intercept]
    weights = (coef / scaler.scale_).T  # w'(x - m)/s = (w/s)'x - (w/s)'m
    bias = intercept - scaler.mean_ @ weights
    return LinearHead(weights.astype(np.float32), bias.astype(np.float32), react_ceiling(x))


@dataclass
class Scorer:
    """Every score of this module for one head: temperature fitted on the validation split, the
    feature bank and class means from the training split, ranks from known validation images."""

    head: LinearHead
    temperature: float
    bank: FeatureBank
    mahalanobis: Mahalanobis
    combination: RankCombination | None = None

    @classmethod
    def fit(cls, head: LinearHead, train: tuple[np.ndarray, np.ndarray], valid: tuple[np.ndarray, np.ndarray],
            bank_per_class: int | None = BANK_PER_CLASS) -> Scorer:
        temperature = calibration.fit_temperature(head.logits(valid[0]), valid[1])
        scorer = cls(head, temperature, FeatureBank.build(train[0], per_class=bank_per_class, labels=train[1]),
                     Mahalanobis.fit(train[0], train[1]))
        scorer.combination = RankCombination.fit({n: s for n, s in scorer.singles(valid[0]).items() if n in COMBINED})
        return scorer

    def singles(self, pooled: np.ndarray, logits: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Each single score of `pooled` features (logits computed by the head unless given)."""
        logits = self.head.logits(pooled) if logits is None else logits
        return {"max_softmax": max_softmax(logits, self.temperature), "max_logit": max_logit(logits),
                "energy": energy(logits, self.temperature), "knn": self.bank.score(pooled),
                "mahalanobis": self.mahalanobis.score(pooled)}

    def scores(self, pooled: np.ndarray, logits: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """The single scores and their rank combination."""
        scores = self.singles(pooled, logits)
        scores["+".join(COMBINED)] = self.combination.score(scores)
        return scores


def held_out_species(train: tuple[np.ndarray, np.ndarray], valid: tuple[np.ndarray, np.ndarray], held_out: int = 10,
                     folds: int = 5, seed: int = 0, bank_per_class: int | None = BANK_PER_CLASS) -> list[Fold]:
    """`leave_species_out` with every score, a linear head refitted on each fold's kept classes."""
    def score(train_x, train_y, valid_x, valid_y, queries):
        head = fit_linear_head(train_x, train_y)
        return Scorer.fit(head, (train_x, train_y), (valid_x, valid_y), bank_per_class).scores(queries)

    return leave_species_out(train, valid, score, held_out=held_out, folds=folds, seed=seed)


def summarise(folds: list[Fold], tpr: float = TARGET_TPR) -> dict[str, dict[str, float]]:
    """Per score: mean AUROC and FPR at `tpr` over the folds, and its threshold: the median over
    folds of the threshold that answers `tpr` of the fold's known images."""
    return {name: {"auroc": float(np.mean([auroc(f.known[name], f.unknown[name]) for f in folds])),
                   "fpr95": float(np.mean([fpr_at_tpr(f.known[name], f.unknown[name], tpr) for f in folds])),
                   "threshold": float(np.median([threshold_at_tpr(f.known[name], tpr) for f in folds]))}
            for name in folds[0].known}
