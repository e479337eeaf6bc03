#!/usr/bin/env python3
"""Move the gateway's modules into their layers and rewrite every reference to them (issue 24).

Why a script and not a hand-made commit: other branches edit the moved files while this one is
open. Running the script again on a newer main gives the same layout without a merge of renames,
so the move can be replayed instead of merged. It is idempotent: a move already made is skipped and
a name already rewritten no longer matches.

What it does, in order:
1. ``git mv`` each file of MOVES (creating the new packages with a one-line docstring);
2. in every tracked text file (code, tests, bench, scripts, docs, setup.cfg, pyproject.toml,
   Dockerfile, Makefile), rewrites
   - ``from gateway.X import Y`` where ``gateway.X.Y`` is a moved module (``from gateway import cases``
     becomes ``from gateway.storage import cases``);
   - every dotted name whose longest module prefix was moved: imports, ``mock.patch`` and
     ``monkeypatch`` target strings, entry points (``gateway.cli:main``), names in prose;
   - every path ``gateway/.../x.py`` of a moved file.

Run from the repository root: ``python scripts/relayer.py`` (``--dry-run`` lists what it would do).
"""

from __future__ import annotations

import argparse
import ast
import io
import re
import subprocess
import sys
import tokenize
from pathlib import Path

# old module -> new module. The layers, from the ground up: dicom/, storage/, ops/, the libraries
# (privacy/, deid/, referral/, reports/, routing/), stages/, the entry points (cli/, web/, scp/), node.py.
MOVES: dict[str, str] = {
    # dicom/: every byte and network piece of DICOM.
    "gateway.dicomnet": "gateway.dicom.net",
    "gateway.echo": "gateway.dicom.echo",
    "gateway.status": "gateway.dicom.status",
    "gateway.referral.charset": "gateway.dicom.charset",
    # storage/: the database (models and their migrations), the case state machine, its wake-ups, the spool.
    "gateway.models": "gateway.storage.models",
    "gateway.cases": "gateway.storage.cases",
    "gateway.wakeup": "gateway.storage.wakeup",
    "gateway.scp.spool": "gateway.storage.spool",
    # stages/: every pipeline stage and the loop that runs them.
    "gateway.pipeline": "gateway.stages.pipeline",
    "gateway.deid.stage": "gateway.stages.deid",
    "gateway.referral.stage": "gateway.stages.referral",
    "gateway.reports.stage": "gateway.stages.reports",
    "gateway.routing.completion": "gateway.stages.completion",
    "gateway.routing.assign": "gateway.stages.assign",
    "gateway.routing.deliver": "gateway.stages.deliver",
    "gateway.routing.sla": "gateway.stages.sla",
    "gateway.routing.health": "gateway.stages.health",
    # scp/ (an entry point): the SCP's intake of the reviewers' reports is the SCP's, as the handlers are.
    "gateway.reports.intake": "gateway.scp.report_intake",
    # cli/: the command line, its commands gathered from the feature packages.
    "gateway.cli": "gateway.cli.main",
    "gateway.referral.commands": "gateway.cli.referral",
    "gateway.reports.commands": "gateway.cli.reports",
    "gateway.web.commands": "gateway.cli.users",
}

NEW_PACKAGES: dict[str, str | None] = {
    "gateway/storage/__init__.py": '"""Storage: the database (models, migrations), the case state machine, its wake-ups and the spool."""\n',  # noqa: E501
    "gateway/stages/__init__.py": '"""Stages: every step of the pipeline and the loop that runs them. Stages meet in the database."""\n',  # noqa: E501
    "gateway/cli/__init__.py": '"""The command line, ``spine-gateway``: ``main`` parses, the command modules act."""\n',
}

# Short forms that prose uses for a moved module (old -> new, literal); the new form no longer matches.
SHORT_FORMS: dict[str, str] = {
    "``dicomnet.": "``gateway.dicom.net.",
    "`routing/deliver.py`": "`gateway/stages/deliver.py`",
}

TEXT_SUFFIXES = {".py", ".md", ".rst", ".cfg", ".toml", ".ini", ".yaml", ".yml", ".sh", ".txt", ".html"}
TEXT_NAMES = {"Makefile", "Dockerfile"}
# Files that name the old modules on purpose: this script, and the record of the move and its check.
SKIP = {"scripts/relayer.py", "requirements.txt", "docs/architecture.md", "tests/test_architecture.py"}

