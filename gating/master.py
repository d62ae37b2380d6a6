"""Turn a checked :class:`~gating.site.GatingConfig` into Buildbot's ``BuildmasterConfig``.

``master.cfg`` only calls :func:`buildmaster_config`. Configuration errors become
Buildbot ``ConfigErrors`` (one per ``FILE:LINE:COLUMN`` message), so ``buildbot
checkconfig`` prints them and ``buildbot reconfig`` keeps the running configuration.
"""

from __future__ import annotations

import datetime
import functools
import json
import os
import sqlite3
from collections.abc import Generator
from pathlib import Path
from typing import Any

from buildbot.config.errors import ConfigErrors
from buildbot.data import resultspec
from buildbot.plugins import changes, reporters, schedulers, secrets, steps, util, worker
from buildbot.process.factory import BuildFactory
from sqlalchemy.engine import make_url
from sqlalchemy.pool import QueuePool
from twisted.internet import defer

from gating import bbfixes, commands
from gating import overlay as overlaymod
from gating.buildjobs import (
    BUILTIN_STEPS,
    RPMBUILD_TRIGGER,
    BackendService,
    RegisterBuild,
)
from gating.cluster import Liveness, set_claim_interval
from gating.composepoller import (
    COMPOSE_SCHEDULER,
    ComposeLocation,
    ComposeReportGenerator,
    ComposeScheduler,
    ComposeSettings,
)
from gating.diagnostics import ConfigError
from gating.forgepoller import CATEGORY, ForgeChangeSource
from gating.gate import SCHEDULER_NAME, GateScheduler, GateSettings
from gating.gateview import ui_plan
from gating.gerritpoller import HANDLED_EVENTS, SecretGerritEventLogPoller
from gating.inrepojob import inrepo_factory
from gating.inventory import Inventory
from gating.kojievents import KINDS as KOJI_KINDS
from gating.kojievents import WatchSet, watch_of
from gating.kojipoller import KOJI_SCHEDULER, KojiEventScheduler, KojiEventSettings
from gating.pipeline import IN_REPO_KIND, MASTER_LANE, InstanceId, Job, Pipeline
from gating.plan import RPMBUILD_BUILDER, builder_name, coordinator_names, sorted_builders
from gating.runsdb import UIPlanService
from gating.site import (
    GatingConfig,
    MultiMaster,
    Project,
    Site,
    koji_hub,
    load_config,
    repository_url,
)
from gating.siteevents import KojiEventsConfig
from gating.steps import TRIGGER_PROPERTIES, JobTrigger, RunPipeline, trigger_scheduler_name
from gating.taskrunner import TASK_BUILDER, task_builder
from gating.webauth import web_auth
from gating.webhooks import change_hook_dialects

CONFIG_ENV = "GATING_CONFIG"


def _run_id(props: Any) -> str:
    run = props.getProperty("gating_run")
    if not isinstance(run, int) or isinstance(run, bool):
        raise ValueError(f"gating_run must be a build id, got {run!r}")
    return str(run)


def _artifact(pipeline: str, job: str, index: int, lane: str) -> Any:
    @util.renderer
    def render(props: Any) -> str:
        return commands.artifact_path(int(_run_id(props)), pipeline, job, index, lane)

    return render


REPO_FILE = "gating.repo"


@util.renderer
def _repo_file_path(props: Any) -> str:
    """Where the repo-file step wrote the overlay's .repo file on the worker ("" if none)."""
    if not props.getProperty("gating_repo_file"):
        return ""
    builddir = props.getProperty("builddir") or ""
    return os.path.join(builddir, "build", REPO_FILE)


