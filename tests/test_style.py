"""The linter and formatter are part of the test suite, so CI enforces them."""

import pathlib
import shutil
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("args", [["check", "."], ["format", "--check", "."]])
def test_ruff(args):
  ruff = shutil.which("ruff")
  assert ruff, "ruff is a test dependency: pip install -e '.[test]'"
  result = subprocess.run([ruff, *args], cwd=ROOT, capture_output=True, text=True)
  assert result.returncode == 0, result.stdout + result.stderr
