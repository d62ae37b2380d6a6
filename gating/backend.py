"""The build backend interface of the built-in jobs, and its two implementations.

* :class:`LocalBuildBackend`: the embedded default (:mod:`gating.localbackend`): builds are
  made by ``rpmbuild`` on a worker and handed in with :meth:`add_build` (or built on this
  host with :meth:`scratch_build`/:meth:`release_build` where that is trusted), tags are
  local yum repositories;
* :class:`KojiBuildBackend`: a koji hub through :mod:`gating.kojiclient` (the real ``koji``
  client library): scratch and non-scratch builds from SCM, tags, repos, tag history.
  Scratch RPMs are downloaded from the hub's work directory and kept in a local cache (a
  :class:`~gating.localbackend.LocalBackend`), which also makes the overlay repositories.

Both follow koji's rules: a scratch build is made once per (package, commit); a non-scratch
NVR is unique: the same NVR from the same commit is reused, from another commit it is an
error ("bump Release"); tagging a build twice tags it once.

Pure Python, blocking, no Twisted imports: the master calls it from threads.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
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
)
from gating.localbackend import BackendError, LocalBackend, LocalBuild, NVRConflict

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


class BackendConfigError(BackendError, ValueError):
    """The backend settings cannot work (the message names the setting)."""


@dataclass(frozen=True)
class BackendConfig:
    """The site's ``backend:`` section (see :mod:`gating.site`). Secrets are names only."""

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
    retry_total: float = 600.0


@dataclass(frozen=True)
class Release:
    """A non-scratch build."""

    package: str
    commit: str
    nvr: str
    reused: bool = False
    task_id: int | None = None
    url: str = ""


@dataclass(frozen=True)
class TagChange:
    event_id: int
    time: float
    tag: str
    nvr: str
    action: str  # "tag" or "untag"


class BuildBackend(Protocol):
    kind: str
    builds_on_worker: bool
    scratch_root: Path

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


def _scm_path(scm_url: str) -> str:
    """``git+file:///p#c`` -> ``/p``; other URLs without ``git+`` and the fragment."""
    url = scm_url.split("#", 1)[0]
    if url.startswith("git+"):
        url = url[4:]
    if url.startswith("file://"):
        url = url[len("file://") :]
    return url


class LocalBuildBackend:
    """The embedded default."""

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

    def find_scratch(self, package: str, commit: str) -> LocalBuild | None:
        found = self.local.get_scratch_build(package, commit)
        return None if found is None else _as_reused(found)

    def scratch_build(self, package: str, scm_url: str, commit: str) -> LocalBuild:
        return self.local.build(package, _scm_path(scm_url), commit, scratch=True)

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
        return self.local.add_build(package, commit, srpm, rpms, log, scratch=scratch)

    def find_release(self, package: str, commit: str) -> Release | None:
        for build in reversed(self.local.builds()):
            if build.package == package and build.commit == commit:
                return Release(package, commit, build.nvr, True, None, str(build.path))
        return None

    def release_build(self, package: str, scm_url: str, commit: str) -> Release:
        build = self.local.build(package, _scm_path(scm_url), commit, scratch=False)
        return Release(package, commit, build.nvr, build.reused, None, str(build.path))

    def tag(self, tag: str, nvr: str) -> bool:
        return self.local.tag(tag, nvr)

    def untag(self, tag: str, nvr: str) -> bool:
        return self.local.untag(tag, nvr)

    def tagged(self, tag: str) -> list[str]:
        return self.local.tagged(tag)

    def publish_repo(self, tag: str) -> str:
        return str(self.local.ensure_tag(tag))

    def history(self, tag: str) -> list[TagChange]:
        events = self.local.history(tag)
        return [TagChange(e.event_id, e.time, tag, e.nvr, e.action) for e in events]

    def overlay(self, name: str, builds: Sequence[LocalBuild]) -> Path:
        return self.local.overlay(name, builds)

    def drop_overlay(self, name: str) -> None:
        self.local.drop_overlay(name)

    def tag_repo_url(self, tag: str, arch: str, local_base_url: str) -> str:
        self.local.ensure_tag(tag)
        return f"{local_base_url.rstrip('/')}/tags/{tag}/"


