"""Buildbot glue for the built-in jobs ``koji-scratch-build`` and ``koji-export``.

* :class:`BackendService` (a master service) owns the build backend
  (:mod:`gating.backend`): it makes each (package, commit) build once even when several
  items ask at the same time, runs blocking backend calls in threads, and with the local
  backend has ``rpmbuild`` run on a worker (the ``gating-rpmbuild`` builder) and keeps its
  results on the master. Commits are made reachable for a plain ``git clone`` (as koji's
  SCM checkout does) on a branch of the SCM mirror ``scm/<project>.git``.
* :class:`ScratchBuild`: scratch builds of the item's speculative state, an overlay
  repository of them served by the master, and a ``.repo`` file for the later stages
  (properties ``gating_repo_file``, ``gating_repo_file_url``, ``gating_overlay_url``).
* :class:`Export`: the serial export section (the gate's ordered lock): the non-scratch
  build (mode ``rebuild``) or the candidate (mode ``promote``, built while the item is
  tested), the tag into the destination, its new repository; the gate merges afterwards.
  Each step is recorded in the gate's export journal (:mod:`gating.exportjournal`) before
  the next one runs, so that a master killed in the section finishes or undoes it.
* :class:`RegisterBuild`: the master-side end of a worker's ``rpmbuild``.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from buildbot.process import buildstep, results
from buildbot.process.properties import Secret
from buildbot.util import service
from twisted.internet import defer, reactor, threads
from twisted.python import log
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from gating import gaterpc
from gating import overlay as overlaymod
from gating.backend import BackendConfig, BuildBackend, Release, make_backend
from gating.forge import git_env
from gating.testhooks import pause_requested

SERVICE_NAME = "gating-backend"
RPMBUILD_TRIGGER = "gating:rpmbuild"
GATE = "gate"
# Threads of the backend's own pool for builds (koji: a thread waits for each build task).
BUILD_THREADS = 100


class BuildError(Exception):
    """A build the built-in jobs needed did not happen; the message says where to look."""


def backend_service(master: Any) -> BackendService:
    found = master.service_manager.namedServices.get(SERVICE_NAME)
    if found is None:
        raise BuildError("no build backend is configured on this master")
    return found


def _daemon_thread(*args: Any, **kwargs: Any) -> threading.Thread:
    return threading.Thread(*args, daemon=True, **kwargs)


class BackendService(service.BuildbotService):
    """The build backend of the master, shared by every built-in job.

    Builds (a koji build task and the wait for it) run in the service's own thread pool
    (:meth:`in_build_thread`), never in the reactor's (10 threads): a full window of
    scratch and candidate builds would otherwise hold all of those, and the export
    section's koji calls, the gate's git merges and Buildbot's own blocking calls would
    wait behind them."""

    name = SERVICE_NAME
    _build_pool: ThreadPool | None = None

    def in_build_thread(self, fn: Any, *args: Any) -> defer.Deferred:
        """``fn(*args)``, a long blocking backend call, in the service's build threads."""
        if self._build_pool is None:
            pool = ThreadPool(minthreads=0, maxthreads=BUILD_THREADS, name="gating-builds")
            # A build waited for when the master stops does not keep the process alive (the
            # gate starts its runs again after a restart).
            pool.threadFactory = _daemon_thread
            pool.start()
            self._build_pool = pool
        return threads.deferToThreadPool(reactor, self._build_pool, fn, *args)

    def stopService(self) -> Any:
        pool, self._build_pool = self._build_pool, None
        if pool is not None:
            # Joining would wait for the builds in flight: let the pool end by itself.
            threading.Thread(target=pool.stop, daemon=True, name="gating-builds-stop").start()
        return super().stopService()

    def checkConfig(  # type: ignore[override]
        self,
        config: BackendConfig,
        root: str,
        base_url: str,
        project_repos: tuple[tuple[str, str], ...],
        builder: str = "",
    ) -> None:
        pass

    @defer.inlineCallbacks
    def reconfigService(  # type: ignore[override]
        self,
        config: BackendConfig,
        root: str,
        base_url: str,
        project_repos: tuple[tuple[str, str], ...],
        builder: str = "",
    ) -> Any:
        self.config = config
        self.root = Path(root)
        self.base_url = base_url.rstrip("/") + "/plugins/gating/repos/"
        self.project_repos = dict(project_repos)
        self.builder = builder
        secrets: dict[str, str] = {}
        if config.password_secret:
            secrets[config.password_secret] = yield self.renderSecrets(
                Secret(config.password_secret)
            )
        self.backend: BuildBackend = yield threads.deferToThread(
            make_backend, config, self.root, secrets
        )
        self._inflight: dict[tuple[str, str, str], list[defer.Deferred]] = {}
        self._registered: dict[str, Any] = {}
        (self.root / "repofiles").mkdir(parents=True, exist_ok=True)

    # -- where things are -------------------------------------------------------------

    def scm_root(self) -> Path:
        return self.root / "scm"

    def scm_repo(self, project: str) -> Path:
        return self.scm_root() / f"{project}.git"

    def scm_url(self, project: str, commit: str) -> str:
        """What koji builds from: the SCM mirror, where every built commit is on a branch
        (koji's checkout is a plain clone)."""
        if self.config.scm_url:
            return self.config.scm_url.format(project=project) + f"#{commit}"
        return f"git+file://{self.scm_repo(project)}#{commit}"

    def public_dirs(self) -> dict[str, Path]:
        """What the master serves under ``/plugins/gating/repos/``."""
        dirs = {
            "overlays": Path(self.backend.scratch_root) / "overlays",
            "repofiles": self.root / "repofiles",
        }
        if self.backend.kind == "local":
            dirs["tags"] = Path(self.backend.scratch_root) / "tags"
        return dirs

    def url(self, *parts: str) -> str:
        return self.base_url + "/".join(parts)

    def destination_url(self, arch: str = "x86_64") -> str:
        return self.backend.tag_repo_url(
            self.config.destination_tag, arch, self.base_url.rstrip("/")
        )

    # -- the SCM mirror -----------------------------------------------------------------

    def _ensure_scm(self, project: str, commit: str) -> None:
        """Put ``commit`` on a branch of the project's SCM mirror (idempotent)."""
        source = self.project_repos.get(project)
        if source is None:
            raise BuildError(f"project {project} has no repository on this master")
        if not isinstance(commit, str) or not overlaymod.OID_RE.match(commit):
            # before git sees it: a source stamp's revision can be anything
            raise BuildError(f"project {project}: expected a full commit id, got {commit!r}")
        mirror = self.scm_repo(project)
        env = git_env()
        if not (mirror / "HEAD").exists():
            mirror.parent.mkdir(parents=True, exist_ok=True)
            subprocess.run(
                ["git", "init", "-q", "--bare", "--", str(mirror)],
                check=True,
                env=env,
                capture_output=True,
            )
        have = subprocess.run(
            ["git", "-C", str(mirror), "cat-file", "-e", f"{commit}^{{commit}}"],
            env=env,
            capture_output=True,
        )
        if have.returncode == 0:
            return
        push = subprocess.run(
            [
                "git",
                "-C",
                source,
                "push",
                "-q",
                "--",
                str(mirror),
                f"{commit}:{overlaymod.scm_branch(commit)}",
            ],
            env=env,
            capture_output=True,
            text=True,
        )
        if push.returncode != 0:
            raise BuildError(
                f"cannot publish {project} commit {commit[:12]} for building: "
                f"{push.stderr.strip()[-500:]}"
            )

    # -- builds -------------------------------------------------------------------------

    def _once(self, key: tuple[str, str, str], make: Any) -> defer.Deferred:
        """One build per key at a time: later callers wait for the running one."""
        waiters = self._inflight.get(key)
        mine: defer.Deferred = defer.Deferred()
        if waiters is not None:
            waiters.append(mine)
            return mine
        self._inflight[key] = [mine]

        def settle(outcome: Any) -> None:
            for waiter in self._inflight.pop(key, []):
                _fire(waiter, outcome)

        d = defer.maybeDeferred(make)
        d.addBoth(settle)
        return mine

    def scratch(self, project: str, commit: str, step: Any) -> defer.Deferred:
        """The scratch build of ``project`` at ``commit`` (a LocalBuild), made once."""

        @defer.inlineCallbacks
        def make() -> Any:
            found = yield threads.deferToThread(self.backend.find_scratch, project, commit)
            if found is not None:
                return found
            yield threads.deferToThread(self._ensure_scm, project, commit)
            if self.backend.builds_on_worker:
                built = yield self._worker_build(project, commit, True, step)
                return built
            built = yield self.in_build_thread(
                self.backend.scratch_build, project, self.scm_url(project, commit), commit
            )
            return built

        return self._once((project, commit, "scratch"), make)

    def release(self, project: str, commit: str, step: Any) -> defer.Deferred:
        """The non-scratch build of ``project`` at ``commit`` (a Release): reused when it
        exists; NVRConflict when its NVR was built from another commit."""

        @defer.inlineCallbacks
        def make() -> Any:
            found = yield threads.deferToThread(self.backend.find_release, project, commit)
            if found is not None:
                return found
            yield threads.deferToThread(self._ensure_scm, project, commit)
            if self.backend.builds_on_worker:
                built = yield self._worker_build(project, commit, False, step)
                return Release(
                    package=project,
                    commit=commit,
                    nvr=built.nvr,
                    reused=built.reused,
                    url=str(built.path),
                )
            built = yield self.in_build_thread(
                self.backend.release_build, project, self.scm_url(project, commit), commit
            )
            return built

        return self._once((project, commit, "release"), make)

    def candidate(self, project: str, commit: str, step: Any) -> defer.Deferred:
        """Promote mode: the non-scratch build tagged into the candidate tag. Started by the
        scratch-build job while the item is tested; asking again (the export job, or after
        a restart) reuses the build and finds it tagged."""

        @defer.inlineCallbacks
        def make() -> Any:
            release = yield self.release(project, commit, step)
            tag = self.config.candidate_tag
            if tag is None:
                raise BuildError("export mode 'promote' needs a candidate-tag")
            yield self.in_build_thread(self.backend.tag, tag, release.nvr)
            return release

        return self._once((project, commit, "candidate"), make)

    @defer.inlineCallbacks
    def _worker_build(self, project: str, commit: str, scratch: bool, step: Any) -> Any:
        token = uuid.uuid4().hex
        scheduler = step.master.scheduler_manager.namedServices.get(RPMBUILD_TRIGGER)
        if scheduler is None:
            raise BuildError("no rpmbuild builder is configured (local backend)")
        what = f"{'scratch' if scratch else 'release'} build of {project} at {commit[:12]}"
        props = {
            "gating_build_token": token,
            "gating_build_package": project,
            "gating_build_commit": commit,
            "gating_build_repository": str(self.scm_repo(project)),
            "gating_build_scratch": scratch,
        }
        ids, done = scheduler.trigger_builder(
            self.builder, [], props, step.build.buildid, f"{what} (build {step.build.buildid})"
        )
        bsid, brids = yield ids
        yield step.addURL(f"rpmbuild {project}@{commit[:12]}", self._buildset_url(bsid))
        result, _brids = yield done
        outcome = self._registered.pop(token, None)
        if outcome is None and result in (results.SUCCESS, results.WARNINGS):
            # Registered by another master of the cluster (its worker took the build):
            # the build is in the shared backend.
            outcome = yield threads.deferToThread(self._kept, project, commit, scratch)
        if outcome is None:
            raise BuildError(f"{what} failed on the worker: see {self._buildset_url(bsid)}")
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    def _kept(self, project: str, commit: str, scratch: bool) -> Any:
        """The build a worker made and another master registered (LocalBuild or None)."""
        if scratch:
            found = self.backend.find_scratch(project, commit)
        else:
            release = self.backend.find_release(project, commit)
            found = self.backend.local.get_build(release.nvr) if release else None
        return dataclasses.replace(found, reused=False) if found is not None else None

    def _buildset_url(self, bsid: int) -> str:
        return f"{self.master.config.buildbotURL}#/buildsets/{bsid}"

    @defer.inlineCallbacks
    def register(
        self, token: str, package: str, commit: str, scratch: bool, directory: Path
    ) -> Any:
        """Keep what a worker built (called by the rpmbuild builder's last step)."""
        srpms = sorted((directory / "SRPMS").glob("*.src.rpm"))
        rpms = sorted(p for p in (directory / "RPMS").rglob("*.rpm") if p.is_file())
        if len(srpms) != 1 or not rpms:
            error = BuildError(f"rpmbuild of {package} at {commit[:12]} made no packages")
            self._registered[token] = error
            raise error
        try:
            built = yield threads.deferToThread(
                self.backend.add_build, package, commit, srpms[0], rpms, None, scratch=scratch
            )
        except Exception as exc:
            self._registered[token] = exc
            raise
        self._registered[token] = built
        return built

    # -- overlays -----------------------------------------------------------------------

    @defer.inlineCallbacks
    def make_overlay(self, name: str, builds: list[Any], stale_prefix: str | None) -> Any:
        path = yield threads.deferToThread(self.backend.overlay, name, builds)
        if stale_prefix:
            yield threads.deferToThread(self._drop_stale, stale_prefix, name)
        overlay_url = self.url("overlays", name) + "/"
        # koji: a hub call, in a thread (the reactor never waits for a hub, down or not)
        destination = yield threads.deferToThread(self.destination_url)
        text = overlaymod.repo_file(
            [
                (f"gating-overlay-{name}"[:200], overlay_url, 1),
                (f"gating-{self.config.destination_tag}", destination, 50),
            ]
        )
        repofile = self.root / "repofiles" / f"{name}.repo"
        tmp = repofile.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(repofile)
        return path, overlay_url, self.url("repofiles", f"{name}.repo"), text

    def _drop_stale(self, prefix: str, keep: str) -> None:
        folder = Path(self.backend.scratch_root) / "overlays"
        if not folder.is_dir():
            return
        for name in overlaymod.stale_overlays((e.name for e in folder.iterdir()), prefix, keep):
            self.backend.drop_overlay(name)
            (self.root / "repofiles" / f"{name}.repo").unlink(missing_ok=True)


