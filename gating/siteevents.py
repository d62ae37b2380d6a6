"""The site configuration's event stanzas: ``koji-events``, ``composes``, ``task-repos`` and
``mail`` (see :mod:`gating.site` for the rest of ``gating.yaml``)::

    koji-events:                   # what koji_build / koji_tag triggers listen to
      source: poll                 # poll (one multicall per cycle) or amqp (fedora-messaging)
      poll-interval: 60            # seconds
      profile: koji                # the hub: a koji profile, or server + topurl; default:
      server: https://koji.example.org/kojihub    # the koji backend's hub
      topurl: https://koji.example.org/kojifiles
      amqp-url: amqps://user@rabbitmq.example.org/%2Fpublic_pubsub
      amqp-password-secret: amqp-password         # a Buildbot secret name
      amqp-queue: gating-koji      # a durable queue of our own
      amqp-topics: [org.fedoraproject.prod.buildsys.build.state.change,
                    org.fedoraproject.prod.buildsys.tag]
    composes:                      # compose locations, each watched on its own
      - name: rawhide              # what `trigger: compose: {location: rawhide}` names
        location: https://kojipkgs.fedoraproject.org/compose/rawhide/latest-Fedora-Rawhide
        poll-interval: 600
        expected:                  # images the compose check report expects
          - {subvariant: Workstation, type: live, arch: x86_64}
        nightly-tasks: [createImage, createLiveCD, createAppliance]   # koji task methods
                                   # of a STATUS-less nightly (needs koji-events' hub)
    task-repos:                    # per-package repositories of runtask.yaml tasks
      url: https://pagure.io/taskrepo/{package}.git
      arch: x86_64                 # the pool the tasks run on
      branches:                    # dist tag -> branch rules, first match wins
        - ['\\.fc(\\d+)', 'f\\1']
      default-branch: main
      timeout: 3600                # a task's time limit (seconds) when its runtask.yaml sets none
    mail:                          # compose check reports by mail
      relay: 127.0.0.1
      port: 25
      from: gating@example.org
      to: [qa@example.org]
      user: gating                 # optional SMTP login
      password-secret: smtp-password
      tls: false
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from gating import arch as archmod
from gating.diagnostics import Mark, did_you_mean
from gating.yamltree import Node, Reader, describe

KOJI_EVENTS_KEYS = frozenset(
    {
        "source",
        "poll-interval",
        "profile",
        "server",
        "topurl",
        "weburl",
        "amqp-url",
        "amqp-password-secret",
        "amqp-queue",
        "amqp-topics",
    }
)
COMPOSE_KEYS = frozenset({"name", "location", "poll-interval", "expected", "nightly-tasks"})
EXPECTED_KEYS = frozenset({"subvariant", "type", "arch"})
TASK_REPO_KEYS = frozenset({"url", "arch", "branches", "default-branch", "timeout"})
MAIL_KEYS = frozenset({"relay", "port", "from", "to", "user", "password-secret", "tls"})
DEFAULT_NIGHTLY_TASKS = ("createImage", "createLiveCD", "createAppliance", "image", "livecd")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")


@dataclass(frozen=True)
class KojiEventsConfig:
    source: str = "poll"
    poll_interval: int = 60
    profile: str | None = None
    server: str | None = None
    topurl: str | None = None
    weburl: str | None = None
    amqp_url: str | None = None
    amqp_password_secret: str | None = None
    amqp_queue: str = "gating-koji"
    amqp_topics: tuple[str, ...] = ()


@dataclass(frozen=True)
class ComposeWatch:
    name: str
    location: str
    poll_interval: int = 600
    expected: tuple[tuple[str, str, str], ...] = ()
    nightly_tasks: tuple[str, ...] = DEFAULT_NIGHTLY_TASKS


@dataclass(frozen=True)
class TaskRepoConfig:
    url: str
    arch: str = "x86_64"
    branches: tuple[tuple[str, str], ...] | None = None
    default_branch: str | None = "main"
    timeout: int = 3600  # a task's time limit when its runtask.yaml sets none
    mark: Mark = field(default=Mark("<none>"), compare=False)  # where 'arch' is (or the stanza)


@dataclass(frozen=True)
class MailConfig:
    relay: str = "127.0.0.1"
    port: int = 25
    sender: str = "gating@localhost"
    recipients: tuple[str, ...] = ()
    user: str | None = None
    password_secret: str | None = None
    tls: bool = False


def _http_url(r: Reader, node: Node, what: str) -> str | None:
    value = r.string(node, what)
    if value is not None and not value.startswith(("http://", "https://")):
        r.fail(node, f"{what}: expected an http:// or https:// URL, got '{value}'")
        return None
    return value


def koji_events(r: Reader, node: Node) -> KojiEventsConfig | None:
    f = r.mapping(node, "'koji-events'", KOJI_EVENTS_KEYS)
    if f is None:
        return None
    kw: dict[str, object] = {}
    if "source" in f:
        source = r.string(f["source"], "koji-events 'source'")
        if source not in (None, "poll", "amqp"):
            r.fail(f["source"], f"koji-events 'source': expected 'poll' or 'amqp', not '{source}'")
        elif source:
            kw["source"] = source
    if "poll-interval" in f:
        value = r.integer(f["poll-interval"], "koji-events 'poll-interval' (seconds)", minimum=1)
        if value is not None:
            kw["poll_interval"] = value
    for key in ("server", "topurl", "weburl"):
        if key in f:
            kw[key] = _http_url(r, f[key], f"koji-events '{key}'")
    for key in ("profile", "amqp-password-secret", "amqp-queue"):
        if key in f:
            value = r.string(f[key], f"koji-events '{key}'")
            if value is not None:
                kw[key.replace("-", "_")] = value
    if "amqp-url" in f:
        url = r.string(f["amqp-url"], "koji-events 'amqp-url'")
        if url is not None and not url.startswith(("amqp://", "amqps://")):
            r.fail(f["amqp-url"], "koji-events 'amqp-url': expected amqp:// or amqps://")
        elif url is not None:
            if urlsplit(url).password is not None:
                r.fail(
                    f["amqp-url"],
                    "koji-events 'amqp-url': put the password in a secret "
                    "('amqp-password-secret'), not in the URL",
                )
            kw["amqp_url"] = url
    if "amqp-topics" in f:
        topics = r.string_list(f["amqp-topics"], "koji-events 'amqp-topics'", allow_single=True)
        if topics is not None:
            kw["amqp_topics"] = tuple(t for t, _ in topics)
    config = KojiEventsConfig(**kw)  # type: ignore[arg-type]
    if config.source == "amqp" and not config.amqp_url:
        r.fail(node, "koji-events: source 'amqp' needs an 'amqp-url'")
    if (config.server is None) != (config.topurl is None):
        r.fail(node, "koji-events: set both 'server' and 'topurl' (or a 'profile')")
    return config


def composes(r: Reader, node: Node) -> tuple[ComposeWatch, ...]:
    if not node.is_seq:
        r.fail(node, f"'composes': expected a list of compose locations, got {describe(node)}")
        return ()
    out: list[ComposeWatch] = []
    names: set[str] = set()
    for index, entry in enumerate(node.value):
        what = f"compose entry {index}"
        f = r.mapping(entry, what, COMPOSE_KEYS, required=("name", "location"))
        if not f or "name" not in f or "location" not in f:
            continue
        name = r.string(f["name"], f"{what} 'name'")
        location = r.string(f["location"], f"{what} 'location'")
        if name is None or location is None:
            continue
        if not NAME_RE.match(name):
            r.fail(f["name"], f"{what} 'name': '{name}' must be letters, digits, '.', '_', '-'")
            continue
        if name in names:
            r.fail(f["name"], f"compose '{name}' is listed twice")
            continue
        names.add(name)
        kw: dict[str, object] = {}
        if "poll-interval" in f:
            value = r.integer(f["poll-interval"], f"compose '{name}' 'poll-interval'", minimum=1)
            if value is not None:
                kw["poll_interval"] = value
        if "expected" in f:
            kw["expected"] = _expected(r, f["expected"], f"compose '{name}' 'expected'")
        if "nightly-tasks" in f:
            methods = r.string_list(f["nightly-tasks"], f"compose '{name}' 'nightly-tasks'")
            if methods is not None:
                kw["nightly_tasks"] = tuple(m for m, _ in methods)
        out.append(ComposeWatch(name=name, location=location, **kw))  # type: ignore[arg-type]
    return tuple(out)


def _expected(r: Reader, node: Node, what: str) -> tuple[tuple[str, str, str], ...]:
    if not node.is_seq:
        r.fail(node, f"{what}: expected a list of {{subvariant, type, arch}}, got {describe(node)}")
        return ()
    out = []
    for entry in node.value:
        f = r.mapping(entry, f"{what} entry", EXPECTED_KEYS, required=tuple(EXPECTED_KEYS))
        if not f or set(f) != EXPECTED_KEYS:
            continue
        values = [r.string(f[k], f"{what} '{k}'") for k in ("subvariant", "type", "arch")]
        if None not in values:
            out.append((values[0], values[1], values[2]))
    return tuple(out)  # type: ignore[arg-type]


def task_repos(r: Reader, node: Node) -> TaskRepoConfig | None:
    f = r.mapping(node, "'task-repos'", TASK_REPO_KEYS, required=("url",))
    if not f or "url" not in f:
        return None
    url = r.string(f["url"], "task-repos 'url'")
    if url is None:
        return None
    if "{package}" not in url:
        r.fail(f["url"], "task-repos 'url': expected a template with '{package}'")
        return None
    kw: dict[str, object] = {"mark": f["arch"].mark if "arch" in f else node.mark}
    if "arch" in f:
        name = r.string(f["arch"], "task-repos 'arch'")
        canon = archmod.canonical(name) if name else None
        if name is not None and canon is None:
            r.fail(
                f["arch"],
                f"task-repos 'arch': unknown architecture '{name}'"
                f"{did_you_mean(name, archmod.KNOWN)}",
            )
        elif canon:
            kw["arch"] = canon
    if "branches" in f:
        kw["branches"] = _branch_rules(r, f["branches"])
    if "default-branch" in f:
        kw["default_branch"] = (
            None
            if f["default-branch"].value is None
            else r.string(f["default-branch"], "task-repos 'default-branch'")
        )
    if "timeout" in f:
        value = r.integer(f["timeout"], "task-repos 'timeout' (seconds)", minimum=1)
        if value is not None:
            kw["timeout"] = value
    return TaskRepoConfig(url=url, **kw)  # type: ignore[arg-type]


def _branch_rules(r: Reader, node: Node) -> tuple[tuple[str, str], ...]:
    what = "task-repos 'branches'"
    if not node.is_seq:
        r.fail(node, f"{what}: expected a list of [regex, branch template], got {describe(node)}")
        return ()
    out = []
    for entry in node.value:
        pair = r.string_list(entry, f"{what} entry")
        if pair is None:
            continue
        if len(pair) != 2:
            r.fail(entry, f"{what}: each entry is [regex, branch template]")
            continue
        (pattern, pmark), (template, _) = pair
        try:
            re.compile(pattern)
        except re.error as exc:
            r.fail(entry, f"{what}: bad regex '{pattern}': {exc}")
            continue
        out.append((pattern, template))
    return tuple(out)


def mail(r: Reader, node: Node) -> MailConfig | None:
    f = r.mapping(node, "'mail'", MAIL_KEYS, required=("to",))
    if not f:
        return None
    kw: dict[str, object] = {}
    if "relay" in f:
        kw["relay"] = r.string(f["relay"], "mail 'relay'")
    if "port" in f:
        port = r.integer(f["port"], "mail 'port'", minimum=1)
        if port is not None:
            kw["port"] = port
    if "from" in f:
        kw["sender"] = r.string(f["from"], "mail 'from'")
    if "to" in f:
        to = r.string_list(f["to"], "mail 'to'", allow_single=True)
        if to is not None:
            kw["recipients"] = tuple(t for t, _ in to)
    for key in ("user", "password-secret"):
        if key in f:
            kw[key.replace("-", "_")] = r.string(f[key], f"mail '{key}'")
    if "tls" in f:
        tls = r.boolean(f["tls"], "mail 'tls'")
        if tls is not None:
            kw["tls"] = tls
    return MailConfig(**{k: v for k, v in kw.items() if v is not None})  # type: ignore[arg-type]
