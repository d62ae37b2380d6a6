"""The Ansible roles (ansible/) pass ansible-lint's production profile and load; the
roles' tables agree with the package's; workers/make-worker refuses bad input.

The deployment itself is tests/integration/test_ansible_deploy.py."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import gating
from gating import arch, inrepo, inrepojob

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


# -- the in-repo pipeline runner on deployed workers -----------------------------------------


def test_worker_role_links_its_virtualenv_where_the_master_runs_the_runner():
    role = ANSIBLE / "roles/gating_worker"
    role_vars = yaml.safe_load((role / "vars/main.yml").read_text())
    assert role_vars["gating_worker_runner_link"] == (
        "{{ gating_worker_basedir }}/" + inrepo.VENV_LINK
    )
    # The command gating.inrepojob gives the worker (runner_python + RUNNER_ARGS).
    assert role_vars["gating_worker_runner_command"] == [
        "{{ gating_worker_runner_link }}/" + inrepo.RUNNER_PYTHON,
        *inrepo.RUNNER_ARGS,
    ]
    assert inrepojob.runner_python("/B") == f"/B/{inrepo.VENV_LINK}/{inrepo.RUNNER_PYTHON}"
    tasks = {t["name"]: t for t in yaml.safe_load((role / "tasks/main.yml").read_text())}
    (link,) = [t["ansible.builtin.file"] for t in tasks.values() if "ansible.builtin.file" in t
               and t["ansible.builtin.file"].get("state") == "link"]  # fmt: skip
    assert link["src"] == "{{ gating_worker_venv }}"
    assert link["dest"] == "{{ gating_worker_runner_link }}"
    (check,) = [
        t
        for t in tasks.values()
        if "gating_worker_runner_command" in t.get("ansible.builtin.command", {}).get("argv", "")
    ]
    assert "'--version'" in check["ansible.builtin.command"]["argv"]
    assert "gating_worker_as_user" in check["ansible.builtin.command"]["argv"]
    (refuse,) = [t for t in tasks.values() if "gating_worker_runner.rc == 0" in str(t)]
    assert "has no gating runner" in refuse["ansible.builtin.assert"]["fail_msg"]
    # The link and the check come after the worker's folder exists, before it starts.
    names = list(tasks)
    assert names.index("Create the worker's folder") < names.index(
        next(n for n, t in tasks.items() if "ansible.builtin.file" in t and "runner" in n)
    )
    assert names.index(next(n for n, t in tasks.items() if t is refuse)) < names.index(
        "Apply the changed settings"
    )


def test_worker_role_installs_buildbot_gating_without_restarting_the_worker():
    install = yaml.safe_load((ANSIBLE / "roles/gating_worker/tasks/install.yml").read_text())
    (block,) = [t for t in install if "block" in t]
    pips = {t["name"]: t for t in block["block"] if "ansible.builtin.pip" in t}
    (gating_pip,) = [t for n, t in pips.items() if "buildbot-gating" in n]
    assert gating_pip["ansible.builtin.pip"]["name"] == "{{ gating_worker_package_spec }}"
    assert gating_pip["ansible.builtin.pip"]["virtualenv"] == "{{ gating_worker_venv }}"
    assert "notify" not in gating_pip  # the worker process never imports it
    (worker_pip,) = [t for n, t in pips.items() if "buildbot-gating" not in n]
    assert worker_pip["notify"] == "Restart the gating worker"


@needs_ansible
def test_worker_role_installs_the_package_its_master_installs(tmp_path):
    """The role's defaults, templated by Ansible for real: a worker installs its master's
    gating_master_package_file (copied to PREFIX/dist/), else gating_master_package, else
    the checkout the playbook is in, like the master role."""
    role = ANSIBLE / "roles/gating_worker"
    inventory = {
        "all": {
            "vars": {
                "ansible_connection": "local",
                "ansible_python_interpreter": "{{ ansible_playbook_python }}",
                "gating_prefix": "/p",
            },
            "children": {
                "gating_masters": {
                    "hosts": {
                        "m1": {
                            "gating_master_package_file": "dist/buildbot_gating-9-py3-none-any.whl"
                        },
                        "m2": {"gating_master_package": "buildbot-gating==9"},
                        "m3": {},
                    }
                },
                "gating_workers": {"hosts": {"w1": {}, "w2": {}, "w3": {}}},
            },
        }
    }
    (tmp_path / "hosts.yml").write_text(yaml.safe_dump(inventory))
    play = [
        {
            "hosts": "gating_workers",
            "gather_facts": False,
            "vars_files": [str(role / "defaults/main.yml"), str(role / "vars/main.yml")],
            "tasks": [
                {
                    "ansible.builtin.debug": {
                        "msg": "SPEC {{ inventory_hostname }} {{ gating_worker_master }} "
                        "[{{ gating_worker_package_spec }}]"
                    }
                }
            ],
        }
    ]
    # A playbook outside the repository: the last default is its folder's parent.
    playbook = tmp_path / "ansible" / "play.yml"
    playbook.parent.mkdir()
    playbook.write_text(yaml.safe_dump(play))
    proc = subprocess.run(
        [str(VENV_BIN / "ansible-playbook"), "-i", str(tmp_path / "hosts.yml"), str(playbook)],
        cwd=tmp_path,
        env=ansible_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    specs = {
        worker: (master, spec)
        for worker, master, spec in re.findall(r'"SPEC (\S+) (\S+) \[([^\]]*)\]"', proc.stdout)
    }
    assert specs == {
        "w1": ("m1", "/p/dist/buildbot_gating-9-py3-none-any.whl"),
        "w2": ("m2", "buildbot-gating==9"),
        "w3": ("m3", str(tmp_path)),
    }, proc.stdout


def _no_pythonpath() -> dict[str, str]:
    """The environment without PYTHONPATH: what a virtualenv imports is its own."""
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


def test_make_worker_refuses_a_virtualenv_without_buildbot_gating(tmp_path):
    venv = tmp_path / "bare-venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    password = tmp_path / "pw"
    password.write_text("secret\n")
    proc = subprocess.run(
        [
            str(MAKE_WORKER),
            "--master",
            "127.0.0.1:9989",
            "--name",
            "w1",
            "--arch",
            os.uname().machine,
            "--password-file",
            str(password),
            "--prefix",
            str(tmp_path / "p"),
            "--venv",
            str(venv),
            "--no-start",
            "--no-systemd",
        ],  # fmt: skip
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env=_no_pythonpath(),
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"{venv} has no buildbot-gating (the in-repo pipeline runner;" in proc.stderr
    assert "No module named 'gating'" in proc.stderr
    assert not (tmp_path / "p" / "workers").exists()


def test_make_worker_outside_a_repository_asks_for_the_package(tmp_path):
    copy = tmp_path / "bin" / "make-worker"
    copy.parent.mkdir()
    copy.write_bytes(MAKE_WORKER.read_bytes())
    copy.chmod(0o755)
    password = tmp_path / "pw"
    password.write_text("secret\n")
    proc = subprocess.run(
        [
            str(copy),
            "--master",
            "127.0.0.1:9989",
            "--name",
            "w1",
            "--arch",
            os.uname().machine,
            "--password-file",
            str(password),
            "--prefix",
            str(tmp_path / "p"),
        ],  # fmt: skip
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"no buildbot-gating package in {tmp_path}: give --package" in proc.stderr
    assert not (tmp_path / "p").exists()


def test_make_worker_links_the_virtualenv_and_runs_the_runner(tmp_path):
    password = tmp_path / "pw"
    password.write_text("secret\n")
    prefix = tmp_path / "p"
    args = [
        str(MAKE_WORKER),
        "--master", "127.0.0.1:9989", "--name", "w1", "--arch", os.uname().machine,
        "--password-file", str(password), "--prefix", str(prefix),
        "--venv", str(VENV_BIN.parent), "--no-start", "--no-systemd",
    ]  # fmt: skip
    proc = subprocess.run(args, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    link = prefix / "workers" / "w1" / inrepo.VENV_LINK
    assert os.readlink(link) == str(VENV_BIN.parent)
    python = link / inrepo.RUNNER_PYTHON
    assert (
        f"make-worker: in-repo pipeline runner: {python} -P -m gating.inrepo "
        f"(buildbot-gating {gating.__version__} (Python "
    ) in proc.stdout
    # The master's command for this worker runs.
    cmd = [inrepojob.runner_python(str(prefix / "workers" / "w1")), *inrepo.RUNNER_ARGS]
    ran = subprocess.run([*cmd, "--version"], capture_output=True, text=True, timeout=120)
    assert ran.returncode == 0 and ran.stdout.startswith(f"buildbot-gating {gating.__version__}")
    # Again: the link stays.
    again = subprocess.run(args, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert again.returncode == 0, again.stdout + again.stderr
    assert os.readlink(link) == str(VENV_BIN.parent)


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
