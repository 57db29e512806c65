"""How big will the Heroku slug be? Build its equivalent here and measure it.

A Heroku slug is the repository (minus .slugignore) plus what `pip install -r requirements.txt`
installs, as a gzipped tarball. Heroku warns above 300 MB compressed (slower boots, and the web
process must bind $PORT within 60 s); we aim for 150 MB or less. This script installs the
serving requirements into build/slug/, copies in what the dyno runs, writes build/slug.tar.gz
and prints its compressed and unpacked size, plus the largest packages, which is where any
savings would have to come from.

Run it with the project's virtual environment (its pip does the install):

    .venv/bin/python bench/slug.py

It exits with status 1 when the slug is over Heroku's soft limit. The Python runtime that
Heroku adds to the slug is not counted.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
BUILD = REPO_ROOT / "build" / "slug"
TARBALL = REPO_ROOT / "build" / "slug.tar.gz"
# What the dyno needs besides the installed requirements; the model folder only if exported.
SLUG_FILES = [
    "app", "runtime", ".streamlit", "Procfile", "setup.sh", "requirements.txt", "runtime.txt", ".python-version",
    "saved_models/deploy",
]
SOFT_LIMIT_MB = 300
TARGET_MB = 150
MB = 1e6  # Heroku reports slug sizes in decimal megabytes
# Bytecode is rebuilt on the dyno and would only blur the measurement.
NO_BYTECODE = shutil.ignore_patterns("__pycache__", "*.pyc")


def install_requirements(target: Path) -> None:
    """pip-install the serving requirements into `target`, as the Heroku Python buildpack does."""
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-compile", "--disable-pip-version-check",
         "--target", str(target), "-r", str(REPO_ROOT / "requirements.txt")],
        check=True,
    )


def copy_app_files(destination: Path) -> list[str]:
    """Copy the files the dyno runs into `destination`; return those that were missing here."""
    missing = []
    for name in SLUG_FILES:
        source, target = REPO_ROOT / name, destination / name
        if source.is_dir():
            shutil.copytree(source, target, ignore=NO_BYTECODE)
        elif source.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
        else:
            missing.append(name)
    return missing


def size_of(path: Path) -> int:
    """Bytes in the regular files under `path` (or of the file itself)."""
    if path.is_file():
        return path.stat().st_size
    return sum(file.stat().st_size for file in path.rglob("*") if file.is_file() and not file.is_symlink())


def largest(folder: Path, count: int = 8) -> list[tuple[str, int]]:
    """The `count` biggest entries of `folder`, by unpacked size."""
    sizes = [(entry.name, size_of(entry)) for entry in folder.iterdir()]
    return sorted(sizes, key=lambda item: item[1], reverse=True)[:count]


def main() -> int:
    shutil.rmtree(BUILD, ignore_errors=True)
    BUILD.mkdir(parents=True)
    install_requirements(BUILD / "site-packages")
    missing = copy_app_files(BUILD)
    with tarfile.open(TARBALL, "w:gz", compresslevel=6) as tar:
        tar.add(BUILD, arcname="app")

    compressed, unpacked = TARBALL.stat().st_size / MB, size_of(BUILD) / MB
    print(f"Slug equivalent: {TARBALL.relative_to(REPO_ROOT)}")
    print(f"  compressed {compressed:7.1f} MB  (target {TARGET_MB} MB, Heroku soft limit {SOFT_LIMIT_MB} MB)")
    print(f"  unpacked   {unpacked:7.1f} MB")
    if missing:
        print(f"  not included (absent here): {', '.join(missing)}")
    print("Largest installed packages (unpacked MB):")
    for name, size in largest(BUILD / "site-packages"):
        print(f"  {name:32} {size / MB:7.1f}")
    if compressed > SOFT_LIMIT_MB:
        print(f"Over Heroku's {SOFT_LIMIT_MB} MB soft limit.")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