DOTTED = re.compile(r"(?<![\w\-/.])gateway(?:\.[A-Za-z_]\w*)+")
PATH = re.compile(r"(?<![\w\-.])gateway(?:/\w+)+\.py\b")


def module_path(module: str) -> str:
    return module.replace(".", "/") + ".py"


def git(*args: str, root: Path) -> str:
    return subprocess.run(["git", *args], cwd=root, check=True, capture_output=True, text=True).stdout


def move_files(root: Path, dry_run: bool) -> list[str]:
    done = []
    for old, new in MOVES.items():
        source, target = root / module_path(old), root / module_path(new)
        if not source.exists():
            continue  # moved already, or the old file is now a package (gateway/cli/)
        done.append(f"git mv {module_path(old)} {module_path(new)}")
        if dry_run:
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        git("mv", module_path(old), module_path(new), root=root)
    for path, text in NEW_PACKAGES.items():
        target = root / path
        if text is None or target.exists():
            continue
        done.append(f"create {path}")
        if not dry_run:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
            git("add", path, root=root)
    return done


def child_modules(root: Path, package: str) -> set[str]:
    """Names of the modules inside a package that an old module's name became (gateway.cli -> main, ...)."""
    folder = root / package.replace(".", "/")
    if not folder.is_dir():
        return {new.rpartition(".")[2] for new in MOVES.values() if new.startswith(package + ".")}
    return {p.stem for p in folder.glob("*.py") if p.stem != "__init__"} | {p.name for p in folder.iterdir() if p.is_dir()}  # noqa: E501


def defined_names(root: Path, module: str) -> set[str]:
    """The top-level names of a module's file (``main`` in gateway/cli/main.py), empty if it is not there."""
    path = root / module_path(module)
    if not path.is_file():
        return set()
    names = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
    return names


def keeps_package(module: str, name: str, root: Path) -> bool:
    """True for ``gateway.cli`` + ``referral``: an old module that became a package, named with one of its children.

    ``from gateway.cli import main`` is the old module's function ``main`` (the name is defined in the moved
    file), not the new child module gateway.cli.main: it becomes ``from gateway.cli.main import main``."""
    return (module in MOVES and MOVES[module].startswith(module + ".") and name in child_modules(root, module)
            and name not in defined_names(root, MOVES[module]) | defined_names(root, module))


def rewrite_dotted(name: str, root: Path) -> str:
    """``gateway.models.Study`` -> ``gateway.storage.models.Study``; a name that is new already is kept."""
    parts = name.split(".")
    for cut in range(len(parts), 1, -1):
        prefix = ".".join(parts[:cut])
        if prefix in MOVES:
            rest = parts[cut:]
            new = MOVES[prefix]
            if new.startswith(prefix + ".") and rest and rest[0] in child_modules(root, prefix):
                return name  # gateway.cli.main, gateway.cli.common: names of the new package
            return ".".join([new, *rest])
    return name


def rewrite_import_from(line_text: str, node: ast.ImportFrom, root: Path) -> str | None:
    """``from gateway import cases, config`` -> two statements when a name imported is a moved module."""
    if node.level or not node.module or not node.module.startswith("gateway"):
        return None
    groups: dict[str, list[str]] = {}
    changed = False
    for alias in node.names:
        full = f"{node.module}.{alias.name}"
        if full in MOVES and not (MOVES[full].startswith(full + ".")):
            parent, _, leaf = MOVES[full].rpartition(".")
            asname = alias.asname or (alias.name if leaf != alias.name else None)
            changed = True
        elif full in MOVES:  # from gateway import cli -> import gateway.cli.main as cli
            groups.setdefault("", []).append(f"{MOVES[full]} as {alias.asname or alias.name}")
            changed = True
            continue
        else:
            kept = keeps_package(node.module, alias.name, root)
            parent = node.module if kept else rewrite_dotted(node.module, root)
            leaf, asname = alias.name, alias.asname
        groups.setdefault(parent, []).append(f"{leaf} as {asname}" if asname and asname != leaf else leaf)
    if not changed:
        return None
    indent = line_text[: len(line_text) - len(line_text.lstrip())]
    statements = [f"from {parent} import {', '.join(names)}" for parent, names in groups.items() if parent]
    statements += [f"import {name}" for name in groups.get("", [])]
    return "\n".join(indent + statement for statement in statements) + "\n"


