"""gating.kojiclient against the koji test hub, through the real koji client library.

Builds are real: a spec file in a temporary git repository, ``rpmbuild`` on the hub side.
"""

from __future__ import annotations

import itertools
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import koji
import pytest
import requests

from gating.kojiclient import (
    KojiCall,
    KojiConfigError,
    KojiError,
    KojiSession,
    KojiSettings,
    KojiTaskFailed,
    KojiUnavailable,
    RetryPolicy,
    poll_delays,
)
from tests.support.koji_hub import KojiTestHub

USER, PASSWORD = "gating-bot", "s3cret"
FAST = RetryPolicy(total=20.0, initial=0.05, maximum=0.5)
EVENT0 = 2**31 + 7  # event ids past 32 bits travel as <i8>
POLL = 0.05

SPEC = """\
Name:           hello-gating
Version:        {version}
Release:        {release}%{{?dist}}
Summary:        A package for the koji client tests
License:        MIT
BuildArch:      noarch

%description
{marker}

%build
{build}

%install
mkdir -p %{{buildroot}}%{{_datadir}}/hello-gating
echo '{marker}' > %{{buildroot}}%{{_datadir}}/hello-gating/marker

%files
%{{_datadir}}/hello-gating/marker
"""


class DistGit:
    """A dist-git repository of one package, on local disk."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.mkdir()
        self._git("init", "-q", "-b", "main")
        self.count = 0

    def _git(self, *args: str) -> str:
        env_args = ["-c", "user.name=Packager", "-c", "user.email=packager@example.org"]
        return subprocess.run(
            ["git", "-C", str(self.path), *env_args, *args],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()

    def commit(self, version: str = "1.0", release: str = "1", build: str = "true") -> str:
        self.count += 1
        spec = SPEC.format(
            version=version, release=release, build=build, marker=f"commit {self.count}"
        )
        (self.path / "hello-gating.spec").write_text(spec)
        self._git("add", "-A")
        self._git("commit", "-q", "-m", f"commit {self.count}")
        return self._git("rev-parse", "HEAD")

    def url(self, commit: str) -> str:
        return f"git+file://{self.path}#{commit}"


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[KojiTestHub]:
    with KojiTestHub(tmp_path / "hub", first_event_id=EVENT0) as hub:
        hub.add_user(USER, PASSWORD)
        hub.create_tag("el9-build", arches="x86_64", extra={"rpm.macro.dist": ".el9"})
        hub.create_tag("el9-candidate")
        hub.create_tag("el9")
        hub.create_target("el9-gate", "el9-build", "el9")
        hub.create_target("el9-candidate", "el9-build", "el9-candidate")
        yield hub


def settings(hub: KojiTestHub, **kwargs: object) -> KojiSettings:
    values: dict[str, object] = dict(
        server=hub.url,
        topurl=hub.topurl,
        auth="password",
        user=USER,
        password=PASSWORD,
        retry=FAST,
        timeout=30.0,
    )
    values.update(kwargs)
    return KojiSettings(**values)  # type: ignore[arg-type]


@pytest.fixture
def ks(hub: KojiTestHub) -> Iterator[KojiSession]:
    with KojiSession(settings(hub)) as session:
        yield session


@pytest.fixture
def distgit(tmp_path: Path) -> DistGit:
    return DistGit(tmp_path / "hello-gating")


def rpm_query(path: Path, fmt: str) -> str:
    return subprocess.run(
        ["rpm", "-qp", "--qf", fmt, str(path)], check=True, capture_output=True, text=True
    ).stdout


def build_tasks(hub: KojiTestHub) -> list[dict]:
    return hub.tasks("build")


# ---------------------------------------------------------------------- sessions


def test_password_login_and_logged_in_user(ks: KojiSession, hub: KojiTestHub) -> None:
    user = ks.logged_in_user()
    assert user["name"] == USER
    assert user["authtype"] == koji.AUTHTYPES["NORMAL"]


def test_wrong_password_is_an_auth_error_not_retried(hub: KojiTestHub) -> None:
    before = hub.request_count
    with KojiSession(settings(hub, password="wrong")) as session:
        with pytest.raises(koji.AuthError, match="invalid username or password") as err:
            session.login()
    assert hub.request_count - before == 1
    assert any(hub.url in note for note in err.value.__notes__)


def test_anonymous_session_may_read_but_not_build(hub: KojiTestHub, distgit: DistGit) -> None:
    with KojiSession(settings(hub, auth=None, user=None, password=None)) as anon:
        assert anon.call("getTag", "el9")["name"] == "el9"
        with pytest.raises(koji.ActionNotAllowed, match="must be logged in"):
            anon.call("build", distgit.url(distgit.commit()), "el9-gate", {"scratch": True})
    assert build_tasks(hub) == []


def test_new_repo_needs_the_repo_permission(ks: KojiSession) -> None:
    with pytest.raises(koji.ActionNotAllowed, match="repo permission required"):
        ks.new_repo("el9")


def test_ssl_login_with_a_client_certificate(tmp_path: Path) -> None:
    with KojiTestHub(tmp_path / "tlshub", tls=True) as hub:
        assert hub.url.startswith("https://") and hub.ca_cert is not None
        cert = hub.client_cert("cert-bot")
        with KojiSession(
            settings(
                hub, auth="ssl", user=None, password=None, cert=str(cert), serverca=str(hub.ca_cert)
            )
        ) as session:
            user = session.logged_in_user()
            assert user["name"] == "cert-bot"
            assert user["authtype"] == koji.AUTHTYPES["SSL"]
        with KojiSession(
            settings(hub, auth=None, user=None, password=None, serverca=str(hub.ca_cert))
        ) as anon:
            assert anon.call("getLoggedInUser") is None


def test_settings_from_a_koji_profile(tmp_path: Path, hub: KojiTestHub) -> None:
    config = tmp_path / "koji.conf"
    config.write_text(
        "[gating-test]\n"
        f"server = {hub.url}\n"
        f"topurl = {hub.topurl}\n"
        "weburl = http://koji.example.org/koji\n"
        "authtype = password\n"
        "timeout = 42\n"
    )
    profile = KojiSettings.from_profile(
        "gating-test", user_config=str(config), user=USER, password=PASSWORD, retry=FAST
    )
    assert (profile.server, profile.topurl, profile.auth) == (hub.url, hub.topurl, "password")
    assert profile.timeout == 42.0 and profile.weburl == "http://koji.example.org/koji"
    assert PASSWORD not in repr(profile)
    with KojiSession(profile) as session:
        assert session.logged_in_user()["name"] == USER
        assert session.task_url(7) == "http://koji.example.org/koji/taskinfo?taskID=7"
    with pytest.raises(KojiConfigError, match="needs a user and a password"):
        KojiSettings.from_profile("gating-test", user_config=str(config))
    with pytest.raises(KojiConfigError, match="no-such-profile"):
        KojiSettings.from_profile("no-such-profile", user_config=str(config))


def test_settings_are_checked() -> None:
    with pytest.raises(KojiConfigError) as err:
        KojiSettings(server="ftp://hub", topurl="", auth="kerberos5")
    message = str(err.value)
    assert "server must be an http(s) URL" in message and "topurl" in message
    assert "auth must be one of password, ssl, gssapi" in message


# ---------------------------------------------------------------------- wire protocol


def test_i8_values_round_trip(ks: KojiSession) -> None:
    big = [2**40, -(2**35), 2**63 - 1]
    assert ks.call("echo", *big, None, {"n": 2**33}) == [*big, None, {"n": 2**33}]
    assert ks.latest_event().id >= EVENT0 > 2**31


def test_keyword_arguments_travel_as_starstar(
    ks: KojiSession, hub: KojiTestHub, distgit: DistGit
) -> None:
    url = distgit.url(distgit.commit())
    task_id = ks.build_from_scm(url, "el9-gate", scratch=True)
    info = ks.call("getTaskInfo", task_id, request=True, strict=True)
    assert info["request"] == [url, "el9-gate", {"scratch": True}]
    assert "request" not in ks.call("getTaskInfo", task_id)
    with pytest.raises(koji.ParameterError, match="no_such_option"):
        ks.call("getTaskInfo", task_id, no_such_option=True)
    with pytest.raises(koji.GenericError, match="No such tagInfo"):
        ks.call("listTagged", "no-such-tag", latest=True)
    ks.wait_task(task_id, poll_interval=POLL)


def test_multicall_is_one_http_request(ks: KojiSession, hub: KojiTestHub) -> None:
    ks.login()
    calls = [KojiCall.of("getTag", name) for name in ("el9-build", "el9-candidate", "el9")]
    calls += [KojiCall.of("getBuildTarget", "el9-gate", strict=True), KojiCall.of("echo", 2**40)]
    calls += [KojiCall.of("getLastEvent")] * 5
    before = hub.request_count
    results = ks.multicall(calls)
    assert hub.request_count - before == 1
    assert len(results) == len(calls) == 10
    assert [r["name"] for r in results[:3]] == ["el9-build", "el9-candidate", "el9"]
    assert results[3]["dest_tag_name"] == "el9" and results[4] == [2**40]
    assert hub.rpc_log[-1][0] == "multiCall" and len(hub.rpc_log[-1][1]) == 10


def test_multicall_faults(ks: KojiSession) -> None:
    calls = [
        KojiCall.of("getTag", "el9"),
        KojiCall.of("getBuild", "nope-1-1", strict=True),
        KojiCall.of("noSuchMethod"),
    ]
    with pytest.raises(koji.GenericError, match="No such build") as err:
        ks.multicall(calls)
    assert any("getBuild('nope-1-1', strict=True)" in n for n in err.value.__notes__)
    tag, missing, invalid = ks.multicall(calls, strict=False)
    assert tag["name"] == "el9"
    assert type(missing) is koji.GenericError and "No such build" in str(missing)
    assert "Invalid method: noSuchMethod" in str(invalid)


# ---------------------------------------------------------------------- builds


def test_scratch_build_gives_downloadable_rpms(
    ks: KojiSession, hub: KojiTestHub, distgit: DistGit, tmp_path: Path
) -> None:
    commit = distgit.commit()
    first_event = ks.latest_event()
    task_id = ks.build_from_scm(distgit.url(commit), "el9-gate", scratch=True)
    assert ks.wait_task(task_id, poll_interval=POLL) is None
    urls = ks.task_rpms(task_id)
    assert len(urls) == 1 and urls[0].startswith(f"{hub.topurl}/work/tasks/")
    assert urls[0].endswith("/hello-gating-1.0-1.el9.noarch.rpm")
    paths = ks.download(urls, tmp_path / "rpms")
    assert (
        rpm_query(paths[0], "%{NAME}-%{VERSION}-%{RELEASE}.%{ARCH}")
        == "hello-gating-1.0-1.el9.noarch"
    )
    srpms = [u for u in ks.task_rpms(task_id, include_srpm=True) if u.endswith(".src.rpm")]
    assert [u.rsplit("/", 1)[1] for u in srpms] == ["hello-gating-1.0-1.el9.src.rpm"]
    # a scratch build lands in no tag and makes no build
    assert hub.builds() == [] and hub.tagged("el9") == []
    assert ks.tag_history(["el9"], first_event.id).events == ()
    assert ks.task_build(task_id) is None


def test_non_scratch_build_is_tagged_with_a_tag_event(
    ks: KojiSession, hub: KojiTestHub, distgit: DistGit, tmp_path: Path
) -> None:
    commit = distgit.commit()
    start = ks.latest_event()
    task_id = ks.build_from_scm(distgit.url(commit), "el9-gate", scratch=False)
    ks.wait_task(task_id, poll_interval=POLL)
    build = ks.task_build(task_id)
    assert build is not None and build["nvr"] == "hello-gating-1.0-1.el9"
    assert build["state"] == koji.BUILD_STATES["COMPLETE"]
    assert build["source"] == f"git+file://{distgit.path}#{commit}"
    assert hub.tagged("el9") == ["hello-gating-1.0-1.el9"]

    before = hub.request_count
    history = ks.tag_history(["el9", "el9-candidate"], start.id)
    assert hub.request_count - before == 1  # getLastEvent + 2 queryHistory, one multiCall
    assert history.last_event.id > start.id > 2**31
    [event] = history.events
    assert (event.tag, event.nvr, event.action, event.user) == (
        "el9",
        "hello-gating-1.0-1.el9",
        "tag",
        USER,
    )
    assert start.id < event.event_id <= history.last_event.id
    assert ks.tag_history(["el9"], history.last_event.id).events == ()

    [url] = ks.build_rpms(build["nvr"])
    assert (
        url == f"{hub.topurl}/packages/hello-gating/1.0/1.el9/noarch/"
        "hello-gating-1.0-1.el9.noarch.rpm"
    )
    [path] = ks.download([url], tmp_path / "dl")
    assert rpm_query(path, "%{NAME}") == "hello-gating"


def test_same_nvr_again_is_build_already_exists(
    ks: KojiSession, hub: KojiTestHub, distgit: DistGit
) -> None:
    ks.wait_task(ks.build_from_scm(distgit.url(distgit.commit()), "el9-gate", False), POLL)
    other = distgit.commit()  # new content, same Version and Release
    task_id = ks.build_from_scm(distgit.url(other), "el9-gate", scratch=False)
    with pytest.raises(KojiTaskFailed, match="Build already exists") as err:
        ks.wait_task(task_id, poll_interval=POLL)
    assert err.value.task_id == task_id
    assert type(err.value.fault) is koji.GenericError
    assert [b["state"] for b in hub.builds()] == [koji.BUILD_STATES["COMPLETE"]]


def test_failed_build_raises_with_task_id_and_log_link(
    hub: KojiTestHub, ks: KojiSession, distgit: DistGit
) -> None:
    commit = distgit.commit(build="echo 'compiling...'; exit 3")
    task_id = ks.build_from_scm(distgit.url(commit), "el9-gate", scratch=True)
    with pytest.raises(KojiTaskFailed) as err:
        ks.wait_task(task_id, poll_interval=POLL)
    failure = err.value
    assert failure.task_id == task_id and failure.state == "FAILED"
    assert isinstance(failure.fault, koji.BuildError)
    arch_task = next(t for t in hub.tasks("buildArch") if t["parent"] == task_id)
    assert failure.failed_task_id == arch_task["id"]
    assert failure.log_url == (
        f"{hub.topurl}/work/tasks/{arch_task['id'] % 10000}/{arch_task['id']}/build.log"
    )
    assert str(task_id) in str(failure) and failure.log_url in str(failure)
    log = requests.get(failure.log_url, timeout=10)
    assert log.status_code == 200 and "Bad exit status" in log.text
    assert failure.web_url is None
    with KojiSession(settings(hub, weburl="https://koji.example.org/koji")) as web:
        with pytest.raises(KojiTaskFailed) as err:
            web.wait_task(task_id)
    assert err.value.web_url == f"https://koji.example.org/koji/taskinfo?taskID={task_id}"


def test_injected_build_failure_then_the_nvr_is_rebuilt(
    hub: KojiTestHub, ks: KojiSession, distgit: DistGit
) -> None:
    url = distgit.url(distgit.commit())
    hub.fail_builds("hello-gating")
    with pytest.raises(KojiTaskFailed, match="error building package"):
        ks.wait_task(ks.build_from_scm(url, "el9-gate", scratch=False), POLL)
    assert [b["state"] for b in hub.builds()] == [koji.BUILD_STATES["FAILED"]]
    hub.fail_builds(None)
    ks.wait_task(ks.build_from_scm(url, "el9-gate", scratch=False), POLL)  # recycled
    assert [b["state"] for b in hub.builds()] == [koji.BUILD_STATES["COMPLETE"]]


def test_cancel_a_running_build(hub: KojiTestHub, ks: KojiSession, distgit: DistGit) -> None:
    hub.build_delay = 30
    task_id = ks.build_from_scm(distgit.url(distgit.commit()), "el9-gate", scratch=True)
    while not hub.tasks("buildArch"):
        time.sleep(POLL)
    ks.cancel_task(task_id)
    with pytest.raises(KojiTaskFailed, match="canceled") as err:
        ks.wait_task(task_id, poll_interval=POLL)
    assert err.value.state == "CANCELED" and err.value.fault is None
    hub.wait_idle(timeout=10)


def test_wait_task_timeout(hub: KojiTestHub, ks: KojiSession, distgit: DistGit) -> None:
    hub.build_delay = 30
    task_id = ks.build_from_scm(distgit.url(distgit.commit()), "el9-gate", scratch=True)
    with pytest.raises(KojiError, match=f"koji task {task_id} \\(build\\) still"):
        ks.wait_task(task_id, poll_interval=POLL, timeout=0.2)
    ks.cancel_task(task_id)


def test_polls_start_soon_and_back_off_to_the_poll_interval() -> None:
    assert list(itertools.islice(poll_delays(1.0), 7)) == [0.05, 0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    assert list(itertools.islice(poll_delays(0.02), 3)) == [0.02, 0.02, 0.02]


def test_wait_task_and_wait_repo_poll_with_back_off(hub: KojiTestHub) -> None:
    """A task or a repo that is ready in a moment is seen in a moment (the export's serial
    section waits for both), not a whole poll interval later."""
    sleeps: list[float] = []
    session = KojiSession(settings(hub), sleep=sleeps.append)
    states = iter(["FREE", "OPEN", "OPEN", "OPEN", "CLOSED"])
    session.task_info = lambda task_id: {"state": koji.TASK_STATES[next(states)], "method": "x"}
    session.call = lambda method, *args, **kwargs: "done"
    assert session.wait_task(7, poll_interval=5.0) == "done"
    assert sleeps == [0.05, 0.1, 0.2, 0.4]
    sleeps.clear()
    repos = iter([None, {"create_event": 3}, {"create_event": 9}])
    session.get_repo = lambda tag: next(repos)
    assert session.wait_repo("el9", 9, poll_interval=5.0) == {"create_event": 9}
    assert sleeps == [0.05, 0.1]


# ---------------------------------------------------------------------- tags and repos


def test_tag_build_once_untag_and_history(
    hub: KojiTestHub, ks: KojiSession, distgit: DistGit
) -> None:
    task_id = ks.build_from_scm(distgit.url(distgit.commit()), "el9-candidate", scratch=False)
    ks.wait_task(task_id, poll_interval=POLL)
    nvr = "hello-gating-1.0-1.el9"
    assert hub.tagged("el9-candidate") == [nvr] and hub.tagged("el9") == []
    start = ks.latest_event()
    tag_task = ks.tag_build("el9", nvr, poll_interval=POLL)
    assert tag_task is not None and hub.tagged("el9") == [nvr]
    assert ks.tag_build("el9", nvr) is None  # already there: nothing asked of the hub
    ks.untag_build("el9", nvr)
    ks.untag_build("el9", nvr)  # not there: nothing to do
    assert hub.tagged("el9") == []
    history = ks.tag_history(["el9"], start.id)
    assert [(e.action, e.nvr) for e in history.events] == [("tag", nvr), ("untag", nvr)]
    assert len(hub.tasks("tagBuild")) == 1


def test_new_repo_and_wait_repo(hub: KojiTestHub, distgit: DistGit) -> None:
    hub.add_user("repo-bot", "pw", perms=["repo"])
    with KojiSession(settings(hub, user="repo-bot", password="pw")) as ks:
        ks.wait_task(ks.build_from_scm(distgit.url(distgit.commit()), "el9-gate", False), POLL)
        tagged_at = ks.latest_event().id
        ks.wait_task(ks.new_repo("el9"), poll_interval=POLL)
        repo = ks.wait_repo("el9", tagged_at, poll_interval=POLL, timeout=10)
        base = ks.repo_url(repo, "x86_64")
    assert base == f"{hub.topurl}/repos/el9/{repo['id']}/x86_64/"
    repomd = requests.get(base + "repodata/repomd.xml", timeout=10)
    assert repomd.status_code == 200 and "<repomd" in repomd.text
    assert requests.get(base + "hello-gating-1.0-1.el9.noarch.rpm", timeout=10).ok


# ---------------------------------------------------------------------- faults and retries


@pytest.mark.parametrize(
    ("kind", "fault"),
    [
        ("http500", {"n": 3}),
        ("refused", {"duration": 1.5}),
        ("offline", {"duration": 2.0}),
        ("reset", {"n": 3}),
        ("lost", {"n": 1}),
    ],
)
def test_build_survives_hub_faults_without_duplicates(
    hub: KojiTestHub, ks: KojiSession, distgit: DistGit, kind: str, fault: dict
) -> None:
    url = distgit.url(distgit.commit())
    ks.login()
    hub.fail_next(kind=kind, method="build", **fault)
    started = time.monotonic()
    task_id = ks.build_from_scm(url, "el9-gate", scratch=False)
    ks.wait_task(task_id, poll_interval=POLL)
    assert [t["id"] for t in build_tasks(hub)] == [task_id]
    assert [b["nvr"] for b in hub.builds()] == ["hello-gating-1.0-1.el9"]
    assert hub.tagged("el9") == ["hello-gating-1.0-1.el9"]
    if kind in ("refused", "offline"):
        assert time.monotonic() - started >= fault["duration"] - 0.1
    if kind == "lost":
        # the hub ran the build, the answer was lost, koji's resend of the same call number
        # was refused with RetryError, and the wrapper found the task the first call made
        assert ("build", (), "lost") in hub.rpc_log
        assert ("build", (), f"fault {koji.RetryError.faultCode}") in hub.rpc_log


def test_slow_answer_past_the_timeout_does_not_duplicate(
    hub: KojiTestHub, distgit: DistGit
) -> None:
    with KojiSession(settings(hub, timeout=0.5)) as ks:
        url = distgit.url(distgit.commit())
        ks.login()
        hub.fail_next(1, "slow", delay=1.5, method="build")
        task_id = ks.build_from_scm(url, "el9-gate", scratch=True)
        ks.wait_task(task_id, poll_interval=POLL)
        time.sleep(1.5)  # the delayed request reaches the hub now...
    assert [t["id"] for t in build_tasks(hub)] == [task_id]
    # ...and is refused: its call number is older than the retried build's
    assert ("build", (), f"fault {koji.SequenceError.faultCode}") in hub.rpc_log


def test_tag_build_survives_a_lost_answer(
    hub: KojiTestHub, ks: KojiSession, distgit: DistGit
) -> None:
    ks.wait_task(ks.build_from_scm(distgit.url(distgit.commit()), "el9-candidate", False), POLL)
    hub.fail_next(1, "lost", method="tagBuild")
    ks.tag_build("el9", "hello-gating-1.0-1.el9", poll_interval=POLL)
    assert ("tagBuild", (), "lost") in hub.rpc_log
    assert hub.tagged("el9") == ["hello-gating-1.0-1.el9"]
    assert len(hub.tasks("tagBuild")) == 1


def test_reads_retry_through_offline_and_500s(hub: KojiTestHub, ks: KojiSession) -> None:
    hub.fail_next(2, "http500")
    hub.fail_next(2, "offline")
    assert ks.call("getTag", "el9")["name"] == "el9"
    outcomes = [o for _, _, o in hub.rpc_log]
    assert outcomes.count("http500") == 2 and outcomes.count("offline") == 2


def test_retries_are_bounded_and_name_the_hub_and_call(hub: KojiTestHub) -> None:
    hub.fail_next(kind="offline", duration=10)
    quick = RetryPolicy(total=0.6, initial=0.05, maximum=0.2)
    started = time.monotonic()
    with KojiSession(settings(hub, auth=None, user=None, password=None, retry=quick)) as ks:
        with pytest.raises(KojiUnavailable) as err:
            ks.call("getBuildTarget", "el9-gate")
    assert time.monotonic() - started < 3
    message = str(err.value)
    assert hub.url in message and "getBuildTarget('el9-gate')" in message
    assert "ServerOffline" in message and err.value.attempts > 2


def test_non_repeatable_call_with_a_lost_answer_is_not_repeated(hub: KojiTestHub) -> None:
    hub.add_user("repo-bot", "pw", perms=["repo"])
    with KojiSession(settings(hub, user="repo-bot", password="pw")) as ks:
        hub.fail_next(1, "lost", method="newRepo")
        with pytest.raises(KojiError, match="may have run; not repeating"):
            ks.call("newRepo", "el9")
    assert len(hub.tasks("newRepo")) == 1


def test_one_session_shared_by_threads(hub: KojiTestHub, ks: KojiSession, distgit: DistGit) -> None:
    # koji call numbers must reach the hub in order once a call changed data (else
    # SequenceError): the wrapper serialises the calls of a session
    ks.login()
    errors: list[BaseException] = []

    def poll() -> None:
        try:
            for _ in range(15):
                ks.tag_history(["el9"], None)
                ks.latest_event()
        except BaseException as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    threads = [threading.Thread(target=poll) for _ in range(6)]
    for thread in threads:
        thread.start()
    task_id = ks.build_from_scm(distgit.url(distgit.commit()), "el9-gate", scratch=False)
    ks.wait_task(task_id, poll_interval=POLL)
    for thread in threads:
        thread.join()
    assert errors == []
    assert hub.tagged("el9") == ["hello-gating-1.0-1.el9"]


# ---------------------------------------------------------------------- hub outages


class VirtualTime:
    """The session's clock and sleep: each wait advances the clock at once (a few
    milliseconds of real time), so hours of outage take a second."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []
        self.on_sleep: list[object] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        for hook in self.on_sleep:
            hook()  # type: ignore[operator]
        time.sleep(0.002)


