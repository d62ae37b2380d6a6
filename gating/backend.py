"""The build backend interface of the built-in jobs, and its two implementations.

* :class:`LocalBuildBackend`: the embedded default (:mod:`gating.localbackend`): builds are
  made by ``rpmbuild`` on a worker and handed in with :meth:`~LocalBuildBackend.add_build`
  (or built on this host with ``scratch_build``/``release_build`` where that is trusted),
  tags are local yum repositories;
* :class:`KojiBuildBackend`: a koji hub through :mod:`gating.kojiclient` (the real ``koji``
  client library): scratch and non-scratch builds from SCM, tags, repos, tag history.
  Scratch RPMs are downloaded from the hub and kept in a local cache (a
  :class:`~gating.localbackend.LocalBackend`), which also makes the overlay repositories.

A koji hub that does not answer (connection refused, timeouts, HTTP 5xx, ``ServerOffline``)
is waited for, with a capped exponential back-off, for up to ``outage-timeout`` (6 hours by
default; :mod:`gating.outage`): the builds and the export in progress simply take longer, and
:meth:`KojiBuildBackend.hub_outage` tells the gate page why. A koji fault (a failed task,
"bump Release", permission denied) raises at once, with koji's text.

Both follow koji's rules: a scratch build is made once per (package, commit); a non-scratch
NVR is unique: the same NVR from the same commit is reused, from another commit it is an
error ("bump Release"); tagging a build twice tags it once.

:func:`make_backend` makes the backend a site's ``backend:`` section (:class:`BackendConfig`)
asks for. Secrets are passed in by name and value; their values never appear in a repr or an
error message.

Pure Python, blocking, no Twisted imports: the master calls it from threads.
"""

from __future__ import annotations

import dataclasses
import re
import tempfile
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import koji

from gating.kojiclient import (
    KojiConfigError,
    KojiError,
    KojiSession,
    KojiSettings,
    KojiTaskFailed,
    RetryPolicy,
)
from gating.localbackend import BackendError, LocalBackend, LocalBuild, NVRConflict
from gating.outage import DEFAULT_OUTAGE_TIMEOUT, DEFAULT_RETRY_MAX, HubOutage

__all__ = [
    "BackendConfig",
    "BackendConfigError",
    "BuildBackend",
    "KojiBuildBackend",
    "LocalBuildBackend",
    "Release",
    "TagChange",
    "make_backend",
]

BACKEND_KINDS = ("local", "koji")
EXPORT_MODES = ("rebuild", "promote")
_BUILD_COMPLETE = koji.BUILD_STATES["COMPLETE"]
# How often a release build is started again after the NVR was busy (another task was
# building it): then that task's outcome decides.
_RELEASE_ATTEMPTS = 3


class BackendConfigError(BackendError, ValueError):
    """The backend settings cannot work (the message names the setting)."""


@dataclass(frozen=True)
class BackendConfig:
    """The site's ``backend:`` section (see :mod:`gating.site`). Secrets are names only:
    ``password_secret`` names a Buildbot secret, looked up by :func:`make_backend`.

    ``outage_timeout``: how long (seconds) a koji call waits for an unreachable hub before
    it fails (:class:`RetryPolicy` ``total``; default 6 hours); ``outage_retry_max``: the
    longest wait between two attempts (the cap of the exponential back-off)."""

    kind: str = "local"
    profile: str | None = None
    server: str | None = None
    topurl: str | None = None
    weburl: str | None = None
    auth: str | None = None
    user: str | None = None
    password_secret: str | None = None
    cert: str | None = None
    serverca: str | None = None
    principal: str | None = None
    keytab: str | None = None
    target: str | None = None
    scratch_target: str | None = None
    destination_tag: str = "dist"
    candidate_tag: str | None = None
    mode: str = "rebuild"
    poll_interval: float = 5.0
    defines: tuple[tuple[str, str], ...] = ()
    check_build_deps: bool = True
    build_arch: str = "x86_64"
    outage_timeout: float = DEFAULT_OUTAGE_TIMEOUT
    outage_retry_max: float = DEFAULT_RETRY_MAX
    # Where koji's builders clone a project from: a template with {project}; None: the
    # master's SCM mirror as a file URL (a hub on the master's host).
    scm_url: str | None = None


