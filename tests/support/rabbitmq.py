"""A private RabbitMQ broker for tests: the distribution's ``rabbitmq-server`` as a subprocess
on loopback, all of its state in a temporary directory, and a ``publish`` helper that sends
a message shaped as fedora-messaging sends it.

Each server is its own Erlang node (``gating-<pid>-<n>@localhost``) with its own cookie (a
private ``HOME``), its own epmd (``ERL_EPMD_PORT``) and free ports for AMQP and Erlang
distribution, all bound to 127.0.0.1, so it clashes neither with a system RabbitMQ nor with
another test run. The user, password and vhost come from the configuration file
(``default_user``/``default_pass``/``default_vhost``): no ``rabbitmqctl`` round trip at
start. It is ready when an AMQP login succeeds. ``stop`` ends the node's process group, then
its epmd (which daemonises into a session of its own).

    with RabbitMQServer(root) as rabbit:
        publish(rabbit.amqp_url, "org.fedoraproject.prod.buildsys.tag", {...})
"""

from __future__ import annotations

import datetime
import itertools
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pika

from gating.localsite import free_port

USER = "gating"
VHOST = "gating"
EXCHANGE = "amq.topic"
START_TIMEOUT = 90.0
# In the environment of every process of a test node: how stop() finds them all.
_MARKER = "GATING_TEST_RABBITMQ"
_counter = itertools.count(1)

# Where distributions put the real start script (Debian's /usr/sbin one switches to the
# rabbitmq user first, which a test's private directory does not allow).
_SERVER_DIRS = ("/usr/lib/rabbitmq/bin", "/usr/lib64/rabbitmq/bin", "/usr/sbin")


def find_server() -> Path | None:
    """The ``rabbitmq-server`` start script, or ``None`` when RabbitMQ is not installed
    (``RABBITMQ_SERVER`` overrides)."""
    if os.environ.get("RABBITMQ_SERVER"):
        return Path(os.environ["RABBITMQ_SERVER"])
    for directory in _SERVER_DIRS:
        path = Path(directory) / "rabbitmq-server"
        if path.exists():
            return path
    found = shutil.which("rabbitmq-server")
    return Path(found) if found else None


