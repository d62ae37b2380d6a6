"""gating.taskrunner: which task builds a koji event adds, read from a real git task
repository over file:// (tests/support/taskrepos.py), through a fake scheduler that records
the buildsets; the task builder's steps on Buildbot's fake build; the master's wiring.
(The real thing, a master polling a koji hub and a worker running the tasks, is
tests/integration/test_task_repos.py.)"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import pytest
from buildbot.config.master import MasterConfig
from buildbot.process.results import FAILURE, SUCCESS
from buildbot.test.reactor import TestReactorMixin
from buildbot.test.steps import ExpectShell, TestBuildStepMixin
from twisted.internet import defer
from twisted.trial import unittest

import gating.taskrunner
from gating import taskrepo
from gating.kojievents import KojiBuildEvent, WatchSet
from gating.kojipoller import KOJI_SCHEDULER, KojiEventSettings
from gating.master import to_buildbot
from gating.site import load_config
from gating.siteevents import TaskRepoConfig
from gating.taskrunner import (
    TASK_BUILDER,
    Checkout,
    CloneFailed,
    TaskRepoRunner,
    read_repo,
    task_buildsets,
    task_factory,
    task_idstring,
)
from tests.support.taskrepos import BROKEN_MESSAGES, head, make_task_repo
from tests.test_steps import silence_deprecations

pytestmark = pytest.mark.skipif(
    not (shutil.which("git") and shutil.which("bash")), reason="needs git and bash"
)

SITES = Path(__file__).parent / "integration" / "sites"
A = "a" * 40


def build_event(name: str = "nova", release: str = "1.fc40", **kw: Any) -> KojiBuildEvent:
    return KojiBuildEvent(
        kind=kw.pop("kind", "koji_build"),
        build_id=kw.pop("build_id", 7),
        nvr=f"{name}-1.0-{release}",
        name=name,
        version="1.0",
        release=release,
        task_id=kw.pop("task_id", 41),
        owner=kw.pop("owner", "packager"),
        **kw,
    )


class FakeScheduler:
    """Records addBuildsetForSourceStampsWithDefaults calls, properties as plain values."""

    name = "koji-events"

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def addBuildsetForSourceStampsWithDefaults(self, **kwargs: Any) -> defer.Deferred:
        kwargs["properties"] = {k: v for k, (v, _src) in kwargs["properties"].asDict().items()}
        self.calls.append(kwargs)
        return defer.succeed((len(self.calls), {}))

    def by_task(self) -> dict[str, dict[str, Any]]:
        return {c["properties"]["task_name"]: c for c in self.calls}


@pytest.fixture
def in_line(monkeypatch):
    """The runner's thread work (git) runs in line, so handle() has fired when it returns."""
    monkeypatch.setattr(
        gating.taskrunner.threads,
        "deferToThread",
        lambda f, *a, **k: defer.maybeDeferred(f, *a, **k),
    )


@pytest.fixture
def logged(monkeypatch) -> list[str]:
    lines: list[str] = []

    class Log:
        @staticmethod
        def msg(text: str) -> None:
            lines.append(text)

    monkeypatch.setattr(gating.taskrunner, "log", Log)
    return lines


@pytest.fixture
def repos(tmp_path) -> Path:
    make_task_repo(tmp_path / "repos", "nova")
    return tmp_path / "repos"


def runner_for(repos: Path, workdir: Path, **config: Any) -> TaskRepoRunner:
    url = f"file://{repos}/{{package}}.git"
    return TaskRepoRunner(TaskRepoConfig(url=url, **config), workdir)


def handle(runner: TaskRepoRunner, event: KojiBuildEvent) -> tuple[FakeScheduler, list[int]]:
    scheduler = FakeScheduler()
    d = runner.handle(scheduler, event)
    assert d.called, "handle() did not finish in line"
    return scheduler, d.result


# -- which builds an event adds --------------------------------------------------------


