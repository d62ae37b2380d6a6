"""Tests of gating.site: the configuration directory (gating.yaml, workers, pipelines)."""

import contextlib
import shutil
import textwrap
from pathlib import Path

import pytest

from gating.backend import BackendConfig
from gating.changehooks import ChangeHook
from gating.diagnostics import Collector, ConfigError, Mark
from gating.site import (
    MultiMaster,
    Project,
    Site,
    WebConfig,
    WebUser,
    load_config,
    parse_site,
    pipeline_files,
)

FIXTURES = Path(__file__).parent / "fixtures"
SITES = FIXTURES / "sites"


def parse(text: str):
    errors = Collector()
    site = parse_site(textwrap.dedent(text), "gating.yaml", "/etc/gating", errors)
    return site, ConfigError(errors.diagnostics).messages


def config_errors(path) -> list[str]:
    """Errors of loading ``path`` from its parent, so messages start with its name."""
    path = Path(path)
    with contextlib.chdir(path.parent), pytest.raises(ConfigError) as exc:
        load_config(path.name)
    return exc.value.messages


@pytest.fixture
def site_copy(tmp_path):
    """A writable copy of the multiarch site, as tmp_path/site."""
    dest = tmp_path / "site"
    shutil.copytree(SITES / "multiarch", dest)
    return dest


# -- gating.yaml ------------------------------------------------------------------


def test_empty_site_file_gives_the_defaults():
    site, errors = parse("# nothing set\n")
    assert errors == []
    assert site == Site(config_dir="/etc/gating")
    assert (site.www_port, site.pb_port, site.workers, site.pipelines) == (
        8010,
        9989,
        ("workers.yaml",),
        "pipelines",
    )


def test_every_site_key_is_read():
    site, errors = parse(
        """\
        title: RDO gate
        title-url: https://www.rdoproject.org/
        buildbot-url: https://gate.example.org/
        www-port: tcp:8010:interface=127.0.0.1
        www-interface: 0.0.0.0
        pb-port: 19989
        poll-interval: 300
        database: postgresql://bb@db/bb
        secrets-dir: /var/lib/buildbot/secrets
        workers: [x86.yaml, arm.yaml]
        pipelines: ci
        projects:
          - name: nova-distgit
            repository: https://example.org/nova-distgit.git
            branches: rdo-liberty
            queue: rdo
        """
    )
    assert errors == []
    assert site == Site(
        config_dir="/etc/gating",
        title="RDO gate",
        title_url="https://www.rdoproject.org/",
        buildbot_url="https://gate.example.org/",
        www_port="tcp:8010:interface=127.0.0.1",
        www_interface="0.0.0.0",
        pb_port=19989,
        poll_interval=300,
        database="postgresql://bb@db/bb",
        secrets_dir="/var/lib/buildbot/secrets",
        workers=("x86.yaml", "arm.yaml"),
        pipelines="ci",
        projects=(
            Project(
                "nova-distgit", "https://example.org/nova-distgit.git", ("rdo-liberty",), "rdo"
            ),
        ),
    )
    assert site.project("nova-distgit").queue == "rdo"
    assert site.project("glance-distgit") is None


def test_project_branches_default_to_main():
    site, _ = parse("projects:\n  - {name: nova, repository: ../nova}\n")
    assert site.projects == (Project("nova", "../nova", ("main",), None),)


def test_bad_site_values_are_all_reported():
    _, errors = parse(
        """\
        title: [RDO]
        www-port: 70000
        pb-port: "9989"
        poll-interval: 0
        workres: w.yaml
        projects:
          - {name: Nova, repository: x}
          - {name: glance}
          - {name: cinder, repository: y, branches: 7}
          - {name: cinder, repository: z}
        """
    )
    assert errors == [
        "gating.yaml:1:8: 'title': expected a string, got a list",
        "gating.yaml:2:11: 'www-port': expected a port number (1-65535) or a Twisted endpoint "
        "such as 'tcp:8010:interface=127.0.0.1', got an integer (70000)",
        "gating.yaml:3:10: 'pb-port': expected a port number (1-65535) or a Twisted endpoint "
        "such as 'tcp:8010:interface=127.0.0.1', got a string",
        "gating.yaml:4:16: 'poll-interval' (seconds): expected an integer of at least 1, got 0",
        "gating.yaml:5:1: unknown key 'workres' in the site configuration; did you mean 'workers'?",
        "gating.yaml:7:12: project name 'Nova' must be at least two characters: lower-case ASCII "
        "letters, digits, '+', '.', '_' or '-', starting with a letter or digit",
        "gating.yaml:8:5: project: missing required key 'repository'",
        "gating.yaml:9:45: project 'cinder' 'branches': expected a string or a list of strings, "
        "got an integer (7)",
        "gating.yaml:10:5: project 'cinder' is defined twice",
    ]


