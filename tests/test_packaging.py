"""Heroku installs requirements.txt; the project's `serve` extra must say the same thing."""

from __future__ import annotations

import tomllib

from shapes import ROOT


def test_requirements_txt_is_the_serving_dependencies():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    serving = set(project["dependencies"]) | set(project["optional-dependencies"]["serve"])
    lines = (ROOT / "requirements.txt").read_text().splitlines()
    assert {line.strip() for line in lines if line.strip() and not line.startswith("#")} == serving