def rpmbuild_factory(site: Site, incoming: Path) -> BuildFactory:
    """The local backend's builds, on a worker: clone the SCM mirror, check out the
    commit, rpmbuild the one spec file, upload the results to the master, keep them."""
    backend = site.backend
    f = BuildFactory()
    f.addStep(
        steps.ShellCommand(
            name="clean", command=["rm", "-rf", "--", "src", "out"], haltOnFailure=True
        )
    )
    f.addStep(
        steps.ShellCommand(
            name="clone",
            command=[
                "git",
                "clone",
                "-q",
                "--no-checkout",
                "--",
                util.Property("gating_build_repository"),
                "src",
            ],
            haltOnFailure=True,
        )
    )
    f.addStep(
        steps.ShellCommand(
            name="checkout",
            command=[
                "git",
                "-C",
                "src",
                "checkout",
                "-q",
                "--detach",
                util.Property("gating_build_commit"),
                "--",
            ],
            haltOnFailure=True,
        )
    )
    f.addStep(
        steps.ShellCommand(
            name="rpmbuild",
            command=overlaymod.rpmbuild_command(backend.defines, backend.check_build_deps),
            env={"LC_ALL": "C.UTF-8"},
            haltOnFailure=True,
        )
    )
    f.addStep(
        steps.DirectoryUpload(
            name="upload",
            workersrc="out",
            masterdest=util.Interpolate(f"{incoming}/%(prop:gating_build_token)s"),
            haltOnFailure=True,
        )
    )
    f.addStep(RegisterBuild(str(incoming)))
    return f


@functools.cache
def _gating_environment() -> dict[str, Any]:
    """The ``GATING_*`` variables of every job's scripts, as renderables. Made once and
    shared by every job (they are stateless): building them per job was a third of the
    configuration's load time with thousands of jobs. Never mutate it."""
    return {
        "GATING_REPO_FILE": _repo_file_path,
        "GATING_REPO_FILE_URL": util.Property("gating_repo_file_url", default=""),
        "GATING_OVERLAY_URL": util.Property("gating_overlay_url", default=""),
        **{
            f"GATING_{name.upper()}": util.Interpolate(f"%(prop:{name}:-)s")
            for name in TRIGGER_PROPERTIES
        },
    }


def _has_repository(step: Any) -> bool:
    stamps = step.build.getAllSourceStamps()
    return bool(step.getProperty("repository") or (stamps and stamps[0].repository))


# The first two steps of every job are the same: made once, shared by every job's factory
# (a factory keeps a step's arguments, each build makes its own step from them). Making
# Buildbot steps is most of the configuration's load time with thousands of jobs.
@functools.cache
def _checkout_step() -> Any:
    return steps.Git(
        name="checkout",
        repourl=util.Property("repository"),
        mode="full",
        method="clobber",
        doStepIf=_has_repository,
        hideStepIf=lambda result, step: result == util.SKIPPED,
    )


@functools.cache
def _repo_file_step() -> Any:
    return steps.StringDownload(
        util.Property("gating_repo_file", default=""),
        name="repo-file",
        description="write the overlay .repo file",
        descriptionDone="wrote gating.repo",
        workerdest=REPO_FILE,
        doStepIf=lambda step: bool(step.getProperty("gating_repo_file")),
        hideStepIf=lambda result, step: result == util.SKIPPED,
        haltOnFailure=True,
    )


