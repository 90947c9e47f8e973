// heimdall's live dashboard. Hand-written, no build step, no dependencies.
// Part of heimdall, under its licence (MIT).
//
// It reads GET /events (server-sent events) with fetch(), because
// EventSource cannot send the Authorization header, and acts through the
// manager API (POST /servers/update, POST /servers/add, DELETE
// /servers/remove). The token is asked for once and kept in sessionStorage.
"use strict";

(function () {
  const TOKEN_KEY = "heimdall.token";
  const HISTORY = 300;
  const FEED = 100;
  const RECONNECT_MS = 2000;

  const state = {
    history: [],
    services: {},   // name -> {id -> row}
    feed: [],
    rows: {},       // "service|id" -> <tr>
    reader: null,
    generation: 0,  // bumped on each connect: a stale loop stops
  };

  const $ = (id) => document.getElementById(id);

  function token() {
    return sessionStorage.getItem(TOKEN_KEY);
  }

  function headers(extra) {
    const result = Object.assign({}, extra || {});
    const t = token();
    if (t) result.Authorization = "Bearer " + t;
    return result;
  }

  // -- formatting --------------------------------------------------------

  function ms(seconds) {
    if (seconds === null || seconds === undefined) return "-";
    const value = seconds * 1000;
    return (value < 10 ? value.toFixed(2) : value < 100 ? value.toFixed(1) : value.toFixed(0)) + " ms";
  }

  function percent(ratio) {
    if (ratio === null || ratio === undefined) return "-";
    return (ratio * 100).toFixed(ratio < 0.01 ? 2 : 1) + "%";
  }

  function duration(seconds) {
    let s = Math.floor(seconds);
    const d = Math.floor(s / 86400); s -= d * 86400;
    const h = Math.floor(s / 3600); s -= h * 3600;
    const m = Math.floor(s / 60); s -= m * 60;
    const pad = (n) => String(n).padStart(2, "0");
    return (d ? d + "d " : "") + (d || h ? h + "h " : "") + pad(m) + "m " + pad(s) + "s";
  }

  function clock(at) {
    return new Date(at * 1000).toLocaleTimeString();
  }

  function el(tag, attributes, text) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attributes || {})) node.setAttribute(name, value);
    if (text !== undefined) node.textContent = text;
    return node;
  }

  // -- charts (inline SVG) -------------------------------------------------

  const SVG = "http://www.w3.org/2000/svg";

  function chart(svg, series) {
    // series: [{values, cls}], drawn on one scale, newest on the right.
    while (svg.firstChild) svg.removeChild(svg.firstChild);
    let max = 0;
    for (const s of series) for (const v of s.values) if (v !== null && v > max) max = v;
    if (max <= 0) max = 1;
    // The last minute at least, up to the whole history, newest on the right.
    const span = Math.max(60, ...series.map((s) => s.values.length));
    for (const s of series) {
      const points = [];
      const n = s.values.length;
      s.values.forEach((v, i) => {
        if (v === null) return;
        const x = (300 * (span - n + i)) / (span - 1);
        const y = 48 - (46 * v) / max;
        points.push(x.toFixed(1) + "," + y.toFixed(1));
      });
      const line = document.createElementNS(SVG, "polyline");
      line.setAttribute("points", points.join(" "));
      line.setAttribute("class", s.cls);
      svg.appendChild(line);
    }
  }

  function renderSummary(sample) {
    $("rps").textContent = String(sample.requests_per_second);
    $("error-rate").textContent = percent(sample.error_rate);
    $("latency").textContent = ms(sample.p50) + " / " + ms(sample.p99);
    $("open-connections").textContent = String(sample.open_connections);
    $("in-flight").textContent = String(sample.in_flight);
    $("uptime").textContent = duration(sample.uptime);
    $("generation").textContent = String(sample.generation);
    const h = state.history;
    chart($("chart-rps"), [{ values: h.map((s) => s.requests_per_second), cls: "line" }]);
    chart($("chart-errors"), [{ values: h.map((s) => s.error_rate), cls: "line error" }]);
    chart($("chart-latency"), [
      { values: h.map((s) => s.p50), cls: "line" },
      { values: h.map((s) => s.p99), cls: "line p99" },
    ]);
  }

  // -- backends ------------------------------------------------------------

  function query(service, id) {
    const parts = ["id=" + encodeURIComponent(id)];
    if (service !== "default") parts.push("service=" + encodeURIComponent(service));
    return "?" + parts.join("&");
  }

  function serviceTable(name) {
    let section = document.querySelector('section.service[data-service="' + CSS.escape(name) + '"]');
    if (section) return section.querySelector("tbody");
    section = el("section", { class: "service", "data-service": name });
    const title = el("div", { class: "service-title" });
    title.appendChild(el("h2", {}, "Service " + name));
    const add = el("button", { type: "button", class: "add" }, "Add a spawned server");
    add.addEventListener("click", () => act("POST", "/servers/add" + (name === "default" ? "" : "?service=" + encodeURIComponent(name)), null, "spawned a server"));
    title.appendChild(add);
    section.appendChild(title);
    const table = el("table", { class: "backends" });
    const head = el("tr");
    for (const c of ["Backend", "State", "Last check", "Weight", "In flight", "Req/s", "Errors", "p99", "Actions"]) {
      head.appendChild(el("th", {}, c));
    }
    table.appendChild(el("thead")).appendChild(head);
    table.appendChild(el("tbody"));
    section.appendChild(table);
    $("services").appendChild(section);
    return table.querySelector("tbody");
  }

  function buildRow(service, id) {
    const tr = el("tr", { "data-backend": id, "data-service": service });
    const cells = {};
    for (const name of ["id", "state", "check", "weight", "inflight", "rps", "errors", "p99", "actions"]) {
      cells[name] = tr.appendChild(el("td", { class: "c-" + name }));
    }
    cells.id.textContent = id;
    const badge = cells.state.appendChild(el("span", { class: "state" }));
    cells.state.appendChild(el("span", { class: "reason" }));
    badge.textContent = "-";
    const input = cells.weight.appendChild(el("input", { type: "number", min: "0", max: "1000", class: "weight", "aria-label": "weight of " + id }));
    const set = cells.weight.appendChild(el("button", { type: "button", class: "set-weight" }, "Set"));
    const setWeight = () => {
      const weight = Number(input.value);
      if (!Number.isInteger(weight) || weight < 0 || weight > 1000) {
        message("weight must be an integer from 0 to 1000", true);
        return;
      }
      act("POST", "/servers/update" + query(service, id), { weight: weight }, "weight of " + id + " set to " + weight);
    };
    set.addEventListener("click", setWeight);
    input.addEventListener("keydown", (e) => { if (e.key === "Enter") setWeight(); });
    const buttons = [
      ["drain", "Drain", () => act("POST", "/servers/update" + query(service, id), { admin: "draining" }, id + " draining")],
      ["ready", "Make ready", () => act("POST", "/servers/update" + query(service, id), { admin: "ready" }, id + " ready")],
      ["remove", "Remove", () => {
        if (window.confirm("Remove " + id + "?")) act("DELETE", "/servers/remove" + query(service, id), null, id + " removed");
      }],
    ];
    for (const [cls, label, handler] of buttons) {
      cells.actions.appendChild(el("button", { type: "button", class: cls }, label)).addEventListener("click", handler);
    }
    return tr;
  }

  function updateRow(service, row) {
    const key = service + "|" + row.id;
    let tr = state.rows[key];
    if (!tr) {
      tr = state.rows[key] = buildRow(service, row.id);
      serviceTable(service).appendChild(tr);
    }
    tr.className = "state-" + row.state + (row.backup ? " backup" : "");
    tr.dataset.state = row.state;
    const cell = (name) => tr.querySelector(".c-" + name);
    cell("state").querySelector(".state").textContent = row.state + (row.backup ? " (backup)" : "");
    cell("state").querySelector(".reason").textContent = row.reason || "";
    const check = row.last_check;
    cell("check").textContent = check ? check.result + " " + ms(check.latency) + (check.detail ? " (" + check.detail + ")" : "") : "-";
    const input = cell("weight").querySelector("input");
    if (document.activeElement !== input) input.value = String(row.weight);
    cell("weight").title = row.effective_weight !== row.weight ? "effective weight " + row.effective_weight : "";
    cell("inflight").textContent = String(row.in_flight);
    cell("rps").textContent = row.requests_per_second.toFixed(1);
    cell("errors").textContent = row.errors + (row.error_rate ? " (" + percent(row.error_rate) + ")" : "") + " / " + row.failures_total;
    cell("p99").textContent = ms(row.p99);
  }

  function removeRow(service, id) {
    const key = service + "|" + id;
    const tr = state.rows[key];
    if (tr) tr.remove();
    delete state.rows[key];
  }

  function renderServices(services) {
    const seen = new Set();
    for (const [name, rows] of Object.entries(services)) {
      serviceTable(name);
      for (const row of rows) {
        updateRow(name, row);
        seen.add(name + "|" + row.id);
      }
    }
    for (const key of Object.keys(state.rows)) {
      if (!seen.has(key)) {
        const [service, id] = [key.slice(0, key.indexOf("|")), key.slice(key.indexOf("|") + 1)];
        removeRow(service, id);
      }
    }
  }

  // -- the feed ------------------------------------------------------------

  function feedItem(entry) {
    const li = el("li", { class: entry.type === "alert" ? "alert " + entry.status : "pool kind-" + entry.kind });
    li.appendChild(el("time", {}, clock(entry.at)));
    if (entry.type === "alert") {
      li.appendChild(el("span", { class: "tag" }, "alert " + entry.status));
      li.appendChild(el("span", { class: "text" }, entry.alert.text));
    } else {
      li.appendChild(el("span", { class: "tag" }, entry.kind));
      const who = entry.backend ? entry.backend : "pool";
      li.appendChild(el("span", { class: "text" }, who + (entry.service !== "default" ? " [" + entry.service + "]" : "") + (entry.detail ? ": " + entry.detail : "")));
    }
    return li;
  }

  function addToFeed(entry) {
    const list = $("feed");
    list.insertBefore(feedItem(entry), list.firstChild);
    while (list.children.length > FEED) list.removeChild(list.lastChild);
  }

  // -- the stream ------------------------------------------------------------

  function handle(event, data) {
    if (event === "snapshot") {
      state.history = data.history.slice(-HISTORY);
      $("feed").textContent = "";
      for (const entry of data.events) addToFeed(entry);
      renderServices(data.sample.services);
      renderSummary(data.sample);
    } else if (event === "stats") {
      const summary = Object.assign({}, data);
      delete summary.services;
      state.history.push(summary);
      if (state.history.length > HISTORY) state.history.shift();
      renderServices(data.services);
      renderSummary(data);
    } else if (event === "pool") {
      addToFeed(Object.assign({ type: "pool" }, data));
      if (data.kind === "removed") removeRow(data.service, data.backend);
      else if (data.state) updateRow(data.service, data.state);
    } else if (event === "alert") {
      addToFeed(Object.assign({ type: "alert" }, data));
    }
  }

  function parse(block) {
    let event = "message";
    const data = [];
    for (const line of block.split("\n")) {
      if (line.startsWith("event:")) event = line.slice(6).trim();
      else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
    }
    if (!data.length) return;
    handle(event, JSON.parse(data.join("\n")));
  }

  function connection(text, cls) {
    const node = $("connection");
    node.textContent = text;
    node.className = "connection " + cls;
  }

  function showPrompt(text) {
    $("dashboard").hidden = true;
    $("services").textContent = "";
    $("feed").textContent = "";
    state.rows = {};
    $("token-message").textContent = text;
    $("token-prompt").hidden = false;
    $("forget-token").hidden = true;
    connection("token needed", "bad");
    $("token-input").focus();
  }

  async function connect() {
    const generation = ++state.generation;
    connection("connecting", "wait");
    let response;
    try {
      response = await fetch("/events", { headers: headers({ Accept: "text/event-stream" }), cache: "no-store" });
    } catch (error) {
      return retry(generation, "cannot reach heimdall");
    }
    if (response.status === 401) {
      const had = token();
      sessionStorage.removeItem(TOKEN_KEY);
      showPrompt(had ? "That token was refused. Enter the manager's token." : "This heimdall's manager needs its bearer token.");
      return;
    }
    if (!response.ok || !response.body) return retry(generation, "heimdall answered " + response.status);
    $("token-prompt").hidden = true;
    $("dashboard").hidden = false;
    $("forget-token").hidden = !token();
    connection("live", "good");
    const reader = response.body.getReader();
    state.reader = reader;
    const decoder = new TextDecoder();
    let buffer = "";
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done || generation !== state.generation) break;
        buffer += decoder.decode(value, { stream: true }).replace(/\r\n?/g, "\n");
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          parse(block);
        }
      }
    } catch (error) {
      // the connection broke: reconnect below
    }
    if (generation === state.generation) retry(generation, "disconnected");
  }

  function retry(generation, why) {
    if (generation !== state.generation) return;
    connection(why + "; reconnecting", "bad");
    setTimeout(() => { if (generation === state.generation) connect(); }, RECONNECT_MS);
  }

  // -- actions ------------------------------------------------------------------

  let messageTimer = null;

  function message(text, error) {
    const node = $("message");
    node.textContent = text;
    node.className = "message " + (error ? "bad" : "good");
    clearTimeout(messageTimer);
    messageTimer = setTimeout(() => { node.textContent = ""; node.className = "message"; }, 8000);
  }

  async function act(method, path, body, done) {
    const init = { method: method, headers: headers(body ? { "Content-Type": "application/json" } : {}) };
    if (body) init.body = JSON.stringify(body);
    message(method + " " + path + " ...", false);
    try {
      const response = await fetch(path, init);
      const answer = await response.json().catch(() => null);
      if (response.status === 401) {
        sessionStorage.removeItem(TOKEN_KEY);
        state.generation++;
        showPrompt("That token was refused. Enter the manager's token.");
        return;
      }
      if (!response.ok) {
        message((answer && answer.error) || "failed: " + response.status, true);
        return;
      }
      message(done, false);
    } catch (error) {
      message("failed: " + error, true);
    }
  }

  // -- start --------------------------------------------------------------------

  document.addEventListener("DOMContentLoaded", () => {
    $("token-form").addEventListener("submit", (e) => {
      e.preventDefault();
      const value = $("token-input").value.trim();
      if (!value) return;
      sessionStorage.setItem(TOKEN_KEY, value);
      $("token-input").value = "";
      connect();
    });
    $("forget-token").addEventListener("click", () => {
      sessionStorage.removeItem(TOKEN_KEY);
      state.generation++;
      if (state.reader) state.reader.cancel().catch(() => {});
      showPrompt("Token forgotten. Enter the manager's token.");
    });
    connect();
  });
})();
