"""A master and its workers as processes on this host: used by ``gating demo`` and by
the integration tests, so both run the product exactly as an admin would.

Layout under ``basedir``::

    config/            the configuration directory ($GATING_CONFIG)
    master/            buildbot master: master.cfg, state.sqlite, secrets/worker-NAME
    workers/NAME/      one buildbot-worker per inventory entry
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from gating.inrepo import link_venv
from gating.site import load_config

REPO_ROOT = Path(__file__).resolve().parent.parent
MASTER_CFG = REPO_ROOT / "master.cfg"


def _bin(name: str) -> str:
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


def _live_pid(pidfile: Path) -> int | None:
    try:
        pid = int(pidfile.read_text().strip())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    return pid


def _reap(pid: int, alive: Any, grace: float = 30) -> None:
    """Wait for a stopped daemon to exit; kill it if it does not (a clean shutdown can hang,
    e.g. on a server that went away first), so no master outlives its site."""
    deadline = time.monotonic() + grace
    while alive() == pid and time.monotonic() < deadline:
        time.sleep(0.2)
    if alive() == pid:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


TAC_PASSWORD_PLACEHOLDER = "set-after-create"


def set_tac_password(tac: str, password: str) -> str:
    """``buildbot.tac`` with its ``passwd`` line set to ``password``: ``create-worker`` is
    given a placeholder, because every user of the host can read a process's argv."""
    line = f"passwd = {TAC_PASSWORD_PLACEHOLDER!r}\n"
    if tac.count(line) != 1:
        raise RuntimeError("buildbot.tac: no single 'passwd = ...' line made by create-worker")
    return tac.replace(line, f"passwd = {password!r}\n")


