"""The site configuration: a directory with ``gating.yaml``, a worker inventory and pipelines.

``gating.yaml`` (every key optional)::

    title: RDO gate
    title-url: https://www.rdoproject.org/
    buildbot-url: http://127.0.0.1:8010/
    www-port: 8010
    www-interface: 127.0.0.1
    pb-port: 9989
    poll-interval: 60                    # seconds between polls of project repositories
    coordinators: 20                     # pipeline runs at once (master-side workers)
    job-attempts: 3                      # builds of a job instance when its worker is lost or
                                         # a step breaks for the infrastructure (RETRY,
                                         # EXCEPTION; 1..10); a failed script is never retried
    database: sqlite:///state.sqlite     # any SQLAlchemy URL Buildbot supports
    secrets-dir: secrets                 # Buildbot SecretInAFile directory, relative to the master
    shared-dir: /srv/gating              # what every master of a cluster must see (default:
                                         # the master's directory): the relative forge-dir,
                                         # the build backend (backend/), compose reports and
                                         # the Gerrit mirror are taken from here
    forge-dir: git                       # the embedded forge's bare repositories, idem
    workers: workers.yaml                # inventory file(s), relative to this directory
    pipelines: pipelines                 # folder of pipeline files, relative to this directory
    queues:
      rdo: {window: 20}                  # Zuul's knobs: window (start, 20), window-floor (3),
                                         # window-ceiling (none), window-increase (1),
                                         # window-decrease-factor (2)
    projects:
      - name: nova-distgit
        repository: https://example.org/nova-distgit.git
        branches: [rdo-liberty]
        queue: rdo
    backend:                             # where the built-in jobs build (default: local)
      type: local                        # local (rpmbuild on a worker, repos on the master)
                                         # or koji
      build-arch: x86_64                 # local: the pool the builds run on
      destination-tag: dist              # the published repository
      export-mode: rebuild               # or promote (needs candidate-tag)
      candidate-tag: dist-candidate
      defines: {dist: .el9}              # rpm macros (local builds)
      check-build-deps: true             # local: false passes --nodeps to rpmbuild
      # koji only:
      profile: koji                      # a koji profile (/etc/koji.conf.d), or:
      server: https://koji.example.org/kojihub
      topurl: https://koji.example.org/kojifiles
      weburl: https://koji.example.org/koji
      auth: ssl                          # password, ssl or gssapi
      user: gating                       # password login: user + password-secret
      password-secret: koji-password     # a Buildbot secret name, never the password
      cert: /etc/gating/koji.pem         # ssl login
      serverca: /etc/pki/tls/certs/ca-bundle.crt
      principal: gating@EXAMPLE.ORG      # gssapi login
      keytab: /etc/gating/gating.keytab
      target: rdo-liberty                # build target of the non-scratch builds
      scratch-target: rdo-liberty        # of the scratch builds (default: target)
      poll-interval: 5                   # seconds between task polls
      outage-timeout: 21600              # seconds an unreachable hub is waited for (6 h)
                                         # before the item waiting for it fails
      outage-retry-max: 60               # the longest wait between two attempts
      scm-url: git+https://gating.example.org/scm/{project}.git   # where koji clones from
                                         # (serve BASEDIR/backend/scm/ there); default:
                                         # git+file:// of that folder (a hub on this host)

Two or more masters (Buildbot's multi-master mode) share ``database`` (PostgreSQL),
``shared-dir`` (an absolute path on storage every master mounts) and a crossbar WAMP
router; the gate scheduler and the pollers are active on one master at a time, and move
to another within about ``expire-after`` + ``claim-interval`` seconds when it dies::

    database: postgresql://gating@db.example.org/gating
    shared-dir: /srv/gating
    multi-master:
      router-url: ws://mq.example.org:8080/ws   # crossbar (c['mq'] type wamp)
      realm: realm1                      # the router's realm (default realm1)
      heartbeat: 10                      # seconds between this master's liveness marks
      expire-after: 60                   # a master silent this long is dead: its
                                         # schedulers, pollers and builds are released
                                         # (at least 3 heartbeats; Buildbot's own: 600)
      claim-interval: 10                 # seconds between an idle master's attempts to
                                         # take a released scheduler over (Buildbot's: 300)

Who may log in to the web UI, and who may control the gate (approve, dequeue, and
Buildbot's force, stop and rebuild): everyone reads everything; with ``auth``, only the
role ``admins`` may act (Buildbot's authz). Without ``web: auth`` there is no login and
everyone may act (the embedded default)::

    web:
      auth:                              # exactly one of:
        htpasswd: secrets/htpasswd       # a htpasswd file (relative to this directory),
                                         # plain-text passwords (Buildbot's HTPasswdAuth)
        users: {alice: web-alice}        # user -> Buildbot secret (a file in secrets-dir)
                                         # holding the password, read at load time
      admins: [alice]                    # users given the role 'admins'
      admin-groups: [gating-admins]      # groups (of the login's user info) given it

Change hooks: URLs of the web server (``/change_hook/DIALECT``) where a forge posts its
changes instead of waiting for a poll. Each one listed is enabled, and only for calls
signed with its secret (a Buildbot secret name, never the secret; a missing, empty or
short secret file is an error when the master loads the configuration)::

    change-hooks:
      gating: {secret: hook-gating}      # POST /change_hook/gating: one JSON change,
                                         # X-Gating-Signature: sha256=HMAC (gating.changehooks)
      github: {secret: hook-github}      # Buildbot's GitHub dialect, strict: X-Hub-Signature

The event stanzas ``koji-events``, ``composes``, ``task-repos`` and ``mail`` are documented
in :mod:`gating.siteevents`.

The site configuration is trusted: it is what the admin deploys.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from gating import siteevents
from gating.backend import BackendConfig
from gating.changehooks import DIALECTS, ChangeHook
from gating.diagnostics import Collector, ConfigError, Diagnostic, Mark, did_you_mean
from gating.inventory import Inventory, Worker, load_inventory
from gating.pipeline import IDENTIFIER_RE, IDENTIFIER_RULE, Pipeline, load_pipeline_file
from gating.plan import Plan, make_plan
from gating.rungraph import DEFAULT_JOB_ATTEMPTS, MAX_JOB_ATTEMPTS
from gating.siteevents import ComposeWatch, KojiEventsConfig, MailConfig, TaskRepoConfig
from gating.yamltree import Node, Reader, describe, load

SITE_FILE = "gating.yaml"
PIPELINE_SUFFIXES = (".yaml", ".yml")

SITE_KEYS = frozenset(
    {
        "title",
        "title-url",
        "buildbot-url",
        "www-port",
        "www-interface",
        "pb-port",
        "poll-interval",
        "coordinators",
        "job-attempts",
        "database",
        "secrets-dir",
        "shared-dir",
        "forge-dir",
        "multi-master",
        "workers",
        "pipelines",
        "projects",
        "queues",
        "gerrit",
        "backend",
        "koji-events",
        "composes",
        "task-repos",
        "mail",
        "web",
        "change-hooks",
    }
)
PROJECT_KEYS = frozenset({"name", "repository", "branches", "queue"})
PORT_RE = re.compile(r"^(tcp|ssl|unix):")


@dataclass(frozen=True)
class Project:
    name: str
    repository: str
    branches: tuple[str, ...] = ("main",)
    queue: str | None = None
    mark: Mark = field(default=Mark("<none>"), compare=False)


@dataclass(frozen=True)
class Gerrit:
    """Gated projects live on this Gerrit instead of the embedded forge."""

    url: str
    user: str
    password_secret: str = "gerrit-password"
    approvals: tuple[tuple[str, int], ...] = (("Code-Review", 2), ("Workflow", 1))
    git_url: str | None = None  # template with {project}; default Gerrit's HTTP git


GERRIT_KEYS = frozenset({"url", "user", "password-secret", "approvals", "git-url"})


@dataclass(frozen=True)
class MultiMaster:
    """Buildbot's multi-master mode: the shared message queue and the takeover timing."""

    router_url: str
    realm: str = "realm1"
    heartbeat: int = 10
    expire_after: int = 60
    claim_interval: int = 10
    mark: Mark = field(default=Mark("<none>"), compare=False)


