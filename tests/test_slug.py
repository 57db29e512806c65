"""The Heroku slug: built as Heroku would build it, it must stay under the 300 MB soft limit.

bench/slug.py installs requirements.txt once per clone (then only when it or the Python version
changes), so the first run here costs a pip install and the later ones about a second.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest
from shapes import ROOT


def test_slug_stays_under_herokus_soft_limit():
    result = subprocess.run([sys.executable, str(ROOT / "bench" / "slug.py")], cwd=ROOT,
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr  # slug.py exits 1 above 300 MB
    assert "compressed" in result.stdout


@pytest.fixture
def installs() -> list[Path]:
    """Where the `slug` fixture's stand-in pip installed, one entry per install."""
    return []


@pytest.fixture
def slug(tmp_path: Path, monkeypatch, installs: list[Path]):
    """bench/slug.py with its build folder in `tmp_path` and a stand-in for pip that records its calls."""
    monkeypatch.syspath_prepend(ROOT / "bench")
    module = importlib.import_module("slug")
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("numpy>=1.26,<3\n")
    monkeypatch.setattr(module, "REQUIREMENTS", requirements)
    for name in ("PACKAGES", "PACKAGES_TARBALL", "STAMP"):
        monkeypatch.setattr(module, name, tmp_path / "build" / getattr(module, name).name)

    def install(target: Path) -> None:
        (target / "numpy").mkdir(parents=True)
        installs.append(target)

    monkeypatch.setattr(module, "install_requirements", install)
    return module


def test_the_install_is_reused_only_for_the_same_requirements_and_python(slug, installs, monkeypatch):
    assert slug.packed_requirements() is False and len(installs) == 1  # a clean clone installs
    assert slug.packed_requirements() is True and len(installs) == 1  # a rerun reuses
    assert slug.PACKAGES_TARBALL.is_file()

    slug.REQUIREMENTS.write_text("numpy>=1.26,<3\nstreamlit>=1.67,<2\n")
    assert slug.packed_requirements() is False and len(installs) == 2  # new requirements: reinstall
    assert slug.packed_requirements() is True

    monkeypatch.setattr(slug.platform, "python_version", lambda: "3.12.0")
    assert slug.packed_requirements() is False and len(installs) == 3  # another Python: reinstall

    assert slug.packed_requirements(fresh=True) is False and len(installs) == 4  # asked to


def test_an_interrupted_install_is_not_reused(slug, installs, monkeypatch):
    slug.packed_requirements()
    slug.REQUIREMENTS.write_text("pillow>=11,<14\n")
    install = slug.install_requirements

    def killed(target: Path) -> None:
        target.mkdir(parents=True)
        raise KeyboardInterrupt

    monkeypatch.setattr(slug, "install_requirements", killed)
    with pytest.raises(KeyboardInterrupt):
        slug.packed_requirements()
    monkeypatch.setattr(slug, "install_requirements", install)
    assert slug.packed_requirements() is False and len(installs) == 2
