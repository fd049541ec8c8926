"""The package's layout rules: what ships is told apart from what only serves development.

- only ``campaign.airflow_glue`` imports Airflow;
- the domain modules (``campaign.*`` outside ``web`` and ``dev``) import without a web
  framework, without the development harness and without Airflow;
- nothing outside ``campaign.dev`` imports it at import time (the CLI's demo commands do when run);
- every dotted ``campaign.…`` name written in code, scripts and configuration still resolves,
  so a moved module leaves no reference to its old path behind.
"""

from __future__ import annotations

import ast
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
PACKAGE = ROOT / "include" / "campaign"
SUBPACKAGES = ("web", "dev")


def _modules(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.py") if "__pycache__" not in p.parts)


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT / "include").with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, *, top_level_only: bool = False) -> set[str]:
    """Absolute module names a file imports (``from x import y`` gives ``x`` and ``x.y``)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    nodes = tree.body if top_level_only else ast.walk(tree)
    names: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _domain_modules() -> list[Path]:
    return [p for p in PACKAGE.glob("*.py") if p.name != "airflow_glue.py"]


def test_the_subpackages_exist_and_the_domain_is_not_empty():
    for name in SUBPACKAGES:
        assert (PACKAGE / name / "__init__.py").is_file(), f"campaign.{name} is missing"
    domain = {p.stem for p in _domain_modules()}
    assert {"sending", "confirm", "stats", "tracking", "deliveries"} <= domain


def test_only_airflow_glue_imports_airflow():
    offenders = {
        _module_name(path): sorted(n for n in _imports(path) if n == "airflow" or n.startswith("airflow."))
        for path in _modules(PACKAGE)
        if path.name != "airflow_glue.py"
    }
    assert {name: found for name, found in offenders.items() if found} == {}


@pytest.mark.parametrize("subpackage", SUBPACKAGES)
def test_domain_modules_do_not_import_the_subpackages(subpackage):
    prefix = f"campaign.{subpackage}"
    offenders = {
        _module_name(path): sorted(n for n in _imports(path, top_level_only=True) if n.startswith(prefix))
        for path in _modules(PACKAGE)
        if not _module_name(path).startswith(prefix)
    }
    assert {name: found for name, found in offenders.items() if found} == {}


def test_nothing_in_the_product_imports_the_dev_harness():
    product = [*_modules(ROOT / "dags"), *_modules(ROOT / "plugins"), ROOT / "include" / "dag_defaults.py"]
    offenders = {
        str(p.relative_to(ROOT)): sorted(n for n in _imports(p) if n.startswith("campaign.dev")) for p in product
    }
    assert {name: found for name, found in offenders.items() if found} == {}


# Web frameworks, the development harness's own dependencies and Airflow: none may be needed to
# import a domain module, so a worker or a data-team notebook can use the domain alone.
FORBIDDEN_FOR_THE_DOMAIN = ("airflow", "fastapi", "starlette", "uvicorn", "aiosmtpd", "httpx")


def test_domain_modules_import_without_web_framework_harness_or_airflow():
    names = sorted(_module_name(p) for p in _domain_modules())
    script = f"""
import importlib, importlib.abc, sys
FORBIDDEN = {FORBIDDEN_FOR_THE_DOMAIN!r}
class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in FORBIDDEN:
            raise ImportError(f"forbidden for the domain: {{name}}")
        return None
sys.meta_path.insert(0, Refuse())
for name in {names!r}:
    importlib.import_module(name)
print("imported", len({names!r}))
"""
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(ROOT / "include"), "PATH": "/usr/bin:/bin"},
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"imported {len(names)}"


# A dotted name in code or a script, e.g. ``python -m campaign.dev.smtp`` or ``campaign.web.tracking_app``.
_DOTTED = re.compile(r"\bcampaign(?:\.[A-Za-z_]\w*)+")
# Logger names (``campaign.confirm_send``: the DAG's log) are names, not module paths.
_LOGGER_NAME = re.compile(r"getLogger\(\s*[\"'][^\"']*[\"']\s*\)")
THIS_FILE = Path(__file__).resolve()
SCANNED = ("*.py", "*.sh", "Makefile", "*.yaml", "*.toml", "*.cfg", "Dockerfile", "bin/campaign", "scripts/*")


def _scanned_files() -> list[Path]:
    tracked = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    # A file deleted in the work tree but not yet committed is still listed by git: skip it.
    return sorted({ROOT / f for f in tracked if any(Path(f).match(p) for p in SCANNED) and (ROOT / f).is_file()})


def _resolves(dotted: str) -> bool:
    """True when the longest module prefix of a dotted name exists and the rest are attributes."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        module = ".".join(parts[:cut])
        try:
            spec = importlib.util.find_spec(module)
        except ModuleNotFoundError:  # a parent is a plain module: the name is an attribute
            spec = None
        if spec is None:
            continue
        if cut == len(parts):
            return True
        # The rest is an attribute; reading the source is enough and imports nothing heavy.
        source = Path(spec.origin).read_text()
        return re.search(rf"^(?:def|class|async def)?\s*{re.escape(parts[cut])}\b", source, re.MULTILINE) is not None
    return False


def test_every_dotted_campaign_name_in_the_project_resolves():
    files = _scanned_files()
    assert any(f.name == "run-embedded.sh" for f in files)  # scripts are scanned, not only Python
    stale = sorted(
        {
            f"{path.relative_to(ROOT)}: {name}"
            for path in files
            if path.resolve() != THIS_FILE  # its own examples of stale names below
            for name in _DOTTED.findall(_LOGGER_NAME.sub("", path.read_text(errors="replace")))
            if not _resolves(name)
        }
    )
    assert stale == []


def test_the_stale_name_check_catches_an_old_path():
    assert _resolves("campaign.dev.smtp")
    assert _resolves("campaign.web.tracking_app.create_app")
    assert not _resolves("campaign.devsmtp")
    assert not _resolves("campaign.tracking_app")
