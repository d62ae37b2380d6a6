"""gating.kojiamqp against a real RabbitMQ broker on loopback (tests/support/rabbitmq.py):
koji's fedora-messaging messages in, KojiBuildEvents out, acked only once handled.

The consumer needs the real reactor, so these are pytest-twisted tests (the suite runs every
plain test in pytest-twisted's reactor greenlet, where a trial TestCase cannot spin the
reactor itself; the repo's trial tests use Buildbot's fake reactor). One broker serves the
module, each test consuming a queue of its own."""

from __future__ import annotations

import itertools
import logging
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer, reactor, task
from twisted.python import log

from gating.kojiamqp import DEFAULT_TOPICS, KojiMessageConsumer, mask_url, parse_message
from gating.kojievents import KOJI_BUILD, KOJI_TAG, KojiBuildEvent
from gating.localsite import free_port
from tests.support.rabbitmq import RabbitMQServer, publish, queue_depth

STATE_CHANGE = "org.fedoraproject.prod.buildsys.build.state.change"
TAG = "org.fedoraproject.prod.buildsys.tag"
WAIT = 15.0  # seconds for one message to go round
_queues = itertools.count(1)


def build_state(new: int, build_id: int = 2_345_678, **extra: Any) -> dict[str, Any]:
    """A ``buildsys.build.state.change`` body as koji's fedora-messaging plugin sends it."""
    body = {
        "build_id": build_id,
        "old": 0,
        "new": new,
        "attribute": "state",
        "name": "python-requests",
        "version": "2.32.3",
        "release": "1.fc42",
        "epoch": None,
        "owner": "packager",
        "task_id": 123_456_789,
        "instance": "primary",
    }
    return {**body, **extra}


def tagged(build_id: int = 2_345_678, tag: str = "f42-updates-candidate") -> dict[str, Any]:
    return {
        "build_id": build_id,
        "name": "python-requests",
        "version": "2.32.3",
        "release": "1.fc42",
        "tag": tag,
        "tag_id": 1234,
        "owner": "packager",
        "user": "bodhi",
        "instance": "primary",
    }


# -- pure helpers -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("amqp://gate:s3cret@127.0.0.1:5672/gating", "amqp://gate:***@127.0.0.1:5672/gating"),
        (
            "amqps://gate:p%40ss@mq.example.org/%2Fpub?x=1",
            "amqps://gate:***@mq.example.org/%2Fpub?x=1",
        ),
        ("amqps://gate@mq.example.org/%2Fpub", "amqps://gate@mq.example.org/%2Fpub"),
        ("amqp://:only-pw@host/", "amqp://:***@host/"),
        ("amqp://host:5672/", "amqp://host:5672/"),
    ],
)
def test_mask_url_hides_the_password_only(url, shown):
    assert mask_url(url) == shown


def test_parse_message_malformed_bodies_raise_value_error():
    with pytest.raises(ValueError, match="not JSON"):
        parse_message(STATE_CHANGE, b"{not json")
    with pytest.raises(ValueError, match="not JSON"):
        parse_message(STATE_CHANGE, b"\xff\xfe")
    with pytest.raises(ValueError, match="JSON list, not an object"):
        parse_message(STATE_CHANGE, b"[1]")
    with pytest.raises(ValueError, match="missing or bad field"):
        parse_message(STATE_CHANGE, b'{"new": 1, "build_id": 7}')
    assert parse_message("org.fedoraproject.prod.bodhi.update.comment", b"{}") is None


def test_consumer_rejects_bad_arguments():
    with pytest.raises(TypeError, match="on_event"):
        KojiMessageConsumer("amqp://u:p@h/", "q")
    with pytest.raises(ValueError, match="not an AMQP URL"):
        KojiMessageConsumer("http://u:secret@h/", "q", on_event=print)
    with pytest.raises(ValueError, match="topics"):
        KojiMessageConsumer("amqp://u:p@h/", "q", STATE_CHANGE, on_event=print)


