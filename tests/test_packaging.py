"""Release readiness: the sdist and wheel build, pass ``twine check``, and the wheel
works in a fresh virtualenv holding only the core dependencies.

One build and one virtualenv serve every test here (module-scoped fixtures).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tarfile
import venv
import zipfile
from pathlib import Path
from typing import Any

import pytest

import sessionmw

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
CORE_DEPS = ("structlog", "standardwebhooks")
#: Optional packages that must not be installed, nor imported, in the core-only venv.
OPTIONAL = (
    "starlette",
    "fastapi",
    "flask",
    "django",
    "werkzeug",
    "redis",
    "sqlalchemy",
    "httpx",
    "prometheus_client",
)

#: A non-Python file the package needs at run time (the Django app's template).
REVOKE_TEMPLATE = (
    "sessionmw/contrib/django/templates/admin/sessionmw/devicesession/"
    "revoke_selected_confirmation.html"
)


def run(*args: str | Path, timeout: float = 300, cwd: Path = ROOT) -> str:
    result = subprocess.run(
        [str(a) for a in args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        check=False,
    )
    assert result.returncode == 0, f"{args}\n{result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``python -m build``: the sdist and the wheel, in a temporary directory."""
    out = tmp_path_factory.mktemp("dist")
    run(sys.executable, "-m", "build", "--outdir", out, ROOT)
    wheels, sdists = list(out.glob("*.whl")), list(out.glob("*.tar.gz"))
    assert len(wheels) == 1
    assert len(sdists) == 1
    return {"wheel": wheels[0], "sdist": sdists[0]}


