"""gating.backend: the build backend interface, its local and koji implementations, and
make_backend.

Everything is real: git repositories in a temporary directory, rpmbuild and createrepo_c for
the local backend, the koji test hub (tests/support/koji_hub.py, which runs rpmbuild itself)
through the real koji client library for the koji backend. "Built once" is asserted from the
number of rpmbuild runs (local) or of build tasks on the hub (koji), never from timing.
"""

from __future__ import annotations

import dataclasses
import gzip
import shutil
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import koji
import pytest
import requests

from gating.backend import (
    BackendConfig,
    BackendConfigError,
    BuildBackend,
    KojiBuildBackend,
    LocalBuildBackend,
    Release,
    TagChange,
    make_backend,
)
from gating.kojiclient import KojiSession, KojiSettings, KojiTaskFailed, RetryPolicy
from gating.localbackend import BackendError, LocalBuild, NVRConflict
from tests.support.koji_hub import KojiTestHub

pytestmark = pytest.mark.skipif(
    not all(shutil.which(t) for t in ("git", "rpmbuild", "rpmspec", "rpm", "createrepo_c")),
    reason="needs git, rpmbuild, rpmspec, rpm and createrepo_c",
)

USER, PASSWORD = "gating-bot", "s3cret-Pa55"
FAST = RetryPolicy(total=20.0, initial=0.05, maximum=0.5)
POLL = 0.05
NVR = "hello-gating-1.0-1.el9"

SPEC = """\
Name:           {name}
Version:        {version}
Release:        {release}%{{?dist}}
Summary:        A package for the build backend tests
License:        MIT
BuildArch:      noarch
AutoReqProv:    no

%description
{marker}

%build
{build}

%install
mkdir -p %{{buildroot}}%{{_datadir}}/{name}
echo '{marker}' > %{{buildroot}}%{{_datadir}}/{name}/marker

%files
%{{_datadir}}/{name}/marker
"""