def _fire(d: defer.Deferred, outcome: Any) -> None:
    if d.called:
        return  # cancelled by its caller
    if isinstance(outcome, Failure):
        d.errback(outcome)
    else:
        d.callback(outcome)


class GateProxy:
    """The gate as a built-in job reaches it: the local scheduler, or the master of the
    cluster where it is active (:mod:`gating.gaterpc`)."""

    def __init__(self, master: Any) -> None:
        self.master = master

    def export_acquire(self, key: str, attempt: int) -> defer.Deferred:
        return gaterpc.call(self.master, "export_acquire", key, attempt)

    def export_step(
        self, key: str, attempt: int, step: str, details: dict[str, Any] | None = None
    ) -> defer.Deferred:
        return gaterpc.call(self.master, "export_step", key, attempt, step, details or {})

    def export_check_branch(self, key: str, attempt: int) -> defer.Deferred:
        return gaterpc.call(self.master, "export_check_branch", key, attempt)

    def export_tagging(self, key: str, attempt: int, nvr: str, tag: str) -> defer.Deferred:
        return gaterpc.call(self.master, "export_tagging", key, attempt, nvr, tag)

    def export_landed(
        self, key: str, attempt: int, nvr: str, backend_seconds: float | None = None
    ) -> defer.Deferred:
        extra = () if backend_seconds is None else (backend_seconds,)
        return gaterpc.call(self.master, "export_landed", key, attempt, nvr, *extra)

    def export_failed(
        self, key: str, attempt: int, reason: str, backend_seconds: float | None = None
    ) -> defer.Deferred:
        extra = () if backend_seconds is None else (backend_seconds,)
        return gaterpc.call(self.master, "export_failed", key, attempt, reason, *extra)

    def job_failed(self, key: str, attempt: int, reason: str) -> defer.Deferred:
        return gaterpc.call(self.master, "job_failed", key, attempt, reason)