def test_job_attempts_default_to_three_and_are_read():
    assert parse("{}\n")[0].job_attempts == 3
    site, errors = parse("job-attempts: 5\n")
    assert (site.job_attempts, errors) == (5, [])


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("0", "gating.yaml:1:15: 'job-attempts': expected an integer of at least 1, got 0"),
        ("11", "gating.yaml:1:15: 'job-attempts': expected at most 10, got 11"),
        ("many", "gating.yaml:1:15: 'job-attempts': expected an integer, got a string"),
    ],
)
def test_bad_job_attempts_are_named(value, message):
    site, errors = parse(f"job-attempts: {value}\n")
    assert errors == [message]
    assert site.job_attempts == 3


def test_projects_must_be_a_list():
    _, errors = parse("projects: {nova: x}\n")
    assert errors == ["gating.yaml:1:11: 'projects': expected a list of projects, got a mapping"]


def test_site_file_that_is_not_a_mapping_is_an_error():
    _, errors = parse("- title\n")
    assert errors == ["gating.yaml:1:1: the site configuration: expected a mapping, got a list"]


# -- load_config: directories -------------------------------------------------------


def test_multiarch_site_loads_site_workers_pipelines_and_plan():
    config = load_config(SITES / "multiarch")
    assert config.site.title == "RDO gate"
    assert config.site.www_port == "tcp:8010:interface=127.0.0.1"
    assert [p.name for p in config.site.projects] == ["nova-distgit", "glance-distgit"]
    assert config.site.project("glance-distgit").branches == ("main",)
    assert [(w.name, w.arch, w.series) for w in config.workers] == [
        ("x86-el9", "x86_64", ("el9",)),
        ("x86-el10", "x86_64", ("el10",)),
        ("arm-any", "aarch64", ()),
    ]
    assert config.workers[2].password_secret == "arm-worker-password"
    assert [(p.name, p.file, [t.kind for t in p.triggers]) for p in config.pipelines] == [
        ("nightly", f"{SITES}/multiarch/pipelines/nightly.yml", ["nightly"]),
        ("rdo", f"{SITES}/multiarch/pipelines/rdo.yaml", ["gate"]),
    ]
    assert config.plan.pipelines == config.pipelines


def test_multiarch_site_stages_per_arch():
    rdo = load_config(SITES / "multiarch").pipelines[1]
    assert rdo.stages_for("x86_64") == [
        [("build", 0)],
        [("packstack", 0), ("rpmlint", 0), ("rpmlint", 1)],
    ]
    assert rdo.stages_for("aarch64") == [[("packstack", 0), ("rpmlint", 1)]]


def test_job_on_an_arch_with_no_pool_names_job_and_arch_at_the_arch_entry():
    assert config_errors(SITES / "nopool") == [
        "nopool/pipelines/packstack.yaml:13:47: job 'packstack' (matrix entry 1) runs on "
        "architecture 'aarch64', but no worker pool has that architecture (pools: x86_64)"
    ]


def test_job_with_packages_on_a_worker_without_package_install_is_an_error(site_copy):
    workers = site_copy / "workers.yaml"
    workers.write_text(
        workers.read_text().replace(
            "    package-install: [sudo, dnf, install, -y]\n    host: x86-el9.example.org\n", ""
        )
    )
    assert config_errors(site_copy) == [
        "site/pipelines/rdo.yaml:7:5: job 'build' installs packages, but x86_64 worker(s) "
        "x86-el9 have no 'package-install' command in the inventory",
        "site/pipelines/rdo.yaml:21:9: job 'rpmlint' (matrix entry 0) installs packages, but "
        "x86_64 worker(s) x86-el9 have no 'package-install' command in the inventory",
    ]


