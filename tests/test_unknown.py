"""training/unknown.py: the scores, their measures and leave-species-out, on synthetic data."""

from __future__ import annotations

import numpy as np
import pytest

from training import unknown


def test_auroc_and_fpr_of_separable_scores():
    known, other = np.array([0.8, 0.9, 0.95, 0.99]), np.array([0.1, 0.2, 0.3])
    assert unknown.auroc(known, other) == 1.0
    assert unknown.fpr_at_tpr(known, other) == 0.0


def test_fpr_at_tpr_counts_unknowns_above_the_threshold():
    known = np.linspace(0.0, 1.0, 101)  # 95% of them are >= 0.05
    other = np.array([0.0, 0.02, 0.04, 0.5, 0.9])  # two of five score >= 0.05
    assert unknown.fpr_at_tpr(known, other, 0.95) == pytest.approx(0.4)
    assert unknown.threshold_at_tpr(known, 0.95) == pytest.approx(0.05)
    assert np.mean(known >= unknown.threshold_at_tpr(known, 0.95)) >= 0.95


def test_logit_scores():
    logits = np.array([[5.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    assert unknown.max_logit(logits).tolist() == [5.0, 1.0]
    assert unknown.max_softmax(logits)[1] == pytest.approx(1 / 3)
    assert unknown.energy(logits)[1] == pytest.approx(1 + np.log(3))
    # A high temperature flattens the softmax: the confident row loses confidence.
    assert unknown.max_softmax(logits, 10.0)[0] < unknown.max_softmax(logits)[0]


def clusters(seed: int, per_class: int = 40, classes: int = 6, dim: int = 16) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gaussian clusters around random centres, and the centres."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 5, (classes, dim))
    labels = np.repeat(np.arange(classes), per_class)
    return centres[labels] + rng.normal(0, 1, (len(labels), dim)), labels, centres


def test_feature_distances_separate_a_new_cluster():
    features, labels, centres = clusters(0)
    rng = np.random.default_rng(1)
    known = centres[labels] + rng.normal(0, 1, features.shape)  # fresh images of the training classes
    new_centre = rng.normal(0, 5, 16)
    far = new_centre + rng.normal(0, 1, (30, 16))  # a class the bank has never seen
    bank = unknown.FeatureBank.build(features, k=3)
    mahalanobis = unknown.Mahalanobis.fit(features, labels)
    assert unknown.auroc(mahalanobis.score(known), mahalanobis.score(far)) > 0.99
    assert unknown.auroc(bank.score(known), bank.score(far)) > 0.9


def test_bank_keeps_per_class_samples():
    features, labels, _ = clusters(0)
    bank = unknown.FeatureBank.build(features, per_class=5, labels=labels)
    assert bank.features.shape == (30, 16) and bank.features.dtype == np.float16
    assert np.allclose(np.linalg.norm(bank.features.astype(np.float32), axis=1), 1, atol=1e-3)


def test_a_bank_smaller_than_k_averages_all_it_has():
    """Two classes of two images: the bank holds four features, fewer than the k of 5."""
    features = np.array([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [0.6, 0.8]])
    bank = unknown.FeatureBank.build(features, per_class=20, labels=np.array([0, 0, 1, 1]))
    assert bank.k == 4
    assert bank.score(np.array([[1.0, 0.0]])) == pytest.approx([(1.0 + 0.8 + 0.0 + 0.6) / 4], abs=1e-3)


def test_rank_combination_puts_scores_on_one_scale():
    known = {"a": np.linspace(0, 1, 101), "b": np.linspace(100, 200, 101)}
    combination = unknown.RankCombination.fit(known)
    combined = combination.score({"a": np.array([0.5, 1.0, -1.0]), "b": np.array([150.0, 200.0, 0.0])})
    assert combined == pytest.approx([0.5, 1.0, 0.0], abs=0.01)


def test_leave_species_out_holds_out_disjoint_classes_and_scores_them_as_unknown():
    features, labels, centres = clusters(0, classes=10)
    valid, valid_labels, _ = clusters(5, per_class=5, classes=10)
    valid = centres[valid_labels] + np.random.default_rng(6).normal(0, 1, valid.shape)
    seen_kept = []

    def score(train_x, train_y, valid_x, valid_y, queries):
        seen_kept.append(int(train_y.max()) + 1)
        return {"mahalanobis": unknown.Mahalanobis.fit(train_x, train_y).score(queries)}

    folds = unknown.leave_species_out((features, labels), (valid, valid_labels), score, held_out=3, folds=3, seed=0)
    assert seen_kept == [7, 7, 7]
    held = np.concatenate([fold.held_out for fold in folds])
    assert len(np.unique(held)) == 9
    for fold in folds:
        assert len(fold.known["mahalanobis"]) == 7 * 5
        assert len(fold.unknown["mahalanobis"]) == 3 * (40 + 5)
        assert unknown.auroc(fold.known["mahalanobis"], fold.unknown["mahalanobis"]) > 0.95
    with pytest.raises(ValueError, match="cannot hold out"):
        unknown.species_folds(10, 4, 3, seed=0)


def test_held_out_species_measures_every_score_and_sets_thresholds():
    features, labels, centres = clusters(0, classes=8, per_class=30)
    rng = np.random.default_rng(7)
    valid_labels = np.repeat(np.arange(8), 20)
    valid = centres[valid_labels] + rng.normal(0, 1, (len(valid_labels), 16))
    folds = unknown.held_out_species((features, labels), (valid, valid_labels), held_out=2, folds=2, seed=0, bank_per_class=10)
    summary = unknown.summarise(folds)
    assert set(summary) == {*unknown.SCORES, "max_softmax+knn"}
    for name, measured in summary.items():
        kept = [np.mean(fold.known[name] >= measured["threshold"]) for fold in folds]
        assert np.mean(kept) >= 0.9  # the median fold threshold answers about 95% of known images
    # Far-apart clusters: the feature distance separates held-out classes.
    assert summary["mahalanobis"]["auroc"] > 0.95


def test_a_refitted_head_is_capped_as_the_trained_one_and_its_class_maps_follow():
    """A fold's head reads its pooled features capped at ReAct's ceiling (their 90th percentile),
    as the trained classifier's does: a feature driven far above the training images' changes
    its logits no more than one at the ceiling, and its class maps still average to them."""
    rng = np.random.default_rng(0)
    labels = np.arange(120) % 3
    features = np.abs(rng.normal(0, 1, (3, 6))[labels] + rng.normal(0, 0.3, (120, 6))).astype(np.float32)
    head = unknown.fit_linear_head(features, labels)
    assert head.ceiling == pytest.approx(np.quantile(features, unknown.REACT_QUANTILE))
    at_ceiling, far_above = np.full((1, 6), head.ceiling), np.full((1, 6), 10 * head.ceiling)
    np.testing.assert_allclose(head.logits(far_above), head.logits(at_ceiling), rtol=1e-6)
    feature_map = np.abs(rng.normal(0, 1, (2, 4, 5, 6))).astype(np.float32) * np.array([1, 1, 1, 1, 5, 9], np.float32)
    pooled = feature_map.mean(axis=(1, 2))
    assert (pooled > head.ceiling).any() and (pooled < head.ceiling).any()
    np.testing.assert_allclose(head.class_maps(feature_map).mean(axis=(1, 2)), head.logits(pooled), rtol=1e-5, atol=1e-5)