def rewrite_python_imports(text: str, root: Path) -> str:
    try:
        tree = ast.parse(text)
    except SyntaxError:
        return text
    lines = text.splitlines(keepends=True)
    edits = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            first = lines[node.lineno - 1]
            if first[: node.col_offset].strip():
                continue  # shares its line with other code: left to the dotted rewrite
            new = rewrite_import_from(first, node, root)
            end_line, end_col = node.end_lineno or node.lineno, node.end_col_offset or 0
            if new is not None:
                tail = lines[end_line - 1][end_col:]
                if tail.strip() and not tail.strip().startswith("#"):
                    continue
                comment = tail.rstrip("\n") if tail.strip() else ""
                if comment:
                    new = new.rstrip("\n") + comment + "\n"
                edits.append((node.lineno - 1, end_line, new))
    for start, end, new in sorted(edits, reverse=True):
        lines[start:end] = [new]
    return "".join(lines)


IMPORTED = re.compile(r"\s+import\s+\(?\s*(\w+)")


def rewrite_match(match: re.Match[str], root: Path) -> str:
    """One dotted name in place; ``from gateway.cli import main`` written by an earlier run is kept."""
    name = match.group(0)
    imported = IMPORTED.match(match.string, match.end())
    if imported and keeps_package(name, imported.group(1), root):
        return name
    return rewrite_dotted(name, root)


def python_spans(text: str) -> tuple[list[tuple[int, int]], bool] | None:
    """The character spans of a Python file where a dotted name is the module's (strings, comments, imports),
    and whether the file binds ``gateway`` itself (``import gateway.x``), so that code may name modules too.

    Elsewhere ``gateway`` is often a variable (``gateway = GatewayProcess(...)``; ``gateway.status()``)."""
    try:
        tree = ast.parse(text)
        tokens = list(tokenize.generate_tokens(io.StringIO(text).readline))
    except (SyntaxError, tokenize.TokenError):
        return None
    starts = [0]
    for line in text.splitlines(keepends=True):
        starts.append(starts[-1] + len(line))

    def offset(row: int, col: int) -> int:
        return starts[row - 1] + col

    spans = [(offset(*t.start), offset(*t.end)) for t in tokens if t.type in (tokenize.STRING, tokenize.COMMENT)]
    binds_package = False
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            end = offset(node.end_lineno or node.lineno, node.end_col_offset or 0)
            spans.append((offset(node.lineno, node.col_offset), end))
        if isinstance(node, ast.Import):
            binds_package |= any(a.asname is None and a.name.split(".")[0] == "gateway" for a in node.names)
    return spans, binds_package


def rewrite_text(text: str, is_python: bool, root: Path) -> str:
    if is_python:
        text = rewrite_python_imports(text, root)
        found = python_spans(text)
        spans, binds_package = found if found is not None else ([], True)

        def in_module_text(match: re.Match[str]) -> bool:
            return binds_package or any(start <= match.start() < end for start, end in spans)

        text = DOTTED.sub(lambda m: rewrite_match(m, root) if in_module_text(m) else m.group(0), text)
    else:
        text = DOTTED.sub(lambda m: rewrite_match(m, root), text)
    for old, new in SHORT_FORMS.items():
        text = text.replace(old, new)
    old_paths = {module_path(old): module_path(new) for old, new in MOVES.items()}
    return PATH.sub(lambda m: old_paths.get(m.group(0), m.group(0)), text)


def tracked_text_files(root: Path) -> list[Path]:
    files = []
    for name in git("ls-files", root=root).splitlines():
        path = root / name
        if name in SKIP or not path.is_file():
            continue
        if path.suffix in TEXT_SUFFIXES or path.name in TEXT_NAMES:
            files.append(path)
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="list the moves and the files to rewrite; change nothing")  # noqa: E501
    args = parser.parse_args(argv)
    root = Path(git("rev-parse", "--show-toplevel", root=Path.cwd()).strip())
    for step in move_files(root, args.dry_run):
        print(step)
    for path in tracked_text_files(root):
        old = path.read_text(encoding="utf-8")
        new = rewrite_text(old, path.suffix == ".py", root)
        if new != old:
            print(f"rewrite {path.relative_to(root)}")
            if not args.dry_run:
                path.write_text(new, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
