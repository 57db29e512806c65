"""The Heroku slug: built as Heroku would build it, it must stay under the 300 MB soft limit."""

from __future__ import annotations

import subprocess
import sys

from shapes import ROOT


def test_slug_stays_under_herokus_soft_limit():
    result = subprocess.run([sys.executable, str(ROOT / "bench" / "slug.py")], cwd=ROOT,
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr  # slug.py exits 1 above 300 MB
    assert "compressed" in result.stdout
