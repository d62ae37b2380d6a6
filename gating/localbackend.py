"""The embedded default build backend ("local backend"): ``rpmbuild`` and ``createrepo_c`` on
this host, tags kept as local yum repositories, so a small team can gate an RPM repository
with no koji at all.

It plays koji's part for the built-in jobs: ``koji-scratch-build`` makes scratch builds of the
changed packages (cached by (package, commit)) and gathers them into an overlay repository;
``koji-export`` makes the non-scratch build (NVRs are unique: the same NVR from the same commit
is reused, from another commit it is an error) and tags it into the destination repository.

Layout under ``root``::

    builds/<nvr>/                       a non-scratch build: its RPMs, its SRPM, build.log and
                                        build.json (the record, written last)
    builds/scratch/<package>/<commit>/  a scratch build, the same files
    builds/failed/<package>/<commit>/   the logs of failed builds, one per attempt
    tags/<tag>/                         a yum repository: Packages/<nvr>/*.rpm + repodata/
    overlays/<name>/                    a yum repository: Packages/<build key>/*.rpm + repodata/
    tags/.staging/, overlays/.staging/  work directories of the repositories (the same file
                                        system as the repositories, for renames; never served)
    history/<tag>.jsonl                 the tag's events, one JSON object a line, fsync'ed
    state/last_event                    the last event id given out (ids increase over all tags)
    locks/                              flock(2) files: one per tag, build key and overlay
    tmp/                                work directories (on the same file system, for renames)

Repository metadata is replaced atomically: ``createrepo_c`` writes the new repodata in a
temporary directory (in ``.staging/`` next to the repository: on its file system, which
may be another one than the builds', e.g. a volume of its own), its files (whose names
carry their checksum) are moved next to the old ones, then ``repomd.xml`` is replaced by a
rename. A reader sees either the old or the new repomd.xml, and every file either one names
exists: the files of the previous generation are only removed at the next regeneration.
RPMs are added the same way (copied or hard-linked into ``.staging/``, then renamed into
``Packages/``, which no metadata names yet). A write that fails (a full disk: ``No space left
on device``) raises :class:`RepositoryWriteError` naming the repository and the file, and
leaves the repository as it was: its metadata and every file it names are untouched, and
what was half written is removed.

A tag's history is the truth; its repository is derived from it. ``tag()`` and ``untag()``
update the repository first and record the event last, and every call checks that the
repository matches the history (repairing it if not), so a process killed at any point
leaves nothing that a retry does not finish, and a retry never records an event twice.

Everything that comes from a change (the dist-git content, the spec file, names, commit
messages) is untrusted: programs run from argument lists, never through a shell, and names
used in paths are checked first. Note that building runs the spec file's scriptlets (shell
code from the change) as the calling user: give the backend a sandboxing ``rpmbuild`` command
(e.g. a ``bwrap`` or ``systemd-run`` prefix) when the changes are not trusted, or build on a
worker and hand the results to :meth:`LocalBackend.add_build`.

Pure Python, blocking, no Twisted imports: the master calls it from threads. Every operation
takes file locks, so threads and processes can call it in parallel.
"""

from __future__ import annotations

import bz2
import dataclasses
import fcntl
import gzip
import json
import lzma
import os
import re
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from gating.forge import git_env

# Package, tag, overlay names: what RPM names and koji tag names use, without path separators.
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,199}$")
# Version and release: no '-' (it separates the NVR), no '/'.
VR_RE = re.compile(r"^[A-Za-z0-9._+~^]{1,100}$")
NVR_RE = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._+-]*)-([A-Za-z0-9._+~^]+)-([A-Za-z0-9._+~^]+)$")
OID_RE = re.compile(r"^(?:[0-9a-f]{40}|[0-9a-f]{64})$")
MACRO_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

STAGING = ".staging"  # next to the repositories (tags/, overlays/): their work directories
RECORD = "build.json"
LOG = "build.log"
PACKAGES = "Packages"
LOG_TAIL_LINES = 40
GIT_TIMEOUT = 600.0


class BackendError(Exception):
    """A local backend operation failed."""


class InvalidInput(BackendError, ValueError):
    """A name, commit id, URL or macro definition that the backend refuses to use."""


class UnknownBuild(BackendError, LookupError):
    """No (non-scratch) build with this NVR."""


class NVRConflict(BackendError):
    """The NVR was already built from a different commit."""

    def __init__(self, nvr: str, commit: str, existing_commit: str) -> None:
        self.nvr = nvr
        self.commit = commit
        self.existing_commit = existing_commit
        super().__init__(f"NVR {nvr} already built from a different commit: bump Release")


class RepositoryWriteError(BackendError, OSError):
    """A repository could not be written (e.g. the disk is full); it was left as it was."""

    def __init__(self, repo: Path, exc: OSError) -> None:
        where = f" ({exc.filename})" if exc.filename else ""
        super().__init__(
            f"cannot write repository {repo}: {exc.strerror or exc}{where}; it was left as it was"
        )
        self.errno = exc.errno


