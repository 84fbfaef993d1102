"""Every code snippet of the docs (docs/*.md and README.md) is checked against the code.

* ``python`` blocks: all compile; each one runs (in a subprocess, SESSIONMW_* variables
  removed, in an empty directory) unless a ``<!-- not-run: reason -->`` comment sits on
  the line just before its fence. ``<!-- continues -->`` runs a block after the
  previous ``python`` block of the same page, for a page that builds one app step by
  step. After a block runs, what it built is validated as a server would: Starlette
  and FastAPI apps build their middleware stack, a ``SESSIONMW`` dict (Django) and a
  ``backend`` string go through :class:`sessionmw.Settings`.
* ``bash`` blocks: unmarked ones run with bash in an empty directory. In every block,
  marked or not, each ``sessionmw ...`` line must parse with the real CLI parser,
  each ``pip install`` line may name only extras of pyproject.toml, each
  ``uvicorn``/``gunicorn`` target ``module:attr`` must import (with the variables the
  block sets), and each ``python -m module`` must exist. Inline code spans get the
  same checks (a ``sessionmw ...`` span only has to name real subcommands and options).
* ``json`` blocks parse and hold valid events; the ``sql`` block creates a table the
  SQL store reads; the Redis ``redis-cli`` blocks write what the Redis store and bus
  read (on the test Redis database).
* Every page with a ``pip install`` line installs what that page's examples need.

The placeholder secret ``whsec_...`` stands for the reader's own secret; blocks run
with a real one in its place.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parent.parent
PAGES = [*sorted((ROOT / "docs").glob("*.md")), ROOT / "README.md"]
PLACEHOLDER_SECRET = re.compile(r"whsec_\.\.\.")
TEST_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
LANGUAGES = {"python", "bash", "json", "sql", "promql", "mermaid"}
MARKER = re.compile(r"^\s*<!--\s*(not-run|continues)\b\s*(?::\s*(.*?))?\s*-->\s*$")
FENCE = re.compile(r"^(\s*)```(\S*)\s*$")
TARGET = re.compile(r"\A[A-Za-z_][\w.]*:[A-Za-z_]\w*\Z")
BIN = Path(sys.executable).parent
TIMEOUT = 60


@dataclass
class Block:
    page: str
    line: int  # 1-based line of the opening fence
    language: str
    body: str  # dedented
    marker: str | None = None  # "not-run" or "continues"
    reason: str = ""
    previous: Block | None = field(default=None, repr=False)  # for "continues"

    @property
    def id(self) -> str:
        return f"{self.page}:{self.line}"

    @property
    def runs(self) -> bool:
        return self.marker != "not-run"

    def program(self) -> str:
        """The source to run: with ``continues``, the previous block's program first."""
        if self.marker == "continues":
            assert self.previous is not None, f"{self.id}: nothing to continue"
            return self.previous.program() + "\n" + self.body
        return self.body


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def parse_page(path: Path) -> tuple[list[Block], list[str]]:
    """The fenced blocks of a page, and its text outside them (for inline code)."""
    lines = path.read_text().splitlines()
    blocks: list[Block] = []
    prose: list[str] = []
    last_python: Block | None = None
    i = 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if not match or not match.group(2):
            if match:
                raise AssertionError(f"{_rel(path)}:{i + 1}: a fence without a language")
            prose.append(lines[i])
            i += 1
            continue
        indent, language = match.group(1), match.group(2)
        start = i
        body: list[str] = []
        i += 1
        while i < len(lines) and lines[i].rstrip() != indent + "```":
            body.append(lines[i][len(indent) :] if lines[i].startswith(indent) else lines[i])
            i += 1
        assert i < len(lines), f"{_rel(path)}:{start + 1}: unclosed fence"
        i += 1
        block = Block(_rel(path), start + 1, language, "\n".join(body) + "\n")
        marker = MARKER.match(lines[start - 1]) if start else None
        if marker:
            block.marker, block.reason = marker.group(1), (marker.group(2) or "").strip()
            if prose and prose[-1] == lines[start - 1]:
                prose.pop()
        if language == "python":
            if block.marker == "continues":
                block.previous = last_python
            last_python = block
        blocks.append(block)
    return blocks, prose