def test_messages_name_files_by_the_path_as_given(site_copy, monkeypatch):
    monkeypatch.chdir(site_copy)
    config = load_config(".")
    assert [p.file for p in config.pipelines] == ["pipelines/nightly.yml", "pipelines/rdo.yaml"]


def test_errors_of_every_file_are_reported_at_once(site_copy):
    (site_copy / "gating.yaml").write_text("title: x\npoll-interval: soon\n")
    (site_copy / "workers.yaml").write_text("workers:\n  - {name: w1, arch: vax}\n")
    (site_copy / "pipelines" / "broken.yaml").write_text("pipeline: [a1]\njobs: {}\n")
    assert config_errors(site_copy) == [
        "site/gating.yaml:2:16: 'poll-interval' (seconds): expected an integer, got a string",
        "site/pipelines/broken.yaml:1:12: stage 1 names job 'a1', which is not defined in 'jobs'",
        "site/pipelines/nightly.yml:2:5: trigger 'nightly' names project 'nova-distgit', which "
        "is not in the site's projects (projects: none)",
        "site/pipelines/nightly.yml:7:20: job 'smoke' runs on architecture 'aarch64', but no "
        "worker pool has that architecture (pools: none)",
        "site/pipelines/rdo.yaml:1:10: trigger 'gate': no project of the site names a 'queue' "
        "to gate",
        "site/pipelines/rdo.yaml:7:21: job 'build' runs on architecture 'x86_64', but no "
        "worker pool has that architecture (pools: none)",
        "site/pipelines/rdo.yaml:14:21: job 'packstack' runs on architecture 'x86_64', but no "
        "worker pool has that architecture (pools: none)",
        "site/pipelines/rdo.yaml:14:29: job 'packstack' runs on architecture 'aarch64', but no "
        "worker pool has that architecture (pools: none)",
        "site/pipelines/rdo.yaml:21:39: job 'rpmlint' (matrix entry 0) runs on architecture "
        "'x86_64', but no worker pool has that architecture (pools: none)",
        "site/pipelines/rdo.yaml:22:40: job 'rpmlint' (matrix entry 1) runs on architecture "
        "'x86_64', but no worker pool has that architecture (pools: none)",
        "site/pipelines/rdo.yaml:22:48: job 'rpmlint' (matrix entry 1) runs on architecture "
        "'aarch64', but no worker pool has that architecture (pools: none)",
        "site/workers.yaml:2:22: worker 'w1': unknown architecture 'vax'",
    ]


def test_workers_from_several_inventory_files_are_merged(site_copy):
    site_file = site_copy / "gating.yaml"
    site_file.write_text(
        site_file.read_text().replace(
            "workers: [workers.yaml]", "workers: [workers.yaml, more.yaml]"
        )
    )
    (site_copy / "more.yaml").write_text("workers:\n  - {name: s390-1, arch: s390x}\n")
    config = load_config(site_copy)
    assert [w.name for w in config.workers] == ["x86-el9", "x86-el10", "arm-any", "s390-1"]


def test_worker_defined_in_two_inventory_files_is_an_error(site_copy):
    site_file = site_copy / "gating.yaml"
    site_file.write_text(
        site_file.read_text().replace(
            "workers: [workers.yaml]", "workers: [workers.yaml, more.yaml]"
        )
    )
    (site_copy / "more.yaml").write_text("workers:\n  - {name: arm-any, arch: aarch64}\n")
    assert config_errors(site_copy) == [
        "site/more.yaml:2:5: worker 'arm-any' is also defined at site/workers.yaml:14:5"
    ]


def test_trigger_naming_an_unknown_project_is_an_error(site_copy):
    nightly = site_copy / "pipelines" / "nightly.yml"
    nightly.write_text(nightly.read_text().replace("[nova-distgit]", "[nova-distgt]"))
    assert config_errors(site_copy) == [
        "site/pipelines/nightly.yml:2:5: trigger 'nightly' names project 'nova-distgt', which "
        "is not in the site's projects; did you mean 'nova-distgit'? "
        "(projects: nova-distgit, glance-distgit)"
    ]


