"""gating.inrepojob: the steps of ``uses: in-repo-pipeline`` on Buildbot's fake build, and
the builder the master makes for it. (The real thing, a master and workers running a
repository's own file in the gate, is tests/integration/test_inrepo_pipeline.py.)"""

from __future__ import annotations

import ntpath
import textwrap
import uuid
from pathlib import Path

import pytest
from buildbot.process.results import FAILURE, SUCCESS
from buildbot.test.reactor import TestReactorMixin
from buildbot.test.steps import ExpectShell, TestBuildStepMixin
from twisted.internet import defer
from twisted.trial import unittest

import gating.inrepojob
from gating import __version__, inrepo
from gating.diagnostics import Collector
from gating.inrepojob import runner_command, runner_python
from gating.master import job_factory, to_buildbot
from gating.pipeline import parse_pipeline
from gating.site import load_config
from tests.test_steps import silence_deprecations

NONCE = "00112233445566778899aabbccddeeff"
# Buildbot's fake worker's base directory is /wrk: the runner's interpreter there.
PYTHON = "/wrk/gating-venv/bin/python3"
RUNNER = f"buildbot-gating {__version__} (Python 3.11.7, /srv/venv/bin/python3)"
RUNNER_LINE = f"{inrepo.MARKER} {NONCE} runner {RUNNER}\n"
SITE = """\
trigger: gate
pipeline: [own]
jobs:
  own: {uses: in-repo-pipeline, architectures: x86_64, file: ci/gate.yaml, timeout: 900}
"""


def site_pipeline(text: str = SITE):
    errors = Collector()
    pipeline = parse_pipeline(textwrap.dedent(text), "gate.yaml", "gate", errors)
    assert not errors, errors.diagnostics
    return pipeline


def test_the_runner_is_the_python3_of_the_workers_gating_venv_link():
    assert runner_python("/srv/gating/workers/w1") == (
        "/srv/gating/workers/w1/gating-venv/bin/python3"
    )
    assert runner_python("C:\\w1", ntpath.join) == "C:\\w1\\gating-venv\\bin\\python3"


def test_the_runner_command_names_only_the_checked_file_the_arch_and_the_nonce():
    assert runner_command(PYTHON, "ci/gate.yaml", "x86_64", NONCE) == [
        "/wrk/gating-venv/bin/python3",
        "-P",
        "-m",
        "gating.inrepo",
        "--file",
        "ci/gate.yaml",
        "--arch",
        "x86_64",
        "--nonce",
        NONCE,
        "--root",
        ".",
    ]
    for bad in ("../x", "-rf", "/etc/passwd"):
        with pytest.raises(ValueError):
            runner_command(PYTHON, bad, "x86_64", NONCE)