def test_a_completed_build_runs_its_koji_build_task_and_reports_the_broken_one(
    repos, tmp_path, in_line, logged
):
    runner = runner_for(repos, tmp_path / "work", timeout=900)
    scheduler, bsids = handle(runner, build_event())
    assert bsids == [1, 2]
    # 'disabled' (run: false) and 'on_tag' (koji_tag only) are not run; by directory order
    assert [c["properties"]["task_name"] for c in scheduler.calls] == ["broken", "check_nvr"]
    url = f"file://{repos}/nova.git"
    commit = head(repos / "nova.git")
    event_props = {
        "event": "koji_build",
        "nvr": "nova-1.0-1.fc40",
        "name": "nova",
        "version": "1.0",
        "release": "1.fc40",
        "build_id": 7,
        "task_id": 41,
        "owner": "packager",
    }
    common = {
        **event_props,
        "package": "nova",
        "task_repo": url,
        "task_branch": "f40",
        "task_commit": commit,
        "task_event": "koji_build",
        "task_item": "nova-1.0-1.fc40",
    }
    checkout = runner.workdir / "unused"
    tasks, _errors = taskrepo.discover(_clone(url, "f40", checkout))
    check_nvr = next(t for t in tasks if t.name == "check_nvr")
    good = scheduler.by_task()["check_nvr"]
    assert good["reason"] == "task check_nvr on nova-1.0-1.fc40 (koji_build)"
    assert (good["sourcestamps"], good["builderNames"]) == ([], [TASK_BUILDER])
    assert good["properties"] == {
        **common,
        "task_name": "check_nvr",
        "task_directory": "check_nvr",
        "task_file": "check_nvr/runtask.yaml",
        "task_title": "task check_nvr on nova-1.0-1.fc40 (koji_build)",
        "task_script": taskrepo.action_script(check_nvr),
        "task_env": {
            "GREETING": "checked",
            "koji_build": "nova-1.0-1.fc40",
            "item": "nova-1.0-1.fc40",
            "item_type": "koji_build",
            "task_name": "check_nvr",
            "package": "nova",
            "arch": "x86_64",
        },
        "task_timeout": 600,  # the task's own; the site's 900 is for tasks without one
    }
    broken = scheduler.by_task()["broken"]
    assert broken["reason"] == "task broken on nova-1.0-1.fc40 (koji_build)"
    assert broken["properties"] == {
        **common,
        "task_name": "broken",
        "task_directory": "broken",
        "task_file": "broken/runtask.yaml",
        "task_title": "task broken on nova-1.0-1.fc40 (koji_build)",
        "task_error": "\n".join(BROKEN_MESSAGES),
    }
    assert logged == [
        f"koji-events: koji build nova-1.0-1.fc40 completed: task repository {url} "
        f"(f40 at {commit[:12]}): broken, check_nvr"
    ]


def _clone(url: str, branch: str, dest: Path) -> Path:
    import subprocess

    for argv in taskrepo.clone_commands(url, branch, str(dest)):
        subprocess.run(argv, check=True, capture_output=True)
    return dest


def test_a_tagged_build_runs_the_koji_tag_tasks_with_the_tag_as_item(repos, tmp_path, in_line):
    runner = runner_for(repos, tmp_path / "work")
    scheduler, _ = handle(runner, build_event(kind="koji_tag", tag="f40-updates", event_id=99))
    assert [c["properties"]["task_name"] for c in scheduler.calls] == ["broken", "on_tag"]
    on_tag = scheduler.by_task()["on_tag"]
    assert on_tag["reason"] == "task on_tag on nova-1.0-1.fc40 in f40-updates (koji_tag)"
    props = on_tag["properties"]
    assert (props["task_event"], props["task_item"], props["tag"], props["koji_event"]) == (
        "koji_tag",
        "f40-updates",
        "f40-updates",
        99,
    )
    assert props["task_env"]["koji_tag"] == props["task_env"]["item"] == "f40-updates"
    assert props["task_timeout"] == 3600  # the site's default


def test_the_branch_rules_of_the_configuration_pick_the_branch(repos, tmp_path, in_line):
    runner = runner_for(repos, tmp_path / "work", branches=((r"\.eln(\d+)$", "f40"),))
    scheduler, _ = handle(runner, build_event(release="1.eln140"))
    assert [c["properties"]["task_name"] for c in scheduler.calls] == ["broken", "check_nvr"]
    assert scheduler.calls[0]["properties"]["task_branch"] == "f40"


