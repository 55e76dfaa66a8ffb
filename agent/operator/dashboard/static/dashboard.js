"use strict";
// Draws the snapshot of /api/fleet. Live updates come as Server-Sent Events on /events; when
// they cannot be had (a proxy that buffers, too many pages open) the page polls the snapshot.
// Every value is written with textContent: node names and reasons come from the broker and are
// never trusted as HTML.
(function () {
  const POLL_MS = 5000;
  const SILENCE_MS = 25000;  // no event for this long: the stream is dead, poll instead
  let snap = null;
  let receivedAt = 0;  // Date.now() when `snap` arrived; ages tick from there
  let lastEventAt = 0;
  let pollTimer = null;
  let source = null;

  const $ = (id) => document.getElementById(id);

  function el(tag, cls, text) {
    const node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function age(seconds) {
    if (seconds === null || seconds === undefined) return "–";
    const s = Math.max(0, seconds + (Date.now() - receivedAt) / 1000);
    if (s < 90) return Math.round(s) + "s";
    if (s < 5400) return Math.round(s / 60) + "m";
    if (s < 172800) return Math.round(s / 3600) + "h";
    return Math.round(s / 86400) + "d";
  }

  function num(value, digits, unit) {
    if (value === null || value === undefined) return "–";
    return Number(value).toFixed(digits) + (unit || "");
  }

  function ticking(seconds, prefix, suffix) {
    const span = el("span", "age");
    span.dataset.age = seconds === null || seconds === undefined ? "" : String(seconds);
    span.dataset.prefix = prefix || "";
    span.dataset.suffix = suffix || "";
    span.textContent = (prefix || "") + age(seconds) + (suffix || "");
    return span;
  }

  function retick() {
    for (const span of document.querySelectorAll("span.age")) {
      const raw = span.dataset.age;
      span.textContent = span.dataset.prefix + age(raw === "" ? null : Number(raw)) +
        span.dataset.suffix;
    }
    if (snap) $("updated").textContent = "updated " + age(0) + " ago";
  }

  // -- banner ---------------------------------------------------------------------------------

  function note(list, text, cls) {
    list.appendChild(el("li", cls || "", text));
  }

  function drawBanner(b) {
    const verdict = $("verdict");
    verdict.textContent = (b.verdict || "unknown").replace("_", " ");
    verdict.className = "verdict v-" + (b.verdict || "unknown");
    $("verdict-from").textContent = b.verdict_from ? "as seen by " + b.verdict_from : "";
    $("voters").textContent = b.voters_total === null ? "–" :
      num(b.voters_up, 0) + " / " + num(b.voters_total, 0);
    $("needed").textContent = num(b.needed, 0);
    const margin = $("margin");
    margin.textContent = num(b.margin, 0);
    margin.className = b.margin !== null && b.margin <= 0 ? "hot" : "";
    $("leader").textContent = b.leader ? "★ " + b.leader : "–";
    const readiness = $("readiness");
    readiness.textContent = "";
    if (b.readiness && b.readiness.score !== null) {
      readiness.appendChild(el("span", "", num(b.readiness.score, 0) + "/100"));
      const factors = Object.entries(b.readiness.factors || {})
        .map(([k, v]) => k + " " + v).join(" · ");
      if (factors) readiness.appendChild(el("div", "small muted", factors));
    } else {
      readiness.textContent = "–";
    }
    const c = b.counts;
    const counts = $("counts");
    counts.textContent = c.online + "/" + c.nodes + " online";
    const worst = [];
    if (c.lost) worst.push(c.lost + " lost");
    if (c.offline) worst.push(c.offline + " offline");
    if (c.critical) worst.push(c.critical + " critical");
    if (c.warning) worst.push(c.warning + " warning");
    if (worst.length) counts.appendChild(el("div", "small " + (c.critical ? "hot" : "warm"),
      worst.join(" · ")));
    const notes = $("banner-notes");
    notes.textContent = "";
    for (const reason of b.reasons || []) note(notes, reason, b.verdict === "healthy" ? "" : "warn");
    for (const d of b.disagree || []) note(notes, d.node + " reports " + d.verdict, "warn");
    for (const m of b.maintenance || []) note(notes, m.node + ": " + m.reason, "warn");
    for (const text of b.skew || []) note(notes, text, "warn");
    for (const text of (b.readiness && b.readiness.reasons) || []) {
      note(notes, "failover readiness: " + text, "");
    }
    drawRollout(b.rollout);
  }

  function drawRollout(r) {
    const box = $("rollout");
    if (!r) { box.hidden = true; return; }
    box.hidden = false;
    $("rollout-name").textContent = [r.rollout, r.channel && "→ " + r.channel]
      .filter(Boolean).join(" ");
    const bar = $("rollout-bar");
    const pct = r.total ? Math.min(100, 100 * (r.done || 0) / r.total) : 0;
    bar.style.width = pct + "%";
    bar.parentElement.className = "bar" + (r.aborted || r.failures ? " failed" : "");
    const parts = [];
    if (r.total !== null) parts.push((r.done || 0) + " of " + r.total + " nodes");
    if (r.node) parts.push("now " + r.node + (r.step ? " (" + r.step + ")" : ""));
    if (r.failures !== null) {
      parts.push("failures " + r.failures + (r.max_failures !== null ? " / " + r.max_failures : ""));
    }
    if (r.aborted) parts.push("ABORTED");
    else if (r.state) parts.push(r.state);
    $("rollout-text").textContent = parts.join(" · ");
  }

  // -- rows -----------------------------------------------------------------------------------

  function cell(row, label, cls) {
    const td = el("td", cls);
    td.dataset.label = label;
    row.appendChild(td);
    return td;
  }

  function value(parent, text, cls) {
    const span = el("span", "v" + (cls ? " " + cls : ""), text);
    parent.appendChild(span);
    return span;
  }

  function pill(parent, text, kind) {
    const wrap = el("span", "v");
    wrap.appendChild(el("span", "pill p-" + kind, text));
    parent.appendChild(wrap);
    return wrap;
  }

  function nodeCell(tr, n) {
    const td = cell(tr, "node", "c-node");
    td.appendChild(el("div", "name", n.name));
    const role = el("div", "role");
    if (n.leader) role.appendChild(el("span", "leader", "★ leader "));
    role.appendChild(document.createTextNode(n.role || "role ?"));
    td.appendChild(role);
  }

  function presenceCell(tr, n) {
    const td = cell(tr, "presence", "c-presence");
    const text = n.presence === "offline" ? "offline (clean)" : n.presence;
    td.appendChild(el("span", "pill p-" + n.presence, text));
    const seen = el("div", "small muted");
    seen.appendChild(ticking(n.last_seen_age_s, "seen ", " ago"));
    td.appendChild(seen);
    if (n.stale) {
      const badge = el("span", "stale-badge", "STALE");
      badge.appendChild(ticking(n.last_seen_age_s, " "));
      badge.title = n.stale_reason || "";
      td.appendChild(badge);
    }
  }

  function healthCell(tr, n) {
    const td = cell(tr, "health", "c-health");
    if (!n.health) { value(td, "no report"); return; }
    pill(td, n.health.status, n.health.status);
    const reasons = el("ul", "reasons v");
    for (const r of n.health.reasons) reasons.appendChild(el("li", "", r));
    td.appendChild(reasons);
  }

  function metricCells(tr, n) {
    const temp = cell(tr, "temp", "c-temp");
    const t = n.temperature_c;
    value(temp, num(t, 1, " °C"), t === null ? "" : t >= 80 ? "hot" : t >= 70 ? "warm" : "");
    const power = cell(tr, "power", "c-power");
    if (n.under_voltage === null && n.throttled === null) {
      value(power, "–");
    } else {
      const flags = [];
      if (n.under_voltage) flags.push("under-voltage");
      if (n.throttled) flags.push("throttled");
      const now = flags.length ? flags.join(", ") : "ok";
      value(power, now, flags.length ? "hot" : "");
      if (!n.under_voltage && n.under_voltage_occurred) {
        power.appendChild(el("div", "small muted v", "under-voltage since boot"));
      }
    }
    const disk = cell(tr, "disk", "c-disk");
    const d = n.disk_percent;
    value(disk, num(d, 0, " %"), d === null ? "" : d >= 95 ? "hot" : d >= 85 ? "warm" : "");
  }

  function versionCells(tr, n) {
    const td = cell(tr, "MicroK8s", "c-microk8s");
    const m = n.microk8s;
    value(td, m.version || "–", m.version_skew ? "skew" : "").title =
      m.version_skew ? "other nodes run a newer version" : "";
    const ch = el("div", "small");
    value(ch, m.channel || "", m.channel_skew ? "skew" : "muted");
    td.appendChild(ch);
    if (m.running === false) td.appendChild(el("div", "small hot v", "not running"));
    value(cell(tr, "agent", "c-agent"), n.agent_version || "–");
  }

  function commandCell(tr, n) {
    const td = cell(tr, "command", "c-command");
    const c = n.command;
    if (!c) { value(td, "–", "muted"); return; }
    const line = el("div");
    value(line, (c.verb || "command") + " ");
    pill(line, c.status.replace("_", " "), c.status);
    td.appendChild(line);
    const meta = el("div", "small muted v");
    meta.appendChild(ticking(c.age_s, "", " ago"));
    td.appendChild(meta);
    if (c.error) td.appendChild(el("div", "small v", c.error));
  }

  function drawRow(n) {
    const tr = el("tr", "sev-" + n.severity + (n.stale ? " stale" : ""));
    tr.dataset.node = n.name;
    tr.dataset.presence = n.presence;
    tr.dataset.severity = n.severity;
    tr.dataset.stale = n.stale ? "1" : "0";
    tr.title = n.why.join(", ");
    nodeCell(tr, n);
    presenceCell(tr, n);
    healthCell(tr, n);
    metricCells(tr, n);
    versionCells(tr, n);
    commandCell(tr, n);
    return tr;
  }

  function draw(next) {
    snap = next;
    receivedAt = Date.now();
    $("cluster").textContent = next.cluster;
    document.title = "fleet " + next.cluster + " · " + (next.banner.verdict || "unknown");
    const broker = next.broker || {};
    $("broker").className = "dot " + (broker.connected ? "up" : "down");
    $("broker-text").textContent = broker.connected ? "broker connected" :
      "broker: " + (broker.error || "disconnected");
    drawBanner(next.banner);
    const body = document.createDocumentFragment();
    for (const n of next.nodes) body.appendChild(drawRow(n));
    $("rows").replaceChildren(body);
    $("empty").hidden = next.nodes.length > 0;
    document.body.dataset.generated = String(next.generated_at);
    retick();
  }

  // -- feed -----------------------------------------------------------------------------------

  function setMode(mode) {
    document.body.dataset.mode = mode;
    $("mode").textContent = mode === "live" ? "live" : "polling every " + POLL_MS / 1000 + "s";
  }

  async function poll() {
    try {
      const answer = await fetch("api/fleet", { cache: "no-store", credentials: "same-origin" });
      if (answer.ok) draw(await answer.json());
    } catch (err) {
      $("broker-text").textContent = "dashboard unreachable";
      $("broker").className = "dot down";
    }
  }

  function startPolling() {
    if (pollTimer) return;
    setMode("poll");
    poll();
    pollTimer = setInterval(poll, POLL_MS);
  }

  function stopPolling() {
    if (pollTimer) clearInterval(pollTimer);
    pollTimer = null;
  }

  function startEvents() {
    if (!window.EventSource) { startPolling(); return; }
    source = new EventSource("events");
    source.addEventListener("fleet", (event) => {
      lastEventAt = Date.now();
      stopPolling();
      setMode("live");
      try { draw(JSON.parse(event.data)); } catch (err) { /* keep the last good picture */ }
    });
    source.onerror = () => {
      // The browser retries on its own; poll meanwhile so the page never freezes.
      if (source.readyState === EventSource.CLOSED) source = null;
      startPolling();
    };
  }

  setInterval(() => {
    retick();
    if (Date.now() - lastEventAt > SILENCE_MS) {
      startPolling();
      if (!source) startEvents();
    }
  }, 1000);
  lastEventAt = Date.now();
  poll();
  startEvents();
})();