def all_blocks() -> list[Block]:
    return [block for page in PAGES for block in parse_page(page)[0]]


BLOCKS = all_blocks()
PYTHON = [b for b in BLOCKS if b.language == "python"]
BASH = [b for b in BLOCKS if b.language == "bash"]


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without SESSIONMW_* variables, with the venv first on PATH."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SESSIONMW_")}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.pop("DJANGO_SETTINGS_MODULE", None)
    env.update(extra)
    return env


def with_secret(text: str) -> str:
    return PLACEHOLDER_SECRET.sub(TEST_SECRET, text)


# -- markers -------------------------------------------------------------------------


def test_every_block_has_a_language_and_every_skip_a_reason() -> None:
    """Fences name a known language; a ``not-run`` marker says why; ``continues``
    follows a python block; no marker comment floats away from its fence."""
    assert PYTHON, "no python blocks found"
    for block in BLOCKS:
        assert block.language in LANGUAGES, f"{block.id}: language {block.language!r}"
        if block.marker == "not-run":
            assert len(block.reason) >= 8, f"{block.id}: not-run needs a reason"
        if block.marker == "continues":
            assert block.language == "python", block.id
            assert block.previous is not None, f"{block.id}: no python block before it"
    for page in PAGES:
        _, prose = parse_page(page)
        stray = [line for line in prose if MARKER.match(line)]
        assert not stray, f"{_rel(page)}: marker not directly above a fence: {stray}"


# -- python --------------------------------------------------------------------------


@pytest.mark.parametrize("block", PYTHON, ids=lambda b: b.id)
def test_python_block_compiles(block: Block) -> None:
    compile(block.program(), block.id, "exec")