class InRepoStepTests(TestBuildStepMixin, TestReactorMixin, unittest.TestCase):
    @defer.inlineCallbacks
    def setUp(self):
        silence_deprecations(self)
        self.setup_test_reactor()
        yield self.setup_test_build_step()
        self.patch(gating.inrepojob.uuid, "uuid4", lambda: uuid.UUID(NONCE))

    def step(self) -> None:
        pipeline = site_pipeline()
        factory = job_factory(pipeline, pipeline.job("own"), "x86_64", None)
        names = [s.kwargs.get("name") or s.step_class.name for s in factory.steps]
        self.assertEqual(names, ["checkout", "repo-file", "in-repo-pipeline"])
        self.setup_step(factory.steps[-1])
        for key, value in {
            "gating_change": "nova~3",
            "gating_project": "nova",
            "gating_merge_commit": "a" * 40,
            "gating_arch": "x86_64",
            "gating_secret": "never-passed",
        }.items():
            self.build.setProperty(key, value, "gate")

    def expected_env(self) -> dict[str, str]:
        env = dict.fromkeys(inrepo.RUN_VARIABLES, "")
        env.update(
            GATING_CHANGE="nova~3",
            GATING_PROJECT="nova",
            GATING_MERGE_COMMIT="a" * 40,
            GATING_ARCH="x86_64",
        )
        return env

    def run_step_now(self) -> defer.Deferred:
        d = self.run_step()
        for _ in range(100):
            if d.called:
                break
            self.reactor.advance(0)
        self.assertTrue(d.called, "the step did not finish")
        return d

    def expect_runner(self, output: str, rc: int) -> None:
        self.expect_commands(
            ExpectShell(
                workdir="wkdir",
                command=runner_command(PYTHON, "ci/gate.yaml", "x86_64", NONCE),
                env=self.expected_env(),
                timeout=900,
                max_time=900,
            )
            .stdout(output)
            .exit(rc)
        )

    @defer.inlineCallbacks
    def test_a_passing_file_gives_one_log_per_job(self):
        self.step()
        begin, end = f"{inrepo.MARKER} {NONCE} begin", f"{inrepo.MARKER} {NONCE} end"
        self.expect_runner(
            f"{RUNNER_LINE}stage 1 of 1 on x86_64: unit[0], lint[0]\n{begin} job unit\nunit ok\n"
            f"{end} job unit: passed\n{begin} job lint\nlint ok\n{end} job lint: passed\n",
            0,
        )
        self.expect_outcome(result=SUCCESS, state_string="ci/gate.yaml: every stage passed")
        self.expect_log_file("job unit", "unit ok\n")
        self.expect_log_file("job lint", "lint ok\n")
        self.expect_property("gating_runner", RUNNER)
        yield self.run_step_now()
        self.assertNotIn("runner version", self.get_nth_step(0).logs)
        self.assertNotIn("no gating runner", self.get_nth_step(0).logs)

    @defer.inlineCallbacks
    def test_a_refused_file_fails_the_job(self):
        self.step()
        self.expect_runner(
            f"{RUNNER_LINE}ci/gate.yaml:1:1: 'trigger': a pipeline file from a repository "
            "cannot say\n",
            2,
        )
        self.expect_outcome(
            result=FAILURE, state_string="ci/gate.yaml refused (see stdio) (failure)"
        )
        yield self.run_step_now()

    @defer.inlineCallbacks
    def test_a_failed_job_fails_the_job(self):
        self.step()
        self.expect_runner(f"{RUNNER_LINE}job unit: failed (exit 1)\n", 1)
        self.expect_outcome(result=FAILURE, state_string="ci/gate.yaml: a job failed (failure)")
        yield self.run_step_now()

    @defer.inlineCallbacks
    def test_a_worker_without_the_package_fails_the_job_saying_how_to_deploy_it(self):
        # The worker's gating-venv has no buildbot-gating: Python's own error, with status 1
        # (a failed job's status too), and no runner line.
        self.step()
        self.expect_runner(
            "/wrk/gating-venv/bin/python3: Error while finding module specification for "
            "'gating.inrepo' (ModuleNotFoundError: No module named 'gating')\n",
            1,
        )
        self.expect_outcome(
            result=FAILURE, state_string="worker test has no gating runner (failure)"
        )
        self.expect_log_file(
            "no gating runner",
            f"worker test has no gating runner: {PYTHON} -P -m gating.inrepo did not start (exit "
            "status 1; what it printed is in stdio).\nA worker that runs in-repo pipeline jobs "
            f"needs buildbot-gating (this master runs {__version__}) next to buildbot-worker, "
            "its Python environment linked as WORKER_BASEDIR/gating-venv: deploy it with the "
            "gating_worker role (ansible/site.yml) or workers/make-worker (README, "
            '"Deploying").\n',
        )
        yield self.run_step_now()
        self.assertNotIn("gating_runner", self.build.properties)

    @defer.inlineCallbacks
    def test_a_worker_without_the_interpreter_fails_the_job_saying_how_to_deploy_it(self):
        # No gating-venv link: the worker cannot start the command (Twisted's child says
        # so on stderr).
        self.step()
        self.expect_commands(
            ExpectShell(
                workdir="wkdir",
                command=runner_command(PYTHON, "ci/gate.yaml", "x86_64", NONCE),
                env=self.expected_env(),
                timeout=900,
                max_time=900,
            )
            .stderr(f"Upon execvpe {PYTHON}: No such file or directory\n")
            .exit(1)
        )
        self.expect_outcome(
            result=FAILURE, state_string="worker test has no gating runner (failure)"
        )
        yield self.run_step_now()

    @defer.inlineCallbacks
    def test_a_runner_of_another_version_runs_and_the_step_says_so(self):
        self.step()
        other = "buildbot-gating 0.0.9 (Python 3.11.2, /o/p)"
        begin, end = f"{inrepo.MARKER} {NONCE} begin", f"{inrepo.MARKER} {NONCE} end"
        self.expect_runner(
            f"{inrepo.MARKER} {NONCE} runner {other}\n{begin} job unit\nunit ok\n"
            f"{end} job unit: passed\n",
            0,
        )
        self.expect_outcome(result=SUCCESS, state_string="ci/gate.yaml: every stage passed")
        self.expect_log_file("job unit", "unit ok\n")
        self.expect_property("gating_runner", other)
        self.expect_log_file(
            "runner version",
            f"the worker's runner is {other}; this master is buildbot-gating {__version__}.\n"
            "The run went on (the runner's command line, variables, markers and exit statuses "
            "are compatible between versions), but the worker should be deployed again with "
            "the master's package.\n",
        )
        yield self.run_step_now()

    @defer.inlineCallbacks
    def test_a_runner_line_only_a_job_printed_is_no_runner(self):
        self.step()
        begin = f"{inrepo.MARKER} {NONCE} begin"
        self.expect_runner(f"{begin} job unit\n{RUNNER_LINE}", 0)
        self.expect_outcome(
            result=FAILURE, state_string="worker test has no gating runner (failure)"
        )
        yield self.run_step_now()


