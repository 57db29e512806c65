"""The Colab notebook runs top to bottom, as CI can: offline, on a CPU, on generated images, with
stand-in weights, its Colab-only cells switched off by its COLAB parameter (not by editing it)."""

from __future__ import annotations

import json
import zipfile

import nbformat
import pytest
from nbclient import NotebookClient
from shapes import ROOT, make_dataset

from training.standin import LABEL

NOTEBOOK = ROOT / "notebooks" / "colab.ipynb"


@pytest.mark.heavy
def test_colab_notebook_runs_top_to_bottom(tmp_path, monkeypatch):
    data = make_dataset(tmp_path / "shapes", counts=(4, 2, 2))
    for name, value in {"COLAB": "0", "DATA": str(data), "WORK": str(tmp_path / "work"), "WEIGHTS": "stand-in",
                        "BACKBONES": "mobilenet:0.25", "IMAGE_SIZE": "32",
                        "HEAD_EPOCHS": "2", "FINE_TUNE_EPOCHS": "1"}.items():
        monkeypatch.setenv(f"NOTEBOOK_{name}", value)
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}).execute()

    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    text = "".join(output.get("text", "") for output in outputs)
    shown = [output.data for output in outputs if output.output_type == "display_data"]
    assert "STAND-IN WEIGHTS (random)" in text and "best:" in text
    [table] = [data["text/markdown"] for data in shown if "| mobilenet" in data.get("text/markdown", "")]
    assert f"**{LABEL}**: " in table  # the comparison says its accuracy is meaningless
    assert sum("image/png" in data for data in shown) == 4  # table chart, dataset, curves, confusion matrix
    # One backbone keeps this test cheap; ranking and the ensemble row: tests/test_cli_options.py.
    [row] = json.loads((tmp_path / "work" / "saved_models" / "shapes" / "comparison.json").read_text())
    assert (row["backbone"], row["rank"], row["best"]) == ("mobilenet_0.25", 1, True)
    with zipfile.ZipFile(tmp_path / "work" / "deploy.zip") as archive:
        names = archive.namelist()
    assert {"model.tflite", "labels.json", "model_card.json"} <= {name.rsplit("/", 1)[-1] for name in names}
