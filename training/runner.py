"""Stage 8: train every backbone of a run in resumable steps, then write the comparison.

    saved_models/<run>/
        run.json                      resolved config, dataset report and fingerprint, splits and labels
        <backbone>/config.json        what this backbone was trained with (`BackboneSettings`)
        <backbone>/state.json         the steps done so far, with their timings and histories
        <backbone>/head.weights.h5    phase 1's output
        <backbone>/best.weights.h5, finetune_*, backup/   phase 2's output and epoch-level state
        <backbone>/model.keras        the fine-tuned classifier (raw RGB 0..255 in)
        <backbone>/labels.json        class names in output order
        <backbone>/metrics.json       test metrics, sizes, times
        <backbone>/trust.json         ReAct ceiling, temperature, unknown score and "not sure" threshold (`training.trust`)
        <backbone>/feature_bank.npy   the training features the unknown score compares photos with
        <backbone>/trust.npz, test.npz   what the trust and evaluate steps predicted (for the ensemble)
        <backbone>/field-answers-<fingerprints>.npz   its answers to a field set's photos and their
                                      unknown scores, as the app gives them (`training.field`)
        <backbone>/confusion_matrix.{csv,png}, training_curves.png
        comparison.{md,csv,json,png}, dataset.png   (`training.report`; the ensemble row: `training.ensemble`)

Each backbone goes through `STEPS`: cached features, phase 1 (the head), phase 2 (fine-tuning,
itself resumable epoch by epoch), evaluation. A step writes its outputs first, each file
atomically, and only then records itself in `state.json` (also atomically). A run killed at any
instant therefore leaves either a step done, with all its outputs, or a step to do again, and
running the same command again picks up at the first step not recorded.

A field set (`field_data`, `field_map`) is measured after the steps, from the saved model.keras,
and kept per backbone under the set's fingerprint: naming one for a finished run measures it
without retraining anything, and it never changes a step's result (so it is not in config.json).

A step depends only on the files of the steps before it: the classifier is built from the seed
(the same initial weights in every process), loads the weights of the steps done, and every step
starts from its own seed. A resumed run thus computes what an uninterrupted one would.

Test hook: `TRAINING_KILL_AT=before:<step>` or `after:<step>` SIGKILLs the process right before
or after a step records itself in `state.json` (tests/test_resume.py kills at every boundary).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import time
from functools import cached_property
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from runtime import answer, second_look
from runtime.model_folder import BANK_FILE, LABELS_FILE
from training import ensemble, field, trust
from training.artifacts import atomic_path, read_json, remove_orphans, write_json
from training.backbones import Variant
from training.calibration import scaled_probabilities
from training.config import Config
from training.dataset import image_dataset
from training.evaluate import TEST_PREDICTIONS, latency_ms, metrics, write_confusion, write_curves
from training.features import Features, bottom_file, extract, training_features, uses_litert
from training.finetune import fine_tune, restore_best
from training.folder import SPLITS, ImageFolder
from training.head import train_head
from training.model import bottom, build_classifier, head, served_looks, set_ceiling, split_layer
from training.plan import BackboneSettings, Plan, make_plan
from training.report import plot_dataset, write_comparison
from training.standin import is_stand_in

STEPS = ("features", "head", "fine_tune", "trust", "evaluate")
TITLES = {"features": "features", "head": "phase 1", "fine_tune": "phase 2", "trust": "calibration and held-out species",
          "evaluate": "evaluation"}
KILL_AT = "TRAINING_KILL_AT"


def compare(config: Config, plan: Plan | None = None) -> list[dict]:
    """Train each backbone of `config` (resuming where possible) and write the comparison;
    `plan`: the run's `training.plan.make_plan(config)`, when the caller checked it already."""
    plan = plan or make_plan(config)  # refuses before anything is written
    variants, weights, dataset, field_set = plan.variants, plan.weights, plan.dataset, plan.field_set
    print(dataset.report())
    if field_set is not None:
        print(field_set.report())
    run_dir = config.run_dir
    for folder in (run_dir, Path(config.cache_dir)):
        remove_orphans(folder)
    write_run(run_dir, config, dataset)
    plot_dataset(run_dir / "dataset.png", dataset)
    if config.mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_float16")
    strategy = tf.distribute.MirroredStrategy() if config.strategy == "mirrored" else tf.distribute.get_strategy()

    rows, field_answers = [], {}
    for variant in variants:
        print(f"\n== {variant.id} ({variant.size}x{variant.size}, weights: {weights[variant.id] or 'none'})")
        run = BackboneRun(config, dataset, variant, weights[variant.id], plan.settings[variant.id], strategy)
        row = run.train()
        if field_set is not None:
            field_answers[variant.id] = run.field_answers(field_set)
            row = {**row, **run.field_columns(field_set, field_answers[variant.id])}
        rows.append(row)
    members = ensemble.members(run_dir, rows, field_answers)
    combined = ensemble.ensemble_row(members, dataset, field_set) if members else None
    rows = write_comparison(run_dir, rows, combined, field_set)
    print("\n" + (run_dir / "comparison.md").read_text())
    return rows


