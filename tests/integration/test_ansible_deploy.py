"""``ansible-playbook ansible/site.yml`` for real, against localhost (connection local),
into a throw-away prefix: PostgreSQL (its own cluster, run by the ``postgres`` user), a
master on it and two workers, with no systemd as PID 1, so the roles use gating-supervise.
A third worker is made by ``workers/make-worker``, as on a host Ansible does not manage.

Checked: the deployed UI answers and a pipeline runs on the deployed workers; each worker
(the role's and make-worker's) has the in-repo pipeline runner the master runs,
``WORKER/gating-venv/bin/python3 -P -m gating.inrepo``, and it runs a repository's file
there (the gate around it is tests/integration/test_inrepo_pipeline.py); gating-supervise
restarts a killed worker; a second run changes nothing (PLAY RECAP); a broken configuration
pushed by the playbook is refused by ``buildbot checkconfig`` while the running master keeps
serving the old one; a good one is installed and reconfigured only after the running
build finished.

The test reuses the repository's virtualenv for the master and the workers
(``gating_*_venv_managed: false``) rather than pip-installing Buildbot again.
"""

from __future__ import annotations

import getpass
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from gating import __version__, inrepo
from gating.inrepojob import runner_command, runner_python
from gating.localsite import free_port
from tests.integration.conftest import SUCCESS

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
ANSIBLE_PLAYBOOK = VENV_BIN / "ansible-playbook"
ANSIBLE_VAULT = VENV_BIN / "ansible-vault"
ROOT = os.geteuid() == 0
# PostgreSQL refuses to run as root: as root the cluster runs as the postgres user (the
# roles become it with su); otherwise as the current user.
PG_USER = "postgres" if ROOT else getpass.getuser()
HOSTS = ("master", "worker-1", "worker-2")
RECAP_RE = re.compile(r"^(\S+)\s+:\s+ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)")


def _postgres_installed() -> bool:
    return any(Path("/usr/lib/postgresql").glob("*/bin/initdb")) or Path("/usr/bin/initdb").exists()


pytestmark = [
    pytest.mark.skipif(not ANSIBLE_PLAYBOOK.exists(), reason="ansible-core is not installed"),
    pytest.mark.skipif(
        not _postgres_installed(), reason="the PostgreSQL server is not installed (bootstrap.sh)"
    ),
]

PIPELINE = """\
# One job per deployed worker (each worker lists one series), and one for the worker made
# by workers/make-worker.
pipeline:
  - [on-worker-1, on-worker-2]
  - on-extra
jobs:
  on-worker-1:
    architectures: [x86_64]
    series: el9
    run: echo "el9 job on $(uname -m)"
  on-worker-2:
    architectures: [x86_64]
    series: el10
    run: echo "el10 job"
  on-extra:
    architectures: [x86_64]
    series: el8
    run: echo "el8 job"
"""

# A job that runs until the test creates RELEASE (in the prefix): a build the master's
# reconfiguration has to wait for.
HOLD_PIPELINE = """\
pipeline: [hold]
jobs:
  hold:
    architectures: [x86_64]
    series: el9
    run: for i in $(seq 1200); do test -e {release} && exit 0; sleep 0.25; done; exit 1
"""

# A new pipeline, accepted by checkconfig.
ADDED_PIPELINE = (
    "pipeline: [added]\njobs:\n  added:\n    architectures: [x86_64]\n    run: echo added\n"
)

# An unknown key: checkconfig reports it as FILE:LINE:COLUMN.
BROKEN_PIPELINE = "pipeline: [a]\njobs:\n  a:\n    architecture: [x86_64]\n    run: echo a\n"


@dataclass
class Run:
    rc: int
    output: str

    def recap(self) -> dict[str, dict[str, int]]:
        found: dict[str, dict[str, int]] = {}
        in_recap = False
        for line in self.output.splitlines():
            if line.startswith("PLAY RECAP"):
                in_recap = True
                continue
            match = RECAP_RE.match(line) if in_recap else None
            if match:
                host, ok, changed, unreachable, failed = match.groups()
                found[host] = {
                    "ok": int(ok),
                    "changed": int(changed),
                    "unreachable": int(unreachable),
                    "failed": int(failed),
                }
        return found