class BuildFailed(BackendError):
    """A build failed; ``log`` is the kept log file, ``tail`` its last lines."""

    def __init__(self, message: str, log: Path, tail: str) -> None:
        self.log = log
        self.tail = tail
        super().__init__(f"{message}; log: {log}\n{tail}" if tail else f"{message}; log: {log}")


@dataclass(frozen=True)
class LocalBuild:
    package: str  # the dist-git package (project) name
    nvr: str
    name: str  # the SRPM's Name
    version: str
    release: str
    commit: str
    scratch: bool
    path: Path  # the build's directory
    rpms: tuple[Path, ...]  # binary RPMs
    srpm: Path
    log: Path
    time: float  # when it was stored
    reused: bool = field(default=False, compare=False)  # returned from an earlier build

    @property
    def key(self) -> str:
        """Unique over all builds (scratch builds of one NVR may come from several commits)."""
        return f"{self.nvr}~scratch-{self.commit}" if self.scratch else self.nvr

    def record(self) -> dict[str, Any]:
        """The build record with absolute paths, ready for JSON (e.g. a build property)."""
        return {
            "package": self.package,
            "nvr": self.nvr,
            "name": self.name,
            "version": self.version,
            "release": self.release,
            "commit": self.commit,
            "scratch": self.scratch,
            "rpms": [str(p) for p in self.rpms],
            "srpm": str(self.srpm),
            "log": str(self.log),
            "time": self.time,
        }


@dataclass(frozen=True)
class TagEvent:
    event_id: int
    action: str  # "tag" or "untag"
    nvr: str
    time: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "event_id": self.event_id,
            "action": self.action,
            "nvr": self.nvr,
            "time": self.time,
        }


# -- small helpers ------------------------------------------------------------------------


def _check_name(what: str, value: object) -> str:
    if not isinstance(value, str) or not NAME_RE.fullmatch(value):
        raise InvalidInput(f"invalid {what} {value!r}")
    return value


def _check_commit(value: object) -> str:
    if not isinstance(value, str) or not OID_RE.fullmatch(value):
        raise InvalidInput(f"invalid commit {value!r}: a full hexadecimal commit id is needed")
    return value


def _check_nvr(value: object) -> str:
    if not isinstance(value, str) or len(value) > 300 or not NVR_RE.fullmatch(value):
        raise InvalidInput(f"invalid NVR {value!r}")
    return value


def _macro_path(path: Path) -> str:
    """A path as an rpm macro body (a '%' would start a macro)."""
    return str(path).replace("%", "%%")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _link_or_copy(src: Path, dst: Path) -> None:
    """Hard-link (build files are never modified in place), copy across file systems."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 64 * 1024))
            data = f.read()
    except OSError:
        return ""
    return "\n".join(data.decode("utf-8", "replace").splitlines()[-lines:])


@contextmanager
def _flock(path: Path) -> Iterator[None]:
    """An exclusive flock(2): each call opens the file, so it excludes threads too."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _rpm_env() -> dict[str, str]:
    env = dict(os.environ)
    env["LC_ALL"] = "C"
    env.pop("LANGUAGE", None)
    return env