def _gate(master: Any) -> GateProxy | None:
    if master.scheduler_manager.namedServices.get(GATE) is None:
        return None
    return GateProxy(master)


class _BuiltinStep(buildstep.BuildStep):
    renderables = ()

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._logs: dict[str, Any] = {}
        self._waiting: defer.Deferred | None = None

    @defer.inlineCallbacks
    def say(self, line: str, name: str = "stdio") -> Any:
        if name not in self._logs:
            self._logs[name] = yield self.addLog(name)
        yield self._logs[name].addStdout(time.strftime("%H:%M:%S ") + line + "\n")

    def _item(self) -> dict[str, Any]:
        props = self.build.getProperties()
        return {
            "queue": props.getProperty("gating_queue"),
            "change": props.getProperty("gating_change"),
            "attempt": props.getProperty("gating_attempt"),
            "project": props.getProperty("gating_project"),
            "commit": props.getProperty("gating_merge_commit"),
            "ahead": props.getProperty("gating_ahead") or [],
        }

    def _own(self) -> tuple[str, str]:
        """The project and commit this run is about (gate item, or the source stamp)."""
        item = self._item()
        if item["change"]:
            return item["project"], item["commit"]
        stamps = self.build.getAllSourceStamps()
        if not stamps or not stamps[0].project or not stamps[0].revision:
            raise overlaymod.RunError(
                "this run names no project and commit (a built-in job needs a gate item, "
                "or a source stamp with project and revision)"
            )
        return stamps[0].project, stamps[0].revision

    @defer.inlineCallbacks
    def interrupt(self, reason: Any) -> Any:
        if self._waiting is not None and not self._waiting.called:
            self._waiting.cancel()
        yield super().interrupt(reason)


