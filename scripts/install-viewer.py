#!/usr/bin/env python3
"""Vendor the portal's DICOM viewer (dwv, and the three packages it imports) into gateway/web/static/vendor/.

Each package is fetched from the npm registry at the version pinned below and checked against its SHA-512
integrity (the registry's ``dist.integrity``) before a byte is unpacked; only the browser files are kept. Nothing
is fetched at run time: the node serves these files itself (/static/vendor/...), and the reviewer's case page says
the viewer is not installed when they are missing. Idempotent: a complete install of the same pins is left alone.
Standard library only (runs before the venv exists). ``--force`` fetches again.

dwv's browser build is an ES module importing the bare names "konva", "magic-wand-tool" and "jszip". A browser
resolves bare names only through an import map, which would be an inline script (refused by the portal's
Content-Security-Policy), so the three imports are rewritten to small local modules that hand out the globals
the packages' own browser builds define (Konva, MagicWand, JSZip), loaded by the page before dwv.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import json
import shutil
import sys
import tarfile
import urllib.request
from pathlib import Path

REGISTRY = "https://registry.npmjs.org"
TARGET = Path(__file__).resolve().parent.parent / "gateway" / "web" / "static" / "vendor"

# name, version, integrity, {file in the package: file in TARGET}
PACKAGES = [
    ("dwv", "0.36.4",
     "sha512-kXGlujGcCKSJD6s0THa2z4Kn/aVCdltvbgrn8g2WcTA8TgLZJHp6Z0Tbu3gxkerIaMCrTC4TbaWJI0nq9tPAFg==",
     {"dist/dwv.min.js": "dwv/dwv.min.js", "license.txt": "dwv/LICENSE.txt",
      "dist/assets/workers/": "dwv/assets/workers/"}),
    ("konva", "10.2.5",
     "sha512-WwBoe/EBhFcv+seL1Wnp3OAOwOFjCY4nCCgpLRrzUzw1IX4lKf/lYhj2Z3qo9P9q2fA3h+OdGDlimSNqZJaY5A==",
     {"konva.min.js": "konva/konva.min.js", "LICENSE": "konva/LICENSE"}),
    ("magic-wand-tool", "1.1.7",
     "sha512-S4rHzCs/bAp7nhQGKeg+McWuqrdyZKpnu8Ahd8AU7NzuLTm/Hh8tkpv1tW91Kmm59foIrXzip1d+P9NDoyxrZA==",
     {"dist/magic-wand.js": "magic-wand-tool/magic-wand.js", "LICENSE.txt": "magic-wand-tool/LICENSE.txt"}),
    ("jszip", "3.10.1",
     "sha512-xXDvecyTpGLrqFrvkrUSoxxfJI5AH7U8zxxtVclpsUtMCq4JQ290LY8AW5c7Ggnr/Y/oK+bQMbqK2qmtk3pN4g==",
     {"dist/jszip.min.js": "jszip/jszip.min.js", "LICENSE.markdown": "jszip/LICENSE.markdown"}),
]
# The bare imports of dwv.min.js and the module each becomes (a file written next to it).
SHIMS = {"konva": ("konva.mjs", "Konva"), "magic-wand-tool": ("magic-wand-tool.mjs", "MagicWand"),
         "jszip": ("jszip.mjs", "JSZip")}
STAMP = TARGET / "installed.json"


class InstallError(Exception):
    pass


def pins() -> dict[str, str]:
    return {name: version for name, version, _, _ in PACKAGES}


def installed() -> bool:
    try:
        return json.loads(STAMP.read_text()) == pins()
    except (OSError, ValueError):
        return False


def fetch(name: str, version: str, integrity: str) -> bytes:
    url = f"{REGISTRY}/{name}/-/{name.rsplit('/', 1)[-1]}-{version}.tgz"
    try:
        with urllib.request.urlopen(url, timeout=120) as answer:
            data = answer.read()
    except OSError as exc:
        raise InstallError(f"{name} {version}: could not fetch {url} ({exc})") from exc
    return verified(f"{name} {version}", data, integrity)


def verified(what: str, data: bytes, integrity: str) -> bytes:
    """``data`` if its digest is the pinned Subresource-Integrity string (``sha512-<base64>``), else InstallError."""
    algorithm, _, expected = integrity.partition("-")
    if algorithm != "sha512":
        raise InstallError(f"{what}: the pin must be a sha512 integrity, not {algorithm!r}")
    actual = base64.b64encode(hashlib.sha512(data).digest()).decode()
    if actual != expected:
        raise InstallError(f"{what}: integrity mismatch (sha512 {actual}, pinned {expected}): not installed")
    return data


def unpack(name: str, data: bytes, files: dict[str, str], into: Path) -> None:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as archive:
        members = {m.name.removeprefix("package/"): m for m in archive.getmembers() if m.isfile()}
        for source, target in files.items():
            chosen = ([m for path, m in members.items() if path.startswith(source)] if source.endswith("/")
                      else [members[source]] if source in members else [])
            if not chosen:
                raise InstallError(f"{name}: the package has no {source}")
            for member in chosen:
                relative = member.name.removeprefix("package/")
                if relative.endswith(".map"):
                    continue
                path = into / (target + relative.removeprefix(source) if source.endswith("/") else target)
                path.parent.mkdir(parents=True, exist_ok=True)
                extracted = archive.extractfile(member)
                assert extracted is not None
                path.write_bytes(extracted.read())


def rewrite_imports(into: Path) -> None:
    """dwv's bare imports become the local modules of :data:`SHIMS`, written beside it."""
    module = into / "dwv" / "dwv.min.js"
    text = module.read_text(encoding="utf-8")
    for bare, (shim, global_name) in SHIMS.items():
        statement = f'from"{bare}"'
        if text.count(statement) != 1:
            raise InstallError(f"dwv: expected one import of {bare!r} in dwv.min.js, found {text.count(statement)}")
        text = text.replace(statement, f'from"./{shim}"')
        (into / "dwv" / shim).write_text(
            f"// {bare}'s browser build, loaded by the page before dwv, defines {global_name}.\n"
            f"export default globalThis.{global_name};\n", encoding="utf-8")
    module.write_text(text, encoding="utf-8")


def install(force: bool = False) -> str:
    if installed() and not force:
        return f"the viewer is installed ({TARGET})"
    staging = TARGET.with_name("vendor.partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for name, version, integrity, files in PACKAGES:
        unpack(name, fetch(name, version, integrity), files, staging)
    rewrite_imports(staging)
    (staging / "installed.json").write_text(json.dumps(pins()), encoding="utf-8")
    shutil.rmtree(TARGET, ignore_errors=True)
    staging.rename(TARGET)
    return "installed the viewer: " + ", ".join(f"{n} {v}" for n, v in pins().items()) + f" in {TARGET}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--force", action="store_true", help="fetch and unpack again")
    args = parser.parse_args()
    try:
        print(f"install-viewer: {install(args.force)}")
    except InstallError as exc:
        print(f"install-viewer: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