MULTI_MASTER_KEYS = frozenset(
    {"router-url", "realm", "heartbeat", "expire-after", "claim-interval"}
)


@dataclass(frozen=True)
class WebUser:
    """A web UI login whose password is the Buildbot secret ``secret`` (a file in secrets-dir)."""

    name: str
    secret: str
    mark: Mark = field(default=Mark("<none>"), compare=False)


@dataclass(frozen=True)
class WebConfig:
    """The web UI's login (``htpasswd`` file or ``users``) and who has the role ``admins``."""

    htpasswd: str | None = None  # as written: relative to the configuration directory
    users: tuple[WebUser, ...] = ()
    admins: tuple[str, ...] = ()
    admin_groups: tuple[str, ...] = ()
    mark: Mark = field(default=Mark("<none>"), compare=False)  # 'htpasswd', or the stanza

    @property
    def has_auth(self) -> bool:
        return self.htpasswd is not None or bool(self.users)

    def htpasswd_path(self, config_dir: str | Path) -> Path | None:
        if self.htpasswd is None:
            return None
        return Path(config_dir) / Path(self.htpasswd).expanduser()


WEB_KEYS = frozenset({"auth", "admins", "admin-groups"})
WEB_AUTH_KEYS = frozenset({"htpasswd", "users"})
# HTTP basic authentication splits user and password at the first ':'.
WEB_USER_RE = re.compile(r"^[^:\s]{1,64}$")
SECRET_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
ADMIN_ROLE = "admins"