def job_factory(pipeline: Pipeline, job: Job, lane: str, inventory: Inventory) -> BuildFactory:
    """The steps of one job instance, as lpci runs a job: source, inputs, packages,
    ``run-before``/``run``/``run-after``, then the declared output to the master.
    ``uses: in-repo-pipeline``: the checkout, then the repository's own pipeline file
    (:func:`gating.inrepojob.inrepo_factory`)."""
    if job.uses == IN_REPO_KIND:
        return inrepo_factory(
            job, lane, [_checkout_step(), _repo_file_step()], _gating_environment()
        )
    f = BuildFactory()
    f.addStep(_checkout_step())
    env: dict[str, Any] = dict(commands.environment(job))
    f.addStep(_repo_file_step())
    env.update(_gating_environment())
    if job.input is not None:
        inst = InstanceId(job.name, job.index, lane)
        target = job.input.target_directory
        f.addStep(
            steps.ShellCommand(
                name="prepare-input",
                description=f"prepare {target}",
                descriptionDone=f"prepared {target}",
                command=["mkdir", "-p", "--", target],
                haltOnFailure=True,
            )
        )
        for producer in pipeline.producers(inst):
            f.addStep(
                steps.FileDownload(
                    name="fetch-input",
                    description=f"fetch output of {producer}",
                    descriptionDone=f"fetched output of {producer}",
                    mastersrc=_artifact(pipeline.name, producer.job, producer.index, producer.lane),
                    workerdest=commands.INPUT_TARBALL,
                    haltOnFailure=True,
                )
            )
            f.addStep(
                steps.ShellCommand(
                    name="unpack-input",
                    description=f"unpack output of {producer}",
                    descriptionDone=f"unpacked output of {producer}",
                    command=commands.unpack_input_command(target),
                    haltOnFailure=True,
                )
            )
    if job.packages:
        installers = {w.name: w.package_install for w in inventory.pool(lane, job.series)}

        @util.renderer
        def install(props: Any) -> list[str]:
            return commands.package_command(
                installers[props.getProperty("workername")], job.packages
            )

        f.addStep(steps.ShellCommand(name="install-packages", command=install, haltOnFailure=True))
    for snap in job.snaps:
        f.addStep(
            steps.ShellCommand(
                name="install-snap",
                description=f"install snap {snap.name}",
                descriptionDone=f"installed snap {snap.name}",
                command=commands.snap_command(snap),
                haltOnFailure=True,
            )
        )
    for step_name, script in (
        ("run-before", job.run_before),
        ("run", commands.run_script(job)),
        ("run-after", job.run_after),
    ):
        if script:
            f.addStep(
                steps.ShellCommand(
                    name=step_name,
                    description=step_name,
                    descriptionDone=step_name,
                    command=commands.script_command(script),
                    env=env,
                    maxTime=job.timeout,
                    haltOnFailure=True,
                )
            )
    if job.output is not None:
        f.addStep(
            steps.ShellCommand(
                name="collect-output",
                command=commands.collect_output_command(job.output.paths),
                haltOnFailure=True,
            )
        )
        f.addStep(
            steps.StringDownload(
                json.dumps(dict(job.output.properties), sort_keys=True) + "\n",
                name="output-properties",
                workerdest=f"{commands.OUTPUT_STAGING}/properties",
                haltOnFailure=True,
            )
        )
        f.addStep(
            steps.ShellCommand(
                name="pack-output", command=commands.pack_output_command(), haltOnFailure=True
            )
        )
        f.addStep(
            steps.FileUpload(
                name="upload-output",
                workersrc=commands.OUTPUT_TARBALL,
                masterdest=_artifact(pipeline.name, job.name, job.index, lane),
                haltOnFailure=True,
            )
        )
    return f


def _pipeline_projects(pipeline: Pipeline, site: Site, kind: str) -> list[Project]:
    for trigger in pipeline.triggers:
        if trigger.kind == kind:
            names = trigger.option("projects")
            candidates = [p for p in site.projects if p.queue] if kind == "gate" else site.projects
            if names is None:
                return list(candidates)
            names = [names] if isinstance(names, str) else names
            return [p for p in candidates if p.name in names]
    return []


def shared_root(site: Site, basedir: Path) -> Path:
    """What every master of a cluster must see the same: ``shared-dir`` (default: the
    master's own directory)."""
    if site.shared_dir is None:
        return basedir
    root = Path(site.shared_dir)
    return root if root.is_absolute() else basedir / root


def forge_root(site: Site, basedir: Path) -> Path:
    root = Path(site.forge_dir)
    return root if root.is_absolute() else shared_root(site, basedir) / root


def project_url(project: Project, site: Site, basedir: Path) -> str:
    """Where git reaches a project: its repository in the embedded forge when it is gated,
    its configured repository otherwise."""
    if project.queue:
        return str(forge_root(site, basedir) / f"{project.name}.git")
    return repository_url(project, site)