def test_missing_inventory_file_is_an_error(site_copy):
    (site_copy / "workers.yaml").unlink()
    errors = config_errors(site_copy)
    assert (
        errors[-1]
        == "site/workers.yaml:1:1: cannot read the worker inventory: No such file or directory"
    )


def test_two_files_for_one_pipeline_name_is_an_error(site_copy):
    shutil.copy(site_copy / "pipelines" / "nightly.yml", site_copy / "pipelines" / "nightly.yaml")
    assert config_errors(site_copy) == [
        "site/pipelines/nightly.yml:1:1: pipeline 'nightly' is also defined in "
        "site/pipelines/nightly.yaml"
    ]


def test_missing_site_file_and_pipelines_folder_are_errors(tmp_path):
    (tmp_path / "bare").mkdir()
    (tmp_path / "bare" / "workers.yaml").write_text("workers: []\n")
    assert config_errors(tmp_path / "bare") == [
        "bare/gating.yaml:1:1: missing site configuration gating.yaml",
        "bare/gating.yaml:1:1: pipelines folder 'pipelines' does not exist",
    ]


def test_missing_path_is_an_error(tmp_path):
    assert config_errors(tmp_path / "nowhere") == [
        "nowhere:1:1: no such configuration directory or pipeline file"
    ]


def test_pipeline_files_are_yaml_files_in_name_order(tmp_path):
    for name in ("b.yaml", "a.yml", "c.txt", "README", ".launchpad.yaml"):
        (tmp_path / name).write_text("")
    (tmp_path / "sub.yaml").mkdir()
    assert [p.name for p in pipeline_files(tmp_path)] == [".launchpad.yaml", "a.yml", "b.yaml"]


# -- load_config: one pipeline file --------------------------------------------------


def test_single_pipeline_file_loads_without_a_site_or_pools():
    config = load_config(FIXTURES / "seed001.yaml")
    assert config.site is None and config.inventory is None and config.workers == ()
    assert [p.name for p in config.pipelines] == ["seed001"]
    assert all(b.workernames == () for b in config.plan.builders if b.kind == "job")


def test_single_pipeline_file_errors_use_the_path_as_given(monkeypatch):
    monkeypatch.chdir(FIXTURES)
    with pytest.raises(ConfigError) as exc:
        load_config("broken/missing_job.yaml")
    assert exc.value.messages == [
        "broken/missing_job.yaml:3:12: stage 2 names job 'rpmlnt', which is not defined in "
        "'jobs'; did you mean 'rpmlint'?"
    ]


# -- the build backend -------------------------------------------------------------------


def test_the_backend_defaults_to_local():
    site, errors = parse("title: x\n")
    assert errors == []
    assert site.backend == BackendConfig()
    assert (site.backend.kind, site.backend.mode, site.backend.destination_tag) == (
        "local",
        "rebuild",
        "dist",
    )


def test_a_koji_backend_is_read():
    site, errors = parse(
        textwrap.dedent(
            """\
            backend:
              type: koji
              server: https://koji.example.org/kojihub
              topurl: https://koji.example.org/kojifiles
              auth: password
              user: gating
              password-secret: koji-password
              target: rdo-liberty
              destination-tag: rdo-liberty
              candidate-tag: rdo-liberty-candidate
              export-mode: promote
              poll-interval: 2
              scm-url: git+https://gating.example.org/scm/{project}.git
            """
        )
    )
    assert errors == []
    b = site.backend
    assert (b.kind, b.auth, b.user, b.password_secret, b.target, b.mode) == (
        "koji",
        "password",
        "gating",
        "koji-password",
        "rdo-liberty",
        "promote",
    )
    assert (b.candidate_tag, b.poll_interval) == ("rdo-liberty-candidate", 2.0)
    assert b.scm_url == "git+https://gating.example.org/scm/{project}.git"
    # an unreachable hub is waited for 6 hours, at most a minute between attempts
    assert (b.outage_timeout, b.outage_retry_max) == (21600.0, 60.0)


