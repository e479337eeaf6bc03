"""highdicom's table of the attributes of each module of the standard, read one module at a time.

highdicom reads its whole ``_standard/module_attribute_map.json`` (22 MB of JSON, 436 modules) on the first
SR it builds and keeps it: some 65 MB of Python objects for the rest of the process, and a peak 40 MB higher
while parsing. Building a notes SR looks at about 18 of those modules (Patient, General Study, SR Document
General...). :func:`install_module_table` replaces highdicom's loader with :class:`ModuleAttributeTable`, which
indexes where each module's list starts in the file (read a megabyte at a time) and parses a module's list the
first time it is asked for. Same lists, some 2 MB (the index and the modules read) instead of 65 MB.

The replacement is checked first, like the pynetdicom hooks (``gateway.dicom.net``): highdicom must look its
table up through ``get_module_attribute_map`` where the SR code uses it, and the file must be the indented
JSON object the index reads. Otherwise highdicom stays stock (one warning): the node then needs the 65 MB,
nothing else changes.
"""

from __future__ import annotations

import functools
import json
import re
import sys
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

log = structlog.get_logger("notes")

__all__ = ["ModuleAttributeTable", "ModuleTableHook", "install_module_table", "missing_hook_points"]

TABLE_FILE = "_standard/module_attribute_map.json"
#: A module's key at the top level of the file: two spaces of indent (its attributes' keys have six).
_MODULE_KEY = re.compile(rb'\n  "([^"\n]+)": \[')
#: Modules a notes SR needs, which a table that is not the standard's would lack.
_EXPECTED_MODULES = ("patient", "general-study", "sr-document-general", "sr-document-content", "sop-common")
#: Parsed modules kept: a notes SR reads about 18; the image classes the node sees add a few each.
CACHED_MODULES = 128


class ModuleAttributeTable(Mapping[str, list]):
    """``module_attribute_map.json`` as a read-only mapping of module key → its attribute entries, each list
    parsed from the file on first use (up to :data:`CACHED_MODULES` kept)."""

    def __init__(self, path: Path, chunk_bytes: int = 1 << 20) -> None:
        self._path = Path(path)
        self._starts = _index_modules(self._path, chunk_bytes)
        self._module = functools.lru_cache(maxsize=CACHED_MODULES)(self._read_module)

    def __getitem__(self, key: str) -> list:
        if key not in self._starts:
            raise KeyError(key)
        return self._module(key)

    def __contains__(self, key: object) -> bool:
        return key in self._starts

    def __iter__(self) -> Iterator[str]:
        return iter(self._starts)

    def __len__(self) -> int:
        return len(self._starts)

    def _read_module(self, key: str) -> list:
        start, end = self._starts[key]
        with self._path.open("rb") as stream:
            stream.seek(start)
            text = stream.read(end - start).decode("utf-8")
        value, _ = json.JSONDecoder().raw_decode(text)  # the list; the "," or "}" after it is left
        return value


def _index_modules(path: Path, chunk_bytes: int) -> dict[str, tuple[int, int]]:
    """Module key → (offset of its list's "[", offset where the next module's line begins) in the file."""
    starts: list[tuple[str, int, int]] = []  # key, offset of its "\n", offset of its "["
    with path.open("rb") as stream:
        if stream.read(1) != b"{":
            raise ValueError(f"{path.name} is not a JSON object")
        carry, carry_offset = b"", 1
        while chunk := stream.read(chunk_bytes):
            text = carry + chunk
            last_line = text.rfind(b"\n")
            for match in _MODULE_KEY.finditer(text):
                if match.start() >= last_line:
                    break
                starts.append((match.group(1).decode("utf-8"), carry_offset + match.start(),
                               carry_offset + match.end() - 1))
            cut = max(last_line, 0)
            carry, carry_offset = text[cut:], carry_offset + cut
        end_of_file = carry_offset + len(carry)
    ends = [line for _, line, _ in starts[1:]] + [end_of_file]
    return {key: (bracket, end) for (key, _, bracket), end in zip(starts, ends)}