def _gerrit_settings(site: Site, basedir: Path) -> dict[str, Any]:
    if site.gerrit is None:
        return {}
    return {
        "gerrit_url": site.gerrit.url,
        "gerrit_user": site.gerrit.user,
        "gerrit_password_secret": site.gerrit.password_secret,
        "gerrit_approvals": site.gerrit.approvals,
        "gerrit_git_url": site.gerrit.git_url,
        "mirror_root": str(shared_root(site, basedir) / "gerrit-mirror"),
    }


def project_url_for(project: Project, site: Site, basedir: Path) -> str:
    """Where workers and pollers fetch a gated project from (forge or Gerrit mirror)."""
    if project.queue and site.gerrit is not None:
        return str(shared_root(site, basedir) / "gerrit-mirror" / f"{project.name}.git")
    return project_url(project, site, basedir)


def _gate_scheduler(config: GatingConfig, basedir: Path) -> list[Any]:
    site = config.site
    assert site is not None
    gated = [p for p in site.projects if p.queue]
    if not gated:
        return []
    pipelines: dict[str, list[str]] = {p.name: [] for p in gated}
    for pipeline in config.pipelines:
        for project in _pipeline_projects(pipeline, site, "gate"):
            pipelines[project.name].append(pipeline.name)
    settings = GateSettings(
        forge_root=str(forge_root(site, basedir)),
        workdir=str(basedir / "gate-workdir"),
        project_queues=tuple((p.name, p.queue or "") for p in gated),
        project_branches=tuple((p.name, p.branches) for p in gated),
        project_pipelines=tuple((name, tuple(b)) for name, b in pipelines.items()),
        project_seeds=tuple((p.name, repository_url(p, site)) for p in gated),
        queue_settings=site.queue_settings,
        **_gerrit_settings(site, basedir),
    )
    builders = sorted({b for names in pipelines.values() for b in names})
    return [GateScheduler(name=SCHEDULER_NAME, builderNames=builders, settings=settings)]


def _schedulers(config: GatingConfig, basedir: Path) -> list[Any]:
    site = config.site
    assert site is not None
    out: list[Any] = []
    jobs_of: dict[str, list[str]] = {}
    for b in config.plan.builders:
        if b.kind in ("job", "builtin"):
            jobs_of.setdefault(b.pipeline, []).append(b.name)
    for p in config.pipelines:
        job_builders = jobs_of.get(p.name, [])
        out.append(JobTrigger(name=trigger_scheduler_name(p.name), builderNames=job_builders))
        out.append(
            schedulers.ForceScheduler(
                name=f"force-{p.name}".replace(".", "_").replace("+", "_"),
                label=f"Run {p.name}",
                builderNames=[p.name],
                codebases=[
                    util.CodebaseParameter(
                        "",
                        repository=util.StringParameter(name="repository", default=""),
                        branch=util.StringParameter(name="branch", default=""),
                        revision=util.StringParameter(name="revision", default=""),
                        project=util.FixedParameter(name="project", default=""),
                    )
                ],
            )
        )
        for project in _pipeline_projects(p, site, "dist_git_commit"):
            trigger = next(t for t in p.triggers if t.kind == "dist_git_commit")
            branches = trigger.option("branches") or list(project.branches)
            out.append(
                schedulers.SingleBranchScheduler(
                    name=f"{p.name}:commit:{project.name}",
                    change_filter=util.ChangeFilter(project=project.name, branch=branches),
                    treeStableTimer=None,
                    builderNames=[p.name],
                )
            )
        for trigger in p.triggers:
            if trigger.kind != "nightly":
                continue
            for project in _pipeline_projects(p, site, "nightly") or [None]:
                codebases = (
                    {
                        "": {
                            "repository": project_url_for(project, site, basedir),
                            "branch": project.branches[0],
                        }
                    }
                    if project
                    else {"": {"repository": "", "branch": None}}
                )
                out.append(
                    schedulers.Nightly(
                        name=f"{p.name}:nightly:{project.name if project else 'none'}",
                        builderNames=[p.name],
                        hour=trigger.option("hour", 3),
                        minute=trigger.option("minute", 0),
                        codebases=codebases,
                    )
                )
        checked = [proj.name for proj in _pipeline_projects(p, site, "check") if proj.queue]
        if checked:
            out.append(
                schedulers.AnyBranchScheduler(
                    name=f"{p.name}:check",
                    change_filter=util.ChangeFilter(category=CATEGORY, project=checked),
                    treeStableTimer=None,
                    builderNames=[p.name],
                )
            )
    out.extend(_gate_scheduler(config, basedir))
    out.extend(_koji_event_scheduler(config))
    out.extend(_compose_scheduler(config, basedir))
    return out