class ScratchBuild(_BuiltinStep):
    """``uses: koji-scratch-build``."""

    name = "scratch-build"

    @defer.inlineCallbacks
    def run(self) -> Any:
        svc = backend_service(self.master)
        item = self._item()
        try:
            project, commit = self._own()
            wanted = overlaymod.packages_to_build(project, commit, item["ahead"])
        except overlaymod.RunError as exc:
            yield self.say(f"error: {exc}")
            self.descriptionDone = [str(exc)[:200]]
            return results.FAILURE
        for package, rev in wanted:
            yield self.say(f"needs {package} at {rev[:12]}")
        waits = [svc.scratch(package, rev, self) for package, rev in wanted]
        self._waiting = defer.DeferredList(waits, consumeErrors=True)
        outcomes = yield self._waiting
        builds, failed = [], []
        for (package, rev), (ok, value) in zip(wanted, outcomes, strict=True):
            if ok:
                builds.append(value)
                how = "reused" if value.reused else "built"
                yield self.say(f"{package} at {rev[:12]}: {value.nvr} ({how})")
            else:
                if value.check(defer.CancelledError):
                    return results.CANCELLED
                failed.append(f"{package} at {rev[:12]}: {value.getErrorMessage()}")
                yield self.say(f"{package} at {rev[:12]}: FAILED: {value.getErrorMessage()}")
        if failed:
            reason = f"scratch build failed: {'; '.join(failed)}"
            self.descriptionDone = [reason[:250]]
            gate = _gate(self.master)
            if item["change"] and gate is not None:
                yield gate.job_failed(item["change"], item["attempt"], reason)
            return results.FAILURE
        name = overlaymod.overlay_name(
            item["queue"], item["change"], item["attempt"], self.build.buildid
        )
        prefix = (
            overlaymod.overlay_prefix(item["queue"], item["change"]) if item["change"] else None
        )
        try:
            _path, overlay_url, repofile_url, text = yield svc.make_overlay(name, builds, prefix)
        except Exception as exc:  # e.g. a full disk: the overlay was left as it was
            reason = f"overlay repository {name}: {exc}"
            yield self.say(f"error: {reason}")
            self.descriptionDone = [reason[:250]]
            gate = _gate(self.master)
            if item["change"] and gate is not None:
                yield gate.job_failed(item["change"], item["attempt"], reason)
            return results.FAILURE
        yield self.say(f"overlay {name}: {overlay_url}")
        yield self.say("repo file:\n" + text)
        yield self.addURL("overlay repository", overlay_url)
        yield self.addURL(".repo file", repofile_url)
        self.setProperty("gating_overlay_url", overlay_url, "scratch-build")
        self.setProperty("gating_repo_file_url", repofile_url, "scratch-build")
        self.setProperty("gating_repo_file", text, "scratch-build")
        self.setProperty(
            "gating_scratch_builds",
            [
                {"package": b.package, "commit": b.commit, "nvr": b.nvr, "reused": b.reused}
                for b in builds
            ],
            "scratch-build",
        )
        if item["change"] and svc.config.mode == "promote":
            # The candidate (non-scratch) build runs while the item is tested.
            svc.candidate(project, commit, self).addErrback(
                lambda f: log.msg(f"candidate build of {project}: {f.getErrorMessage()}")
            )
        reused = sum(1 for b in builds if b.reused)
        self.descriptionDone = [f"{len(builds)} scratch builds ({reused} reused), overlay {name}"]
        return results.SUCCESS


