"""End to end on generated data: train, reload, predict, the CLI and its settings. (Every registry
backbone through the ImageNet transfer path: tests/test_transfer.py.)"""

from __future__ import annotations

import csv
import json
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import numpy as np
import pytest
from field_sets import app_answers
from shapes import CLASSES, ROOT, make_dataset, run_cli

from training.__main__ import main
from training.backbones import REGISTRY, BackboneError, parse_variant, preprocessing_layers, resolve_weights
from training.config import Config, ConfigError, load_config
from training.export import export
from training.folder import SPLITS
from training.runner import compare


def test_reloaded_model_predicts_the_same_in_a_fresh_process(trained_run, tiny_dataset):
    folder = trained_run / "vgg16"
    images = sorted((tiny_dataset / "test").rglob("*.jpg"))[:4]
    script = textwrap.dedent(f"""
        import json, keras, numpy as np; from runtime import imaging
        model = keras.models.load_model({str(folder / 'model.keras')!r})
        pixels = np.stack([imaging.load_pixels(p, (32, 32)) for p in {list(map(str, images))!r}])
        print(json.dumps(model.predict(pixels.astype('float32'), verbose=0).tolist()))
    """)
    fresh = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, check=True)
    here = keras.models.load_model(folder / "model.keras")
    from runtime import imaging

    pixels = np.stack([imaging.load_pixels(p, (32, 32)) for p in images]).astype("float32")
    np.testing.assert_allclose(np.array(json.loads(fresh.stdout.strip().splitlines()[-1])),
                               here.predict(pixels, verbose=0), atol=1e-6)


def test_predict_command_on_an_image_and_a_folder(trained_run, tiny_dataset, tmp_path):
    folder = trained_run / "vgg16"
    image = tiny_dataset / "test" / "red circle" / "0.jpg"
    single = run_cli("predict", "--model", str(folder), str(image), "--top-k", "2")
    assert single.returncode == 0, single.stderr
    lines = single.stdout.strip().splitlines()
    assert lines[0] == str(image) and len(lines) == 4 and lines[2].strip().endswith(("circle", "square", "triangle"))
    trust = json.loads((folder / "trust.json").read_text())
    verdict, score = re.fullmatch(r"  answer: (.+) \(unknown score ([0-9.]+)\)", lines[1]).groups()
    # The answer names the top class exactly when its calibrated probability reaches the threshold.
    assert verdict == (lines[2].split("%")[1].strip() if float(score) >= trust["threshold"] else "not sure")

    names = tmp_path / "names.json"
    names.write_text(json.dumps({"red circle": "Red Circle (display)"}))
    photos = shutil.copytree(tiny_dataset / "test", tmp_path / "test")  # the dataset is shared: add to a copy
    (photos / "broken.jpg").write_text("nope")
    out = tmp_path / "predictions.csv"
    # A folder, in this process (the command's own entry point; a fresh process ran just above).
    assert main(["predict", "--model", str(folder), str(photos), "--names", str(names), "--output", str(out),
                 "--top-k", "3"]) == 0
    with open(out) as file:
        rows = list(csv.DictReader(file))
    assert len(rows) == 13  # 12 images + the broken one, reported not fatal
    broken = [row for row in rows if row["image"].endswith("broken.jpg")][0]
    assert "not an image" in broken["error"] and broken["top1"] == ""
    ok = [row for row in rows if not row["error"]]
    assert all("Red Circle (display)" in (row["top1"], row["top2"], row["top3"]) for row in ok)
    assert all(abs(sum(float(row[f"p{i}"]) for i in (1, 2, 3)) - 1) < 1e-4 for row in ok)
    assert {row["answer"] for row in ok} <= {row["top1"] for row in ok} | {"not sure"}
    # The served score (max-softmax+kNN of the better look, whole photo or crop), as computed by hand
    # from the saved model.
    _, scores = app_answers(folder, [Path(row["image"]) for row in ok])
    assert [float(row["score"]) for row in ok] == pytest.approx(scores.tolist(), abs=1e-5)
    assert all((row["answer"] != "not sure") == (float(row["score"]) >= trust["threshold"]) for row in ok)