def _as_reused(build: LocalBuild) -> LocalBuild:
    from dataclasses import replace

    return replace(build, reused=True)


class KojiBuildBackend:
    """A koji hub: builds from SCM, tags and repos; scratch RPMs cached locally."""

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
        self._locks: dict[tuple[str, str], threading.Lock] = {}
        self._guard = threading.Lock()

    def _key_lock(self, package: str, commit: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault((package, commit), threading.Lock())

    # -- scratch builds

    def find_scratch(self, package: str, commit: str) -> LocalBuild | None:
        found = self.cache.get_scratch_build(package, commit)
        return None if found is None else _as_reused(found)

    def scratch_build(self, package: str, scm_url: str, commit: str) -> LocalBuild:
        with self._key_lock(package, commit):
            found = self.find_scratch(package, commit)
            if found is not None:
                return found
            task_id = self.session.build_from_scm(scm_url, self.scratch_target, True)
            self.session.wait_task(task_id, self.poll_interval, self.task_timeout)
            urls = self.session.task_rpms(task_id, include_srpm=True)
            with _TempDir(self.cache.root / "tmp") as tmp:
                files = self.session.download(urls, tmp)
                srpms = [f for f in files if f.name.endswith(".src.rpm")]
                rpms = [f for f in files if not f.name.endswith(".src.rpm")]
                if len(srpms) != 1 or not rpms:
                    raise KojiError(
                        f"koji task {task_id} made no usable RPMs "
                        f"({', '.join(f.name for f in files) or 'none'}): "
                        f"{self.session.task_url(task_id)}"
                    )
                return self.cache.add_build(package, commit, srpms[0], rpms, None, scratch=True)

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
        raise BackendError("the koji backend builds in koji; nothing is added by hand")

    # -- non-scratch builds

    def _release_of(self, build: Mapping[str, Any], package: str, commit: str) -> Release:
        task_id = build.get("task_id")
        url = self.session.task_url(task_id) if task_id else ""
        return Release(package, commit, build["nvr"], True, task_id, url)

    def find_release(self, package: str, commit: str) -> Release | None:
        builds = self.session.call(
            "listBuilds", source=f"*#{commit}", state=koji.BUILD_STATES["COMPLETE"]
        )
        for build in builds or []:
            if _source_commit(build.get("source")) == commit:
                return self._release_of(build, package, commit)
        return None

    def release_build(self, package: str, scm_url: str, commit: str) -> Release:
        with self._key_lock(package, "release:" + commit):
            found = self.find_release(package, commit)
            if found is not None:
                return found
            task_id = self.session.build_from_scm(
                scm_url, self.target, False, opts={"skip_tag": True}
            )
            try:
                self.session.wait_task(task_id, self.poll_interval, self.task_timeout)
            except KojiTaskFailed as exc:
                conflict = self._conflict(exc, package, commit)
                if conflict is not None:
                    if isinstance(conflict, Release):
                        return conflict
                    raise conflict from exc
                raise
            build = self.session.task_build(task_id)
            if build is None:
                raise KojiError(
                    f"koji task {task_id} made no build: {self.session.task_url(task_id)}"
                )
            return Release(
                package, commit, build["nvr"], False, task_id, self.session.task_url(task_id)
            )

    def _conflict(
        self, exc: KojiTaskFailed, package: str, commit: str
    ) -> NVRConflict | Release | None:
        text = str(exc)
        if "Build already exists" not in text:
            return None
        nvr = _nvr_from_exists(text)
        build = self.session.get_build(nvr) if nvr else None
        if build is None:
            return None
        existing = _source_commit(build.get("source")) or "unknown"
        if existing == commit:
            return self._release_of(build, package, commit)
        return NVRConflict(build["nvr"], commit, existing)

    # -- tags and repos

    def tag(self, tag: str, nvr: str) -> bool:
        return self.session.tag_build(tag, nvr, poll_interval=self.poll_interval) is not None

    def untag(self, tag: str, nvr: str) -> bool:
        if nvr not in self.tagged(tag):
            return False
        self.session.untag_build(tag, nvr)
        return True

    def tagged(self, tag: str) -> list[str]:
        builds = self.session.call("listTagged", tag)
        return [b["nvr"] for b in builds or []]

    def publish_repo(self, tag: str) -> str:
        event = self.session.latest_event()
        self.session.new_repo(tag)
        repo = self.session.wait_repo(
            tag, event.id, poll_interval=self.poll_interval, timeout=self.repo_timeout
        )
        return str(repo["id"])

    def history(self, tag: str) -> list[TagChange]:
        events = self.session.tag_history([tag], None).events
        return [TagChange(e.event_id, e.ts or 0.0, e.tag, e.nvr, e.action) for e in events]

    def overlay(self, name: str, builds: Sequence[LocalBuild]) -> Path:
        return self.cache.overlay(name, builds)

    def drop_overlay(self, name: str) -> None:
        self.cache.drop_overlay(name)

    def tag_repo_url(self, tag: str, arch: str, local_base_url: str) -> str:
        repo = self.session.get_repo(tag)
        if repo is None:
            self.publish_repo(tag)
            repo = self.session.get_repo(tag)
        if repo is None:
            raise KojiError(f"koji tag {tag} has no repo")
        return self.session.repo_url(repo, arch)


def _source_commit(source: Any) -> str | None:
    if not isinstance(source, str) or "#" not in source:
        return None
    return source.rsplit("#", 1)[1] or None


def _nvr_from_exists(text: str) -> str | None:
    # koji: "Build already exists (id=12, state=COMPLETE): {'name': ..., 'version': ...}"
    import re

    found = re.search(
        r"'name': '([^']+)'.*?'version': '([^']+)'.*?'release': '([^']+)'", text, re.S
    )
    if found:
        return "-".join(found.groups())
    found = re.search(r"Build already exists[^:]*:\s*([A-Za-z0-9._+~^-]+-[^-\s]+-[^-\s]+)", text)
    return found.group(1) if found else None


class _TempDir:
    def __init__(self, parent: Path) -> None:
        self.parent = parent

    def __enter__(self) -> Path:
        import tempfile

        self.parent.mkdir(parents=True, exist_ok=True)
        self.path = Path(tempfile.mkdtemp(prefix="koji-", dir=self.parent))
        return self.path

    def __exit__(self, *exc: object) -> None:
        import shutil

        shutil.rmtree(self.path, ignore_errors=True)


def make_backend(config: BackendConfig, root: Path, secrets: Mapping[str, str]) -> BuildBackend:
    """The backend the site configures; its files live under ``root``."""
    root = Path(root)
    if config.kind == "local":
        return LocalBuildBackend(
            root / "local",
            defines=dict(config.defines),
            check_build_deps=config.check_build_deps,
        )
    if config.kind != "koji":
        raise BackendConfigError(f"backend 'type': unknown backend {config.kind!r}")
    if not config.target:
        raise BackendConfigError("backend 'target': the koji backend needs a build target")
    password = None
    if config.password_secret:
        if config.password_secret not in secrets:
            raise BackendConfigError(
                f"backend 'password-secret': no secret named {config.password_secret!r}"
            )
        password = secrets[config.password_secret]
    try:
        if config.profile:
            settings = KojiSettings.from_profile(
                config.profile,
                user=config.user,
                password=password,
                principal=config.principal,
                keytab=config.keytab,
            )
        else:
            from gating.kojiclient import RetryPolicy

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
                retry=RetryPolicy(total=config.retry_total),
            )
    except KojiConfigError as exc:
        raise BackendConfigError(f"backend: {exc}") from None
    return KojiBuildBackend(
        KojiSession(settings),
        root / "koji-cache",
        target=config.target,
        scratch_target=config.scratch_target,
        poll_interval=config.poll_interval,
    )

