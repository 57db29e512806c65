"""Every option of every subcommand, used for real: each row of `ROWS` is one invocation and
checks an effect of its options, and `test_every_option_is_used` reads the parser and fails
on any option no row uses (so a new option needs a row).

Cheap by design: two small compare runs (32x32, stand-in weights or none, 1-2 epochs) share
most options, and predict and export reuse the session's `trained_run`. Rows run in this
process (`training.__main__.main`), in a scratch folder, so default paths land there.
"""

from __future__ import annotations

import argparse
import csv
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import pytest
from field_sets import app_answers, field_photos, make_field_set, predict
from sessions import once_per_session
from shapes import make_dataset

from training.__main__ import build_parser, main
from training.standin import is_stand_in, write_all


@dataclass(frozen=True)
class Outcome:
    code: int
    stdout: str
    places: dict[str, Path]

    def backbone(self, run: str, backbone: str, name: str) -> dict:
        return json.loads((self.places["cwd"] / run / backbone / name).read_text())


@dataclass(frozen=True)
class Row:
    args: tuple[str, ...]  # with {placeholders} for the `places` fixture's paths, and {trained}: `trained_run`
    check: Callable[[Outcome], None]
    heavy: bool = False  # a training run: scheduled first (tests/conftest.py)


def transfer_run(out: Outcome) -> None:
    """Every training option at once, on stand-in ImageNet weights found through --weights-dir."""
    run = out.places["cwd"] / "runs" / "named"  # --output-dir, --run
    config = out.backbone("runs/named", "mobilenet_0.25", "config.json")  # --backbones
    assert config["weights"] == str(out.places["standins"] / "mobilenet_2_5_224_tf_no_top.h5")  # --weights-dir
    assert config["input_size"] == [32, 32]  # --image-size
    assert config["frozen_until"] == "conv_pw_12_relu"  # --frozen-until (the registry's: conv_pw_11_relu)
    settings = config["settings"]
    assert settings["dropout"] == 0.3 and settings["head_patience"] == 5  # --config
    assert (settings["batch_size"], settings["seed"], settings["label_smoothing"]) == (8, 5, 0.3)
    assert (settings["head_learning_rate"], settings["fine_tune_learning_rate"]) == (0.01, 1e-3)
    assert config["fine_tune_learning_rate"] == pytest.approx(2e-3)  # the registry's 2x for MobileNet
    assert (settings["mixed_precision"], settings["strategy"]) == (True, "mirrored")
    assert settings["field_share"] == 0.5  # --field-share
    steps = out.backbone("runs/named", "mobilenet_0.25", "state.json")["steps"]
    assert len(steps["head"]["history"]["loss"]) == 2  # --head-epochs
    assert len(steps["fine_tune"]["history"]) == 1  # --fine-tune-epochs
    assert steps["features"]["train_features"] == 3 * 12  # --augment-views 2: each image plus two views
    cache = sorted(p.name for p in (out.places["cwd"] / "cache").iterdir())  # --cache-dir
    assert [name.split("-")[2] for name in cache if "-train-" in name] == ["view0", "view1", "view2"]
    assert not [name for name in cache if name.endswith(".tflite")]  # --extract-engine keras: no LiteRT bottom
    model = keras.models.load_model(run / "mobilenet_0.25" / "model.keras")
    assert model.get_layer("backbone").layers[1].dtype_policy.name == "mixed_float16"  # --mixed-precision
    assert model.output.dtype == "float32"  # while the probabilities stay float32
    assert model.input.shape[1:] == (32, 32, 3)


def plain_run(out: Outcome) -> None:
    """Phase 1 alone, no augmentation, LiteRT extraction; one backbone from its own file, one from
    scratch; a field set, measured for both backbones and their ensemble."""
    mobilenet = out.backbone("runs2/data", "mobilenet_0.25", "config.json")
    assert mobilenet["weights"] == str(out.places["standins"] / "mobilenet_2_5_224_tf_no_top.h5")  # --weights-file
    assert out.backbone("runs2/data", "mobilenetv2_0.35", "config.json")["weights"] == "none"  # --weights none
    for backbone in ("mobilenet_0.25", "mobilenetv2_0.35"):
        steps = out.backbone("runs2/data", backbone, "state.json")["steps"]
        assert steps["features"]["train_features"] == 12  # --no-augment: no augmented views
        assert steps["fine_tune"]["history"] == []  # --no-fine-tune
        assert not (out.places["cwd"] / "runs2" / "data" / backbone / "finetune_log.csv").exists()
    bottoms = list((out.places["cwd"] / ".cache" / "features").glob("mobilenet_0.25-bottom-*.tflite"))
    assert len(bottoms) == 1  # --extract-engine litert: the frozen bottom runs as a LiteRT file
    # The file was really used: phase 1 alone leaves the backbone exactly as the file had it.
    standin = keras.applications.MobileNet(alpha=0.25, include_top=False, input_shape=(32, 32, 3), weights=mobilenet["weights"])
    model = keras.models.load_model(out.places["cwd"] / "runs2" / "data" / "mobilenet_0.25" / "model.keras")
    backbone = model.get_layer("backbone")
    for name in ("conv1", "conv_pw_13"):
        for saved, loaded in zip(backbone.get_layer(name).get_weights(), standin.get_layer(name).get_weights()):
            np.testing.assert_array_equal(saved, loaded)
    field_and_ensemble(out.places["cwd"] / "runs2" / "data", out.places["field"], out.places["field_map"])


