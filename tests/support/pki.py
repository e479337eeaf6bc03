"""A throwaway PKI made with the openssl command line, as docs/operations.md tells a hospital to make one for a
test: a CA, and certificates it signs for a server on 127.0.0.1 and for a client."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Pki:
    ca_cert: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_pki(directory: Path, name: str = "test") -> Pki:
    """A CA named ``name`` and two certificates it signed: the server's (CN and SAN 127.0.0.1 / localhost)
    and a client's."""
    directory.mkdir(parents=True, exist_ok=True)
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={name} test CA",
             "-keyout", "ca.key", "-out", "ca.pem", cwd=directory)
    (directory / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for role in ("server", "client"):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name} {role}",
                 "-keyout", f"{role}.key", "-out", f"{role}.csr", cwd=directory)
        extension = ["-extfile", "san.ext"] if role == "server" else []
        _openssl("x509", "-req", "-in", f"{role}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                 "-days", "2", "-out", f"{role}.pem", *extension, cwd=directory)
    return Pki(directory / "ca.pem", directory / "server.pem", directory / "server.key",
               directory / "client.pem", directory / "client.key")