def run_checked(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    if proc.returncode != 0:
        raise RuntimeError(
            f"{' '.join(cmd[:3])}... failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
        )
    return proc


@dataclass
class LocalSite:
    basedir: Path
    www_port: int = 8010
    pb_port: int = 9989
    # The inventory's workers this site runs (None: all). Two sites of one multi-master
    # configuration split the workers between them: a worker connects to one master.
    workers: tuple[str, ...] | None = None

    def runs_worker(self, name: str) -> bool:
        return self.workers is None or name in self.workers

    @property
    def config_dir(self) -> Path:
        return self.basedir / "config"

    @property
    def master_dir(self) -> Path:
        return self.basedir / "master"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.www_port}/"

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["GATING_CONFIG"] = str(self.config_dir)
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        return env

    # -- creation -----------------------------------------------------------------

    def create(self, config_source: Path | None = None) -> None:
        """Copy a configuration directory in (once; or use one already in ``config/``),
        set its ports to this site's, and create the master and the workers."""
        self.basedir.mkdir(parents=True, exist_ok=True)
        if not self.config_dir.exists():
            if config_source is None:
                raise FileNotFoundError(f"no configuration in {self.config_dir}")
            shutil.copytree(config_source, self.config_dir)
        site_file = self.config_dir / "gating.yaml"
        data = yaml.safe_load(site_file.read_text()) or {}
        data.update(
            {
                "www-port": self.www_port,
                "www-interface": "127.0.0.1",
                "buildbot-url": self.url,
                "pb-port": f"tcp:{self.pb_port}:interface=127.0.0.1",
            }
        )
        site_file.write_text(yaml.safe_dump(data, sort_keys=False))
        config = load_config(self.config_dir)
        self.master_dir.mkdir(exist_ok=True)
        shutil.copy(MASTER_CFG, self.master_dir / "master.cfg")
        if not (self.master_dir / "buildbot.tac").exists():
            run_checked(
                [
                    _bin("buildbot"),
                    "create-master",
                    "--relocatable",
                    "--quiet",
                    str(self.master_dir),
                ],
                env=self.env(),
            )
        secrets_dir = self.master_dir / "secrets"
        secrets_dir.mkdir(mode=0o700, exist_ok=True)
        os.chmod(secrets_dir, 0o700)
        for w in config.workers:
            secret = secrets_dir / w.password_secret
            if not secret.exists():
                fd = os.open(secret, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "w") as fh:
                    fh.write(secrets.token_urlsafe(24))
            wdir = self.basedir / "workers" / w.name
            if self.runs_worker(w.name) and not (wdir / "buildbot.tac").exists():
                wdir.parent.mkdir(parents=True, exist_ok=True)
                run_checked(
                    [
                        _bin("buildbot-worker"),
                        "create-worker",
                        "--relocatable",
                        "--umask=0o022",
                        str(wdir),
                        f"127.0.0.1:{self.pb_port}",
                        w.name,
                        TAC_PASSWORD_PLACEHOLDER,  # never the password: argv is public
                    ],
                    env=self.env(),
                )
                tac = wdir / "buildbot.tac"
                os.chmod(tac, 0o600)
                tac.write_text(
                    set_tac_password(tac.read_text(), secret.read_text().strip()),
                    encoding="utf-8",
                )
            if self.runs_worker(w.name):
                # The in-repo pipeline runner's Python (gating.inrepojob runs
                # WORKER/gating-venv/bin/python3 -P -m gating.inrepo): this one, as a deployed
                # worker's is its virtualenv's.
                link_venv(wdir, Path(sys.prefix))
        run_checked([_bin("buildbot"), "upgrade-master", str(self.master_dir)], env=self.env())

    # -- processes ----------------------------------------------------------------
    # Master and workers run as daemons with pid files, as an admin runs them, so that
    # `buildbot reconfig` and `buildbot stop` work on them.

    def start(self, timeout: float = 90) -> None:
        # `buildbot start` gives up after 10 s by default (and leaves the master running),
        # less than a master needs to start on a loaded machine: it waits ``timeout``.
        proc = subprocess.run(
            [_bin("buildbot"), "start", f"--start_timeout={timeout:g}", str(self.master_dir)],
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=timeout + 30,
        )
        if proc.returncode != 0:
            raise RuntimeError(
                f"the master did not start ({proc.returncode}): {proc.stdout}{proc.stderr}\n"
                f"see {self.master_dir / 'twistd.log'}"
            )
        self.wait_for_ui(timeout)
        config = load_config(self.config_dir)
        names = [w.name for w in config.workers if self.runs_worker(w.name)]
        for name in names:
            self.start_worker(name)
        self.wait_for_workers(names, timeout)

    def worker_dir(self, name: str) -> Path:
        return self.basedir / "workers" / name

    def start_worker(self, name: str) -> None:
        """Start a worker unless it is running already (it reconnects to a restarted master).
        Its connection is not awaited here (:meth:`wait_for_workers`): `buildbot-worker start`
        fails when it saw no connection within 10 s, as on a loaded machine, while the worker
        runs and connects later; only a worker that does not run is an error."""
        if self.worker_pid(name) is not None:
            return
        try:
            run_checked(
                [_bin("buildbot-worker"), "start", str(self.worker_dir(name))], env=self.env()
            )
        except RuntimeError:
            if self.worker_pid(name) is None:
                raise

    def worker_pid(self, name: str) -> int | None:
        return _live_pid(self.worker_dir(name) / "twistd.pid")

    def stop_worker(self, name: str) -> None:
        pid = self.worker_pid(name)
        if pid is not None:
            try:
                subprocess.run(
                    [_bin("buildbot-worker"), "stop", str(self.worker_dir(name))],
                    env=self.env(),
                    capture_output=True,
                    timeout=60,
                )
            except subprocess.TimeoutExpired:
                pass
            _reap(pid, lambda: self.worker_pid(name))

    def master_pid(self) -> int | None:
        return _live_pid(self.master_dir / "twistd.pid")

    def stop(self) -> None:
        """Stop the workers (all at once: SIGTERM, as ``buildbot-worker stop`` sends it, then
        wait for each), then the master."""
        workers = self.basedir / "workers"
        names = [w.name for w in sorted(workers.iterdir())] if workers.exists() else []
        running = {name: pid for name in names if (pid := self.worker_pid(name)) is not None}
        for pid in running.values():
            try:
                os.kill(pid, signal.SIGTERM)
            except OSError:
                pass
        # A worker running a command can take long to let go of it: it is killed after 10 s
        # (its builds are lost either way).
        for name, pid in running.items():
            _reap(pid, lambda name=name: self.worker_pid(name), grace=10)
        pid = self.master_pid()
        if pid is not None:
            try:
                subprocess.run(
                    [_bin("buildbot"), "stop", str(self.master_dir)],
                    env=self.env(),
                    capture_output=True,
                    timeout=120,
                )
            except subprocess.TimeoutExpired:
                pass
            _reap(pid, self.master_pid)

    def reconfig(self) -> subprocess.CompletedProcess:
        """``buildbot reconfig``: sends SIGHUP and waits for the master's verdict."""
        return subprocess.run(
            [_bin("buildbot"), "reconfig", str(self.master_dir)],
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=120,
        )

    # -- REST API -------------------------------------------------------------------

    def api(self, path: str, timeout: float = 10) -> Any:
        with urllib.request.urlopen(self.url + "api/v2/" + path, timeout=timeout) as resp:
            return json.load(resp)

    def rpc(self, path: str, method: str, **params: Any) -> Any:
        body = json.dumps({"jsonrpc": "2.0", "method": method, "params": params, "id": 1})
        req = urllib.request.Request(
            self.url + "api/v2/" + path,
            data=body.encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.load(resp)

    def approve(self, project: str, number: int) -> dict[str, Any]:
        """Put a change of the embedded forge in the gate (``gating approve``)."""
        req = urllib.request.Request(
            self.url + "plugins/gating/api/approve",
            data=json.dumps({"project": project, "change": number}).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.load(resp)

    def wait_for_ui(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.master_pid() is None:
                raise RuntimeError(
                    f"the master is not running; see {self.master_dir / 'twistd.log'}"
                )
            try:
                self.api("masters")
                return
            except (OSError, urllib.error.URLError):
                time.sleep(0.5)
        raise TimeoutError(f"web UI did not answer on {self.url} within {timeout}s")

    def wait_for_workers(self, names: list[str], timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            workers = self.api("workers")["workers"]
            connected = {w["name"] for w in workers if w["connected_to"]}
            if set(names) <= connected:
                return
            time.sleep(0.5)
        raise TimeoutError(f"workers {names} did not connect within {timeout}s")

    def force(self, pipeline: str, **codebase: str) -> None:
        name = f"force-{pipeline}".replace(".", "_").replace("+", "_")
        fields = {f"{k}": v for k, v in codebase.items()}
        self.rpc(f"forceschedulers/{name}", "force", builderid=None, **fields)