class Export(_BuiltinStep):
    """``uses: koji-export``: the serial export section of a gate item. The time its
    section spends in backend calls (``backend_seconds``: the build in mode ``rebuild``,
    the tag, untag and repo calls) goes to the gate with the section's outcome, for the
    record (``export-holds.jsonl``)."""

    name = "export"
    backend_seconds = 0.0

    def _backend(self, fn: Any, *args: Any) -> defer.Deferred:
        """``fn(*args)``, a blocking backend call, in a thread; its time there is added to
        ``backend_seconds``."""

        def timed() -> Any:
            start = time.monotonic()
            try:
                return fn(*args)
            finally:
                self.backend_seconds += time.monotonic() - start

        return threads.deferToThread(timed)

    @defer.inlineCallbacks
    def _step(self, gate: GateProxy, key: str, attempt: int, step: str, **details: Any) -> Any:
        """Record ``step`` in the gate's export journal (in the database when this fires);
        False: the attempt is no longer current, stop (the gate undoes what landed)."""
        go_on = yield gate.export_step(key, attempt, step, details)
        if go_on:
            yield self._test_pause(step)
        return bool(go_on)

    def _test_pause(self, step: str) -> Any:
        """Integration tests only (``GATING_TEST_HOOKS_DIR``): stop after ``step`` when the
        test asked for it, and say so in ``paused-export-after-<step>``."""
        if not pause_requested(f"pause-export-after-{step}", str(self.build.buildid)):
            return None
        self._waiting = defer.Deferred()
        return self._waiting

    @defer.inlineCallbacks
    def _stale(self) -> Any:
        yield self.say("this attempt is no longer current; the gate decides again")
        self.descriptionDone = ["export stopped: the attempt is no longer current"]
        return results.CANCELLED

    @defer.inlineCallbacks
    def run(self) -> Any:
        svc = backend_service(self.master)
        item = self._item()
        if not item["change"]:
            self.descriptionDone = ["not a gate run: nothing exported"]
            yield self.say("not a gate run (no gate item): nothing is exported")
            return results.SKIPPED
        gate = _gate(self.master)
        key, attempt = item["change"], item["attempt"]
        project, commit = item["project"], item["commit"]
        mode = svc.config.mode
        dest = svc.config.destination_tag
        try:
            if mode == "promote":
                yield self.say(f"candidate build of {project} at {commit[:12]}")
                self._waiting = svc.candidate(project, commit, self)
                release = yield self._waiting
                yield self.say(f"candidate {release.nvr} is in {svc.config.candidate_tag}")
            yield self.say(f"waiting for the export section of queue {item['queue']}")
            self._waiting = gate.export_acquire(key, attempt)
            yield self._waiting
            yield self.say("holding the export section")
            # Nothing is built or tagged for a state that can no longer merge: a branch
            # moved outside the gate sends the item back to testing on the new tip.
            if not (yield gate.export_check_branch(key, attempt)):
                yield self.say(
                    "not exported: the branch moved outside the gate (the item is tested "
                    "again on the new tip), or this attempt is no longer current"
                )
                self.descriptionDone = ["not exported: the branch moved or the item was reset"]
                return results.CANCELLED
            # Each step goes to the gate's export journal before the next one runs, so a
            # master killed anywhere in the section finishes or undoes it on restart.
            intent = {
                "mode": mode,
                "tag": dest,
                "candidate_tag": svc.config.candidate_tag or "",
                "commit": commit,
                "nvr": release.nvr if mode == "promote" else "",
            }
            if not (yield self._step(gate, key, attempt, "intent", **intent)):
                return (yield self._stale())
            if mode == "rebuild":
                started = time.monotonic()
                self._waiting = svc.release(project, commit, self)
                try:
                    release = yield self._waiting
                finally:
                    self.backend_seconds += time.monotonic() - started
                how = "reused (same commit)" if release.reused else "built"
                yield self.say(f"non-scratch build {release.nvr}: {how}")
                if not (yield self._step(gate, key, attempt, "built", nvr=release.nvr)):
                    return (yield self._stale())
            if release.url:
                yield self.addURL(f"build {release.nvr}", release.url)
            if not (yield gate.export_tagging(key, attempt, release.nvr, dest)):
                return (yield self._stale())
            yield self._test_pause("tagging")
            tagged = yield self._backend(svc.backend.tag, dest, release.nvr)
            yield self.say(f"{release.nvr} {'tagged into' if tagged else 'already in'} {dest}")
            if not (yield self._step(gate, key, attempt, "tagged")):
                return (yield self._stale())
            if mode == "promote" and svc.config.candidate_tag:
                yield self._backend(svc.backend.untag, svc.config.candidate_tag, release.nvr)
                if not (yield self._step(gate, key, attempt, "candidate-untagged")):
                    return (yield self._stale())
            repo = yield self._backend(svc.backend.publish_repo, dest)
            yield self.say(f"repository of {dest} regenerated ({repo})")
            if not (yield self._step(gate, key, attempt, "repo-ready")):
                return (yield self._stale())
            landed = yield gate.export_landed(key, attempt, release.nvr, self.backend_seconds)
            if not landed:
                return (yield self._stale())
        except defer.CancelledError:
            yield self.say("stopped: the item was reset or dequeued")
            return results.CANCELLED
        except Exception as exc:  # every backend error fails the item, with its message
            reason = str(exc) or type(exc).__name__
            yield self.say(f"export failed: {reason}")
            # The gate untags what this attempt may have tagged when it reports the item.
            yield gate.export_failed(key, attempt, reason, self.backend_seconds)
            self.descriptionDone = [f"export failed: {reason}"[:250]]
            return results.FAILURE
        self.descriptionDone = [f"exported {release.nvr} to {dest}"]
        self.setProperty("gating_exported", release.nvr, "export")
        return results.SUCCESS