def test_the_koji_outage_settings_are_read():
    site, errors = parse(
        "backend: {type: koji, profile: koji, target: t, outage-timeout: 3600, outage-retry-max: 5}"
    )
    assert errors == []
    assert (site.backend.outage_timeout, site.backend.outage_retry_max) == (3600.0, 5.0)


@pytest.mark.parametrize(
    "text, message",
    [
        ("backend: {type: obs}", "backend 'type': expected 'local' or 'koji', not 'obs'"),
        ("backend: {type: koji, target: t}", "needs a 'profile', or 'server' and 'topurl'"),
        ("backend: {type: koji, profile: koji}", "needs a 'target'"),
        ("backend: {profile: koji}", "backend 'profile' applies to type 'koji' only"),
        ("backend: {export-mode: promote}", "'export-mode: promote' needs a 'candidate-tag'"),
        ("backend: {export-mode: fast}", "expected rebuild or promote"),
        ("backend: {destination-tag: 'a/b'}", "'a/b' is not a valid tag or target name"),
        (
            "backend: {type: koji, profile: k, target: t, defines: {dist: .el9}}",
            "backend 'defines' applies to type 'local' only",
        ),
        ("backend: {candidate-tag: dist}", "'candidate-tag' must differ from 'destination-tag'"),
        ("backend: {type: koji, server: 'ftp://x', topurl: 'http://y', target: t}", "http"),
        ("backend: {colour: blue}", "colour"),
        (
            "backend: {type: koji, profile: k, target: t, scm-url: 'https://x/{project}'}",
            "backend 'scm-url': expected a git URL template with {project}",
        ),
        ("backend: {scm-url: 'git+https://x/{project}.git'}", "applies to type 'koji' only"),
        ("backend: {outage-timeout: 60}", "backend 'outage-timeout' applies to type 'koji' only"),
        (
            "backend: {type: koji, profile: k, target: t, outage-timeout: 0}",
            "backend 'outage-timeout' (seconds): expected an integer of at least 1, got 0",
        ),
        (
            "backend: {type: koji, profile: k, target: t, outage-retry-max: soon}",
            "backend 'outage-retry-max' (seconds): expected an integer, got a string",
        ),
    ],
)
def test_bad_backend_settings_are_named(text, message):
    _site, errors = parse(text)
    assert errors and any(message in e for e in errors), errors


def test_task_repos_on_an_arch_with_no_pool_is_an_error_at_the_arch(tmp_path):
    site = tmp_path / "task-repos"
    shutil.copytree(Path(__file__).parent / "integration" / "sites" / "task-repos", site)
    conf = site / "gating.yaml"
    conf.write_text(conf.read_text().replace("  arch: x86_64\n", "  arch: aarch64\n"))
    assert config_errors(site) == [
        "task-repos/gating.yaml:12:9: task-repos: tasks run on the 'aarch64' workers ('arch'), "
        "but no worker has that architecture (pools: x86_64)"
    ]


# -- multi-master -------------------------------------------------------------------


def test_multi_master_is_read_with_defaults():
    site, errors = parse(
        """\
        database: postgresql://gating@db/gating
        shared-dir: /srv/gating
        multi-master: {router-url: "ws://mq:8080/ws"}
        """
    )
    assert errors == []
    assert site.shared_dir == "/srv/gating"
    assert site.multi_master == MultiMaster("ws://mq:8080/ws")
    assert (site.multi_master.realm, site.multi_master.heartbeat) == ("realm1", 10)
    assert (site.multi_master.expire_after, site.multi_master.claim_interval) == (60, 10)
    site, errors = parse(
        """\
        database: postgresql://gating@db/gating
        shared-dir: /srv/gating
        multi-master:
          router-url: wss://mq:8080/ws
          realm: gating
          heartbeat: 2
          expire-after: 10
          claim-interval: 1
        """
    )
    assert errors == []
    assert site.multi_master == MultiMaster("wss://mq:8080/ws", "gating", 2, 10, 1)


def test_multi_master_needs_a_shared_database_and_directory():
    _, errors = parse(
        """\
        shared-dir: shared
        multi-master: {router-url: "ws://mq:8080/ws"}
        """
    )
    assert errors == [
        "gating.yaml:1:13: multi-master needs 'shared-dir': an absolute path every master "
        "mounts (the forge, the build backend and the compose reports live there)",
        "gating.yaml:2:15: multi-master needs a 'database' every master reaches (PostgreSQL, "
        "e.g. postgresql://gating@db.example.org/gating), not sqlite:///state.sqlite",
    ]


