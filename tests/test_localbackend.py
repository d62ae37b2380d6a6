"""gating.localbackend: the embedded build backend, with real git, rpmbuild, createrepo_c and dnf.

Each test makes dist-git repositories (a spec file and its source next to it) in a temporary
directory. rpmbuild runs through a small wrapper that counts its runs, so that "reused, not
rebuilt" is asserted from the number of rpmbuild processes, not from timing.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from gating import localbackend
from gating.localbackend import (
    BackendError,
    BuildFailed,
    InvalidInput,
    LocalBackend,
    LocalBuild,
    NVRConflict,
    RepositoryWriteError,
    UnknownBuild,
)
from tests.support import smallfs

pytestmark = pytest.mark.skipif(
    not all(shutil.which(t) for t in ("git", "rpmbuild", "rpmspec", "rpm", "createrepo_c")),
    reason="needs git, rpmbuild, rpmspec, rpm and createrepo_c",
)
DNF = "/usr/bin/dnf"

SPEC = """\
Name: {name}
Version: {version}
Release: {release}
Summary: A tiny test package
License: MIT
BuildArch: noarch
AutoReqProv: no
Source0: hello.txt

%description
A tiny test package.

%prep

%build
{build}

%install
mkdir -p %{{buildroot}}/usr/share/{name}
install -m 644 %{{SOURCE0}} %{{buildroot}}/usr/share/{name}/hello.txt

%files
/usr/share/{name}/hello.txt
"""


@pytest.fixture(autouse=True)
def git_env(monkeypatch):
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", os.devnull)
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    for role in ("AUTHOR", "COMMITTER"):
        monkeypatch.setenv(f"GIT_{role}_NAME", "Dev Eloper")
        monkeypatch.setenv(f"GIT_{role}_EMAIL", "dev@example.org")


def git(cwd: Path, *args: str) -> str:
    proc = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, f"git {args}: {proc.stderr}"
    return proc.stdout.strip()


class DistGit:
    """A dist-git repository of one package."""

    def __init__(self, path: Path, name: str = "hello") -> None:
        self.path = path
        self.name = name
        path.mkdir(parents=True)
        git(path, "init", "-q", "-b", "main")

    def commit(
        self,
        version: str = "1.0",
        release: str = "1",
        text: str = "hello\n",
        build: str = "",
        message: str = "update",
        spec: str | None = None,
    ) -> str:
        if spec is None:
            spec = SPEC.format(name=self.name, version=version, release=release, build=build)
        (self.path / f"{self.name}.spec").write_text(spec)
        (self.path / "hello.txt").write_text(text)
        git(self.path, "add", "-A")
        git(self.path, "commit", "-q", "--allow-empty", "-m", message)
        return git(self.path, "rev-parse", "HEAD")


@pytest.fixture
def counter(tmp_path) -> Path:
    return tmp_path / "rpmbuild-runs"


@pytest.fixture
def rpmbuild_wrapper(tmp_path, counter) -> list[str]:
    """rpmbuild, counting its runs (a Python wrapper: no shell anywhere)."""
    wrapper = tmp_path / "count-rpmbuild"
    wrapper.write_text(
        "import os, sys\n"
        f"with open({str(counter)!r}, 'a') as f:\n"
        "    f.write(' '.join(sys.argv[1:]) + '\\n')\n"
        "os.execvp('rpmbuild', ['rpmbuild', *sys.argv[1:]])\n"
    )
    return [sys.executable, str(wrapper)]


@pytest.fixture
def backend(tmp_path, rpmbuild_wrapper) -> LocalBackend:
    return LocalBackend(tmp_path / "root", rpmbuild=rpmbuild_wrapper)


@pytest.fixture
def dg(tmp_path) -> DistGit:
    return DistGit(tmp_path / "hello")


def runs(counter: Path) -> int:
    return len(counter.read_text().splitlines()) if counter.exists() else 0


def rpm_q(path: Path, fmt: str) -> str:
    return subprocess.run(
        ["rpm", "-qp", "--nosignature", "--qf", fmt, str(path)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def repo_packages(repo: Path) -> list[str]:
    """The location hrefs of a yum repository's primary metadata."""
    ns = "{http://linux.duke.edu/metadata/repo}"
    repomd = ET.parse(repo / "repodata" / "repomd.xml").getroot()
    (primary,) = [
        d.find(f"{ns}location").get("href")
        for d in repomd.findall(f"{ns}data")
        if d.get("type") == "primary"
    ]
    root = ET.fromstring(gzip.decompress((repo / primary).read_bytes()))
    common = "{http://linux.duke.edu/metadata/common}"
    return sorted(p.find(f"{common}location").get("href") for p in root.iter(f"{common}package"))


