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
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gating.site import load_config

REPO_ROOT = Path(__file__).resolve().parent.parent
MASTER_CFG = REPO_ROOT / "master.cfg"


def _bin(name: str) -> str:
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


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
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)

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

    def create(self, config_source: Path, replacements: dict[str, str] | None = None) -> None:
        """Copy a configuration directory in (once), create the master and the workers."""
        self.basedir.mkdir(parents=True, exist_ok=True)
        if not self.config_dir.exists():
            shutil.copytree(config_source, self.config_dir)
            replacements = {
                "8010": str(self.www_port),
                "9989": str(self.pb_port),
                **(replacements or {}),
            }
            for path in self.config_dir.rglob("*.yaml"):
                text = path.read_text()
                for old, new in replacements.items():
                    text = text.replace(old, new)
                path.write_text(text)
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
            if not (wdir / "buildbot.tac").exists():
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
                        secret.read_text().strip(),
                    ],
                    env=self.env(),
                )
                os.chmod(wdir / "buildbot.tac", 0o600)
        run_checked([_bin("buildbot"), "upgrade-master", str(self.master_dir)], env=self.env())

    # -- processes ----------------------------------------------------------------

    def start(self, timeout: float = 90) -> None:
        log = open(self.basedir / "master.out", "ab")  # noqa: SIM115 - kept for the process
        self.processes["master"] = subprocess.Popen(
            [_bin("buildbot"), "start", "--nodaemon", str(self.master_dir)],
            env=self.env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.wait_for_ui(timeout)
        config = load_config(self.config_dir)
        for w in config.workers:
            self.start_worker(w.name)
        self.wait_for_workers([w.name for w in config.workers], timeout)

    def start_worker(self, name: str) -> None:
        wdir = self.basedir / "workers" / name
        log = open(self.basedir / f"worker-{name}.out", "ab")  # noqa: SIM115
        self.processes[f"worker:{name}"] = subprocess.Popen(
            [_bin("buildbot-worker"), "start", "--nodaemon", str(wdir)],
            env=self.env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def stop(self) -> None:
        for name, proc in reversed(list(self.processes.items())):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            del self.processes[name]

    def reconfig(self) -> None:
        """``buildbot reconfig``: sends SIGHUP and waits for the master's verdict."""
        subprocess.run(
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

    def wait_for_ui(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            master = self.processes.get("master")
            if master is not None and master.poll() is not None:
                raise RuntimeError(
                    f"master exited ({master.returncode}); see {self.master_dir / 'twistd.log'}"
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
