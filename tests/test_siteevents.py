"""gating.siteevents: the koji-events, composes, task-repos and mail stanzas of gating.yaml."""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path

import pytest

from gating.diagnostics import Collector, ConfigError
from gating.site import load_config, parse_site
from gating.siteevents import (
    DEFAULT_NIGHTLY_TASKS,
    ComposeWatch,
    KojiEventsConfig,
    MailConfig,
    TaskRepoConfig,
)

SITES = Path(__file__).parent / "fixtures" / "sites"


def parse(text: str):
    errors = Collector()
    site = parse_site(textwrap.dedent(text), "gating.yaml", "/etc/gating", errors)
    return site, ConfigError(errors.diagnostics).messages


def test_every_stanza_with_its_values():
    site, errors = parse(
        """\
        koji-events:
          source: amqp
          poll-interval: 30
          server: https://koji.example.org/kojihub
          topurl: https://koji.example.org/kojifiles
          amqp-url: amqps://gating@rabbit.example.org/%2Fpublic_pubsub
          amqp-password-secret: amqp
          amqp-topics: [org.fedoraproject.prod.buildsys.tag]
        composes:
          - name: rawhide
            location: https://example.org/compose/rawhide/latest-Fedora-Rawhide
            poll-interval: 600
            expected:
              - {subvariant: Workstation, type: live, arch: x86_64}
          - {name: branched, location: /srv/composes/branched}
        task-repos:
          url: https://pagure.io/taskrepo/{package}.git
          arch: amd64
          branches: [['\\.fc(\\d+)', 'f\\1']]
          default-branch: null
        mail:
          relay: smtp.example.org
          port: 587
          from: gating@example.org
          to: qa@example.org
          tls: true
        """
    )
    assert errors == []
    assert site.koji_events == KojiEventsConfig(
        source="amqp",
        poll_interval=30,
        server="https://koji.example.org/kojihub",
        topurl="https://koji.example.org/kojifiles",
        amqp_url="amqps://gating@rabbit.example.org/%2Fpublic_pubsub",
        amqp_password_secret="amqp",
        amqp_topics=("org.fedoraproject.prod.buildsys.tag",),
    )
    assert site.composes == (
        ComposeWatch(
            "rawhide",
            "https://example.org/compose/rawhide/latest-Fedora-Rawhide",
            600,
            (("Workstation", "live", "x86_64"),),
        ),
        ComposeWatch("branched", "/srv/composes/branched", 600, (), DEFAULT_NIGHTLY_TASKS),
    )
    assert site.task_repos == TaskRepoConfig(
        "https://pagure.io/taskrepo/{package}.git", "x86_64", ((r"\.fc(\d+)", r"f\1"),), None
    )
    assert site.mail == MailConfig(
        "smtp.example.org", 587, "gating@example.org", ("qa@example.org",), tls=True
    )


def test_mistakes_are_reported_with_their_place():
    _, errors = parse(
        """\
        koji-events:
          source: fedmsg
          amqp-url: amqp://user:hunter2@rabbit/
          server: https://koji.example.org/kojihub
        composes:
          - {name: rawhide, location: /a}
          - {name: rawhide, location: /b}
          - {name: x, location: /c, expected: [{subvariant: KDE, type: live}]}
        task-repos:
          url: https://pagure.io/taskrepo.git
        mail: {to: [qa@example.org], port: zero}
        """
    )
    assert errors == [
        "gating.yaml:2:3: koji-events: set both 'server' and 'topurl' (or a 'profile')",
        "gating.yaml:2:11: koji-events 'source': expected 'poll' or 'amqp', not 'fedmsg'",
        "gating.yaml:3:13: koji-events 'amqp-url': put the password in a secret "
        "('amqp-password-secret'), not in the URL",
        "gating.yaml:7:12: compose 'rawhide' is listed twice",
        "gating.yaml:8:40: compose 'x' 'expected' entry: missing required key 'arch'",
        "gating.yaml:10:8: task-repos 'url': expected a template with '{package}'",
        "gating.yaml:11:36: mail 'port': expected an integer, got a string",
    ]


@pytest.fixture
def site_copy(tmp_path):
    dest = tmp_path / "site"
    shutil.copytree(SITES / "multiarch", dest)
    return dest


def test_event_triggers_need_their_sources(site_copy):
    (site_copy / "pipelines" / "events.yaml").write_text(
        textwrap.dedent(
            """\
            trigger:
              koji_tag: {tag: f40}
              compose: {location: rawhid}
            pipeline: [check]
            jobs:
              check: {architectures: [x86_64], run: "true"}
            """
        )
    )
    conf = site_copy / "gating.yaml"
    conf.write_text(conf.read_text() + "composes:\n  - {name: rawhide, location: /srv/r}\n")
    with pytest.raises(ConfigError) as exc:
        load_config(site_copy)
    messages = [m.split(": ", 1)[1] for m in exc.value.messages]
    assert messages == [
        "trigger 'koji_tag' needs a koji hub: set 'koji-events' (a 'profile', or 'server' and "
        "'topurl') or a koji 'backend' in the site",
        "trigger 'compose' names location 'rawhid', which is not in the site's composes; "
        "did you mean 'rawhide'? (composes: rawhide)",
    ]


def test_a_compose_name_with_a_final_newline_is_an_error():
    # regression: the name check ended in '$', which also matches before a final newline
    _, errors = parse('composes:\n  - {name: "rawhide\\n", location: /a}\n')

    assert errors == [
        "gating.yaml:2:12: compose entry 0 'name': 'rawhide\\n' must be letters, digits, "
        "'.', '_', '-'"
    ]