def _compose_scheduler(config: GatingConfig, basedir: Path) -> list[Any]:
    site = config.site
    assert site is not None
    if not site.composes:
        return []
    locations = []
    for watch in site.composes:
        pipelines = []
        for p in config.pipelines:
            for t in p.triggers:
                names = t.option("location")
                names = [names] if isinstance(names, str) else names
                if t.kind == "compose" and (names is None or watch.name in names):
                    pipelines.append(p.name)
        locations.append(
            ComposeLocation(
                name=watch.name,
                location=watch.location,
                poll_interval=float(watch.poll_interval),
                pipelines=tuple(dict.fromkeys(pipelines)),
                expected=watch.expected,
                nightly_tasks=watch.nightly_tasks,
            )
        )
    hub = koji_hub(site) or {}
    settings = ComposeSettings(
        locations=tuple(locations),
        reports_dir=str(shared_root(site, basedir) / "compose-reports"),
        base_url=site.buildbot_url,
        server=hub.get("server"),
        topurl=hub.get("topurl"),
        profile=hub.get("profile"),
    )
    builders = sorted({p for loc in locations for p in loc.pipelines})
    return [ComposeScheduler(name=COMPOSE_SCHEDULER, builderNames=builders, settings=settings)]


def _reporters(site: Site) -> list[Any]:
    """Compose check reports by mail, through Buildbot's mail reporter."""
    if site.mail is None or not site.composes:
        return []
    mail = site.mail
    return [
        reporters.MailNotifier(
            fromaddr=mail.sender,
            sendToInterestedUsers=False,
            extraRecipients=list(mail.recipients),
            relayhost=mail.relay,
            smtpPort=mail.port,
            useTls=mail.tls,
            smtpUser=mail.user,
            smtpPassword=util.Secret(mail.password_secret) if mail.password_secret else None,
            generators=[ComposeReportGenerator()],
        )
    ]


def koji_watches(config: GatingConfig) -> WatchSet:
    """Every ``koji_build`` / ``koji_tag`` trigger of the configuration."""
    return WatchSet(
        tuple(
            watch_of(p.name, t.kind, dict(t.options))
            for p in config.pipelines
            for t in p.triggers
            if t.kind in KOJI_KINDS
        )
    )


def _koji_event_scheduler(config: GatingConfig) -> list[Any]:
    site = config.site
    assert site is not None
    watches = koji_watches(config)
    if not watches.watches and site.task_repos is None:
        return []
    if site.task_repos is not None:  # the tasks run on the builds of every package
        watches = WatchSet(watches.watches, all_builds=True)
    events = site.koji_events or KojiEventsConfig()
    hub = koji_hub(site) or {}
    settings = KojiEventSettings(
        watches=watches,
        source=events.source,
        poll_interval=float(events.poll_interval),
        server=hub.get("server"),
        topurl=hub.get("topurl"),
        weburl=hub.get("weburl"),
        profile=hub.get("profile"),
        amqp_url=events.amqp_url,
        amqp_password_secret=events.amqp_password_secret,
        amqp_queue=events.amqp_queue,
        amqp_topics=events.amqp_topics,
        task_repos=site.task_repos,
    )
    builders = sorted({w.pipeline for w in watches.watches})
    if site.task_repos is not None:
        builders.append(TASK_BUILDER)
    return [KojiEventScheduler(name=KOJI_SCHEDULER, builderNames=builders, settings=settings)]


