"""Species held out of training altogether: the whole recipe trained without them, then shown them.

The trust step (`training.trust`) measures unknown species cheaply: for each of its folds it
refits a linear head on the kept classes' features. Those features come from the backbone that
was fine-tuned on every class, the held-out ones included, so its figure is optimistic for a
fine-tuned model. This bench pays for the honest figure, one fold at a time: it trains the
default recipe (`python -m training compare`, both phases and the trust step) on the dataset
without the fold's species, as a user whose dataset never had them would, then shows the model
those species:

- the dataset's own images: the held-out species' images (every split) against the kept
  species' test images, each answered by `python -m training predict` (the app's answer: whole
  photo, second look, calibrated probabilities, the served unknown score): AUROC and FPR at 95%
  TPR of the served score, and at the model card's threshold the share of known images answered,
  the accuracy of those answers and the share of held-out ones answered "not sure";
- the field set, when there is one (`--field`, default leeds-field): measured by `compare` with
  its mapping changed so that the fold's species are unknown too. Their field photos then join the
  field set's own unknown species: look-alikes of the kept species among them.

Beside each fold: what the trust step of the same run claims (its own folds among the kept
species), and what the full run's (bench/results/cold, every species trained on) claims.

The fold's species are the trust step's own fold (`training.unknown.species_folds`, the config's
seed), so fold 0 here is fold 0 there. The dataset is read in place: the fold's dataset is a
folder of links to the kept class folders, under bench/results/held-out (git-ignored), with the
runs. `compare` resumes a run that stopped; `predict` is run again each time (a few minutes).

Run from the repository root: `.venv/bin/python bench/held_out.py` (every fold; `--folds 0` for
one: 20 to 30 minutes per fold for the default backbone on 2 CPU cores); it records its section
of docs/BENCHMARKS.md (`--no-record` to print it instead).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import paths  # bench/paths.py and bench/sections.py: this script's folder is first on sys.path
import sections

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from training import unknown  # noqa: E402  (numpy and scikit-learn: no TensorFlow in this process)
from training.config import Config  # noqa: E402

WORK = ROOT / "bench" / "results" / "held-out"
CACHE = ROOT / "bench" / "results" / "cache"  # the feature cache of bench/train_compare.py's runs
FULL = ROOT / "bench" / "results" / "cold"  # the full run (bench/train_compare.py): what the trust step claims with every species
FIELD = Path("../shared/datasets/leeds-field")
BACKBONE = "mobilenetv2:0.5"  # the config's best backbone (docs/BENCHMARKS.md, comparison table)
SPLITS = ("train", "valid", "test")
WEAK_AUROC = 0.95  # held-out species below this, each alone, are listed with the species they pass for


def held_out_classes(data: Path, seed: int) -> tuple[list[str], list[list[str]]]:
    """The dataset's classes and the trust step's folds of held-out species (names), for `seed`."""
    missing = [split for split in SPLITS if not (data / split).is_dir()]
    if missing:
        sys.exit(f"{paths.shown(data)}: no {'/, '.join(missing)}/ folder; holding species out needs train/ valid/ test/")
    classes = sorted(entry.name for entry in (data / "train").iterdir() if entry.is_dir())
    held_out, folds = unknown.folds_for(len(classes))
    if folds < 1:
        sys.exit(f"{paths.shown(data)}: {len(classes)} classes; holding species out needs at least 3")
    return classes, [[classes[i] for i in fold] for fold in unknown.species_folds(len(classes), held_out, folds, seed)]


def link_classes(data: Path, classes: list[str], folder: Path) -> None:
    """`folder` as a dataset of `classes` only: links to their folders in every split of `data`."""
    for split in SPLITS:
        (folder / split).mkdir(parents=True, exist_ok=True)
        for name in classes:
            if not (folder / split / name).is_symlink():
                (folder / split / name).symlink_to((data / split / name).resolve(), target_is_directory=True)


def link_images(data: Path, splits: tuple[str, ...], classes: list[str], folder: Path) -> None:
    """Links to every file of `classes` in `splits` of `data`, as `folder`/<split>/<class>/<file>
    (a nested file's path flattened into its name): what `predict` reads, as it does not descend
    into linked folders, and says the class of."""
    for split in splits:
        for name in classes:
            (folder / split / name).mkdir(parents=True, exist_ok=True)
            for image in sorted(p for p in (data / split / name).rglob("*") if p.is_file()):
                link = folder / split / name / "_".join(image.relative_to(data / split / name).parts)
                if not link.is_symlink():
                    link.symlink_to(image.resolve())


def fold_mapping(field: Path, held: list[str], out: Path) -> Path:
    """The field set's mapping with the fold's species set to null (unknown), written to `out`."""
    mapping = json.loads((field / "mapping.json").read_text(encoding="utf-8"))
    out.write_text(json.dumps({folder: None if name in held else name for folder, name in mapping.items()}, indent=1),
                   encoding="utf-8")
    return out


def run(*args: str, quiet: bool = False) -> None:
    """`python -m training ...` as a user runs it, its progress and messages shown (`quiet`: what it
    prints on stdout left out); a failure stops the bench, the command's own message above."""
    command = [sys.executable, "-m", "training", *args]
    print("$ python", " ".join(paths.shown(Path(a)) if os.path.isabs(a) else a for a in command[1:]), file=sys.stderr)
    done = subprocess.run(command, cwd=ROOT, stdout=subprocess.DEVNULL if quiet else None)
    if done.returncode:
        sys.exit(f"python -m training {args[0]} failed (exit status {done.returncode}): its message is above")


def answers(model: Path, images: Path, out: Path) -> list[dict]:
    """`predict`'s CSV rows for every image under `images`, each with its true class (its folder's name)."""
    run("predict", "--model", str(model), str(images), "--output", str(out), quiet=True)  # a line per image
    with open(out, newline="", encoding="utf-8") as file:
        rows = list(csv.DictReader(file))
    failed = [row["image"] for row in rows if row["error"]]
    if failed:
        sys.exit(f"{out}: {len(failed)} images could not be read, e.g. {failed[0]}")
    return [{**row, "class": Path(row["image"]).parent.name, "score": float(row["score"])} for row in rows]


def measured(known: list[dict], held: list[dict]) -> dict[str, float]:
    """The served score on held-out species vs known ones, and the answers at the card's threshold."""
    known_scores, held_scores = (np.array([row["score"] for row in rows]) for rows in (known, held))
    answered = [row for row in known if row["answer"] != "not sure"]
    return {"auroc": unknown.auroc(known_scores, held_scores), "fpr95": unknown.fpr_at_tpr(known_scores, held_scores),
            "answered": len(answered) / len(known),
            "right": sum(row["answer"] == row["class"] for row in answered) / max(1, len(answered)),
            "not_sure": sum(row["answer"] == "not sure" for row in held) / len(held),
            "known": len(known), "held": len(held)}


def per_species(known: list[dict], held: list[dict]) -> list[dict]:
    """Each held-out species alone against the known images: AUROC, "not sure" share, and the
    known species it is most often named as (`top1`, whatever the answer), weakest first."""
    known_scores = np.array([row["score"] for row in known])
    species = []
    for name in sorted({row["class"] for row in held}):
        rows = [row for row in held if row["class"] == name]
        named = [row["top1"] for row in rows]
        twin = max(sorted(set(named)), key=named.count)
        species.append({"species": name, "images": len(rows),
                        "auroc": unknown.auroc(known_scores, np.array([row["score"] for row in rows])),
                        "not_sure": sum(row["answer"] == "not sure" for row in rows) / len(rows),
                        "named": twin, "named_count": named.count(twin)})
    return sorted(species, key=lambda entry: entry["auroc"])


def trust_claim(model: Path) -> dict[str, float]:
    """What a backbone folder's trust step says of its served score on its own held-out species."""
    trust = json.loads((model / "trust.json").read_text(encoding="utf-8"))
    return trust["scores"][trust["score"]]


def fold(config: Path, data: Path, field: Path | None, backbone: str, index: int, held: list[str],
         classes: list[str]) -> dict:
    """Train the recipe without fold `index`'s species (or resume it), then measure it."""
    dataset, run_name = WORK / f"fold{index}-data", f"fold{index}"
    link_classes(data, [name for name in classes if name not in held], dataset)
    link_images(data, ("test",), [name for name in classes if name not in held], WORK / f"fold{index}-known")
    link_images(data, SPLITS, held, WORK / f"fold{index}-held")
    field_options = (["--field-data", str(field / "images"),
                      "--field-map", str(fold_mapping(field, held, WORK / f"fold{index}-mapping.json"))]
                     if field else [])
    run("compare", "--config", str(config), "--data", str(dataset), "--backbones", backbone, "--run", run_name,
        "--output-dir", str(WORK), "--cache-dir", str(CACHE), *field_options)
    row = next(row for row in json.loads((WORK / run_name / "comparison.json").read_text()) if not row.get("ensemble"))
    model = WORK / run_name / row["backbone"]
    known = answers(model, WORK / f"fold{index}-known", WORK / f"fold{index}-known.csv")
    unseen = answers(model, WORK / f"fold{index}-held", WORK / f"fold{index}-held.csv")
    return {"fold": index, "held": held, "backbone": row["backbone"], "top1": row["top1"],
            "served": measured(known, unseen), "species": per_species(known, unseen), "claimed": trust_claim(model),
            "field": row if field else None}


def percent(value: float | None) -> str:
    """A share as the comparison table shows it (`training.report`, which imports TensorFlow): "–" for none."""
    return "–" if value is None else f"{value:.1%}"


def report(results: list[dict], field: Path | None, command: str) -> str:
    """The section: per fold, the honest figures beside what the trust steps claim."""
    full = FULL / results[0]["backbone"]
    full_claim = trust_claim(full) if (full / "trust.json").is_file() else None
    lines = [
        "## Species held out of training altogether (`bench/held_out.py`)",
        "",
        f"Measured {time.strftime('%Y-%m-%d')}. The default recipe (`compare`, both phases) trained on butterflies50 "
        "without one fold's species (the trust step's own fold, same seed), then shown them: each image answered by "
        "`predict` as the app answers it. Known: the kept species' test images; held out: every image of the fold's "
        "species. \"Claimed\": the trust step's figure for the served score, which refits a head on features of a "
        "backbone fine-tuned with its held-out species (this run's: among the kept species; the full run's: "
        f"{paths.shown(FULL)}, every species trained on, mean of its folds). At the model card's threshold: the "
        "share of known images answered, of those answers right, and of held-out ones answered \"not sure\".",
        "",
        "| fold | species held out | test top-1 (kept species) | held out: AUROC / FPR@95 | claimed by this run's "
        "trust step | claimed by the full run's | answered / right / held out \"not sure\" |",
        "|---|---|---|---|---|---|---|",
    ]
    for result in results:
        served, claimed = result["served"], result["claimed"]
        lines.append(
            f"| {result['fold']} ({result['backbone']}) | {', '.join(result['held'])} | {result['top1']:.1%} | "
            f"{served['auroc']:.3f} / {served['fpr95']:.1%} | {claimed['auroc']:.3f} / {claimed['fpr95']:.1%} | "
            + (f"{full_claim['auroc']:.3f} / {full_claim['fpr95']:.1%}" if full_claim else "–")
            + f" | {served['answered']:.1%} / {served['right']:.1%} / {served['not_sure']:.1%} |")
    lines += ["", f"Images: {results[0]['served']['known']} known, "
              + ", ".join(f"fold {r['fold']}: {r['served']['held']} held out" for r in results) + "."]
    if len(results) > 1:
        lines += ["", "Mean over the folds: held out AUROC {:.3f} / FPR@95 {:.1%}; answered / right / held out "
                  "\"not sure\" {:.1%} / {:.1%} / {:.1%}.".format(
                      *(np.mean([r["served"][key] for r in results])
                        for key in ("auroc", "fpr95", "answered", "right", "not_sure")))]
    weak = [(r["fold"], entry) for r in results for entry in r["species"] if entry["auroc"] < WEAK_AUROC]
    lines += ["", f"Held-out species told apart from the known ones with AUROC under {WEAK_AUROC:g}, each alone, and "
              "the known species their images are most often named as:", "",
              "| fold | species held out | images | AUROC | \"not sure\" | mostly named as |", "|---|---|---|---|---|---|",
              *(f"| {index} | {e['species']} | {e['images']} | {e['auroc']:.3f} | {e['not_sure']:.1%} | "
                f"{e['named']} ({e['named_count']} of {e['images']}) |" for index, e in weak)] if weak else [
              "", f"Every held-out species alone: AUROC {WEAK_AUROC:g} or more."]
    if field:
        lines += [
            "",
            f"### {paths.shown(field)}, the fold's species unknown too",
            "",
            "The field set's mapping with the fold's species set to unknown: their field photos join its own unknown "
            "species (`compare --field-data`, as in the comparison table).",
            "",
            "| fold | field top-1 (kept species) | field unknown AUROC / FPR@95 | answered / right / unknown \"not sure\" |",
            "|---|---|---|---|",
        ]
        for result in results:
            row = result["field"]
            auroc = "–" if row["field_unknown_auroc"] is None else f"{row['field_unknown_auroc']:.3f}"
            lines.append(f"| {result['fold']} | {percent(row['field_top1'])} | {auroc} / "
                         f"{percent(row['field_unknown_fpr95'])} | {percent(row['field_answered'])} / "
                         f"{percent(row['field_right'])} / {percent(row['field_not_sure'])} |")
    lines += sections.reproduce(command)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    paths.add_options(parser)
    parser.add_argument("--backbone", default=BACKBONE, help="the backbone to train (default: %(default)s)")
    parser.add_argument("--folds", default=None,
                        help="comma-separated folds of the trust step to hold out, e.g. 0 (default: every fold)")
    parser.add_argument("--field", type=Path, default=FIELD,
                        help="a field set: images/ of class folders and mapping.json (default: leeds-field; "
                             "skipped with a note when absent)")
    parser.add_argument("--no-record", action="store_true", help="print the section instead of recording it")
    args = parser.parse_args(argv)
    data = paths.folder(args.config, "data")
    field = ROOT / args.field
    field = field if (field / "mapping.json").is_file() and (field / "images").is_dir() else None
    seed = paths.settings(args.config).get("seed", Config.seed)
    classes, folds = held_out_classes(data, seed)
    try:
        chosen = list(range(len(folds))) if args.folds is None else [int(index) for index in args.folds.split(",")]
    except ValueError:
        sys.exit(f"--folds {args.folds}: not comma-separated numbers")
    if not all(0 <= index < len(folds) for index in chosen):
        sys.exit(f"--folds {args.folds}: {paths.shown(data)} has folds 0 to {len(folds) - 1}")
    print(f"{paths.shown(args.config)}: data {paths.shown(data)}; field set: "
          f"{paths.shown(field) if field else f'none ({args.field} has no images/ and mapping.json)'}; runs written "
          f"to {paths.shown(WORK)}", file=sys.stderr)
    for index in chosen:
        print(f"fold {index}: {', '.join(folds[index])}", file=sys.stderr)
    if args.dry_run:
        return
    results = [fold(args.config, data, field, args.backbone, index, folds[index], classes) for index in chosen]
    (WORK / "held_out.json").write_text(json.dumps(results, indent=1), encoding="utf-8")
    section = report(results, field, " ".join([".venv/bin/python bench/held_out.py", *(argv or sys.argv[1:])]))
    print(section)
    if not args.no_record:
        sections.record("held_out", section)


if __name__ == "__main__":
    main()