def _run_logged(
    argv: Sequence[str],
    log: BinaryIO,
    *,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float | None = None,
) -> int:
    """Run argv (never through a shell) with its output appended to ``log``; its exit status,
    -1 if it timed out (its whole process group is killed)."""
    log.write(f"$ {shlex.join(argv)}\n".encode("utf-8", "surrogateescape"))
    log.flush()
    try:
        proc = subprocess.Popen(
            list(argv),
            cwd=cwd,
            env=dict(env) if env is not None else None,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    except OSError as e:
        log.write(f"cannot run {argv[0]}: {e}\n".encode())
        log.flush()
        return 127
    rc: int | None = None
    try:
        rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        log.write(f"\n*** {argv[0]} timed out after {timeout} s, killed\n".encode())
    finally:
        if rc is None:  # timed out, or interrupted: nothing of it may outlive the call
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
    log.flush()
    return -1 if rc is None else rc


def _rpm_query(path: Path, fmt: str) -> str:
    proc = subprocess.run(
        ["rpm", "-qp", "--nosignature", "--qf", fmt, "--", str(path)],
        capture_output=True,
        env=_rpm_env(),
        check=False,
    )
    if proc.returncode != 0:
        err = proc.stderr.decode("utf-8", "replace").strip()
        raise BackendError(f"cannot read the header of {path.name}: {err}")
    return proc.stdout.decode("utf-8", "replace")


def _srpm_nvr(srpm: Path) -> tuple[str, str, str]:
    out = _rpm_query(srpm, "%{NAME}\n%{VERSION}\n%{RELEASE}\n%{SOURCERPM}\n").split("\n")
    name, version, release, sourcerpm = (out + ["", "", "", ""])[:4]
    if sourcerpm != "(none)":
        raise BackendError(f"{srpm.name} is not a source RPM")
    return _checked_nvr(name, version, release, srpm.name)


def _checked_nvr(name: str, version: str, release: str, what: str) -> tuple[str, str, str]:
    if not (NAME_RE.fullmatch(name) and VR_RE.fullmatch(version) and VR_RE.fullmatch(release)):
        raise BackendError(f"{what}: unusable NVR {name!r}-{version!r}-{release!r}")
    return name, version, release


def _repomd_files(repomd: Path) -> set[str]:
    """The file names under repodata/ that a repomd.xml names (empty if there is none)."""
    try:
        root = ET.parse(repomd).getroot()
    except (OSError, ET.ParseError):
        return set()
    names = set()
    for el in root.iter():
        if el.tag.rsplit("}", 1)[-1] == "location":
            href = el.get("href", "")
            if href.startswith("repodata/") and "/" not in href[len("repodata/") :]:
                names.add(href[len("repodata/") :])
    return names


def _primary_hrefs(repo: Path) -> set[str] | None:
    """The package locations of a repository's primary metadata, None if it has none (or
    none that can be read here)."""
    ns = "{http://linux.duke.edu/metadata/repo}"
    try:
        repomd = ET.parse(repo / "repodata" / "repomd.xml").getroot()
        (href,) = [
            loc.get("href", "")
            for data in repomd.iter(f"{ns}data")
            if data.get("type") == "primary"
            for loc in data.iter(f"{ns}location")
        ]
        opener = {".gz": gzip.open, ".xz": lzma.open, ".bz2": bz2.open}.get(Path(href).suffix)
        if opener is None or "/" not in href or ".." in href.split("/"):
            return None
        hrefs = set()
        with opener(repo / href, "rb") as f:
            for _, el in ET.iterparse(f):
                if el.tag == "{http://linux.duke.edu/metadata/common}location":
                    hrefs.add(el.get("href", ""))
                elif el.tag == "{http://linux.duke.edu/metadata/common}package":
                    el.clear()
        return hrefs
    except (OSError, ValueError, EOFError, ET.ParseError, lzma.LZMAError):
        return None


# -- the backend ---------------------------------------------------------------------------


class LocalBackend:
    """Builds, tags and overlay repositories under ``root`` (see the module docstring).

    ``defines``: rpm macros for every build (e.g. ``{"dist": ".el9"}``);
    ``check_build_deps``: False passes ``--nodeps`` to rpmbuild (hosts whose rpm database
    does not hold the build dependencies, e.g. Debian);
    ``rpmbuild``, ``createrepo``: the commands (argument lists, e.g. with a sandbox prefix).
    """

    def __init__(
        self,
        root: Path | str,
        *,
        defines: Mapping[str, str] | None = None,
        check_build_deps: bool = True,
        rpmbuild: Sequence[str] = ("rpmbuild",),
        createrepo: Sequence[str] = ("createrepo_c",),
        build_timeout: float | None = 6 * 3600.0,
    ) -> None:
        self.root = Path(root).absolute()
        self.defines = dict(defines or {})
        for name, value in self.defines.items():
            if not MACRO_RE.fullmatch(name) or "\n" in value or "\r" in value:
                raise InvalidInput(f"invalid rpm macro definition {name!r}: {value!r}")
        self.check_build_deps = check_build_deps
        self.rpmbuild = tuple(rpmbuild)
        self.createrepo = tuple(createrepo)
        self.build_timeout = build_timeout
        for sub in ("builds", "tags", "overlays", "history", "state", "locks", "tmp"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)

    # -- paths

    def build_dir(self, nvr: str) -> Path:
        return self.root / "builds" / _check_nvr(nvr)

    def scratch_dir(self, package: str, commit: str) -> Path:
        return (
            self.root
            / "builds"
            / "scratch"
            / _check_name("package", package)
            / _check_commit(commit)
        )

    def tag_repo(self, tag: str) -> Path:
        """The directory of the tag's yum repository (it may not exist yet)."""
        return self.root / "tags" / _check_name("tag", tag)

    def overlay_repo(self, name: str) -> Path:
        return self.root / "overlays" / _check_name("overlay name", name)

    def _history_file(self, tag: str) -> Path:
        return self.root / "history" / f"{_check_name('tag', tag)}.jsonl"

    def _lock(self, kind: str, key: str) -> Path:
        return self.root / "locks" / kind / f"{key}.lock"

    # -- builds

    def get_build(self, nvr: str) -> LocalBuild | None:
        """The non-scratch build of ``nvr``, None if there is none."""
        return self._load(self.build_dir(nvr))

    def get_scratch_build(self, package: str, commit: str) -> LocalBuild | None:
        return self._load(self.scratch_dir(package, commit))

    def builds(self) -> list[LocalBuild]:
        """Every non-scratch build, oldest first."""
        found = []
        for d in (self.root / "builds").iterdir():
            if NVR_RE.fullmatch(d.name):
                build = self._load(d)
                if build is not None:
                    found.append(build)
        return sorted(found, key=lambda b: (b.time, b.nvr))

    def _load(self, path: Path) -> LocalBuild | None:
        try:
            rec = json.loads((path / RECORD).read_text())
        except FileNotFoundError:
            return None
        return LocalBuild(
            package=rec["package"],
            nvr=rec["nvr"],
            name=rec["name"],
            version=rec["version"],
            release=rec["release"],
            commit=rec["commit"],
            scratch=rec["scratch"],
            path=path,
            rpms=tuple(path / r for r in rec["rpms"]),
            srpm=path / rec["srpm"],
            log=path / rec["log"],
            time=rec["time"],
        )

    def build(self, package: str, repo: str | Path, commit: str, *, scratch: bool) -> LocalBuild:
        """Build ``package`` from the dist-git repository ``repo`` (a path or URL) at
        ``commit``: one ``*.spec`` at the top level, the other files are its sources.

        A scratch build is cached by (package, commit). A non-scratch build of an NVR that
        exists already is returned as is if it was built from ``commit`` (``reused`` is
        True), and raises NVRConflict otherwise. A failed build raises BuildFailed.
        """
        _check_name("package", package)
        _check_commit(commit)
        repo_arg = str(repo)
        if isinstance(repo, Path) or os.path.exists(repo_arg):
            repo_arg = os.path.abspath(repo_arg)  # git runs in the checkout
        if not repo_arg or repo_arg.startswith("-") or "\n" in repo_arg or "\0" in repo_arg:
            raise InvalidInput(f"invalid repository {repo_arg!r}")
        if scratch:
            return self._scratch_build(package, repo_arg, commit)
        return self._release_build(package, repo_arg, commit)

    def _scratch_build(self, package: str, repo: str, commit: str) -> LocalBuild:
        final = self.scratch_dir(package, commit)
        cached = self._load(final)
        if cached is not None:
            return _reused(cached)
        with _flock(self._lock("scratch", f"{package}@{commit}")):
            cached = self._load(final)
            if cached is not None:
                return _reused(cached)
            with self._workdir() as work, open(work / LOG, "ab") as log:
                checkout = self._checkout(package, repo, commit, work, log)
                spec = self._find_spec(package, commit, checkout, work, log)
                srpm, rpms = self._rpmbuild(package, commit, spec, checkout, work, log)
                name, version, release = _srpm_nvr(srpm)
                log.close()
                return self._store(
                    final, package, commit, True, (name, version, release), srpm, rpms, work / LOG
                )

    def _release_build(self, package: str, repo: str, commit: str) -> LocalBuild:
        with self._workdir() as work, open(work / LOG, "ab") as log:
            checkout = self._checkout(package, repo, commit, work, log)
            spec = self._find_spec(package, commit, checkout, work, log)
            name, version, release = self._spec_nvr(package, commit, spec, checkout, work, log)
            nvr = f"{name}-{version}-{release}"
            with _flock(self._lock("builds", nvr)):
                existing = self.get_build(nvr)
                if existing is not None:
                    return _reuse_or_conflict(existing, commit)
                srpm, rpms = self._rpmbuild(package, commit, spec, checkout, work, log)
                built = _srpm_nvr(srpm)
                if built != (name, version, release):
                    log.write(f"*** the spec file said {nvr}, rpmbuild made {srpm.name}\n".encode())
                    log.close()
                    raise self._failed(
                        package, commit, work / LOG, "the NVR changed while building"
                    )
                log.close()
                return self._store(
                    self.build_dir(nvr), package, commit, False, built, srpm, rpms, work / LOG
                )

    def add_build(
        self,
        package: str,
        commit: str,
        srpm: Path,
        rpms: Sequence[Path],
        log: Path | None = None,
        *,
        scratch: bool,
    ) -> LocalBuild:
        """Keep a build made elsewhere (e.g. by rpmbuild on a worker) as if built here; the
        NVR is read from the SRPM, and the same reuse and conflict rules apply."""
        _check_name("package", package)
        _check_commit(commit)
        srpm = Path(srpm)
        name, version, release = _srpm_nvr(srpm)
        for rpm in rpms:
            source = _rpm_query(Path(rpm), "%{SOURCERPM}").strip()
            if source != srpm.name:
                raise BackendError(f"{Path(rpm).name} was built from {source}, not {srpm.name}")
        nvr = f"{name}-{version}-{release}"
        if scratch:
            final, lock = (
                self.scratch_dir(package, commit),
                self._lock("scratch", f"{package}@{commit}"),
            )
        else:
            final, lock = self.build_dir(nvr), self._lock("builds", nvr)
        with _flock(lock), self._workdir() as work:
            existing = self._load(final)
            if existing is not None:
                return _reused(existing) if scratch else _reuse_or_conflict(existing, commit)
            files = []
            for src in [srpm, *rpms]:
                dst = work / Path(src).name
                shutil.copy2(src, dst)
                files.append(dst)
            if log is not None:
                shutil.copy2(log, work / LOG)
            else:
                (work / LOG).write_bytes(b"")
            return self._store(
                final,
                package,
                commit,
                scratch,
                (name, version, release),
                files[0],
                files[1:],
                work / LOG,
            )

    @contextmanager
    def _workdir(self) -> Iterator[Path]:
        work = Path(tempfile.mkdtemp(prefix="work-", dir=self.root / "tmp"))
        try:
            yield work
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def _failed(self, package: str, commit: str, log: Path, message: str) -> BuildFailed:
        """Keep the log of a failed build under builds/failed/ and make the exception."""
        keep_dir = self.root / "builds" / "failed" / package / commit
        keep_dir.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        kept = keep_dir / f"{stamp}-{os.getpid()}-{time.monotonic_ns()}.log"
        shutil.copyfile(log, kept)
        return BuildFailed(f"build of {package} at {commit[:12]}: {message}", kept, _tail(kept))

    def _checkout(self, package: str, repo: str, commit: str, work: Path, log: BinaryIO) -> Path:
        checkout = work / "checkout"
        env = git_env()
        git = ["git", "-c", "protocol.ext.allow=never", "-c", "core.hooksPath=/dev/null"]
        init = [*git, "init", "-q", "--template=", str(checkout)]
        fetch = [*git, "-C", str(checkout), "fetch", "-q", "--no-tags", "--", repo]
        has_commit = [*git, "-C", str(checkout), "cat-file", "-e", f"{commit}^{{commit}}"]

        def run(argv: list[str]) -> bool:
            return _run_logged(argv, log, env=env, timeout=GIT_TIMEOUT) == 0

        ok = run(init) and (
            run([*fetch, commit])
            # A server that refuses a commit id it does not advertise: fetch every ref.
            or (run([*fetch, "+refs/*:refs/fetched/*"]) and run(has_commit))
        )
        if not ok:
            log.close()
            raise self._failed(package, commit, work / LOG, f"cannot fetch {commit} from {repo}")
        checkout_argv = [
            *git,
            "-C",
            str(checkout),
            "-c",
            "advice.detachedHead=false",
            "checkout",
            "-q",
            "--detach",
            commit,
            "--",
        ]
        if _run_logged(checkout_argv, log, env=env, timeout=GIT_TIMEOUT) != 0:
            log.close()
            raise self._failed(package, commit, work / LOG, f"cannot check out {commit}")
        return checkout

    def _find_spec(
        self, package: str, commit: str, checkout: Path, work: Path, log: BinaryIO
    ) -> Path:
        specs = sorted(
            p
            for p in checkout.iterdir()
            if p.name.endswith(".spec") and p.is_file() and not p.is_symlink()
        )
        if len(specs) != 1:
            names = ", ".join(p.name for p in specs) or "none"
            log.write(
                f"*** need exactly one *.spec file at the top level, found: {names}\n".encode()
            )
            log.close()
            raise self._failed(
                package, commit, work / LOG, f"need exactly one *.spec file, found {names}"
            )
        return specs[0]

    def _rpm_defines(self, checkout: Path) -> list[str]:
        args = ["--define", f"_sourcedir {_macro_path(checkout)}"]
        for name, value in self.defines.items():
            args += ["--define", f"{name} {value}"]
        return args

    def _spec_nvr(
        self, package: str, commit: str, spec: Path, checkout: Path, work: Path, log: BinaryIO
    ) -> tuple[str, str, str]:
        argv = [
            "rpmspec",
            "-q",
            "--srpm",
            "--qf",
            "%{NAME}\\n%{VERSION}\\n%{RELEASE}\\n",
            *self._rpm_defines(checkout),
            str(spec),
        ]
        log.write(f"$ {shlex.join(argv)}\n".encode("utf-8", "surrogateescape"))
        try:
            proc = subprocess.run(
                argv,
                cwd=checkout,
                capture_output=True,
                env=_rpm_env(),
                check=False,
                stdin=subprocess.DEVNULL,
                timeout=GIT_TIMEOUT,
            )
        except subprocess.TimeoutExpired:
            log.write(f"*** rpmspec timed out after {GIT_TIMEOUT} s\n".encode())
            log.close()
            raise self._failed(package, commit, work / LOG, "rpmspec timed out") from None
        log.write(proc.stderr)
        log.write(proc.stdout)
        lines = proc.stdout.decode("utf-8", "replace").split("\n")
        if proc.returncode != 0 or len(lines) < 3:
            log.close()
            raise self._failed(package, commit, work / LOG, f"cannot parse {spec.name}")
        try:
            return _checked_nvr(lines[0], lines[1], lines[2], spec.name)
        except BackendError as e:
            log.write(f"*** {e}\n".encode())
            log.close()
            raise self._failed(package, commit, work / LOG, str(e)) from None

    def _rpmbuild(
        self, package: str, commit: str, spec: Path, checkout: Path, work: Path, log: BinaryIO
    ) -> tuple[Path, list[Path]]:
        top = work / "top"
        argv = [
            *self.rpmbuild,
            "-ba",
            "--define",
            f"_topdir {_macro_path(top)}",
            "--define",
            f"_rpmdir {_macro_path(top / 'RPMS')}",
            "--define",
            f"_srcrpmdir {_macro_path(top / 'SRPMS')}",
            *self._rpm_defines(checkout),
        ]
        if not self.check_build_deps:
            argv.append("--nodeps")
        argv.append(str(spec))
        rc = _run_logged(argv, log, cwd=checkout, env=_rpm_env(), timeout=self.build_timeout)
        if rc != 0:
            log.close()
            why = "rpmbuild timed out" if rc == -1 else f"rpmbuild failed (exit status {rc})"
            raise self._failed(package, commit, work / LOG, why)
        srpms = sorted((top / "SRPMS").glob("*.src.rpm"))
        rpms = sorted(p for p in (top / "RPMS").rglob("*.rpm") if p.is_file())
        if len(srpms) != 1 or not rpms:
            log.write(f"*** expected one SRPM and some RPMs, got {srpms} and {rpms}\n".encode())
            log.close()
            raise self._failed(package, commit, work / LOG, "rpmbuild made no packages")
        return srpms[0], rpms

    def _store(
        self,
        final: Path,
        package: str,
        commit: str,
        scratch: bool,
        nvr_parts: tuple[str, str, str],
        srpm: Path,
        rpms: Sequence[Path],
        log: Path,
    ) -> LocalBuild:
        """Move the results into place: a staging directory renamed to ``final``, with the
        record written (and everything fsync'ed) before the rename."""
        name, version, release = nvr_parts
        stage = Path(tempfile.mkdtemp(prefix="store-", dir=self.root / "tmp"))
        try:
            names = []
            for src in [srpm, *rpms, log]:
                dst = stage / src.name
                if dst.exists():
                    raise BackendError(f"two result files named {src.name}")
                os.replace(src, dst)
                os.chmod(dst, 0o644)
                _fsync_file(dst)
                names.append(src.name)
            now = time.time()
            record = {
                "package": package,
                "nvr": f"{name}-{version}-{release}",
                "name": name,
                "version": version,
                "release": release,
                "commit": commit,
                "scratch": scratch,
                "rpms": names[1:-1],
                "srpm": names[0],
                "log": names[-1],
                "time": now,
            }
            _write_atomic(stage / RECORD, json.dumps(record, indent=1, sort_keys=True).encode())
            os.chmod(stage, 0o755)
            final.parent.mkdir(parents=True, exist_ok=True)
            os.rename(stage, final)
            _fsync_dir(final.parent)
        except BaseException:
            shutil.rmtree(stage, ignore_errors=True)
            raise
        build = self._load(final)
        assert build is not None
        return build

    # -- tags

    def ensure_tag(self, tag: str) -> Path:
        """Make the tag's repository if it does not exist (an empty repository is a valid
        base repository for the workers); its path."""
        with _flock(self._lock("tags", tag)):
            self._sync_tag(tag, self.tagged(tag), force=False)
        return self.tag_repo(tag)

    def tag(self, tag: str, nvr: str) -> bool:
        """Add the build's RPMs to the tag's repository; False (and nothing recorded) if it
        is tagged already."""
        build = self.get_build(nvr)
        if build is None:
            raise UnknownBuild(f"no build {nvr}")
        with _flock(self._lock("tags", tag)):
            current = self.tagged(tag)
            if nvr in current:
                self._sync_tag(tag, current, force=False)  # repair only: history is the truth
                return False
            self._sync_tag(tag, [*current, nvr])
            self._append_event(tag, "tag", nvr)
            return True

    def untag(self, tag: str, nvr: str) -> bool:
        """Remove the build's RPMs from the tag's repository; False if it is not tagged."""
        _check_nvr(nvr)
        with _flock(self._lock("tags", tag)):
            current = self.tagged(tag)
            if nvr not in current:
                if self.tag_repo(tag).exists():
                    self._sync_tag(tag, current, force=False)
                return False
            self._sync_tag(tag, [n for n in current if n != nvr])
            self._append_event(tag, "untag", nvr)
            return True

    def tagged(self, tag: str) -> list[str]:
        """The NVRs in the tag, in the order they were tagged."""
        current: list[str] = []
        for event in self.history(tag):
            if event.action == "tag" and event.nvr not in current:
                current.append(event.nvr)
            elif event.action == "untag" and event.nvr in current:
                current.remove(event.nvr)
        return current

    def history(self, tag: str) -> list[TagEvent]:
        """The tag's events, oldest first (event ids increase over all tags)."""
        try:
            data = self._history_file(tag).read_bytes()
        except FileNotFoundError:
            return []
        events = []
        lines = data.split(b"\n")
        for i, line in enumerate(lines):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except ValueError:
                if i == len(lines) - 1:
                    break  # a torn last line: the write never finished, nothing happened
                raise BackendError(f"corrupt history of tag {tag}, line {i + 1}") from None
            events.append(TagEvent(rec["event_id"], rec["action"], rec["nvr"], rec["time"]))
        return events

    def _next_event_id(self) -> int:
        counter = self.root / "state" / "last_event"
        with _flock(self._lock("state", "events")):
            try:
                last = int(counter.read_text().strip() or 0)
            except FileNotFoundError:
                last = 0
            _write_atomic(counter, f"{last + 1}\n".encode())
            return last + 1

    def _append_event(self, tag: str, action: str, nvr: str) -> TagEvent:
        event = TagEvent(self._next_event_id(), action, nvr, time.time())
        path = self._history_file(tag)
        created = not path.exists()
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            size = os.lseek(fd, 0, os.SEEK_END)
            if size:
                # Drop a torn last line (a write that never finished) before appending.
                os.lseek(fd, max(0, size - 65536), os.SEEK_SET)
                chunk = os.read(fd, 65536)
                if not chunk.endswith(b"\n"):
                    keep = size - len(chunk) + chunk.rfind(b"\n") + 1
                    os.ftruncate(fd, keep)
                    size = keep
            line = json.dumps(event.as_dict(), sort_keys=True).encode() + b"\n"
            os.lseek(fd, size, os.SEEK_SET)
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)
        if created:
            _fsync_dir(path.parent)
        return event

    def _sync_tag(self, tag: str, nvrs: Sequence[str], *, force: bool = True) -> None:
        wanted: dict[str, list[Path]] = {}
        for nvr in nvrs:
            build = self.get_build(nvr)
            if build is None:
                raise UnknownBuild(f"tag {tag} holds {nvr}, which has no build")
            wanted[build.key] = list(build.rpms)
        self._sync_repo(self.tag_repo(tag), wanted, reuse_metadata=True, force=force)

    # -- overlays

    def overlay(self, name: str, builds: Sequence[LocalBuild]) -> Path:
        """Make (or replace the contents of) the overlay repository ``name`` so that it holds
        exactly these builds' RPMs; its directory."""
        wanted: dict[str, list[Path]] = {}
        seen: dict[str, str] = {}
        for build in builds:
            if seen.get(build.nvr, build.key) != build.key:
                raise InvalidInput(f"overlay {name}: two different builds of {build.nvr}")
            seen[build.nvr] = build.key
            wanted[build.key] = list(build.rpms)
        with _flock(self._lock("overlays", _check_name("overlay name", name))):
            # Scratch builds of one NVR from two commits share file names: no metadata reuse.
            self._sync_repo(self.overlay_repo(name), wanted, reuse_metadata=False)
        return self.overlay_repo(name)

    def drop_overlay(self, name: str) -> None:
        with _flock(self._lock("overlays", _check_name("overlay name", name))):
            path = self.overlay_repo(name)
            if path.exists():
                self._discard(path)

    @staticmethod
    def repo_file(name: str, url: str) -> str:
        """The text of a ``.repo`` file for an overlay served at ``url``: no GPG check, and a
        priority that makes its packages win over the base repositories'."""
        _check_name("repository id", name)
        if not re.fullmatch(r"(?:https?|file|ftp)://[^\s]+", url):
            raise InvalidInput(f"invalid repository URL {url!r}")
        return (
            f"[{name}]\n"
            f"name=buildbot-gating overlay {name}\n"
            f"baseurl={url}\n"
            "enabled=1\n"
            "gpgcheck=0\n"
            "repo_gpgcheck=0\n"
            "priority=1\n"
            "cost=1\n"
            "metadata_expire=0\n"
            "skip_if_unavailable=0\n"
            "module_hotfixes=1\n"
        )

    # -- repositories

    def _sync_repo(
        self,
        repo: Path,
        wanted: Mapping[str, Sequence[Path]],
        *,
        reuse_metadata: bool,
        force: bool = True,
    ) -> None:
        """Make ``repo`` hold exactly ``wanted`` (subdirectory of Packages/ -> RPM files),
        with fresh metadata swapped in atomically; without ``force``, only if the repository
        does not hold exactly that already. The caller holds the repository's lock."""
        try:
            self._sync_repo_files(repo, wanted, reuse_metadata=reuse_metadata, force=force)
        except RepositoryWriteError:
            raise
        except OSError as exc:  # e.g. ENOSPC: nothing half written is named by the metadata
            raise RepositoryWriteError(repo, exc) from exc

    def _sync_repo_files(
        self,
        repo: Path,
        wanted: Mapping[str, Sequence[Path]],
        *,
        reuse_metadata: bool,
        force: bool,
    ) -> None:
        packages = repo / PACKAGES
        packages.mkdir(parents=True, exist_ok=True)
        present = {p.name for p in packages.iterdir()}
        changed = force or bool(present - set(wanted))
        # 1. Add what is missing (the current metadata does not name it: readers never see it).
        for key, files in wanted.items():
            dest = packages / key
            if key in present and sorted(p.name for p in dest.iterdir()) == sorted(
                f.name for f in files
            ):
                continue
            changed = True
            stage = self._staging(repo, "pkgs-")
            try:
                for f in files:
                    _link_or_copy(f, stage / f.name)
                os.chmod(stage, 0o755)
                if dest.exists():
                    self._discard(dest, repo)
                os.rename(stage, dest)
            except BaseException:
                shutil.rmtree(stage, ignore_errors=True)
                raise
        # 2. New metadata naming exactly the wanted files, swapped in (also when the files
        # were all there but the metadata is not theirs: a run killed before the swap).
        hrefs = {f"{PACKAGES}/{key}/{f.name}" for key, files in wanted.items() for f in files}
        if changed or _primary_hrefs(repo) != hrefs:
            self._createrepo(repo, wanted, reuse_metadata)
        # 3. Remove what is no longer named.
        for name in present - set(wanted):
            self._discard(packages / name, repo)

    @staticmethod
    def _staging(repo: Path, prefix: str) -> Path:
        """A new work directory on the file system of the repository ``repo`` (renames
        from it are atomic), in ``.staging/`` next to it (never served, never named by
        any metadata)."""
        folder = repo.parent / STAGING
        folder.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=prefix, dir=folder))

    def _discard(self, path: Path, repo: Path | None = None) -> None:
        """Remove a directory of the repository ``repo`` (``path`` itself by default):
        renamed away first, so it disappears at once."""
        trash = self._staging(repo or path, "trash-")
        os.rename(path, trash / path.name)
        shutil.rmtree(trash, ignore_errors=True)

    def _createrepo(
        self, repo: Path, wanted: Mapping[str, Sequence[Path]], reuse_metadata: bool
    ) -> None:
        out = self._staging(repo, "repodata-")
        try:
            pkglist = out / "pkglist"
            pkglist.write_text(
                "".join(
                    f"{PACKAGES}/{key}/{f.name}\n" for key in sorted(wanted) for f in wanted[key]
                )
            )
            argv = [*self.createrepo, "--quiet", "--pkglist", str(pkglist)]
            if reuse_metadata and (repo / "repodata" / "repomd.xml").exists():
                argv += ["--update", "--update-md-path", str(repo)]
            argv += ["--outputdir", str(out / "o"), "--", str(repo)]
            (out / "o").mkdir()
            proc = subprocess.run(
                argv, capture_output=True, env=_rpm_env(), check=False, stdin=subprocess.DEVNULL
            )
            if proc.returncode != 0:
                err = (proc.stderr or proc.stdout).decode("utf-8", "replace").strip()
                raise BackendError(f"createrepo_c failed for {repo}: {err}")
            self._publish_repodata(repo / "repodata", out / "o" / "repodata")
        finally:
            shutil.rmtree(out, ignore_errors=True)

    @staticmethod
    def _publish_repodata(dest: Path, new: Path) -> None:
        dest.mkdir(exist_ok=True)
        previous = _repomd_files(dest / "repomd.xml")
        current = _repomd_files(new / "repomd.xml")
        for name in current:
            if not (dest / name).exists():  # names carry checksums: same name, same content
                _fsync_file(new / name)
                os.replace(new / name, dest / name)
        _fsync_dir(dest)
        _fsync_file(new / "repomd.xml")
        os.replace(new / "repomd.xml", dest / "repomd.xml")
        _fsync_dir(dest)
        # Keep the previous generation for readers that fetched the old repomd.xml just now.
        for path in dest.iterdir():
            if path.name != "repomd.xml" and path.name not in current | previous:
                if path.is_dir():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)


def _reused(build: LocalBuild) -> LocalBuild:
    return dataclasses.replace(build, reused=True)


def _reuse_or_conflict(existing: LocalBuild, commit: str) -> LocalBuild:
    if existing.commit != commit:
        raise NVRConflict(existing.nvr, commit, existing.commit)
    return _reused(existing)
