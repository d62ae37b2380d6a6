"""Koji events from the message bus: a real master consuming fedora-messaging messages from a
real RabbitMQ on loopback starts the same pipelines, with the same properties, as its poller."""

from __future__ import annotations

import time
from urllib.parse import quote

import pytest
import yaml

from tests.integration.conftest import SUCCESS
from tests.support.rabbitmq import find_server, publish

pytestmark = pytest.mark.skipif(find_server() is None, reason="needs rabbitmq-server")

PREFIX = "org.fedoraproject.prod.buildsys"
NOVA = {"build_id": 4242, "name": "nova", "version": "12.0.3", "release": "1.fc40"}


@pytest.fixture(scope="module")
def site(make_site, rabbitmq):
    site = make_site("koji-events", start=False)
    conf = site.config_dir / "gating.yaml"
    data = yaml.safe_load(conf.read_text())
    vhost = quote(rabbitmq.vhost, safe="")
    data["koji-events"] = {
        "source": "amqp",
        "amqp-url": f"amqp://{rabbitmq.user}@127.0.0.1:{rabbitmq.port}/{vhost}",
        "amqp-password-secret": "amqp-password",
        "amqp-queue": "gating-test-koji",
    }
    conf.write_text(yaml.safe_dump(data))
    secret = site.master_dir / "secrets" / "amqp-password"
    secret.write_text(rabbitmq.password)
    secret.chmod(0o600)
    site.start()
    return site


def wait_consuming(site, timeout: float = 60) -> None:
    log = site.master_dir / "twistd.log"
    deadline = time.monotonic() + timeout
    while "consuming gating-test-koji on" not in log.read_text():
        assert time.monotonic() < deadline, "the master did not start consuming"
        time.sleep(0.3)


def job_lines(site, pipeline: str, number: int) -> list[str]:
    build = site.wait_for_build(f"{pipeline}/check/x86_64", number)
    assert build["results"] == SUCCESS
    out = site.step_log(build["buildid"], "run")
    return [line for line in out.splitlines() if line.startswith("event=")]


def test_published_koji_messages_start_the_pipelines_the_poller_would(site, rabbitmq):
    wait_consuming(site)
    tag_message = {**NOVA, "tag": "f40-updates", "tag_id": 7, "owner": "packager", "user": "bodhi"}
    message_id = publish(rabbitmq.amqp_url, f"{PREFIX}.tag", tag_message)
    build_message = {**NOVA, "owner": "packager", "task_id": 99, "new": 1, "old": 0}
    publish(rabbitmq.amqp_url, f"{PREFIX}.build.state.change", build_message)
    # not events: a build that started, another topic
    publish(rabbitmq.amqp_url, f"{PREFIX}.build.state.change", {**build_message, "new": 0})
    publish(rabbitmq.amqp_url, f"{PREFIX}.untag", tag_message)

    assert job_lines(site, "on-tag", 1) == [
        "event=koji_tag nvr=nova-12.0.3-1.fc40 tag=f40-updates owner=packager"
    ]
    assert job_lines(site, "on-build", 1) == ["event=koji_build nvr=nova-12.0.3-1.fc40 task=99"]
    run = site.wait_for_build("on-tag", 1)
    props = site.properties(run["buildid"])
    assert {k: props.get(k) for k in ("event", "nvr", "name", "build_id", "tag", "owner")} == {
        "event": "koji_tag",
        "nvr": "nova-12.0.3-1.fc40",
        "name": "nova",
        "build_id": 4242,
        "tag": "f40-updates",
        "owner": "packager",
    }
    # a completed build is one event, however often the bus delivers it
    publish(rabbitmq.amqp_url, f"{PREFIX}.build.state.change", build_message)
    time.sleep(3)
    assert [b["number"] for b in site.builds_of("on-build")] == [1]
    assert [b["number"] for b in site.builds_of("on-tag")] == [1]
    log = (site.master_dir / "twistd.log").read_text()
    assert rabbitmq.password not in log
    assert "koji build nova-12.0.3-1.fc40 completed: already handled" in log
    assert message_id  # the tag message was taken from our own durable queue