class DistGit:
    """A dist-git repository of one package, on local disk."""

    def __init__(self, path: Path, name: str = "hello-gating") -> None:
        self.path = path
        self.name = name
        path.mkdir()
        self._git("init", "-q", "-b", "main")
        self.count = 0

    def _git(self, *args: str) -> str:
        identity = ["-c", "user.name=Packager", "-c", "user.email=packager@example.org"]
        return subprocess.run(
            ["git", "-C", str(self.path), *identity, *args],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()

    def commit(self, version: str = "1.0", release: str = "1", build: str = "true") -> str:
        """A new commit (new content: a marker file), same NVR unless told otherwise."""
        self.count += 1
        spec = SPEC.format(
            name=self.name,
            version=version,
            release=release,
            build=build,
            marker=f"{self.name} commit {self.count}",
        )
        (self.path / f"{self.name}.spec").write_text(spec)
        self._git("add", "-A")
        self._git("commit", "-q", "-m", f"commit {self.count}")
        return self._git("rev-parse", "HEAD")

    def url(self, commit: str) -> str:
        return f"git+file://{self.path}#{commit}"


def repo_packages(repo: Path) -> list[str]:
    """The package file names in a yum repository's primary metadata."""
    ns = "{http://linux.duke.edu/metadata/repo}"
    repomd = ET.parse(repo / "repodata" / "repomd.xml").getroot()
    (primary,) = [
        d.find(f"{ns}location").get("href")  # type: ignore[union-attr]
        for d in repomd.findall(f"{ns}data")
        if d.get("type") == "primary"
    ]
    root = ET.fromstring(gzip.decompress((repo / primary).read_bytes()))
    common = "{http://linux.duke.edu/metadata/common}"
    return sorted(
        p.find(f"{common}location").get("href", "").rsplit("/", 1)[-1]  # type: ignore[union-attr]
        for p in root.iter(f"{common}package")
    )


@pytest.fixture
def dg(tmp_path: Path) -> DistGit:
    return DistGit(tmp_path / "hello-gating")


# ---------------------------------------------------------------------- local backend


@pytest.fixture
def counter(tmp_path: Path) -> Path:
    return tmp_path / "rpmbuild-runs"


@pytest.fixture
def local(tmp_path: Path, counter: Path) -> LocalBuildBackend:
    backend = LocalBuildBackend(tmp_path / "local")
    wrapper = tmp_path / "count-rpmbuild"
    wrapper.write_text(
        "import os, sys\n"
        f"with open({str(counter)!r}, 'a') as f:\n"
        "    f.write(' '.join(sys.argv[1:]) + '\\n')\n"
        "os.execvp('rpmbuild', ['rpmbuild', *sys.argv[1:]])\n"
    )
    backend.local.rpmbuild = (sys.executable, str(wrapper))  # count the runs
    return backend


def runs(counter: Path) -> int:
    return len(counter.read_text().splitlines()) if counter.exists() else 0


def test_local_backend_attributes(local: LocalBuildBackend, tmp_path: Path) -> None:
    backend: BuildBackend = local  # satisfies the protocol
    assert (backend.kind, backend.builds_on_worker) == ("local", True)
    assert backend.scratch_root == tmp_path / "local"


def test_local_scratch_builds_are_cached_by_package_and_commit(
    local: LocalBuildBackend, dg: DistGit, counter: Path
) -> None:
    first, second = dg.commit(), dg.commit()
    assert local.find_scratch(dg.name, first) is None
    build = local.scratch_build(dg.name, dg.url(first), first)
    assert (build.nvr, build.commit, build.scratch, build.reused) == (
        "hello-gating-1.0-1",
        first,
        True,
        False,
    )
    assert [p.name for p in build.rpms] == ["hello-gating-1.0-1.noarch.rpm"]
    again = local.scratch_build(dg.name, dg.url(first), first)
    assert again.reused and again.path == build.path and runs(counter) == 1
    found = local.find_scratch(dg.name, first)
    assert found is not None and found.reused and found.path == build.path
    assert local.find_scratch(dg.name, second) is None
    other = local.scratch_build(dg.name, str(dg.path), second)  # a plain path works too
    assert other.path != build.path and not other.reused and runs(counter) == 2


def test_local_release_reuse_and_nvr_conflict(
    local: LocalBuildBackend, dg: DistGit, counter: Path
) -> None:
    first, second = dg.commit(), dg.commit()
    assert local.find_release(dg.name, first) is None
    release = local.release_build(dg.name, dg.url(first), first)
    assert release == Release(dg.name, first, "hello-gating-1.0-1", False, None, release.url)
    assert Path(release.url).is_dir()
    assert local.find_release(dg.name, first) == Release(
        dg.name, first, "hello-gating-1.0-1", True, None, release.url
    )
    assert local.release_build(dg.name, dg.url(first), first).reused
    assert runs(counter) == 1
    with pytest.raises(NVRConflict, match="bump Release") as err:
        local.release_build(dg.name, dg.url(second), second)
    assert (err.value.commit, err.value.existing_commit) == (second, first)
    assert local.find_release(dg.name, second) is None
    # a build made on a worker keeps the same rules
    scratch = local.scratch_build(dg.name, dg.url(second), second)
    with pytest.raises(NVRConflict, match="bump Release"):
        local.add_build(dg.name, second, scratch.srpm, scratch.rpms, scratch.log, scratch=False)
    third = dg.commit(release="2")
    made = local.scratch_build(dg.name, dg.url(third), third)
    added = local.add_build(dg.name, third, made.srpm, made.rpms, made.log, scratch=False)
    assert (added.nvr, added.scratch, added.reused) == ("hello-gating-1.0-2", False, False)
    assert local.find_release(dg.name, third) == Release(
        dg.name, third, "hello-gating-1.0-2", True, None, str(added.path)
    )


def test_local_tag_once_history_and_repo(local: LocalBuildBackend, dg: DistGit) -> None:
    commit = dg.commit()
    nvr = local.release_build(dg.name, dg.url(commit), commit).nvr
    path = local.publish_repo("dist")  # an empty tag is a valid repository
    assert Path(path) == local.scratch_root / "tags" / "dist"
    assert repo_packages(Path(path)) == []
    assert local.tag("dist", nvr) is True
    assert local.tag("dist", nvr) is False
    assert local.tagged("dist") == [nvr]
    [change] = local.history("dist")
    assert isinstance(change, TagChange)
    assert (change.tag, change.nvr, change.action) == ("dist", nvr, "tag")
    assert local.publish_repo("dist") == path
    assert repo_packages(Path(path)) == [f"{nvr}.noarch.rpm"]
    assert local.tag_repo_url("dist", "x86_64", "http://master:8010/repos/") == (
        "http://master:8010/repos/tags/dist/"
    )
    assert local.untag("dist", nvr) is True and local.untag("dist", nvr) is False
    assert [(c.action, c.nvr) for c in local.history("dist")] == [("tag", nvr), ("untag", nvr)]
    assert local.history("dist")[0].event_id < local.history("dist")[1].event_id
    assert local.tagged("dist") == [] and repo_packages(Path(path)) == []


def test_local_overlay_holds_exactly_the_given_builds(
    local: LocalBuildBackend, dg: DistGit, tmp_path: Path
) -> None:
    other = DistGit(tmp_path / "other-pkg", name="other-pkg")
    old, new = dg.commit(), dg.commit(version="1.1")
    hello_old = local.scratch_build(dg.name, dg.url(old), old)
    hello_new = local.scratch_build(dg.name, dg.url(new), new)
    other_commit = other.commit()
    other_build = local.scratch_build(other.name, other.url(other_commit), other_commit)
    path = local.overlay("item-1", [hello_new, other_build])
    assert path == local.scratch_root / "overlays" / "item-1"
    assert repo_packages(path) == ["hello-gating-1.1-1.noarch.rpm", "other-pkg-1.0-1.noarch.rpm"]
    assert local.overlay("item-1", [hello_old]) == path  # replaced, not added to
    assert repo_packages(path) == ["hello-gating-1.0-1.noarch.rpm"]
    local.drop_overlay("item-1")
    assert not path.exists()
    local.drop_overlay("item-1")  # nothing left: fine


# ---------------------------------------------------------------------- koji backend


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[KojiTestHub]:
    with KojiTestHub(tmp_path / "hub", first_event_id=2**31 + 7) as hub:
        hub.add_user(USER, PASSWORD, perms=["repo"])
        hub.create_tag("el9-build", arches="x86_64", extra={"rpm.macro.dist": ".el9"})
        hub.create_tag("el9")
        hub.create_target("el9-gate", "el9-build", "el9")
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
def kb(hub: KojiTestHub, tmp_path: Path) -> Iterator[KojiBuildBackend]:
    with KojiSession(settings(hub)) as session:
        yield KojiBuildBackend(
            session, tmp_path / "koji-cache", target="el9-gate", poll_interval=POLL
        )


def scratch_tasks(hub: KojiTestHub) -> list[dict]:
    return [t for t in hub.tasks("build") if (t["request"][2] or {}).get("scratch")]


def release_tasks(hub: KojiTestHub) -> list[dict]:
    return [t for t in hub.tasks("build") if not (t["request"][2] or {}).get("scratch")]


def test_koji_backend_attributes(kb: KojiBuildBackend, tmp_path: Path) -> None:
    backend: BuildBackend = kb
    assert (backend.kind, backend.builds_on_worker) == ("koji", False)
    assert backend.scratch_root == tmp_path / "koji-cache"


def test_koji_scratch_build_downloads_rpms_once(
    kb: KojiBuildBackend, hub: KojiTestHub, dg: DistGit
) -> None:
    commit = dg.commit()
    assert kb.find_scratch(dg.name, commit) is None
    build = kb.scratch_build(dg.name, dg.url(commit), commit)
    assert (build.nvr, build.commit, build.scratch, build.reused) == (NVR, commit, True, False)
    assert build.path.is_relative_to(kb.scratch_root)
    assert [p.name for p in build.rpms] == [f"{NVR}.noarch.rpm"] and build.rpms[0].is_file()
    assert build.srpm.name == f"{NVR}.src.rpm" and build.srpm.is_file()
    [task] = scratch_tasks(hub)
    assert task["request"][:2] == [dg.url(commit), "el9-gate"]
    again = kb.scratch_build(dg.name, dg.url(commit), commit)
    assert again.reused and again.path == build.path
    found = kb.find_scratch(dg.name, commit)
    assert found is not None and found.reused and found.rpms == build.rpms
    assert len(hub.tasks("build")) == 1
    assert hub.builds() == []  # a scratch build makes no koji build
    overlay = kb.overlay("item-7", [build])
    assert overlay == kb.scratch_root / "overlays" / "item-7"
    assert repo_packages(overlay) == [f"{NVR}.noarch.rpm"]
    kb.drop_overlay("item-7")
    assert not overlay.exists()


def test_koji_scratch_task_of_a_killed_master_is_adopted_not_built_again(
    kb: KojiBuildBackend, hub: KojiTestHub, dg: DistGit, tmp_path: Path
) -> None:
    """A master died while its scratch task waited on the hub: the next one (an empty
    cache) waits for that task and takes its RPMs; once it ended, too. A failed one is
    not adopted."""
    commit = dg.commit()
    hub.hold_tasks("build")
    orphan = kb.session.build_from_scm(dg.url(commit), "el9-gate", True)
    threading.Timer(1.0, hub.release_tasks, ("build",)).start()
    restarted = KojiBuildBackend(
        kb.session, tmp_path / "cache-2", target="el9-gate", poll_interval=POLL
    )
    build = restarted.scratch_build(dg.name, dg.url(commit), commit)
    assert (build.nvr, build.reused) == (NVR, False) and build.rpms[0].is_file()
    assert [t["id"] for t in scratch_tasks(hub)] == [orphan]
    again = KojiBuildBackend(
        kb.session, tmp_path / "cache-3", target="el9-gate", poll_interval=POLL
    )
    assert again.scratch_build(dg.name, dg.url(commit), commit).nvr == NVR
    assert [t["id"] for t in scratch_tasks(hub)] == [orphan]  # CLOSED: adopted as well

    broken = dg.commit()
    hub.fail_builds(broken)
    with pytest.raises(KojiTaskFailed):
        kb.scratch_build(dg.name, dg.url(broken), broken)
    hub.fail_builds(None)
    assert kb.scratch_build(dg.name, dg.url(broken), broken).nvr == NVR
    assert len(scratch_tasks(hub)) == 3


def test_koji_scratch_target(hub: KojiTestHub, dg: DistGit, tmp_path: Path) -> None:
    hub.create_target("el9-scratch", "el9-build", "el9")
    with KojiSession(settings(hub)) as session:
        backend = KojiBuildBackend(
            session,
            tmp_path / "cache",
            target="el9-gate",
            scratch_target="el9-scratch",
            poll_interval=POLL,
        )
        commit = dg.commit()
        backend.scratch_build(dg.name, dg.url(commit), commit)
    assert [t["request"][1] for t in scratch_tasks(hub)] == ["el9-scratch"]


def test_koji_two_threads_asking_for_one_key_make_one_task(
    kb: KojiBuildBackend, hub: KojiTestHub, dg: DistGit
) -> None:
    commit = dg.commit()
    hub.build_delay = 0.5  # both requests arrive while the build runs
    start = threading.Barrier(2)

    def ask() -> LocalBuild:
        start.wait()
        return kb.scratch_build(dg.name, dg.url(commit), commit)

    with ThreadPoolExecutor(2) as pool:
        a, b = pool.map(lambda _: ask(), range(2))
    assert len(hub.tasks("build")) == 1
    assert a.path == b.path and sorted([a.reused, b.reused]) == [False, True]
    assert len(kb._locks) == 0  # per-key locks are dropped once unused


def test_koji_five_commits_make_five_scratch_tasks(
    kb: KojiBuildBackend, hub: KojiTestHub, dg: DistGit
) -> None:
    commits = [dg.commit() for _ in range(5)]
    with ThreadPoolExecutor(5) as pool:
        builds = list(pool.map(lambda c: kb.scratch_build(dg.name, dg.url(c), c), commits))
    assert len(scratch_tasks(hub)) == 5
    assert sorted(t["request"][0] for t in scratch_tasks(hub)) == sorted(map(dg.url, commits))
    assert [b.commit for b in builds] == commits and len({b.path for b in builds}) == 5
    assert not any(b.reused for b in builds)


def test_koji_release_build_then_reuse(kb: KojiBuildBackend, hub: KojiTestHub, dg: DistGit) -> None:
    first, second = dg.commit(), dg.commit()
    assert kb.find_release(dg.name, first) is None
    release = kb.release_build(dg.name, dg.url(first), first)
    [task] = release_tasks(hub)
    assert task["request"] == [dg.url(first), "el9-gate", {"skip_tag": True, "scratch": False}]
    assert release == Release(
        dg.name,
        first,
        NVR,
        False,
        task["id"],
        f"{hub.topurl}/work/tasks/{task['id'] % 10000}/{task['id']}/",
    )
    assert [(b["nvr"], b["state"]) for b in hub.builds()] == [(NVR, koji.BUILD_STATES["COMPLETE"])]
    assert hub.tagged("el9") == []  # skip_tag: tagging is the backend's tag()
    assert kb.find_release(dg.name, first) == Release(
        dg.name, first, NVR, True, task["id"], release.url
    )
    assert kb.release_build(dg.name, dg.url(first), first).reused
    assert kb.find_release(dg.name, second) is None
    assert len(hub.tasks("build")) == 1


def test_koji_same_nvr_from_another_commit_is_an_nvr_conflict(
    kb: KojiBuildBackend, hub: KojiTestHub, dg: DistGit
) -> None:
    first, second = dg.commit(), dg.commit()
    kb.release_build(dg.name, dg.url(first), first)
    with pytest.raises(NVRConflict, match=f"NVR {NVR} already built .*: bump Release") as err:
        kb.release_build(dg.name, dg.url(second), second)
    assert (err.value.nvr, err.value.commit, err.value.existing_commit) == (NVR, second, first)
    assert isinstance(err.value.__cause__, KojiTaskFailed)
    assert "Build already exists" in str(err.value.__cause__)
    assert len(release_tasks(hub)) == 2


def test_koji_existing_build_of_the_same_commit_is_reused_after_the_task_fails(
    kb: KojiBuildBackend, hub: KojiTestHub, dg: DistGit, monkeypatch: pytest.MonkeyPatch
) -> None:
    commit = dg.commit()
    first = kb.release_build(dg.name, dg.url(commit), commit)
    # a lookup that misses it (e.g. made by another master just now): the task fails with
    # "Build already exists", and the build turns out to be this commit's
    monkeypatch.setattr(kb, "find_release", lambda package, commit: None)
    again = kb.release_build(dg.name, dg.url(commit), commit)
    assert again == Release(dg.name, commit, NVR, True, first.task_id, first.url)
    assert len(release_tasks(hub)) == 2
    assert [b["state"] for b in hub.builds()] == [koji.BUILD_STATES["COMPLETE"]]


def test_koji_release_waits_for_another_task_building_the_nvr(
    kb: KojiBuildBackend, hub: KojiTestHub, dg: DistGit
) -> None:
    commit = dg.commit()
    hub.build_delay = 1.5  # in buildArch, after the build record (BUILDING) is made
    other = kb.session.build_from_scm(dg.url(commit), "el9-gate", False, opts={"skip_tag": True})
    deadline = time.monotonic() + 20
    while not hub.builds():  # the other task holds the NVR
        assert time.monotonic() < deadline
        time.sleep(POLL)
    release = kb.release_build(dg.name, dg.url(commit), commit)
    assert (release.reused, release.task_id, release.nvr) == (True, other, NVR)
    [ours] = [t for t in release_tasks(hub) if t["id"] != other]
    with pytest.raises(koji.GenericError, match=f"Build already in progress \\(task {other}\\)"):
        kb.session.call("getTaskResult", ours["id"])


def test_koji_failed_task_raises_with_the_task_id_and_log_url(
    kb: KojiBuildBackend, hub: KojiTestHub, dg: DistGit
) -> None:
    commit = dg.commit()
    hub.fail_builds("hello-gating")
    with pytest.raises(KojiTaskFailed) as err:
        kb.scratch_build(dg.name, dg.url(commit), commit)
    [task] = hub.tasks("build")
    failure = err.value
    assert failure.task_id == task["id"] and str(task["id"]) in str(failure)
    assert failure.log_url.startswith(hub.topurl) and failure.log_url in str(failure)
    assert requests.get(failure.log_url, timeout=10).ok
    assert kb.find_scratch(dg.name, commit) is None  # nothing cached
    with pytest.raises(KojiTaskFailed, match="error building package"):
        kb.release_build(dg.name, dg.url(commit), commit)


def test_koji_tag_once_history_and_publish_repo(
    kb: KojiBuildBackend, hub: KojiTestHub, dg: DistGit
) -> None:
    commit = dg.commit()
    nvr = kb.release_build(dg.name, dg.url(commit), commit).nvr
    start = kb.session.latest_event().id
    assert kb.tag("el9", nvr) is True
    assert kb.tag("el9", nvr) is False
    assert len(hub.tasks("tagBuild")) == 1
    assert kb.tagged("el9") == [nvr]
    [change] = kb.history("el9")
    assert (change.tag, change.nvr, change.action) == ("el9", nvr, "tag")
    assert change.event_id > start and change.time > 0

    repo_id = kb.publish_repo("el9")
    repo = kb.session.get_repo("el9")
    assert repo is not None and str(repo["id"]) == repo_id
    assert repo["create_event"] >= change.event_id  # made after the tag
    assert len(hub.tasks("newRepo")) == 1
    url = kb.tag_repo_url("el9", "x86_64", "http://master:8010/repos/")
    assert url == f"{hub.topurl}/repos/el9/{repo_id}/x86_64/"
    assert requests.get(url + f"{nvr}.noarch.rpm", timeout=10).ok

    assert kb.untag("el9", nvr) is True and kb.untag("el9", nvr) is False
    assert kb.tagged("el9") == []
    assert [(c.action, c.nvr) for c in kb.history("el9")] == [("tag", nvr), ("untag", nvr)]
    assert kb.publish_repo("el9") != repo_id


def test_koji_settle_tag_cancels_a_pending_tag_task_before_it_lands(
    kb: KojiBuildBackend, hub: KojiTestHub, dg: DistGit
) -> None:
    """A tag task a killed master left pending on the hub is cancelled (it never lands
    later); one that already ended is left as it is; other builds' tasks are not touched."""
    commits = [dg.commit(release=r) for r in ("1", "2")]
    nvrs = [kb.release_build(dg.name, dg.url(c), c).nvr for c in commits]
    assert kb.settle_tag("el9", nvrs[0]) == []  # nothing pending
    hub.hold_tasks("tagBuild")
    pending = [kb.session.tag_build("el9", nvr, wait=False) for nvr in nvrs]
    assert all(t["state"] == koji.TASK_STATES["FREE"] for t in hub.tasks("tagBuild"))
    assert kb.settle_tag("el9", nvrs[0]) == [pending[0]]
    hub.release_tasks("tagBuild")
    kb.session.wait_task(pending[1], poll_interval=POLL)
    states = {t["id"]: koji.TASK_STATES[t["state"]] for t in hub.tasks("tagBuild")}
    assert states == {pending[0]: "CANCELED", pending[1]: "CLOSED"}
    assert kb.tagged("el9") == [nvrs[1]]
    assert kb.settle_tag("el9", nvrs[1]) == []  # ended: nothing to cancel


def test_koji_ensure_repo_waits_for_a_pending_repo_task_and_asks_only_when_needed(
    kb: KojiBuildBackend, hub: KojiTestHub, dg: DistGit
) -> None:
    commit = dg.commit()
    nvr = kb.release_build(dg.name, dg.url(commit), commit).nvr
    kb.tag("el9", nvr)
    # A repo request of a killed master, still pending: waited for, not asked again.
    hub.hold_tasks("newRepo")
    kb.session.new_repo("el9")
    threading.Timer(1.0, hub.release_tasks, ("newRepo",)).start()
    repo_id = kb.ensure_repo("el9")
    assert len(hub.tasks("newRepo")) == 1
    repo = kb.session.get_repo("el9")
    assert repo is not None and str(repo["id"]) == repo_id
    # The repo is current: nothing asked.
    assert kb.ensure_repo("el9") == repo_id and len(hub.tasks("newRepo")) == 1
    # A tag change after it: a new repo.
    kb.untag("el9", nvr)
    assert kb.ensure_repo("el9") != repo_id and len(hub.tasks("newRepo")) == 2


def test_koji_tagged_in_tagging_order(kb: KojiBuildBackend, hub: KojiTestHub, dg: DistGit) -> None:
    nvrs = []
    for release in ("1", "2"):
        commit = dg.commit(release=release)
        nvrs.append(kb.release_build(dg.name, dg.url(commit), commit).nvr)
    for nvr in nvrs:
        kb.tag("el9", nvr)
    assert kb.tagged("el9") == nvrs
    assert hub.tagged("el9") == nvrs[::-1]  # koji lists the newest first


def test_tag_repo_url_makes_a_repo_when_the_tag_has_none(
    kb: KojiBuildBackend, hub: KojiTestHub
) -> None:
    url = kb.tag_repo_url("el9", "x86_64", "http://unused/")
    repo = kb.session.get_repo("el9")
    assert repo is not None and url == f"{hub.topurl}/repos/el9/{repo['id']}/x86_64/"


@pytest.mark.parametrize(
    ("kind", "fault"),
    [
        ("offline", {"duration": 0.8}),
        ("http500", {"n": 3}),
        ("refused", {"duration": 0.8}),
    ],
)
def test_koji_hub_faults_delay_but_do_not_duplicate(
    kb: KojiBuildBackend, hub: KojiTestHub, dg: DistGit, kind: str, fault: dict
) -> None:
    commit = dg.commit()
    kb.session.login()
    started = time.monotonic()
    hub.fail_next(kind=kind, method="build", **fault)
    build = kb.scratch_build(dg.name, dg.url(commit), commit)
    if "duration" in fault:
        assert time.monotonic() - started >= fault["duration"] - 0.1
    assert not build.reused and len(scratch_tasks(hub)) == 1

    nvr = kb.release_build(dg.name, dg.url(commit), commit).nvr
    started = time.monotonic()
    hub.fail_next(kind=kind, method="tagBuild", **fault)
    assert kb.tag("el9", nvr) is True
    if "duration" in fault:
        assert time.monotonic() - started >= fault["duration"] - 0.1
    assert len(hub.tasks("tagBuild")) == 1
    assert [(c.action, c.nvr) for c in kb.history("el9")] == [("tag", nvr)]
    assert len(hub.tasks("build")) == 2  # one scratch, one release
    outcomes = [outcome for _, _, outcome in hub.rpc_log]
    if kind != "refused":  # refused connections never reach the hub's log
        assert outcomes.count(kind) >= 2


def test_koji_add_build_takes_scratch_builds_only(
    kb: KojiBuildBackend, local: LocalBuildBackend, dg: DistGit
) -> None:
    commit = dg.commit()
    made = local.scratch_build(dg.name, dg.url(commit), commit)
    with pytest.raises(BackendError, match="non-scratch builds in koji"):
        kb.add_build(dg.name, commit, made.srpm, made.rpms, made.log, scratch=False)
    added = kb.add_build(dg.name, commit, made.srpm, made.rpms, made.log, scratch=True)
    assert added.path.is_relative_to(kb.scratch_root)
    assert kb.find_scratch(dg.name, commit) is not None


# ---------------------------------------------------------------------- make_backend


def koji_config(server: str, topurl: str, **kwargs: object) -> BackendConfig:
    values: dict[str, object] = dict(
        kind="koji",
        server=server,
        topurl=topurl,
        auth="password",
        user=USER,
        password_secret="koji-password",
        target="el9-gate",
        poll_interval=POLL,
    )
    values.update(kwargs)
    return BackendConfig(**values)  # type: ignore[arg-type]


def test_make_backend_local_by_default(tmp_path: Path) -> None:
    backend = make_backend(BackendConfig(), tmp_path, {})
    assert isinstance(backend, LocalBuildBackend)
    assert (backend.kind, backend.builds_on_worker) == ("local", True)
    assert backend.scratch_root == tmp_path / "local"
    configured = make_backend(
        BackendConfig(defines=(("dist", ".el9"),), check_build_deps=False), tmp_path, {}
    )
    assert isinstance(configured, LocalBuildBackend)
    assert configured.local.defines == {"dist": ".el9"}
    assert configured.local.check_build_deps is False


def test_make_backend_koji_with_a_password_secret(hub: KojiTestHub, tmp_path: Path) -> None:
    config = koji_config(hub.url, hub.topurl)
    backend = make_backend(config, tmp_path, {"koji-password": PASSWORD, "other": "x"})
    assert isinstance(backend, KojiBuildBackend)
    assert (backend.kind, backend.builds_on_worker) == ("koji", False)
    assert backend.scratch_root == tmp_path / "koji-cache"
    assert (backend.target, backend.scratch_target, backend.poll_interval) == (
        "el9-gate",
        "el9-gate",
        POLL,
    )
    with backend.session:
        assert backend.session.logged_in_user()["name"] == USER
    for text in (repr(config), repr(backend), repr(backend.session.settings)):
        assert PASSWORD not in text
    assert "koji-password" in repr(config)  # the name only


def test_make_backend_from_a_koji_profile(
    hub: KojiTestHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    (home / ".koji").mkdir(parents=True)
    (home / ".koji" / "config").write_text(
        f"[gating-test]\nserver = {hub.url}\ntopurl = {hub.topurl}\nauthtype = password\n"
    )
    monkeypatch.setenv("HOME", str(home))
    config = BackendConfig(
        kind="koji",
        profile="gating-test",
        user=USER,
        password_secret="koji-password",
        target="el9-gate",
        weburl="https://koji.example.org/koji",
    )
    backend = make_backend(config, tmp_path, {"koji-password": PASSWORD})
    assert isinstance(backend, KojiBuildBackend)
    settings = backend.session.settings
    assert (settings.profile, settings.server, settings.auth) == (
        "gating-test",
        hub.url,
        "password",
    )
    assert settings.weburl == "https://koji.example.org/koji"  # explicit settings win
    with backend.session:
        assert backend.session.logged_in_user()["name"] == USER
    with pytest.raises(BackendConfigError, match="no-such-profile"):
        make_backend(
            BackendConfig(kind="koji", profile="no-such-profile", target="t"), tmp_path, {}
        )


def test_make_backend_waits_for_an_unreachable_hub_as_configured(tmp_path: Path) -> None:
    base = koji_config("http://koji.invalid/kojihub", "http://koji.invalid/kojifiles")
    backend = make_backend(base, tmp_path, {"koji-password": PASSWORD})
    assert isinstance(backend, KojiBuildBackend)
    # the default: 6 hours, 1 s doubling up to 60 s between attempts
    assert backend.session.settings.retry == RetryPolicy(total=21600, initial=1, maximum=60)
    scaled = dataclasses.replace(base, outage_timeout=120.0, outage_retry_max=0.5)
    backend = make_backend(scaled, tmp_path, {"koji-password": PASSWORD})
    assert isinstance(backend, KojiBuildBackend)
    assert backend.session.settings.retry == RetryPolicy(total=120, initial=0.5, maximum=0.5)


def test_the_hub_outage_is_the_sessions(kb: KojiBuildBackend, local: LocalBuildBackend) -> None:
    assert local.hub_outage() is None  # no hub
    assert kb.hub_outage() is None
    kb.session.outages.failed("getTaskInfo(1)", ConnectionRefusedError(111, "refused"))
    outage = kb.hub_outage()
    assert outage is not None and outage.hub == kb.session.hub and outage.failures == 1
    kb.session.call("getLastEvent")  # the hub answers: the outage is over
    assert kb.hub_outage() is None


def test_koji_scratch_build_and_export_steps_wait_through_an_outage(
    kb: KojiBuildBackend, hub: KojiTestHub, dg: DistGit
) -> None:
    """The hub stops listening while a scratch build task runs, and answers 503 while the
    release build is tagged: both finish once it is back, nothing is made twice."""
    commit = dg.commit()
    kb.session.login()
    hub.build_delay = 1.0
    done: list[object] = []
    thread = threading.Thread(
        target=lambda: done.append(kb.scratch_build(dg.name, dg.url(commit), commit))
    )
    thread.start()
    deadline = time.monotonic() + 60
    while not scratch_tasks(hub):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    hub.fail_next(kind="refused", duration=2)
    thread.join(timeout=120)
    hub.build_delay = 0.0
    assert done and len(scratch_tasks(hub)) == 1
    nvr = kb.release_build(dg.name, dg.url(commit), commit).nvr
    hub.fail_next(kind="http503", duration=2)
    assert kb.tag("el9", nvr) is True
    kb.publish_repo("el9")
    assert hub.tagged("el9") == [nvr] and len(hub.tasks("tagBuild")) == 1
    assert kb.hub_outage() is None
    assert "http503" in {outcome for _, _, outcome in hub.rpc_log}


def test_make_backend_missing_secret_names_it(hub: KojiTestHub, tmp_path: Path) -> None:
    with pytest.raises(BackendConfigError, match="'password-secret'.*'koji-password'") as err:
        make_backend(koji_config(hub.url, hub.topurl), tmp_path, {"another": PASSWORD})
    assert isinstance(err.value, BackendError)
    assert PASSWORD not in str(err.value)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"target": None}, "backend 'target'"),
        ({"server": None}, "backend 'server'"),
        ({"topurl": "ftp://files"}, "topurl must be an http"),
        ({"password_secret": None}, "'auth: password' needs a 'password-secret'"),
        ({"user": None}, "'auth: password' needs a 'user'"),
        ({"auth": "kerberos5"}, "auth must be one of"),
        ({"kind": "mock"}, "backend 'type'"),
        ({"mode": "promote"}, "needs a 'candidate-tag'"),
    ],
)
def test_make_backend_config_errors_name_the_setting(
    tmp_path: Path, changes: dict, message: str
) -> None:
    base = koji_config("http://koji.invalid/kojihub", "http://koji.invalid/kojifiles")
    config = dataclasses.replace(base, **changes)
    with pytest.raises(BackendConfigError, match=message) as err:
        make_backend(config, tmp_path, {"koji-password": PASSWORD})
    assert PASSWORD not in str(err.value) and PASSWORD not in repr(err.value)