def test_an_outage_of_hours_is_waited_through_with_a_capped_back_off(hub: KojiTestHub) -> None:
    vt = VirtualTime()
    with KojiSession(
        settings(hub, retry=RetryPolicy()), sleep=vt.sleep, clock=vt.clock
    ) as ks:  # the defaults: 1 s doubling up to 60 s, for 6 hours
        ks.login()
        seen: list[object] = []
        vt.on_sleep.append(lambda: seen.append(ks.outage()))
        hub.fail_next(150, "http503")
        assert ks.call("getTag", "el9")["name"] == "el9"
        assert ks.outage() is None  # the hub answered: the outage is over
        assert ks.waited() == pytest.approx(vt.now)
    # 150 failed attempts, 2.4 hours: far past the old 10-minute budget
    assert len(vt.sleeps) == 150 and vt.now > 2 * 3600
    assert vt.sleeps[:8] == [1, 2, 4, 8, 16, 32, 60, 60] and max(vt.sleeps) == 60
    first, last = seen[0], seen[-1]
    assert first is not None and last is not None
    assert (first.failures, last.failures) == (1, 150)  # type: ignore[attr-defined]
    assert last.call == "getTag('el9')"  # type: ignore[attr-defined]
    assert last.error.startswith("HTTPError: 503")  # type: ignore[attr-defined]
    assert ks.outages.outages == 1