BACKEND_STRINGS = {
    "profile": "profile",
    "server": "server",
    "topurl": "topurl",
    "weburl": "weburl",
    "user": "user",
    "password-secret": "password_secret",
    "cert": "cert",
    "serverca": "serverca",
    "principal": "principal",
    "keytab": "keytab",
    "target": "target",
    "scratch-target": "scratch_target",
    "destination-tag": "destination_tag",
    "candidate-tag": "candidate_tag",
    "build-arch": "build_arch",
    "scm-url": "scm_url",
}
BACKEND_KEYS = frozenset(
    {
        *BACKEND_STRINGS,
        "type",
        "auth",
        "export-mode",
        "poll-interval",
        "defines",
        "check-build-deps",
        "outage-timeout",
        "outage-retry-max",
    }
)
KOJI_ONLY = (
    "profile",
    "server",
    "topurl",
    "weburl",
    "auth",
    "user",
    "password-secret",
    "cert",
    "serverca",
    "principal",
    "keytab",
    "target",
    "scratch-target",
    "scm-url",
    "outage-timeout",
    "outage-retry-max",
)
TAG_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,199}$")


@dataclass(frozen=True)
class Site:
    config_dir: str
    title: str = "buildbot-gating"
    title_url: str = "https://github.com/buildbot/buildbot"
    buildbot_url: str = "http://127.0.0.1:8010/"
    www_port: int | str = 8010
    www_interface: str = "127.0.0.1"
    pb_port: int | str = 9989
    poll_interval: int = 60
    coordinators: int = 20
    job_attempts: int = DEFAULT_JOB_ATTEMPTS
    database: str = "sqlite:///state.sqlite"
    secrets_dir: str = "secrets"
    shared_dir: str | None = None
    forge_dir: str = "git"
    multi_master: MultiMaster | None = None
    workers: tuple[str, ...] = ("workers.yaml",)
    pipelines: str = "pipelines"
    projects: tuple[Project, ...] = ()
    queue_settings: tuple[tuple[str, tuple[tuple[str, int], ...]], ...] = ()
    gerrit: Gerrit | None = None
    backend: BackendConfig = field(default_factory=BackendConfig)
    koji_events: KojiEventsConfig | None = None
    composes: tuple[ComposeWatch, ...] = ()
    task_repos: TaskRepoConfig | None = None
    mail: MailConfig | None = None
    web: WebConfig | None = None
    change_hooks: tuple[ChangeHook, ...] = ()

    def project(self, name: str) -> Project | None:
        return next((p for p in self.projects if p.name == name), None)


@dataclass(frozen=True)
class GatingConfig:
    """Everything a master needs, checked: site, workers, pipelines and the derived plan."""

    site: Site | None
    inventory: Inventory | None
    pipelines: tuple[Pipeline, ...]
    plan: Plan

    @property
    def workers(self) -> tuple[Worker, ...]:
        return self.inventory.workers if self.inventory else ()


def parse_site(text: str | bytes, filename: str, config_dir: str, errors: Collector) -> Site:
    site = Site(config_dir=config_dir)
    root = load(text, filename, errors)
    if root is None or root.value is None:
        return site
    r = Reader(errors)
    f = r.mapping(root, "the site configuration", SITE_KEYS)
    if f is None:
        return site
    kw: dict[str, object] = {}
    for key in (
        "title",
        "title-url",
        "buildbot-url",
        "www-interface",
        "database",
        "secrets-dir",
        "shared-dir",
        "forge-dir",
    ):
        if key in f:
            value = r.string(f[key], f"'{key}'")
            if value is not None:
                kw[key.replace("-", "_")] = value
    for key in ("www-port", "pb-port"):
        if key in f:
            port = _port(r, f[key], key)
            if port is not None:
                kw[key.replace("-", "_")] = port
    if "coordinators" in f:
        count = r.integer(f["coordinators"], "'coordinators'", minimum=1)
        if count is not None:
            kw["coordinators"] = count
    if "poll-interval" in f:
        interval = r.integer(f["poll-interval"], "'poll-interval' (seconds)", minimum=1)
        if interval is not None:
            kw["poll_interval"] = interval
    if "job-attempts" in f:
        attempts = r.integer(f["job-attempts"], "'job-attempts'", minimum=1)
        if attempts is not None and attempts > MAX_JOB_ATTEMPTS:
            r.fail(
                f["job-attempts"],
                f"'job-attempts': expected at most {MAX_JOB_ATTEMPTS}, got {attempts}",
            )
        elif attempts is not None:
            kw["job_attempts"] = attempts
    if "workers" in f:
        files = r.string_list(f["workers"], "'workers'", allow_single=True)
        if files is not None:
            kw["workers"] = tuple(s for s, _ in files)
    if "pipelines" in f:
        folder = r.string(f["pipelines"], "'pipelines'")
        if folder is not None:
            kw["pipelines"] = folder
    if "projects" in f:
        kw["projects"] = _projects(r, f["projects"])
    if "queues" in f:
        kw["queue_settings"] = _queues(r, f["queues"])
    if "gerrit" in f:
        kw["gerrit"] = _gerrit(r, f["gerrit"])
    if "backend" in f:
        backend = _backend(r, f["backend"])
        if backend is not None:
            kw["backend"] = backend
    if "koji-events" in f:
        kw["koji_events"] = siteevents.koji_events(r, f["koji-events"])
    if "composes" in f:
        kw["composes"] = siteevents.composes(r, f["composes"])
    if "task-repos" in f:
        kw["task_repos"] = siteevents.task_repos(r, f["task-repos"])
    if "mail" in f:
        kw["mail"] = siteevents.mail(r, f["mail"])
    if "multi-master" in f:
        kw["multi_master"] = _multi_master(r, f["multi-master"], f, kw)
    if "web" in f:
        kw["web"] = _web(r, f["web"])
    if "change-hooks" in f:
        kw["change_hooks"] = _change_hooks(r, f["change-hooks"])
    site = Site(config_dir=config_dir, **kw)  # type: ignore[arg-type]
    _check_open_control(r, site, f)
    return site


