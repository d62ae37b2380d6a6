"""gating.master: the configuration directory becomes a BuildmasterConfig that Buildbot
itself accepts; step names and arguments are pinned."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from buildbot.config.errors import ConfigErrors
from buildbot.config.master import MasterConfig, loadConfigDict
from buildbot.process.properties import Secret

from gating import master as gmaster
from gating.localsite import REPO_ROOT

DEMO = REPO_ROOT / "examples" / "demo"
MULTIARCH = REPO_ROOT / "tests" / "integration" / "sites" / "multiarch"


@pytest.fixture
def basedir(tmp_path: Path) -> Path:
    (tmp_path / "secrets").mkdir(mode=0o700)
    return tmp_path


def step_names(factory) -> list[str]:
    return [s.kwargs.get("name") or s.step_class.name for s in factory.steps]


def step(factory, name):
    return next(s for s in factory.steps if s.kwargs.get("name") == name)


def test_coordinators_run_pipeline_runs_and_their_built_in_jobs_at_once(basedir):
    """No cap on a coordinator's builds: with a window's worth of pipeline runs on every
    coordinator, the built-in jobs they wait for (scratch builds, exports) still start
    (one build per builder and worker is Buildbot's own limit)."""
    config = gmaster.buildmaster_config(str(basedir), str(DEMO))
    coordinators = [w for w in config["workers"] if w.name.startswith("gating-coordinator-")]
    assert len(coordinators) == 20
    assert all(w.max_builds is None for w in coordinators)


def test_pipeline_runs_get_the_sites_job_attempts(basedir, tmp_path):
    """``job-attempts`` (gating.yaml) bounds the builds of each job instance of every
    pipeline run (default 3)."""

    def attempts(config_dir: Path) -> set[int]:
        config = gmaster.buildmaster_config(str(basedir), str(config_dir))
        pipelines = [b for b in config["builders"] if "pipeline" in b.tags]
        assert pipelines
        return {b.factory.steps[0].kwargs["job_attempts"] for b in pipelines}

    assert attempts(DEMO) == {3}
    site = tmp_path / "site"
    shutil.copytree(DEMO, site)
    with open(site / "gating.yaml", "a") as out:
        out.write("job-attempts: 5\n")
    assert attempts(site) == {5}


def test_demo_config_is_accepted_by_buildbot(basedir):
    config = gmaster.buildmaster_config(str(basedir), str(DEMO))
    loaded = MasterConfig.loadFromDict(config, "master.cfg")
    # requests are never merged: two events for one pipeline are two runs
    assert loaded.collapseRequests is False
    assert [b.name for b in loaded.builders] == [
        "gate",
        "gate/install/x86_64",
        "gate/build/master",
        "gate/export/master",
        "sample",
        "sample/build/x86_64",
        "sample/inspect/x86_64",
        "sample/lint/x86_64",
        "sample/lint/aarch64",
        "sample/test/aarch64",
        "gating-rpmbuild",
    ]
    descriptions = {b.name: b.description for b in loaded.builders}
    assert descriptions["sample/test/aarch64"] == "job test of pipeline sample: stage 2, aarch64"
    workers = {b.name: b.workernames for b in loaded.builders}
    assert workers["sample"] == [f"gating-coordinator-{i}" for i in range(1, 21)]
    assert workers["sample/test/aarch64"] == ["local-aarch64"]
    assert workers["sample/lint/x86_64"] == ["local-x86_64"]
    assert workers["gate/export/master"] == workers["sample"]  # built-ins: coordinators
    assert workers["gating-rpmbuild"] == ["local-x86_64"]  # local builds run on a worker
    assert [type(s).__name__ for s in config["services"]] == ["BackendService", "UIPlanService"]
    assert sorted(loaded.schedulers) == [
        "force-gate",
        "force-sample",
        "gate",
        "gate:jobs",
        "gating:rpmbuild",
        "sample:commit:sample-distgit",
        "sample:jobs",
    ]
    assert loaded.db.db_url == "sqlite:///state.sqlite"
    assert set(loaded.www["plugins"]) == {"console_view", "grid_view", "waterfall_view", "gating"}
    assert loaded.www["port"] == "tcp:8010:interface=127.0.0.1"


def test_worker_passwords_are_secrets_never_strings(basedir):
    config = gmaster.buildmaster_config(str(basedir), str(DEMO))
    pb_workers = [w for w in config["workers"] if not w.name.startswith("gating-coordinator")]
    assert {w.name for w in pb_workers} == {"local-x86_64", "local-aarch64"}
    for w in pb_workers:
        assert isinstance(w.password, Secret)
        assert w.password.secret_name == f"worker-{w.name}"


def test_job_steps_are_pinned(basedir):
    config = gmaster.buildmaster_config(str(basedir), str(DEMO))
    builders = {b.name: b for b in config["builders"]}
    test = builders["sample/test/aarch64"].factory
    assert step_names(test) == [
        "checkout",
        "repo-file",
        "prepare-input",
        "fetch-input",
        "unpack-input",
        "run",
    ]
    assert step(test, "fetch-input").kwargs["description"] == "fetch output of build[0]@x86_64"
    assert step(test, "prepare-input").kwargs["command"] == ["mkdir", "-p", "--", "built"]
    assert step(test, "unpack-input").kwargs["command"] == [
        "tar",
        "-xf",
        ".gating-input.tar",
        "-C",
        "built",
    ]
    run = step(test, "run").kwargs
    assert run["command"][:4] == ["bash", "--noprofile", "--norc", "-ec"]
    assert {k: v for k, v in run["env"].items() if not k.startswith("GATING_")} == {
        "LANG": "C.UTF-8"
    }
    # The overlay of a koji-scratch-build job of an earlier stage, when there is one.
    assert set(run["env"]) == {
        "LANG",
        "GATING_REPO_FILE",
        "GATING_REPO_FILE_URL",
        "GATING_OVERLAY_URL",
        # what started the run (koji event, compose), as its properties
        "GATING_EVENT",
        "GATING_NVR",
        "GATING_NAME",
        "GATING_VERSION",
        "GATING_RELEASE",
        "GATING_BUILD_ID",
        "GATING_TASK_ID",
        "GATING_TAG",
        "GATING_OWNER",
        "GATING_TARGET",
        "GATING_KOJI_EVENT",
        "GATING_COMPOSE_ID",
        "GATING_COMPOSE_NAME",
        "GATING_COMPOSE_LOCATION",
        "GATING_COMPOSE_STATUS",
    }
    build = builders["sample/build/x86_64"].factory
    assert step_names(build) == [
        "checkout",
        "repo-file",
        "run",
        "collect-output",
        "output-properties",
        "pack-output",
        "upload-output",
    ]
    collect = step(build, "collect-output").kwargs["command"]
    assert collect[-2:] == [".gating-output", "rpmbuild/RPMS/*/*.rpm"]


def test_master_cfg_wires_the_configuration_directory(basedir, monkeypatch):
    shutil.copy(REPO_ROOT / "master.cfg", basedir / "master.cfg")
    monkeypatch.setenv("GATING_CONFIG", str(MULTIARCH))
    _filename, config = loadConfigDict(str(basedir), "master.cfg")
    names = {b.name for b in config["builders"]}
    assert {"failing", "passing", "passing/test-arm/aarch64"} <= names


def test_broken_configuration_becomes_buildbot_config_errors(basedir, tmp_path):
    conf = tmp_path / "conf"
    shutil.copytree(MULTIARCH, conf)
    (conf / "pipelines" / "passing.yaml").write_text(
        "pipeline: [aa]\njobs:\n  aa:\n    architectures: [s390x]\n    run: 'true'\n"
    )
    with pytest.raises(ConfigErrors) as exc:
        gmaster.buildmaster_config(str(basedir), str(conf))
    assert exc.value.errors == [
        f"{conf}/pipelines/passing.yaml:4:21: job 'aa' runs on architecture 's390x', but no worker "
        "pool has that architecture (pools: x86_64, aarch64)"
    ]


def test_nightly_and_dist_git_commit_triggers_become_buildbot_schedulers(basedir):
    fixture = REPO_ROOT / "tests" / "fixtures" / "sites" / "multiarch"
    config = gmaster.buildmaster_config(str(basedir), str(fixture))
    loaded = MasterConfig.loadFromDict(config, "master.cfg")
    nightly = loaded.schedulers["nightly:nightly:nova-distgit"]
    kwargs = nightly._config_kwargs
    assert (kwargs["hour"], kwargs["minute"], kwargs["builderNames"]) == (3, 30, ["nightly"])
    demo = MasterConfig.loadFromDict(gmaster.buildmaster_config(str(basedir), str(DEMO)), "x")
    commit = demo.schedulers["sample:commit:sample-distgit"]
    assert type(commit).__name__ == "SingleBranchScheduler"
    assert commit._config_kwargs["builderNames"] == ["sample"]
    pollers = [c for c in demo.change_sources if type(c).__name__ == "GitPoller"]
    assert [(p._config_kwargs["project"], p._config_kwargs["branches"]) for p in pollers] == [
        ("sample-distgit", ["main"])
    ]


def test_multi_master_uses_the_wamp_queue_fast_takeover_and_the_shared_directory(basedir, tmp_path):
    conf = tmp_path / "config"
    shutil.copytree(DEMO, conf)
    site = conf / "gating.yaml"
    site.write_text(
        site.read_text().replace("database: sqlite:///state.sqlite\n", "")
        + "database: postgresql://gating@db/gating\n"
        "shared-dir: /srv/gating\n"
        "multi-master:\n"
        "  router-url: ws://mq:8080/ws\n"
        "  heartbeat: 3\n"
        "  expire-after: 15\n"
        "  claim-interval: 4\n"
    )
    config = gmaster.buildmaster_config(str(basedir), str(conf))
    loaded = MasterConfig.loadFromDict(config, "master.cfg")
    assert loaded.multiMaster is True
    assert loaded.mq == {
        "type": "wamp",
        "router_url": "ws://mq:8080/ws",
        "realm": "realm1",
        "wamp_debug_level": "error",
    }
    assert loaded.db.db_url == "postgresql://gating@db/gating"
    liveness = loaded.services["gating-liveness"]
    assert liveness._config_kwargs == {"heartbeat": 3, "expire_after": 15}
    clustered = [*loaded.schedulers.values(), *loaded.change_sources]
    assert {s.POLL_INTERVAL_SEC for s in clustered} == {4}
    # Everything the masters must share is under shared-dir.
    gate_settings = loaded.schedulers["gate"]._config_kwargs["settings"]
    assert gate_settings.forge_root == "/srv/gating/git"
    assert loaded.services["gating-backend"]._config_kwargs["root"] == "/srv/gating/backend"
    upload = step(next(b for b in loaded.builders if b.name == "gating-rpmbuild").factory, "upload")
    assert "/srv/gating/backend/incoming/" in repr(upload.kwargs["masterdest"])


def test_one_master_keeps_the_simple_queue_and_its_own_directory(basedir):
    config = gmaster.buildmaster_config(str(basedir), str(DEMO))
    assert "multiMaster" not in config and "mq" not in config
    assert config["schedulers"][0].POLL_INTERVAL_SEC == 300  # Buildbot's own
    gate = next(s for s in config["schedulers"] if s.name == "gate")
    assert gate._config_kwargs["settings"].forge_root == str(basedir.resolve() / "git")


# -- web: the login and the admin role ------------------------------------------------


def web_site(tmp_path: Path, stanza: str) -> Path:
    """The demo configuration with a ``web`` stanza."""
    conf = tmp_path / "config"
    shutil.copytree(DEMO, conf)
    site = conf / "gating.yaml"
    site.write_text(site.read_text() + stanza)
    return conf


def write_secret(basedir: Path, name: str, text: str) -> None:
    path = basedir / "secrets" / name
    path.write_text(text)
    path.chmod(0o600)  # Buildbot's SecretInAFile refuses secrets others may read


def allowed(authz, action: str, user_info: dict) -> bool:
    """Buildbot's verdict for ``action`` on a gate endpoint (the matchers answer at once)."""
    verdicts: list[bool] = []
    d = authz.assertUserAllowed(("gating", action), action, {}, user_info)
    d.addCallbacks(lambda _: verdicts.append(True), lambda f: verdicts.append(False))
    assert verdicts, "the authz rules did not answer synchronously"
    return verdicts[0]


def test_without_web_auth_the_web_ui_has_no_login(basedir):
    config = gmaster.buildmaster_config(str(basedir), str(DEMO))
    assert "auth" not in config["www"] and "authz" not in config["www"]
    loaded = MasterConfig.loadFromDict(config, "master.cfg")
    assert type(loaded.www["auth"]).__name__ == "NoAuth"  # Buildbot's default: no login


def test_web_users_log_in_with_secret_passwords_and_only_admins_control(basedir, tmp_path):
    conf = web_site(
        tmp_path,
        "web:\n"
        "  auth: {users: {alice: web-alice, bob: web-bob}}\n"
        "  admins: [alice]\n"
        "  admin-groups: [gating-admins]\n",
    )
    write_secret(basedir, "web-alice", "alice s3cret\n")
    write_secret(basedir, "web-bob", "bob-pw")
    config = gmaster.buildmaster_config(str(basedir), str(conf))
    loaded = MasterConfig.loadFromDict(config, "master.cfg")
    auth, authz = loaded.www["auth"], loaded.www["authz"]
    assert type(auth).__name__ == "UserPasswordAuth"
    (checker,) = auth.checkers
    # read from the secrets at load time, the trailing newline stripped (as SecretInAFile)
    assert checker.users == {b"alice": b"alice s3cret", b"bob": b"bob-pw"}
    # what the web UI is told about the login: its kind only
    assert auth.getConfigDict() == {"name": "UserPasswordAuth"}
    props = [repr(b.properties) for b in loaded.builders] + [
        repr(w.properties) for w in loaded.workers
    ]
    assert not any("s3cret" in p or "bob-pw" in p for p in props)

    (rule,) = authz.allowRules
    assert (type(rule).__name__, rule.role, rule.defaultDeny) == (
        "AnyControlEndpointMatcher",
        "admins",
        True,
    )
    authz.setMaster(object())
    alice, bob = {"username": "alice"}, {"username": "bob"}
    anonymous = {"anonymous": True}
    group_admin = {"username": "carol", "groups": ["devs", "gating-admins"]}
    for action in ("approve", "dequeue", "force", "stop", "rebuild"):
        assert allowed(authz, action, alice)
        assert allowed(authz, action, group_admin)
        assert not allowed(authz, action, bob)
        assert not allowed(authz, action, anonymous)
    assert allowed(authz, "get", anonymous)  # everyone reads everything
    assert not allowed(authz, "dequeue", {"username": "dave", "groups": ["admins", "devs"]})


def test_a_missing_or_empty_web_secret_is_a_config_error_naming_user_and_secret(basedir, tmp_path):
    conf = web_site(
        tmp_path,
        "web:\n  auth:\n    users: {alice: web-alice, bob: web-bob}\n  admins: [alice]\n",
    )
    write_secret(basedir, "web-bob", "\n")
    with pytest.raises(ConfigErrors) as exc:
        gmaster.buildmaster_config(str(basedir), str(conf))
    site = conf / "gating.yaml"
    lines = len((DEMO / "gating.yaml").read_text().splitlines())
    assert exc.value.errors == [
        f"{site}:{lines + 3}:20: web user 'alice': no secret 'web-alice' (no file "
        f"{basedir.resolve()}/secrets/web-alice)",
        f"{site}:{lines + 3}:36: web user 'bob': secret 'web-bob' is empty",
    ]


def test_a_htpasswd_login_reads_the_file_buildbot_checks_at_each_login(basedir, tmp_path):
    conf = web_site(tmp_path, "web:\n  auth: {htpasswd: htpasswd}\n  admins: [alice]\n")
    htpasswd = conf / "htpasswd"
    htpasswd.write_text("# web UI users\nalice:wonderland\n")
    htpasswd.chmod(0o600)
    config = gmaster.buildmaster_config(str(basedir), str(conf))
    loaded = MasterConfig.loadFromDict(config, "master.cfg")
    auth = loaded.www["auth"]
    assert type(auth).__name__ == "HTPasswdAuth"
    (checker,) = auth.checkers
    assert checker.filename == str(htpasswd)
    assert checker.getUser(b"alice") == (b"alice", b"wonderland")
    assert [r.role for r in loaded.www["authz"].allowRules] == ["admins"]


def test_a_hashed_or_world_readable_htpasswd_is_a_config_error(basedir, tmp_path):
    conf = web_site(tmp_path, "web:\n  auth: {htpasswd: htpasswd}\n  admins: [alice]\n")
    htpasswd = conf / "htpasswd"
    htpasswd.write_text("alice:$apr1$Y.zMz2n3$6Xll.Te9q6GYig6HHpPgW/\nbob:\n")
    htpasswd.chmod(0o644)
    with pytest.raises(ConfigErrors) as exc:
        gmaster.buildmaster_config(str(basedir), str(conf))
    lines = len((DEMO / "gating.yaml").read_text().splitlines())
    assert exc.value.errors == [
        f"{conf}/gating.yaml:{lines + 2}:20: web auth 'htpasswd': {htpasswd} is readable by "
        "others (mode 0o644); it holds passwords: chmod o-rwx (as Buildbot requires of its "
        "secret files)",
        f"{htpasswd}:1:1: htpasswd user 'alice' has a hashed password; Buildbot's HTPasswdAuth "
        "compares plain-text passwords only (buildbot issue #3126), so this user could never "
        "log in: write the password itself, or use web auth 'users' (secrets)",
        f"{htpasswd}:2:1: htpasswd user 'bob' has an empty password",
    ]
    assert "6Xll" not in "\n".join(exc.value.errors)
    htpasswd.unlink()
    with pytest.raises(ConfigErrors) as exc:
        gmaster.buildmaster_config(str(basedir), str(conf))
    assert exc.value.errors == [
        f"{conf}/gating.yaml:{lines + 2}:20: web auth 'htpasswd': cannot read {htpasswd}: "
        "No such file or directory"
    ]


# -- change-hooks: signed dialects only ------------------------------------------------


def test_without_change_hooks_no_dialect_is_enabled(basedir):
    config = gmaster.buildmaster_config(str(basedir), str(DEMO))
    assert config["www"]["change_hook_dialects"] == {}


def test_change_hooks_become_signed_dialects_that_never_hold_the_secret(basedir, tmp_path):
    conf = web_site(
        tmp_path,
        "change-hooks:\n  gating: {secret: hook-gating}\n  github: {secret: hook-github}\n",
    )
    write_secret(basedir, "hook-gating", "gating-hook-s3cret-value\n")
    write_secret(basedir, "hook-github", "github-hook-s3cret-value")
    config = gmaster.buildmaster_config(str(basedir), str(conf))
    loaded = MasterConfig.loadFromDict(config, "master.cfg")
    dialects = loaded.www["change_hook_dialects"]
    assert set(dialects) == {"gating", "github"}
    assert dialects["github"]["strict"] is True
    assert dialects["github"]["secret"].secret_name == "hook-github"
    assert dialects["gating"]["secret"].secret_name == "hook-gating"
    # the repository of a hook's change is the one the poller and the jobs use
    forge = basedir.resolve() / "git" / "sample-distgit.git"
    assert dialects["gating"]["projects"] == (("sample-distgit", str(forge)),)
    # the secrets provider the dialects render their secret with at each call
    (provider,) = config["secretsProviders"]
    assert provider._dirname == str(basedir.resolve() / "secrets")
    text = repr(config) + repr(loaded.www) + repr(vars(loaded))
    assert "s3cret" not in text


def test_a_missing_or_short_hook_secret_is_an_error_naming_hook_and_secret(basedir, tmp_path):
    conf = web_site(
        tmp_path,
        "change-hooks:\n  gating: {secret: hook-gating}\n  github: {secret: hook-github}\n",
    )
    write_secret(basedir, "hook-github", "s3cret\n")
    with pytest.raises(ConfigErrors) as exc:
        gmaster.buildmaster_config(str(basedir), str(conf))
    site = conf / "gating.yaml"
    lines = len((DEMO / "gating.yaml").read_text().splitlines())
    assert exc.value.errors == [
        f"{site}:{lines + 2}:20: change hook 'gating': no secret 'hook-gating' (no file "
        f"{basedir.resolve()}/secrets/hook-gating)",
        f"{site}:{lines + 3}:20: change hook 'github': secret 'hook-github' is shorter than "
        "16 characters (make one with: openssl rand -hex 32)",
    ]
    assert "s3cret" not in str(exc.value)


# -- hostile values in a job's commands ---------------------------------------------------


def test_values_from_a_pipeline_file_are_single_arguments_of_list_commands():
    from buildbot.process.properties import Properties

    from gating.diagnostics import Collector
    from gating.inventory import Inventory, Worker
    from gating.pipeline import parse_pipeline

    hostile = "$(touch pwned);`id`|x&&y 'q\"\\"
    text = f"""\
pipeline: [build, test]
jobs:
  build:
    architectures: x86_64
    output: {{paths: [{json.dumps(hostile + "/*.rpm")}]}}
    run: make
  test:
    architectures: x86_64
    packages: [{json.dumps(hostile)}, gcc]
    snaps: [{{name: lxd, channel: 5.0/stable}}]
    input: {{job-name: build, target-directory: {json.dumps("in " + hostile)}}}
    environment: {{HOSTILE: {json.dumps(hostile)}}}
    run: {json.dumps("echo " + hostile)}
"""
    errors = Collector()
    pipeline = parse_pipeline(text, "p.yaml", "sample", errors)
    assert not errors, errors.diagnostics
    install = ("sudo", "dnf", "install", "-y")
    inventory = Inventory((Worker("w1", "x86_64", package_install=install),))
    build = gmaster.job_factory(pipeline, pipeline.job("build"), "x86_64", inventory)
    test = gmaster.job_factory(pipeline, pipeline.job("test"), "x86_64", inventory)
    commands = {
        s.kwargs["name"]: s.kwargs["command"]
        for f in (build, test)
        for s in f.steps
        if "command" in s.kwargs
    }
    rendered = commands.pop("install-packages").getRenderingFor(Properties(workername="w1"))
    assert rendered.result == ["sudo", "dnf", "install", "-y", hostile, "gcc"]
    assert commands["prepare-input"] == ["mkdir", "-p", "--", "in " + hostile]
    assert commands["unpack-input"] == ["tar", "-xf", ".gating-input.tar", "-C", "in " + hostile]
    assert commands["install-snap"] == ["snap", "install", "lxd", "--channel=5.0/stable"]
    assert commands["collect-output"][5:] == ["collect-output", ".gating-output"] + [
        hostile + "/*.rpm"
    ]
    assert commands["run"] == ["bash", "--noprofile", "--norc", "-ec", "echo " + hostile]
    # every command is an argv list: Buildbot runs a list without a shell
    assert all(
        isinstance(c, list) and all(isinstance(a, str) for a in c) for c in commands.values()
    )
    env = next(s for s in test.steps if s.kwargs.get("name") == "run").kwargs["env"]
    assert env["HOSTILE"] == hostile


def test_the_local_backends_worker_build_steps_are_argv_lists():
    from types import SimpleNamespace

    backend = SimpleNamespace(defines=(("dist", ".el9"),), check_build_deps=True)
    factory = gmaster.rpmbuild_factory(SimpleNamespace(backend=backend), Path("/srv/incoming"))
    clone = step(factory, "clone").kwargs["command"]
    checkout = step(factory, "checkout").kwargs["command"]
    # the repository (the master's SCM mirror) is after '--'; the commit was checked to be
    # a commit id (BackendService._ensure_scm) before the build was requested
    assert clone[:5] == ["git", "clone", "-q", "--no-checkout", "--"] and clone[6] == "src"
    assert checkout[:6] == ["git", "-C", "src", "checkout", "-q", "--detach"]
    assert checkout[7] == "--"
    for name in ("clean", "clone", "checkout", "rpmbuild"):
        assert isinstance(step(factory, name).kwargs["command"], list)