RUNNER = r"""
import json, os, sys, tempfile, traceback

results = {}
for block_id, source in json.load(sys.stdin):
    os.chdir(tempfile.mkdtemp(prefix="docs-snippet-"))
    try:
        from sessionmw.gate import forget_gates

        forget_gates()
        namespace = {"__name__": "docs_snippet"}
        exec(compile(source, block_id, "exec"), namespace)
        from sessionmw import Settings

        try:
            from starlette.applications import Starlette
        except ImportError:
            Starlette = None
        for value in list(namespace.values()):
            if Starlette is not None and isinstance(value, Starlette):
                value.build_middleware_stack()  # what the server does at start-up
        if isinstance(namespace.get("SESSIONMW"), dict):
            Settings.from_mapping(namespace["SESSIONMW"])
        if isinstance(namespace.get("backend"), str):
            Settings(backend=namespace["backend"])
        results[block_id] = None
    except BaseException:
        results[block_id] = traceback.format_exc(limit=-4)
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def python_results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str | None]:
    """Runs every runnable python block, each in a fresh namespace and directory, in
    one subprocess (imports are paid once); maps block id to a traceback or None."""
    runnable = [(b.id, with_secret(b.program())) for b in PYTHON if b.runs]
    tmp = tmp_path_factory.mktemp("python-blocks")
    result = subprocess.run(
        [sys.executable, "-c", RUNNER],
        input=json.dumps(runnable),
        capture_output=True,
        text=True,
        cwd=tmp,
        # Django snippets (a urls.py) run inside the example project's settings.
        env=clean_env(TMPDIR=str(tmp), DJANGO_SETTINGS_MODULE="examples.django_app.settings"),
        timeout=TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    answer: dict[str, str | None] = json.loads(result.stdout.strip().splitlines()[-1])
    return answer


@pytest.mark.parametrize("block", [b for b in PYTHON if b.runs], ids=lambda b: b.id)
def test_python_block_runs(block: Block, python_results: dict[str, str | None]) -> None:
    error = python_results[block.id]
    assert error is None, f"{block.id} failed:\n{error}"


# -- bash: the blocks that run -------------------------------------------------------


@pytest.mark.parametrize("block", [b for b in BASH if b.runs], ids=lambda b: b.id)
def test_bash_block_runs(block: Block, tmp_path: Path) -> None:
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", with_secret(block.body)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=clean_env(),
        timeout=TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, f"{block.id}:\n{result.stdout}{result.stderr}"


# -- bash and inline code: commands checked without running them -------------------------


@dataclass
class Command:
    where: str
    argv: list[str]
    env: dict[str, str]
    inline: bool = False


def split_commands(script: str) -> Iterator[tuple[list[str], dict[str, str]]]:
    """Simple commands of a shell script, with the variables assigned before them
    (``export X=1`` for the rest of the script, ``X=1 cmd`` for that command)."""
    exported: dict[str, str] = {}
    for line in script.replace("\\\n", " ").splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|")
        lexer.whitespace_split = True
        lexer.commenters = "#"
        words: list[str] = []
        for token in [*lexer, ";"]:
            if token not in (";", "&&", "||", "|", "&"):
                words.append(token)
                continue
            local: dict[str, str] = {}
            if words[:1] == ["export"]:
                for word in words[1:]:
                    name, _, value = word.partition("=")
                    exported[name] = value
                words = []
            while words and re.match(r"^[A-Za-z_]\w*=", words[0]):
                name, _, value = words.pop(0).partition("=")
                local[name] = value
            if words:
                yield words, {**exported, **local}
            words = []


def inline_commands(page: Path) -> Iterator[Command]:
    _, prose = parse_page(page)
    text = "\n".join(prose)
    for span in re.findall(r"`([^`]+)`", text):
        span = " ".join(span.split())
        if re.match(r"^(sessionmw|pip install|uvicorn|gunicorn) ", span):
            for argv, env in split_commands(span):
                yield Command(f"{_rel(page)} `{span}`", argv, env, inline=True)


def commands() -> list[Command]:
    found = []
    for block in BASH:
        for argv, env in split_commands(block.body):
            found.append(Command(block.id, argv, env))
    for page in PAGES:
        found.extend(inline_commands(page))
    return found


COMMANDS = commands()


def named(name: str) -> list[Command]:
    return [c for c in COMMANDS if Path(c.argv[0]).name == name]


def test_the_checks_find_commands() -> None:
    """Guard against a parser change that silently finds nothing to check."""
    for name in ("sessionmw", "pip", "uvicorn", "gunicorn"):
        assert named(name), name


def _subparsers(parser: Any) -> dict[str, Any]:
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


@pytest.mark.parametrize("command", named("sessionmw"), ids=lambda c: c.where)
def test_sessionmw_command_parses(command: Command) -> None:
    """Documented command lines parse with the real parser; inline mentions name real
    subcommands and options."""
    from sessionmw.cli import build_parser

    parser = build_parser()
    args = command.argv[1:]
    if not command.inline:
        try:
            parser.parse_args(args)
        except SystemExit as exc:
            pytest.fail(f"{command.where}: `{shlex.join(command.argv)}` exits {exc.code}")
        return
    current = parser
    rest = list(args)
    while rest and rest[0] in _subparsers(current):
        current = _subparsers(current)[rest.pop(0)]
    assert not _subparsers(current), f"{command.where}: no subcommand named"
    for word in rest:
        if word.startswith("-"):
            option = word.split("=", 1)[0]
            assert option in current._option_string_actions, f"{command.where}: {option}"


def pyproject_extras() -> dict[str, list[str]]:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    extras: dict[str, list[str]] = data["project"]["optional-dependencies"]
    return extras


def requirement_name(requirement: str) -> str:
    return re.split(r"[\[<>=!~ ;]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def install_targets(argv: list[str]) -> tuple[set[str], set[str]]:
    """Extras of sessionmw and other packages named by a ``pip install`` command."""
    extras: set[str] = set()
    packages: set[str] = set()
    for word in argv[2:]:
        if word.startswith("-"):
            continue
        match = re.match(r"^(?:\.|.*?/sessionmw|sessionmw)\[([\w,-]*)\]$", word)
        if match:
            extras.update(filter(None, match.group(1).split(",")))
        elif word in (".",) or word.endswith("/sessionmw") or word == "sessionmw":
            continue
        else:
            packages.add(requirement_name(word))
    return extras, packages


PIP = [c for c in named("pip") if c.argv[1:2] == ["install"]]


@pytest.mark.parametrize("command", PIP, ids=lambda c: c.where)
def test_pip_install_names_existing_extras(command: Command) -> None:
    extras, _ = install_targets(command.argv)
    unknown = extras - set(pyproject_extras())
    assert not unknown, f"{command.where}: no such extra {sorted(unknown)}"


def test_extras_named_in_prose_exist() -> None:
    """``sessionmw[...]`` anywhere in the docs names real extras."""
    known = set(pyproject_extras())
    for page in PAGES:
        for group in re.findall(r"sessionmw\[([\w,-]+)\]", page.read_text()):
            unknown = set(group.split(",")) - known
            assert not unknown, f"{_rel(page)}: sessionmw[{group}]"


def server_targets() -> list[tuple[str, dict[str, str], str]]:
    seen: dict[tuple[str, str], tuple[str, dict[str, str], str]] = {}
    for command in named("uvicorn") + named("gunicorn"):
        targets = [w for w in command.argv[1:] if TARGET.match(w)]
        if command.inline and not any((ROOT / t.split(".")[0]).is_dir() for t in targets):
            continue  # a mention such as `uvicorn --workers 4` or `uvicorn module:app`
        assert len(targets) == 1, f"{command.where}: {command.argv}"
        env = {k: with_secret(v) for k, v in command.env.items()}
        key = (targets[0], json.dumps(env, sort_keys=True))
        seen.setdefault(key, (targets[0], env, command.where))
    return list(seen.values())


IMPORTER = r"""
import importlib, json, sys, traceback