def dnf_install(tmp_path: Path, name: str, *args: str) -> str:
    """Install ``hello`` into a fresh installroot; the installed NVRA from its rpm database."""
    installroot = tmp_path / f"installroot-{name}"
    reposdir = tmp_path / f"reposdir-{name}"
    reposdir.mkdir(exist_ok=True)
    proc = subprocess.run(
        [
            DNF,
            "-y",
            "-q",
            f"--installroot={installroot}",
            "--releasever=12",
            f"--setopt=reposdir={reposdir}",
            f"--setopt=cachedir={tmp_path / ('dnf-cache-' + name)}",
            "--setopt=install_weak_deps=0",
            "--disableplugin=*",
            *args,
            "install",
            "hello",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return subprocess.run(
        ["rpm", f"--root={installroot}", "-q", "hello"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


# -- building -------------------------------------------------------------------------------


def test_build_a_noarch_package(backend, dg, counter, tmp_path):
    commit = dg.commit(text="hello from dist-git\n")
    build = backend.build("hello", dg.path, commit, scratch=False)

    assert (build.nvr, build.name, build.version, build.release) == (
        "hello-1.0-1",
        "hello",
        "1.0",
        "1",
    )
    assert build.commit == commit and build.package == "hello"
    assert not build.scratch and not build.reused
    assert build.path == tmp_path / "root" / "builds" / "hello-1.0-1"
    assert [p.name for p in build.rpms] == ["hello-1.0-1.noarch.rpm"]
    assert build.srpm.name == "hello-1.0-1.src.rpm"
    assert "-ba" in build.log.read_text() and "Wrote: " in build.log.read_text()
    assert runs(counter) == 1
    # rpmbuild got the checkout as its SOURCES directory.
    assert "--define _sourcedir " in counter.read_text()

    # The RPM holds the source file from the dist-git commit.
    (rpm,) = build.rpms
    assert rpm_q(rpm, "%{NAME}-%{VERSION}-%{RELEASE}.%{ARCH}") == "hello-1.0-1.noarch"
    files = rpm_q(rpm, "[%{FILENAMES} %{FILEDIGESTS}\n]").split()
    digest = hashlib.sha256(b"hello from dist-git\n").hexdigest()
    assert files == ["/usr/share/hello/hello.txt", digest]
    assert rpm_q(rpm, "%{SOURCERPM}") == "hello-1.0-1.src.rpm"
    assert "hello.txt" in rpm_q(build.srpm, "[%{FILENAMES}\n]").split()

    # The record on disk: relative names, the keys the master reads.
    record = json.loads((build.path / "build.json").read_text())
    assert set(record) >= {
        "package",
        "nvr",
        "name",
        "version",
        "release",
        "commit",
        "scratch",
        "rpms",
        "srpm",
        "log",
    }
    assert record["rpms"] == ["hello-1.0-1.noarch.rpm"] and record["scratch"] is False
    assert build.record()["rpms"] == [str(rpm)]
    assert backend.get_build("hello-1.0-1") == build
    assert LocalBackend(tmp_path / "root").builds() == [build]


def test_scratch_builds_are_cached_by_package_and_commit(backend, dg, counter, tmp_path):
    first = dg.commit()
    a = backend.build("hello", dg.path, first, scratch=True)
    assert a.scratch and not a.reused and runs(counter) == 1
    assert a.path == tmp_path / "root" / "builds" / "scratch" / "hello" / first

    again = backend.build("hello", str(dg.path), first, scratch=True)
    assert again.reused and again == a and runs(counter) == 1
    # Another backend on the same root (a restarted master) reuses it too.
    assert LocalBackend(tmp_path / "root").build("hello", dg.path, first, scratch=True).reused
    assert runs(counter) == 1

    # Another commit with the same NVR is another scratch build: scratch NVRs are not unique.
    second = dg.commit(text="changed\n")
    b = backend.build("hello", dg.path, second, scratch=True)
    assert not b.reused and b.nvr == a.nvr and b.key != a.key and runs(counter) == 2
    # Scratch builds never count as builds of their NVR.
    assert backend.get_build("hello-1.0-1") is None
    assert backend.get_scratch_build("hello", second) == b


def test_concurrent_scratch_requests_build_once(backend, dg, counter):
    commit = dg.commit()
    with ThreadPoolExecutor(4) as pool:
        results = list(
            pool.map(lambda _: backend.build("hello", dg.path, commit, scratch=True), range(4))
        )
    assert runs(counter) == 1
    assert sum(not b.reused for b in results) == 1
    assert len({b.path for b in results}) == 1


def test_nvr_reuse_and_conflict(backend, dg, counter):
    first = dg.commit()
    built = backend.build("hello", dg.path, first, scratch=False)
    assert runs(counter) == 1

    reused = backend.build("hello", dg.path, first, scratch=False)
    assert reused.reused and reused == built and runs(counter) == 1

    # A new commit that forgot to bump Release.
    second = dg.commit(text="new content\n", message="forgot the release bump")
    with pytest.raises(NVRConflict) as e:
        backend.build("hello", dg.path, second, scratch=False)
    assert str(e.value) == ("NVR hello-1.0-1 already built from a different commit: bump Release")
    assert e.value.existing_commit == first and e.value.commit == second
    assert runs(counter) == 1  # the conflict is found before building
    assert backend.get_build("hello-1.0-1").commit == first

    # Bumping Release fixes it.
    third = dg.commit(release="2", text="new content\n")
    assert backend.build("hello", dg.path, third, scratch=False).nvr == "hello-1.0-2"
    assert runs(counter) == 2


def test_build_failures(backend, dg, counter, tmp_path):
    commit = dg.commit(build="echo compiling; echo boom-marker-7 >&2; exit 3")
    with pytest.raises(BuildFailed) as e:
        backend.build("hello", dg.path, commit, scratch=True)
    err = e.value
    assert "boom-marker-7" in err.tail and "boom-marker-7" in str(err)
    assert "rpmbuild failed" in str(err) and str(err.log) in str(err)
    assert err.log.is_file() and "boom-marker-7" in err.log.read_text()
    assert err.log.is_relative_to(tmp_path / "root" / "builds" / "failed" / "hello" / commit)
    # Nothing is cached: a retry builds (and fails) again.
    assert backend.get_scratch_build("hello", commit) is None
    with pytest.raises(BuildFailed):
        backend.build("hello", dg.path, commit, scratch=False)
    assert runs(counter) == 2
    assert backend.get_build("hello-1.0-1") is None
    assert list((tmp_path / "root" / "tmp").iterdir()) == []

    # A spec file that does not parse, a repository with no spec, an unknown commit.
    bad = dg.commit(spec="Name: hello\nthis is not a spec file\n")
    with pytest.raises(BuildFailed, match="cannot parse hello.spec"):
        backend.build("hello", dg.path, bad, scratch=False)
    git(dg.path, "rm", "-q", "hello.spec")
    git(dg.path, "commit", "-q", "-m", "no spec")
    with pytest.raises(BuildFailed, match="exactly one \\*.spec file, found none"):
        backend.build("hello", dg.path, git(dg.path, "rev-parse", "HEAD"), scratch=True)
    with pytest.raises(BuildFailed, match="cannot fetch"):
        backend.build("hello", dg.path, "f" * 40, scratch=True)


def test_defines_and_commits_not_on_a_branch(tmp_path, dg, rpmbuild_wrapper):
    backend = LocalBackend(tmp_path / "root", rpmbuild=rpmbuild_wrapper, defines={"dist": ".el9"})
    dg.commit(release="1%{?dist}")
    # A proposed change lives under refs/changes/, not on a branch.
    proposed = dg.commit(release="2%{?dist}")
    git(dg.path, "update-ref", "refs/changes/1/1", proposed)
    git(dg.path, "reset", "-q", "--hard", "HEAD~1")
    build = backend.build("hello", dg.path, proposed, scratch=False)
    assert build.nvr == "hello-1.0-2.el9"
    assert [p.name for p in build.rpms] == ["hello-1.0-2.el9.noarch.rpm"]
    with pytest.raises(InvalidInput):
        LocalBackend(tmp_path / "root", defines={"dist": ".el9\n%define evil 1"})


def test_add_build_made_elsewhere(backend, dg, tmp_path):
    commit = dg.commit(version="3.0")
    top = tmp_path / "worker-top"
    subprocess.run(
        [
            "rpmbuild",
            "-ba",
            "--define",
            f"_topdir {top}",
            "--define",
            f"_sourcedir {dg.path}",
            str(dg.path / "hello.spec"),
        ],
        capture_output=True,
        check=True,
    )
    srpm = top / "SRPMS" / "hello-3.0-1.src.rpm"
    rpm = top / "RPMS" / "noarch" / "hello-3.0-1.noarch.rpm"
    build = backend.add_build("hello", commit, srpm, [rpm], scratch=False)
    assert build.nvr == "hello-3.0-1" and not build.reused
    assert build.rpms[0].read_bytes() == rpm.read_bytes() and rpm.exists()
    assert backend.add_build("hello", commit, srpm, [rpm], scratch=False).reused
    with pytest.raises(NVRConflict):
        backend.add_build("hello", "a" * 40, srpm, [rpm], scratch=False)
    # RPMs of another SRPM are refused.
    other = backend.build("hello", dg.path, dg.commit(version="4.0"), scratch=True)
    with pytest.raises(BackendError, match="was built from hello-4.0-1.src.rpm"):
        backend.add_build("hello", commit, srpm, list(other.rpms), scratch=True)


# -- tags -----------------------------------------------------------------------------------


@pytest.fixture
def two_builds(backend, dg) -> tuple[LocalBuild, LocalBuild]:
    one = backend.build("hello", dg.path, dg.commit(version="1.0"), scratch=False)
    two = backend.build("hello", dg.path, dg.commit(version="2.0"), scratch=False)
    return one, two


def test_tag_untag_history(backend, two_builds, tmp_path):
    one, two = two_builds
    repo = backend.tag_repo("dest")
    assert backend.tagged("dest") == [] and backend.history("dest") == []

    assert backend.tag("dest", one.nvr) is True
    assert backend.tag("dest", one.nvr) is False  # a retry never tags twice
    assert backend.tag("dest", two.nvr) is True
    assert backend.tagged("dest") == [one.nvr, two.nvr]
    assert repo_packages(repo) == [
        "Packages/hello-1.0-1/hello-1.0-1.noarch.rpm",
        "Packages/hello-2.0-1/hello-2.0-1.noarch.rpm",
    ]
    # Only binary RPMs land in a tag's repository; they are links to the kept build files.
    assert os.path.samefile(repo / "Packages" / one.nvr / one.rpms[0].name, one.rpms[0])

    assert backend.untag("dest", one.nvr) is True
    assert backend.untag("dest", one.nvr) is False
    assert backend.tagged("dest") == [two.nvr]
    assert repo_packages(repo) == ["Packages/hello-2.0-1/hello-2.0-1.noarch.rpm"]
    assert not (repo / "Packages" / one.nvr).exists()

    assert backend.tag("candidates", one.nvr) is True
    events = [e.as_dict() for e in backend.history("dest")]
    assert [(e["action"], e["nvr"]) for e in events] == [
        ("tag", one.nvr),
        ("tag", two.nvr),
        ("untag", one.nvr),
    ]
    assert [e["event_id"] for e in events] == [1, 2, 3]
    # Event ids increase over all tags, like koji's.
    assert [e.event_id for e in backend.history("candidates")] == [4]
    assert all(isinstance(e["time"], float) for e in events)

    # Persisted: a new backend on the same root (a restarted master) sees the same.
    again = LocalBackend(tmp_path / "root")
    assert [e.as_dict() for e in again.history("dest")] == events
    assert again.tag("dest", two.nvr) is False
    lines = (tmp_path / "root" / "history" / "dest.jsonl").read_text().splitlines()
    assert [json.loads(line)["event_id"] for line in lines] == [1, 2, 3]

    with pytest.raises(UnknownBuild):
        backend.tag("dest", "nosuch-1-1")


def test_scratch_builds_cannot_be_tagged(backend, dg):
    scratch = backend.build("hello", dg.path, dg.commit(), scratch=True)
    with pytest.raises(UnknownBuild):
        backend.tag("dest", scratch.nvr)
    assert backend.tagged("dest") == []


def test_empty_tag_repository(backend):
    repo = backend.ensure_tag("dest")
    assert repo_packages(repo) == []
    assert backend.history("dest") == []


def test_tag_survives_crashes_between_steps(backend, two_builds, tmp_path):
    one, two = two_builds
    # Killed after the repository was updated, before the event was recorded: the retry
    # records the event once.
    backend._sync_tag("dest", [one.nvr])
    assert backend.tagged("dest") == []
    assert backend.tag("dest", one.nvr) is True
    assert len(backend.history("dest")) == 1

    # Killed after the RPMs were linked into the repository, before the new metadata was
    # swapped in: the retry still regenerates it.
    real = backend._createrepo

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    stale = tmp_path / "stale-repodata"
    shutil.copytree(backend.tag_repo("dest") / "repodata", stale)
    backend._createrepo = killed
    with pytest.raises(KeyboardInterrupt):
        backend.tag("dest", two.nvr)
    assert (backend.tag_repo("dest") / "Packages" / two.nvr).is_dir()
    backend._createrepo = real
    assert backend.tag("dest", two.nvr) is True
    assert len(repo_packages(backend.tag_repo("dest"))) == 2
    # Metadata that does not match the files (say, restored from a backup) is regenerated
    # by the next call, even one that changes nothing.
    shutil.rmtree(backend.tag_repo("dest") / "repodata")
    shutil.copytree(stale, backend.tag_repo("dest") / "repodata")
    assert len(repo_packages(backend.tag_repo("dest"))) == 1
    assert backend.tag("dest", two.nvr) is False
    assert len(repo_packages(backend.tag_repo("dest"))) == 2
    assert backend.untag("dest", two.nvr) is True

    # The repository lost (or never got) a tagged build: any call repairs it.
    shutil.rmtree(backend.tag_repo("dest"))
    assert backend.tag("dest", one.nvr) is False
    assert repo_packages(backend.tag_repo("dest")) == [
        "Packages/hello-1.0-1/hello-1.0-1.noarch.rpm"
    ]

    # A torn last line of the history (a write that never finished) is ignored, then dropped.
    history = tmp_path / "root" / "history" / "dest.jsonl"
    with open(history, "ab") as f:
        f.write(b'{"action": "tag", "event_id": 9')
    assert backend.tagged("dest") == [one.nvr]
    assert backend.tag("dest", two.nvr) is True
    assert backend.tagged("dest") == [one.nvr, two.nvr]
    events = backend.history("dest")
    assert [(e.action, e.nvr) for e in events] == [
        ("tag", one.nvr),
        ("tag", two.nvr),
        ("untag", two.nvr),
        ("tag", two.nvr),
    ]
    assert [e.event_id for e in events] == sorted({e.event_id for e in events})
    assert all(json.loads(line) for line in history.read_text().splitlines())


def test_repodata_swap_is_atomic_for_readers(backend, two_builds):
    """A reader polling the repository while it is regenerated always finds a complete
    repomd.xml whose files all exist; the previous generation is kept one round."""
    one, two = two_builds
    repo = backend.ensure_tag("dest")
    stop = threading.Event()
    problems: list[str] = []
    reads = 0

    def reader() -> None:
        nonlocal reads
        while not stop.is_set():
            try:
                root = ET.parse(repo / "repodata" / "repomd.xml").getroot()
            except (OSError, ET.ParseError) as e:
                problems.append(f"repomd.xml: {e}")
                continue
            for loc in root.iter("{http://linux.duke.edu/metadata/repo}location"):
                if not (repo / loc.get("href")).exists():
                    problems.append(f"missing {loc.get('href')}")
            reads += 1

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for _ in range(3):
            backend.tag("dest", one.nvr)
            backend.tag("dest", two.nvr)
            backend.untag("dest", one.nvr)
            backend.untag("dest", two.nvr)
    finally:
        stop.set()
        thread.join()
    assert problems == [] and reads > 0

    # The files of the previous generation survive one regeneration, not two.
    def generation() -> set[str]:
        root = ET.parse(repo / "repodata" / "repomd.xml").getroot()
        return {
            loc.get("href") for loc in root.iter("{http://linux.duke.edu/metadata/repo}location")
        }

    before = generation()
    backend.tag("dest", one.nvr)
    assert all((repo / href).exists() for href in before)
    backend.tag("dest", two.nvr)
    assert not any((repo / href).exists() for href in before - generation())


@pytest.fixture
def small_fs():
    """Mount small tmpfs file systems over directories (unmounted after the test)."""
    why = smallfs.unavailable()
    if why is not None:
        pytest.skip(why)
    mounted: list[smallfs.SmallFilesystem] = []

    def mount(path: Path, size: str = "4m") -> smallfs.SmallFilesystem:
        fs = smallfs.SmallFilesystem(path, size).mount()
        mounted.append(fs)
        return fs

    yield mount
    for fs in reversed(mounted):
        fs.unmount()


def repodata(repo: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((repo / "repodata").iterdir())}


def test_repositories_on_a_full_disk_are_left_as_they_were_with_the_place_named(
    backend, two_builds, dg, small_fs
):
    """The repositories on a volume of their own (not the builds' file system), which
    fills up: the tag and the overlay fail with ENOSPC naming the repository, and leave
    it as it was (its metadata, the files it names, nothing half-written left over); once
    there is room again they work."""
    one, two = two_builds
    tags = small_fs(backend.root / "tags")
    overlays = small_fs(backend.root / "overlays")
    assert backend.tag("dest", one.nvr) is True  # across file systems: copied, renamed
    repo = backend.tag_repo("dest")
    scratch = backend.build("hello", dg.path, dg.commit(version="3.0"), scratch=True)
    backend.overlay("item-1", [scratch])
    before = (repodata(repo), repo_packages(repo))
    overlay_before = (repodata(backend.overlay_repo("item-1")), sorted(os.listdir(overlays.path)))

    tags.fill()
    with pytest.raises(RepositoryWriteError) as exc:
        backend.tag("dest", two.nvr)
    message = str(exc.value)
    assert f"cannot write repository {repo}: No space left on device" in message, message
    assert message.endswith("; it was left as it was")
    assert backend.tagged("dest") == [one.nvr]  # no event recorded
    assert (repodata(repo), repo_packages(repo)) == before
    assert sorted(os.listdir(repo / "Packages")) == [one.nvr]
    assert os.listdir(tags.path / ".staging") == []
    assert exc.value.errno == 28  # an OSError too, with its errno

    overlays.fill()
    with pytest.raises(RepositoryWriteError, match="No space left on device"):
        backend.overlay("item-2", [scratch, one])
    with pytest.raises(RepositoryWriteError, match="No space left on device"):
        backend.overlay("item-1", [scratch, one])
    assert (repodata(backend.overlay_repo("item-1")), sorted(os.listdir(overlays.path))[:2]) == (
        overlay_before[0],
        [".filler", ".staging"],
    )
    assert os.listdir(overlays.path / ".staging") == []
    assert not (backend.overlay_repo("item-2") / "repodata").exists()

    tags.free()
    overlays.free()
    assert backend.tag("dest", two.nvr) is True
    assert repo_packages(repo) == [
        "Packages/hello-1.0-1/hello-1.0-1.noarch.rpm",
        "Packages/hello-2.0-1/hello-2.0-1.noarch.rpm",
    ]
    backend.overlay("item-2", [scratch, one])
    assert len(repo_packages(backend.overlay_repo("item-2"))) == 2


def test_parallel_tagging(backend, dg):
    builds = [
        backend.build("hello", dg.path, dg.commit(version=f"{v}.0"), scratch=False)
        for v in range(1, 5)
    ]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda b: backend.tag("dest", b.nvr), builds + builds))
    assert sorted(results) == [False] * 4 + [True] * 4
    assert sorted(backend.tagged("dest")) == sorted(b.nvr for b in builds)
    ids = [e.event_id for e in backend.history("dest")]
    assert ids == sorted(ids) and len(set(ids)) == 4
    assert len(repo_packages(backend.tag_repo("dest"))) == 4


# -- overlays and dnf -----------------------------------------------------------------------


@pytest.mark.skipif(not os.path.exists(DNF), reason="needs dnf")
def test_overlay_installs_the_items_build_with_dnf(backend, dg, tmp_path):
    released = backend.build("hello", dg.path, dg.commit(version="1.0"), scratch=False)
    backend.tag("dest", released.nvr)
    other = DistGit(tmp_path / "other", name="other")
    other_build = backend.build("other", other.path, other.commit(), scratch=True)
    change = backend.build("hello", dg.path, dg.commit(version="1.1"), scratch=True)

    overlay = backend.overlay("item-1", [change, other_build])
    assert repo_packages(overlay) == [
        f"Packages/{change.key}/hello-1.1-1.noarch.rpm",
        f"Packages/{other_build.key}/other-1.0-1.noarch.rpm",
    ]
    installed = dnf_install(
        tmp_path,
        "overlay",
        f"--repofrompath=item-1,{overlay}",
        "--setopt=item-1.gpgcheck=0",
        f"--repofrompath=dest,{backend.tag_repo('dest')}",
        "--setopt=dest.gpgcheck=0",
    )
    assert installed == "hello-1.1-1.noarch"

    # Rebuilt (an item ahead left the queue): exactly the new list, nothing left over.
    assert backend.overlay("item-1", [other_build]) == overlay
    assert repo_packages(overlay) == [f"Packages/{other_build.key}/other-1.0-1.noarch.rpm"]
    assert [p.name for p in (overlay / "Packages").iterdir()] == [other_build.key]
    backend.drop_overlay("item-1")
    assert not overlay.exists()

    with pytest.raises(InvalidInput, match="two different builds of hello-1.1-1"):
        same_nvr = backend.build("hello", dg.path, dg.commit(version="1.1", text="x"), scratch=True)
        backend.overlay("item-2", [change, same_nvr])


@pytest.mark.skipif(not os.path.exists(DNF), reason="needs dnf")
def test_repo_file_overlay_wins_over_the_base_repository(backend, dg, tmp_path):
    # The base repository has a *newer* hello than the item's scratch build: the overlay's
    # priority still wins, as the item must be tested with its own build.
    newer = backend.build("hello", dg.path, dg.commit(version="2.0"), scratch=False)
    backend.tag("dest", newer.nvr)
    change = backend.build("hello", dg.path, dg.commit(version="1.5"), scratch=True)
    overlay = backend.overlay("item-7", [change])

    text = backend.repo_file("item-7", overlay.as_uri())
    assert "gpgcheck=0" in text.splitlines() and f"baseurl={overlay.as_uri()}" in text
    reposdir = tmp_path / "reposdir-priority"
    reposdir.mkdir()
    (reposdir / "item-7.repo").write_text(text)
    (reposdir / "dest.repo").write_text(
        f"[dest]\nname=dest\nbaseurl={backend.tag_repo('dest').as_uri()}\ngpgcheck=0\n"
    )
    assert dnf_install(tmp_path, "priority") == "hello-1.5-1.noarch"


# -- untrusted input ------------------------------------------------------------------------


@pytest.fixture
def spy_popen(monkeypatch) -> list[tuple[object, dict]]:
    """Every process the backend starts, with the arguments it was started with."""
    calls: list[tuple[object, dict]] = []
    real = subprocess.Popen

    class Spy(real):  # type: ignore[misc,valid-type]
        def __init__(self, args, *a, **kw):
            calls.append((args, kw))
            super().__init__(args, *a, **kw)

    monkeypatch.setattr(subprocess, "Popen", Spy)
    return calls


def test_hostile_inputs_never_reach_a_shell(tmp_path, rpmbuild_wrapper, spy_popen):
    sentinel = tmp_path / "pwned"
    evil = f"$(touch {sentinel}); `touch {sentinel}` | touch {sentinel} && touch {sentinel} '\""
    backend = LocalBackend(tmp_path / "root", rpmbuild=rpmbuild_wrapper)
    commit_like = "a" * 40

    for package in (f"hello;touch {sentinel}", "../../etc", "-rf", "", "a/b", "hello\n"):
        with pytest.raises(InvalidInput):
            backend.build(package, tmp_path, commit_like, scratch=True)
    for commit in (f"$(touch {sentinel})", "HEAD", "main", "-f", "A" * 40):
        with pytest.raises(InvalidInput):
            backend.build("hello", tmp_path, commit, scratch=True)
    with pytest.raises(InvalidInput):
        backend.build("hello", "--upload-pack=touch " + str(sentinel), commit_like, scratch=True)
    for tag in (f"dest;touch {sentinel}", "../builds", ".hidden"):
        with pytest.raises(InvalidInput):
            backend.tagged(tag)
    with pytest.raises(InvalidInput):
        backend.untag("dest", f"x-1-1;touch {sentinel}")
    with pytest.raises(InvalidInput):
        backend.overlay("../tags/dest", [])
    with pytest.raises(InvalidInput):
        backend.repo_file("item", "file:///x\n[evil]\ngpgcheck=0")
    with pytest.raises(InvalidInput):
        backend.repo_file("item]\n[evil", "file:///x")
    assert spy_popen == []  # all refused before running anything

    # A repository whose path and commit message are full of shell syntax builds fine.
    dg = DistGit(tmp_path / "dist git $(touch pwned); `touch pwned` | touch pwned '\"")
    commit = dg.commit(message=evil)
    build = backend.build("hello", dg.path, commit, scratch=True)
    assert build.nvr == "hello-1.0-1"
    build = backend.build("hello", dg.path, commit, scratch=False)
    backend.tag("dest", build.nvr)
    backend.overlay("item-1", [build])

    assert not sentinel.exists()
    assert not list(tmp_path.rglob("pwned")) and not (Path.cwd() / "pwned").exists()
    assert spy_popen  # the backend did start processes...
    for args, kw in spy_popen:
        assert isinstance(args, list) and all(isinstance(a, str) for a in args)
        assert not kw.get("shell")
        assert args[0] not in ("sh", "bash", "/bin/sh", "/bin/bash")
    # ... and the hostile path reached git as one argument.
    assert any(str(dg.path) in args for args, _ in spy_popen)


def test_the_checkout_gives_git_the_repository_and_commit_as_single_arguments(
    tmp_path, monkeypatch
):
    calls: list[list[str]] = []

    def run_logged(argv, log, **kwargs):
        calls.append(list(argv))
        return 0

    monkeypatch.setattr(localbackend, "_run_logged", run_logged)
    backend = LocalBackend(tmp_path / "root")
    repo = "/srv/dist git/$(touch pwned);`id`|x&&y\t'\""
    commit = "0123456789abcdef" * 2 + "01234567"
    work = tmp_path / "work"
    work.mkdir()
    with open(work / "log", "ab") as log:
        checkout = str(backend._checkout("hello", repo, commit, work, log))
    git = ["git", "-c", "protocol.ext.allow=never", "-c", "core.hooksPath=/dev/null"]
    assert calls == [
        [*git, "init", "-q", "--template=", checkout],
        [*git, "-C", checkout, "fetch", "-q", "--no-tags", "--", repo, commit],
        [*git, "-C", checkout, "-c", "advice.detachedHead=false"]
        + ["checkout", "-q", "--detach", commit, "--"],
    ]


@pytest.mark.parametrize("repo", ["-x", "--upload-pack=touch pwned", "a\nb", "a\0b", ""])
def test_a_repository_git_would_read_as_an_option_or_lines_is_refused(tmp_path, repo, spy_popen):
    backend = LocalBackend(tmp_path / "root")
    with pytest.raises(InvalidInput, match="invalid repository"):
        backend.build("hello", repo, "a" * 40, scratch=True)
    assert spy_popen == []