@dataclass(frozen=True)
class Release:
    """A non-scratch build. ``reused``: it existed already, built from this same commit;
    ``url``: koji: the task's page (or work directory); local: the build directory."""

    package: str
    commit: str
    nvr: str
    reused: bool = False
    task_id: int | None = None
    url: str = ""


@dataclass(frozen=True)
class TagChange:
    """A build tagged into (``action`` ``"tag"``) or untagged from (``"untag"``) a tag."""

    event_id: int
    time: float
    tag: str
    nvr: str
    action: str


class BuildBackend(Protocol):
    """What the built-in jobs need of a build backend (blocking; call from threads)."""

    kind: str  # "local" or "koji"
    builds_on_worker: bool  # the glue runs rpmbuild on a worker, then add_build
    scratch_root: Path  # where scratch RPMs are kept locally (a LocalBackend root)

    def find_scratch(self, package: str, commit: str) -> LocalBuild | None: ...

    def scratch_build(self, package: str, scm_url: str, commit: str) -> LocalBuild: ...

    def add_build(
        self,
        package: str,
        commit: str,
        srpm: Path,
        rpms: Sequence[Path],
        log: Path | None,
        *,
        scratch: bool,
    ) -> LocalBuild: ...

    def find_release(self, package: str, commit: str) -> Release | None: ...

    def release_build(self, package: str, scm_url: str, commit: str) -> Release: ...

    def tag(self, tag: str, nvr: str) -> bool: ...

    def untag(self, tag: str, nvr: str) -> bool: ...

    def tagged(self, tag: str) -> list[str]: ...

    def publish_repo(self, tag: str) -> str: ...

    def history(self, tag: str) -> list[TagChange]: ...

    def overlay(self, name: str, builds: Sequence[LocalBuild]) -> Path: ...

    def drop_overlay(self, name: str) -> None: ...

    def tag_repo_url(self, tag: str, arch: str, local_base_url: str) -> str: ...

    def hub_outage(self) -> HubOutage | None: ...


# -- helpers ------------------------------------------------------------------------------


def _reused(build: LocalBuild) -> LocalBuild:
    return build if build.reused else dataclasses.replace(build, reused=True)


def _scm_location(scm_url: str) -> str:
    """Where git fetches from: ``git+file:///p#c`` -> ``/p``, ``git+https://h/p#c`` ->
    ``https://h/p``; a plain path stays as it is."""
    url = scm_url.split("#", 1)[0]
    if url.startswith("git+"):
        url = url[len("git+") :]
    if url.startswith("file://"):
        url = url[len("file://") :]
    return url


def _source_commit(source: Any) -> str | None:
    """The commit of a koji build's ``source`` (``git+<url>#<commit>``)."""
    if not isinstance(source, str) or "#" not in source:
        return None
    return source.rsplit("#", 1)[1] or None


def _nvr_from_exists(text: str) -> str | None:
    """The NVR in koji's "Build already exists (id=.., state=..): {'name': .., ...}"."""
    parts = []
    for key in ("name", "version", "release"):
        found = re.search(rf"'{key}': '([^']+)'", text)
        if found is None:
            return None
        parts.append(found.group(1))
    return "-".join(parts)