def field_and_ensemble(run: Path, images: Path, mapping: Path) -> None:
    """--field-data, --field-map: field top-1 per backbone, and the ensemble row (last, unranked, never
    best) of both, as their saved models run by hand give them (test images whole, field photos as
    the app answers them)."""
    *rows, combined = json.loads((run / "comparison.json").read_text())
    assert [row["rank"] for row in rows] == [1, 2] and [row["best"] for row in rows] == [True, False]
    assert combined["backbone"] == "ensemble of mobilenet_0.25 + mobilenetv2_0.35"
    assert (combined["ensemble"], combined["rank"], combined["best"]) == (True, None, False)
    assert combined["latency_ms"] == pytest.approx(sum(row["latency_ms"] for row in rows))
    split = json.loads((run / "run.json").read_text())
    classes = json.loads((run / "mobilenet_0.25" / "labels.json").read_text())
    tests = [Path(path) for path in split["splits"]["test"]]
    photos, labels = field_photos(images, mapping, classes)
    known = labels >= 0
    test_probabilities, field_probabilities = [], []
    for row in rows:
        test_probabilities.append(predict(run / row["backbone"], tests))
        field_probabilities.append(app_answers(run / row["backbone"], photos)[0])
        assert row["field_top1"] == pytest.approx(np.mean(field_probabilities[-1][known].argmax(1) == labels[known]))
        assert 0 <= row["field_unknown_auroc"] <= 1
    test_labels = np.array([classes.index(name) for name in split["labels"]["test"]])
    assert combined["top1"] == pytest.approx(np.mean(np.mean(test_probabilities, axis=0).argmax(1) == test_labels))
    field_top1 = np.mean(np.mean(field_probabilities, axis=0)[known].argmax(1) == labels[known])
    assert combined["field_top1"] == pytest.approx(field_top1)
    assert "| ensemble | ensemble of mobilenet_0.25 + mobilenetv2_0.35 |" in (run / "comparison.md").read_text()


def stand_in(out: Outcome) -> None:
    [path] = [Path(line) for line in out.stdout.splitlines()]  # --backbones: that one file only
    assert path == Path("standins-row") / "mobilenet_2_5_224_tf_no_top.h5"
    assert is_stand_in(path)
    assert path.read_bytes() != (out.places["standins"] / path.name).read_bytes()  # --seed 3, not 0


def top_two(out: Outcome) -> None:
    lines = out.stdout.strip().splitlines()
    classes = [line.split("%  ")[1] for line in lines if "%  " in line]  # "  97.12%  red circle"
    assert lines[0].endswith("0.jpg") and len(classes) == 2  # the image, then --top-k 2 classes
    assert set(classes) <= {"red circle", "green square", "blue triangle"}


def renamed_csv(out: Outcome) -> None:
    with open(out.places["cwd"] / "out" / "predictions.csv") as file:  # --output
        rows = list(csv.DictReader(file))
    assert len(rows) == 6 and "top3" in rows[0] and "top4" not in rows[0]  # 3 classes: top-3 by default
    assert all("Red Circle (shown)" in (row["top1"], row["top2"], row["top3"]) for row in rows)  # --names
    assert not any("red circle" in row.values() for row in rows)


def float16_card(out: Outcome) -> None:
    card = json.loads((out.places["cwd"] / "deploy16" / "model_card.json").read_text())  # --out
    assert card["quantization"] == "float16" and card["source"] == str(out.places["trained"] / "vgg16")  # --model


def best_card(out: Outcome) -> None:
    card = json.loads((out.places["cwd"] / "deploy-best" / "model_card.json").read_text())
    table = json.loads((out.places["trained"] / "comparison.json").read_text())
    [best] = [row["backbone"] for row in table if row["best"]]
    assert card["backbone"] == best and card["quantization"] == "float32"  # --run with --best


def dataset_report(out: Outcome) -> None:
    assert "3 classes" in out.stdout and "train:     12 images" in out.stdout


def help_of(command: str) -> Callable[[Outcome], None]:
    def check(out: Outcome) -> None:
        assert out.stdout.startswith(f"usage: python -m training {command}".rstrip())
        for name, options in parser_options():
            if name == command:
                assert options[-1] in out.stdout
    return check