# -- against the broker -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rabbit(tmp_path_factory: pytest.TempPathFactory) -> Any:
    with RabbitMQServer(tmp_path_factory.mktemp("rabbitmq")) as server:
        yield server


class Logs(logging.Handler):
    """Everything logged, by Twisted and by pika (Python logging), as text."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.name}: {record.getMessage()}")

    def twisted(self, event: dict[str, Any]) -> None:
        self.lines.append(log.textFromEventDict(event) or "")
        if event.get("isError") and event.get("failure") is not None:
            self.lines.append(event["failure"].getTraceback())

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


class Harness:
    """One test's queue, consumers, received events and logs."""

    def __init__(self, rabbit: RabbitMQServer) -> None:
        self.rabbit = rabbit
        self.queue = f"gating-koji-test-{next(_queues)}"
        self.events: defer.DeferredQueue = defer.DeferredQueue()
        self.logs = Logs()
        self.consumers: list[KojiMessageConsumer] = []

    def consumer(self, on_event: Any = None, **kwargs: Any) -> KojiMessageConsumer:
        kwargs.setdefault("retry_delay", 0.1)
        kwargs.setdefault("min_backoff", 0.1)
        kwargs.setdefault("max_backoff", 0.5)
        consumer = KojiMessageConsumer(
            kwargs.pop("url", self.rabbit.amqp_url),
            kwargs.pop("queue", self.queue),
            on_event=on_event or self.events.put,
            name="koji-test",
            **kwargs,
        )
        self.consumers.append(consumer)
        return consumer

    @defer.inlineCallbacks
    def started(self, **kwargs: Any) -> Any:
        consumer = self.consumer(**kwargs)
        consuming = yield consumer.start()
        assert consuming, self.logs.text
        return consumer

    def publish(self, topic: str, body: Any = None, **kwargs: Any) -> str:
        return publish(self.rabbit.amqp_url, topic, body, **kwargs)

    def depth(self) -> int:
        return queue_depth(self.rabbit.amqp_url, self.queue)

    def next_event(self, timeout: float = WAIT) -> defer.Deferred:
        return self.events.get().addTimeout(timeout, reactor)

    @defer.inlineCallbacks
    def settle(self, consumer: KojiMessageConsumer) -> Any:
        """Stop the consumer (unacked messages go back to the queue) and say how many
        messages are left."""
        yield consumer.stop()
        return self.depth()


@pytest.fixture
def amqp(rabbit: RabbitMQServer) -> Any:
    harness = Harness(rabbit)
    pika_logger = logging.getLogger("pika")
    level = pika_logger.level
    pika_logger.setLevel(logging.DEBUG)
    pika_logger.addHandler(harness.logs)
    log.addObserver(harness.logs.twisted)
    try:
        yield harness
        for consumer in harness.consumers:
            pytest_twisted.blockon(consumer.stop().addTimeout(2 * WAIT, reactor))
    finally:
        log.removeObserver(harness.logs.twisted)
        pika_logger.removeHandler(harness.logs)
        pika_logger.setLevel(level)
    assert harness.logs.lines, "nothing was logged"
    assert rabbit.password not in harness.logs.text


@pytest_twisted.inlineCallbacks
def test_completed_build_gives_one_event_and_a_building_one_none(amqp):
    consumer = yield amqp.started()
    amqp.publish(STATE_CHANGE, build_state(new=0))  # BUILDING: no event
    amqp.publish(STATE_CHANGE, build_state(new=1))  # COMPLETE

    event = yield amqp.next_event()
    assert event == KojiBuildEvent(
        kind=KOJI_BUILD,
        build_id=2_345_678,
        nvr="python-requests-2.32.3-1.fc42",
        name="python-requests",
        version="2.32.3",
        release="1.fc42",
        task_id=123_456_789,
        owner="packager",
    )
    assert event.key == "koji_build:2345678"
    assert amqp.events.pending == []
    assert (yield amqp.settle(consumer)) == 0  # both acked
    assert f"consuming {amqp.queue} on {mask_url(amqp.rabbit.amqp_url)}" in amqp.logs.text