@pytest.mark.parametrize(("bank", "phrase"), [
    (b"not an array", "feature_bank.npy: cannot be read as a NumPy array"),
    (np.zeros((9, 7), dtype=np.float16), "feature_bank.npy: expected (images, 512) features with at least k = "),
])
def test_predict_command_names_a_bad_feature_bank(trained_run, tiny_dataset, tmp_path, capsys, bank, phrase):
    folder = tmp_path / "vgg16"
    folder.mkdir()
    for name in ("model.keras", "labels.json", "trust.json"):
        shutil.copyfile(trained_run / "vgg16" / name, folder / name)
    if isinstance(bank, bytes):
        (folder / "feature_bank.npy").write_bytes(bank)
    else:
        np.save(folder / "feature_bank.npy", bank)
    assert main(["predict", "--model", str(folder), str(tiny_dataset / "test" / "red circle" / "0.jpg")]) == 2
    error = capsys.readouterr().err
    assert f"{folder}/{phrase}" in error and "Traceback" not in error


def test_predict_command_names_a_wrong_model_folder(tmp_path):
    result = run_cli("predict", "--model", str(tmp_path), str(tmp_path))
    assert result.returncode == 2 and "no model.keras here" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("name", list(REGISTRY))
def test_preprocessing_inside_the_model_matches_keras(name):
    """The in-model layers do exactly what the backbone's own preprocess_input does."""
    module = {"resnet50": keras.applications.resnet50, "vgg16": keras.applications.vgg16,
              "inceptionv3": keras.applications.inception_v3, "mobilenet": keras.applications.mobilenet,
              "mobilenetv2": keras.applications.mobilenet_v2,
              "efficientnetb0": keras.applications.efficientnet}[name]
    pixels = np.random.default_rng(0).uniform(0, 255, (2, 8, 8, 3)).astype("float32")
    layers = preprocessing_layers(REGISTRY[name].preprocessing)
    np.testing.assert_allclose(layers(pixels).numpy(), module.preprocess_input(pixels.copy()), atol=1e-4)


def test_backbone_specs_are_checked():
    assert parse_variant("mobilenet:0.25").id == "mobilenet_0.25"
    assert parse_variant("inceptionv3").size == 299
    assert parse_variant("mobilenetv2:0.35").weights_file == \
        "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5"
    with pytest.raises(BackboneError, match="unknown backbone 'resnet18'"):
        parse_variant("resnet18")
    with pytest.raises(BackboneError, match="alpha must be one of"):
        parse_variant("mobilenet:0.3")
    with pytest.raises(BackboneError, match="takes no alpha"):
        parse_variant("vgg16:0.5")
    assert parse_variant("inceptionv3", 75).size == 75
    with pytest.raises(BackboneError, match="inceptionv3 needs images of at least 75x75 \\(image size 74 asked\\)"):
        parse_variant("inceptionv3", 74)
    with pytest.raises(BackboneError, match="mobilenet needs images of at least 32x32"):
        parse_variant("mobilenet:0.25", 0)


def test_missing_imagenet_weights_stop_before_training_and_name_the_file(tmp_path, monkeypatch):
    variant = parse_variant("resnet50")
    with pytest.raises(BackboneError, match=r"resnet50_weights_tf_dim_ordering_tf_kernels_notop\.h5 is missing"):
        resolve_weights(variant, "imagenet", weights_dir=tmp_path)
    # Online path: Keras' own download; offline it fails, and the message says where to put the file.
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.setattr("training.backbones.build_base", lambda *a: (_ for _ in ()).throw(OSError("offline")))
    with pytest.raises(BackboneError, match=rf"Put resnet50_weights.*notop\.h5 in {tmp_path}/keras/models"):
        resolve_weights(variant, "imagenet")
    (tmp_path / "keras" / "models").mkdir(parents=True)
    (tmp_path / "keras" / "models" / variant.weights_file).write_bytes(b"cached")
    assert resolve_weights(variant, "imagenet") == tmp_path / "keras" / "models" / variant.weights_file
    assert resolve_weights(variant, "none") is None
    with pytest.raises(BackboneError, match="weights file .*nope.h5 does not exist"):
        resolve_weights(variant, "imagenet", weight_file=tmp_path / "nope.h5")


def test_compare_command_refuses_missing_weights_before_any_work(tmp_path, tiny_dataset):
    result = run_cli("compare", "--data", str(tiny_dataset), "--backbones", "mobilenet:0.25,vgg16",
                     "--weights-dir", str(tmp_path), "--output-dir", str(tmp_path / "runs"))
    assert result.returncode == 2
    assert "mobilenet_2_5_224_tf_no_top.h5 is missing" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "runs").exists()