class _KeyLocks:
    """One threading lock per key, dropped when no thread holds or waits for it."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[tuple[str, ...], tuple[threading.Lock, int]] = {}

    @contextmanager
    def hold(self, *key: str) -> Iterator[None]:
        with self._guard:
            lock, users = self._locks.get(key, (threading.Lock(), 0))
            self._locks[key] = (lock, users + 1)
        try:
            with lock:
                yield
        finally:
            with self._guard:
                lock, users = self._locks[key]
                if users == 1:
                    del self._locks[key]
                else:
                    self._locks[key] = (lock, users - 1)

    def __len__(self) -> int:
        with self._guard:
            return len(self._locks)


# -- the local backend --------------------------------------------------------------------


class LocalBuildBackend:
    """The embedded default: one :class:`LocalBackend` under ``root``."""

    kind = "local"
    builds_on_worker = True

    def __init__(
        self,
        root: Path | str,
        *,
        defines: Mapping[str, str] | None = None,
        check_build_deps: bool = True,
    ) -> None:
        self.local = LocalBackend(root, defines=defines, check_build_deps=check_build_deps)
        self.scratch_root = self.local.root

    def __repr__(self) -> str:
        return f"LocalBuildBackend({str(self.local.root)!r})"

    # -- scratch builds

    def find_scratch(self, package: str, commit: str) -> LocalBuild | None:
        found = self.local.get_scratch_build(package, commit)
        return None if found is None else _reused(found)

    def scratch_build(self, package: str, scm_url: str, commit: str) -> LocalBuild:
        """Build on this host (trusted setups and tests; the glue builds on a worker)."""
        return self.local.build(package, _scm_location(scm_url), commit, scratch=True)

    def add_build(
        self,
        package: str,
        commit: str,
        srpm: Path,
        rpms: Sequence[Path],
        log: Path | None,
        *,
        scratch: bool,
    ) -> LocalBuild:
        """Keep a build made on a worker; a non-scratch NVR built from another commit
        already raises :class:`NVRConflict`."""
        return self.local.add_build(package, commit, srpm, rpms, log, scratch=scratch)

    # -- non-scratch builds

    def find_release(self, package: str, commit: str) -> Release | None:
        for build in reversed(self.local.builds()):
            if build.package == package and build.commit == commit:
                return Release(package, commit, build.nvr, True, None, str(build.path))
        return None

    def release_build(self, package: str, scm_url: str, commit: str) -> Release:
        """Build on this host; the same NVR from the same commit is reused, from another
        commit :class:`NVRConflict`."""
        build = self.local.build(package, _scm_location(scm_url), commit, scratch=False)
        return Release(package, commit, build.nvr, build.reused, None, str(build.path))

    # -- tags and repositories

    def tag(self, tag: str, nvr: str) -> bool:
        return self.local.tag(tag, nvr)

    def untag(self, tag: str, nvr: str) -> bool:
        return self.local.untag(tag, nvr)

    def tagged(self, tag: str) -> list[str]:
        return self.local.tagged(tag)

    def publish_repo(self, tag: str) -> str:
        """The tag's repository is regenerated by every tag change: make sure it exists."""
        return str(self.local.ensure_tag(tag))

    def history(self, tag: str) -> list[TagChange]:
        return [
            TagChange(e.event_id, e.time, tag, e.nvr, e.action) for e in self.local.history(tag)
        ]

    def overlay(self, name: str, builds: Sequence[LocalBuild]) -> Path:
        return self.local.overlay(name, builds)

    def drop_overlay(self, name: str) -> None:
        self.local.drop_overlay(name)

    def tag_repo_url(self, tag: str, arch: str, local_base_url: str) -> str:
        """The master serves ``<root>/tags/`` under ``local_base_url``; one repository for
        every arch (noarch and the build host's arch)."""
        self.local.ensure_tag(tag)
        return f"{local_base_url.rstrip('/')}/tags/{tag}/"

    def hub_outage(self) -> HubOutage | None:
        """No hub: never unreachable."""
        return None


# -- the koji backend ---------------------------------------------------------------------


# How many of our newest koji build tasks are looked at for an orphaned scratch build.
_ORPHAN_WINDOW = 100