@pytest_twisted.inlineCallbacks
def test_tag_message_gives_a_koji_tag_event(amqp):
    yield amqp.started()
    amqp.publish(TAG, tagged())

    event = yield amqp.next_event()
    assert event.kind == KOJI_TAG
    assert (event.tag, event.nvr, event.build_id) == (
        "f42-updates-candidate",
        "python-requests-2.32.3-1.fc42",
        2_345_678,
    )
    assert (event.owner, event.tagged_by) == ("packager", "bodhi")


@pytest_twisted.inlineCallbacks
def test_only_the_koji_topics_are_bound(amqp):
    consumer = yield amqp.started()
    assert consumer.topics == DEFAULT_TOPICS
    amqp.publish("org.fedoraproject.prod.bodhi.update.comment", {"comment": {}})
    amqp.publish("org.fedoraproject.prod.buildsys.repo.done", {"tag": "f42-build"})
    amqp.publish(STATE_CHANGE, build_state(new=1, build_id=7))
    assert (yield amqp.next_event()).build_id == 7
    assert (yield amqp.settle(consumer)) == 0


@pytest_twisted.inlineCallbacks
def test_malformed_messages_are_logged_dropped_and_do_not_stop_the_next(amqp):
    consumer = yield amqp.started()
    bad_json = amqp.publish(STATE_CHANGE, raw=b'{"build_id": 1, "new": 1')
    a_list = amqp.publish(TAG, [1, 2])
    no_name = amqp.publish(STATE_CHANGE, {"build_id": 3, "new": 1, "version": "1"})
    amqp.publish(STATE_CHANGE, build_state(new=1, build_id=4))

    event = yield amqp.next_event()
    assert event.build_id == 4
    text = amqp.logs.text
    assert text.count(f"dropping malformed message {bad_json} on {STATE_CHANGE}: ") == 1
    assert "the body is not JSON" in text
    assert text.count(f"dropping malformed message {a_list} on {TAG}: ") == 1
    assert f"dropping malformed message {no_name} on {STATE_CHANGE}: " in text
    assert "missing or bad field" in text
    assert "Traceback" not in text
    assert (yield amqp.settle(consumer)) == 0  # rejected for good, not requeued


@pytest_twisted.inlineCallbacks
def test_a_failed_on_event_gets_the_message_delivered_again(amqp):
    calls: list[KojiBuildEvent] = []

    def on_event(event: KojiBuildEvent) -> defer.Deferred:
        calls.append(event)
        if len(calls) == 1:
            return task.deferLater(reactor, 0.05, _fail, "scheduler database is down")
        return amqp.events.put(event)

    consumer = yield amqp.started(on_event=on_event)
    message_id = amqp.publish(STATE_CHANGE, build_state(new=1))

    event = yield amqp.next_event()
    assert calls == [event, event]
    text = amqp.logs.text
    assert "RuntimeError: scheduler database is down" in text  # with its traceback
    assert f"message {message_id} on {STATE_CHANGE}: requeued for another try" in text
    assert (yield amqp.settle(consumer)) == 0


@pytest_twisted.inlineCallbacks
def test_the_ack_waits_for_on_event_and_stop_waits_for_the_message_in_hand(amqp):
    handling: defer.Deferred = defer.Deferred()
    calls: list[KojiBuildEvent] = []
    consumer = yield amqp.started(on_event=lambda event: calls.append(event) or handling)
    amqp.publish(STATE_CHANGE, build_state(new=1))
    amqp.publish(STATE_CHANGE, build_state(new=1, build_id=8))
    yield _wait_until(lambda: calls)
    assert amqp.depth() == 1  # one in hand (prefetch 1), one waiting
    stopping = consumer.stop()
    yield task.deferLater(reactor, 0.2, lambda: None)
    assert not stopping.called
    handling.callback(None)
    yield stopping.addTimeout(WAIT, reactor)
    assert amqp.depth() == 1  # the first acked, the second left for the next start