@dataclass(frozen=True)
class ModuleTableHook:
    """What :func:`install_module_table` found: whether the lazy table is in effect, and if not, why."""

    installed: bool
    missing: tuple[str, ...] = ()


_install_lock = threading.Lock()
_installed: ModuleTableHook | None = None
_hooked_loader: Any = None
_stock_loader: Any = None  # highdicom's own, kept for the tests that compare the two


def install_module_table() -> ModuleTableHook:
    """Give highdicom the lazy module table, once per process, if highdicom is the shape the hook expects;
    else leave it stock and log one warning. Call it before the first SR is built (``GatewayNode.start``;
    the notes SR builder calls it too)."""
    global _installed
    with _install_lock:
        if _installed is None:
            _installed = _check_and_install()
        return _installed


def _check_and_install() -> ModuleTableHook:
    global _hooked_loader, _stock_loader
    missing = missing_hook_points()
    table = None
    if not missing:
        try:
            table = ModuleAttributeTable(_table_path())
        except (OSError, ValueError) as exc:
            missing.append(f"{TABLE_FILE} ({type(exc).__name__})")
    if table is not None and not all(module in table for module in _EXPECTED_MODULES):
        missing.append(f"{TABLE_FILE} (modules)")
    if missing or table is None:  # table is None only when something is missing
        log.warning("highdicom_table_hook_not_installed", reason=f"highdicom lacks {', '.join(missing)}",
                    error="highdicom reads its whole table of module attributes (about 65 MB)")
        return ModuleTableHook(False, tuple(missing))
    original = _stock_loader = _highdicom_loader()

    def get_module_attribute_map() -> ModuleAttributeTable:
        return table

    _hooked_loader = get_module_attribute_map
    for module in _modules_holding(original):
        module.get_module_attribute_map = get_module_attribute_map
    original.cache_clear()  # the whole table, if something read it before
    return ModuleTableHook(True)


def _highdicom_loader() -> Any:
    import highdicom._standard_utils

    return highdicom._standard_utils.get_module_attribute_map


def _modules_holding(function: Any) -> list[Any]:
    """highdicom's modules that hold ``function`` under its name (imported by name, or its own module)."""
    return [module for name, module in list(sys.modules.items())
            if (name == "highdicom" or name.startswith("highdicom.")) and
            getattr(module, "get_module_attribute_map", None) is function]


def _table_path() -> Path:
    import highdicom

    path = Path(highdicom.__file__).parent / TABLE_FILE
    if not path.is_file():
        raise FileNotFoundError(path)
    return path


def missing_hook_points() -> list[str]:
    """Every part of highdicom the hook relies on that is absent or not of the expected shape."""
    missing: list[str] = []

    def need(ok: Any, name: str) -> None:
        try:
            good = bool(ok())
        except Exception:  # noqa: BLE001 - any failure to look means highdicom is not as expected
            good = False
        if not good:
            missing.append(name)

    def calls(function: Any, *names: str) -> bool:
        return set(names) <= set(function.__code__.co_names)

    import highdicom._standard_utils as standard
    import highdicom.base

    loader = getattr(standard, "get_module_attribute_map", None)
    need(lambda: loader is _hooked_loader or callable(getattr(loader, "cache_clear", None)),
         "_standard_utils.get_module_attribute_map")
    need(lambda: calls(standard.is_attribute_in_iod, "get_module_attribute_map"), "_standard_utils.is_attribute_in_iod")
    need(lambda: calls(standard.construct_module_tree, "get_module_attribute_map"),
         "_standard_utils.construct_module_tree")
    need(lambda: calls(highdicom.base.SOPClass._copy_root_attributes_of_module, "get_module_attribute_map")
         and highdicom.base.get_module_attribute_map is loader, "base.SOPClass._copy_root_attributes_of_module")
    return missing