def test_each_task_buildset_carries_the_event_key_and_its_directory(repos, tmp_path, in_line):
    runner = runner_for(repos, tmp_path / "work")
    event = build_event()
    scheduler, _ = handle(runner, event)
    assert {c["properties"]["task_directory"]: c["external_idstring"] for c in scheduler.calls} == {
        "broken": f"koji-task {event.key} broken",
        "check_nvr": f"koji-task {event.key} check_nvr",
    }
    other, _ = handle(runner, build_event(build_id=8))
    assert not {c["external_idstring"] for c in other.calls} & {
        c["external_idstring"] for c in scheduler.calls
    }


def test_the_event_a_killed_master_was_firing_adds_only_the_tasks_without_a_buildset(
    repos, tmp_path, in_line, logged
):
    runner = runner_for(repos, tmp_path / "work")
    event = build_event()
    asked: list[list[str]] = []

    def started_before(idents):
        asked.append(list(idents))
        return defer.succeed({task_idstring(event.key, "broken"): 5})

    scheduler = FakeScheduler()
    d = runner.handle(scheduler, event, started_before)
    assert d.called and d.result == [1]
    assert asked == [[task_idstring(event.key, d) for d in ("broken", "check_nvr")]]
    assert [c["properties"]["task_name"] for c in scheduler.calls] == ["check_nvr"]
    assert any("started before a restart" in line for line in logged)


def test_a_task_idstring_fits_buildbots_column():
    assert len(task_idstring("k" * 200, "d" * 200)) <= 256


def test_the_clone_is_removed_after_reading_it(repos, tmp_path, in_line):
    runner = runner_for(repos, tmp_path / "work")
    handle(runner, build_event())
    handle(runner, build_event(name="glance"))
    assert list((tmp_path / "work").iterdir()) == []


def test_a_package_without_a_task_repository_is_logged_once_and_adds_nothing(
    repos, tmp_path, in_line, logged
):
    runner = runner_for(repos, tmp_path / "work")
    url = f"file://{repos}/glance.git"
    for build_id in (1, 2):
        scheduler, bsids = handle(runner, build_event(name="glance", build_id=build_id))
        assert (scheduler.calls, bsids) == ([], [])
    assert logged == [
        f"koji-events: koji build glance-1.0-1.fc40 completed: no task repository for glance "
        f"at {url} (branch f40): fatal: '{repos}/glance.git' does not appear to be a git "
        "repository (not reported again)"
    ]


def test_a_missing_branch_is_logged_with_the_package_and_url(repos, tmp_path, in_line, logged):
    runner = runner_for(repos, tmp_path / "work")
    scheduler, _ = handle(runner, build_event(release="1.el9"))
    assert scheduler.calls == []
    assert logged == [
        f"koji-events: koji build nova-1.0-1.el9 completed: no task repository for nova at "
        f"file://{repos}/nova.git (branch epel9): fatal: Remote branch epel9 not found in "
        "upstream origin (not reported again)"
    ]


def test_no_branch_and_no_default_branch_clones_nothing(tmp_path, in_line, logged, monkeypatch):
    monkeypatch.setattr(gating.taskrunner, "read_repo", pytest.fail)
    runner = TaskRepoRunner(
        TaskRepoConfig(url="file:///x/{package}.git", default_branch=None), tmp_path
    )
    scheduler, _ = handle(runner, build_event(release="1.mga9"))
    assert scheduler.calls == []
    assert logged == [
        "koji-events: koji build nova-1.0-1.mga9 completed: no task repository branch for "
        "release '1.mga9'"
    ]


@pytest.mark.parametrize(
    "name",
    # "nova\n": regression, the name check ended in '$', which matches before a final newline
    ["../nova", "-nova", "nova/../../etc", ".hidden", "", "nova\n", "$(touch pwned)", "a b"],
)
def test_a_package_name_that_is_not_one_is_never_put_in_a_url(
    name, tmp_path, in_line, logged, monkeypatch
):
    monkeypatch.setattr(gating.taskrunner, "read_repo", pytest.fail)
    runner = TaskRepoRunner(TaskRepoConfig(url="https://git.example.org/{package}"), tmp_path)
    scheduler, _ = handle(runner, build_event(name=name))
    assert scheduler.calls == []
    assert logged[0].endswith(f"no task repository: bad package name {name!r}")