def _check_open_control(r: Reader, site: Site, f: dict[str, Node]) -> None:
    """Without ``web: auth`` everyone who reaches the web server may act (approve, dequeue,
    force, stop, rebuild): allowed only when it listens on loopback or a UNIX socket."""
    if "web" in f and (site.web is None or site.web.has_auth):
        return  # with a login; or the stanza's own errors are reported
    where = web_listen_address(site.www_port, site.www_interface)
    if where is None:
        return
    node = f.get("www-port") if isinstance(site.www_port, str) else f.get("www-interface")
    if node is None:
        node = f.get("www-port") or f.get("www-interface")
    assert node is not None  # the defaults listen on loopback
    r.fail(
        node,
        f"the web UI listens on {where} without 'web: auth': anyone who reaches it could "
        "approve, dequeue, force, stop and rebuild; add 'web: {auth: ..., admins: [...]}' "
        "(see the README, 'Web login and the admin role') or listen on 127.0.0.1",
    )


def web_listen_address(port: int | str, interface: str) -> str | None:
    """Where the web server listens when that is beyond this host's loopback (e.g.
    ``'0.0.0.0'``, ``'all interfaces'``); None for loopback or a UNIX socket. An endpoint
    string (``tcp:8010:interface=127.0.0.1``) decides alone, as it does in master.py."""
    if isinstance(port, str):
        kind, _, rest = port.partition(":")
        if kind == "unix":
            return None
        interface = ""  # Twisted's tcp/ssl endpoints listen everywhere without interface=
        for option in re.split(r"(?<!\\):", rest)[1:]:
            name, eq, value = option.partition("=")
            if eq and name == "interface":
                interface = value.replace("\\", "")
    if not interface:
        return "all interfaces"
    host = interface.strip("[]").lower()
    if host in ("localhost", "::1") or re.fullmatch(r"127(\.\d{1,3}){3}", host):
        return None
    return host


def _multi_master(
    r: Reader, node: Node, site: dict[str, Node], kw: dict[str, object]
) -> MultiMaster | None:
    f = r.mapping(node, "'multi-master'", MULTI_MASTER_KEYS, required=("router-url",))
    if not f or "router-url" not in f:
        return None
    ok = True
    url = r.string(f["router-url"], "multi-master 'router-url'")
    if url is not None and not re.match(r"^wss?://[^/\s]+/\S*$", url):
        r.fail(
            f["router-url"],
            "multi-master 'router-url': expected the crossbar router's WebSocket URL, "
            "e.g. ws://127.0.0.1:8080/ws",
        )
        url = None
    values: dict[str, object] = {}
    if "realm" in f:
        realm = r.string(f["realm"], "multi-master 'realm'")
        if realm is not None and not re.fullmatch(r"[A-Za-z0-9_.-]+", realm):
            r.fail(f["realm"], f"multi-master 'realm': '{realm}' is not a WAMP realm name")
            realm = None
        ok = ok and realm is not None
        values["realm"] = realm
    for key in ("heartbeat", "expire-after", "claim-interval"):
        if key in f:
            seconds = r.integer(f[key], f"multi-master '{key}' (seconds)", minimum=1)
            ok = ok and seconds is not None
            values[key.replace("-", "_")] = seconds
    heartbeat = values.get("heartbeat", MultiMaster.heartbeat)  # None: already reported
    expire_after = values.get("expire_after", MultiMaster.expire_after)
    too_short = isinstance(heartbeat, int) and isinstance(expire_after, int)
    if too_short and expire_after < 3 * heartbeat:
        r.fail(
            f.get("expire-after") or f.get("heartbeat") or node,
            f"multi-master 'expire-after' ({expire_after}s) must be at least 3 heartbeats "
            f"({3 * heartbeat}s): a live master would be declared dead",
        )
        ok = False
    database = str(kw.get("database", Site.database))
    if database.startswith("sqlite"):
        r.fail(
            site.get("database") or node,
            "multi-master needs a 'database' every master reaches (PostgreSQL, e.g. "
            f"postgresql://gating@db.example.org/gating), not {database}",
        )
        ok = False
    shared = kw.get("shared_dir")
    if not isinstance(shared, str) or not Path(shared).is_absolute():
        r.fail(
            site.get("shared-dir") or node,
            "multi-master needs 'shared-dir': an absolute path every master mounts (the "
            "forge, the build backend and the compose reports live there)",
        )
        ok = False
    if url is None or not ok:
        return None
    return MultiMaster(url, **values, mark=node.mark)  # type: ignore[arg-type]


