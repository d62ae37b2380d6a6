"""A private PostgreSQL cluster for tests: the distribution's server binaries, all of its
state in a temporary directory, listening on a free loopback port with ``trust``
authentication, no Unix socket, and one database.

PostgreSQL refuses to run as root: when the tests run as root, ``initdb`` and the server
run as the distribution's ``postgres`` user (``runuser -u postgres``; ``PGUSER_OS``
overrides), in a directory of their own under ``/tmp`` (the tests' own temporary
directories are root's, 0700). Otherwise they run as the current user.

    with PostgresServer() as pg:
        pg.url  # postgresql://gating@127.0.0.1:PORT/gating

``stop`` is ``pg_ctl stop -m immediate`` (a test cluster has nothing to keep), then the
directory is removed.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from gating.localsite import free_port

USER = "gating"
DATABASE = "gating"
START_TIMEOUT = 60.0


def find_bindir() -> Path | None:
    """The directory of ``initdb``/``pg_ctl``/``postgres`` (``PG_BINDIR`` overrides): Debian's
    versioned ``/usr/lib/postgresql/N/bin`` (newest first), else the one on ``PATH``."""
    if os.environ.get("PG_BINDIR"):
        return Path(os.environ["PG_BINDIR"])
    for candidate in sorted(
        glob.glob("/usr/lib/postgresql/*/bin"),
        key=lambda p: int(Path(p).parent.name) if Path(p).parent.name.isdigit() else 0,
        reverse=True,
    ):
        if (Path(candidate) / "initdb").exists():
            return Path(candidate)
    found = shutil.which("initdb")
    if found and Path(found).resolve().parent.joinpath("postgres").exists():
        return Path(found).resolve().parent
    for candidate in ("/usr/bin", "/usr/pgsql/bin"):
        if (Path(candidate) / "postgres").exists() and (Path(candidate) / "initdb").exists():
            return Path(candidate)
    return None


class PostgresServer:
    """One private cluster; ``start`` returns once the database accepts connections."""

    def __init__(self, *, port: int | None = None) -> None:
        self.bindir = find_bindir()
        self.port = port or free_port()
        self.os_user: str | None = None
        if os.geteuid() == 0:
            self.os_user = os.environ.get("PGUSER_OS", "postgres")
        self.root: Path | None = None
        self.start_seconds: float | None = None

    @property
    def url(self) -> str:
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{DATABASE}"

    @property
    def data_dir(self) -> Path:
        assert self.root is not None
        return self.root / "data"

    @property
    def log_path(self) -> Path:
        assert self.root is not None
        return self.root / "server.log"

    def _as_owner(self, argv: list[str]) -> list[str]:
        if self.os_user is None:
            return argv
        return ["runuser", "-u", self.os_user, "--", *argv]

    def _run(self, argv: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
        proc = subprocess.run(
            self._as_owner(argv),
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, "LC_ALL": "C.UTF-8", "LANG": "C.UTF-8"},
            cwd="/",
        )
        if proc.returncode != 0:
            raise RuntimeError(
                f"{' '.join(argv[:2])} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
            )
        return proc

    def start(self, timeout: float = START_TIMEOUT) -> PostgresServer:
        if self.bindir is None:
            raise RuntimeError("PostgreSQL is not installed (no initdb/postgres found)")
        began = time.monotonic()
        self.root = Path(tempfile.mkdtemp(prefix="gating-pg-"))
        if self.os_user is not None:
            entry = pwd.getpwnam(self.os_user)
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
        os.chmod(self.root, 0o700)
        self._run(
            [
                str(self.bindir / "initdb"),
                "-D",
                str(self.data_dir),
                "-U",
                USER,
                "--auth=trust",
                "--encoding=UTF8",
                "--no-sync",
            ]
        )
        options = " ".join(
            [
                f"-p {self.port}",
                "-c listen_addresses=127.0.0.1",
                "-c unix_socket_directories=''",
                "-c fsync=off",
                "-c full_page_writes=off",
                "-c synchronous_commit=off",
                "-c max_connections=100",
            ]
        )
        self._run(
            [
                str(self.bindir / "pg_ctl"),
                "start",
                "-D",
                str(self.data_dir),
                "-l",
                str(self.log_path),
                "-o",
                options,
                "-w",
                "-t",
                str(int(timeout)),
            ],
            timeout=timeout + 30,
        )
        self._run(
            [
                str(self.bindir / "createdb"),
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-U",
                USER,
                DATABASE,
            ]
        )
        self.start_seconds = time.monotonic() - began
        return self

    def running(self) -> bool:
        if self.root is None or self.bindir is None:
            return False
        proc = subprocess.run(
            self._as_owner([str(self.bindir / "pg_ctl"), "status", "-D", str(self.data_dir)]),
            capture_output=True,
            cwd="/",
        )
        return proc.returncode == 0

    def psql(self, sql: str) -> str:
        """Run one statement with ``psql`` (tab-separated rows, no headers)."""
        assert self.bindir is not None
        proc = self._run(
            [
                str(self.bindir / "psql"),
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-U",
                USER,
                "-d",
                DATABASE,
                "-At",
                "-F",
                "\t",
                "-c",
                sql,
            ]
        )
        return proc.stdout

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except (OSError, AssertionError):
            return ""

    def stop(self) -> None:
        if self.root is None:
            return
        if self.bindir is not None and self.data_dir.exists():
            try:
                subprocess.run(
                    self._as_owner(
                        [
                            str(self.bindir / "pg_ctl"),
                            "stop",
                            "-D",
                            str(self.data_dir),
                            "-m",
                            "immediate",
                            "-w",
                        ]
                    ),
                    capture_output=True,
                    timeout=60,
                    cwd="/",
                )
            except subprocess.TimeoutExpired:
                pass
        shutil.rmtree(self.root, ignore_errors=True)
        self.root = None

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