def test_after_the_outage_timeout_the_call_fails_naming_the_hub_without_credentials(
    hub: KojiTestHub,
) -> None:
    vt = VirtualTime()
    server = hub.url.replace("http://", f"http://{USER}:{PASSWORD}@")
    quick = RetryPolicy(total=600, maximum=60)
    hub.fail_next(1000, "http503")
    anonymous = settings(hub, server=server, auth=None, user=None, password=None, retry=quick)
    with KojiSession(anonymous, sleep=vt.sleep, clock=vt.clock) as ks:
        with pytest.raises(KojiUnavailable) as err:
            ks.call("getBuildTarget", "el9-gate")
    hub.clear_faults()
    message = str(err.value)
    assert message.startswith(f"koji hub {hub.url} unreachable: getBuildTarget('el9-gate')")
    assert "outage timeout of 600 s (backend 'outage-timeout')" in message
    assert "HTTPError: 503" in message
    assert PASSWORD not in message and f"{USER}:" not in message
    assert vt.now == pytest.approx(600)
    assert err.value.hub == hub.url


def test_a_koji_fault_fails_at_once_and_ends_the_outage(hub: KojiTestHub) -> None:
    vt = VirtualTime()
    with KojiSession(settings(hub, retry=RetryPolicy()), sleep=vt.sleep, clock=vt.clock) as ks:
        ks.login()
        hub.fail_next(3, "offline")
        with pytest.raises(koji.GenericError, match="No such build") as err:
            ks.call("getBuild", "nope-1-1", strict=True)
        assert vt.sleeps == [1, 2, 4]  # the outage, then the fault: not retried
        assert ks.outage() is None
        assert any(hub.url in note for note in err.value.__notes__)
        # a fault with the hub up: no wait at all
        with pytest.raises(koji.ActionNotAllowed):
            ks.call("newRepo", "el9")
        assert vt.sleeps == [1, 2, 4]


def test_waiting_for_the_hub_does_not_count_against_the_repo_timeout(hub: KojiTestHub) -> None:
    vt = VirtualTime()
    with KojiSession(settings(hub, retry=RetryPolicy()), sleep=vt.sleep, clock=vt.clock) as ks:
        ks.login()
        hub.fail_next(20, "http503", method="getRepo")
        with pytest.raises(KojiError, match="no repo of el9 at event"):
            ks.wait_repo("el9", 2**40, poll_interval=5, timeout=30)
        outage = sum([1, 2, 4, 8, 16, 32] + [60] * 14)
        assert ks.waited() == pytest.approx(outage)
    # it polled on for 30 s after the 15-minute outage (before: it gave up at once)
    polls = vt.sleeps[20:]
    assert sum(polls) >= 30 and len(polls) > 5
    assert vt.now >= outage + 30