def _web(r: Reader, node: Node) -> WebConfig | None:
    f = r.mapping(node, "'web'", WEB_KEYS)
    if f is None:
        return None
    ok = True
    kw: dict[str, object] = {"mark": node.mark}
    users: tuple[WebUser, ...] = ()
    if "auth" in f:
        auth = r.mapping(f["auth"], "web 'auth'", WEB_AUTH_KEYS)
        if auth is None:
            ok = False
        elif len(auth) != 1:
            r.fail(
                f["auth"],
                "web 'auth': expected exactly one of 'htpasswd' (a htpasswd file) or 'users' "
                "(user: the name of the secret holding the password)",
            )
            ok = False
        elif "htpasswd" in auth:
            path = r.string(auth["htpasswd"], "web auth 'htpasswd'")
            if path is not None and not path.strip():
                r.fail(auth["htpasswd"], "web auth 'htpasswd': expected the path of a file")
                path = None
            ok = ok and path is not None
            kw["htpasswd"] = path
            kw["mark"] = auth["htpasswd"].mark
        else:
            users = _web_users(r, auth["users"])
            ok = ok and bool(users)
            kw["users"] = users
    names: dict[str, tuple[str, ...]] = {}
    for key, what in (("admins", "user"), ("admin-groups", "group")):
        if key not in f:
            continue
        entries = r.string_list(f[key], f"web '{key}'", allow_single=True)
        if entries is None:
            ok = False
            continue
        values = []
        known = [u.name for u in users]
        for value, item in entries:
            if not value.strip():
                r.fail(item, f"web '{key}': expected a {what} name, got an empty string")
                ok = False
            elif key == "admins" and not WEB_USER_RE.match(value):
                r.fail(item, f"web 'admins': '{value}' is not a user name (no ':' or spaces)")
                ok = False
            elif key == "admins" and known and value not in known:
                r.fail(
                    item,
                    f"web 'admins': '{value}' is not one of the auth 'users'"
                    f"{did_you_mean(value, known)} (users: {', '.join(known)})",
                )
                ok = False
            elif value not in values:
                values.append(value)
        names[key] = tuple(values)
    has_admins = bool(names.get("admins") or names.get("admin-groups"))
    if "auth" not in f and ("admins" in f or "admin-groups" in f):
        r.fail(
            f.get("admins") or f["admin-groups"],
            "web: 'admins' and 'admin-groups' need an 'auth' (a login); without one there "
            "is no admin and everyone may control the gate",
        )
        ok = False
    elif "auth" in f and not has_admins and ok:
        r.fail(
            f.get("admins") or f.get("admin-groups") or node,
            "web: 'auth' needs an admin: users in 'admins' or groups in 'admin-groups' "
            "get the role 'admins', the only one allowed to control the gate",
        )
        ok = False
    if not ok:
        return None
    kw["admins"] = names.get("admins", ())
    kw["admin_groups"] = names.get("admin-groups", ())
    return WebConfig(**kw)  # type: ignore[arg-type]


def _web_users(r: Reader, node: Node) -> tuple[WebUser, ...]:
    if not node.is_map or not node.value:
        got = "an empty mapping" if node.is_map else describe(node)
        r.fail(
            node,
            "web auth 'users': expected a mapping of user names to secret names "
            f"(e.g. {{alice: web-alice}}), got {got}",
        )
        return ()
    out = []
    ok = True
    for name, value in node.items():
        secret = r.string(value, f"web user '{name}' (the secret holding the password)")
        if not WEB_USER_RE.match(name):
            r.errors.error(
                node.key_mark(name),
                f"web auth 'users': '{name}' is not a user name (no ':' or spaces)",
            )
            ok = False
        elif secret is not None and not SECRET_NAME_RE.match(secret):
            r.fail(
                value,
                f"web user '{name}': '{secret}' is not a secret name (a file name in "
                "'secrets-dir'; the password itself never goes in gating.yaml)",
            )
            ok = False
        elif secret is None:
            ok = False
        else:
            out.append(WebUser(name, secret, value.mark))
    return tuple(out) if ok else ()


CHANGE_HOOK_KEYS = frozenset({"secret"})


def _change_hooks(r: Reader, node: Node) -> tuple[ChangeHook, ...]:
    """Each hook listed is enabled and needs a ``secret``: no hook takes unsigned calls."""
    if not node.is_map:
        r.fail(
            node,
            "'change-hooks': expected a mapping of dialects to settings (e.g. "
            f"{{gating: {{secret: hook-gating}}}}), got {describe(node)}",
        )
        return ()
    out = []
    for dialect, value in node.items():
        if dialect not in DIALECTS:
            r.errors.error(
                node.key_mark(dialect),
                f"change-hooks: unknown dialect '{dialect}'{did_you_mean(dialect, DIALECTS)} "
                f"(dialects: {', '.join(DIALECTS)})",
            )
            continue
        what = f"change hook '{dialect}'"
        if value.value is None:
            r.fail(
                value,
                f"{what}: needs a 'secret' (the name of the Buildbot secret it is signed "
                "with); a change hook never takes unsigned calls",
            )
            continue
        f = r.mapping(value, what, CHANGE_HOOK_KEYS, required=("secret",))
        if not f or "secret" not in f:
            continue
        secret = f["secret"].value
        if not isinstance(secret, str) or not SECRET_NAME_RE.match(secret):
            # not echoed: it may be the secret itself, pasted by mistake
            r.fail(
                f["secret"],
                f"{what} 'secret': expected the name of a Buildbot secret (a file name in "
                "'secrets-dir': letters, digits, '.', '_', '-'), never the secret itself",
            )
            continue
        out.append(ChangeHook(dialect, secret, f["secret"].mark))
    return tuple(out)