class RegisterBuild(buildstep.BuildStep):
    """The rpmbuild builder's last step: hand the uploaded RPMs to the backend."""

    name = "register"
    renderables = ()

    def __init__(self, incoming: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.incoming = incoming

    @defer.inlineCallbacks
    def run(self) -> Any:
        svc = backend_service(self.master)
        props = self.build.getProperties()
        token = props.getProperty("gating_build_token")
        directory = Path(self.incoming) / str(token)
        stdio = yield self.addLog("stdio")
        try:
            built = yield svc.register(
                token,
                props.getProperty("gating_build_package"),
                props.getProperty("gating_build_commit"),
                bool(props.getProperty("gating_build_scratch")),
                directory,
            )
        except Exception as exc:
            yield stdio.addStderr(f"{exc}\n")
            self.descriptionDone = [str(exc)[:250]]
            return results.FAILURE
        finally:
            yield threads.deferToThread(_remove_tree, directory)
        yield stdio.addStdout(json.dumps(built.record(), indent=1, sort_keys=True) + "\n")
        self.descriptionDone = [f"{built.nvr} ({'reused' if built.reused else 'kept'})"]
        return results.SUCCESS


def _remove_tree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


BUILTIN_STEPS: dict[str, type[_BuiltinStep]] = {
    "koji-scratch-build": ScratchBuild,
    "koji-export": Export,
}