ROWS = [
    Row(("compare", "--config", "{config}", "--data", "{data}", "--backbones", "mobilenet:0.25", "--run", "named",
         "--output-dir", "runs", "--cache-dir", "cache", "--weights-dir", "{standins}", "--image-size", "32",
         "--batch-size", "8", "--seed", "5", "--head-epochs", "2", "--label-smoothing", "0.3",
         "--head-learning-rate", "0.01", "--fine-tune-epochs", "1", "--fine-tune-learning-rate", "1e-3",
         "--augment-views", "2", "--field-share", "0.5", "--extract-engine", "keras", "--mixed-precision", "--strategy",
         "mirrored", "--frozen-until", "mobilenet:0.25=conv_pw_12_relu"), transfer_run, heavy=True),
    Row(("compare", "--data", "{data}", "--backbones", "mobilenet:0.25,mobilenetv2:0.35", "--output-dir", "runs2",
         "--weights", "none", "--weights-file", "mobilenet:0.25={standins}/mobilenet_2_5_224_tf_no_top.h5",
         "--image-size", "32", "--head-epochs", "1", "--no-augment", "--no-fine-tune", "--extract-engine", "litert",
         "--field-data", "{field}", "--field-map", "{field_map}"), plain_run, heavy=True),
    Row(("stand-in-weights", "standins-row", "--backbones", "mobilenet:0.25", "--seed", "3"), stand_in),
    Row(("check-data", "{data}"), dataset_report),
    Row(("predict", "--model", "{trained}/vgg16", "{data}/test/red circle/0.jpg", "--top-k", "2"), top_two),
    Row(("predict", "--model", "{trained}/vgg16", "{data}/test", "--names", "{names}", "--output", "out/predictions.csv"),
        renamed_csv),
    Row(("export", "--model", "{trained}/vgg16", "--quantize", "float16", "--out", "deploy16"), float16_card),
    Row(("export", "--run", "{trained}", "--best", "--out", "deploy-best"), best_card),
    Row(("--help",), help_of("")),
    Row(("compare", "--help"), help_of("compare")),
    Row(("check-data", "-h"), help_of("check-data")),
    Row(("predict", "--help"), help_of("predict")),
    Row(("export", "--help"), help_of("export")),
    Row(("stand-in-weights", "--help"), help_of("stand-in-weights")),
]


def parser_options() -> list[tuple[str, tuple[str, ...]]]:
    """(subcommand, option strings of one option) for every option; "" is the program itself.
    argparse keeps its actions in `_actions`: it has no public way to list them."""
    parser = build_parser()
    [commands] = [action for action in parser._actions if isinstance(action, argparse._SubParsersAction)]
    found = [("", tuple(action.option_strings)) for action in parser._actions if action.option_strings]
    for name, subparser in commands.choices.items():
        found += [(name, tuple(action.option_strings)) for action in subparser._actions if action.option_strings]
    return found


def uses(row: Row, command: str, options: tuple[str, ...]) -> bool:
    if (row.args[0] if not row.args[0].startswith("-") else "") != command:
        return False
    return any(arg == option or arg.startswith(f"{option}=") for arg in row.args for option in options)


def test_every_option_is_used():
    unused = [f"{command} {options[-1]}".strip() for command, options in parser_options()
              if not any(uses(row, command, options) for row in ROWS)]
    assert not unused, f"options no row of ROWS uses: {', '.join(unused)}"


@pytest.fixture(scope="module")
def places(request, tmp_path_factory) -> dict[str, Path]:
    """The rows' inputs, made once per session (`sessions`: rows only read them), and a working
    folder of this worker's own for what they write."""

    def build(root: Path) -> None:
        write_all(root / "standins", ["mobilenet:0.25"], seed=0)
        (root / "config.toml").write_text("dropout = 0.3\nhead_patience = 5\n")
        (root / "names.json").write_text(json.dumps({"red circle": "Red Circle (shown)"}))
        make_field_set(root / "field")
        make_dataset(root / "data", counts=(4, 2, 2))

    root = once_per_session(request, "options", build)
    field, field_map = root / "field" / "images", root / "field" / "mapping.json"  # where make_field_set wrote them
    return {"data": root / "data", "standins": root / "standins", "field": field, "field_map": field_map,
            "config": root / "config.toml", "names": root / "names.json", "cwd": tmp_path_factory.mktemp("cwd")}


@pytest.fixture(autouse=True)
def float32_afterwards():
    """--mixed-precision sets Keras' global policy; later tests in this process expect float32."""
    yield
    keras.mixed_precision.set_global_policy("float32")


@pytest.mark.parametrize("row", [pytest.param(row, marks=[pytest.mark.heavy] if row.heavy else [],
                                              id=" ".join(row.args[:2]) + f"-{i}") for i, row in enumerate(ROWS)])
def test_option_has_its_effect(row, places, capsys, monkeypatch, request):
    if any("{trained}" in arg for arg in row.args):  # only these rows wait for the session's trained run
        places = {**places, "trained": request.getfixturevalue("trained_run")}
    monkeypatch.chdir(places["cwd"])
    argv = [arg.format(**places) for arg in row.args]
    capsys.readouterr()  # what training the session's run printed, when this test waited for it
    try:
        code = main(argv)
    except SystemExit as exit:  # --help
        code = exit.code
    captured = capsys.readouterr()
    assert code == 0, captured.err[-3000:]
    row.check(Outcome(code, captured.out, places))