class KojiBuildBackend:
    """A koji hub: builds from SCM, tags and repos; scratch RPMs cached under
    ``cache_root`` (a :class:`LocalBackend`: its (package, commit) cache, file locks and
    overlay repositories).

    ``target``: the build target of non-scratch builds (built with ``skip_tag``: tagging is
    :meth:`tag`'s job); ``scratch_target``: that of scratch builds (default ``target``);
    ``task_timeout``, ``repo_timeout``: seconds to wait for a build task, for a new repo
    (the time the hub was unreachable does not count).
    """

    kind = "koji"
    builds_on_worker = False

    def __init__(
        self,
        session: KojiSession,
        cache_root: Path | str,
        *,
        target: str,
        scratch_target: str | None = None,
        poll_interval: float = 5.0,
        task_timeout: float | None = None,
        repo_timeout: float | None = 3600.0,
    ) -> None:
        self.session = session
        self.cache = LocalBackend(cache_root)
        self.scratch_root = self.cache.root
        self.target = target
        self.scratch_target = scratch_target or target
        self.poll_interval = poll_interval
        self.task_timeout = task_timeout
        self.repo_timeout = repo_timeout
        self._locks = _KeyLocks()

    def __repr__(self) -> str:
        return f"KojiBuildBackend({self.session!r}, target={self.target!r})"

    # -- scratch builds

    def find_scratch(self, package: str, commit: str) -> LocalBuild | None:
        found = self.cache.get_scratch_build(package, commit)
        return None if found is None else _reused(found)

    def scratch_build(self, package: str, scm_url: str, commit: str) -> LocalBuild:
        """A koji scratch build of ``scm_url`` (``git+<url>#<commit>``), its RPMs and SRPM
        downloaded into the cache; once per (package, commit): a cached build is returned
        with ``reused`` set, and threads asking for the same key wait for one task. A failed
        task raises :class:`KojiTaskFailed` (its message has the task id and log link)."""
        found = self.find_scratch(package, commit)
        if found is not None:
            return found
        with self._locks.hold("scratch", package, commit):
            found = self.find_scratch(package, commit)
            if found is not None:
                return found
            task_id = self._orphan_scratch_task(scm_url) or self.session.build_from_scm(
                scm_url, self.scratch_target, True
            )
            self.session.wait_task(task_id, self.poll_interval, self.task_timeout)
            urls = self.session.task_rpms(task_id, include_srpm=True)
            self.cache.root.joinpath("tmp").mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(prefix="koji-", dir=self.cache.root / "tmp") as tmp:
                files = self.session.download(urls, tmp)
                srpms = [f for f in files if f.name.endswith(".src.rpm")]
                rpms = [f for f in files if not f.name.endswith(".src.rpm")]
                if len(srpms) != 1 or not rpms:
                    names = ", ".join(f.name for f in files) or "none"
                    raise KojiError(
                        f"koji task {task_id} made no usable RPMs ({names}): "
                        f"{self.session.task_url(task_id)}"
                    )
                return self.cache.add_build(package, commit, srpms[0], rpms, None, scratch=True)

    def _orphan_scratch_task(self, scm_url: str) -> int | None:
        """A scratch build task of ours for ``scm_url`` and the scratch target that is still
        running or ended well but whose RPMs never reached the cache (a master killed while
        it waited: the task runs on without it): adopted, not built twice. Our newest
        ``build`` tasks only (one request)."""
        owner = self.session.logged_in_user()["id"]
        states = [koji.TASK_STATES[s] for s in ("FREE", "OPEN", "ASSIGNED", "CLOSED")]
        tasks = self.session.call(
            "listTasks",
            {"method": "build", "owner": owner, "state": states, "decode": True},
            {"order": "-id", "limit": _ORPHAN_WINDOW},
        )
        for task in tasks or []:
            request = list(task.get("request") or [])
            if (
                len(request) >= 3
                and request[0] == scm_url
                and request[1] == self.scratch_target
                and bool((request[2] or {}).get("scratch"))
            ):
                return int(task["id"])
        return None

    def add_build(
        self,
        package: str,
        commit: str,
        srpm: Path,
        rpms: Sequence[Path],
        log: Path | None,
        *,
        scratch: bool,
    ) -> LocalBuild:
        """Scratch builds made elsewhere go into the cache; non-scratch builds are koji's."""
        if not scratch:
            raise BackendError(
                "the koji backend makes its non-scratch builds in koji (release_build); "
                "they cannot be added by hand"
            )
        return self.cache.add_build(package, commit, srpm, rpms, log, scratch=True)

    # -- non-scratch builds

    def _release_of(self, build: Mapping[str, Any], package: str, commit: str) -> Release:
        task_id = build.get("task_id")
        url = self.session.task_url(task_id) if task_id else ""
        return Release(package, commit, build["nvr"], True, task_id, url)

    def find_release(self, package: str, commit: str) -> Release | None:
        """The COMPLETE koji build made from ``commit`` (its ``source`` ends ``#<commit>``);
        a build of a package named ``package`` first."""
        builds = self.session.call("listBuilds", source=f"*#{commit}", state=_BUILD_COMPLETE)
        matching = [b for b in builds or [] if _source_commit(b.get("source")) == commit]
        matching.sort(key=lambda b: b.get("name") != package)
        return self._release_of(matching[0], package, commit) if matching else None

    def release_build(self, package: str, scm_url: str, commit: str) -> Release:
        """The non-scratch build of ``commit``: an existing one (``reused``), else a new
        build task for ``target`` with ``skip_tag``. Its NVR built from another commit
        already raises :class:`NVRConflict` ("bump Release"); a failed task
        :class:`KojiTaskFailed`."""
        with self._locks.hold("release", package, commit):
            for _ in range(_RELEASE_ATTEMPTS):
                found = self.find_release(package, commit)
                if found is not None:
                    return found
                task_id = self.session.build_from_scm(
                    scm_url, self.target, False, opts={"skip_tag": True}
                )
                try:
                    self.session.wait_task(task_id, self.poll_interval, self.task_timeout)
                except KojiTaskFailed as exc:
                    outcome = self._busy_nvr(exc, package, commit)
                    if isinstance(outcome, Release):
                        return outcome
                    if isinstance(outcome, NVRConflict):
                        raise outcome from exc
                    if outcome is None:
                        raise
                    continue  # another task was building the NVR: it has ended now
                build = self.session.task_build(task_id)
                if build is None:
                    raise KojiError(
                        f"koji task {task_id} made no build: {self.session.task_url(task_id)}"
                    )
                return Release(
                    package, commit, build["nvr"], False, task_id, self.session.task_url(task_id)
                )
            raise KojiError(
                f"koji: the NVR of {package} at {commit[:12]} stayed busy with other build "
                f"tasks over {_RELEASE_ATTEMPTS} attempts"
            )

    def _busy_nvr(
        self, exc: KojiTaskFailed, package: str, commit: str
    ) -> Release | NVRConflict | bool | None:
        """What a failed release task means when its NVR was taken: the existing build (from
        this commit), an NVRConflict (from another), True (another task was building it and
        has ended: try again) or None (some other failure)."""
        text = str(exc.fault) if exc.fault is not None else str(exc)
        busy = re.search(r"Build already in progress \(task (\d+)\)", text)
        if busy:
            try:
                self.session.wait_task(int(busy.group(1)), self.poll_interval, self.task_timeout)
            except KojiTaskFailed:
                pass  # it failed: the NVR is free again
            return True
        if "Build already exists" not in text:
            return None
        nvr = _nvr_from_exists(text) or self._task_srpm_nvr(exc.task_id)
        build = self.session.get_build(nvr) if nvr else None
        if build is None:
            return None
        existing = _source_commit(build.get("source"))
        if existing == commit:
            return self._release_of(build, package, commit)
        return NVRConflict(build["nvr"], commit, existing or f"unknown ({build.get('source')})")

    def _task_srpm_nvr(self, task_id: int) -> str | None:
        """The NVR of the SRPM a build task made (its file name), if any."""
        try:
            urls = self.session.task_rpms(task_id, include_srpm=True)
        except KojiError:
            return None
        for url in urls:
            name = url.rsplit("/", 1)[-1]
            if name.endswith(".src.rpm"):
                return name[: -len(".src.rpm")]
        return None

    # -- tags and repos

    def tag(self, tag: str, nvr: str) -> bool:
        """Tag the build (one ``tagBuild`` task, even through hub faults); False if it was
        tagged already."""
        return self.session.tag_build(tag, nvr, poll_interval=self.poll_interval) is not None

    def settle_tag(self, tag: str, nvr: str) -> list[int]:
        """Cancel our ``tagBuild`` tasks of ``nvr`` into ``tag`` that have not ended, and
        wait until each has: a tag task a killed master left pending on the hub would
        otherwise land after the export's recovery looked (and decided "back"). The ids
        of the tasks found (each is CANCELED now, or ended before it could be)."""
        build = self.session.get_build(nvr)
        tag_info = self.session.call("getTag", tag)
        if build is None or tag_info is None:
            return []
        owner = self.session.logged_in_user()["id"]
        pending = [koji.TASK_STATES[s] for s in ("FREE", "OPEN", "ASSIGNED")]
        tasks = self.session.call(
            "listTasks",
            {"method": "tagBuild", "owner": owner, "state": pending, "decode": True},
            {"order": "id"},
        )
        ids = [
            t["id"]
            for t in tasks or []
            if list(t.get("request") or [])[:2] == [tag_info["id"], build["id"]]
        ]
        for task_id in ids:
            self.session.cancel_task(task_id)
            try:
                self.session.wait_task(task_id, self.poll_interval)
            except KojiTaskFailed:
                pass  # CANCELED (or failed): it tagged nothing
        return ids

    def untag(self, tag: str, nvr: str) -> bool:
        tags = self.session.call("listTags", build=nvr)
        if not any(t["name"] == tag for t in tags or []):
            return False
        self.session.untag_build(tag, nvr)
        return True

    def tagged(self, tag: str) -> list[str]:
        """The NVRs in the tag, in the order they were tagged."""
        builds = list(reversed(self.session.call("listTagged", tag) or []))  # koji: newest first
        builds.sort(key=lambda b: b.get("create_event") or 0)
        return [b["nvr"] for b in builds]

    def publish_repo(self, tag: str) -> str:
        """Ask for a new repo of the tag and wait until one made after now is READY; its id.
        Needs koji's ``repo`` permission."""
        event = self.session.latest_event()
        self.session.new_repo(tag)
        repo = self.session.wait_repo(
            tag, event.id, poll_interval=self.poll_interval, timeout=self.repo_timeout
        )
        return str(repo["id"])

    def ensure_repo(self, tag: str) -> str:
        """A repo of the tag made after its last tag change, regenerated only if needed
        (the recovery of an export: a master killed while it waited for its repo left a
        ``newRepo`` task on the hub, or the repo was made before it could record so): our
        pending ``newRepo`` tasks of the tag are waited for first, then the current repo
        is kept if no tag change came after it; its id."""
        tag_info = self.session.call("getTag", tag)
        if tag_info is not None:
            owner = self.session.logged_in_user()["id"]
            pending = [koji.TASK_STATES[s] for s in ("FREE", "OPEN", "ASSIGNED")]
            tasks = self.session.call(
                "listTasks",
                {"method": "newRepo", "owner": owner, "state": pending, "decode": True},
                {"order": "id"},
            )
            for task in tasks or []:
                if list(task.get("request") or [None])[0] in (tag, tag_info["id"]):
                    try:
                        self.session.wait_task(task["id"], self.poll_interval)
                    except KojiTaskFailed:
                        pass  # no repo from it: the check below asks for one
        repo = self.session.get_repo(tag)
        if repo is not None and not self.session.tag_history([tag], repo["create_event"]).events:
            return str(repo["id"])
        return self.publish_repo(tag)

    def history(self, tag: str) -> list[TagChange]:
        events = self.session.tag_history([tag], None).events
        return [TagChange(e.event_id, e.ts or 0.0, e.tag, e.nvr, e.action) for e in events]

    def overlay(self, name: str, builds: Sequence[LocalBuild]) -> Path:
        return self.cache.overlay(name, builds)

    def drop_overlay(self, name: str) -> None:
        self.cache.drop_overlay(name)

    def tag_repo_url(self, tag: str, arch: str, local_base_url: str) -> str:
        """The yum ``baseurl`` of the tag's current repo on the hub (one is made first if the
        tag has none)."""
        repo = self.session.get_repo(tag)
        if repo is None:
            self.publish_repo(tag)
            repo = self.session.get_repo(tag)
        if repo is None:
            raise KojiError(f"koji hub {self.session.hub}: tag {tag} has no repo")
        return self.session.repo_url(repo, arch)

    def hub_outage(self) -> HubOutage | None:
        """The hub's outage in progress (calls waiting for it), or ``None``."""
        return self.session.outage()