def test_bad_multi_master_settings_are_all_reported():
    _, errors = parse(
        """\
        database: sqlite:///state.sqlite
        shared-dir: /srv/gating
        multi-master:
          router-url: http://mq:8080/ws
          realm: "a b"
          heartbeat: 0
          expire-after: 20
          claim: 3
        """
    )
    assert errors == [
        "gating.yaml:1:11: multi-master needs a 'database' every master reaches (PostgreSQL, "
        "e.g. postgresql://gating@db.example.org/gating), not sqlite:///state.sqlite",
        "gating.yaml:4:15: multi-master 'router-url': expected the crossbar router's WebSocket "
        "URL, e.g. ws://127.0.0.1:8080/ws",
        "gating.yaml:5:10: multi-master 'realm': 'a b' is not a WAMP realm name",
        "gating.yaml:6:14: multi-master 'heartbeat' (seconds): expected an integer of at "
        "least 1, got 0",
        "gating.yaml:8:3: unknown key 'claim' in 'multi-master'",
    ]
    _, errors = parse(
        """\
        database: postgresql://db/gating
        shared-dir: /srv/gating
        multi-master: {router-url: "ws://mq/ws", heartbeat: 10, expire-after: 20}
        """
    )
    assert errors == [
        "gating.yaml:3:71: multi-master 'expire-after' (20s) must be at least 3 heartbeats "
        "(30s): a live master would be declared dead"
    ]


# -- web --------------------------------------------------------------------------


def test_web_login_with_secret_passwords_and_admins_is_read():
    site, errors = parse(
        """\
        web:
          auth:
            users: {alice: web-alice, bob: web-bob}
          admins: [alice]
          admin-groups: gating-admins
        """
    )
    assert errors == []
    assert site.web == WebConfig(
        users=(WebUser("alice", "web-alice"), WebUser("bob", "web-bob")),
        admins=("alice",),
        admin_groups=("gating-admins",),
    )
    assert site.web.has_auth
    assert site.web.users[1].mark == Mark("gating.yaml", 3, 36)
    assert site.web.htpasswd_path("/etc/gating") is None
    hash(site)  # frozen all the way down, like every site object


def test_web_login_with_a_htpasswd_file_is_read_relative_to_the_config_dir():
    site, errors = parse(
        """\
        web:
          auth: {htpasswd: secrets/htpasswd}
          admin-groups: [ops]
        """
    )
    assert errors == []
    assert site.web == WebConfig(htpasswd="secrets/htpasswd", admin_groups=("ops",))
    assert site.web.mark == Mark("gating.yaml", 2, 20)
    assert site.web.htpasswd_path("/etc/gating") == Path("/etc/gating/secrets/htpasswd")
    site, _ = parse("web: {auth: {htpasswd: /srv/htpasswd}, admins: [root]}\n")
    assert site.web.htpasswd_path("/etc/gating") == Path("/srv/htpasswd")


def test_without_web_auth_there_is_no_login():
    site, errors = parse("title: t\n")
    assert (errors, site.web) == ([], None)
    site, errors = parse("web: {}\n")
    assert errors == [] and not site.web.has_auth


OPEN_CONTROL = (
    "without 'web: auth': anyone who reaches it could approve, dequeue, force, stop and "
    "rebuild; add 'web: {auth: ..., admins: [...]}' (see the README, 'Web login and the "
    "admin role') or listen on 127.0.0.1"
)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("www-interface: 0.0.0.0\n", "gating.yaml:1:16: the web UI listens on 0.0.0.0 "),
        ("www-interface: '::'\n", "gating.yaml:1:16: the web UI listens on :: "),
        (
            "www-interface: 192.0.2.7\nweb: {}\n",
            "gating.yaml:1:16: the web UI listens on 192.0.2.7 ",
        ),
        ("www-port: tcp:8010\n", "gating.yaml:1:11: the web UI listens on all interfaces "),
        (
            "www-interface: 127.0.0.1\nwww-port: 'ssl:8443:privateKey=k.pem:interface=0.0.0.0'\n",
            "gating.yaml:2:11: the web UI listens on 0.0.0.0 ",
        ),
        (
            "www-port: 'tcp:8010:interface=\\:\\:'\n",
            "gating.yaml:1:11: the web UI listens on :: ",
        ),
    ],
)
def test_control_open_to_everyone_beyond_loopback_is_refused(text, expected):
    _, errors = parse(text)
    assert errors == [expected + OPEN_CONTROL]