def test_config_file_and_overrides(tmp_path):
    toml = tmp_path / "experiment.toml"
    toml.write_text('data = "somewhere"\nbackbones = ["vgg16"]\nfine_tune_epochs = 7\nsplit = [0.7, 0.2, 0.1]\n')
    config = load_config(toml, {"fine_tune_epochs": 2, "seed": None})
    assert (config.data, config.backbones, config.fine_tune_epochs, config.split) == \
        ("somewhere", ["vgg16"], 2, (0.7, 0.2, 0.1))
    toml.write_text('data = "x"\nepochs = 3\n')
    with pytest.raises(ConfigError, match="unknown setting.*epochs"):
        load_config(toml, {})
    toml.write_text("data = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(toml, {})
    toml.write_text('data = "x"\nlabel_smoothing = 1.0\n')
    with pytest.raises(ConfigError, match=f"{toml}: label_smoothing must be at least 0 and below 1"):
        load_config(toml, {})
    with pytest.raises(ConfigError, match="no dataset given"):
        load_config(None, {})
    toml.write_text('data = "x"\nhead_epochs = "ten"\n')  # a string where a number belongs
    with pytest.raises(ConfigError, match=f"{toml}: head_epochs must be a whole number, not 'ten'"):
        load_config(toml, {})
    with pytest.raises(ConfigError, match="^options: head_epochs must be at least 1, not 0"):  # the option is at fault
        load_config(toml, {"head_epochs": 0})
    # Per-backbone keys are normalised to variant ids; a key for no backbone of the run is refused.
    config = load_config(None, {"data": "x", "backbones": ["mobilenet:0.25", "vgg16"],
                                "weight_files": {"mobilenet:0.25": "a.h5", "VGG16": "b.h5"}})
    assert config.weight_files == {"mobilenet_0.25": "a.h5", "vgg16": "b.h5"}
    with pytest.raises(ConfigError, match="weight_files 'mobilenet:0.5': mobilenet_0.5 is not one of this run's backbones"):
        load_config(None, {"data": "x", "backbones": ["mobilenet:0.25"], "weight_files": {"mobilenet:0.5": "a.h5"}})
    result = run_cli("compare", "--config", str(tmp_path / "missing.toml"))
    assert result.returncode == 2 and "cannot read the config file" in result.stderr


def test_learnability_on_an_easy_task(trained_run):
    """From random weights, on coloured shapes, the pipeline must really learn."""
    metrics = json.loads((trained_run / "vgg16" / "metrics.json").read_text())
    assert metrics["test"]["top1"] >= 0.9, metrics["summary"]
    run = json.loads((trained_run / "run.json").read_text())
    assert run["config"]["weights"] == "none" and len(run["splits"]["test"]) == 12


@pytest.mark.heavy
def test_nested_class_folders_train_and_export_with_their_labels(tmp_path):
    """An image in a subfolder of its class folder still belongs to that class: in run.json's
    labels, and so in the export's own test (LiteRT scores the same as Keras) and samples."""
    data = make_dataset(tmp_path / "data", counts=(4, 2, 2))
    for image in sorted(data.glob("*/*/*.jpg"))[::2]:  # every other image, one folder down
        (image.parent / "more").mkdir(exist_ok=True)
        image.rename(image.parent / "more" / image.name)
    compare(Config(data=str(data), run="nested", output_dir=str(tmp_path / "runs"), cache_dir=str(tmp_path / "cache"),
                   backbones=["vgg16"], weights="none", image_size=32, head_epochs=3, fine_tune=False))
    run = json.loads((tmp_path / "runs" / "nested" / "run.json").read_text())
    assert any("/more/" in path for path in run["splits"]["test"])
    for split in SPLITS:  # the class is the folder right under the split, however deep the image
        assert run["labels"][split] == [path.split(f"/{split}/")[1].split("/")[0] for path in run["splits"][split]]

    card = export(tmp_path / "runs" / "nested" / "vgg16", "float32", tmp_path / "deploy" / "vgg16")
    assert card["classes"] == sorted(CLASSES) and card["test_images"] == 6
    assert card["litert_metrics"] == pytest.approx(card["metrics"], abs=1e-6)
    assert {p.stem for p in (tmp_path / "deploy" / "samples").iterdir()} == set(CLASSES)