def _port(r: Reader, node: Node, key: str) -> int | str | None:
    v = node.value
    if isinstance(v, int) and not isinstance(v, bool) and 0 < v < 65536:
        return v
    if isinstance(v, str) and PORT_RE.match(v):
        return v
    r.fail(
        node,
        f"'{key}': expected a port number (1-65535) or a Twisted endpoint "
        f"such as 'tcp:8010:interface=127.0.0.1', got {describe(node)}",
    )
    return None


def _gerrit(r: Reader, node: Node) -> Gerrit | None:
    f = r.mapping(node, "'gerrit'", GERRIT_KEYS, required=("url", "user"))
    if not f or "url" not in f or "user" not in f:
        return None
    url = r.string(f["url"], "gerrit 'url'")
    if url is not None and not url.startswith(("http://", "https://")):
        r.fail(f["url"], "gerrit 'url': expected an http:// or https:// URL")
        url = None
    user = r.string(f["user"], "gerrit 'user'")
    kw: dict[str, object] = {}
    if "password-secret" in f:
        secret = r.string(f["password-secret"], "gerrit 'password-secret'")
        if secret is not None:
            kw["password_secret"] = secret
    if "git-url" in f:
        kw["git_url"] = r.string(f["git-url"], "gerrit 'git-url'")
    if "approvals" in f:
        labels = f["approvals"]
        if not labels.is_map:
            r.fail(
                labels,
                "gerrit 'approvals': expected a mapping of labels to votes, "
                f"got {describe(labels)}",
            )
        else:
            kw["approvals"] = tuple(
                (label, vote)
                for label, value in labels.items()
                if (vote := r.integer(value, f"gerrit approval '{label}'")) is not None
            )
    if url is None or user is None:
        return None
    return Gerrit(url, user, **kw)  # type: ignore[arg-type]


def _backend(r: Reader, node: Node) -> BackendConfig | None:
    f = r.mapping(node, "'backend'", BACKEND_KEYS)
    if f is None:
        return None
    kw: dict[str, object] = {}
    kind = "local"
    if "type" in f:
        kind = r.string(f["type"], "backend 'type'") or "local"
        if kind not in ("local", "koji"):
            r.fail(f["type"], f"backend 'type': expected 'local' or 'koji', not '{kind}'")
            return None
    kw["kind"] = kind
    for key, attr in BACKEND_STRINGS.items():
        if key in f:
            value = r.string(f[key], f"backend '{key}'")
            if value is None:
                continue
            if key.endswith(("-tag", "target")) and not TAG_RE.match(value):
                r.fail(f[key], f"backend '{key}': '{value}' is not a valid tag or target name")
                continue
            if key in ("server", "topurl", "weburl") and not value.startswith(
                ("http://", "https://")
            ):
                r.fail(f[key], f"backend '{key}': expected an http:// or https:// URL")
                continue
            if key == "scm-url" and (
                "{project}" not in value
                or not value.startswith(("git+https://", "git+http://", "git://", "git+file://"))
                or any(c in value for c in "#?\n ")
            ):
                r.fail(
                    f[key],
                    "backend 'scm-url': expected a git URL template with {project}, e.g. "
                    "git+https://gating.example.org/scm/{project}.git",
                )
                continue
            kw[attr] = value
    if kind == "local":
        for key in KOJI_ONLY:
            if key in f:
                r.fail(f[key], f"backend '{key}' applies to type 'koji' only")
    else:
        for key in ("defines", "check-build-deps", "build-arch"):
            if key in f:
                r.fail(f[key], f"backend '{key}' applies to type 'local' only")
    if "auth" in f:
        auth = r.string(f["auth"], "backend 'auth'")
        if auth not in ("password", "ssl", "gssapi"):
            r.fail(f["auth"], "backend 'auth': expected password, ssl or gssapi")
        else:
            kw["auth"] = auth
    if "export-mode" in f:
        mode = r.string(f["export-mode"], "backend 'export-mode'")
        if mode not in ("rebuild", "promote"):
            r.fail(f["export-mode"], "backend 'export-mode': expected rebuild or promote")
        else:
            kw["mode"] = mode
    if "poll-interval" in f:
        interval = r.integer(f["poll-interval"], "backend 'poll-interval' (seconds)", minimum=1)
        if interval is not None:
            kw["poll_interval"] = float(interval)
    for key in ("outage-timeout", "outage-retry-max"):
        if key in f:
            seconds = r.integer(f[key], f"backend '{key}' (seconds)", minimum=1)
            if seconds is not None:
                kw[key.replace("-", "_")] = float(seconds)
    if "check-build-deps" in f:
        value = f["check-build-deps"].value
        if not isinstance(value, bool):
            r.fail(f["check-build-deps"], "backend 'check-build-deps': expected true or false")
        else:
            kw["check_build_deps"] = value
    if "defines" in f:
        defines = f["defines"]
        if not defines.is_map:
            r.fail(defines, f"backend 'defines': expected a mapping, got {describe(defines)}")
        else:
            pairs = []
            for name, value in defines.items():
                text = value.value
                if isinstance(text, bool) or not isinstance(text, (str, int, float)):
                    r.fail(value, f"backend define '{name}': expected a string")
                    continue
                if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", str(name)):
                    r.fail(value, f"backend define '{name}': not a macro name")
                    continue
                pairs.append((str(name), str(text)))
            kw["defines"] = tuple(pairs)
    if kind == "koji":
        if "profile" not in f and not ("server" in f and "topurl" in f):
            r.fail(node, "backend type 'koji' needs a 'profile', or 'server' and 'topurl'")
            return None
        if "target" not in f:
            r.fail(node, "backend type 'koji' needs a 'target' (the build target)")
            return None
        if kw.get("auth") == "password" and "user" not in f:
            r.fail(f["auth"], "backend 'auth: password' needs a 'user' and a 'password-secret'")
    if kw.get("mode") == "promote" and "candidate_tag" not in kw:
        r.fail(f["export-mode"], "backend 'export-mode: promote' needs a 'candidate-tag'")
        return None
    if kw.get("candidate_tag") and kw.get("candidate_tag") == kw.get("destination_tag", "dist"):
        r.fail(f["candidate-tag"], "backend 'candidate-tag' must differ from 'destination-tag'")
        return None
    return BackendConfig(**kw)  # type: ignore[arg-type]


