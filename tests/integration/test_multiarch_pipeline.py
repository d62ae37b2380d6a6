"""A real master and two workers over PB, one declared x86_64 and one aarch64, run
3-stage pipelines with lpci's stage semantics and a cross-architecture input."""

from __future__ import annotations

import io
import tarfile

import pytest

from tests.integration.conftest import FAILURE, SUCCESS

WORKER_OF = {"x86_64": "test-x86_64", "aarch64": "test-aarch64"}


@pytest.fixture(scope="module")
def site(make_site):
    return make_site("multiarch")


def run_pipeline(site, name: str) -> dict:
    site.force(name)
    return site.wait_for_build(name)


def job_builds(site, pipeline: str) -> dict[str, list[dict]]:
    return {
        name: site.builds_of(name) for name in site.builder_ids() if name.startswith(pipeline + "/")
    }


def test_failing_job_stops_its_arch_and_its_consumers_but_not_the_other_arch(site):
    run = run_pipeline(site, "failing")
    assert run["results"] == FAILURE
    builds = job_builds(site, "failing")
    results = {name: [b["results"] for b in bs] for name, bs in builds.items()}

    assert results["failing/compile/x86_64"] == [FAILURE]
    # Its stage-1 sibling on x86_64 ran to the end, though compile failed first.
    assert results["failing/lint/x86_64"] == [SUCCESS]
    lint = builds["failing/lint/x86_64"][0]
    assert "lint ran to the end" in site.step_log(lint["buildid"], "run")
    assert lint["complete_at"] > builds["failing/compile/x86_64"][0]["complete_at"]
    # x86_64's later stages did not run, nor did the aarch64 job taking compile's output.
    assert results["failing/unit/x86_64"] == []
    assert results["failing/final-x86/x86_64"] == []
    assert results["failing/consume/aarch64"] == []
    # aarch64's own stages went on: stage 1 and its stage-2 job.
    assert results["failing/build-arm/aarch64"] == [SUCCESS]
    assert results["failing/arm-test/aarch64"] == [SUCCESS]
    # final-arm is behind consume (aarch64 stage 2), which did not pass.
    assert results["failing/final-arm/aarch64"] == []

    summary = site.properties(run["buildid"])["gating_results"]
    assert summary == {
        "arm-test[0]@aarch64": "success",
        "build-arm[0]@aarch64": "success",
        "compile[0]@x86_64": "failure",
        "consume[0]@aarch64": "skipped",
        "final-arm[0]@aarch64": "skipped",
        "final-x86[0]@x86_64": "skipped",
        "lint[0]@x86_64": "success",
        "unit[0]@x86_64": "skipped",
    }


def test_aarch64_job_consumes_x86_64_output_through_the_master(site):
    run = run_pipeline(site, "passing")
    assert run["results"] == SUCCESS
    builds = job_builds(site, "passing")
    assert {name: [b["results"] for b in bs] for name, bs in builds.items()} == {
        "passing/build/x86_64": [SUCCESS],
        "passing/test-arm/aarch64": [SUCCESS],
        "passing/test-x86/x86_64": [SUCCESS],
        "passing/report/x86_64": [SUCCESS],
        "passing/report/aarch64": [SUCCESS],
    }
    build = builds["passing/build/x86_64"][0]
    test_arm = builds["passing/test-arm/aarch64"][0]
    # Whole seconds, and Buildbot writes a build's complete_at after its requests completed
    # (which is what lets the next job start): allow one second.
    assert test_arm["started_at"] >= build["complete_at"] - 1
    assert "artifact: built on x86_64 by the gate" in site.step_log(test_arm["buildid"], "run")
    # The order is exact in the pipeline's own log: test-arm started after build passed.
    log = site.step_log(run["buildid"], "run-pipeline", "pipeline").splitlines()
    finished = [i for i, line in enumerate(log) if line.startswith("build[0]@x86_64 on ")]
    assert finished and "success" in log[finished[0]]
    assert site.properties(test_arm["buildid"])["workername"] == "test-aarch64"

    # The artifact really went through the master's store.
    tarball = (
        site.master_dir / "artifacts" / str(run["buildid"]) / "passing/build/0/x86_64/output.tar"
    )
    with tarfile.open(fileobj=io.BytesIO(tarball.read_bytes())) as tar:
        names = sorted(n.lstrip("./") for n in tar.getnames() if n.endswith(".txt"))
        content = tar.extractfile("./files/dist/artifact.txt").read().decode()
    assert names == ["files/dist/artifact.txt", "files/dist/sub/with space.txt"]
    assert content == "built on x86_64 by the gate\n"
    # Report ran on both arches only after both stage-2 jobs passed.
    for name in ("passing/report/x86_64", "passing/report/aarch64"):
        assert builds[name][0]["started_at"] >= test_arm["complete_at"] - 1


def test_every_job_instance_ran_on_a_worker_of_its_arch(site):
    seen = 0
    for pipeline in ("failing", "passing"):
        for name, bs in job_builds(site, pipeline).items():
            arch = name.rsplit("/", 1)[1]
            for build in bs:
                props = site.properties(build["buildid"])
                assert props["workername"] == WORKER_OF[arch], name
                assert props["gating_arch"] == arch
                seen += 1
    # Runs after both pipelines above: 4 builds of 'failing', 5 of 'passing'.
    assert seen == 9
