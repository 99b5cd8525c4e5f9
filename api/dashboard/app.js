// The selfsup dashboard: a few hash routes (#/jobs, #/jobs/ID, #/corpora/ID, #/datasets/ID) over the /v1 API.
//
// No framework and no build step. Every string that comes from the API reaches the page through h() below,
// which makes text nodes (never innerHTML). The API key lives in this tab's sessionStorage only and goes out
// as `Authorization: Bearer` on fetch(); it never appears in a URL, so live updates poll rather than use
// EventSource (which cannot send the header).
"use strict";

(() => {
  const KEY_ITEM = "selfsup.apiKey";
  const POLL_MS = 2000; // a job page, while the job can still change
  const LIST_POLL_MS = 5000; // the lists
  const ACTIVE_JOB = new Set(["queued", "running", "paused"]);
  const COLORS = { train: "#2563eb", val: "#dc2626", lr: "#059669" };

  const $view = document.getElementById("view");
  const $banner = document.getElementById("banner");
  const $nav = document.getElementById("nav");
  const $signOut = document.getElementById("sign-out");

  // ---- small helpers -------------------------------------------------------------------------------------

  /** An element with attributes (`on*` are listeners) and children (strings become text nodes). */
  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (name === "class") el.className = value;
      else if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
      else if (name === "dataset") Object.assign(el.dataset, value);
      else el.setAttribute(name, value === true ? "" : String(value));
    }
    for (const child of children.flat(Infinity)) {
      if (child === null || child === undefined || child === false) continue;
      el.append(child instanceof Node ? child : String(child));
    }
    return el;
  }

  /** Replace an element's children (strings become text nodes; null, undefined and false are left out). */
  function fill(el, ...children) {
    el.replaceChildren(...children.flat(Infinity).filter((c) => c !== null && c !== undefined && c !== false));
  }

  const enc = encodeURIComponent;
  const link = (hash, text) => h("a", { href: hash }, text);

  function fmtNumber(value) {
    if (value === null || value === undefined) return "—";
    if (Number.isInteger(value)) return value.toLocaleString("en-US");
    const abs = Math.abs(value);
    return abs !== 0 && (abs < 1e-3 || abs >= 1e5) ? value.toExponential(3) : value.toPrecision(4);
  }

  function fmtBytes(bytes) {
    if (bytes === null || bytes === undefined) return "—";
    const units = ["B", "KB", "MB", "GB", "TB"];
    let value = bytes;
    let unit = 0;
    while (value >= 1000 && unit < units.length - 1) {
      value /= 1000;
      unit += 1;
    }
    return unit === 0 ? `${bytes} B` : `${value.toFixed(value < 10 ? 2 : 1)} ${units[unit]}`;
  }

  function fmtTime(iso) {
    if (!iso) return "—";
    const d = new Date(iso);
    const pad = (n) => String(n).padStart(2, "0");
    return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  }

  function fmtDuration(seconds) {
    if (seconds === null || seconds === undefined) return "—";
    const s = Math.round(seconds);
    if (s < 60) return `${s} s`;
    if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
    return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
  }

  const badge = (status) => h("span", { class: `badge status-${status}` }, status);

  function progress(step, max) {
    return h(
      "span",
      { class: "progress" },
      h("progress", { max: Math.max(max, 1), value: step }),
      h("span", { class: "muted" }, `${fmtNumber(step)} / ${fmtNumber(max)}`),
    );
  }

  /** A table: `columns` are [heading, row => cell content]. */
  function table(columns, rows, empty) {
    if (!rows.length) return h("p", { class: "muted empty" }, empty);
    return h(
      "table",
      {},
      h("thead", {}, h("tr", {}, columns.map(([heading]) => h("th", {}, heading)))),
      h(
        "tbody",
        {},
        rows.map((row) => h("tr", {}, columns.map(([, cell]) => h("td", {}, cell(row))))),
      ),
    );
  }

  /** A definition list of [term, value] pairs; pairs whose value is null are left out. */
  function facts(pairs) {
    return h(
      "dl",
      { class: "facts" },
      pairs.filter(([, v]) => v !== null && v !== undefined).map(([k, v]) => h("div", {}, h("dt", {}, k), h("dd", {}, v))),
    );
  }

  function showError(error) {
    if (error && error.status === 401) return; // handled by signing out
    fill($banner,
      h("span", {}, error && error.message ? error.message : String(error)),
      h("button", { class: "link", type: "button", onclick: () => ($banner.hidden = true) }, "dismiss"),
    );
    $banner.hidden = false;
  }

  // ---- the API -------------------------------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  /** A /v1 request with the session's key; JSON back, or the Response itself with `{raw: true}`. */
  async function api(path, options = {}) {
    const { raw, ...init } = options;
    const headers = { Authorization: `Bearer ${sessionStorage.getItem(KEY_ITEM) || ""}`, ...(init.headers || {}) };
    let response;
    try {
      response = await fetch(`v1/${path}`, { ...init, headers, cache: "no-store" });
    } catch (error) {
      throw new ApiError(0, `the API did not answer (${error.message}); retrying`);
    }
    if (response.status === 401) {
      signOut("The API no longer accepts this key. Sign in again.");
      throw new ApiError(401, "unauthorized");
    }
    if (!response.ok) {
      let message = `${response.status} ${response.statusText}`;
      try {
        const body = await response.json();
        if (body && body.error && body.error.message) message = `${response.status}: ${body.error.message}`;
      } catch (_) {
        // not JSON: keep the status line
      }
      throw new ApiError(response.status, message);
    }
    return raw ? response : response.json();
  }

  /** Fetch a file with the bearer header and hand it to the browser as a download (a link can't carry the header). */
  async function download(path, filename, anchor) {
    anchor.classList.add("busy");
    try {
      const blob = await (await api(path, { raw: true })).blob(); // held in memory until saved
      const url = URL.createObjectURL(blob);
      const save = h("a", { href: url, download: filename, hidden: true });
      document.body.append(save);
      save.click();
      save.remove();
      setTimeout(() => URL.revokeObjectURL(url), 60_000);
    } catch (error) {
      showError(error);
    } finally {
      anchor.classList.remove("busy");
    }
  }

  function downloadLink(path, filename, text) {
    return h(
      "a",
      {
        href: `v1/${path}`,
        class: "download",
        dataset: { filename },
        onclick: (event) => {
          event.preventDefault();
          download(path, filename, event.currentTarget);
        },
      },
      text,
    );
  }

  // ---- routing and polling -------------------------------------------------------------------------------

  let generation = 0; // bumped on every route change: pollers of an older view stop

  /** Run `fn` now and every `ms` while this view is shown and `fn` does not return false; returns "run now". */
  function poll(gen, ms, fn) {
    let timer = null;
    let running = false;
    let again = false;
    async function tick() {
      clearTimeout(timer);
      timer = null;
      if (gen !== generation) return;
      if (running) {
        again = true;
        return;
      }
      running = true;
      let more = true;
      try {
        more = await fn();
      } catch (error) {
        showError(error);
      }
      running = false;
      if (gen !== generation) return;
      if (again) {
        again = false;
        tick();
      } else if (more !== false) {
        timer = setTimeout(tick, ms);
      }
    }
    tick();
    return tick;
  }

  function route() {
    const gen = ++generation;
    $banner.hidden = true;
    if (!sessionStorage.getItem(KEY_ITEM)) {
      showSignIn();
      return;
    }
    $nav.hidden = false;
    $signOut.hidden = false;
    const [path, query] = location.hash.replace(/^#\/?/, "").split("?");
    const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
    const params = new URLSearchParams(query || "");
    const section = parts[0] || "jobs";
    for (const a of $nav.querySelectorAll("a")) a.classList.toggle("active", a.dataset.section === section);
    const views = { jobs: [jobsView, jobView], corpora: [corporaView, corpusView], datasets: [datasetsView, datasetView] };
    const [listView, itemView] = views[section] || views.jobs;
    $view.replaceChildren();
    if (parts.length > 1) itemView(gen, parts[1]);
    else listView(gen, params.get("cursor"));
  }

  // ---- signing in ----------------------------------------------------------------------------------------

  function signOut(message) {
    sessionStorage.removeItem(KEY_ITEM);
    showSignIn(message);
  }

  function showSignIn(message) {
    generation += 1;
    $nav.hidden = true;
    $signOut.hidden = true;
    $banner.hidden = true;
    const input = h("input", {
      id: "api-key",
      name: "api-key",
      type: "password",
      autocomplete: "off",
      spellcheck: "false",
      required: true,
      placeholder: "ss_…",
    });
    const status = h("p", { id: "sign-in-message", class: "error", role: "status" }, message || "");
    const button = h("button", { type: "submit" }, "Sign in");
    const form = h(
      "form",
      { id: "sign-in", class: "card sign-in" },
      h("h1", {}, "Sign in"),
      h("label", { for: "api-key" }, "API key"),
      input,
      button,
      status,
      h(
        "p",
        { class: "muted" },
        "Create a key with ",
        h("code", {}, "selfsup keys create --tenant NAME"),
        ". It is kept in this tab's session storage only, and sent only to this API.",
      ),
    );
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const key = input.value.trim();
      button.disabled = true;
      status.textContent = "";
      try {
        const response = await fetch("v1/jobs?limit=1", { headers: { Authorization: `Bearer ${key}` } });
        if (response.ok) {
          sessionStorage.setItem(KEY_ITEM, key);
          if (!location.hash || location.hash === "#/") location.hash = "#/jobs";
          route();
          return;
        }
        status.textContent =
          response.status === 401 ? "This key was not accepted." : `The API answered ${response.status}; try again.`;
      } catch (error) {
        status.textContent = `The API did not answer: ${error.message}`;
      } finally {
        button.disabled = false;
      }
    });
    fill($view, form);
    input.focus();
  }

  // ---- jobs ----------------------------------------------------------------------------------------------

  function jobsView(gen, cursor) {
    const body = h("div", { id: "jobs" });
    $view.append(h("h1", {}, "Jobs"), body);
    poll(gen, LIST_POLL_MS, async () => {
      const page = await api(`jobs?limit=50${cursor ? `&cursor=${enc(cursor)}` : ""}`);
      fill(body,
        table(
          [
            ["Name", (j) => link(`#/jobs/${enc(j.id)}`, j.name)],
            ["Status", (j) => badge(j.status)],
            ["Progress", (j) => progress(j.step, j.max_steps)],
            ["Train loss", (j) => fmtNumber(j.metrics.train_loss)],
            ["Val loss", (j) => fmtNumber(j.metrics.val_loss)],
            ["Objective", (j) => (j.spec.objective ? j.spec.objective.type : "—")],
            ["ETA", (j) => (j.status === "running" ? fmtDuration(j.eta_seconds) : "")],
            ["Created", (j) => fmtTime(j.created_at)],
          ],
          page.data,
          "No jobs yet. Submit one with POST /v1/jobs.",
        ),
        page.next_cursor ? h("p", {}, link(`#/jobs?cursor=${enc(page.next_cursor)}`, "Older jobs →")) : null,
      );
      return true;
    });
  }

  /** A job's metrics, kept by name and step (a re-fetched step replaces what was there). */
  class MetricSeries {
    constructor() {
      this.byName = new Map();
      this.lastStep = null;
    }

    add(points) {
      for (const p of points) {
        if (!this.byName.has(p.name)) this.byName.set(p.name, new Map());
        this.byName.get(p.name).set(p.step, p.value);
        if (this.lastStep === null || p.step > this.lastStep) this.lastStep = p.step;
      }
    }

    /** uPlot's columns: the union of the names' steps, and each name's values there (null where missing). */
    columns(names) {
      const maps = names.map((n) => this.byName.get(n) || new Map());
      const steps = [...new Set(maps.flatMap((m) => [...m.keys()]))].sort((a, b) => a - b);
      return [steps, ...maps.map((m) => steps.map((s) => (m.has(s) ? m.get(s) : null)))];
    }

    count(name) {
      return (this.byName.get(name) || new Map()).size;
    }
  }

  /** Fetch the metrics recorded since the last call; the last step is asked again, as it may have been half-written. */
  async function fetchNewMetrics(jobId, series) {
    const limit = 10000;
    for (;;) {
      const after = series.lastStep === null ? "" : `&after_step=${Math.max(series.lastStep - 1, 0)}`;
      const page = await api(`jobs/${enc(jobId)}/metrics?limit=${limit}${after}`);
      const before = series.lastStep;
      series.add(page.data);
      if (page.data.length < limit || series.lastStep === before) return;
    }
  }

  /** A uPlot line chart that appears with its first point; `data-points` counts the first series' points. */
  class Chart {
    constructor(el, yLabel, series) {
      this.el = el;
      this.yLabel = yLabel;
      this.series = series; // [{name, label, color, points}]
      this.plot = null;
      this.el.dataset.points = "0";
      this.el.append(h("p", { class: "muted placeholder" }, "Waiting for the first metrics…"));
    }

    update(metrics) {
      const data = metrics.columns(this.series.map((s) => s.name));
      this.el.dataset.points = String(metrics.count(this.series[0].name));
      for (const s of this.series) this.el.dataset[`${s.name.replace(/_(.)/g, (_, c) => c.toUpperCase())}Points`] = String(metrics.count(s.name));
      if (!data[0].length) return;
      if (this.plot === null) {
        this.el.replaceChildren();
        this.plot = new uPlot(this.options(), data, this.el);
      } else {
        this.plot.setData(data);
      }
    }

    options() {
      return {
        width: this.width(),
        height: 260,
        scales: { x: { time: false } },
        legend: { live: true },
        axes: [
          { label: "step", stroke: "#475569", grid: { stroke: "#e2e8f0" } },
          {
            label: this.yLabel,
            stroke: "#475569",
            grid: { stroke: "#e2e8f0" },
            size: 70,
            values: (u, ticks) => ticks.map((v) => String(Number(v.toPrecision(3)))),
          },
        ],
        series: [
          { label: "step" },
          ...this.series.map((s) => ({
            label: s.label,
            stroke: s.color,
            width: 2,
            spanGaps: true,
            value: (u, v) => (v === null || v === undefined ? "—" : fmtNumber(v)),
            points: { show: s.points, size: 6, fill: s.color },
          })),
        ],
      };
    }

    width() {
      return Math.max(this.el.clientWidth, 280);
    }

    resize() {
      if (this.plot) this.plot.setSize({ width: this.width(), height: 260 });
    }
  }

  function jobView(gen, jobId) {
    const title = h("h1", {}, jobId);
    const actions = h("div", { class: "actions" });
    const summary = h("div", { id: "job-summary" });
    const lossEl = h("div", { id: "loss-chart", class: "chart" });
    const lrEl = h("div", { id: "lr-chart", class: "chart" });
    const checkpointsEl = h("div", { id: "checkpoints" });
    const eventsBody = h("tbody", {});
    const eventsEl = h("div", { id: "events" }, h("p", { class: "muted empty" }, "No events yet."));
    const specEl = h("pre", { id: "spec", class: "spec" });
    $view.append(
      h("div", { class: "title-row" }, title, actions),
      summary,
      h(
        "section",
        { class: "charts" },
        h("div", { class: "card" }, h("h2", {}, "Loss"), lossEl),
        h("div", { class: "card" }, h("h2", {}, "Learning rate"), lrEl),
      ),
      h("section", { class: "card" }, h("h2", {}, "Checkpoints"), checkpointsEl),
      h("section", { class: "card" }, h("h2", {}, "Events"), eventsEl),
      h("section", { class: "card" }, h("h2", {}, "Spec"), specEl),
    );

    const metrics = new MetricSeries();
    const lossChart = new Chart(lossEl, "loss", [
      { name: "train_loss", label: "train", color: COLORS.train, points: false },
      { name: "val_loss", label: "validation", color: COLORS.val, points: true },
    ]);
    const lrChart = new Chart(lrEl, "learning rate", [
      { name: "learning_rate", label: "learning rate", color: COLORS.lr, points: false },
    ]);
    const onResize = () => {
      if (gen !== generation) {
        window.removeEventListener("resize", onResize);
        return;
      }
      lossChart.resize();
      lrChart.resize();
    };
    window.addEventListener("resize", onResize);

    let lastEventId = null;
    let actionsKey = null;
    let checkpointsKey = null;

    async function act(verb) {
      if (verb === "cancel" && !window.confirm("Cancel this job? A cancelled job cannot be resumed.")) return;
      try {
        await api(`jobs/${enc(jobId)}/${verb}`, { method: "POST" });
      } catch (error) {
        showError(error);
      }
      refresh();
    }

    function renderActions(job) {
      const key = `${job.status}/${job.pause_requested}/${job.cancel_requested}`;
      if (key === actionsKey) return;
      actionsKey = key;
      const buttons = [];
      if ((job.status === "queued" || job.status === "running") && !job.pause_requested && !job.cancel_requested)
        buttons.push(h("button", { type: "button", id: "pause", onclick: () => act("pause") }, "Pause"));
      if (job.status === "paused")
        buttons.push(h("button", { type: "button", id: "resume", onclick: () => act("resume") }, "Resume"));
      if (ACTIVE_JOB.has(job.status) && !job.cancel_requested)
        buttons.push(h("button", { type: "button", id: "cancel", class: "danger", onclick: () => act("cancel") }, "Cancel"));
      fill(actions, ...buttons);
    }

    function renderSummary(job) {
      fill(title, job.name, " ", badge(job.status));
      document.title = `${job.name} · selfsup`;
      const data = job.spec.dataset_id
        ? link(`#/datasets/${enc(job.spec.dataset_id)}`, job.spec.dataset_id)
        : (job.spec.corpus_ids || []).map((id, i) => [i ? ", " : "", link(`#/corpora/${enc(id)}`, id)]);
      const notes = [];
      if (job.pause_requested) notes.push("pausing at the next step");
      if (job.cancel_requested) notes.push("cancelling at the next step");
      fill(summary,
        facts([
          ["ID", h("code", {}, job.id)],
          ["Progress", progress(job.step, job.max_steps)],
          ["Status", [job.status, notes.length ? ` (${notes.join(", ")})` : ""]],
          ["Objective", `${job.spec.objective.type} · ${job.spec.model.family}`],
          ["Data", data],
          ["Tokens seen", fmtNumber(job.tokens_seen)],
          ["Train loss", fmtNumber(job.metrics.train_loss)],
          ["Val loss", fmtNumber(job.metrics.val_loss)],
          ["ETA", job.status === "running" ? fmtDuration(job.eta_seconds) : null],
          ["Created", fmtTime(job.created_at)],
          ["Started", job.started_at ? fmtTime(job.started_at) : null],
          ["Finished", job.finished_at ? fmtTime(job.finished_at) : null],
          ["Worker", job.worker],
          ["Restarts", job.restarts ? String(job.restarts) : null],
          ["Error", job.error ? h("span", { class: "error" }, job.error) : null],
          ["Last error", job.last_error && job.last_error !== job.error ? job.last_error : null],
        ]),
      );
      if (!specEl.textContent) specEl.textContent = JSON.stringify(job.spec, null, 2);
    }

    async function refreshEvents() {
      const after = lastEventId === null ? "" : `?after_id=${lastEventId}`;
      const page = await api(`jobs/${enc(jobId)}/events${after}`);
      if (!page.data.length) return;
      if (lastEventId === null)
        fill(eventsEl,
          h("table", {}, h("thead", {}, h("tr", {}, h("th", {}, "Time"), h("th", {}, "Event"), h("th", {}, "Message"))), eventsBody),
        );
      for (const e of page.data) {
        eventsBody.append(
          h("tr", {}, h("td", { class: "nowrap" }, fmtTime(e.time)), h("td", {}, h("code", {}, e.type)), h("td", {}, e.message)),
        );
        lastEventId = e.id;
      }
    }

    async function refreshCheckpoints() {
      const page = await api(`jobs/${enc(jobId)}/checkpoints`);
      const key = JSON.stringify(page.data.map((c) => [c.id, c.aliases || []]));
      if (key === checkpointsKey) return;
      checkpointsKey = key;
      fill(checkpointsEl,
        table(
          [
            ["Version", (c) => `v${c.version}`],
            ["Step", (c) => fmtNumber(c.step)],
            ["Aliases", (c) => (c.aliases || []).map((a) => h("span", { class: `badge alias alias-${a}` }, a))],
            ["Val loss", (c) => fmtNumber(c.metrics.val_loss)],
            ["Created", (c) => fmtTime(c.created_at)],
            [
              "Download",
              (c) => [
                downloadLink(
                  `checkpoints/${enc(c.id)}/archive`,
                  `${c.job_id}-v${c.version}.tar`,
                  `archive (.tar, ${fmtBytes(c.files.reduce((n, f) => n + f.size_bytes, 0))})`,
                ),
                h(
                  "details",
                  { class: "files" },
                  h("summary", {}, `${c.files.length} files`),
                  h(
                    "ul",
                    {},
                    c.files.map((f) =>
                      h(
                        "li",
                        {},
                        downloadLink(`checkpoints/${enc(c.id)}/files/${enc(f.name)}`, f.name, f.name),
                        h("span", { class: "muted" }, ` ${fmtBytes(f.size_bytes)}`),
                      ),
                    ),
                  ),
                ),
              ],
            ],
          ],
          [...page.data].reverse(),
          "No checkpoint yet.",
        ),
      );
    }

    const refresh = poll(gen, POLL_MS, async () => {
      const job = await api(`jobs/${enc(jobId)}`); // first: once it has finished, what follows is complete
      if (gen !== generation) return false;
      renderSummary(job);
      renderActions(job);
      await fetchNewMetrics(jobId, metrics);
      lossChart.update(metrics);
      lrChart.update(metrics);
      await refreshEvents();
      await refreshCheckpoints();
      return ACTIVE_JOB.has(job.status);
    });
  }

  // ---- corpora -------------------------------------------------------------------------------------------

  function corporaView(gen, cursor) {
    const body = h("div", { id: "corpora" });
    $view.append(h("h1", {}, "Corpora"), body);
    poll(gen, LIST_POLL_MS, async () => {
      const page = await api(`corpora?limit=50${cursor ? `&cursor=${enc(cursor)}` : ""}`);
      fill(body,
        table(
          [
            ["Name", (c) => link(`#/corpora/${enc(c.id)}`, c.name)],
            ["Status", (c) => badge(c.status)],
            ["Format", (c) => [c.format, c.compression ? ` (${c.compression})` : ""]],
            ["Size", (c) => fmtBytes(c.size_bytes)],
            ["Documents", (c) => fmtNumber(c.documents)],
            ["Characters", (c) => fmtNumber(c.characters)],
            ["Created", (c) => fmtTime(c.created_at)],
          ],
          page.data,
          "No corpora yet. Upload one with POST /v1/corpora.",
        ),
        page.next_cursor ? h("p", {}, link(`#/corpora?cursor=${enc(page.next_cursor)}`, "More corpora →")) : null,
      );
      return true;
    });
  }

  /** The counts of one part of a curation report: in → out, and what each rule removed. */
  function curationCounts(counts) {
    const removed = Object.entries(counts.rules || {})
      .filter(([, r]) => r.documents_removed || r.characters_removed)
      .map(([rule, r]) => `${rule}: ${fmtNumber(r.documents_removed)} documents, ${fmtNumber(r.characters_removed)} characters`);
    return [
      ["Documents", `${fmtNumber(counts.documents_in)} → ${fmtNumber(counts.documents_out)}`],
      ["Characters", `${fmtNumber(counts.characters_in)} → ${fmtNumber(counts.characters_out)}`],
      ["Words", `${fmtNumber(counts.tokens_in)} → ${fmtNumber(counts.tokens_out)}`],
      ["Removed", removed.length ? h("ul", { class: "plain" }, removed.map((r) => h("li", {}, r))) : "nothing"],
    ];
  }

  function corpusView(gen, corpusId) {
    const title = h("h1", {}, corpusId);
    const stats = h("div", { id: "corpus-stats" });
    const curation = h("div", { id: "corpus-curation" }, h("p", { class: "muted" }, "Loading…"));
    $view.append(title, h("section", { class: "card" }, h("h2", {}, "Statistics"), stats));
    $view.append(h("section", { class: "card" }, h("h2", {}, "Curation"), curation));

    const reports = new Map(); // a ready dataset's report does not change

    /** The datasets made from this corpus, with this corpus's part of each ready one's report; true while any curates. */
    async function showCuration() {
      // A corpus is curated as a source of datasets: a ready dataset's report has a part per source and split.
      const datasets = (await api("datasets?limit=200")).data.filter((d) => d.sources.some((s) => s.corpus_id === corpusId));
      if (!datasets.length) {
        fill(curation, h("p", { class: "muted empty" }, "No curated dataset uses this corpus yet."));
        return false;
      }
      const blocks = [];
      for (const d of datasets) {
        blocks.push(h("h3", {}, link(`#/datasets/${enc(d.id)}`, d.name), " ", badge(d.status)));
        if (d.status !== "ready") {
          blocks.push(d.error ? h("p", { class: "error" }, d.error) : h("p", { class: "muted" }, "Curating…"));
          continue;
        }
        if (!reports.has(d.id)) reports.set(d.id, await api(`datasets/${enc(d.id)}/report`));
        const index = d.sources.findIndex((s) => s.corpus_id === corpusId);
        const parts = (reports.get(d.id).sources || []).filter((s) => s.name.startsWith(`sources[${index}].`));
        blocks.push(
          h(
            "div",
            { class: "splits" },
            parts.map((p) => h("div", {}, h("h4", {}, p.name.split(".").pop()), facts(curationCounts(p)))),
          ),
        );
      }
      fill(curation, ...blocks);
      return datasets.some((d) => d.status === "processing");
    }

    poll(gen, POLL_MS, async () => {
      const c = await api(`corpora/${enc(corpusId)}`);
      if (gen !== generation) return false;
      fill(title, c.name, " ", badge(c.status));
      document.title = `${c.name} · selfsup`;
      fill(stats,
        facts([
          ["ID", h("code", {}, c.id)],
          ["Status", c.status],
          ["Error", c.error ? h("span", { class: "error" }, c.error) : null],
          ["Format", [c.format, c.compression ? ` (${c.compression})` : ""]],
          ["Size", `${fmtBytes(c.size_bytes)} (${fmtNumber(c.size_bytes)} bytes)`],
          ["SHA-256", h("code", {}, c.sha256)],
          ["Documents", fmtNumber(c.documents)],
          ["Train documents", fmtNumber(c.train_documents)],
          ["Validation documents", fmtNumber(c.validation_documents)],
          ["Characters", fmtNumber(c.characters)],
          ["Characters per document", c.documents ? fmtNumber(Math.round(c.characters / c.documents)) : null],
          ["Uploaded", fmtTime(c.created_at)],
        ]),
      );
      const curating = await showCuration();
      return c.status === "processing" || curating;
    });
  }

  // ---- curated datasets ----------------------------------------------------------------------------------

  function datasetsView(gen, cursor) {
    const body = h("div", { id: "datasets" });
    $view.append(h("h1", {}, "Curated datasets"), body);
    poll(gen, LIST_POLL_MS, async () => {
      const page = await api(`datasets?limit=50${cursor ? `&cursor=${enc(cursor)}` : ""}`);
      fill(body,
        table(
          [
            ["Name", (d) => link(`#/datasets/${enc(d.id)}`, d.name)],
            ["Status", (d) => badge(d.status)],
            ["Sources", (d) => d.sources.map((s, i) => [i ? ", " : "", link(`#/corpora/${enc(s.corpus_id)}`, s.name)])],
            ["Documents", (d) => (d.totals ? `${fmtNumber(d.totals.documents_in)} → ${fmtNumber(d.totals.documents_out)}` : "—")],
            ["Created", (d) => fmtTime(d.created_at)],
          ],
          page.data,
          "No curated datasets yet. Create one with POST /v1/datasets.",
        ),
        page.next_cursor ? h("p", {}, link(`#/datasets?cursor=${enc(page.next_cursor)}`, "More datasets →")) : null,
      );
      return true;
    });
  }

  function datasetView(gen, datasetId) {
    const title = h("h1", {}, datasetId);
    const about = h("div", { id: "dataset-summary" });
    const report = h("div", { id: "dataset-report" }, h("p", { class: "muted" }, "The report appears once curation is done."));
    $view.append(title, about, h("section", { class: "card" }, h("h2", {}, "Curation report"), report));
    poll(gen, POLL_MS, async () => {
      const d = await api(`datasets/${enc(datasetId)}`);
      if (gen !== generation) return false;
      fill(title, d.name, " ", badge(d.status));
      document.title = `${d.name} · selfsup`;
      fill(about,
        facts([
          ["ID", h("code", {}, d.id)],
          ["Error", d.error ? h("span", { class: "error" }, d.error) : null],
          [
            "Sources",
            d.sources.map((s, i) => [
              i ? ", " : "",
              link(`#/corpora/${enc(s.corpus_id)}`, s.name),
              ` (weight ${fmtNumber(s.weight)}, ${(100 * s.share).toFixed(1)}%)`,
            ]),
          ],
          [
            "Decontaminated against",
            d.decontaminate_against.length
              ? d.decontaminate_against.map((id, i) => [i ? ", " : "", link(`#/corpora/${enc(id)}`, id)])
              : null,
          ],
          ["Created", fmtTime(d.created_at)],
          ["Finished", d.finished_at ? fmtTime(d.finished_at) : null],
        ]),
      );
      if (d.status !== "ready") return d.status === "processing";
      const r = await api(`datasets/${enc(datasetId)}/report`);
      const rules = Object.entries(r.rules || {});
      fill(report,
        h("h3", {}, "All sources"),
        facts(curationCounts(r)),
        table(
          [
            ["Rule", ([rule]) => h("code", {}, rule)],
            ["Documents removed", ([, x]) => fmtNumber(x.documents_removed)],
            ["Characters removed", ([, x]) => fmtNumber(x.characters_removed)],
            ["Lines removed", ([, x]) => fmtNumber(x.lines_removed)],
            ["Duplicate clusters", ([, x]) => fmtNumber(x.duplicate_clusters)],
            ["Reasons", ([, x]) => Object.entries(x.reasons || {}).map(([k, n]) => `${k}: ${n}`).join(", ")],
          ],
          rules,
          "No rule ran.",
        ),
        h("h3", {}, "Per source and split"),
        h(
          "div",
          { class: "splits" },
          (r.sources || []).map((p) => h("div", {}, h("h4", {}, p.name), facts(curationCounts(p)))),
        ),
      );
      return false;
    });
  }

  // ---- start ---------------------------------------------------------------------------------------------

  $signOut.addEventListener("click", () => {
    signOut("");
  });
  window.addEventListener("hashchange", route);
  route();
})();