class RabbitMQServer:
    """One private broker. ``start`` returns once it accepts AMQP logins; ``stop`` is safe
    to call more than once."""

    def __init__(self, root: Path, *, password: str | None = None) -> None:
        self.root = Path(root)
        self.password = password or secrets.token_hex(12)
        self.user = USER
        self.vhost = VHOST
        self.nodename = f"gating-{os.getpid()}-{next(_counter)}@localhost"
        self.port = free_port()
        self.dist_port = free_port()
        self.epmd_port = free_port()
        self.server = find_server()
        self.start_seconds: float | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._output: Any = None

    # -- paths and environment -------------------------------------------------------------

    @property
    def amqp_url(self) -> str:
        vhost = quote(self.vhost, safe="")
        return f"amqp://{self.user}:{self.password}@127.0.0.1:{self.port}/{vhost}"

    @property
    def log_dir(self) -> Path:
        return self.root / "log"

    @property
    def output_path(self) -> Path:
        return self.root / "server-output.log"

    def env(self) -> dict[str, str]:
        """The environment of the server and of ``rabbitmqctl`` for this node."""
        root = self.root
        keep = ("PATH", "LANG", "LC_ALL", "TMPDIR")
        env = {k: v for k, v in os.environ.items() if k in keep}
        env.update(
            {_MARKER: self.nodename},
            HOME=str(root / "home"),
            RABBITMQ_NODENAME=self.nodename,
            RABBITMQ_NODE_IP_ADDRESS="127.0.0.1",
            RABBITMQ_NODE_PORT=str(self.port),
            RABBITMQ_DIST_PORT=str(self.dist_port),
            ERL_EPMD_PORT=str(self.epmd_port),
            ERL_EPMD_ADDRESS="127.0.0.1",
            RABBITMQ_CONF_ENV_FILE=str(root / "rabbitmq-env.conf"),
            RABBITMQ_CONFIG_FILE=str(root / "rabbitmq.conf"),
            RABBITMQ_ADVANCED_CONFIG_FILE=str(root / "advanced.config"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(root / "enabled_plugins"),
            RABBITMQ_MNESIA_BASE=str(root / "mnesia"),
            RABBITMQ_LOG_BASE=str(self.log_dir),
            RABBITMQ_LOGS=str(self.log_dir / "rabbit.log"),
            RABBITMQ_PID_FILE=str(root / "rabbit.pid"),
            RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}",
            RABBITMQ_ALLOW_INPUT="",  # no Erlang shell reading the test's stdin
        )
        return env

    def _write_config(self) -> None:
        root = self.root
        for sub in ("home", "mnesia", "log"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        cookie = root / "home" / ".erlang.cookie"
        if not cookie.exists():
            cookie.write_text(secrets.token_hex(16).upper())
            cookie.chmod(0o400)
        (root / "rabbitmq-env.conf").write_text("")
        (root / "advanced.config").write_text("[].\n")
        (root / "enabled_plugins").write_text("[].\n")
        (root / "rabbitmq.conf").write_text(
            "\n".join(
                [
                    f"default_user = {self.user}",
                    f"default_pass = {self.password}",
                    f"default_vhost = {self.vhost}",
                    "default_permissions.configure = .*",
                    "default_permissions.read = .*",
                    "default_permissions.write = .*",
                    "loopback_users = none",
                    "disk_free_limit.absolute = 10MB",
                    "log.file.level = info",
                    "log.console = false",
                    "",
                ]
            )
        )

    # -- life cycle ------------------------------------------------------------------------

    def start(self, timeout: float = START_TIMEOUT) -> RabbitMQServer:
        if self.server is None:
            raise RuntimeError("rabbitmq-server is not installed (run scripts/bootstrap.sh)")
        if self.running:
            return self
        self._write_config()
        began = time.monotonic()
        self._output = open(self.output_path, "ab")  # closed in stop()
        self._proc = subprocess.Popen(
            [str(self.server)],
            cwd=self.root,
            env=self.env(),
            stdin=subprocess.DEVNULL,
            stdout=self._output,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # one process group: the script, beam, its children
        )
        try:
            self._wait_ready(began + timeout, timeout)
        except BaseException:
            self.stop()
            raise
        self.start_seconds = time.monotonic() - began
        return self

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _wait_ready(self, deadline: float, timeout: float) -> None:
        params = pika.URLParameters(self.amqp_url)
        params.connection_attempts = 1
        params.socket_timeout = 2
        params.blocked_connection_timeout = 2
        last: Exception | None = None
        while time.monotonic() < deadline:
            assert self._proc is not None
            if self._proc.poll() is not None:
                raise RuntimeError(
                    f"rabbitmq-server {self.nodename} exited ({self._proc.returncode}) "
                    f"before accepting connections:\n{self.log_tail()}"
                )
            try:
                # A bare TCP connect first: pika logs each failed attempt at ERROR.
                socket.create_connection(("127.0.0.1", self.port), timeout=2).close()
                pika.BlockingConnection(params).close()
                return
            except Exception as exc:  # refused, or not yet booted / user not yet created
                last = exc
            time.sleep(0.25)
        raise TimeoutError(
            f"rabbitmq-server {self.nodename} did not accept AMQP logins on 127.0.0.1:"
            f"{self.port} within {timeout:.0f}s (last error: {last!r}):\n{self.log_tail()}"
        )

    def log_tail(self, lines: int = 40) -> str:
        """The first error lines (a boot failure's cause comes first) and the last lines of
        the server's output and logs."""
        parts = []
        for path in [self.output_path, *sorted(self.log_dir.glob("*.log"))]:
            if path.exists():
                text = path.read_text(errors="replace").splitlines()
                errors = [line for line in text if "[error]" in line][:8]
                if errors:
                    parts.append(f"--- {path} (first errors) ---\n" + "\n".join(errors))
                parts.append(f"--- {path} (last lines) ---\n" + "\n".join(text[-lines:]))
        return "\n".join(parts) or "(no log written)"

    def ctl(self, *args: str, timeout: float = 60) -> str:
        """``rabbitmqctl ARGS`` against this node (slow: the CLI boots in about a second)."""
        assert self.server is not None
        ctl = self.server.with_name("rabbitmqctl")
        env = self.env()
        # The CLI is an Erlang node too: its distribution port, free now (the default,
        # DIST_PORT + 10000, may be taken or past 65535).
        port = str(free_port())
        env.update(RABBITMQ_CTL_DIST_PORT_MIN=port, RABBITMQ_CTL_DIST_PORT_MAX=port)
        proc = subprocess.run(
            [str(ctl), "-n", self.nodename, *args],
            env=env,
            cwd=self.root,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"rabbitmqctl {' '.join(args)}: {proc.stdout}{proc.stderr}")
        return proc.stdout

    def stop(self, timeout: float = 30) -> None:
        """End the node: SIGTERM to the start script, which stops RabbitMQ cleanly (durable
        queues and persistent messages stay for a later ``start``), then SIGKILL to whatever
        of it is left, epmd included. beam, epmd and their helpers leave the script's process
        group (setsid), so they are found by the marker in their environment."""
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.poll() is None:
                _signal_group(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    pass
            _signal_group(proc.pid, signal.SIGKILL)
            proc.wait()
        for pid in self.pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self._output is not None:
            self._output.close()
            self._output = None

    def pids(self) -> list[int]:
        """The live processes of this node (beam, epmd, erl_child_setup, inet_gethost)."""
        marker = f"{_MARKER}={self.nodename}".encode()
        found = []
        for pid_dir in Path("/proc").iterdir():
            if not pid_dir.name.isdigit():
                continue
            try:
                if marker in (pid_dir / "environ").read_bytes().split(b"\0"):
                    found.append(int(pid_dir.name))
            except OSError:  # gone, a zombie, or not ours to read
                continue
        return found

    def __enter__(self) -> RabbitMQServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass


def publish(
    amqp_url: str,
    topic: str,
    body: Any,
    headers: Mapping[str, Any] | None = None,
    *,
    raw: bytes | None = None,
) -> str:
    """Publish one message to ``amq.topic`` as fedora-messaging does (JSON body, its headers,
    persistent, a uuid message id); ``raw`` sends those bytes as the body instead (a
    malformed message). Returns the message id."""
    message_id = str(uuid.uuid4())
    sent_at = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    all_headers = {
        "fedora_messaging_schema": "base.message",
        "fedora_messaging_severity": 20,
        "sent-at": sent_at,
        **(headers or {}),
    }
    properties = pika.BasicProperties(
        content_type="application/json",
        content_encoding="utf-8",
        delivery_mode=2,
        headers=all_headers,
        message_id=message_id,
    )
    data = raw if raw is not None else json.dumps(body).encode("utf-8")
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        channel.basic_publish(EXCHANGE, topic, data, properties, mandatory=False)
    finally:
        connection.close()
    return message_id


def queue_depth(amqp_url: str, queue: str) -> int:
    """How many messages wait in ``queue`` (ready ones: not those delivered and unacked)."""
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        frame = connection.channel().queue_declare(queue, passive=True)
        return int(frame.method.message_count)
    finally:
        connection.close()