results = {}
for target in sys.argv[1:]:
    try:
        module, attr = target.split(":")
        app = getattr(importlib.import_module(module), attr)
        assert callable(app), f"{target} is not callable"
        results[target] = None
    except BaseException:
        results[target] = traceback.format_exc(limit=-4)
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def target_results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str | None]:
    """Imports every server target: one subprocess per distinct set of variables (all
    started at once), so an app reads exactly the variables its command line sets."""
    groups: dict[str, list[str]] = {}
    for target, env, _where in server_targets():
        groups.setdefault(json.dumps(env, sort_keys=True), []).append(target)
    running = []
    for env_json, targets in groups.items():
        cwd = tmp_path_factory.mktemp("server-target")
        process = subprocess.Popen(
            [sys.executable, "-c", IMPORTER, *targets],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=cwd,
            env=clean_env(**json.loads(env_json)),
        )
        running.append((env_json, process))
    results: dict[str, str | None] = {}
    for env_json, process in running:
        out, err = process.communicate(timeout=TIMEOUT)
        assert process.returncode == 0, err
        for target, error in json.loads(out.strip().splitlines()[-1]).items():
            results[f"{env_json} {target}"] = error
    return results


@pytest.mark.parametrize(
    ("target", "env", "where"), server_targets(), ids=[t[2] for t in server_targets()]
)
def test_server_target_imports(
    target: str, env: dict[str, str], where: str, target_results: dict[str, str | None]
) -> None:
    """``uvicorn``/``gunicorn`` targets import with the variables the docs set (the
    app's settings are validated at import time)."""
    error = target_results[f"{json.dumps(env, sort_keys=True)} {target}"]
    assert error is None, f"{where}: {target}\n{error}"


def test_python_m_modules_exist() -> None:
    import importlib.util

    sys.path.insert(0, str(ROOT))
    try:
        for command in named("python") + named("python3"):
            argv = command.argv
            if "-m" in argv:
                module = argv[argv.index("-m") + 1]
                found = importlib.util.find_spec(module) is not None
                assert found, f"{command.where}: no module {module}"
            if "-c" in argv:
                compile(argv[argv.index("-c") + 1], command.where, "exec")
    finally:
        sys.path.remove(str(ROOT))