# -- from the site's configuration --------------------------------------------------------


def make_backend(config: BackendConfig, root: Path, secrets: Mapping[str, str]) -> BuildBackend:
    """The backend ``config`` asks for, its files under ``root`` (``root/"local"`` for the
    local backend, ``root/"koji-cache"`` for the koji backend's cache). ``secrets``: secret
    name -> value (``config.password_secret`` is looked up there). Unusable settings raise
    :class:`BackendConfigError` naming the setting."""
    root = Path(root)
    if config.kind not in BACKEND_KINDS:
        raise BackendConfigError(
            f"backend 'type': expected {' or '.join(BACKEND_KINDS)}, not {config.kind!r}"
        )
    if config.mode not in EXPORT_MODES:
        raise BackendConfigError(
            f"backend 'export-mode': expected {' or '.join(EXPORT_MODES)}, not {config.mode!r}"
        )
    if config.mode == "promote" and not config.candidate_tag:
        raise BackendConfigError("backend 'export-mode: promote' needs a 'candidate-tag'")
    if config.kind == "local":
        return LocalBuildBackend(
            root / "local",
            defines=dict(config.defines),
            check_build_deps=config.check_build_deps,
        )
    return KojiBuildBackend(
        KojiSession(_koji_settings(config, secrets)),
        root / "koji-cache",
        target=config.target or "",
        scratch_target=config.scratch_target,
        poll_interval=config.poll_interval,
    )


