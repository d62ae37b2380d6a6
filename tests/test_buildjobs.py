"""gating.buildjobs on Buildbot's fake master: the built-in jobs' steps against a fake gate
and a fake backend service, so the order of the export's parts is checked call by call.
(The real thing, with real builds, runs in tests/integration/test_export_*.py.)"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from buildbot.process.results import FAILURE, SKIPPED, SUCCESS
from buildbot.test.reactor import TestReactorMixin
from buildbot.test.steps import TestBuildStepMixin
from twisted.internet import defer
from twisted.trial import unittest

from gating import buildjobs, testhooks
from gating.backend import Release
from gating.buildjobs import SERVICE_NAME, BackendService, Export, ScratchBuild
from gating.localbackend import NVRConflict
from tests.test_steps import silence_deprecations

A = "a" * 40
B = "b" * 40
GATE_PROPS = {
    "gating_queue": "rdo",
    "gating_change": "ceilometer~2",
    "gating_attempt": 1,
    "gating_project": "ceilometer",
    "gating_merge_commit": B,
    "gating_ahead": [{"change": "nova~1", "project": "nova", "merge_commit": A, "revision": A}],
}


@dataclass
class FakeBuild:
    package: str
    commit: str
    nvr: str
    reused: bool = False


class FakeBackend:
    """What the export step does to the backend, in order."""

    def __init__(self, calls: list[str]) -> None:
        self.calls = calls

    def tag(self, tag: str, nvr: str) -> bool:
        self.calls.append(f"tag {tag} {nvr}")
        return True

    def untag(self, tag: str, nvr: str) -> bool:
        self.calls.append(f"untag {tag} {nvr}")
        return True

    def publish_repo(self, tag: str) -> str:
        self.calls.append(f"repo {tag}")
        return "7"


class FakeService:
    def __init__(self, mode: str = "rebuild") -> None:
        self.calls: list[str] = []
        self.config = SimpleNamespace(
            mode=mode, destination_tag="rdo-liberty", candidate_tag="rdo-candidate"
        )
        self.backend = FakeBackend(self.calls)
        self.release_error: Exception | None = None
        self.scratch_error: dict[str, Exception] = {}
        self.overlay_error: Exception | None = None

    def release(self, project: str, commit: str, step: Any) -> defer.Deferred:
        self.calls.append(f"release {project} {commit[:4]}")
        if self.release_error is not None:
            return defer.fail(self.release_error)
        return defer.succeed(Release(project, commit, f"{project}-8.0.1-1"))

    def candidate(self, project: str, commit: str, step: Any) -> defer.Deferred:
        self.calls.append(f"candidate {project} {commit[:4]}")
        return defer.succeed(Release(project, commit, f"{project}-8.0.1-1", url="http://k/t/9"))

    def scratch(self, project: str, commit: str, step: Any) -> defer.Deferred:
        self.calls.append(f"scratch {project} {commit[:4]}")
        if project in self.scratch_error:
            return defer.fail(self.scratch_error[project])
        return defer.succeed(FakeBuild(project, commit, f"{project}-1-1", reused=project == "nova"))

    def make_overlay(self, name: str, builds: list[Any], prefix: str | None) -> defer.Deferred:
        self.calls.append(f"overlay {name} {[b.nvr for b in builds]} {prefix}")
        if self.overlay_error is not None:
            return defer.fail(self.overlay_error)
        url = f"http://m/plugins/gating/repos/overlays/{name}/"
        return defer.succeed((Path("/x"), url, f"http://m/r/{name}.repo", "[gating-x]\n"))


class FakeGate:
    def __init__(self, calls: list[str]) -> None:
        self.calls = calls
        self.grant: defer.Deferred = defer.Deferred()
        self.landed = True
        self.refuse: str | None = None  # the journal step the gate answers "stop" to
        self.journal: list[tuple[str, dict]] = []
        self.backend_seconds: list[float | None] = []  # as reported with each outcome
        self.branch_moved = False  # export_check_branch answers "stop" when True
        self.branch_checks: list[tuple[str, int]] = []

    def export_step(
        self, key: str, attempt: int, step: str, details: dict | None = None
    ) -> defer.Deferred:
        self.calls.append(f"step {step}")
        self.journal.append((step, dict(details or {})))
        return defer.succeed(step != self.refuse)

    def export_acquire(self, key: str, attempt: int) -> defer.Deferred:
        self.calls.append(f"acquire {key} {attempt}")
        return self.grant

    def export_check_branch(self, key: str, attempt: int) -> defer.Deferred:
        self.branch_checks.append((key, attempt))
        return defer.succeed(not self.branch_moved)

    def export_tagging(self, key: str, attempt: int, nvr: str, tag: str) -> defer.Deferred:
        self.calls.append(f"tagging {nvr}")
        return defer.succeed(self.refuse != "tagging")

    def export_landed(
        self, key: str, attempt: int, nvr: str, backend_seconds: float | None = None
    ) -> defer.Deferred:
        self.calls.append(f"landed {key} {nvr}")
        self.backend_seconds.append(backend_seconds)
        return defer.succeed(self.landed)

    def export_failed(
        self, key: str, attempt: int, reason: str, backend_seconds: float | None = None
    ) -> defer.Deferred:
        self.calls.append(f"export failed {key}: {reason}")
        self.backend_seconds.append(backend_seconds)
        return defer.succeed(None)

    def job_failed(self, key: str, attempt: int, reason: str) -> defer.Deferred:
        self.calls.append(f"job failed {key}: {reason}")
        return defer.succeed(None)


class BuiltinStepTests(TestBuildStepMixin, TestReactorMixin, unittest.TestCase):
    @defer.inlineCallbacks
    def setUp(self):
        silence_deprecations(self)
        self.setup_test_reactor()
        yield self.setup_test_build_step()

    def wire(self, step: Any, mode: str = "rebuild", props: dict | None = None) -> None:
        self.service = FakeService(mode)
        self.gate = FakeGate(self.service.calls)
        self.master.service_manager = SimpleNamespace(namedServices={SERVICE_NAME: self.service})
        self.master.scheduler_manager = SimpleNamespace(namedServices={"gate": self.gate})
        self.setup_step(step)
        for name, value in (GATE_PROPS if props is None else props).items():
            self.build.setProperty(name, value, "gate")

    # -- koji-export ------------------------------------------------------------------

    @defer.inlineCallbacks
    def test_rebuild_builds_only_inside_the_section_then_tags_waits_for_the_repo(self):
        self.wire(Export())
        self.expect_outcome(result=SUCCESS)
        self.expect_property("gating_exported", "ceilometer-8.0.1-1", "export")
        d = self.run_step()
        # Waiting for the section: nothing built or tagged yet.
        self.assertEqual(self.service.calls, ["acquire ceilometer~2 1"])
        self.gate.grant.callback(None)
        yield d
        self.assertEqual(
            self.service.calls,
            [
                "acquire ceilometer~2 1",
                "step intent",
                f"release ceilometer {B[:4]}",
                "step built",
                "tagging ceilometer-8.0.1-1",
                "tag rdo-liberty ceilometer-8.0.1-1",
                "step tagged",
                "repo rdo-liberty",
                "step repo-ready",
                "landed ceilometer~2 ceilometer-8.0.1-1",
            ],
        )
        self.assertEqual(
            self.gate.journal[:2],
            [
                (
                    "intent",
                    {
                        "mode": "rebuild",
                        "tag": "rdo-liberty",
                        "candidate_tag": "rdo-candidate",
                        "commit": GATE_PROPS["gating_merge_commit"],
                        "nvr": "",
                    },
                ),
                ("built", {"nvr": "ceilometer-8.0.1-1"}),
            ],
        )

    @defer.inlineCallbacks
    def test_promote_builds_the_candidate_before_the_section_and_only_moves_the_tag_in_it(
        self,
    ):
        self.wire(Export(), mode="promote")
        self.expect_outcome(result=SUCCESS)
        d = self.run_step()
        self.assertEqual(
            self.service.calls, [f"candidate ceilometer {B[:4]}", "acquire ceilometer~2 1"]
        )
        self.gate.grant.callback(None)
        yield d
        self.assertEqual(
            self.service.calls[2:],
            [
                "step intent",
                "tagging ceilometer-8.0.1-1",
                "tag rdo-liberty ceilometer-8.0.1-1",
                "step tagged",
                "untag rdo-candidate ceilometer-8.0.1-1",
                "step candidate-untagged",
                "repo rdo-liberty",
                "step repo-ready",
                "landed ceilometer~2 ceilometer-8.0.1-1",
            ],
        )
        self.assertEqual(self.gate.journal[0][1]["nvr"], "ceilometer-8.0.1-1")
        self.assertFalse(any(c.startswith("release") for c in self.service.calls))

    @defer.inlineCallbacks
    def test_an_nvr_conflict_fails_the_export_and_tags_nothing(self):
        self.wire(Export())
        self.service.release_error = NVRConflict("ceilometer-8.0.1-1", B, A)
        self.gate.grant.callback(None)
        self.expect_outcome(result=FAILURE)
        yield self.run_step()
        self.assertEqual(
            self.service.calls[-1],
            "export failed ceilometer~2: NVR ceilometer-8.0.1-1 already built from a "
            "different commit: bump Release",
        )
        self.assertFalse(any(c.startswith("tag ") for c in self.service.calls))

    @defer.inlineCallbacks
    def test_a_branch_moved_outside_the_gate_stops_the_export_before_anything_is_built(self):
        from buildbot.process.results import CANCELLED

        self.wire(Export())
        self.gate.branch_moved = True
        self.gate.grant.callback(None)
        self.expect_outcome(result=CANCELLED)
        yield self.run_step()
        self.assertEqual(self.gate.branch_checks, [("ceilometer~2", 1)])
        # Asked once it holds the section; then nothing: no journal, no build, no tag.
        self.assertEqual(self.service.calls, ["acquire ceilometer~2 1"])

    @defer.inlineCallbacks
    def test_a_stale_attempt_is_not_reported_landed(self):
        self.wire(Export())
        self.gate.grant.callback(None)
        self.gate.landed = False
        from buildbot.process.results import CANCELLED

        self.expect_outcome(result=CANCELLED)
        yield self.run_step()

    @defer.inlineCallbacks
    def refused_at(self, refused: str, last: str) -> Any:
        """The gate answers "stop" to ``refused`` (the attempt is no longer current):
        nothing after that step runs (what landed is the gate's to undo)."""
        from buildbot.process.results import CANCELLED

        self.wire(Export())
        self.gate.refuse = refused
        self.gate.grant.callback(None)
        self.expect_outcome(result=CANCELLED)
        yield self.run_step()
        self.assertEqual(self.service.calls[-1], last)
        tagged = any(c.startswith("tag ") for c in self.service.calls)
        self.assertEqual(tagged, refused in ("tagged", "repo-ready"))
        self.assertFalse(any(c.startswith("landed") for c in self.service.calls))

    def test_a_refused_intent_stops_before_the_build(self):
        return self.refused_at("intent", "step intent")

    def test_a_refused_built_stops_before_the_tag(self):
        return self.refused_at("built", "step built")

    def test_a_refused_tagging_stops_before_the_tag(self):
        return self.refused_at("tagging", "tagging ceilometer-8.0.1-1")

    def test_a_refused_tagged_stops_before_the_repository(self):
        return self.refused_at("tagged", "step tagged")

    def test_a_refused_repo_ready_is_not_reported_landed(self):
        return self.refused_at("repo-ready", "step repo-ready")

    @defer.inlineCallbacks
    def test_the_test_hook_pauses_after_a_step_only_when_its_directory_says_so(self):
        import tempfile

        from buildbot.process.results import CANCELLED

        with tempfile.TemporaryDirectory() as folder:
            self.patch(testhooks.os, "environ", {testhooks.TEST_HOOKS_ENV: folder})
            (Path(folder) / "pause-export-after-tagged").write_text("")
            self.wire(Export())
            self.gate.grant.callback(None)
            self.expect_outcome(result=CANCELLED)
            d = self.run_step()
            self.assertTrue((Path(folder) / "paused-export-after-tagged").exists())
            self.assertEqual(self.service.calls[-1], "step tagged")  # and no further
            self.get_nth_step(0).interrupt("test")
            yield d

    def clocked(self) -> list[float]:
        """A clock for gating.buildjobs that only the fake backend moves: each tag takes
        0.5 s, each untag 0.25 s, each repo 1.5 s and each rebuild 10 s."""
        clock = [100.0]
        self.patch(buildjobs.time, "monotonic", lambda: clock[0])
        backend, service = self.service.backend, self.service
        for name, cost in (("tag", 0.5), ("untag", 0.25), ("publish_repo", 1.5)):
            method = getattr(backend, name)

            def advance(*args: Any, _m: Any = method, _c: float = cost) -> Any:
                clock[0] += _c
                return _m(*args)

            setattr(backend, name, advance)
        release = service.release

        def slow_release(*args: Any) -> defer.Deferred:
            d: defer.Deferred = defer.Deferred()

            def built(value: Any) -> Any:
                clock[0] += 10.0
                return value

            release(*args).addCallback(built).chainDeferred(d)
            return d

        service.release = slow_release
        return clock

    @defer.inlineCallbacks
    def test_promote_reports_the_time_its_section_spent_in_backend_calls(self):
        self.wire(Export(), mode="promote")
        self.clocked()
        self.gate.grant.callback(None)
        self.expect_outcome(result=SUCCESS)
        yield self.run_step()
        # tag + untag from the candidate tag + the new repo; waiting for the section and
        # the gate's own calls are not backend time.
        self.assertEqual(self.gate.backend_seconds, [2.25])

    @defer.inlineCallbacks
    def test_rebuild_counts_its_build_as_backend_time(self):
        self.wire(Export())
        self.clocked()
        self.gate.grant.callback(None)
        self.expect_outcome(result=SUCCESS)
        yield self.run_step()
        self.assertEqual(self.gate.backend_seconds, [12.0])

    @defer.inlineCallbacks
    def test_a_failed_export_reports_its_backend_time_too(self):
        self.wire(Export())
        clock = self.clocked()

        def broken(tag: str) -> str:
            clock[0] += 3.0
            raise RuntimeError("koji hub: newRepo failed")

        self.service.backend.publish_repo = broken
        self.gate.grant.callback(None)
        self.expect_outcome(result=FAILURE)
        yield self.run_step()
        self.assertEqual(self.gate.backend_seconds, [13.5])
        self.assertEqual(
            self.service.calls[-1], "export failed ceilometer~2: koji hub: newRepo failed"
        )

    @defer.inlineCallbacks
    def test_outside_the_gate_nothing_is_exported(self):
        self.wire(Export(), props={})
        self.expect_outcome(result=SKIPPED)
        yield self.run_step()
        self.assertEqual(self.service.calls, [])

    # -- koji-scratch-build -------------------------------------------------------------

    @defer.inlineCallbacks
    def test_scratch_builds_of_the_item_and_the_items_ahead_make_one_overlay(self):
        self.wire(ScratchBuild())
        self.expect_outcome(result=SUCCESS)
        self.expect_property(
            "gating_overlay_url",
            "http://m/plugins/gating/repos/overlays/gate-rdo-ceilometer-2-1/",
            "scratch-build",
        )
        self.expect_property("gating_repo_file", "[gating-x]\n", "scratch-build")
        self.expect_property(
            "gating_scratch_builds",
            [
                {"package": "nova", "commit": A, "nvr": "nova-1-1", "reused": True},
                {"package": "ceilometer", "commit": B, "nvr": "ceilometer-1-1", "reused": False},
            ],
            "scratch-build",
        )
        yield self.run_step()
        self.assertEqual(
            self.service.calls,
            [
                f"scratch nova {A[:4]}",
                f"scratch ceilometer {B[:4]}",
                "overlay gate-rdo-ceilometer-2-1 ['nova-1-1', 'ceilometer-1-1'] "
                "gate-rdo-ceilometer-2-",
            ],
        )

    @defer.inlineCallbacks
    def test_a_failed_scratch_build_fails_the_item_at_once_with_the_reason(self):
        self.wire(ScratchBuild())
        self.service.scratch_error["nova"] = RuntimeError(
            "koji task 41 (build) failed: http://k/work/tasks/41/"
        )
        self.expect_outcome(result=FAILURE)
        yield self.run_step()
        self.assertIn(
            f"job failed ceilometer~2: scratch build failed: nova at {A[:12]}: "
            "koji task 41 (build) failed: http://k/work/tasks/41/",
            self.service.calls,
        )
        self.assertFalse(any(c.startswith("overlay") for c in self.service.calls))

    @defer.inlineCallbacks
    def test_an_overlay_that_cannot_be_written_fails_the_item_at_once_saying_where(self):
        from gating.localbackend import RepositoryWriteError

        self.wire(ScratchBuild())
        repo = Path("/srv/backend/overlays/gate-rdo-ceilometer-2-1")
        self.service.overlay_error = RepositoryWriteError(
            repo, OSError(28, "No space left on device", "/srv/backend/overlays/.staging/x")
        )
        self.expect_outcome(result=FAILURE)
        yield self.run_step()
        self.assertEqual(
            self.service.calls[-1],
            "job failed ceilometer~2: overlay repository gate-rdo-ceilometer-2-1: cannot "
            f"write repository {repo}: No space left on device "
            "(/srv/backend/overlays/.staging/x); it was left as it was",
        )

    @defer.inlineCallbacks
    def test_an_item_ahead_without_a_merge_commit_is_named(self):
        props = dict(GATE_PROPS, gating_ahead=[{"change": "nova~1", "project": "nova"}])
        self.wire(ScratchBuild(), props=props)
        self.expect_outcome(result=FAILURE)
        yield self.run_step()
        self.assertEqual(self.service.calls, [])


class OnceTests(unittest.TestCase):
    """BackendService._once: one build per key at a time, every caller gets its outcome."""

    def service(self) -> BackendService:
        svc = BackendService.__new__(BackendService)
        svc._inflight = {}
        return svc

    def test_callers_of_a_running_key_share_one_build(self):
        svc = self.service()
        started: list[defer.Deferred] = []

        def make() -> defer.Deferred:
            started.append(defer.Deferred())
            return started[-1]

        first = svc._once(("nova", A, "scratch"), make)
        second = svc._once(("nova", A, "scratch"), make)
        other = svc._once(("nova", B, "scratch"), make)
        self.assertEqual(len(started), 2)
        started[0].callback("built")
        self.assertEqual(self.successResultOf(first), "built")
        self.assertEqual(self.successResultOf(second), "built")
        self.assertNoResult(other)
        # Finished keys start again (the backend then finds the cached build).
        svc._once(("nova", A, "scratch"), make)
        self.assertEqual(len(started), 3)

    def test_a_failure_reaches_every_caller_and_a_cancelled_caller_does_not_stop_the_build(
        self,
    ):
        svc = self.service()
        running: defer.Deferred = defer.Deferred()
        first = svc._once(("nova", A, "scratch"), lambda: running)
        second = svc._once(("nova", A, "scratch"), lambda: running)
        first.cancel()
        self.failureResultOf(first, defer.CancelledError)
        running.errback(RuntimeError("rpmbuild failed"))
        self.failureResultOf(second, RuntimeError)


class ScmUrlTests(unittest.TestCase):
    def service(self, scm_url: str | None) -> BackendService:
        from gating.backend import BackendConfig

        svc = BackendService.__new__(BackendService)
        svc.config = BackendConfig(kind="koji", scm_url=scm_url)
        svc.root = Path("/srv/gating/backend")
        return svc

    def test_koji_builds_from_the_masters_scm_mirror_by_default(self):
        self.assertEqual(
            self.service(None).scm_url("nova", A),
            f"git+file:///srv/gating/backend/scm/nova.git#{A}",
        )

    def test_a_site_serving_the_mirror_names_its_url(self):
        self.assertEqual(
            self.service("git+https://gating.example.org/scm/{project}.git").scm_url("nova", A),
            f"git+https://gating.example.org/scm/nova.git#{A}",
        )


class ScmMirrorTests(unittest.TestCase):
    """_ensure_scm: the commit a build names is pushed to the SCM mirror by git, from an
    argument list, after it was checked to be a commit id."""

    def setUp(self):
        self.svc = BackendService.__new__(BackendService)
        self.svc.root = Path("/srv/gating/backend")
        self.svc.project_repos = {"nova": "/srv/forge/nova $(touch pwned).git"}
        self.calls: list[tuple[list[str], dict]] = []

        def run(argv, **kwargs):
            self.calls.append((argv, kwargs))
            missing = argv[3:5] == ["cat-file", "-e"]
            return SimpleNamespace(returncode=1 if missing else 0, stderr="")

        self.patch(buildjobs.subprocess, "run", run)
        self.patch(Path, "exists", lambda self: True)  # the mirror exists already

    def test_the_commit_is_pushed_as_single_arguments(self):
        self.svc._ensure_scm("nova", A)
        mirror = "/srv/gating/backend/scm/nova.git"
        self.assertEqual(
            [argv for argv, _ in self.calls],
            [
                ["git", "-C", mirror, "cat-file", "-e", f"{A}^{{commit}}"],
                ["git", "-C", "/srv/forge/nova $(touch pwned).git", "push", "-q", "--"]
                + [mirror, f"{A}:refs/heads/gating/{A}"],
            ],
        )
        self.assertFalse(any(kwargs.get("shell") for _, kwargs in self.calls))

    def test_a_revision_that_is_not_a_commit_id_never_reaches_git(self):
        # regression: the revision of a source stamp went to 'git cat-file' unchecked, and
        # the id check ended in '$' (a final newline passed)
        for bad in (A + "\n", "--upload-pack=touch pwned", "-f", "HEAD", "$(touch pwned)", ""):
            with self.assertRaisesRegex(buildjobs.BuildError, "expected a full commit id"):
                self.svc._ensure_scm("nova", bad)
        with self.assertRaisesRegex(buildjobs.BuildError, "has no repository"):
            self.svc._ensure_scm("../nova", A)
        self.assertEqual(self.calls, [])