def _change_sources(site: Site, config: GatingConfig, basedir: Path) -> list[Any]:
    watched = {
        project.name: project
        for p in config.pipelines
        for project in _pipeline_projects(p, site, "dist_git_commit")
    }
    out: list[Any] = []
    for project in watched.values():
        out.append(_git_poller(project_url_for(project, site, basedir), project, site, basedir))
    gated = tuple(p.name for p in site.projects if p.queue)
    if gated and site.gerrit is not None:
        out.append(
            SecretGerritEventLogPoller(
                name="gerrit",
                baseURL=site.gerrit.url.rstrip("/") + "/a",
                auth=(site.gerrit.user, site.gerrit.password_secret),
                handled_events=list(HANDLED_EVENTS),
                gitBaseURL=(site.gerrit.git_url or site.gerrit.url + "/a/{project}")
                .split("{project}")[0]
                .rstrip("/"),
                pollInterval=site.poll_interval,
                pollAtLaunch=True,
                get_files=False,
            )
        )
    elif gated:
        out.append(
            ForgeChangeSource(
                name="forge",
                root=str(forge_root(site, basedir)),
                projects=gated,
                pollInterval=site.poll_interval,
                pollAtLaunch=True,
            )
        )
    return out


def _git_poller(repo: str, project: Project, site: Site, basedir: Path) -> Any:
    return changes.GitPoller(
        repourl=repo,
        branches=list(project.branches),
        project=project.name,
        pollInterval=site.poll_interval,
        pollAtLaunch=True,
        workdir=str(basedir / "gitpoller" / project.name),
    )


