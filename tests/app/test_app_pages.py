"""The three pages, driven by Streamlit's AppTest, which runs the script as `streamlit run` does."""

from __future__ import annotations

import csv
import io
import json
import shutil
import tomllib
from pathlib import Path

import numpy as np
import pyarrow
import pytest
from photos import PHOTOS, jpeg, small_subject
from streamlit.runtime.memory_media_file_storage import MemoryMediaFileStorage
from streamlit.testing.v1 import AppTest

from app.inference import Classifier, find_models, find_samples
from runtime import second_look
from runtime.answer import answer
from runtime.model_folder import CONFUSION_FILE, METRICS_FILE

REPO_ROOT = Path(__file__).resolve().parents[2]


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


def test_the_title_names_the_cards_subject(app: AppTest, default_model: Classifier) -> None:
    app.run()
    assert app.title[0].value == f"Which {default_model.card['subject']} is it?"


def test_an_upload_shows_the_top_classes(
    app: AppTest, default_model: Classifier, expected_heading, expected_answer
) -> None:
    app.run().file_uploader(key="upload").set_value(("photo.jpg", jpeg(), "image/jpeg")).run()
    assert not app.exception and not app.error
    assert app.subheader[0].value == expected_heading(default_model, "photo.jpg", jpeg())
    assert len(app.get("image")) == 2, "the photo and its heatmap"
    expected = expected_answer(default_model, "photo.jpg", jpeg()).could_be
    assert bar_chart_rows(app) == [(label, pytest.approx(probability)) for label, probability in expected]


def test_a_photo_the_model_is_sure_about_is_named(
    app: AppTest, default_model: Classifier, expected_answer, photos_by_answer
) -> None:
    name, data = next(iter(photos_by_answer(default_model, sure=True).items()))
    upload(app.run(), [(name, data)])
    expected = expected_answer(default_model, name, data)
    assert expected.score >= default_model.card["unknown"]["threshold"]
    assert [heading.value for heading in app.subheader] == [f"{expected.label} ({expected.confidence:.1%})"]
    assert not [markdown for markdown in app.markdown if "Could be" in markdown.value]
    (warning,) = [caption.value for caption in app.caption if "look-alike" in caption.value]
    assert f"only the {len(default_model.labels)} it knows" in warning


def test_the_page_lists_the_classes_the_model_knows(app: AppTest, default_model: Classifier) -> None:
    app.run()
    (known,) = app.expander
    assert known.label == f"Which {default_model.card['subject']} it knows ({len(default_model.labels)})"
    assert known.markdown[0].value.split(", ") == sorted(default_model.labels)


def test_a_photo_the_model_is_not_sure_about_gets_no_species_name(
    app: AppTest, default_model: Classifier, expected_answer, photos_by_answer
) -> None:
    unsure = photos_by_answer(default_model, sure=False)
    assert unsure and len(unsure) < len(PHOTOS), "the fixture threshold should answer some photos and not others"
    name, data = next(iter(unsure.items()))
    upload(app.run(), [(name, data)])
    expected = expected_answer(default_model, name, data)
    assert expected.score < default_model.card["unknown"]["threshold"]
    assert [heading.value for heading in app.subheader] == ["Not sure"]
    assert not [caption for caption in app.caption if "look-alike" in caption.value]
    (text,) = [markdown.value for markdown in app.markdown if "Could be" in markdown.value]
    assert all(f"{label} ({probability:.0%})" in text for label, probability in expected.could_be)
    assert len(expected.could_be) == 5 and "**" not in text, "candidates, never a bold species name"


def test_the_camera_takes_a_photo(app: AppTest, default_model: Classifier, expected_heading) -> None:
    app.run()
    assert not app.camera_input, "the camera waits until the visitor asks for it"
    app.toggle(key="use_camera").set_value(True).run()
    app.camera_input(key="camera").set_value(("image.jpg", jpeg(), "image/jpeg")).run()
    assert not app.exception and not app.error
    assert [heading.value for heading in app.subheader] == [expected_heading(default_model, "image.jpg", jpeg())]


