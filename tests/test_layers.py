"""The import-layer check that `make lint` runs: the package passes it, and it names the modules of a bad import."""

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHECK = ROOT / "tools" / "check_layers.py"


def _check(package: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(CHECK), str(package)], capture_output=True, text=True)


def test_the_package_imports_downwards_only():
    result = _check(ROOT / "superhf_lab")
    assert result.returncode == 0, result.stderr


def _copy_with(tmp_path: Path, module: str, line: str) -> Path:
    package = tmp_path / "superhf_lab"
    shutil.copytree(ROOT / "superhf_lab", package, ignore=shutil.ignore_patterns("__pycache__"))
    with (package / module).open("a") as file:
        file.write(line)
    return package


def test_an_upward_import_fails_naming_both_modules_even_inside_a_function(tmp_path):
    late = "\n\ndef _late():\n    from superhf_lab.launch.runner import train\n"
    result = _check(_copy_with(tmp_path, "core/errors.py", late))
    assert result.returncode == 1
    assert (
        "superhf_lab.core.errors imports superhf_lab.launch.runner: core/ may import no other folder" in result.stderr
    )


def test_a_circle_inside_one_folder_fails_naming_its_modules(tmp_path):
    result = _check(_copy_with(tmp_path, "tracking/spool.py", "\nfrom superhf_lab.tracking.tracker import Tracker\n"))
    assert result.returncode == 1
    assert "import circle" in result.stderr
    assert "superhf_lab.tracking.spool -> superhf_lab.tracking.tracker" in result.stderr