@pytest.fixture(scope="module")
def core_python(dist: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtualenv with the wheel (``--no-deps``) and the two core deps only."""
    env_dir = tmp_path_factory.mktemp("core-venv")
    venv.EnvBuilder(with_pip=True, clear=True).create(env_dir)
    python = env_dir / ("Scripts/python.exe" if sys.platform == "win32" else "bin/python")
    run(python, "-m", "pip", "install", "-q", "--no-deps", dist["wheel"])
    run(python, "-m", "pip", "install", "-q", *CORE_DEPS)
    return python


def probe(python: Path, code: str) -> Any:
    """Run ``code`` in the core-only venv, outside the source tree; it prints JSON."""
    return json.loads(run(python, "-c", code, cwd=python.parent).strip().splitlines()[-1])


def test_twine_check_passes(dist: dict[str, Path]) -> None:
    """Both artifacts have valid metadata and a README that renders."""
    out = run(sys.executable, "-m", "twine", "check", "--strict", dist["wheel"], dist["sdist"])
    assert out.count("PASSED") == 2


def test_artifacts_hold_the_package_and_typing_marker(dist: dict[str, Path]) -> None:
    """The wheel ships the package with py.typed and the console script; the sdist
    also ships tests, examples, docs and the changelog; the version is the one of
    sessionmw/_version.py."""
    version = sessionmw.__version__
    assert dist["wheel"].name == f"sessionmw-{version}-py3-none-any.whl"
    with zipfile.ZipFile(dist["wheel"]) as wheel:
        names = set(wheel.namelist())
        metadata = wheel.read(f"sessionmw-{version}.dist-info/METADATA").decode()
        entry_points = wheel.read(f"sessionmw-{version}.dist-info/entry_points.txt").decode()
    assert {
        "sessionmw/__init__.py",
        "sessionmw/py.typed",
        "sessionmw/metrics.py",
        REVOKE_TEMPLATE,  # a data file: the Django admin's Revoke confirmation page
    } <= names
    assert not any(name.startswith(("tests/", "examples/", "docs/")) for name in names)
    assert "sessionmw = sessionmw.cli:main" in entry_points
    requires = re.findall(r"^Requires-Dist: ([\w.-]+)(.*)$", metadata, flags=re.M)
    core = sorted(name for name, rest in requires if "extra ==" not in rest)
    assert core == sorted(CORE_DEPS)
    for extra in ("starlette", "fastapi", "wsgi", "flask", "django", "redis", "http", "sql",
                  "postgres", "prometheus"):  # fmt: skip
        assert f"Provides-Extra: {extra}" in metadata
    with tarfile.open(dist["sdist"]) as sdist:
        members = {m.name.split("/", 1)[1] for m in sdist.getmembers() if "/" in m.name}
    for needed in (
        "pyproject.toml",
        "README.md",
        "CHANGELOG.md",
        "mkdocs.yml",
        "docs/index.md",
        "examples/metrics_app.py",
        "tests/test_packaging.py",
        "sessionmw/py.typed",
        REVOKE_TEMPLATE,
    ):
        assert needed in members, needed


def test_changelog_names_the_current_version() -> None:
    """The newest CHANGELOG.md entry is the version in sessionmw/_version.py."""
    text = (ROOT / "CHANGELOG.md").read_text()
    first = re.search(r"^## \[([^\]]+)\]", text, flags=re.M)
    assert first is not None
    assert first.group(1) == sessionmw.__version__


def test_core_import_pulls_in_no_framework(core_python: Path) -> None:
    """``import sessionmw`` and ``Settings()`` work with only the core deps, and no
    framework or driver is installed or imported."""
    code = f"""
import importlib.util, json, sys
import sessionmw
from importlib.metadata import version
sessionmw.Settings()
from sessionmw.gate import Gate
gate = Gate(sessionmw.Settings())
assert gate.check("abc").status == 401
optional = {list(OPTIONAL)!r}
print(json.dumps({{
    "version": sessionmw.__version__,
    "dist_version": version("sessionmw"),
    "file": sessionmw.__file__,
    "installed": [m for m in optional if importlib.util.find_spec(m) is not None],
    "imported": sorted(m for m in sys.modules if m.split(".")[0] in optional),
}}))
"""
    result = probe(core_python, code)
    assert result["version"] == result["dist_version"] == sessionmw.__version__
    assert "site-packages" in result["file"]
    assert result["installed"] == []
    assert result["imported"] == []


def test_pure_asgi_adapter_imports_without_starlette(core_python: Path) -> None:
    """sessionmw.asgi is pure ASGI: it imports, and builds a gate, with no framework."""
    code = """
import json, sys
from sessionmw.asgi import DeviceSessionMiddleware
async def app(scope, receive, send): pass
middleware = DeviceSessionMiddleware(app, backend="memory://")
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] == "starlette")))
"""
    assert probe(core_python, code) == []


#: (what to run in the core-only venv, the extra its error must name)
MISSING_EXTRAS = [
    ("import sessionmw.wsgi", "wsgi"),
    ("import sessionmw.contrib.flask", "flask"),
    ("import sessionmw.contrib.django", "django"),
    ("import sessionmw.contrib.django.urls", "django"),
    ("import sessionmw.metrics", "prometheus"),
    ("import sessionmw.contrib.fastapi", "fastapi"),
    ("import sessionmw.contrib.drf", "drf"),
    ("from sessionmw.bus import bus_from_url as b; b('postgresql://h/db', stream='s')", "postgres"),
    (
        "from sessionmw.gate import Gate; from sessionmw import Settings as S; "
        "Gate(S(oidc_issuer='https://idp.example', oidc_audience='app'))",
        "oidc",
    ),
    ("from sessionmw.backends import backend_from_url as b; b('redis://127.0.0.1/0')", "redis"),
    ("from sessionmw.backends import backend_from_url as b; b('sqlite:///s.db')", "sql"),
    ("from sessionmw.backends import backend_from_url as b; b('postgresql://h/db')", "sql"),
    ("from sessionmw.backends import backend_from_url as b; b('http://a/{session_id}')", "http"),
    (
        "from sessionmw.gate import Gate; from sessionmw import Settings as S; "
        "Gate(S(bus='redis://127.0.0.1/0'))",
        "redis",
    ),
]


def test_each_adapter_without_its_framework_names_the_extra(core_python: Path) -> None:
    """Every optional part, used without its package, raises ImportError whose
    message says ``pip install 'sessionmw[<extra>]'``."""
    code = f"""
import json
results = []
for statement, extra in {MISSING_EXTRAS!r}:
    try:
        exec(statement)
    except ImportError as exc:
        results.append([statement, extra, type(exc).__name__, str(exc)])
    else:
        results.append([statement, extra, None, "no error"])
print(json.dumps(results))
"""
    for statement, extra, error, message in probe(core_python, code):
        assert error is not None, statement
        assert f"pip install 'sessionmw[{extra}]'" in message, (statement, message)


def test_console_script_starts_without_frameworks(core_python: Path) -> None:
    """The ``sessionmw`` entry point prints its help in a core-only install."""
    if not (ROOT / "sessionmw" / "cli.py").exists():
        pytest.skip("sessionmw/cli.py has not landed yet")
    script = core_python.parent / "sessionmw"
    assert "revoke" in run(script, "--help", cwd=core_python.parent)