def write_run(run_dir: Path, config: Config, dataset: ImageFolder) -> None:
    """run.json: the config, the dataset report, and each split's images with their class names."""
    write_json(run_dir / "run.json", {
        "config": config.to_dict(), "classes": dataset.classes, "dataset_fingerprint": dataset.fingerprint(),
        "layout": dataset.layout, "report": dataset.report(),
        "splits": {s: [str(sample.path) for sample in dataset.splits[s]] for s in SPLITS},
        "labels": {s: [dataset.classes[sample.label] for sample in dataset.splits[s]] for s in SPLITS},
    })


def write_arrays(path: Path, **arrays: np.ndarray) -> None:
    """Save named arrays as one .npz file, atomically (`training.artifacts`)."""
    with atomic_path(path) as temporary, open(temporary, "wb") as file:
        np.savez(file, **arrays)


def digest(settings: dict | None) -> str:
    """A short hash of served settings (trust.json's), naming what was measured with them."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]


def kill_point(moment: str) -> None:
    """The test hook: die here, like a power cut, if `TRAINING_KILL_AT` names this moment."""
    if os.environ.get(KILL_AT) == moment:
        os.kill(os.getpid(), signal.SIGKILL)


def reseed(model: keras.Model, seed: int) -> None:
    """Seed Keras' global generators and the model's own (dropout's), which keep counting between
    calls: a step then draws the same numbers whatever ran before it in this process."""
    keras.utils.set_random_seed(seed)
    weights = {id(w) for w in model.weights}
    for variable in model.variables:
        if id(variable) not in weights:  # a `SeedGenerator` state: (seed, calls so far)
            variable.assign(np.array([seed, 0], dtype=variable.dtype))


class BackboneRun:
    """One backbone's steps; `state.json` in its folder records those done."""

    def __init__(self, config: Config, dataset: ImageFolder, variant: Variant, weights: Path | None,
                 settings: BackboneSettings, strategy: tf.distribute.Strategy):
        self.config, self.dataset, self.variant, self.weights = config, dataset, variant, weights
        self.settings, self.strategy = settings, strategy
        self.folder = config.run_dir / variant.id
        self.state_path = self.folder / "state.json"
        self.done: dict[str, dict] = self.read_state()

    def read_state(self) -> dict[str, dict]:
        """The steps done, by step; a folder trained before state.json existed, with its metrics.json
        (then written last), counts as finished."""
        if self.state_path.is_file():
            return read_json(self.state_path)["steps"]
        if (self.folder / "metrics.json").is_file():
            return {"evaluate": {"summary": read_json(self.folder / "metrics.json")["summary"]}}
        return {}

    def train(self) -> dict:
        """Run the steps not done yet; returns the backbone's row of the comparison table."""
        if "evaluate" in self.done:
            print(f"  already trained: {self.folder}")
            return self.done["evaluate"]["summary"]
        if self.settings.frozen_until is not None:  # a misnamed layer stops the run before it leaves a folder
            split_layer(self.classifier.get_layer("backbone"), self.settings.frozen_until)
        write_json(self.folder / "config.json", self.settings.to_json())
        for number, step in enumerate(STEPS):
            if step in self.done:
                print(f"  {TITLES[step]} already done")
                continue
            reseed(self.classifier, self.config.seed + number)
            start = time.perf_counter()
            record = getattr(self, f"step_{step}")()  # writes the step's outputs
            kill_point(f"before:{step}")
            self.done[step] = {"seconds": time.perf_counter() - start, **record}
            write_json(self.state_path, {"steps": self.done})
            kill_point(f"after:{step}")
        return self.done["evaluate"]["summary"]

    @cached_property
    def classifier(self) -> keras.Model:
        """The classifier as the steps done so far left it: built from the seed, then their weights;
        once every step is done, the model.keras they saved."""
        if "evaluate" in self.done:
            return keras.models.load_model(self.folder / "model.keras", compile=False)
        keras.utils.set_random_seed(self.config.seed)  # the same initial weights in every process
        with self.strategy.scope():
            classifier = build_classifier(self.variant, len(self.dataset.classes), self.weights, self.config.dropout)
        if "head" in self.done:
            head(classifier).load_weights(self.folder / "head.weights.h5")
        if "fine_tune" in self.done and self.config.fine_tune:
            restore_best(classifier, self.settings.frozen_until, self.folder)
        measured = read_json(self.folder / "trust.json") if "trust" in self.done else {}
        if "clip" in measured:  # absent: measured before ReAct, no cap
            set_ceiling(classifier, measured["clip"])
        return classifier

    @cached_property
    def frozen_outputs(self) -> tuple[Features, Features]:
        """The training and validation features of the frozen bottom, from the cache or computed into it."""
        frozen_until = self.settings.frozen_until
        frozen, key = bottom(self.classifier, frozen_until), f"{self.settings.weights_id}@{frozen_until}"
        views = self.config.augment_views + 1 if self.config.augment else 1
        images = views * len(self.dataset.splits["train"]) + len(self.dataset.splits["valid"])
        litert = bottom_file(self.config, self.variant, key) if uses_litert(self.config, frozen_until, images) else None
        train = training_features(frozen, self.config, self.dataset, self.variant, key, litert)
        return train, extract(frozen, self.config, self.dataset, self.variant, key, "valid", litert=litert)

    # The steps: each writes its outputs and returns what `state.json` records beside its time.

    def step_features(self) -> dict:
        """Compute the features into the cache (a rerun or another run on the data reads them there)."""
        train, valid = self.frozen_outputs
        return {"train_features": len(train.labels), "valid_features": len(valid.labels)}  # views included

    def step_head(self) -> dict:
        """Phase 1: the head on the pooled features; its weights in head.weights.h5."""
        (train, valid), start = self.frozen_outputs, time.perf_counter()
        with self.strategy.scope():
            history = train_head(self.classifier, (train.pooled, train.labels), (valid.pooled, valid.labels), self.config)
        with atomic_path(self.folder / "head.weights.h5") as temporary:
            head(self.classifier).save_weights(temporary)
        best = int(np.argmin(history["val_loss"]))
        print(f"  phase 1: head trained {len(history['loss'])} epochs, best valid accuracy "
              f"{history['val_accuracy'][best]:.3f} ({time.perf_counter() - start:.0f} s)")
        return {"history": history}

    def step_fine_tune(self) -> dict:
        """Phase 2: the top blocks on the cached activations (see `training.finetune`)."""
        if not self.config.fine_tune:
            return {"history": []}
        train, valid = self.frozen_outputs
        with self.strategy.scope():
            history = fine_tune(self.classifier, (train.activations, train.labels), (valid.activations, valid.labels),
                                self.config, self.settings.frozen_until, self.settings.fine_tune_learning_rate,
                                self.folder)
        return {"history": history}

    def step_trust(self) -> dict:
        """Temperature and "not sure" threshold (`training.trust`), in trust.json for export."""
        train, valid = self.frozen_outputs
        plain = len(self.dataset.splits["train"])  # view 0: the training images as they are
        frozen_until, batch_size = self.settings.frozen_until, self.config.batch_size
        train_pooled, valid_pooled = trust.pooled_features(self.classifier, frozen_until,
                                                           [train.activations[:plain], valid.activations], batch_size)
        head = trust.cap_head(self.classifier, train_pooled)  # before the looks: the app sees the capped model
        seen = trust.Seen.of(self.looks("valid"))
        measured, predictions, bank = trust.measure((train_pooled, train.labels[:plain]), (valid_pooled, valid.labels),
                                                    head, seen, len(self.dataset.classes), self.config.seed)
        write_arrays(self.folder / trust.PREDICTIONS_FILE, **predictions.arrays())
        with atomic_path(self.folder / BANK_FILE) as temporary, open(temporary, "wb") as file:
            np.save(file, bank)
        write_json(self.folder / "trust.json", measured)
        served = measured["scores"].get(measured["score"], {})
        print(f"  ReAct ceiling {measured['clip']:.3f}, temperature {measured['temperature']:.2f}; "
              f"held-out species: AUROC {served.get('auroc', float('nan')):.3f}, "
              f"FPR@95TPR {served.get('fpr95', float('nan')):.1%}")
        return {}

    def step_evaluate(self) -> dict:
        """Test the classifier, save it and every result file; its table row goes to the state."""
        classifier, folder, samples = self.classifier, self.folder, self.dataset.splits["test"]
        test = image_dataset(samples, self.variant.size, batch_size=32)
        probabilities = classifier.predict(test, verbose=0)
        labels = np.array([sample.label for sample in samples])
        scores = metrics(labels, probabilities, self.dataset.classes)
        measured = read_json(folder / "trust.json")
        served = measured["scores"].get(measured["score"], {})

        with atomic_path(folder / "model.keras") as temporary:
            classifier.save(temporary)
        write_json(folder / LABELS_FILE, self.dataset.classes)
        write_arrays(folder / TEST_PREDICTIONS, probabilities=probabilities)
        write_confusion(folder, labels, probabilities.argmax(axis=1), self.dataset.classes)
        write_curves(folder, self.done["head"]["history"], self.done["fine_tune"]["history"])

        seconds = {step: self.done[step]["seconds"] for step in ("features", "head", "fine_tune")}
        timing = {"extract_s": seconds["features"], "head_s": seconds["head"],
                  "phase1_s": seconds["features"] + seconds["head"], "phase2_s": seconds["fine_tune"]}
        summary = {
            "backbone": self.variant.id,
            "top1": scores["top1"], "top5": scores["top5"], "macro_f1": scores["macro_f1"],
            "params_total": int(classifier.count_params()),
            "params_trainable": int(sum(np.prod(w.shape) for w in classifier.trainable_weights)),
            "size_mb": (folder / "model.keras").stat().st_size / 1e6,
            "phase1_s": timing["phase1_s"], "phase2_s": timing["phase2_s"],
            "train_s": timing["phase1_s"] + timing["phase2_s"],
            "latency_ms": latency_ms(classifier, next(iter(test))[0].numpy()),
            # Calibration of the probabilities the app shows: both passes of each test image.
            **trust.calibration_on_test(scaled_probabilities(trust.Seen.of(self.looks("test")).logits), labels,
                                        measured["temperature"]),
            # Held-out species (leave-species-out) by the served score; None below three classes.
            "unknown_auroc": served.get("auroc"), "unknown_fpr95": served.get("fpr95"),
            "stand_in_weights": is_stand_in(self.weights),  # random weights: accuracy meaningless
        }
        write_json(folder / "metrics.json", {"summary": summary, "test": scores, "timing": timing})
        print(f"  test top-1 {scores['top1']:.3f}, top-5 {scores['top5']:.3f}, macro-F1 {scores['macro_f1']:.3f}")
        return {"summary": summary}

    # After the steps: a field set, measured on the saved model (a finished run included).

    def looks(self, split: str) -> list[second_look.Look]:
        """The split's images as the app sees an upload: decoded for a crop, looked at whole and
        at the crop around the evidence (`training.model.served_looks`)."""
        size = (self.variant.size, self.variant.size)
        images = (second_look.decode(sample.path, size, str(sample.path)) for sample in self.dataset.splits[split])
        return list(served_looks(self.classifier, images))

    def field_answers(self, field_set: field.FieldSet) -> field.Answers:
        """The trained classifier's answers to every field photo, as the app would give them (whole
        photo and second look, `field.answers`): probabilities, and unknown scores by the served
        settings of trust.json (None for a backbone trained by an older version, which lacks it).
        Kept under the set's fingerprint and trust.json's (with `field.ANSWERS_FORMAT`), so that a
        rerun, or another table, reads them there, and a trust step done again, or a version that
        keeps or scores answers otherwise, measures them again."""
        settings = self.served_settings()
        key = digest({"served": settings, "format": field.ANSWERS_FORMAT})
        path = self.folder / f"field-answers-{field_set.fingerprint()}-{key}.npz"
        if not path.is_file():
            bank = np.load(self.folder / BANK_FILE) if settings and settings["score"] in answer.NEEDS_BANK else None
            size = (self.variant.size, self.variant.size)
            images = (second_look.decode(photo.path, size, str(photo.path)) for photo in field_set.photos)
            answers = field.answers(served_looks(self.classifier, images), settings, bank)
            write_arrays(path, probabilities=answers.probabilities, looks=answers.looks,
                         **({} if answers.scores is None else {"scores": answers.scores}))
        with np.load(path) as saved:
            return field.Answers(saved["probabilities"], saved["looks"], saved.get("scores"))

    def served_settings(self) -> dict | None:
        """What the app would score with (`answer.served` of trust.json), or None for a backbone
        trained before trust.json."""
        measured = self.folder / "trust.json"
        return answer.served(read_json(measured)) if measured.is_file() else None

    def field_columns(self, field_set: field.FieldSet, answers: field.Answers) -> dict[str, float | None]:
        """This backbone's field columns; the unknown and answer ones from its served scores at
        trust.json's threshold (empty for a backbone trained before trust.json)."""
        settings = self.served_settings()
        columns = field.measure(field_set, answers.probabilities, answers.scores, settings and settings["threshold"])
        print(f"  field set, as the app answers: top-1 {columns['field_top1']:.3f}" + (
            "" if columns["field_unknown_auroc"] is None else
            f", unknown species AUROC {columns['field_unknown_auroc']:.3f}, FPR@95TPR {columns['field_unknown_fpr95']:.1%}")
            + ("" if columns["field_answered"] is None else
               f"; at the threshold {columns['field_answered']:.1%} of known photos answered"))
        return columns