# -- what each page installs covers what its examples use ----------------------------

NEEDS: list[tuple[str, str, set[str]]] = [
    # (pattern in the page's code blocks, what is needed, what satisfies it)
    (r"(?m)^\s*(\w+=\S+\s+)*uvicorn\s", "uvicorn", {"uvicorn"}),
    (r"(?m)^\s*(\w+=\S+\s+)*gunicorn\s", "gunicorn", {"gunicorn"}),
    (r"sqlite://", "sql", {"sql"}),
    (r"postgresql://", "sql + postgres", {"sql"}),
    (r"postgresql://", "postgres", {"postgres", "psycopg"}),
    (r"\bredis://", "redis", {"redis"}),
    (r"(?m)^\s*(import httpx|from httpx)", "httpx", {"http", "httpx"}),
    (r"(?m)^\s*from fastapi\b", "fastapi", {"fastapi"}),
    (r"(?m)^\s*from starlette\b", "starlette", {"starlette", "fastapi"}),
    (r"(?m)^\s*from flask\b", "flask", {"flask"}),
    (r"(?m)^\s*from django\b", "django", {"django"}),
    (r"(?m)^\s*from prometheus_client\b", "prometheus", {"prometheus"}),
]


def provided(extras: set[str], packages: set[str]) -> set[str]:
    """Extras and packages an install brings in, extras expanded through pyproject."""
    table = pyproject_extras()
    result = set(packages)
    todo = list(extras)
    while todo:
        extra = todo.pop()
        if extra in result:
            continue
        result.add(extra)
        for requirement in table.get(extra, []):
            nested = re.match(r"^sessionmw\[([\w,-]+)\]", requirement)
            if nested:
                todo.extend(nested.group(1).split(","))
            else:
                result.add(requirement_name(requirement))
    return result


PAGES_WITH_INSTALL = sorted({c.where.split(":")[0] for c in PIP if not c.inline}, key=lambda p: p)


@pytest.mark.parametrize("page", PAGES_WITH_INSTALL)
def test_install_lines_cover_the_page(page: str) -> None:
    """What a page's ``pip install`` blocks install covers the page's own examples, and
    the lines of one block (from a clone, from a path, from PyPI) install the same."""
    blocks = [b for b in BLOCKS if b.page == page]
    code = "\n".join(b.body for b in blocks if b.language in ("python", "bash"))
    code = "\n".join(line for line in code.splitlines() if "pip install" not in line)
    needed = [(need, ok) for pattern, need, ok in NEEDS if re.search(pattern, code)]
    installs = [c for c in PIP if not c.inline and c.where.split(":")[0] == page]
    have: set[str] = set()
    for where in {c.where for c in installs}:
        variants = {
            json.dumps([sorted(s) for s in install_targets(c.argv)])
            for c in installs
            if c.where == where
        }
        assert len(variants) == 1, f"{where}: the install lines differ: {variants}"
    for command in installs:
        have |= provided(*install_targets(command.argv))
    missing = [need for need, ok in needed if not ok & have]
    assert not missing, f"{page}: no `pip install` line brings {missing}"


# -- data blocks ---------------------------------------------------------------------


def test_json_blocks_are_valid_events() -> None:
    from sessionmw.events import parse_event

    blocks = [b for b in BLOCKS if b.language == "json"]
    assert blocks
    for block in blocks:
        try:
            values = [json.loads(block.body)]
        except json.JSONDecodeError:
            values = [json.loads(line) for line in block.body.splitlines() if line.strip()]
        for value in values:
            for event in value.get("events", [value]):
                parse_event(event)


