"""The Ansible roles (ansible/) pass ansible-lint's production profile and load; the
roles' tables agree with the package's; workers/make-worker refuses bad input.

The deployment itself is tests/integration/test_ansible_deploy.py."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from gating import arch

REPO = Path(__file__).resolve().parent.parent
ANSIBLE = REPO / "ansible"
VENV_BIN = Path(sys.executable).parent
MAKE_WORKER = REPO / "workers" / "make-worker"

needs_ansible = pytest.mark.skipif(
    not (VENV_BIN / "ansible-playbook").exists(), reason="ansible-core is not installed"
)


def ansible_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    env.update(
        {
            "PATH": f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
            "ANSIBLE_HOME": str(tmp_path / "ansible-home"),
            "ANSIBLE_LOCAL_TEMP": str(tmp_path / "ansible-tmp"),
            "ANSIBLE_NOCOLOR": "1",
            "NO_COLOR": "1",
        }
    )
    return env


@pytest.mark.skipif(
    not (VENV_BIN / "ansible-lint").exists(), reason="ansible-lint is not installed"
)
def test_ansible_lint_production_profile_passes(tmp_path):
    proc = subprocess.run(
        [str(VENV_BIN / "ansible-lint"), "--nocolor", "--profile", "production", "ansible/"],
        cwd=REPO,
        env=ansible_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Profile 'production' was required, and it passed" in proc.stdout + proc.stderr


@needs_ansible
def test_site_playbook_loads_with_the_example_inventory(tmp_path):
    proc = subprocess.run(
        [
            str(VENV_BIN / "ansible-playbook"),
            "--syntax-check",
            "-i",
            str(ANSIBLE / "inventory.example"),
            str(ANSIBLE / "site.yml"),
        ],
        cwd=tmp_path,
        env=ansible_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "[WARNING]" not in proc.stdout + proc.stderr


@needs_ansible
def test_site_playbook_loads_with_the_two_master_example_inventory(tmp_path):
    proc = subprocess.run(
        [
            str(VENV_BIN / "ansible-playbook"),
            "--syntax-check",
            "-i",
            str(ANSIBLE / "hosts-two-masters.yml"),
            str(ANSIBLE / "site.yml"),
        ],
        cwd=tmp_path,
        env=ansible_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "[WARNING]" not in proc.stdout + proc.stderr


@needs_ansible
def test_two_master_example_inventory_has_two_masters_a_router_and_shared_storage(tmp_path):
    proc = subprocess.run(
        [
            str(VENV_BIN / "ansible-inventory"),
            "-i",
            str(ANSIBLE / "hosts-two-masters.yml"),
            "--list",
        ],
        cwd=tmp_path,
        env=ansible_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    data = yaml.safe_load(proc.stdout)
    masters = data["gating_masters"]["hosts"]
    assert len(masters) == 2
    assert data["gating_routers"]["hosts"] == [masters[0]]
    shared = {data["_meta"]["hostvars"][m]["gating_master_shared_dir"] for m in masters}
    assert len(shared) == 1 and shared.pop().startswith("/")


def test_site_playbook_deploys_the_router_before_the_masters():
    plays = yaml.safe_load((ANSIBLE / "site.yml").read_text())
    hosts = [play["hosts"] for play in plays]
    assert hosts.index("gating_routers") < hosts.index("gating_masters", 1)
    router_play = plays[hosts.index("gating_routers")]
    assert [r["role"] for r in router_play["roles"]] == ["gating_crossbar"]


@needs_ansible
def test_example_inventory_has_a_pool_per_architecture(tmp_path):
    proc = subprocess.run(
        [str(VENV_BIN / "ansible-inventory"), "-i", str(ANSIBLE / "inventory.example"), "--list"],
        cwd=tmp_path,
        env=ansible_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    data = yaml.safe_load(proc.stdout)
    hostvars = data["_meta"]["hostvars"]
    arches = {
        host: hostvars[host]["gating_worker_arch"]
        for pool in data["gating_workers"]["children"]
        for host in data[pool]["hosts"]
    }
    assert set(arches.values()) == {"x86_64", "aarch64", "ppc64le", "s390x"}
    assert all(arch.canonical(a) == a for a in arches.values())
    # Every pool group declares its architecture, named after it.
    assert sorted(data["gating_workers"]["children"]) == sorted(
        f"pool_{a}" for a in set(arches.values())
    )


def test_worker_role_maps_fact_architectures_as_the_package_does():
    table = yaml.safe_load((ANSIBLE / "roles/gating_worker/vars/main.yml").read_text())[
        "gating_worker_rpm_arches"
    ]
    for name in arch.KNOWN - {"noarch"}:
        assert table.get(name) == arch.canonical(name), name
    # The kernel's names (Ansible facts) of the RPM arches map onto themselves.
    assert table["x86_64"] == "x86_64" and table["armv7l"] == "armv7hl"


def test_master_role_master_cfg_is_the_repository_one():
    role = (ANSIBLE / "roles/gating_master/templates/master.cfg.j2").read_text()
    code = [
        line for line in (REPO / "master.cfg").read_text().splitlines() if not line.startswith("#")
    ]
    role_code = [line for line in role.splitlines() if not line.startswith("#")]
    assert role_code == code


def test_every_role_has_the_standard_layout_and_meta():
    for role in sorted((ANSIBLE / "roles").iterdir()):
        for sub in ("defaults", "vars", "tasks", "handlers", "templates", "meta"):
            assert (role / sub).is_dir(), f"{role.name}/{sub}"
        meta = yaml.safe_load((role / "meta/main.yml").read_text())
        assert meta["galaxy_info"]["role_name"] == role.name
        assert "dependencies" in meta
        defaults = yaml.safe_load((role / "defaults/main.yml").read_text()) or {}
        assert all(k.startswith(f"{role.name}_") for k in defaults), role.name


def make_worker(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(MAKE_WORKER), *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )


def test_make_worker_refuses_a_pool_of_another_architecture(tmp_path):
    password = tmp_path / "pw"
    password.write_text("secret\n")
    other = "s390x" if os.uname().machine != "s390x" else "x86_64"
    proc = make_worker(
        tmp_path,
        "--master", "127.0.0.1:9989", "--name", "w1", "--arch", other,
        "--password-file", str(password), "--prefix", str(tmp_path / "p"),
    )  # fmt: skip
    assert proc.returncode == 2
    assert f"but the pool is {other}" in proc.stderr
    assert not (tmp_path / "p").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--name", "w1", "--arch", "x86_64"], "--master HOST:PORT is required"),
        (
            ["--master", "m:1", "--name", "1bad", "--arch", "x86_64", "--password-file", "f"],
            "worker name '1bad'",
        ),
        (
            ["--master", "m", "--name", "w", "--arch", "x86_64", "--password-file", "f"],
            "expected HOST:PORT",
        ),
        (
            [
                "--master",
                "m:1",
                "--name",
                "w",
                "--arch",
                "x86_64",
                "--password-file",
                "/nonexistent",
            ],
            "cannot read the password file /nonexistent",
        ),
        (
            ["--master", "m:1", "--name", "w", "--arch", "x86_64"],
            "--password-file FILE is required",
        ),
        (["--bogus"], "unknown option --bogus"),
    ],
)
def test_make_worker_checks_its_options(tmp_path, args, message):
    proc = make_worker(tmp_path, *args)
    assert proc.returncode == 2
    assert message in proc.stderr


def run_web_check(tmp_path: Path, variables: dict) -> subprocess.CompletedProcess:
    """The master role's web-login check (tasks/check-web.yml) on its own, on localhost."""
    playbook = tmp_path / "check-web.yml"
    playbook.write_text(
        yaml.safe_dump(
            [
                {
                    "hosts": "localhost",
                    "connection": "local",
                    "gather_facts": False,
                    "vars": {"gating_master_proxy_enabled": False, **variables},
                    "tasks": [
                        {
                            "ansible.builtin.import_tasks": str(
                                ANSIBLE / "roles/gating_master/tasks/check-web.yml"
                            )
                        }
                    ],
                }
            ]
        )
    )
    return subprocess.run(
        [str(VENV_BIN / "ansible-playbook"), "-i", "localhost,", str(playbook)],
        env=ansible_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
    )