class SQLiteConnection(sqlite3.Connection):
    """The master's SQLite connections run with ``synchronous=NORMAL``: SQLite's advice
    for a database in WAL mode (Buildbot turns WAL on), where a commit no longer waits
    for an fsync; the WAL is synced at checkpoints. A commit survives a crash of the
    master (``kill -9``); only an OS crash or a power loss may undo the last ones, and
    never corrupts the database."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.execute("pragma synchronous = normal")


def db_config(url: str) -> dict[str, Any]:
    """Buildbot's ``c['db']`` for a database URL.

    A SQLite file gets pooled connections (SQLAlchemy's default for it, which Buildbot
    replaces with a new connection per transaction) and :class:`SQLiteConnection`.
    Buildbot commits several times per builder, scheduler and worker it registers at
    start-up and at each reconfig: with a connection per transaction, whose close
    checkpoints the WAL with fsyncs, and an fsync per commit, a transaction took ~15 ms
    and a master with thousands of builders minutes to start; pooled and ``NORMAL``,
    ~0.2 ms."""
    parsed = make_url(url)
    if not parsed.drivername.startswith("sqlite") or parsed.database in (None, "", ":memory:"):
        return {"db_url": url}
    return {
        "db_url": url,
        "engine_kwargs": {
            "poolclass": QueuePool,
            "connect_args": {"factory": SQLiteConnection, "check_same_thread": False},
        },
    }


@defer.inlineCallbacks
def prioritize_builders(master: Any, builders: list[Any]) -> Generator[Any, Any, list[Any]]:
    """Buildbot's ``prioritizeBuilders``: the builders that have unclaimed build requests,
    in Buildbot's default order (highest request priority first, then the oldest request,
    then the name), from ONE query of the unclaimed requests. Buildbot's default asks the
    database twice per builder, and its distributor then once more per builder: with
    thousands of builders (a coordinator worker serves every pipeline builder) each
    connecting worker and each finished build cost thousands of queries. A builder
    without an unclaimed request has nothing to start; a new (or unclaimed) request
    schedules its builder again, and is then found by this query."""
    requests = yield master.data.get(
        ("buildrequests",), filters=[resultspec.Filter("claimed", "eq", [False])]
    )
    best: dict[int, tuple[float, float]] = {}
    for br in requests:
        submitted = br["submitted_at"]
        when = submitted.timestamp() if isinstance(submitted, datetime.datetime) else submitted
        key = (-(br["priority"] or 0), float(when))
        bid = br["builderid"]
        best[bid] = min(best.get(bid, key), key)
    waiting = []
    for bldr in builders:
        key = best.get((yield bldr.getBuilderId()))
        if key is not None:
            waiting.append((key, bldr.name, bldr))
    waiting.sort(key=lambda entry: entry[:2])
    return [bldr for _key, _name, bldr in waiting]


def to_buildbot(config: GatingConfig, basedir: str | Path) -> dict[str, Any]:
    """Build the ``BuildmasterConfig`` dict for a loaded configuration."""
    basedir = Path(basedir).resolve()
    site = config.site
    inventory = config.inventory
    if site is None or inventory is None:
        raise ValueError("a master needs a configuration directory, not a single pipeline file")
    secrets_dir = Path(site.secrets_dir)
    if not secrets_dir.is_absolute():
        secrets_dir = basedir / secrets_dir
    c: dict[str, Any] = {
        "title": site.title,
        "titleURL": site.title_url,
        "buildbotURL": site.buildbot_url,
        "db": db_config(site.database),
        "protocols": {"pb": {"port": site.pb_port}},
        "buildbotNetUsageData": None,
        # Every build request is its own run: two koji events or composes for one pipeline
        # (requests without source stamps) must never be merged into one build.
        "collapseRequests": False,
        "prioritizeBuilders": prioritize_builders,
        "secretsProviders": [secrets.SecretInAFile(dirname=str(secrets_dir))],
    }
    workers: list[Any] = [
        worker.Worker(
            w.name,
            util.Secret(w.password_secret),
            max_builds=w.max_builds,
            properties={"gating_worker_arch": w.arch},
        )
        for w in inventory.workers
    ]
    # No cap on a coordinator's builds: Buildbot runs at most one build per (builder,
    # worker), so each pipeline runs at most once per coordinator, and each built-in job
    # builder (PIPELINE/JOB/master) has a slot on every coordinator for the runs that
    # wait on it. A cap (it was one build per pipeline) let the runs of a full window hold
    # every coordinator while the built-in jobs they wait for (scratch builds, exports)
    # could never start: a deadlock.
    workers.extend(worker.LocalWorker(name) for name in coordinator_names(site.coordinators))
    c["workers"] = workers

    builders = []
    backend_root = shared_root(site, basedir) / "backend"
    pipelines = {p.name: p for p in config.pipelines}
    for spec in sorted_builders(config.plan.builders):
        if spec.kind == "rpmbuild":
            builders.append(
                util.BuilderConfig(
                    name=spec.name,
                    workernames=list(spec.workernames),
                    factory=rpmbuild_factory(site, backend_root / "incoming"),
                    tags=["rpmbuild", spec.arch or ""],
                    description="the local build backend's rpmbuild, on a worker",
                    builddir="gating-rpmbuild",
                    workerbuilddir="gating-rpmbuild",
                )
            )
            continue
        pipeline = pipelines[spec.pipeline]
        if spec.kind == "pipeline":
            table = {
                inst: builder_name(pipeline, pipeline.job(inst.job, inst.index), inst.lane)
                for _n, inst in pipeline.instances()
            }
            factory = BuildFactory([RunPipeline(pipeline, table, job_attempts=site.job_attempts)])
            tags = ["pipeline", pipeline.name]
            description = (
                f"pipeline {pipeline.name} ({pipeline.file}): runs its jobs stage by stage"
            )
        elif spec.kind == "builtin":
            assert spec.job is not None and spec.index is not None
            job = pipeline.job(spec.job, spec.index)
            assert job.uses is not None
            factory = BuildFactory([BUILTIN_STEPS[job.uses]()])
            tags = ["job", pipeline.name, MASTER_LANE]
            description = (
                f"built-in job {job.name} ({job.uses}) of pipeline {pipeline.name}: "
                f"stage {pipeline.stage_of(job.name) + 1}, on the master"
            )
        else:
            assert spec.arch is not None and spec.job is not None and spec.index is not None
            job = pipeline.job(spec.job, spec.index)
            factory = job_factory(pipeline, job, spec.arch, inventory)
            tags = ["job", pipeline.name, spec.arch]
            stage = pipeline.stage_of(job.name) + 1
            matrix = f", matrix entry {job.index}" if len(pipeline.entries(job.name)) > 1 else ""
            series = f", series {job.series}" if job.series else ""
            description = (
                f"job {job.name} of pipeline {pipeline.name}: stage {stage}, "
                f"{spec.arch}{series}{matrix}"
            )
        builders.append(
            util.BuilderConfig(
                name=spec.name,
                workernames=list(spec.workernames),
                factory=factory,
                tags=tags,
                description=description,
                builddir=spec.name.replace("/", "_"),
                workerbuilddir=spec.name.replace("/", "_"),
                properties={"gating_pipeline": pipeline.name},
            )
        )
    if site.task_repos is not None:
        pool = inventory.pool(site.task_repos.arch)
        builders.append(task_builder(site.task_repos, [w.name for w in pool]))
    c["builders"] = builders
    c["schedulers"] = _schedulers(config, basedir)
    c["services"] = []
    if any(b.kind == "builtin" for b in config.plan.builders):
        c["services"].append(
            BackendService(
                config=site.backend,
                root=str(backend_root),
                base_url=site.buildbot_url,
                project_repos=tuple(
                    (p.name, project_url_for(p, site, basedir)) for p in site.projects
                ),
                builder=RPMBUILD_BUILDER,
            )
        )
        if any(b.kind == "rpmbuild" for b in config.plan.builders):
            c["schedulers"].append(
                JobTrigger(name=RPMBUILD_TRIGGER, builderNames=[RPMBUILD_BUILDER])
            )
    c["change_source"] = _change_sources(site, config, basedir)
    c["services"].extend(_reporters(site))
    c["services"].append(UIPlanService(plan=ui_plan(config.plan)))
    if site.multi_master is not None:
        _multi_master(c, site.multi_master)
    c["www"] = {
        "port": f"tcp:{site.www_port}:interface={site.www_interface}"
        if isinstance(site.www_port, int)
        else site.www_port,
        "plugins": {"console_view": {}, "grid_view": {}, "waterfall_view": {}, "gating": {}},
        # change-hooks -> signed dialects only (gating.webhooks); none: no change hook
        "change_hook_dialects": change_hook_dialects(
            site.change_hooks,
            [(p.name, project_url_for(p, site, basedir)) for p in site.projects],
            secrets_dir,
        ),
        # web: auth -> the login and the admin role (gating.webauth); else no login
        **web_auth(site.web, site.config_dir, secrets_dir),
    }
    return c


def _multi_master(c: dict[str, Any], mm: MultiMaster) -> None:
    """Buildbot's multi-master mode: the crossbar message queue, and the takeover timing
    (gating.cluster) instead of Buildbot's 10-minute expiry and 5-minute claim polls."""
    c["multiMaster"] = True
    c["mq"] = {
        "type": "wamp",
        "router_url": mm.router_url,
        "realm": mm.realm,
        "wamp_debug_level": "error",
    }
    c["services"].append(Liveness(heartbeat=mm.heartbeat, expire_after=mm.expire_after))
    set_claim_interval([*c["schedulers"], *c["change_source"]], mm.claim_interval)


def buildmaster_config(basedir: str, config_dir: str | None = None) -> dict[str, Any]:
    """Load the configuration directory (``$GATING_CONFIG`` or ``BASEDIR/config``)."""
    bbfixes.install()
    config_dir = config_dir or os.environ.get(CONFIG_ENV) or os.path.join(basedir, "config")
    try:
        config = load_config(config_dir)
        return to_buildbot(config, basedir)
    except ConfigError as exc:
        raise ConfigErrors(exc.messages) from None
