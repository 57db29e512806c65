"""What Heroku runs: the dependency promise of the app and the files around the Procfile."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

from photos import encode, scene

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_the_app_imports_neither_tensorflow_nor_training() -> None:
    """TensorFlow alone would take the whole 512 MB dyno; the app must never pull it in."""
    probe = (
        "import sys, app.streamlit_app; "
        "print(sorted({name.split('.')[0] for name in sys.modules} & {'tensorflow', 'keras', 'training'}))"
    )
    result = subprocess.run([sys.executable, "-c", probe], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_setup_sh_can_run_on_every_boot(tmp_path: Path) -> None:
    for _ in range(2):
        subprocess.run(["sh", "setup.sh"], cwd=REPO_ROOT, env={**os.environ, "HOME": str(tmp_path)}, check=True)
    credentials = tomllib.loads((tmp_path / ".streamlit" / "credentials.toml").read_text())
    assert credentials == {"general": {"email": ""}}


def test_the_procfile_starts_the_app_on_herokus_port() -> None:
    (line,) = (REPO_ROOT / "Procfile").read_text().splitlines()
    kind, command = line.split(": ", 1)
    words = shlex.split(command)
    assert kind == "web"
    assert words[:3] == ["sh", "setup.sh", "&&"] and (REPO_ROOT / words[1]).is_file()
    assert words[3:5] == ["streamlit", "run"] and (REPO_ROOT / words[5]).is_file()
    assert "--server.port=$PORT" in words and "--server.address=0.0.0.0" in words


def test_runtime_txt_and_python_version_agree() -> None:
    """Heroku reads runtime.txt while it exists; .python-version is its replacement."""
    runtime = (REPO_ROOT / "runtime.txt").read_text().strip()
    version = (REPO_ROOT / ".python-version").read_text().strip()
    assert runtime.startswith(f"python-{version}.")


def test_streamlit_config_limits_uploads_and_runs_headless() -> None:
    config = tomllib.loads((REPO_ROOT / ".streamlit" / "config.toml").read_text())
    assert config["server"]["headless"] is True
    assert 1 <= config["server"]["maxUploadSize"] <= 20, "megabytes: a phone photo, not a whole album"


def test_the_serving_bench_memory_probe_runs_the_pages_code(model_folder: Path, tmp_path: Path) -> None:
    """bench/serving.py's peak-memory probe calls the app's own functions for one photo: when the
    page's code changes, this fails here rather than after `make bench` has trained for an hour."""
    sys.path.insert(0, str(REPO_ROOT / "bench"))
    import serving

    photo = tmp_path / "photo.jpg"
    photo.write_bytes(encode(scene(320, 240), "JPEG"))
    measured = serving.run_probe(serving.MEMORY_PROBE, str(model_folder), str(photo))
    assert measured["peak_kib"] > 0 and measured["heavy_modules"] == []
