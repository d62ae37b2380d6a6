"""Koji events from the fedora-messaging AMQP bus: a consumer that turns koji's messages into
:class:`~gating.kojievents.KojiBuildEvent` and hands them to a callback (the koji event
scheduler's ``fire``, see :mod:`gating.kojipoller`), with no polling.

Koji publishes ``org.fedoraproject.<env>.buildsys.build.state.change`` (a build changed
state: ``new`` = 1 is COMPLETE) and ``org.fedoraproject.<env>.buildsys.tag`` (a build was
tagged) to the ``amq.topic`` exchange, as fedora-messaging messages: a JSON object as body
(``content_type`` application/json), the ``fedora_messaging_schema`` and ``sent-at``
headers and a uuid ``message_id``. The consumer declares a durable queue of its own, binds
it to each topic pattern and consumes it with a prefetch of one:

* a message that is no event (another state, another topic) is acked and ignored;
* a malformed one (not JSON, not an object, a field missing or of the wrong type) is
  logged with its topic and message id and rejected without requeueing: it can never
  succeed (a dead-letter exchange set on the queue by the broker's policy keeps it);
* an event is passed to ``on_event``; the message is acked once the Deferred it returns
  fires, and nacked with requeue after ``retry_delay`` seconds when it fails, so the broker
  delivers it again. Nothing is lost when the master or the broker stops: unacked messages
  are redelivered, and the scheduler drops events it has already fired (by
  :attr:`~gating.kojievents.KojiBuildEvent.key`).

When the broker goes away (connection lost, refused, login failed) the consumer reconnects
with exponential back-off, logging each change of state once, never the password (the URL
is logged as :func:`mask_url` shows it).

The client is pika (``pika.adapters.twisted_connection``): it runs on the master's reactor
and takes everything from the URL given to each consumer. fedora-messaging's
``twisted_consume`` was the alternative; it reads its broker, queues and bindings from one
process-wide configuration (``fedora_messaging.config.conf``, a TOML file or
``FEDORA_MESSAGING_CONF``), which does not fit a master whose schedulers each have their
URL from the site configuration and a secret, reconfigured at run time, and it brings
its own message schema registry that this consumer does not need (it reads the JSON body).
On Fedora's public broker (``amqps://rabbitmq.fedoraproject.org/%2Fpublic_pubsub``) the
login is a TLS client certificate: pass ``tls`` (Twisted client TLS options with the
certificate) and a URL with a user and no password, which logs in with EXTERNAL
(fedora-messaging's own examples name their queues there with a UUID). Fedora asks clients
to name their application in the ``app`` client property: it is ``gating (<name>)``.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pika
import pika.credentials
from pika.adapters.twisted_connection import TwistedProtocolConnection
from twisted.internet import defer, endpoints, task
from twisted.python import log
from twisted.python.failure import Failure

from gating.kojievents import KojiBuildEvent, event_from_message

EXCHANGE = "amq.topic"
DEFAULT_TOPICS = (
    "org.fedoraproject.*.buildsys.build.state.change",
    "org.fedoraproject.*.buildsys.tag",
)


def mask_url(url: str) -> str:
    """``url`` with its password, if any, replaced by ``***`` (what the logs show)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    userinfo, at, hostport = parts.netloc.rpartition("@")
    if not at or ":" not in userinfo:
        return url
    user = userinfo.split(":", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{hostport}"))


def connection_parameters(url: str) -> pika.URLParameters:
    """pika's parameters for an ``amqp://`` or ``amqps://`` URL (vhost percent-encoded, e.g.
    ``%2Fpublic_pubsub``; query options such as ``heartbeat``). A user without a password
    logs in with EXTERNAL (a TLS client certificate)."""
    parts = urlsplit(url)
    if parts.scheme not in ("amqp", "amqps"):
        raise ValueError(f"not an AMQP URL (amqp:// or amqps://): {mask_url(url)}")
    external = parts.username is not None and parts.password is None
    if external:
        netloc = f"{parts.username}:@{parts.netloc.rpartition('@')[2]}"
        url = urlunsplit(parts._replace(netloc=netloc))
    params = pika.URLParameters(url)
    if external:
        params.credentials = pika.credentials.ExternalCredentials()
    return params


class _Connection(TwistedProtocolConnection):
    """pika's Twisted protocol, failing its ``ready`` Deferred with the broker's reason (a
    refused login says so) rather than a bare AMQPConnectionError."""

    def _on_connection_failed(self, _connection: Any, error: Any = None) -> None:
        d, self.ready = self.ready, None
        if d is not None:
            d.errback(error if isinstance(error, Exception) else ConnectionError(str(error)))


class KojiMessageConsumer:
    """Consumes koji's messages from ``queue`` (durable, bound to ``amq.topic`` with each of
    ``topics``) and calls ``on_event`` with each :class:`KojiBuildEvent`; ``on_event`` may
    return a Deferred, and the message is acked when it fires.

    ``start()`` fires with True once consuming, or False when the first attempt failed (it
    goes on retrying in the background); ``stop()`` lets the message in hand finish, then
    closes the connection.
    """

    def __init__(
        self,
        url: str,
        queue: str,
        topics: Sequence[str] = DEFAULT_TOPICS,
        on_event: Callable[[KojiBuildEvent], Any] | None = None,
        *,
        name: str = "koji-amqp",
        tls: Any = None,
        retry_delay: float = 5.0,
        min_backoff: float = 1.0,
        max_backoff: float = 60.0,
        timeout: float = 30.0,
        reactor: Any = None,
    ) -> None:
        if on_event is None:
            raise TypeError("KojiMessageConsumer needs on_event")
        if not queue:
            raise ValueError("KojiMessageConsumer needs a queue name")
        if isinstance(topics, str) or not topics:
            raise ValueError("topics must be a non-empty list of routing key patterns")
        self.params = connection_parameters(url)
        self.params.client_properties = {"app": f"gating ({name})"}
        self.tls_enabled = urlsplit(url).scheme == "amqps"
        self.masked_url = mask_url(url)
        self._password = urlsplit(url).password or ""
        self.queue = queue
        self.topics = tuple(topics)
        self.on_event = on_event
        self.name = name
        self.tls = tls
        self.retry_delay = retry_delay
        self.min_backoff = min_backoff
        self.max_backoff = max_backoff
        self.timeout = timeout
        if reactor is None:
            from twisted.internet import reactor
        self._reactor = reactor
        self._running = False
        self._conn: TwistedProtocolConnection | None = None
        self._started: defer.Deferred | None = None
        self._loop: defer.Deferred | None = None
        self._pause: defer.Deferred | None = None
        self._connecting: defer.Deferred | None = None
        self._inflight: defer.Deferred | None = None
        self._waiters: list[defer.Deferred] = []
        self.consuming = False

    # -- public -----------------------------------------------------------------------------

    def start(self) -> defer.Deferred:
        """Connect and consume, in the background from the first failure on: fires with True
        when consuming, False when the first attempt failed (retries go on)."""
        if self._running:
            return defer.succeed(self.consuming)
        self._running = True
        self._started = defer.Deferred()
        started = self._started
        self._loop = self._run()
        self._loop.addErrback(self._crashed)
        return started

    @defer.inlineCallbacks
    def stop(self) -> Any:
        """Stop consuming: the message in hand is finished (acked, or nacked at once when it
        failed; left to the broker to deliver again when on_event has not returned within
        ``timeout``), the rest stay in the queue; then the connection is closed."""
        if not self._running:
            return
        self._running = False
        self._cancel_pause()
        if self._connecting is not None:
            self._connecting.cancel()
        if self._inflight is not None:
            try:
                yield self._inflight.addTimeout(self.timeout, self._reactor)
            except defer.TimeoutError:
                self._log(
                    f"stopping while on_event still runs after {self.timeout:.0f}s: "
                    "its message will be delivered again"
                )
        conn = self._conn
        if conn is not None and conn.is_open:
            closed = conn.closed
            conn.close()
            if closed is not None:
                yield closed
        elif conn is not None and not conn.is_closed and conn.transport is not None:
            # in the AMQP handshake
            conn.transport.loseConnection()
        if self._loop is not None:
            yield self._loop
        self._fire_started(False)
        for d in self._take_waiters():
            d.errback(RuntimeError(f"{self.name}: consumer stopped"))

    @property
    def connected(self) -> bool:
        """Whether the AMQP connection is open (it may still be setting up or, after the
        broker closed it, be finishing the message in hand)."""
        return self._conn is not None and bool(self._conn.is_open)

    def when_consuming(self) -> defer.Deferred:
        """Fires (with None) when the consumer is consuming: at once, or after it
        (re)connects."""
        if self.consuming:
            return defer.succeed(None)
        d: defer.Deferred = defer.Deferred()
        self._waiters.append(d)
        return d

    # -- connection life cycle ------------------------------------------------------------

    @defer.inlineCallbacks
    def _run(self) -> Any:
        failures = 0
        while self._running:
            try:
                conn, channel, messages = yield self._connect()
            except Exception as exc:
                if not self._running:  # stopped while connecting
                    break
                failures += 1
                if failures == 1:
                    self._log(
                        f"cannot consume from {self.masked_url} ({self.queue}): "
                        f"{_describe(exc)}; retrying with back-off"
                    )
                self._fire_started(False)
            else:
                if not self._running:  # stopped while connecting
                    conn.close()
                    break
                self._log(
                    f"consuming {self.queue} on {self.masked_url}"
                    + (f" (after {failures} failed attempts)" if failures else "")
                )
                failures = 0
                self.consuming = True
                self._fire_started(True)
                for d in self._take_waiters():
                    d.callback(None)
                reason = yield self._consume(channel, messages)
                self.consuming = False
                if not self._running:
                    break
                self._log(
                    f"lost {self.masked_url} ({_describe(reason)}); reconnecting "
                    "(unacked messages will be delivered again)"
                )
                if conn.is_open:
                    conn.close()
            if not self._running:
                break
            delay = min(self.max_backoff, self.min_backoff * 2 ** max(failures - 1, 0))
            try:
                yield self._sleep(delay)
            except defer.CancelledError:
                break
        self.consuming = False

    @defer.inlineCallbacks
    def _connect(self) -> Any:
        """Connect, declare and bind the queue, start consuming: (connection, channel,
        message queue)."""
        host, port = self.params.host, self.params.port
        endpoint: Any = endpoints.HostnameEndpoint(self._reactor, host, port, self.timeout)
        if self.tls_enabled:
            tls = self.tls
            if tls is None:
                from twisted.internet import ssl

                tls = ssl.optionsForClientTLS(host)
            endpoint = endpoints.wrapClientTLS(tls, endpoint)
        proto = _Connection(self.params, custom_reactor=self._reactor)
        self._connecting = endpoints.connectProtocol(endpoint, proto)
        try:
            conn = yield self._connecting
        finally:
            self._connecting = None
        self._conn = conn
        try:
            ready = conn.ready
            if ready is None:
                raise ConnectionError("connection closed during the AMQP handshake")
            ready.addTimeout(self.timeout, self._reactor)
            yield ready
            channel = yield conn.channel()
            yield channel.queue_declare(
                queue=self.queue, durable=True, exclusive=False, auto_delete=False
            )
            for topic in self.topics:
                yield channel.queue_bind(queue=self.queue, exchange=EXCHANGE, routing_key=topic)
            yield channel.basic_qos(prefetch_count=1)
            messages, _tag = yield channel.basic_consume(queue=self.queue, auto_ack=False)
        except BaseException:
            if conn.is_open:
                conn.close()
            elif not conn.is_closed and conn.transport is not None:
                conn.ready = None  # settled already (timed out): not again on connectionLost
                conn.transport.loseConnection()
            raise
        return conn, channel, messages

    @defer.inlineCallbacks
    def _consume(self, channel: Any, messages: Any) -> Any:
        """Handle messages one at a time until the channel closes; returns why it closed."""
        while True:
            try:
                message = yield messages.get()
            except Exception as exc:
                return exc
            if not self._running:  # stopping: leave it to the broker to deliver again
                return None
            # Set before the handler runs: on_event may call stop() before returning.
            done: defer.Deferred = defer.Deferred()
            self._inflight = done
            try:
                yield self._handle(channel, message)
            finally:
                self._inflight = None
                if not done.called:  # stop() may have given up waiting
                    done.callback(None)

    # -- one message ------------------------------------------------------------------------

    @defer.inlineCallbacks
    def _handle(self, channel: Any, message: Any) -> Any:
        method, props = message.method, message.properties
        topic = method.routing_key
        what = f"message {props.message_id or '(no id)'} on {topic}"
        try:
            event = parse_message(topic, message.body, props.content_encoding)
        except Exception as exc:
            self._log(f"dropping malformed {what}: {exc}")
            self._settle(channel.basic_reject, method.delivery_tag, requeue=False)
            return
        if event is None:
            self._settle(channel.basic_ack, method.delivery_tag)
            return
        if props.message_id:
            event = dataclasses.replace(event, message_id=str(props.message_id))
        try:
            yield defer.maybeDeferred(self.on_event, event)
        except Exception:
            log.err(Failure(), self._redact(f"{self.name}: {event.describe()} ({what})"))
            if self._running:
                try:
                    yield self._sleep(self.retry_delay)
                except defer.CancelledError:
                    pass
            self._log(f"{what}: requeued for another try")
            self._settle(channel.basic_nack, method.delivery_tag, requeue=True)
            return
        self._settle(channel.basic_ack, method.delivery_tag)

    def _settle(self, how: Callable[..., Any], tag: int, **kwargs: Any) -> None:
        try:
            how(tag, **kwargs)
        except Exception as exc:  # the channel closed meanwhile: the broker redelivers it
            self._log(f"cannot settle delivery {tag} ({_describe(exc)}): it comes again")

    # -- helpers ----------------------------------------------------------------------------

    def _sleep(self, seconds: float) -> defer.Deferred:
        self._pause = task.deferLater(self._reactor, seconds, lambda: None)

        def done(result: Any) -> Any:
            self._pause = None
            return result

        return self._pause.addBoth(done)

    def _cancel_pause(self) -> None:
        if self._pause is not None:
            self._pause.cancel()

    def _fire_started(self, value: bool) -> None:
        started, self._started = self._started, None
        if started is not None:
            started.callback(value)

    def _take_waiters(self) -> list[defer.Deferred]:
        waiters, self._waiters = self._waiters, []
        return waiters

    def _crashed(self, failure: Failure) -> None:
        self.consuming = False
        self._running = False
        log.err(failure, f"{self.name}: the AMQP consumer stopped on an unexpected error")
        self._fire_started(False)

    def _redact(self, text: str) -> str:
        if len(self._password) >= 4:  # a shorter one would garble the text, not hide much
            text = text.replace(self._password, "***")
        return text

    def _log(self, text: str) -> None:
        log.msg(self._redact(f"{self.name}: {text}"))


def parse_message(topic: str, body: bytes, encoding: str | None = None) -> KojiBuildEvent | None:
    """The event of a fedora-messaging message body (JSON), or None when it is no event;
    ValueError when it is malformed."""
    try:
        data = json.loads(body.decode(encoding or "utf-8"))
    except (UnicodeDecodeError, LookupError, json.JSONDecodeError) as exc:
        raise ValueError(f"the body is not JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ValueError(f"the body is a JSON {type(data).__name__}, not an object")
    return event_from_message(topic, data)


def _describe(exc: Any) -> str:
    if isinstance(exc, Failure):
        exc = exc.value
    if exc is None:
        return "closed"
    text = str(exc) or exc.__class__.__name__
    return f"{exc.__class__.__name__}: {text}" if exc.__class__.__name__ not in text else text
