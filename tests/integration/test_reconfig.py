"""``buildbot reconfig`` with a broken pipeline file keeps the running configuration and
logs every error with its place; a fixed file is then taken."""

from __future__ import annotations

from tests.integration.conftest import SITES, SUCCESS


def test_broken_reconfig_keeps_running_config_and_logs_errors(make_site):
    site = make_site("reconfig", source=SITES / "multiarch")
    before = set(site.builder_ids())
    pipelines = site.config_dir / "pipelines"
    (pipelines / "extra.yaml").write_text(
        "pipeline: [hello]\njobs:\n  hello:\n    architectures: [x86_64]\n    run: echo hi\n"
    )
    original = (pipelines / "passing.yaml").read_text()
    (pipelines / "passing.yaml").write_text(
        original.replace(
            "  build:\n    architectures: [x86_64]", "  build:\n    architecture: [x86_64]"
        )
    )
    (pipelines / "broken.yaml").write_text("pipeline:\n  - a\n jobs:\n  a: {}\n")

    site.reconfig()

    log = (site.master_dir / "twistd.log").read_text()
    assert "configuration update aborted without making any changes" in log
    assert (
        "config/pipelines/passing.yaml:8:5: unknown key 'architecture' in job 'build'; "
        "did you mean 'architectures'?"
    ) in log
    assert (
        "config/pipelines/passing.yaml:8:5: job 'build': missing required key 'architectures'"
        in log
    )
    assert "takes the output" not in log  # no follow-on error from the broken producer
    assert (
        "config/pipelines/broken.yaml:3:2: YAML syntax error: expected <block end>, "
        "but found '<block mapping start>'"
    ) in log
    # The running configuration is untouched and still runs pipelines.
    assert set(site.builder_ids()) == before
    site.force("passing")
    assert site.wait_for_build("passing")["results"] == SUCCESS

    (pipelines / "passing.yaml").write_text(original)
    (pipelines / "broken.yaml").unlink()
    site.reconfig()
    after = set(site.builder_ids())
    assert after - before == {"extra", "extra/hello/x86_64"}
    site.force("extra")
    assert site.wait_for_build("extra")["results"] == SUCCESS