QUEUE_KEYS = {
    "window": "window",
    "window-floor": "floor",
    "window-ceiling": "ceiling",
    "window-increase": "increase",
    "window-decrease-factor": "decrease_factor",
}


def _queues(r: Reader, node: Node) -> tuple[tuple[str, tuple[tuple[str, int], ...]], ...]:
    """Zuul's window knobs per queue: window (start), floor, ceiling, increase, decrease."""
    if not node.is_map:
        r.fail(
            node, f"'queues': expected a mapping of queue names to settings, got {describe(node)}"
        )
        return ()
    out = []
    for name, settings in node.items():
        f = r.mapping(settings, f"queue '{name}'", QUEUE_KEYS)
        if not f:
            continue
        values = []
        for key, attr in QUEUE_KEYS.items():
            if key in f:
                minimum = 0 if key == "window-increase" else 1
                if key == "window-decrease-factor":
                    minimum = 2
                value = r.integer(f[key], f"queue '{name}' '{key}'", minimum=minimum)
                if value is not None:
                    values.append((attr, value))
        out.append((name, tuple(values)))
    return tuple(out)


def _projects(r: Reader, node: Node) -> tuple[Project, ...]:
    if not node.is_seq:
        r.fail(node, f"'projects': expected a list of projects, got {describe(node)}")
        return ()
    out: list[Project] = []
    seen: set[str] = set()
    for entry in node.value:
        f = r.mapping(entry, "project", PROJECT_KEYS, required=("name", "repository"))
        if not f or "name" not in f or "repository" not in f:
            continue
        name = r.string(f["name"], "project 'name'")
        if name is not None and not IDENTIFIER_RE.match(name):
            r.fail(f["name"], f"project name '{name}' must be {IDENTIFIER_RULE}")
            name = None
        repo = r.string(f["repository"], f"project '{name}' 'repository'")
        branches: tuple[str, ...] = ("main",)
        if "branches" in f:
            entries = r.string_list(
                f["branches"], f"project '{name}' 'branches'", allow_single=True
            )
            branches = tuple(s for s, _ in entries or ())
        queue = r.string(f["queue"], f"project '{name}' 'queue'") if "queue" in f else None
        if name is None or repo is None:
            continue
        if name in seen:
            r.fail(entry, f"project '{name}' is defined twice")
            continue
        seen.add(name)
        out.append(Project(name, repo, branches, queue, entry.mark))
    return tuple(out)


def pipeline_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.name.endswith(PIPELINE_SUFFIXES))


