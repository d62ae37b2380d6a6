/*
 * buildbot-gating: the web UI plugin (loaded by Buildbot's UI as plugins/gating/scripts.js).
 *
 * Pages, in Buildbot's menu under "Gate":
 *   #/gate                 the gate's queues, Zuul style: items in order, the speculative chain,
 *                          jobs with arch, state and progress, failing reasons, export state
 *   #/gate/runs/:buildid   one pipeline run as its stages, job instances per arch
 *   #/gate/runs            the pipelines and their recent runs
 *   #/gate/composes[/:id]  compose check reports
 *   #/gate/tasks           task repository results (runtask.yaml tasks run on koji events)
 *
 * Plain JavaScript on the globals Buildbot's UI exposes to plugins (React,
 * ReactRouterDOM, BuildbotPluginSupport): no build step. Data comes from
 * plugins/gating/api/* and Buildbot's REST API (api/v2), polled every few seconds.
 * Every string from a change is rendered as text by React (never as HTML).
 */
(function () {
  "use strict";
  const React = window.React;
  const Router = window.ReactRouterDOM;
  const support = window.BuildbotPluginSupport;
  if (!React || !support) {
    console.error("buildbot-gating: Buildbot's plugin globals are missing");
    return;
  }
  const h = React.createElement;
  const { useState, useEffect, useRef, useCallback } = React;

  const API = "plugins/gating/api/";
  const POLL_MS = 2000;

  // -- data -----------------------------------------------------------------------------

  async function fetchJSON(url, options) {
    const response = await fetch(url, Object.assign({ credentials: "same-origin" }, options));
    let body = null;
    try {
      body = await response.json();
    } catch (e) {
      body = null;
    }
    if (!response.ok) {
      const message = (body && (body.error || (body.error && body.error.message))) ||
        `${response.status} ${response.statusText}`;
      throw new Error(typeof message === "string" ? message : JSON.stringify(message));
    }
    return body;
  }

  function postJSON(url, payload) {
    return fetchJSON(url, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(payload),
    });
  }

  // Buildbot's REST control (JSON-RPC on a data API path): stop, rebuild...
  function control(path, method, params) {
    return postJSON(`api/v2/${path}`, { jsonrpc: "2.0", method, params: params || {}, id: 1 })
      .then((answer) => {
        if (answer && answer.error) throw new Error(answer.error.message || "refused");
        return answer;
      });
  }

  // Poll ``url`` every ``interval`` ms (immediately on mount and on reload()).
  function usePoll(url, interval) {
    const [state, setState] = useState({ url: null, data: null, error: null, updated: null });
    const timer = useRef(null);
    const alive = useRef(true);
    const load = useCallback(() => {
      clearTimeout(timer.current);
      if (!url) return;
      fetchJSON(url)
        .then((data) => alive.current && setState({ url, data, error: null, updated: new Date() }))
        .catch((error) => alive.current && setState((s) => Object.assign({}, s, { url, error })))
        .finally(() => {
          if (alive.current && interval) timer.current = setTimeout(load, interval);
        });
    }, [url, interval]);
    useEffect(() => {
      alive.current = true;
      load();
      return () => {
        alive.current = false;
        clearTimeout(timer.current);
      };
    }, [load]);
    // What was read for another URL (the route's parameters changed) is not shown.
    if (state.url !== url) return { data: null, error: null, updated: null, reload: load };
    return Object.assign({}, state, { reload: load });
  }

  function useWhoAmI() {
    const who = usePoll(API + "whoami", 30000);
    return who.data || { user: null, admin: false };
  }

  // -- small pieces -----------------------------------------------------------------------

  const RESULTS = ["success", "warnings", "failure", "skipped", "exception", "retry", "cancelled"];

  function short(sha) {
    return sha ? String(sha).slice(0, 10) : "";
  }

  function duration(seconds) {
    if (seconds === null || seconds === undefined) return "";
    const s = Math.max(0, Math.round(seconds));
    if (s < 60) return `${s} s`;
    const m = Math.floor(s / 60);
    if (m < 60) return `${m} min ${s % 60} s`;
    return `${Math.floor(m / 60)} h ${m % 60} min`;
  }

  function Badge(props) {
    return h("span", {
      className: `gating-badge gating-${props.kind || "state"}-${props.value}`,
      "data-testid": props.testid,
      title: props.title,
    }, props.children || props.value);
  }

  function ProgressBar(props) {
    const job = props.job;
    const now = props.now;
    let title = job.state;
    let width = 0;
    let cls = "gating-progress-bar";
    if (job.state === "running") {
      if (job.progress === null || job.progress === undefined) {
        cls += " gating-indeterminate";
        width = 100;
        title = "running; no previous build to estimate from";
      } else {
        width = Math.round(job.progress * 100);
        const left = job.estimate - (now - job.started_at);
        title = `running ${duration(now - job.started_at)} of about ${duration(job.estimate)}` +
          (left > 0 ? ` (${duration(left)} left)` : " (longer than usual)");
      }
    } else if (job.progress) {
      width = Math.round(job.progress * 100);
    }
    return h("div", { className: "gating-progress", title, "data-testid": "job-progress" },
      h("div", {
        className: `${cls} gating-bar-${job.state}`,
        style: { width: `${width}%` },
        role: "progressbar",
        "aria-valuenow": width,
        "aria-valuemin": 0,
        "aria-valuemax": 100,
      }));
  }

  function BuildLink(props) {
    const job = props.job;
    const label = props.children || (job.number ? `#${job.number}` : "");
    if (!job.url) return h("span", null, label);
    return h("a", { href: job.url, title: job.state_string || job.state }, label);
  }

  function ErrorLine(props) {
    if (!props.error) return null;
    return h("div", { className: "alert alert-danger gating-error", role: "alert" },
      String(props.error.message || props.error));
  }

  // -- the Gate page ------------------------------------------------------------------------

  const EXPORT_TEXT = {
    waiting: "waiting for the export lock",
    holding: "holding the export lock",
    landed: "RPM landed",
    failed: "export failed",
  };

  function JobsTable(props) {
    const jobs = props.jobs || [];
    if (!jobs.length) return null;
    return h("table", { className: "table table-sm gating-jobs" },
      h("tbody", null, jobs.map((job) => h("tr", {
        key: `${job.pipeline}/${job.builder}`,
        "data-testid": "gate-job",
        "data-job": job.job || job.builder,
        "data-arch": job.arch || "",
        "data-state": job.state,
      },
      h("td", { className: "gating-job-name" },
        job.job || job.builder, job.index ? `#${job.index}` : ""),
      h("td", null, h("span", { className: "gating-arch", "data-testid": "job-arch" }, job.arch)),
      h("td", null, h(Badge, { value: job.state, testid: "job-state" })),
      h("td", { className: "gating-progress-cell" }, h(ProgressBar, { job, now: props.now })),
      h("td", null, h(BuildLink, { job })),
      props.admin ? h("td", null, h(JobControls, { job, onDone: props.onChange })) : null,
      ))));
  }

  function JobControls(props) {
    const job = props.job;
    const [error, setError] = useState(null);
    if (!job.buildid) return null;
    const act = (method) => () => {
      setError(null);
      control(`builds/${job.buildid}`, method, method === "stop" ? { reason: "stopped from the Gate page" } : {})
        .then(props.onDone, setError);
    };
    return h("span", { className: "gating-controls" },
      job.state === "running"
        ? h("button", { className: "btn btn-sm btn-outline-danger", onClick: act("stop"),
          "data-testid": "stop-build" }, "Stop")
        : h("button", { className: "btn btn-sm btn-outline-secondary", onClick: act("rebuild"),
          "data-testid": "rebuild-build" }, "Rebuild"),
      error ? h("span", { className: "text-danger" }, ` ${error.message}`) : null);
  }

  function ItemControls(props) {
    const item = props.item;
    const [open, setOpen] = useState(false);
    const [reason, setReason] = useState("");
    const [error, setError] = useState(null);
    const [busy, setBusy] = useState(false);
    const done = () => {
      setBusy(false);
      setOpen(false);
      props.onChange();
    };
    const fail = (e) => {
      setBusy(false);
      setError(e);
    };
    if (props.finished) {
      if (item.state === "merged") return null;
      return h("span", { className: "gating-controls" },
        h("button", {
          className: "btn btn-sm btn-outline-primary",
          "data-testid": "reenqueue",
          disabled: busy,
          onClick: () => {
            setBusy(true);
            setError(null);
            postJSON(API + "approve", { project: item.project, change: item.number })
              .then(done, fail);
          },
        }, "Re-enqueue"),
        error ? h("span", { className: "text-danger" }, ` ${error.message}`) : null);
    }
    return h("span", { className: "gating-controls" },
      open
        ? h("span", null,
          h("input", {
            className: "form-control form-control-sm gating-reason",
            placeholder: "reason",
            value: reason,
            "data-testid": "dequeue-reason",
            onChange: (e) => setReason(e.target.value),
          }),
          h("button", {
            className: "btn btn-sm btn-danger",
            "data-testid": "dequeue-confirm",
            disabled: busy,
            onClick: () => {
              setBusy(true);
              setError(null);
              postJSON(API + "dequeue", { change: item.change, reason: reason || "dequeued from the Gate page" })
                .then(done, fail);
            },
          }, "Dequeue"),
          h("button", { className: "btn btn-sm btn-link", onClick: () => setOpen(false) }, "cancel"))
        : h("button", {
          className: "btn btn-sm btn-outline-danger",
          "data-testid": "dequeue",
          onClick: () => setOpen(true),
        }, "Dequeue…"),
      error ? h("span", { className: "text-danger", "data-testid": "control-error" }, ` ${error.message}`) : null);
  }

  function ChangeLink(props) {
    const item = props.item;
    const text = item.change;
    if (item.url) return h("a", { href: item.url, className: "gating-change", target: "_blank", rel: "noreferrer" }, text);
    return h("span", { className: "gating-change" }, text);
  }

  // The left gutter: Zuul's tree. A live, non-failing item sits on the queue's line and
  // links to the item it is tested on top of; a failing item is drawn off the line (the
  // items behind it are no longer tested on it).
  function ChainGutter(props) {
    const item = props.item;
    const failing = item.state === "failing";
    const cls = ["gating-chain"];
    if (props.first) cls.push("gating-chain-first");
    if (props.last) cls.push("gating-chain-last");
    if (failing) cls.push("gating-chain-off");
    return h("div", { className: cls.join(" "), "aria-hidden": true },
      h("div", { className: "gating-chain-line" }),
      failing ? h("div", { className: "gating-chain-branch" }) : null,
      h("div", { className: `gating-chain-node gating-node-${item.state}${item.passed ? " gating-node-passed" : ""}` }));
  }

  function AheadList(props) {
    const item = props.item;
    if (item.state === "queued") {
      return h("div", { className: "gating-ahead", "data-testid": "item-ahead" },
        item.in_window ? "starting…" : "outside the window: waits for a slot");
    }
    if (item.state !== "testing" && item.state !== "merging" && item.state !== "failing") return null;
    const ahead = item.ahead || [];
    return h("div", { className: "gating-ahead", "data-testid": "item-ahead" },
      "tested on top of: ",
      ahead.length
        ? ahead.map((key, n) => h(React.Fragment, { key },
          n ? " → " : "",
          h("span", { className: "gating-ahead-change", "data-testid": "ahead-change" }, key)))
        : h("span", { className: "gating-ahead-tip" }, "the branch tip"),
      item.base ? h("span", { className: "gating-base" }, ` (base ${short(item.base)})`) : null);
  }

  function GateItem(props) {
    const item = props.item;
    const [showHistory, setShowHistory] = useState(false);
    const lastReset = (item.resets || [])[item.resets.length - 1];
    return h("div", {
      className: `gating-item gating-item-${item.state}`,
      "data-testid": "gate-item",
      "data-change": item.change,
      "data-state": item.state,
      "data-position": item.position,
    },
    h(ChainGutter, { item, first: props.first, last: props.last }),
    h("div", { className: "gating-item-body" },
      h("div", { className: "gating-item-head" },
        item.position !== null && item.position !== undefined
          ? h("span", { className: "gating-position" }, `${item.position + 1}.`) : null,
        h(ChangeLink, { item }),
        h("span", { className: "gating-subject", title: item.subject }, item.subject),
        h("span", { className: "gating-meta" }, `${item.project} ${item.branch}`),
        h(Badge, { value: item.state, testid: "item-state" },
          item.state === "testing" && item.passed ? "passed" : item.state),
        item.attempt ? h("span", { className: "gating-attempt", "data-testid": "item-attempt" },
          `attempt ${item.attempt}`) : null,
        item.export ? h(Badge, { kind: "export", value: item.export, testid: "item-export" },
          EXPORT_TEXT[item.export] || item.export) : null,
        props.admin ? h(ItemControls, { item, finished: props.finished, onChange: props.onChange }) : null,
      ),
      h(AheadList, { item }),
      item.reason ? h("div", { className: "gating-reason-text", "data-testid": "item-reason" },
        item.state === "dequeued" ? "dequeued: " : "failing: ", item.reason) : null,
      lastReset && !props.finished ? h("div", { className: "gating-reset", "data-testid": "item-reset" },
        `reset: ${lastReset.replace(/^attempt \d+: reset \((.*)\)$/, "$1")}`,
        item.resets.length > 1 ? ` (${item.resets.length} resets)` : "") : null,
      (item.pipelines || []).length ? h("div", { className: "gating-runs" },
        item.pipelines.map((p) => h("span", { key: p.pipeline, className: "gating-run" },
          "pipeline ",
          p.buildid
            ? h(Router.Link, { to: `/gate/runs/${p.buildid}`, "data-testid": "pipeline-link" }, p.pipeline)
            : h("span", null, p.pipeline),
          " ", h(Badge, { value: p.state })))) : null,
      h(JobsTable, { jobs: item.jobs, now: props.now, admin: props.admin, onChange: props.onChange }),
      (item.history || []).length ? h("div", { className: "gating-history" },
        h("a", { href: "", onClick: (e) => { e.preventDefault(); setShowHistory(!showHistory); } },
          showHistory ? "hide history" : `history (${item.history.length})`),
        showHistory ? h("ol", null, item.history.map((line, n) => h("li", { key: n }, line))) : null) : null,
    ));
  }

  function QueueView(props) {
    const queue = props.queue;
    const items = queue.items || [];
    return h("section", { className: "gating-queue", "data-testid": "gate-queue", "data-queue": queue.name },
      h("h3", null, `Queue ${queue.name} `,
        h("small", null, `${items.length} item${items.length === 1 ? "" : "s"}, window ${queue.window}` +
          (queue.projects && queue.projects.length ? `; projects: ${queue.projects.join(", ")}` : ""))),
      items.length
        ? items.map((item, n) => h(GateItem, {
          key: item.change, item, now: props.now, admin: props.admin, onChange: props.onChange,
          first: n === 0, last: n === items.length - 1,
        }))
        : h("p", { className: "gating-empty" }, "No change in this queue."));
  }

  function GatePage() {
    const gate = usePoll(API + "gate", POLL_MS);
    const who = useWhoAmI();
    const data = gate.data;
    const ready = data !== null;
    return h("div", {
      className: "container-fluid gating-page",
      "data-testid": "gate-page",
      "data-loaded": ready ? "true" : "false",
      "data-admin": who.admin ? "true" : "false",
    },
    h("h2", null, "Gate ",
      h("small", { className: "gating-updated" },
        gate.updated ? `updated ${gate.updated.toLocaleTimeString()}` : "loading…",
        who.user ? ` · ${who.user}` : " · anonymous",
        who.admin ? " (admin)" : "")),
    h(ErrorLine, { error: gate.error }),
    ready && data.active === false
      ? h("div", { className: "alert alert-info" }, "The gate is held by another master; this is its last saved state.")
      : null,
    ready ? (data.notes || []).map((note) => h("div", {
      key: `${note.kind}/${note.hub}`, className: "alert alert-warning gating-note",
      "data-testid": "gate-note", "data-kind": note.kind,
    }, note.text)) : null,
    ready ? (data.queues || []).map((queue) => h(QueueView, {
      key: queue.name, queue, now: data.now, admin: who.admin, onChange: gate.reload,
    })) : null,
    ready && (data.waiting || []).length
      ? h("section", { className: "gating-waiting" },
        h("h3", null, "Waiting on dependencies"),
        data.waiting.map((item) => h(GateItem, { key: item.change, item, now: data.now, admin: who.admin, finished: false, onChange: gate.reload })))
      : null,
    ready && (data.finished || []).length
      ? h("section", { className: "gating-finished", "data-testid": "gate-finished" },
        h("h3", null, "Recently finished"),
        data.finished.map((item) => h("div", { key: `${item.change}/${item.attempt}/${item.state}`, "data-testid": "finished-item", "data-change": item.change, "data-state": item.state },
          h(GateItem, { item, now: data.now, admin: who.admin, finished: true, onChange: gate.reload }))))
      : null);
  }

  // -- the pipeline view ----------------------------------------------------------------

  function RunPage() {
    const params = Router.useParams();
    const run = usePoll(`${API}runs/${encodeURIComponent(params.buildid)}`, POLL_MS);
    const data = run.data;
    if (!data) {
      return h("div", { className: "container-fluid gating-page", "data-testid": "run-page" },
        h(ErrorLine, { error: run.error }), run.error ? null : "loading…");
    }
    const props = data.properties || {};
    const now = Date.now() / 1000;
    return h("div", { className: "container-fluid gating-page", "data-testid": "run-page", "data-state": data.state },
      h("h2", null, `Pipeline ${data.pipeline} `, h("a", { href: data.url }, `#${data.number}`), " ",
        h(Badge, { value: data.state, testid: "run-state" })),
      h("p", { className: "gating-run-meta" }, data.file ? `from ${data.file}` : "",
        props.gating_change ? ` · gate ${props.gating_queue}: ${props.gating_change} attempt ${props.gating_attempt}` : "",
        props.nvr ? ` · ${props.event || "event"} ${props.nvr}` : "",
        props.compose_id ? ` · compose ${props.compose_id}` : ""),
      h(ErrorLine, { error: run.error }),
      h("div", { className: "gating-stages" }, data.stages.map((stage) => h(StageView, { key: stage.number, stage, now }))));
  }

  function StageView(props) {
    const stage = props.stage;
    const now = props.now;
    const lanes = stage.arches.map((lane) => h("div", {
      key: lane.arch, className: "gating-lane", "data-testid": "run-lane", "data-arch": lane.arch,
    },
    h("div", { className: "gating-lane-arch" }, lane.arch),
    lane.jobs.map((job) => h("div", {
      key: job.builder,
      className: `gating-run-job gating-run-job-${job.state}`,
      "data-testid": "run-job",
      "data-job": job.job,
      "data-arch": job.arch,
      "data-state": job.state,
    },
    h(BuildLink, { job }, job.job + (job.index ? `#${job.index}` : "")),
    " ",
    h(Badge, { value: job.state }),
    h(ProgressBar, { job, now })))));
    return h("div", {
      className: `gating-stage gating-stage-${stage.state}`,
      "data-testid": "run-stage",
      "data-stage": stage.number,
    },
    h("h4", null, `Stage ${stage.number}: `, stage.jobs.join(", "), " ", h(Badge, { value: stage.state })),
    lanes);
  }

  function RunsPage() {
    const runs = usePoll(API + "runs", POLL_MS * 2);
    const data = runs.data;
    const list = (data && data.runs) || [];
    const pipelines = (data && data.pipelines) || {};
    return h("div", { className: "container-fluid gating-page", "data-testid": "runs-page" },
      h("h2", null, "Pipeline runs ", h("small", null, `${Object.keys(pipelines).length} pipelines`)),
      h(ErrorLine, { error: runs.error }),
      h("table", { className: "table table-sm" },
        h("thead", null, h("tr", null, ["pipeline", "run", "state", "started", "took"].map((k) => h("th", { key: k }, k)))),
        h("tbody", null, list.map((b) => h("tr", { key: b.buildid, "data-testid": "run-row" },
          h("td", null, b.pipeline, " ", h("small", { className: "gating-meta" }, (pipelines[b.pipeline] || {}).triggers ? pipelines[b.pipeline].triggers.join(", ") : "")),
          h("td", null, h(Router.Link, { to: `/gate/runs/${b.buildid}` }, `#${b.number}`), " ",
            h("a", { href: b.url, className: "gating-meta" }, "build")),
          h("td", null, h(Badge, { value: b.state }), " ", b.state_string),
          h("td", null, b.started_at ? new Date(b.started_at * 1000).toLocaleString() : ""),
          h("td", null, b.complete_at ? duration(b.complete_at - b.started_at) : ""))))));
  }

  // -- compose reports ---------------------------------------------------------------------

  function ImagesTable(props) {
    if (!props.images || !props.images.length) return h("p", { className: "gating-none" }, "None.");
    return h("table", { className: "table table-sm", "data-testid": props.testid },
      h("thead", null, h("tr", null, ["subvariant", "type", "format", "arch", "path"].map((k) => h("th", { key: k }, k)))),
      h("tbody", null, props.images.map((i, n) => h("tr", { key: n },
        ["subvariant", "type", "format", "arch", "path"].map((k) => h("td", { key: k }, i[k] || ""))))));
  }

  function ComposePage() {
    const params = Router.useParams();
    const one = params.composeid;
    const reports = usePoll(one ? `${API}compose-reports/${encodeURIComponent(one)}` : `${API}compose-reports`, one ? 0 : 10000);
    const data = reports.data;
    if (!one) {
      const list = (data && data.reports) || [];
      return h("div", { className: "container-fluid gating-page", "data-testid": "composes-page" },
        h("h2", null, "Compose check reports"),
        h(ErrorLine, { error: reports.error }),
        list.length ? h("table", { className: "table table-sm" },
          h("thead", null, h("tr", null, ["compose", "location", "STATUS", "result"].map((k) => h("th", { key: k }, k)))),
          h("tbody", null, list.map((r) => h("tr", { key: r.compose.id, "data-testid": "compose-row" },
            h("td", null, h(Router.Link, { to: `/gate/composes/${encodeURIComponent(r.compose.id)}` }, r.compose.id)),
            h("td", null, r.name || ""), h("td", null, String(r.compose.status)),
            h("td", null, h(Badge, { value: r.result || "" }))))))
          : h("p", null, "No compose report yet."));
    }
    if (!data) return h("div", { className: "container-fluid gating-page" }, h(ErrorLine, { error: reports.error }), reports.error ? null : "loading…");
    const previous = data.previous || "the previous compose";
    return h("div", { className: "container-fluid gating-page", "data-testid": "compose-page" },
      h("h2", null, `Compose ${data.compose.id} `, h(Badge, { value: data.result, testid: "compose-result" })),
      h("p", null, `Location ${data.name || ""}: ${data.compose.location}; STATUS ${data.compose.status}`),
      h("h4", null, `Images added since ${previous}`), h(ImagesTable, { images: data.added, testid: "compose-added" }),
      h("h4", null, `Images removed since ${previous}`), h(ImagesTable, { images: data.removed, testid: "compose-removed" }),
      h("h4", null, "Missing expected images"),
      data.missing_expected.length
        ? h("ul", { "data-testid": "compose-missing" }, data.missing_expected.map((e, n) => h("li", { key: n }, `${e.subvariant} ${e.type} ${e.arch}`)))
        : h("p", null, "None."),
      h("h4", null, "Failed jobs"),
      data.failed_jobs.length
        ? h("ul", { "data-testid": "compose-failed" }, data.failed_jobs.map((j, n) => h("li", { key: n }, h("a", { href: j.url }, j.name), ` (${j.result})`)))
        : h("p", null, "None."));
  }

  // -- task repository results -------------------------------------------------------------

  const TASK_PROPS = ["package", "task_name", "task_directory", "task_event", "task_item", "task_repo", "task_branch", "task_commit", "nvr", "tag"];

  function TasksPage() {
    const builder = usePoll("api/v2/builders?name=task-repo", 0);
    const b = builder.data && builder.data.builders && builder.data.builders[0];
    const query = TASK_PROPS.map((p) => `property=${p}`).join("&");
    const builds = usePoll(b ? `api/v2/builders/${b.builderid}/builds?order=-number&limit=100&${query}` : null, b ? POLL_MS * 3 : 0);
    const list = (builds.data && builds.data.builds) || [];
    const prop = (build, name) => (build.properties && build.properties[name] ? build.properties[name][0] : "");
    return h("div", { className: "container-fluid gating-page", "data-testid": "tasks-page" },
      h("h2", null, "Task repository results"),
      h(ErrorLine, { error: builder.error || builds.error }),
      builder.data && !b ? h("p", null, "No task repositories are configured (site key task-repos).") : null,
      list.length ? h("table", { className: "table table-sm" },
        h("thead", null, h("tr", null, ["task", "package", "event", "on", "result", "build"].map((k) => h("th", { key: k }, k)))),
        h("tbody", null, list.map((build) => h("tr", { key: build.buildid, "data-testid": "task-row" },
          h("td", { "data-testid": "task-name" }, prop(build, "task_name") || prop(build, "task_directory")),
          h("td", null, prop(build, "package")),
          h("td", null, prop(build, "task_event")),
          h("td", null, prop(build, "task_item") || prop(build, "nvr")),
          h("td", { "data-testid": "task-result" }, h(Badge, { value: build.complete ? RESULTS[build.results] : "running" }),
            " ", build.state_string),
          h("td", null, h("a", { href: `#/builders/${build.builderid}/builds/${build.number}` }, `#${build.number}`))))))
        : (b ? h("p", null, "No task has run yet.") : null));
  }

  // -- registration ------------------------------------------------------------------------

  // A gate (two posts under a lintel), drawn like the menu's other icons.
  const GATE_ICON = h("svg", { className: "gating-menu-icon", width: 16, height: 16, viewBox: "0 0 16 16", "aria-hidden": true },
    h("path", { fill: "currentColor", d: "M0 2h16v2.2H0zM2.5 4.2h2.2V15H2.5zm8.8 0h2.2V15h-2.2zM1.5 7h13v1.8h-13z" }));

  support.buildbotSetupPlugin((reg) => {
    reg.registerMenuGroup({
      name: "gate", caption: "Gate", icon: GATE_ICON,
      order: 3, route: null, parentName: null,
    });
    reg.registerMenuGroup({ name: "gate-status", parentName: "gate", caption: "Gate status", order: 1, route: "/gate" });
    reg.registerMenuGroup({ name: "gate-runs", parentName: "gate", caption: "Pipeline runs", order: 2, route: "/gate/runs" });
    reg.registerMenuGroup({ name: "gate-composes", parentName: "gate", caption: "Compose reports", order: 3, route: "/gate/composes" });
    reg.registerMenuGroup({ name: "gate-tasks", parentName: "gate", caption: "Task repos", order: 4, route: "/gate/tasks" });
    reg.registerRoute({ route: "/gate", group: "gate-status", element: () => h(GatePage) });
    reg.registerRoute({ route: "/gate/runs", group: "gate-runs", element: () => h(RunsPage) });
    reg.registerRoute({ route: "/gate/runs/:buildid", group: "gate-runs", element: () => h(RunPage) });
    reg.registerRoute({ route: "/gate/composes", group: "gate-composes", element: () => h(ComposePage) });
    reg.registerRoute({ route: "/gate/composes/:composeid", group: "gate-composes", element: () => h(ComposePage) });
    reg.registerRoute({ route: "/gate/tasks", group: "gate-tasks", element: () => h(TasksPage) });
  });
})();