@pytest_twisted.inlineCallbacks
def test_messages_published_while_stopped_are_consumed_after_a_restart(amqp):
    first = yield amqp.started()
    yield first.stop()
    amqp.publish(STATE_CHANGE, build_state(new=1, build_id=11))
    amqp.publish(TAG, tagged(build_id=12))
    assert amqp.depth() == 2  # the durable queue kept them

    yield amqp.started()
    events = [(yield amqp.next_event()), (yield amqp.next_event())]
    assert [(e.kind, e.build_id) for e in events] == [(KOJI_BUILD, 11), (KOJI_TAG, 12)]


@pytest_twisted.inlineCallbacks
def test_reconnects_and_gets_unacked_messages_again_when_the_broker_drops_it(amqp):
    calls: list[KojiBuildEvent] = []
    first_call: defer.Deferred = defer.Deferred()

    def on_event(event: KojiBuildEvent) -> Any:
        calls.append(event)
        return first_call if len(calls) == 1 else amqp.events.put(event)

    consumer = yield amqp.started(on_event=on_event)
    amqp.publish(STATE_CHANGE, build_state(new=1, build_id=21))
    try:
        yield _wait_until(lambda: calls)
        amqp.rabbit.ctl("close_all_connections", "-p", amqp.rabbit.vhost, "test: broker gone")
        yield _wait_until(lambda: not consumer.connected)
    finally:
        first_call.callback(None)  # handled, but its ack cannot go out any more

    event = yield amqp.next_event()  # delivered again on the new connection
    assert event.build_id == 21
    assert [e.build_id for e in calls] == [21, 21]
    amqp.publish(STATE_CHANGE, build_state(new=1, build_id=22))
    assert (yield amqp.next_event()).build_id == 22
    text = amqp.logs.text
    assert "koji-test: cannot settle delivery 1" in text
    assert "CONNECTION_FORCED - test: broker gone" in text
    assert text.count(f"koji-test: lost {mask_url(amqp.rabbit.amqp_url)}") == 1
    assert text.count(f"koji-test: consuming {amqp.queue}") == 2
    assert "cannot consume" not in text  # the first reconnect worked


@pytest_twisted.inlineCallbacks
def test_a_refused_connection_is_logged_once_and_retried(amqp):
    url = f"amqp://gating:{amqp.rabbit.password}@127.0.0.1:{free_port()}/gating"
    consumer = amqp.consumer(url=url, min_backoff=0.05, max_backoff=0.1)
    consuming = yield consumer.start()
    assert consuming is False
    waiting = consumer.when_consuming()
    yield task.deferLater(reactor, 0.5, lambda: None)  # several attempts
    yield consumer.stop()
    with pytest.raises(RuntimeError, match="consumer stopped"):
        yield waiting
    text = amqp.logs.text
    assert text.count("koji-test: cannot consume from") == 1
    assert "refused" in text.lower()
    assert "amqp://gating:***@127.0.0.1:" in text


@pytest_twisted.inlineCallbacks
def test_a_wrong_password_is_logged_without_the_password(amqp):
    url = amqp.rabbit.amqp_url.replace(amqp.rabbit.password, "not-the-password")
    consumer = amqp.consumer(url=url)
    consuming = yield consumer.start()
    yield consumer.stop()
    assert consuming is False
    assert "ACCESS_REFUSED" in amqp.logs.text
    assert "not-the-password" not in amqp.logs.text


def _fail(why: str) -> None:
    raise RuntimeError(why)


@defer.inlineCallbacks
def _wait_until(predicate: Any, timeout: float = WAIT) -> Any:
    deadline = reactor.seconds() + timeout
    while not predicate():
        if reactor.seconds() > deadline:
            raise TimeoutError("condition not met in time")
        yield task.deferLater(reactor, 0.05, lambda: None)
