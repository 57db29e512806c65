"""Bad input to the command line: one clear line naming the option or file, exit status 2, nothing written.

Each row of `ROWS` is one invocation: its arguments (with `{placeholders}` for the files the
`places` fixture makes), and a phrase its error must contain. The rows run in this process
(`training.__main__.main`), so an unexpected exception fails the test with its traceback, and
the whole table costs one TensorFlow start-up; `test_checks_answer_without_tensorflow` runs a
few in fresh processes, as a user would.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from shapes import ROOT, draw, make_dataset

from training.__main__ import main

# A run whose every setting but the one a row breaks is good, save one: its weights file is
# missing, so that should a row's check not fire, the run stops there, before any training
# (and the row fails on its phrase). Rows that must get past the weights say --weights none.
BASE = ["compare", "--data", "{data}", "--output-dir", "{tmp}/runs", "--cache-dir", "{tmp}/cache", "--weights", "{tmp}/nope.h5"]
COMPARE = BASE + ["--backbones", "mobilenet:0.25", "--image-size", "32"]

ROWS = [  # (arguments, phrase the error names)
    # Numbers out of range, from options ...
    (COMPARE + ["--head-epochs", "-1"], "options: head_epochs must be at least 1, not -1"),
    (COMPARE + ["--fine-tune-epochs", "0"], "fine_tune_epochs must be at least 1"),
    (COMPARE + ["--batch-size", "0"], "batch_size must be at least 1, not 0"),
    (COMPARE + ["--head-learning-rate", "0"], "head_learning_rate must be above 0"),
    (COMPARE + ["--fine-tune-learning-rate=-1e-4"], "fine_tune_learning_rate must be above 0"),
    (COMPARE + ["--label-smoothing", "1"], "label_smoothing must be at least 0 and below 1, not 1.0"),
    (COMPARE + ["--augment-views", "-1"], "augment_views must be at least 0, not -1"),
    (COMPARE + ["--seed", "-3"], "seed must be from 0 to 2**32 - 1, not -3"),
    # ... and from a config file, with types TOML gets wrong easily.
    (BASE + ["--config", "{toml:dropout = 1.0}"], "dropout must be at least 0 and below 1"),
    (BASE + ["--config", '{toml:dropout = "high"}'], "dropout must be a number, not 'high'"),
    (BASE + ["--config", "{toml:rotation = 0.9}"], "rotation must be from 0 to 0.5"),
    (BASE + ["--config", "{toml:zoom = 1.0}"], "zoom must be at least 0 and below 1"),
    (BASE + ["--config", "{toml:translation = -0.1}"], "translation must be from 0 to 1"),
    (BASE + ["--config", "{toml:head_patience = -1}"], "head_patience must be at least 0"),
    (BASE + ["--config", "{toml:fine_tune_patience = 2.5}"], "fine_tune_patience must be a whole number, not 2.5"),
    (BASE + ["--config", "{toml:seed = 1.5}"], "seed must be a whole number, not 1.5"),
    (BASE + ["--config", '{toml:augment = "yes"}'], "augment must be true or false, not 'yes'"),
    (BASE + ["--config", '{toml:image_size = "32"}'], "image_size must be a whole number or unset, not '32'"),
    (BASE + ["--config", "{toml:split = [0.9, 0.1, 0.0]}"], "split must be three positive fractions adding to 1"),
    (BASE + ["--config", '{toml:backbones = "vgg16"}'], "backbones must be a list of strings, not 'vgg16'"),
    (BASE + ["--config", "{toml:backbones = []}"], "backbones is empty"),
    (BASE + ["--config", "{toml:epochs = 3}"], "unknown setting(s) epochs"),
    (BASE + ["--config", "{tmp}/missing.toml"], "cannot read the config file"),
    # Backbones: names, widths, sizes Keras cannot build, per-backbone files.
    (COMPARE + ["--backbones", "resnet18"], "unknown backbone 'resnet18'"),
    (COMPARE + ["--backbones", "vgg16,vgg16"], "backbones names vgg16 more than once"),
    (COMPARE + ["--image-size", "16"], "mobilenet needs images of at least 32x32 (image size 16 asked)"),
    (COMPARE + ["--backbones", "inceptionv3", "--image-size", "74"], "inceptionv3 needs images of at least 75x75"),
    (COMPARE + ["--weights-file", "mobilenet:0.5={file}"], "mobilenet_0.5 is not one of this run's backbones"),
    (COMPARE + ["--weights-file", "resnet18={file}"], "weight_files 'resnet18': unknown backbone"),
    (COMPARE + ["--weights-file", "mobilenet:0.25={tmp}/missing.h5"], "weights file {tmp}/missing.h5 does not exist"),
    (COMPARE + ["--weights-file", "mobilenet"], "--weights-file 'mobilenet': expected BACKBONE=PATH"),
    (COMPARE + ["--frozen-until", "mobilenet"], "--frozen-until 'mobilenet': expected BACKBONE=LAYER"),
    (COMPARE + ["--frozen-until", "vgg16=block4_pool"], "frozen_until 'vgg16': vgg16 is not one of this run's backbones"),
    (COMPARE + ["--weights-dir", "{tmp}/nowhere"], "weights_dir {tmp}/nowhere: no such folder"),
    (COMPARE + ["--extract-engine", "gpu"], "argument --extract-engine: invalid choice: 'gpu'"),
    (COMPARE + ["--image-size", "big"], "argument --image-size: invalid int value: 'big'"),
    # Places results cannot go.
    (COMPARE + ["--output-dir", "{file}"], "output_dir {file}: {file} is a file, not a folder"),
    (COMPARE + ["--output-dir", "{file}/runs"], "output_dir {file}/runs: {file} is a file, not a folder"),
    (COMPARE + ["--cache-dir", "{file}"], "cache_dir {file}: {file} is a file, not a folder"),
    (COMPARE + ["--output-dir", "{unwritable}/runs"], "cannot write in {unwritable}"),
    (COMPARE + ["--run", "afile", "--output-dir", "{tmp}"], "run {tmp}/afile: {file} is a file, not a folder"),
    # Datasets that cannot train anything meaningful.
    (COMPARE + ["--weights", "none", "--data", "{one_class}"], "only one class ('red circle')"),
    (COMPARE + ["--weights", "none", "--data", "{small_pool}"], "'blue triangle' has 4 usable image(s)"),
    (COMPARE + ["--weights", "none", "--data", "{tmp}/nodata"], "no such dataset folder"),
    (["check-data", "{one_class}"], "a classifier needs at least two class folders"),
    # A run folder trained with other settings: resuming it would mix two runs.
    (BASE + ["--backbones", "vgg16", "--weights", "none", "--run", "old"],
     "{tmp}/runs/old/vgg16 was trained with other settings (input_size, "),
    (["check-data", "{small_pool}"], "at this split each class needs at least 10"),
    # A field set: both options or neither, a folder and a mapping of its folders to classes.
    (COMPARE + ["--field-data", "{field}"], "options: field_data needs field_map"),
    (COMPARE + ["--field-map", "{field_map}"], "options: field_map needs field_data"),
    (COMPARE + ["--field-data", "{tmp}/nofield", "--field-map", "{field_map}"], "field_data {tmp}/nofield: no such folder"),
    (COMPARE + ["--field-data", "{field}", "--field-map", "{tmp}/nomap.json"], "field_map {tmp}/nomap.json: cannot read it"),
    (COMPARE + ["--field-data", "{field}", "--field-map", "{file}"], "field_map {file}: not valid JSON"),
    (COMPARE + ["--field-data", "{field}", "--field-map", '{json:{"a": "red circle", "c": null}}'],
     "names folder(s) 'c' that {field} does not have"),
    (COMPARE + ["--field-data", "{field}", "--field-map", '{json:{"a": "red circle"}}'], "does not map folder(s) 'b' of {field}"),
    (COMPARE + ["--field-data", "{field}", "--field-map", '{json:{"a": null, "b": null}}'], "maps no folder to a training class"),
    (COMPARE + ["--weights", "none", "--field-data", "{field}", "--field-map", '{json:{"a": "red circle", "b": "circle"}}'],
     "b maps to 'circle', which is not a class of the training data"),  # known once the dataset is scanned
    # predict: the model folder, --top-k, --names, the target and --output, all before loading the model.
    (["predict", "--model", "{tmp}", "{data}"], "--model {tmp}: no model.keras here"),
    (["predict", "--model", "{model}", "{image}", "--top-k", "0"], "--top-k must be from 1 to the model's 3 classes, not 0"),
    (["predict", "--model", "{model}", "{image}", "--top-k", "4"], "--top-k must be from 1 to the model's 3 classes, not 4"),
    (["predict", "--model", "{model}", "{image}", "--names", "{file}"], "--names: {file} is not valid JSON"),
    (["predict", "--model", "{model}", "{image}", "--names", "{tmp}/names.json"], "--names: cannot read {tmp}/names.json"),
    (["predict", "--model", "{model}", "{tmp}/nope.jpg"], "{tmp}/nope.jpg: no such image or folder"),
    (["predict", "--model", "{model}", "{data}", "--output", "{file}/out.csv"], "--output {file}/out.csv: {file} is a file"),
    (["predict", "--model", "{model}", "{data}", "--output", "{data}"], "--output {data}: is a folder; expected a file name"),
    (["predict", "--model", "{model}", "{data}", "--output", "{unwritable}/out.csv"], "cannot write in {unwritable}"),
    # export: the source folder, --run/--best, --out.
    (["predict", "--model", "{knn_model}", "{image}"], "--model {knn_model}: no feature_bank.npy here"),
    (["export", "--model", "{knn_model}"], "--model {knn_model}: no feature_bank.npy here"),
    (["export", "--model", "{tmp}"], "--model {tmp}: no metrics.json here"),
    (["export", "--run", "{tmp}"], "--run needs --best"),
    (["export", "--model", "{model}", "--best"], "--best goes with --run"),
    (["export", "--run", "{tmp}", "--best"], "--run {tmp}: no comparison.json here"),
    (["export", "--model", "{model}", "--out", "{file}"], "--out {file}: {file} is a file, not a folder"),
    (["export", "--model", "{model}", "--quantize", "int4"], "argument --quantize: invalid choice: 'int4'"),
    # stand-in-weights: where they go.
    (["stand-in-weights", "{file}/weights"], "DIR {file}/weights: {file} is a file, not a folder"),
    (["stand-in-weights", "{tmp}/weights", "--seed", "-1"], "--seed must be from 0 to 2**32 - 1, not -1"),
]


@pytest.fixture()
def places(tmp_path) -> dict[str, Path]:
    """The files the rows refer to: a good dataset, bad ones, a stand-in model folder, a plain file."""
    make_dataset(tmp_path / "data", counts=(3, 1, 1))
    make_dataset(tmp_path / "one_class", counts=(3, 1, 1), classes={"red circle": (220, 40, 40)})
    make_dataset(tmp_path / "small_pool", counts=(4, 0, 0))
    # Checked before the model is loaded, so a model folder need only hold the files' names.
    model = tmp_path / "run" / "model"
    model.mkdir(parents=True)
    for name in ("model.keras", "metrics.json", "trust.json"):
        (model / name).write_text("{}")
    (model / "labels.json").write_text(json.dumps(["blue triangle", "green square", "red circle"]))
    (tmp_path / "run" / "run.json").write_text("{}")
    knn_model = shutil.copytree(model, tmp_path / "run" / "knn_model")  # serves max-softmax+kNN, bank missing
    (knn_model / "trust.json").write_text(json.dumps({"score": "max_softmax+knn"}))
    (tmp_path / "afile").write_text("not a folder")
    (tmp_path / "runs" / "old" / "vgg16").mkdir(parents=True)  # an earlier run, at another image size
    (tmp_path / "runs" / "old" / "vgg16" / "config.json").write_text(json.dumps({"backbone": "vgg16", "input_size": [64, 64]}))
    for folder in ("a", "b"):  # a field set: folders a and b of one photo each
        (tmp_path / "field" / folder).mkdir(parents=True)
        draw("red circle", np.random.default_rng(0)).save(tmp_path / "field" / folder / "0.jpg")
    (tmp_path / "field_map.json").write_text(json.dumps({"a": "red circle", "b": None}))
    return {"tmp": tmp_path, "data": tmp_path / "data", "one_class": tmp_path / "one_class",
            "field": tmp_path / "field", "field_map": tmp_path / "field_map.json",
            "small_pool": tmp_path / "small_pool" / "train", "model": model, "knn_model": knn_model, "file": tmp_path / "afile",
            "image": tmp_path / "data" / "test" / "red circle" / "0.jpg"}


def unwritable_folder(tmp_path: Path) -> Path:
    """A folder this process may not write in: a read-only one, or (as root, whom permissions
    do not stop) a read-only file system."""
    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(0o555)
    for candidate in (folder, Path("/proc/sys")):
        if candidate.is_dir() and not os.access(candidate, os.W_OK):
            return candidate
    pytest.skip("no unwritable folder here: running as root without a read-only file system")


def expand(argument: str, places: dict[str, Path]) -> str:
    """`{name}` -> that place; `{toml:TEXT}` or `{json:TEXT}` -> a config or mapping file holding TEXT."""
    for kind in ("toml", "json"):
        if argument.startswith(f"{{{kind}:"):
            path = places["tmp"] / f"file-{abs(hash(argument))}.{kind}"
            path.write_text(argument[len(kind) + 2:-1] + "\n")
            return str(path)
    return argument.format(**places)


def snapshot(folder: Path) -> set[tuple[str, int]]:
    return {(str(path), path.stat().st_mtime_ns) for path in folder.rglob("*")}


def run_main(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exit:  # argparse's own errors
        return exit.code


@pytest.mark.parametrize(("arguments", "phrase"), ROWS, ids=[phrase for _, phrase in ROWS])
def test_bad_input_gets_one_clear_error(arguments, phrase, places, capsys, monkeypatch):
    if "{unwritable}" in " ".join(arguments):
        places["unwritable"] = unwritable_folder(places["tmp"])
    argv = [expand(argument, places) for argument in arguments]
    monkeypatch.chdir(places["tmp"])  # default output paths land here, where the snapshot sees them
    before = snapshot(places["tmp"])
    code = run_main(argv)
    error = capsys.readouterr().err
    assert code == 2, error
    assert phrase.format(**places) in error
    assert error.count("error:") == 1 and "Traceback" not in error
    assert snapshot(places["tmp"]) == before, "something was written"


@pytest.mark.parametrize("arguments", [
    ["check-data", "{data}"],
    ["check-data", "{one_class}"],
    ["predict", "--model", "{model}", "{image}", "--top-k", "9"],
    ["export", "--model", "{model}", "--out", "{file}"],
    ["compare", "--data", "{data}", "--head-epochs", "0"],
    ["compare", "--data", "{data}", "--backbones", "mobilenet:0.25", "--weights-dir", "{tmp}"],
    ["compare", "--data", "{one_class}", "--backbones", "vgg16", "--weights", "none"],
    ["compare", "--data", "{data}", "--backbones", "vgg16", "--weights", "none", "--output-dir", "{tmp}/runs", "--run", "old"],
])
def test_checks_answer_without_tensorflow(arguments, places):
    """check-data and the checks of every command's options need no TensorFlow, whose start-up
    is slow: compare's settings, weight files, dataset and run folder (`training.plan`) too."""
    argv = [expand(argument, places) for argument in arguments]
    script = "import sys; from training.__main__ import main; code = main(sys.argv[1:]); " \
             "print('tensorflow' in sys.modules); sys.exit(code)"
    result = subprocess.run([sys.executable, "-c", script, *argv], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode in (0, 2), result.stderr
    assert result.stdout.strip().splitlines()[-1] == "False", result.stdout
    assert "Traceback" not in result.stderr


def test_help_answers_at_once():
    """`--help` of every subcommand, in a fresh process, without importing TensorFlow or NumPy."""
    script = ("import sys, contextlib, io; from training.__main__ import build_parser, main\n"
              "for name in ('compare', 'check-data', 'predict', 'export', 'stand-in-weights'):\n"
              "    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit): main([name, '--help'])\n"
              "print(sorted(m for m in ('tensorflow', 'keras', 'numpy') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_a_misnamed_frozen_layer_leaves_no_backbone_folder_behind(places, capsys):
    """Only the built backbone knows its layer names: the run stops with one line naming the layer
    before it writes the backbone's config.json, which a corrected run would refuse to resume."""
    weights = places["tmp"] / "standins"
    assert main(["stand-in-weights", str(weights), "--backbones", "mobilenet:0.25"]) in (0, None)
    argv = [expand(argument, places) for argument in BASE[:-2] + ["--backbones", "mobilenet:0.25", "--image-size", "32",
                                                                  "--weights-dir", str(weights)]]  # BASE less its --weights
    capsys.readouterr()
    assert run_main([*argv, "--frozen-until", "mobilenet:0.25=conv_pw_99_relu"]) == 2
    error = capsys.readouterr().err
    assert "has no layer 'conv_pw_99_relu' to freeze up to" in error and "Traceback" not in error
    assert not list((places["tmp"] / "runs" / "data").rglob("config.json"))  # the run is named after the data
