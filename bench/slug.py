"""How big will the Heroku slug be? Build its equivalent here and measure it.

A Heroku slug is the repository (minus .slugignore) plus what `pip install -r requirements.txt`
installs, as a gzipped tarball. Heroku warns above 300 MB compressed (slower boots, and the web
process must bind $PORT within 60 s); we aim for 150 MB or less. This script builds the slug
as two gzipped tarballs that unpack into one folder: build/slug-packages.tar.gz (the serving
requirements, installed into build/slug-packages/ and packed as site-packages/) and
build/slug-app.tar.gz (what the dyno runs, copied into build/slug/). It prints their compressed
size (the two add up to one tarball's within a few kB: gzip only looks 32 kB back) and unpacked
size, plus the largest packages, which is where any savings would have to come from.

Installing and packing the requirements is what costs (a download, and compressing a few
hundred MB), so both are reused while requirements.txt, the Python version and the platform
are those they were made with (recorded in build/slug-packages.stamp): a clean clone pays once,
a rerun only packs the app's own files. The ranges in requirements.txt may resolve to newer
releases later; `--fresh` reinstalls, as bench/serving.py does for the figure it records.

Run it with the project's virtual environment (its pip does the install):

    .venv/bin/python bench/slug.py [--fresh]

It exits with status 1 when the slug is over Heroku's soft limit. The Python runtime that
Heroku adds to the slug is not counted.
"""

from __future__ import annotations

import argparse
import hashlib
import platform
import shutil
import subprocess
import sys
import sysconfig
import tarfile
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
REQUIREMENTS = REPO_ROOT / "requirements.txt"
BUILD = REPO_ROOT / "build" / "slug"
APP_TARBALL = REPO_ROOT / "build" / "slug-app.tar.gz"
PACKAGES = REPO_ROOT / "build" / "slug-packages"
PACKAGES_TARBALL = REPO_ROOT / "build" / "slug-packages.tar.gz"
STAMP = REPO_ROOT / "build" / "slug-packages.stamp"
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


@dataclass
class Slug:
    compressed_mb: float
    unpacked_mb: float
    missing: list[str]  # slug files absent here (e.g. no exported model yet)
    reused: bool  # whether the installed and packed requirements came from an earlier run


def install_key() -> str:
    """What an install of the requirements depends on here: their text, this Python, this platform."""
    digest = hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()
    return f"requirements.txt sha256 {digest}\nPython {platform.python_version()} on {sysconfig.get_platform()}\n"


def packed_requirements(fresh: bool = False) -> bool:
    """Install the serving requirements into PACKAGES and pack them into PACKAGES_TARBALL, unless
    that was done with the same install key already (and `fresh` is false); return whether it was."""
    key = install_key()
    if not fresh and PACKAGES_TARBALL.is_file() and STAMP.is_file() and STAMP.read_text(encoding="utf-8") == key:
        return True
    STAMP.unlink(missing_ok=True)
    shutil.rmtree(PACKAGES, ignore_errors=True)
    install_requirements(PACKAGES)
    pack(PACKAGES, PACKAGES_TARBALL, "app/site-packages")
    STAMP.write_text(key, encoding="utf-8")  # last, so that an interrupted install is never reused
    return False


def install_requirements(target: Path) -> None:
    """pip-install the serving requirements into `target`, as the Heroku Python buildpack does."""
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-compile", "--disable-pip-version-check",
         "--target", str(target), "-r", str(REQUIREMENTS)],
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


def pack(folder: Path, tarball: Path, arcname: str) -> None:
    """Write `folder` as a gzipped tarball, at the compression level Heroku's slugs use."""
    with tarfile.open(tarball, "w:gz", compresslevel=6) as tar:
        tar.add(folder, arcname=arcname)


def size_of(path: Path) -> int:
    """Bytes in the regular files under `path` (or of the file itself)."""
    if path.is_file():
        return path.stat().st_size
    return sum(file.stat().st_size for file in path.rglob("*") if file.is_file() and not file.is_symlink())


def largest(folder: Path, count: int = 8) -> list[tuple[str, int]]:
    """The `count` biggest entries of `folder`, by unpacked size."""
    sizes = [(entry.name, size_of(entry)) for entry in folder.iterdir()]
    return sorted(sizes, key=lambda item: item[1], reverse=True)[:count]


def build(fresh: bool = False) -> Slug:
    """Lay out and pack the slug: the requirements (reused when possible), then the app's files."""
    reused = packed_requirements(fresh)
    shutil.rmtree(BUILD, ignore_errors=True)
    BUILD.mkdir(parents=True)
    missing = copy_app_files(BUILD)
    pack(BUILD, APP_TARBALL, "app")
    compressed = size_of(PACKAGES_TARBALL) + size_of(APP_TARBALL)
    return Slug(compressed / MB, (size_of(PACKAGES) + size_of(BUILD)) / MB, missing, reused)


def report(slug: Slug) -> None:
    """Print the sizes against the targets, and the packages that weigh the most."""
    tarballs = " + ".join(str(path.relative_to(REPO_ROOT)) for path in (PACKAGES_TARBALL, APP_TARBALL))
    print(f"Slug equivalent: {tarballs}")
    print(f"  compressed {slug.compressed_mb:7.1f} MB  (target {TARGET_MB} MB, Heroku soft limit {SOFT_LIMIT_MB} MB)")
    print(f"  unpacked   {slug.unpacked_mb:7.1f} MB")
    if slug.missing:
        print(f"  not included (absent here): {', '.join(slug.missing)}")
    if slug.reused:
        print(f"Requirements: reused from an earlier run (same {STAMP.relative_to(REPO_ROOT)}; --fresh reinstalls)")
    else:
        print("Requirements: installed now")
    print("Largest installed packages (unpacked MB):")
    for name, size in largest(PACKAGES):
        print(f"  {name:32} {size / MB:7.1f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fresh", action="store_true", help="reinstall the requirements even if an install can be reused")
    slug = build(parser.parse_args(argv).fresh)
    report(slug)
    if slug.compressed_mb > SOFT_LIMIT_MB:
        print(f"Over Heroku's {SOFT_LIMIT_MB} MB soft limit.")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