def test_the_framed_part_is_answered_as_a_photo_of_its_own(app: AppTest, default_model: Classifier, expected_answer) -> None:
    """Untouched, the crop tool shows the second look's crop; moved, what it frames is answered as
    if the visitor had uploaded that part (its own look, score and heatmap), not the whole photo."""
    name, data = "small-subject.jpg", small_subject()
    upload(app.run(), [(name, data)])
    image = second_look.decode(data, default_model.input_size, name)
    first = second_look.look(image, default_model.outputs, default_model.input_size)
    assert first.crop is not None, "the photo should get a second look at a crop"
    x_edges, y_edges = app.slider
    assert x_edges.value == (round(100 * first.box[0] / image.width), round(100 * first.box[2] / image.width))
    assert y_edges.value == (round(100 * first.box[1] / image.height), round(100 * first.box[3] / image.height))
    expected = expected_answer(default_model, name, data)
    assert bar_chart_rows(app) == [(label, pytest.approx(probability)) for label, probability in expected.could_be]
    before = bar_chart_rows(app)

    x_edges.set_value((0, 50)).run()  # the empty bottom left corner instead
    y_edges.set_value((50, 100)).run()
    framed = image.crop((0, round(image.height / 2), round(image.width / 2), image.height))
    expected = answer(second_look.look(framed, default_model.outputs, default_model.input_size).passes,
                      default_model.card, default_model.bank)
    assert not app.exception
    assert bar_chart_rows(app) == [(label, pytest.approx(probability)) for label, probability in expected.could_be]
    assert bar_chart_rows(app) != before
    assert [heading.value for heading in app.subheader] == [f"{expected.label} ({expected.confidence:.1%})"
                                                            if expected.sure else "Not sure"]


def test_several_photos_give_a_table_and_a_csv_file(
    app: AppTest, default_model: Classifier, expected_answer, photos_by_answer, monkeypatch: pytest.MonkeyPatch
) -> None:
    sure, unsure = (next(iter(photos_by_answer(default_model, sure=flag).items())) for flag in (True, False))
    downloads = capture_downloads(monkeypatch)
    upload(app.run(), [sure, ("notes.jpg", b"Remember to buy milk."), unsure])
    assert not app.exception
    assert [error.value.split(":")[0] for error in app.error] == ["notes.jpg"], "a bad file is named, the rest answered"
    expected = [expected_answer(default_model, name, data) for name, data in (sure, unsure)]
    table = app.dataframe[0].value
    assert list(table["photo"]) == [sure[0], unsure[0]]
    assert list(table["answer"]) == [expected[0].label, "Not sure"]
    assert list(table["confidence"]) == pytest.approx([result.confidence for result in expected])

    assert app.get("download_button")[0].proto.label == "Download the answers (CSV)"
    (rows,) = [list(csv.DictReader(io.StringIO(data.decode()))) for data, name in downloads if name == "answers.csv"]
    assert [row["photo"] for row in rows] == [sure[0], unsure[0]]
    assert [row["answer"] for row in rows] == [expected[0].label, "Not sure"]
    assert [float(row["score"]) for row in rows] == pytest.approx([result.score for result in expected])
    assert rows[1]["could be"].split("; ")[0] == f"{expected[1].could_be[0][0]} {expected[1].could_be[0][1]:.1%}"


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
    model_names = [markdown.value.split(":")[0] for markdown in app.markdown if markdown.value.startswith("**")]
    assert model_names == [f"**{c.name}" for c in classifiers]


def test_the_about_page_shows_the_comparison_and_the_card(
    app: AppTest, model_root: Path, default_model: Classifier
) -> None:
    app.run().sidebar.radio(key="page").set_value("About the model").run()
    assert not app.exception
    rows = json.loads((model_root / "comparison.json").read_text())
    assert list(app.dataframe[0].value["backbone"]) == [row["backbone"] for row in rows]
    assert column_formats(app.dataframe[0]) == {"top1": "percent", "top5": "percent", "macro_f1": "percent", "size_mb": "%.1f MB",
                       "latency_ms": "%.1f ms", "params_total": "compact"}
    chart = app.get("vega_lite_chart")[0].proto
    assert chart_table(chart)["test top-1"].to_pylist() == [row["top1"] for row in rows]
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


