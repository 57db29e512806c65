"""The three pages, driven by Streamlit's AppTest, which runs the script as `streamlit run` does."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow
import pytest
from photos import jpeg
from streamlit.testing.v1 import AppTest

from app.inference import Classifier, find_models, find_samples
from runtime import imaging


def test_without_a_model_the_page_says_how_to_make_one(app: AppTest, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("MODEL_DIR", str(tmp_path))
    app.run()
    assert not app.exception
    assert app.title[0].value == "No model to serve yet"
    assert str(tmp_path) in app.warning[0].value
    assert app.code[0].value == "make run\npython -m training export --run saved_models/<run> --best"
    assert not app.file_uploader


def test_the_model_root_can_come_from_a_secret(
    app: AppTest, model_root: Path, default_model: Classifier, monkeypatch
) -> None:
    monkeypatch.delenv("MODEL_DIR")
    app.secrets["model_dir"] = str(model_root)
    app.run()
    assert not app.exception
    assert app.caption[0].value.startswith(f"{default_model.name}: ")


def test_the_best_model_is_chosen_by_default(app: AppTest, default_model: Classifier) -> None:
    app.run()
    assert app.caption[0].value.startswith(f"{default_model.name}: ")


def test_an_upload_shows_the_top_classes(app: AppTest, default_model: Classifier, expected_heading) -> None:
    app.run().file_uploader(key="upload").set_value(("photo.jpg", jpeg(), "image/jpeg")).run()
    assert not app.exception and not app.error
    assert app.subheader[0].value == expected_heading(default_model, "photo.jpg", jpeg())
    assert len(app.get("image")) == 2, "the photo and its heatmap"
    expected = default_model.predict(imaging.load_pixels(jpeg(), default_model.input_size)).top_k(5)
    assert bar_chart_rows(app) == [(label, pytest.approx(probability)) for label, probability in expected]


def test_another_model_can_be_chosen(app: AppTest, model_root: Path, expected_heading) -> None:
    app.run()
    menu = app.selectbox(key="model")
    other = next(position for position in range(len(menu.options)) if position != menu.index)
    menu.select_index(other).run()
    chosen = Classifier(find_models(model_root)[other])
    app.file_uploader(key="upload").set_value(("photo.jpg", jpeg(), "image/jpeg")).run()
    assert app.caption[0].value.startswith(f"{chosen.name}: ")
    assert app.subheader[0].value == expected_heading(chosen, "photo.jpg", jpeg())


def test_a_sample_photo_can_be_picked(
    app: AppTest, model_root: Path, default_model: Classifier, expected_heading
) -> None:
    sample = find_samples(model_root)[0]
    app.run().selectbox(key="sample").set_value(sample).run()
    assert not app.exception and not app.error
    assert app.subheader[0].value == expected_heading(default_model, sample.name, sample.read_bytes())


def test_the_compare_page_runs_every_model_on_one_photo(app: AppTest, model_root: Path, expected_heading) -> None:
    app.run().sidebar.radio(key="page").set_value("Compare models").run()
    app.file_uploader(key="upload").set_value(("photo.jpg", jpeg(), "image/jpeg")).run()
    assert not app.exception and not app.error
    classifiers = [Classifier(folder) for folder in find_models(model_root)]
    assert len(classifiers) > 1, "the fixture should offer models to compare"
    assert [heading.value for heading in app.subheader] == [
        expected_heading(classifier, "photo.jpg", jpeg()) for classifier in classifiers
    ]
    assert [markdown.value.split(":")[0] for markdown in app.markdown] == [f"**{c.name}" for c in classifiers]


def test_the_about_page_shows_the_comparison_and_the_card(
    app: AppTest, model_root: Path, default_model: Classifier
) -> None:
    app.run().sidebar.radio(key="page").set_value("About the model").run()
    assert not app.exception
    rows = json.loads((model_root / "comparison.json").read_text())
    assert list(app.dataframe[0].value["backbone"]) == [row["backbone"] for row in rows]
    assert json.loads(app.json[0].value) == default_model.card
    card = default_model.card
    shown = [float(metric.value) for metric in app.metric]
    assert shown == [card["litert_metrics"][key] for key in ("top1", "top5", "macro_f1")]


def test_a_broken_model_is_reported_and_the_others_served(
    app: AppTest, model_root: Path, tmp_path: Path, monkeypatch
) -> None:
    for name in ("broken", "good"):
        shutil.copytree(find_models(model_root)[0], tmp_path / name)
    (tmp_path / "broken" / "labels.json").unlink()
    monkeypatch.setenv("MODEL_DIR", str(tmp_path))
    app.run()
    assert not app.exception
    assert len(app.error) == 1 and "labels.json is missing" in app.error[0].value
    assert app.caption[0].value.startswith("good: ")
    assert "model" not in [menu.key for menu in app.selectbox], "no model menu for a single model"


def bar_chart_rows(app: AppTest) -> list[tuple[str, float]]:
    """The (class, probability) rows behind the page's first bar chart, in the order sent."""
    chart = app.get("vega_lite_chart")[0].proto
    table = pyarrow.ipc.open_stream(chart.datasets[0].data.data).read_all()
    return list(zip(table["class"].to_pylist(), table["probability"].to_pylist()))