def _koji_settings(config: BackendConfig, secrets: Mapping[str, str]) -> KojiSettings:
    if not config.target:
        raise BackendConfigError("backend 'target': the koji backend needs a build target")
    password = None
    if config.password_secret:
        if config.password_secret not in secrets:
            raise BackendConfigError(
                f"backend 'password-secret': no secret named {config.password_secret!r}"
            )
        password = secrets[config.password_secret]
        if not password:
            raise BackendConfigError(
                f"backend 'password-secret': the secret {config.password_secret!r} is empty"
            )
    elif config.auth == "password":
        raise BackendConfigError("backend 'auth: password' needs a 'password-secret'")
    if config.auth == "password" and not config.user:
        raise BackendConfigError("backend 'auth: password' needs a 'user'")
    retry = RetryPolicy(
        total=config.outage_timeout,
        maximum=config.outage_retry_max,
        initial=min(1.0, config.outage_retry_max),
    )
    try:
        if config.profile:
            settings = KojiSettings.from_profile(
                config.profile,
                user=config.user,
                password=password,
                principal=config.principal,
                keytab=config.keytab,
                retry=retry,
            )
            # explicit settings win over the profile's
            overrides = {
                name: getattr(config, name)
                for name in ("server", "topurl", "weburl", "auth", "cert", "serverca")
                if getattr(config, name) is not None
            }
            if overrides:
                settings = dataclasses.replace(settings, **overrides)
        else:
            for name in ("server", "topurl"):
                if not getattr(config, name):
                    raise BackendConfigError(
                        f"backend '{name}': the koji backend needs a 'profile', "
                        "or 'server' and 'topurl'"
                    )
            settings = KojiSettings(
                server=config.server or "",
                topurl=config.topurl or "",
                weburl=config.weburl,
                auth=config.auth or ("password" if password else None),
                user=config.user,
                password=password,
                cert=config.cert,
                serverca=config.serverca,
                principal=config.principal,
                keytab=config.keytab,
                retry=retry,
            )
    except KojiConfigError as exc:
        # KojiSettings never shows the password (repr=False, not in its messages)
        raise BackendConfigError(f"backend: {exc}") from None
    return settings