# -- the master's configuration --------------------------------------------------------------


def test_the_in_repo_job_is_a_builder_on_the_pool_of_its_architecture(tmp_path: Path):
    config = tmp_path / "config"
    (config / "pipelines").mkdir(parents=True)
    (config / "gating.yaml").write_text(
        "title: t\nworkers: workers.yaml\npipelines: pipelines\nforge-dir: git\n"
        "projects:\n  - {name: nova, repository: /srv/nova.git, branches: [main], queue: rdo}\n"
    )
    (config / "workers.yaml").write_text(
        "workers:\n  - {name: w-x86, arch: x86_64}\n  - {name: w-arm, arch: aarch64}\n"
    )
    (config / "pipelines" / "gate.yaml").write_text(SITE)
    loaded = load_config(config)
    spec = loaded.plan.builder("gate/own/x86_64")
    assert (spec.kind, spec.workernames) == ("job", ("w-x86",))
    assert not any(b.kind in ("builtin", "rpmbuild") for b in loaded.plan.builders)
    (tmp_path / "master" / "secrets").mkdir(parents=True)
    c = to_buildbot(loaded, tmp_path / "master")
    (builder,) = [b for b in c["builders"] if b.name == "gate/own/x86_64"]
    assert [s.step_class.__name__ for s in builder.factory.steps][-1] == "InRepoPipeline"
    # The gate runs the site's pipeline for the project: the master never reads the file.
    (gate,) = [s for s in c["schedulers"] if s.name == "gate"]
    assert list(gate.builderNames) == ["gate"]


def test_an_arch_without_a_pool_is_an_error_for_the_in_repo_job(tmp_path: Path):
    config = tmp_path / "config"
    (config / "pipelines").mkdir(parents=True)
    (config / "gating.yaml").write_text(
        "title: t\nworkers: workers.yaml\npipelines: pipelines\nforge-dir: git\n"
        "projects:\n  - {name: nova, repository: /srv/nova.git, branches: [main], queue: rdo}\n"
    )
    (config / "workers.yaml").write_text("workers:\n  - {name: w-arm, arch: aarch64}\n")
    (config / "pipelines" / "gate.yaml").write_text(SITE)
    with pytest.raises(Exception, match="runs on architecture 'x86_64', but no worker pool"):
        load_config(config)