class Deployment:
    def __init__(self, prefix: Path) -> None:
        self.prefix = prefix
        self.www_port = free_port()
        self.pb_port = free_port()
        self.pg_port = free_port()
        self.inventory = prefix / "inventory"
        self.vault_password = prefix / "vault-password"
        self.extra_password = prefix / "extra-1.password"
        self.log = prefix / "ansible.log"
        self.release = prefix / "release-hold"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.www_port}/"

    @property
    def master_dir(self) -> Path:
        return self.prefix / "master"

    @property
    def supervise(self) -> Path:
        return self.prefix / "bin" / "gating-supervise"

    # -- the inventory ---------------------------------------------------------------

    def write_inventory(self) -> None:
        local = {
            "ansible_connection": "local",
            "ansible_python_interpreter": "{{ ansible_playbook_python }}",
        }
        hosts = {
            "all": {
                "children": {
                    "gating_database": {"hosts": {"master": None}},
                    "gating_masters": {"hosts": {"master": {"gating_master_address": "127.0.0.1"}}},
                    "gating_workers": {
                        "children": {
                            "pool_x86_64": {
                                "hosts": {
                                    "worker-1": {"gating_worker_series": ["el9"]},
                                    "worker-2": {"gating_worker_series": ["el10"]},
                                },
                            }
                        }
                    },
                },
            }
        }
        group_vars = self.inventory / "group_vars"
        (group_vars / "all").mkdir(parents=True)
        (self.inventory / "hosts.yml").write_text(yaml.safe_dump(hosts, sort_keys=False))
        everything = {
            **local,
            "ansible_become_method": "su",
            "gating_prefix": str(self.prefix),
            "gating_postgresql_port": self.pg_port,
            "gating_postgresql_os_user": PG_USER,
            # The packages are there already (scripts/bootstrap.sh); the role's apt task
            # runs (and changes nothing), but /etc is left alone.
            "gating_postgresql_install_packages": ROOT,
            "gating_postgresql_disable_distro_cluster": False,
            "gating_master_user": getpass.getuser(),
            "gating_master_manage_user": False,
            "gating_master_venv": str(VENV_BIN.parent),
            "gating_master_venv_managed": False,
            "gating_master_www_port": self.www_port,
            "gating_master_pb_port": self.pb_port,
            "gating_master_pb_interface": "127.0.0.1",
            "gating_master_title": "deployed by ansible",
            "gating_master_site": {"coordinators": 2},
            "gating_master_pipelines_dir": str(self.prefix / "pipelines"),
            "gating_master_extra_workers": [
                {"name": "extra-1", "arch": "x86_64", "series": ["el8"]}
            ],
            "gating_worker_user": getpass.getuser(),
            "gating_worker_manage_user": False,
            "gating_worker_venv": str(VENV_BIN.parent),
            "gating_worker_venv_managed": False,
        }
        (group_vars / "all" / "main.yml").write_text(yaml.safe_dump(everything, sort_keys=False))
        (group_vars / "pool_x86_64.yml").write_text(
            yaml.safe_dump({"gating_worker_arch": "x86_64", "gating_worker_max_builds": 1})
        )
        # The secrets, in a real vault.
        self.vault_password.write_text("test vault password\n")
        self.vault_password.chmod(0o600)
        vault = group_vars / "all" / "vault.yml"
        vault.write_text(
            yaml.safe_dump(
                {
                    "secret_postgresql_password": "pg 'pass': word\\",
                    "secret_worker_passwords": {
                        "worker-1": "pw-one",
                        "worker-2": "pw-two",
                        "extra-1": "pw-extra",
                    },
                    "secret_koji_password": "not-used-but-written",
                }
            )
        )
        subprocess.run(
            [
                str(ANSIBLE_VAULT),
                "encrypt",
                "--vault-password-file",
                str(self.vault_password),
                str(vault),
            ],
            check=True,
            capture_output=True,
            env=self.env(),
            cwd=self.prefix,
        )
        self.extra_password.write_text("pw-extra\n")
        self.extra_password.chmod(0o600)
        pipelines = self.prefix / "pipelines"
        pipelines.mkdir()
        (pipelines / "deployed.yaml").write_text(PIPELINE)
        (pipelines / "hold.yaml").write_text(HOLD_PIPELINE.format(release=self.release))

    # -- ansible-playbook ---------------------------------------------------------------

    def env(self) -> dict[str, str]:
        tmp = self.prefix / "ansible-tmp"
        env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
        cfg = self.prefix / "ansible.cfg"
        if not cfg.exists():
            cfg.write_text("[defaults]\n")
        env.update(
            {
                "ANSIBLE_CONFIG": str(cfg),
                "ANSIBLE_HOME": str(tmp / "home"),
                "ANSIBLE_LOCAL_TEMP": str(tmp / "local"),
                "ANSIBLE_REMOTE_TEMP": str(tmp / "remote"),
                "ANSIBLE_NOCOLOR": "1",
                "ANSIBLE_FORCE_COLOR": "0",
                "ANSIBLE_STDOUT_CALLBACK": "default",
                "ANSIBLE_RETRY_FILES_ENABLED": "0",
                "ANSIBLE_GATHERING": "smart",
                "ANSIBLE_GATHER_SUBSET": "min",
                "ANSIBLE_PIPELINING": "1",
                "ANSIBLE_FORKS": "3",
                "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            }
        )
        return env

    def command(self, *extra: str) -> list[str]:
        return [
            str(ANSIBLE_PLAYBOOK),
            "-i",
            str(self.inventory),
            "--vault-password-file",
            str(self.vault_password),
            str(REPO / "ansible" / "site.yml"),
            *extra,
        ]

    def start_playbook(self, output: Path, *extra: str) -> subprocess.Popen:
        with output.open("w") as fh:
            return subprocess.Popen(
                self.command(*extra),
                stdout=fh,
                stderr=subprocess.STDOUT,
                env=self.env(),
                cwd=self.prefix,
            )

    def playbook(self, *extra: str) -> Run:
        started = time.monotonic()
        proc = subprocess.run(
            self.command(*extra),
            capture_output=True,
            text=True,
            env=self.env(),
            cwd=self.prefix,
            timeout=420,
        )
        output = proc.stdout + proc.stderr
        with self.log.open("a") as fh:
            elapsed = time.monotonic() - started
            fh.write(
                f"==== ansible-playbook {' '.join(extra)} (rc {proc.returncode}, {elapsed:.0f}s)\n"
                f"{output}\n"
            )
        return Run(proc.returncode, output)

    # -- the deployed master ---------------------------------------------------------

    def api(self, path: str) -> Any:
        with urllib.request.urlopen(self.url + "api/v2/" + path, timeout=10) as resp:
            return json.load(resp)

    def wait_for_workers(self, names: set[str], timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            connected = {w["name"] for w in self.api("workers")["workers"] if w["connected_to"]}
            if names <= connected:
                return
            time.sleep(0.5)
        raise TimeoutError(f"workers {names} did not connect; connected: {connected}")

    def worker_connected(self, name: str) -> bool:
        workers = self.api("workers")["workers"]
        return any(w["name"] == name and w["connected_to"] for w in workers)

    def force(self, pipeline: str) -> None:
        body = json.dumps({"jsonrpc": "2.0", "method": "force", "params": {}, "id": 1})
        req = urllib.request.Request(
            f"{self.url}api/v2/forceschedulers/force-{pipeline}",
            data=body.encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(req, timeout=30) as resp:
            assert "error" not in json.load(resp)

    def builder_ids(self) -> dict[str, int]:
        return {b["name"]: b["builderid"] for b in self.api("builders")["builders"]}

    def wait_for_build(self, builder: str, timeout: float = 120) -> dict[str, Any]:
        builderid = self.builder_ids()[builder]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            builds = self.api(f"builders/{builderid}/builds")["builds"]
            if builds and builds[0]["complete"]:
                return builds[0]
            time.sleep(0.5)
        raise TimeoutError(f"{builder} did not finish within {timeout}s")

    def builds(self, builder: str) -> list[dict[str, Any]]:
        return self.api(f"builders/{self.builder_ids()[builder]}/builds")["builds"]

    def master_pid(self) -> int:
        return int((self.master_dir / "twistd.pid").read_text().strip())

    def teardown(self) -> None:
        if self.supervise.exists():
            subprocess.run(
                [str(self.supervise), "stop-all"], capture_output=True, timeout=300, check=False
            )
        extra = self.prefix / "workers" / "extra-1"
        if (extra / "twistd.pid").exists():
            subprocess.run(
                [str(VENV_BIN / "buildbot-worker"), "stop", str(extra)],
                capture_output=True,
                timeout=120,
                check=False,
            )


@pytest.fixture(scope="module")
def deployment(request: pytest.FixtureRequest) -> Iterator[Deployment]:
    # Not under pytest's 0700 tmp folder: the postgres user must reach its data folder.
    prefix = Path(tempfile.mkdtemp(prefix="gating-ansible-"))
    prefix.chmod(0o755)
    deployment = Deployment(prefix)
    deployment.write_inventory()
    failed_before = request.session.testsfailed
    try:
        yield deployment
    finally:
        deployment.teardown()
        if deployment.log.exists() and request.session.testsfailed > failed_before:
            # The playbooks' output, kept for a failed run's post-mortem.
            shutil.copy(deployment.log, Path(tempfile.gettempdir()) / "gating-ansible-last.log")
        if not os.environ.get("GATING_KEEP_ANSIBLE_PREFIX"):
            shutil.rmtree(prefix, ignore_errors=True)


@pytest.fixture(scope="module")
def deployed(deployment: Deployment) -> Deployment:
    run = deployment.playbook()
    assert run.rc == 0, run.output[-6000:]
    recap = run.recap()
    assert set(recap) == set(HOSTS), run.output[-3000:]
    assert all(r["failed"] == 0 and r["unreachable"] == 0 for r in recap.values())
    return deployment


def test_first_run_deploys_postgresql_a_master_and_two_workers(deployed):
    with urllib.request.urlopen(deployed.url, timeout=10) as resp:
        assert resp.status == 200
        assert b"<html" in resp.read().lower()
    # The master runs on the role's PostgreSQL cluster, in the prefix.
    site = yaml.safe_load((deployed.master_dir / "config" / "gating.yaml").read_text())
    assert site["database"] == (f"postgresql://gating@127.0.0.1:{deployed.pg_port}/gating")
    assert site["title"] == "deployed by ansible"
    assert site["coordinators"] == 2
    assert "multi-master" not in site  # one master
    assert (deployed.prefix / "postgresql" / "data" / "postmaster.pid").exists()
    status = subprocess.run(
        [str(deployed.supervise), "status"], capture_output=True, text=True, check=False
    )
    assert status.returncode == 0, status.stdout
    assert status.stdout.split("\n")[0].startswith("gating-supervise: postgresql running")
    # workers.yaml comes from the inventory: the pool's arch, each host's series.
    workers = yaml.safe_load((deployed.master_dir / "config" / "workers.yaml").read_text())
    assert workers["workers"] == [
        {
            "name": "worker-1",
            "arch": "x86_64",
            "host": "worker-1",
            "series": ["el9"],
            "max-builds": 1,
        },
        {
            "name": "worker-2",
            "arch": "x86_64",
            "host": "worker-2",
            "series": ["el10"],
            "max-builds": 1,
        },
        {"name": "extra-1", "arch": "x86_64", "series": ["el8"]},
    ]
    # Secrets from the vault, readable by the master only; never in the playbook's output.
    secrets = deployed.master_dir / "secrets"
    assert secrets.stat().st_mode & 0o777 == 0o700
    files = {p.name: p for p in secrets.iterdir()}
    assert {"worker-worker-1", "worker-worker-2", "worker-extra-1", "koji-password"} <= set(files)
    assert all(p.stat().st_mode & 0o777 == 0o600 for p in files.values())
    assert files["worker-worker-1"].read_text() == "pw-one"
    assert "pw-one" not in deployed.log.read_text()
    assert "pg 'pass'" not in deployed.log.read_text()
    tac = (deployed.prefix / "workers" / "worker-1" / "buildbot.tac").read_text()
    assert "pw-one" not in tac
    assert f"port = {deployed.pb_port}" in tac


def test_pipeline_runs_on_the_deployed_workers_and_a_make_worker_worker(deployed):
    proc = subprocess.run(
        [
            str(REPO / "workers" / "make-worker"),
            "--master",
            f"127.0.0.1:{deployed.pb_port}",
            "--name",
            "extra-1",
            "--arch",
            "amd64",
            "--password-file",
            str(deployed.extra_password),
            "--prefix",
            str(deployed.prefix),
            "--venv",
            str(VENV_BIN.parent),
            "--no-systemd",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "worker extra-1 started" in proc.stdout
    assert "@reboot" in proc.stdout
    deployed.wait_for_workers({"worker-1", "worker-2", "extra-1"})

    deployed.force("deployed")
    run = deployed.wait_for_build("deployed")
    assert run["results"] == SUCCESS
    ran_on = {}
    workers = {w["workerid"]: w["name"] for w in deployed.api("workers")["workers"]}
    for job in ("on-worker-1", "on-worker-2", "on-extra"):
        build = deployed.wait_for_build(f"deployed/{job}/x86_64")
        assert build["results"] == SUCCESS
        ran_on[job] = workers[build["workerid"]]
    assert ran_on == {"on-worker-1": "worker-1", "on-worker-2": "worker-2", "on-extra": "extra-1"}


IN_REPO_FILE = """\
pipeline: [unit]
jobs:
  unit:
    architectures: [x86_64]
    run: echo "unit ran on $GATING_ARCH"
"""


def test_every_worker_runs_the_in_repo_pipeline_runner_the_master_runs(deployed, tmp_path):
    # The role checked it and said so.
    log = deployed.log.read_text()
    for name in ("worker-1", "worker-2"):
        python = deployed.prefix / "workers" / name / inrepo.VENV_LINK / inrepo.RUNNER_PYTHON
        assert re.search(
            rf"in-repo pipeline runner: buildbot-gating {re.escape(__version__)} "
            rf"\(Python [0-9.]+, {re.escape(str(python))}\)",
            log,
        ), name
    checkout = tmp_path / "build"
    checkout.mkdir()
    (checkout / ".gating.yaml").write_text(IN_REPO_FILE)
    nonce = "0123456789abcdef0123456789abcdef"
    for name in ("worker-1", "worker-2", "extra-1"):  # extra-1: made by workers/make-worker
        basedir = deployed.prefix / "workers" / name
        link = basedir / inrepo.VENV_LINK
        assert link.is_symlink() and Path(os.readlink(link)) == VENV_BIN.parent, name
        # The very command the master gives this worker, in a checkout.
        command = runner_command(runner_python(str(basedir)), ".gating.yaml", "x86_64", nonce)
        proc = subprocess.run(
            command,
            cwd=checkout,
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "GATING_ARCH": "x86_64"},
        )
        assert proc.returncode == inrepo.PASSED, proc.stdout + proc.stderr
        first = proc.stdout.splitlines()[0]
        assert first.startswith(f"{inrepo.MARKER} {nonce} runner buildbot-gating {__version__} ")
        assert f", {link}/{inrepo.RUNNER_PYTHON})" in first
        assert "unit ran on x86_64" in proc.stdout


def test_gating_supervise_restarts_a_dead_worker(deployed):
    listed = subprocess.run(
        [str(deployed.supervise), "list"], capture_output=True, text=True, check=True
    )
    assert listed.stdout.split() == ["postgresql", "master", "worker-worker-1", "worker-worker-2"]
    pidfile = deployed.prefix / "workers" / "worker-2" / "twistd.pid"
    os.kill(int(pidfile.read_text()), signal.SIGKILL)
    deadline = time.monotonic() + 30
    while deployed.worker_connected("worker-2") and time.monotonic() < deadline:
        time.sleep(0.5)
    proc = subprocess.run(
        [str(deployed.supervise), "start-all"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "gating-supervise: worker-worker-2 started" in proc.stdout
    assert "gating-supervise: master running" in proc.stdout
    deployed.wait_for_workers({"worker-1", "worker-2"})


def test_second_run_changes_nothing(deployed):
    pid = deployed.master_pid()
    run = deployed.playbook()
    assert run.rc == 0, run.output[-6000:]
    recap = run.recap()
    assert set(recap) == set(HOSTS)
    changed = {host: r["changed"] for host, r in recap.items()}
    assert changed == dict.fromkeys(HOSTS, 0), run.output[-6000:]
    assert deployed.master_pid() == pid


def test_broken_configuration_is_refused_and_the_master_keeps_serving(deployed):
    pid = deployed.master_pid()
    builders = set(deployed.builder_ids())
    # A configuration change is pushed to the master alone (--limit), as an admin would.
    extra = json.dumps({"gating_master_pipelines": {"broken": BROKEN_PIPELINE}})
    run = deployed.playbook("--limit", "master", "--extra-vars", extra)
    assert run.rc != 0
    assert "buildbot checkconfig refused the new configuration" in run.output
    assert "pipelines/broken.yaml:4:5: unknown key 'architecture' in job 'a'" in run.output
    # Nothing reached the live configuration; the master was neither reconfigured nor
    # restarted, and still serves the old configuration.
    assert not (deployed.master_dir / "config" / "pipelines" / "broken.yaml").exists()
    assert (deployed.master_dir / "config.staging" / "pipelines" / "broken.yaml").exists()
    assert deployed.master_pid() == pid
    with urllib.request.urlopen(deployed.url, timeout=10) as resp:
        assert resp.status == 200
    assert set(deployed.builder_ids()) == builders
    assert "broken" not in builders


def test_accepted_configuration_waits_for_running_builds_then_reconfigures(deployed):
    pid = deployed.master_pid()
    deployed.force("hold")
    deadline = time.monotonic() + 60
    while not deployed.builds("hold/hold/x86_64") and time.monotonic() < deadline:
        time.sleep(0.5)
    assert deployed.builds("hold/hold/x86_64"), "the hold job did not start"

    # A good configuration (without the broken file, with a new pipeline) while a build runs.
    output = deployed.prefix / "reconfig-run.log"
    extra = json.dumps({"gating_master_pipelines": {"added": ADDED_PIPELINE}})
    proc = deployed.start_playbook(
        output,
        "--limit",
        "master",
        "--extra-vars",
        extra,
        "--extra-vars",
        "gating_master_idle_poll=1",
    )
    try:
        waiting = "RETRYING: [master]: Wait until the master runs no build"
        deadline = time.monotonic() + 240
        while waiting not in output.read_text() and time.monotonic() < deadline:
            assert proc.poll() is None, output.read_text()[-6000:]
            time.sleep(0.5)
        assert waiting in output.read_text()
        # Checked and accepted, but held back while the build runs.
        assert not (deployed.master_dir / "config" / "pipelines" / "added.yaml").exists()
        assert "added" not in deployed.builder_ids()
        deployed.release.touch()
        assert proc.wait(timeout=240) == 0, output.read_text()[-6000:]
    finally:
        if proc.poll() is None:
            proc.kill()
        with deployed.log.open("a") as fh:
            fh.write(f"==== reconfig run\n{output.read_text()}\n")
    text = output.read_text()
    assert "Reconfigure the running master (buildbot reconfig)" in text
    assert Run(0, text).recap()["master"]["changed"] > 0
    (hold,) = deployed.builds("hold/hold/x86_64")
    assert hold["complete"] and hold["results"] == SUCCESS
    assert "added" in deployed.builder_ids()
    assert (deployed.master_dir / "config" / "pipelines" / "added.yaml").exists()
    assert not (deployed.master_dir / "config.staging" / "pipelines" / "broken.yaml").exists()
    assert deployed.master_pid() == pid