def test_a_clone_that_outlasts_its_time_is_killed_and_adds_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(taskrepo, "clone_commands", lambda url, branch, dest: [["sleep", "30"]])
    started = time.monotonic()
    with pytest.raises(CloneFailed, match=r"^git did not finish within 0\.5 seconds$"):
        read_repo("file:///x/nova.git", "f40", tmp_path / "work", timeout=0.5)
    assert time.monotonic() - started < 10
    assert list((tmp_path / "work").iterdir()) == []


def test_a_clone_failure_is_logged_and_is_not_a_missing_repository(
    tmp_path, in_line, logged, monkeypatch
):
    message = "fatal: unable to access: timeout"
    monkeypatch.setattr(
        taskrepo,
        "clone_commands",
        lambda url, branch, dest: [["sh", "-c", f"echo '{message}' >&2; exit 128"]],
    )
    runner = TaskRepoRunner(TaskRepoConfig(url="https://git.example.org/{package}"), tmp_path)
    for _ in range(2):  # logged every time: it is not a missing repository
        scheduler, _ = handle(runner, build_event())
        assert scheduler.calls == []
    line = (
        "koji-events: koji build nova-1.0-1.fc40 completed: cannot clone the task repository "
        f"https://git.example.org/nova (branch f40): {message}"
    )
    assert logged == [line, line]


def test_an_event_value_no_environment_can_hold_fails_that_task_build():
    task = taskrepo.Task(
        name="on_tag",
        directory="on_tag",
        file="on_tag/runtask.yaml",
        args=("koji_tag",),
        actions=(taskrepo.Action(None, ("true",)),),
    )
    checkout = Checkout("file:///r/nova.git", "f40", A, (task,), ())
    event = build_event(kind="koji_tag", tag="f40\0updates")
    [buildset] = task_buildsets(checkout, event, TaskRepoConfig(url="file:///r/{package}.git"))
    assert buildset.properties["task_error"] == (
        "on_tag/runtask.yaml: cannot run on this event: environment variable 'item': "
        "expected a string without NUL"
    )
    assert "task_script" not in buildset.properties


def test_settings_with_task_repositories_stay_hashable():
    config = TaskRepoConfig(url="https://git.example.org/{package}", branches=((r"x", "y"),))
    settings = KojiEventSettings(watches=WatchSet((), all_builds=True), task_repos=config)
    same = KojiEventSettings(
        watches=WatchSet((), all_builds=True),
        task_repos=TaskRepoConfig(url="https://git.example.org/{package}", branches=(("x", "y"),)),
    )
    assert hash(settings) == hash(same) and settings == same


# -- the task builder's steps ----------------------------------------------------------


TASK_PROPS = {
    "task_title": "task check_nvr on nova-1.0-1.fc40 (koji_build)",
    "task_repo": "file:///srv/tasks/nova.git",
    "task_branch": "f40",
    "task_commit": A,
    "task_directory": "check_nvr",
    "task_file": "check_nvr/runtask.yaml",
    "task_event": "koji_build",
    "task_item": "nova-1.0-1.fc40",
    "package": "nova",
    "task_script": 'set -eu\necho "$koji_build"\n',
    "task_env": {"koji_build": "nova-1.0-1.fc40", "item": "nova-1.0-1.fc40"},
    "task_timeout": 600,
}