@needs_ansible
@pytest.mark.parametrize(
    "variables",
    [
        {"gating_master_www_interface": "0.0.0.0", "gating_master_site": {}},
        {"gating_master_www_interface": "127.0.0.1", "gating_master_proxy_enabled": True},
        {
            "gating_master_www_interface": "::",
            "gating_master_site": {"web": {"admins": ["alice"]}},
        },
    ],
)
def test_master_role_refuses_a_reachable_web_ui_without_a_login(tmp_path, variables):
    proc = run_web_check(tmp_path, {"gating_master_site": {}, **variables})
    assert proc.returncode != 0
    assert "has no web auth: anyone could approve, dequeue, force, stop and rebuild" in proc.stdout


@needs_ansible
@pytest.mark.parametrize(
    "variables",
    [
        {"gating_master_www_interface": "127.0.0.1", "gating_master_site": {}},
        {
            "gating_master_www_interface": "0.0.0.0",
            "gating_master_proxy_enabled": True,
            "gating_master_site": {
                "web": {"auth": {"users": {"alice": "web-alice"}}, "admins": ["alice"]}
            },
        },
    ],
)
def test_master_role_accepts_a_loopback_or_logged_in_web_ui(tmp_path, variables):
    proc = run_web_check(tmp_path, variables)
    assert proc.returncode == 0, proc.stdout + proc.stderr