def load_config(path: str | Path) -> GatingConfig:
    """Load a configuration directory, or a single pipeline file (then no pools are checked).

    Raises :class:`ConfigError` with every error of every file.
    """
    path = Path(path)
    errors = Collector()
    if path.is_file():
        pipelines: list[Pipeline] = []
        try:
            pipelines.append(load_pipeline_file(path, str(path)))
        except ConfigError as exc:
            errors.extend(exc)
        errors.check()
        plan = make_plan(pipelines, None, errors)
        errors.check()
        return GatingConfig(None, None, tuple(pipelines), plan)
    if not path.is_dir():
        raise ConfigError(
            [Diagnostic(Mark(str(path)), "no such configuration directory or pipeline file")]
        )
    site_path = path / SITE_FILE
    if site_path.is_file():
        site = parse_site(site_path.read_bytes(), str(site_path), str(path), errors)
    else:
        errors.error(Mark(str(site_path)), f"missing site configuration {SITE_FILE}")
        site = Site(config_dir=str(path))
    workers: list[Worker] = []
    for name in site.workers:
        inv_path = path / name
        inv = load_inventory(inv_path, str(inv_path), errors)
        workers.extend(inv.workers)
    names: dict[str, Worker] = {}
    for worker in workers:
        if worker.name in names:
            errors.error(
                worker.mark,
                f"worker '{worker.name}' is also defined at {names[worker.name].mark}",
            )
        names.setdefault(worker.name, worker)
    inventory = Inventory(tuple(names.values()))
    folder = path / site.pipelines
    pipelines = []
    if not folder.is_dir():
        errors.error(Mark(str(site_path)), f"pipelines folder '{site.pipelines}' does not exist")
    else:
        for file in pipeline_files(folder):
            try:
                pipelines.append(load_pipeline_file(file, str(file)))
            except ConfigError as exc:
                errors.extend(exc)
    seen: dict[str, Pipeline] = {}
    for p in pipelines:
        if p.name in seen:
            errors.error(p.mark, f"pipeline '{p.name}' is also defined in {seen[p.name].file}")
        seen.setdefault(p.name, p)
    _check_trigger_projects(list(seen.values()), site, errors)
    _check_event_triggers(list(seen.values()), site, errors)
    _check_task_repos(site, inventory, errors)
    plan = make_plan(
        list(seen.values()), inventory, errors, site.coordinators, backend=site.backend
    )
    errors.check()
    return GatingConfig(site, inventory, tuple(seen.values()), plan)


def _check_trigger_projects(pipelines: list[Pipeline], site: Site, errors: Collector) -> None:
    known = [p.name for p in site.projects]
    gated = [p.name for p in site.projects if p.queue]
    for pipeline in pipelines:
        for trigger in pipeline.triggers:
            names = trigger.option("projects")
            if trigger.kind == "gate":
                for name in [names] if isinstance(names, str) else names or []:
                    if name in known and name not in gated:
                        errors.error(
                            trigger.mark,
                            f"trigger 'gate' names project '{name}', which has no 'queue' "
                            "in the site's projects",
                        )
                if not gated:
                    errors.error(
                        trigger.mark,
                        "trigger 'gate': no project of the site names a 'queue' to gate",
                    )
            for name in [names] if isinstance(names, str) else names or []:
                if name not in known:
                    errors.error(
                        trigger.mark,
                        f"trigger '{trigger.kind}' names project '{name}', which is not in "
                        f"the site's projects{did_you_mean(name, known)} "
                        f"(projects: {', '.join(known) or 'none'})",
                    )


def koji_hub(site: Site) -> dict[str, str | None] | None:
    """The hub koji events come from: ``koji-events``' own, else the koji backend's."""
    ev = site.koji_events
    if ev is not None and (ev.profile or ev.server):
        return {
            "profile": ev.profile,
            "server": ev.server,
            "topurl": ev.topurl,
            "weburl": ev.weburl,
        }
    b = site.backend
    if b.kind == "koji":
        return {"profile": b.profile, "server": b.server, "topurl": b.topurl, "weburl": b.weburl}
    return None


def _check_event_triggers(pipelines: list[Pipeline], site: Site, errors: Collector) -> None:
    composes = [c.name for c in site.composes]
    amqp = site.koji_events is not None and site.koji_events.source == "amqp"
    for pipeline in pipelines:
        for trigger in pipeline.triggers:
            if trigger.kind in ("koji_build", "koji_tag") and not amqp and koji_hub(site) is None:
                errors.error(
                    trigger.mark,
                    f"trigger '{trigger.kind}' needs a koji hub: set 'koji-events' (a "
                    "'profile', or 'server' and 'topurl') or a koji 'backend' in the site",
                )
            if trigger.kind == "compose":
                names = trigger.option("location")
                if not composes:
                    errors.error(
                        trigger.mark,
                        "trigger 'compose': the site watches no compose locations ('composes')",
                    )
                for name in [names] if isinstance(names, str) else names or []:
                    if composes and name not in composes:
                        errors.error(
                            trigger.mark,
                            f"trigger 'compose' names location '{name}', which is not in the "
                            f"site's composes{did_you_mean(name, composes)} "
                            f"(composes: {', '.join(composes)})",
                        )
    if site.task_repos is not None and not amqp and koji_hub(site) is None:
        errors.error(
            Mark(str(Path(site.config_dir) / SITE_FILE)),
            "'task-repos' run on koji builds: set 'koji-events' or a koji 'backend'",
        )


def _check_task_repos(site: Site, inventory: Inventory, errors: Collector) -> None:
    """The task repositories' tasks run on the workers of the ``task-repos`` 'arch'."""
    config = site.task_repos
    if config is None or inventory.pool(config.arch):
        return
    errors.error(
        config.mark,
        f"task-repos: tasks run on the '{config.arch}' workers ('arch'), but no worker "
        f"has that architecture (pools: {', '.join(inventory.arches()) or 'none'})",
    )


def repository_url(project: Project, site: Site) -> str:
    """A project's repository as git reaches it: a relative path is taken from the
    configuration directory."""
    repo = project.repository
    if "://" in repo or repo.startswith("git@") or Path(repo).is_absolute():
        return repo
    return str((Path(site.config_dir) / repo).resolve())
