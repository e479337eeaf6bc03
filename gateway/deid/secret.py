"""The pseudonymisation secret: from the environment, or a 0600 file created on first use."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from gateway.deid.errors import DeidError

SECRET_BYTES = 32


class SecretError(DeidError):
    """The secret in the environment or file is unusable."""


def _decode(text: str, origin: str) -> bytes:
    text = text.strip()
    try:
        secret = bytes.fromhex(text)
    except ValueError as exc:
        raise SecretError(f"{origin} does not hold a hex secret") from exc
    if len(secret) < 16:
        raise SecretError(f"{origin} holds fewer than 16 bytes")
    return secret


def load_or_create_secret(env_var: str, path: Path) -> tuple[bytes, bool]:
    """Return ``(secret, created)``.

    Order: the hex value of ``env_var`` when set; else the hex content of ``path``; else 32 random
    bytes written to ``path`` as hex with mode 0600 (temporary file, fsync, rename), ``created=True``.

    Raises:
        SecretError: the variable or file does not hold at least 16 bytes of hex.
    """
    from_env = os.environ.get(env_var)
    if from_env:
        return _decode(from_env, f"environment variable {env_var}"), False
    if path.exists():
        return _decode(path.read_text(encoding="ascii"), f"secret file {path}"), False
    secret = secrets.token_bytes(SECRET_BYTES)
    if not _write_atomically(path, secret.hex() + "\n"):
        # Another process (a second node starting at the same moment) created it first: use that one.
        return _decode(path.read_text(encoding="ascii"), f"secret file {path}"), False
    return secret, True


def _write_atomically(path: Path, text: str) -> bool:
    """Create ``path`` with ``text`` durably, never replacing an existing file; False when it already exists.

    ``os.link`` is atomic and fails when the name exists, so two processes racing to create the key end with
    one key, not one each."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(descriptor, "w", encoding="ascii") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(temporary, path)
        except FileExistsError:
            return False
        finally:
            temporary.unlink(missing_ok=True)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
    return True