def test_sql_block_creates_a_table_the_store_reads(tmp_path: Path) -> None:
    """The documented table, created by hand on SQLite, is read by the SQL store."""
    import time

    from sessionmw import SessionStatus
    from sessionmw.backends import backend_from_url

    (block,) = [b for b in BLOCKS if b.language == "sql"]
    path = tmp_path / "sessions.db"
    with sqlite3.connect(path) as db:
        db.executescript(block.body)
        db.execute(
            "INSERT INTO device_sessions VALUES (?, ?, ?, ?, ?, ?)",
            ("7f3c9b2e1d", "u-42", "active", time.time() + 60, time.time(), '{"a": 1}'),
        )
    db.close()
    record = backend_from_url(f"sqlite:///{path}").lookup("7f3c9b2e1d")
    assert record is not None
    assert record.user_id == "u-42"
    assert record.status is SessionStatus.ACTIVE
    assert dict(record.data) == {"a": 1}


def _redis_block(page: str, needle: str) -> Block:
    (block,) = [b for b in BASH if b.page == page and needle in b.body]
    return block


def _run_with_redis(block: Block, url: str) -> None:
    shim = f'redis-cli() {{ command redis-cli -u "{url}" "$@" >/dev/null; }}\n'
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", shim + block.body],
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.redis
def test_redis_hset_block_writes_a_session_the_store_reads(
    redis_url: str, redis_client: Any
) -> None:
    """docs/backends.md's ``redis-cli HSET`` makes an active session, valid now."""
    import time

    from sessionmw import SessionStatus
    from sessionmw.backends import backend_from_url

    _run_with_redis(_redis_block("docs/backends.md", "HSET"), redis_url)
    backend = backend_from_url(redis_url)
    record = backend.lookup("7f3c9b2e1d")
    assert record is not None
    assert record.status is SessionStatus.ACTIVE
    assert record.expires_at is not None
    assert record.expires_at > time.time() + 86400
    assert record.issued_at is not None
    assert record.issued_at <= time.time()
    assert dict(record.data) == {"device": "ios"}


@pytest.mark.redis
def test_redis_xadd_block_writes_events_the_bus_reads(redis_url: str, redis_client: Any) -> None:
    """docs/invalidation.md's ``redis-cli XADD`` lines are events the bus accepts."""
    from sessionmw.events import from_fields

    _run_with_redis(_redis_block("docs/invalidation.md", "XADD"), redis_url)
    entries = redis_client.xrange("sessionmw:invalidations")
    types = [type(from_fields(fields)).__name__ for _id, fields in entries]
    assert types == ["SessionRevoked", "UserSessionsRevoked", "Flush"]


# -- messages quoted by the docs -----------------------------------------------------


def test_quoted_config_errors_are_the_real_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    """The ``ConfigError`` messages troubleshooting.md and configuration.md quote are
    the ones the code raises."""
    from sessionmw import ConfigError, Settings

    text = " ".join((ROOT / "docs" / "troubleshooting.md").read_text().split())
    text += " ".join((ROOT / "docs" / "configuration.md").read_text().split())
    for name in [k for k in os.environ if k.startswith("SESSIONMW_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("SESSIONMW_TTLL", "60")
    cases: list[tuple[str, Any]] = [
        ("SESSIONMW_TTLL: unknown setting (did you mean 'ttl'?)", Settings.from_env),
        ("ttl: must be greater than 0, got -1.0", lambda: Settings(ttl=-1)),
        ("backend: unsupported URL scheme 'mysqlx'", lambda: Settings(backend="mysqlx://h/d")),
    ]
    for quoted, build in cases:
        assert f"`{quoted}" in text, quoted
        with pytest.raises(ConfigError) as caught:
            build()
        assert str(caught.value).startswith(quoted)


def test_quoted_log_events_exist() -> None:
    """Every ``session.*``, ``backend.*``, ``invalidation.*``, ``bus.*`` and ``cache.*``
    log event the docs name is one sessionmw logs."""
    from sessionmw import _log

    real = {v for k, v in vars(_log).items() if k.isupper() and isinstance(v, str)}
    pattern = r"`((?:session|backend|invalidation|bus|cache)\.[a-z_]+)`"
    for page in PAGES:
        for event in re.findall(pattern, page.read_text()):
            assert event in real, f"{_rel(page)}: no log event {event!r}"