@pytest.mark.parametrize(
    "text",
    [
        "title: t\n",  # the default: 127.0.0.1
        "www-interface: 127.0.0.2\n",
        "www-interface: localhost\n",
        "www-interface: '::1'\n",
        "www-port: 'tcp:8010:interface=127.0.0.1'\nwww-interface: 0.0.0.0\n",
        "www-port: 'tcp:8010:interface=\\:\\:1'\n",
        "www-port: 'unix:/run/gating/www.sock'\n",
        "www-interface: 0.0.0.0\nweb: {auth: {users: {alice: web-alice}}, admins: [alice]}\n",
        "www-port: tcp:8010\nweb: {auth: {htpasswd: secrets/htpasswd}, admins: [ops]}\n",
    ],
)
def test_control_without_login_is_allowed_on_loopback_or_with_a_login(text):
    _, errors = parse(text)
    assert errors == []


def test_a_broken_web_stanza_is_not_reported_twice():
    _, errors = parse("www-interface: 0.0.0.0\nweb: {auth: nope}\n")
    assert len(errors) == 1 and "web 'auth'" in errors[0]


def test_bad_web_settings_are_all_reported_where_they_are():
    _, errors = parse(
        """\
        web:
          auth:
            users: {alice: ../alice, "a:b": pw, carol: 3, dave: web-dave}
          admins: [dave, daev, ""]
          colour: blue
        """
    )
    assert errors == [
        "gating.yaml:3:20: web user 'alice': '../alice' is not a secret name (a file name in "
        "'secrets-dir'; the password itself never goes in gating.yaml)",
        "gating.yaml:3:30: web auth 'users': 'a:b' is not a user name (no ':' or spaces)",
        "gating.yaml:3:48: web user 'carol' (the secret holding the password): expected a "
        "string, got an integer (3)",
        "gating.yaml:4:24: web 'admins': expected a user name, got an empty string",
        "gating.yaml:5:3: unknown key 'colour' in 'web'",
    ]
    _, errors = parse(
        """\
        web:
          auth: {users: {dave: web-dave, alice: web-alice}}
          admins: [dave, alcie]
        """
    )
    assert errors == [
        "gating.yaml:3:18: web 'admins': 'alcie' is not one of the auth 'users'; did you mean "
        "'alice'? (users: dave, alice)"
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "web: {auth: {htpasswd: h, users: {a: b}}, admins: [a]}",
            "gating.yaml:1:13: web 'auth': expected exactly one of 'htpasswd' (a htpasswd "
            "file) or 'users' (user: the name of the secret holding the password)",
        ),
        (
            "web: {auth: {}, admins: [a]}",
            "gating.yaml:1:13: web 'auth': expected exactly one of 'htpasswd' (a htpasswd "
            "file) or 'users' (user: the name of the secret holding the password)",
        ),
        (
            "web: {auth: {htpasswd: h}}",
            "gating.yaml:1:6: web: 'auth' needs an admin: users in 'admins' or groups in "
            "'admin-groups' get the role 'admins', the only one allowed to control the gate",
        ),
        (
            "web: {auth: {htpasswd: h}, admins: [], admin-groups: []}",
            "gating.yaml:1:36: web: 'auth' needs an admin: users in 'admins' or groups in "
            "'admin-groups' get the role 'admins', the only one allowed to control the gate",
        ),
        (
            "web: {admins: [alice]}",
            "gating.yaml:1:15: web: 'admins' and 'admin-groups' need an 'auth' (a login); "
            "without one there is no admin and everyone may control the gate",
        ),
        (
            "web: {auth: {users: {}}, admins: [a]}",
            "gating.yaml:1:21: web auth 'users': expected a mapping of user names to secret "
            "names (e.g. {alice: web-alice}), got an empty mapping",
        ),
        (
            "web: {auth: {users: [alice]}, admins: [alice]}",
            "gating.yaml:1:21: web auth 'users': expected a mapping of user names to secret "
            "names (e.g. {alice: web-alice}), got a list",
        ),
        (
            "web: {auth: {htpasswd: ''}, admins: [a]}",
            "gating.yaml:1:24: web auth 'htpasswd': expected the path of a file",
        ),
        (
            "web: {auth: {htpasswd: h}, admins: {alice: 1}}",
            "gating.yaml:1:36: web 'admins': expected a string or a list of strings, got a mapping",
        ),
        (
            "web: {auth: {htpasswd: h}, admins: ['al ice']}",
            "gating.yaml:1:37: web 'admins': 'al ice' is not a user name (no ':' or spaces)",
        ),
        ("web: [auth]", "gating.yaml:1:6: 'web': expected a mapping, got a list"),
        (
            "web: {auth: {password: x}, admins: [a]}",
            "gating.yaml:1:14: unknown key 'password' in web 'auth'; did you mean 'htpasswd'?",
        ),
    ],
)
def test_bad_web_stanza_is_named(text, expected):
    site, errors = parse(text + "\n")
    assert expected in errors, errors
    assert site.web is None