def test_the_about_page_shows_per_class_results(app: AppTest, default_model: Classifier) -> None:
    app.run().sidebar.radio(key="page").set_value("About the model").run()
    per_class = json.loads((default_model.folder / METRICS_FILE).read_text())["test"]["per_class"]
    table = app.dataframe[1].value
    assert list(table["class"]) == list(per_class)
    assert list(table["recall"]) == [values["recall"] for values in per_class.values()]
    assert column_formats(app.dataframe[1]) == {"precision": "percent", "recall": "percent"}
    with (default_model.folder / CONFUSION_FILE).open() as file:
        header, *lines = list(csv.reader(file))
    cells = chart_table(app.get("vega_lite_chart")[1].proto)
    shown = np.zeros((len(lines), len(lines)), dtype=int)
    for true, predicted, count in zip(cells["true"].to_pylist(), cells["predicted"].to_pylist(), cells["images"].to_pylist()):
        shown[header.index(true) - 1, header.index(predicted) - 1] = count
    assert shown.tolist() == [[int(count) for count in line[1:]] for line in lines]


def test_the_about_page_says_when_per_class_results_were_not_exported(
    app: AppTest, model_root: Path, tmp_path: Path, monkeypatch
) -> None:
    shutil.copytree(find_models(model_root)[0], tmp_path / "model")
    for name in (METRICS_FILE, CONFUSION_FILE):
        (tmp_path / "model" / name).unlink()
    monkeypatch.setenv("MODEL_DIR", str(tmp_path))
    app.run().sidebar.radio(key="page").set_value("About the model").run()
    assert not app.exception
    assert any(METRICS_FILE in info.value and CONFUSION_FILE in info.value for info in app.info)


def test_visitors_get_the_viewer_toolbar() -> None:
    """No deploy button, rerun or clear-cache items for visitors (the browser test checks the page too)."""
    config = tomllib.loads((REPO_ROOT / ".streamlit" / "config.toml").read_text())
    assert config["client"]["toolbarMode"] == "viewer"


def upload(app: AppTest, files: list[tuple[str, bytes]]) -> AppTest:
    """Put files in the page's uploader, as a browser would, and rerun the page."""
    return app.file_uploader(key="upload").set_value([(name, data, "image/jpeg") for name, data in files]).run()


def capture_downloads(monkeypatch: pytest.MonkeyPatch) -> list[tuple[bytes, str | None]]:
    """A list that fills with (data, file name) of each file the page hands to Streamlit's media storage.

    AppTest's media storage lives only during a run, so a download button's bytes are caught on their way in.
    """
    files: list[tuple[bytes, str | None]] = []
    store = MemoryMediaFileStorage.load_and_get_id

    def load_and_get_id(self, path_or_data, mimetype, kind, filename=None):
        files.append((path_or_data, filename))
        return store(self, path_or_data, mimetype, kind, filename)

    monkeypatch.setattr(MemoryMediaFileStorage, "load_and_get_id", load_and_get_id)
    return files


def bar_chart_rows(app: AppTest) -> list[tuple[str, float]]:
    """The (class, probability) rows behind the page's first bar chart, in the order sent."""
    table = chart_table(app.get("vega_lite_chart")[0].proto)
    return list(zip(table["class"].to_pylist(), table["probability"].to_pylist()))


def column_formats(table) -> dict[str, str]:
    """The number format the page set for each formatted column of a table (`st.column_config`)."""
    columns = json.loads(table.proto.columns)
    return {name: column["type_config"]["format"] for name, column in columns.items() if "type_config" in column}


def chart_table(chart) -> pyarrow.Table:
    """The data table a chart's proto carries (`st.bar_chart` sends it as a named dataset)."""
    data = chart.datasets[0].data if chart.datasets else chart.data
    return pyarrow.ipc.open_stream(data.data).read_all()