class TaskStepsTests(TestBuildStepMixin, TestReactorMixin, unittest.TestCase):
    @defer.inlineCallbacks
    def setUp(self):
        silence_deprecations(self)
        self.setup_test_reactor()
        yield self.setup_test_build_step()

    def step_of(self, name: str, props: dict[str, Any]) -> None:
        factory = task_factory()
        names = [s.kwargs.get("name") or s.step_class.name for s in factory.steps]
        self.assertEqual(names, ["task", "clean", "init", "fetch", "checkout", "run"])
        self.setup_step(factory.steps[names.index(name)], want_default_work_dir=False)
        for key, value in props.items():
            self.build.setProperty(key, value, "task-repos")

    def run_step_now(self) -> defer.Deferred:
        """run_step, with the fake reactor's due calls run here: the fake reactor asks the
        real one to run them, and under pytest-twisted the real reactor runs in its own
        greenlet, which a trial TestCase cannot spin."""
        d = self.run_step()
        for _ in range(100):
            if d.called:
                break
            self.reactor.advance(0)
        self.assertTrue(d.called, "the step did not finish")
        return d

    @defer.inlineCallbacks
    def test_a_broken_task_fails_its_first_step_with_every_message(self):
        props = {**TASK_PROPS, "task_error": "\n".join(BROKEN_MESSAGES)}
        props["task_title"] = "task broken on nova-1.0-1.fc40 (koji_build)"
        props["task_file"] = "broken/runtask.yaml"
        self.step_of("task", props)
        self.expect_outcome(
            result=FAILURE,
            state_string="task broken on nova-1.0-1.fc40 (koji_build): broken "
            "broken/runtask.yaml (failure)",
        )
        self.expect_log_file_stderr("stdio", "\n".join(BROKEN_MESSAGES) + "\n")
        yield self.run_step_now()

    @defer.inlineCallbacks
    def test_a_runnable_task_first_says_what_it_runs_on(self):
        self.step_of("task", TASK_PROPS)
        self.expect_outcome(
            result=SUCCESS, state_string="task check_nvr on nova-1.0-1.fc40 (koji_build)"
        )
        yield self.run_step_now()
        header = self.get_nth_step(0).logs["stdio"].header
        self.assertIn(f"task_commit: {A}\n", header)
        self.assertIn("task_repo: file:///srv/tasks/nova.git\n", header)

    @defer.inlineCallbacks
    def test_the_worker_fetches_the_commit_the_master_read(self):
        self.step_of("fetch", TASK_PROPS)
        self.expect_commands(
            ExpectShell(
                workdir="build",
                command=[
                    *taskrepo.GIT,
                    "-C",
                    "taskrepo",
                    "fetch",
                    "-q",
                    "--no-tags",
                    "--depth",
                    "1",
                    "--",
                    "file:///srv/tasks/nova.git",
                    A,
                ],
                env={"GIT_TERMINAL_PROMPT": "0"},
            ).exit(0)
        )
        self.expect_outcome(result=SUCCESS)
        yield self.run_step_now()

    @defer.inlineCallbacks
    def test_the_actions_run_in_the_task_directory_with_its_environment_and_time(self):
        self.step_of("run", TASK_PROPS)
        self.expect_commands(
            ExpectShell(
                workdir="build/taskrepo/check_nvr",
                command=["bash", "--noprofile", "--norc", "-ec", TASK_PROPS["task_script"]],
                env=TASK_PROPS["task_env"],
                timeout=600,
                max_time=600,
            ).exit(0)
        )
        self.expect_outcome(
            result=SUCCESS, state_string="task check_nvr on nova-1.0-1.fc40 (koji_build)"
        )
        yield self.run_step_now()


# -- the master's configuration --------------------------------------------------------


@pytest.fixture
def basedir(tmp_path: Path) -> Path:
    (tmp_path / "secrets").mkdir(mode=0o700)
    return tmp_path


def test_task_repos_alone_make_the_koji_scheduler_and_the_task_builder(basedir):
    config = load_config(SITES / "task-repos")
    loaded = MasterConfig.loadFromDict(to_buildbot(config, basedir), "master.cfg")
    [builder] = loaded.builders
    assert (builder.name, builder.workernames, builder.tags) == (
        TASK_BUILDER,
        ["test-x86_64"],
        ["task-repo", "x86_64"],
    )
    assert builder.collapseRequests is False  # the builds of one event stay apart
    scheduler = loaded.schedulers[KOJI_SCHEDULER]
    assert scheduler.builderNames == [TASK_BUILDER]
    settings = scheduler._config_kwargs["settings"]
    assert settings.watches == WatchSet((), all_builds=True)
    assert settings.task_repos == config.site.task_repos


def test_task_repos_next_to_koji_pipelines_share_the_scheduler(basedir, tmp_path):
    site = tmp_path / "site"
    shutil.copytree(SITES / "task-repos", site)
    shutil.copy(SITES / "koji-events" / "pipelines" / "on-tag.yaml", site / "pipelines")
    config = load_config(site)
    loaded = MasterConfig.loadFromDict(to_buildbot(config, basedir), "master.cfg")
    assert TASK_BUILDER in [b.name for b in loaded.builders]
    scheduler = loaded.schedulers[KOJI_SCHEDULER]
    assert scheduler.builderNames == ["on-tag", TASK_BUILDER]
    watches = scheduler._config_kwargs["settings"].watches
    assert watches.all_builds and watches.watches_tags