# -- change-hooks -----------------------------------------------------------------------


def test_change_hooks_name_their_secrets():
    site, errors = parse(
        """\
        change-hooks:
          gating: {secret: hook-gating}
          github:
            secret: hook-github
        """
    )
    assert errors == []
    assert site.change_hooks == (
        ChangeHook("gating", "hook-gating"),
        ChangeHook("github", "hook-github"),
    )
    assert [h.mark for h in site.change_hooks] == [
        Mark("gating.yaml", 2, 20),
        Mark("gating.yaml", 4, 13),
    ]
    hash(site)
    assert parse("title: t\n")[0].change_hooks == ()
    assert parse("change-hooks: {}\n") == (Site(config_dir="/etc/gating"), [])


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "change-hooks: {gating: }",
            "gating.yaml:1:24: change hook 'gating': needs a 'secret' (the name of the Buildbot "
            "secret it is signed with); a change hook never takes unsigned calls",
        ),
        (
            "change-hooks: {gating: {}}",
            "gating.yaml:1:24: change hook 'gating': missing required key 'secret'",
        ),
        (
            "change-hooks: {github: {strict: false}}",
            "gating.yaml:1:25: unknown key 'strict' in change hook 'github'",
        ),
        (
            "change-hooks: {gitlab: {secret: s}}",
            "gating.yaml:1:16: change-hooks: unknown dialect 'gitlab'; did you mean 'github'? "
            "(dialects: gating, github)",
        ),
        (
            "change-hooks: {base: {secret: s}}",
            "gating.yaml:1:16: change-hooks: unknown dialect 'base' (dialects: gating, github)",
        ),
        (
            "change-hooks: [gating]",
            "gating.yaml:1:15: 'change-hooks': expected a mapping of dialects to settings "
            "(e.g. {gating: {secret: hook-gating}}), got a list",
        ),
        (
            "change-hooks: {gating: hook-gating}",
            "gating.yaml:1:24: change hook 'gating': expected a mapping, got a string",
        ),
    ],
)
def test_bad_change_hooks_are_named(text, expected):
    site, errors = parse(text + "\n")
    assert expected in errors, errors
    assert site.change_hooks == ()


@pytest.mark.parametrize(
    "value", ["'correct horse battery staple'", "../hook", "1234567890123456789", "[a]"]
)
def test_a_secret_value_in_place_of_its_name_is_refused_and_not_repeated(value):
    site, errors = parse(f"change-hooks:\n  gating: {{secret: {value}}}\n")
    assert errors == [
        "gating.yaml:2:20: change hook 'gating' 'secret': expected the name of a Buildbot "
        "secret (a file name in 'secrets-dir': letters, digits, '.', '_', '-'), never the "
        "secret itself"
    ]
    assert site.change_hooks == ()
    assert not any(v in errors[0] for v in ("horse", "../hook", "12345"))
