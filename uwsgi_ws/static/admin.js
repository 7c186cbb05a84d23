// The uwsgi_ws operator's page (uwsgi_ws/admin.py serves it; no build step, no library).
// It reads states from the WebSocket <base>/feed (one a second), draws them, and sends
// the actions as same-origin JSON POSTs with the X-Uwsgi-Ws-Admin header (CSRF-safe).
// Every value from the server goes into the page as text (textContent), never as HTML.
(function () {
  "use strict";
  const base = document.body.dataset.base;
  const $ = (id) => document.getElementById(id);
  const POINTS = 120; // chart history: two minutes at one state a second
  const WATCH_KEY = "uwsgi_ws_admin_watch:" + base;
  const series = { rate: [], lag: [] };
  let last = null;
  let retry = 500;
  let sock = null;
  let watch = {};
  try { watch = JSON.parse(localStorage.getItem(WATCH_KEY) || "{}") || {}; } catch (e) { watch = {}; }

  window.uwsgiWsAdmin = { state: null, states: 0, series }; // read by tests and the curious

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") node.className = v;
      else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else node.setAttribute(k, v);
    }
    for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    return node;
  }

  function setStatus(text, cls) {
    const s = $("status");
    s.textContent = text;
    s.className = "status " + cls;
  }

  // -- the feed -----------------------------------------------------------------------
  function connect() {
    const scheme = location.protocol === "https:" ? "wss://" : "ws://";
    sock = new WebSocket(scheme + location.host + base + "/feed");
    sock.onopen = () => { retry = 500; setStatus("live", "live"); sendWatch(); };
    sock.onmessage = (e) => render(JSON.parse(e.data));
    sock.onclose = (e) => {
      setStatus(e.code === 1006 ? "disconnected (refused or unreachable), retrying" : "disconnected, retrying", "off");
      setTimeout(connect, retry);
      retry = Math.min(retry * 2, 10000);
    };
  }

  function sendWatch() {
    localStorage.setItem(WATCH_KEY, JSON.stringify(watch));
    if (sock && sock.readyState === WebSocket.OPEN) sock.send(JSON.stringify({ watch }));
  }

  // -- drawing ------------------------------------------------------------------------
  function push(list, value) {
    list.push(value);
    if (list.length > POINTS) list.shift();
  }

  function chart(canvas, values, color) {
    const ratio = window.devicePixelRatio || 1;
    const w = canvas.clientWidth || canvas.width, h = canvas.clientHeight || canvas.height;
    canvas.width = w * ratio; canvas.height = h * ratio;
    const g = canvas.getContext("2d");
    g.scale(ratio, ratio);
    g.clearRect(0, 0, w, h);
    const max = Math.max(1, ...values);
    g.strokeStyle = "#dde1ea"; g.beginPath(); g.moveTo(0, h - 0.5); g.lineTo(w, h - 0.5); g.stroke();
    g.fillStyle = "#6b7385"; g.font = "10px system-ui, sans-serif"; g.fillText(fmt(max), 2, 10);
    if (values.length < 2) return;
    g.strokeStyle = color; g.lineWidth = 1.5; g.beginPath();
    values.forEach((v, i) => {
      const x = (w * (i + POINTS - values.length)) / (POINTS - 1);
      const y = h - 2 - ((h - 14) * v) / max;
      if (i === 0) g.moveTo(x, y); else g.lineTo(x, y);
    });
    g.stroke();
  }

  function fmt(n) {
    if (n >= 1e6) return (n / 1e6).toFixed(1) + "M";
    if (n >= 1e4) return (n / 1e3).toFixed(1) + "k";
    return Number.isInteger(n) ? String(n) : n.toFixed(1);
  }

  function render(s) {
    const t = s.totals;
    if (last) {
      const dt = Math.max(0.001, s.t - last.t);
      const lt = last.totals;
      const rate = Math.max(0, t.delivered - lt.delivered) / dt;
      const n = t.lag_count - lt.lag_count;
      const lag = n > 0 ? (t.lag_sum - lt.lag_sum) / n : 0;
      push(series.rate, rate);
      push(series.lag, lag);
      $("rate").textContent = fmt(rate);
      $("lag").textContent = `${fmt(lag)} / ${t.lag_p99} / ${t.lag_max}`;
    }
    chart($("chart-rate"), series.rate, "#2f6fde");
    chart($("chart-lag"), series.lag, "#c8772d");
    last = s;
    window.uwsgiWsAdmin.state = s;
    window.uwsgiWsAdmin.states += 1;
    $("updated").textContent = `worker pid ${s.pid} · ${new Date(s.t * 1000).toLocaleTimeString()}`;

    // connections
    const total = s.open.reduce((a, o) => a + o.count, 0);
    $("total").textContent = total;
    const routes = [...new Set(s.open.map((o) => o.route))].sort();
    // outside uWSGI (flask run) there are no worker ids: the process is "worker 0"
    const workers = s.workers.length ? s.workers : [...new Set(s.open.map((o) => o.worker))].sort();
    const table = $("open");
    const head = el("tr", {}, ...["route", ...workers.map((w) => "worker " + w), "total"].map((h) => el("th", {}, h)));
    table.tHead.replaceChildren(head);
    const byKey = new Map(s.open.map((o) => [o.route + "\u0000" + o.worker, o.count]));
    const rows = routes.map((r) => {
      const counts = workers.map((w) => byKey.get(r + "\u0000" + w) || 0);
      return el("tr", { "data-route": r }, el("td", {}, el("code", {}, r)), ...counts.map((c) => el("td", {}, c)),
        el("td", { class: "route-total" }, counts.reduce((a, b) => a + b, 0)));
    });
    const perWorker = workers.map((w) => s.open.filter((o) => o.worker === w).reduce((a, o) => a + o.count, 0));
    rows.push(el("tr", { class: "totals" }, el("td", {}, "all routes"),
      ...perWorker.map((c, i) => el("td", { "data-worker": workers[i] }, c)), el("td", {}, total)));
    table.tBodies[0].replaceChildren(...rows);
    const rej = Object.entries(s.rejected);
    $("rejected").textContent = rej.length ? "Refused upgrades: " + rej.map(([k, v]) => `${k} ${v}`).join(", ") : "";

    // slow consumers, drops
    $("slow").textContent = t.slow_closes;
    $("drops").textContent = `dropped slow ${t.dropped_slow} · lapped ${t.lapped} (dropped ${t.dropped_lapped})` +
      ` · publish failed ${t.publish_failed} · published ${t.published}`;

    // redis
    const r = s.redis;
    if (!r) { $("redis").textContent = "not configured"; $("redis-detail").textContent = "no redis-url"; }
    else if (r.error) { $("redis").textContent = "unknown"; $("redis-detail").textContent = r.error; }
    else {
      const up = r.out_state === "connected" && r.in_state === "connected";
      $("redis").textContent = up ? "connected" : `out ${r.out_state} / in ${r.in_state}`;
      $("redis-detail").textContent = `to push ${r.pending} · received ${r.inbound} · missed ${r.missed}` +
        ` · late ${r.late} · not bridged ${r.not_bridged} · last id ${r.last_id}`;
    }

    renderEndpoints(s.endpoints);
  }

  function renderEndpoints(endpoints) {
    for (const select of document.querySelectorAll(".endpoint-select")) {
      const current = select.value;
      const paths = endpoints.map((e) => e.path);
      if ([...select.options].map((o) => o.value).join("\n") !== paths.join("\n")) {
        select.replaceChildren(...paths.map((p) => el("option", { value: p }, p)));
        if (paths.includes(current)) select.value = current;
      }
    }
    const open = new Set([...document.querySelectorAll(".room[open]")].map((d) => d.dataset.key));
    const focused = document.activeElement && document.activeElement.dataset.keep;
    const blocks = endpoints.map((e) => {
      const block = el("div", { class: "endpoint", "data-endpoint": e.path }, el("h2", {}, "Endpoint ", el("code", {}, e.path)));
      if (!e.presence) {
        block.append(el("p", { class: "muted" }, `presence is off: ws.events(${JSON.stringify(e.path)}, presence=True) lists its rooms here`));
        return block;
      }
      if (e.error) block.append(el("p", { class: "error" }, e.error));
      for (const room of e.rooms) {
        const key = e.path + "\u0000" + room.room;
        if (room.error) {
          block.append(el("div", { class: "room error" }, `${room.room}: ${room.error}`));
          continue;
        }
        const members = el("ul", { class: "members" }, ...room.members.map((m) => el("li", { "data-id": m.id },
          el("code", {}, m.id), el("span", { class: "muted" }, m.identity === null ? "" : JSON.stringify(m.identity)),
          el("button", { class: "small", type: "button", onclick: () => disconnect(e.path, m.id) }, "disconnect"))));
        const details = el("details", { class: "room", "data-key": key, "data-room": room.room },
          el("summary", {}, el("strong", {}, room.room), " · ", el("span", { class: "count" }, room.count),
            room.count === 1 ? " connection" : " connections"), members);
        if (open.has(key)) details.open = true;
        const watched = (watch[e.path] || []).includes(room.room);
        if (watched) details.append(el("button", { class: "small", type: "button", onclick: () => unwatch(e.path, room.room) }, "stop watching"));
        block.append(details);
      }
      const input = el("input", { placeholder: "room name", "data-keep": "watch:" + e.path });
      const form = el("form", { class: "watch", onsubmit: (ev) => { ev.preventDefault(); addWatch(e.path, input.value); } },
        input, el("button", { type: "submit" }, "watch room"));
      block.append(form);
      return block;
    });
    if (!endpoints.length) blocks.push(el("p", { class: "muted" }, "no event endpoint (ws.events(path))"));
    // keep a half-typed room name across the redraw
    const typing = focused ? document.activeElement.value : null;
    $("endpoints").replaceChildren(...blocks);
    if (focused) {
      const input = document.querySelector(`[data-keep="${CSS.escape(focused)}"]`);
      if (input) { input.value = typing; input.focus(); }
    }
  }

  function addWatch(path, room) {
    room = room.trim();
    if (!room) return;
    const list = watch[path] || (watch[path] = []);
    if (!list.includes(room)) list.push(room);
    sendWatch();
  }

  function unwatch(path, room) {
    watch[path] = (watch[path] || []).filter((r) => r !== room);
    sendWatch();
  }

  // -- actions ---------------------------------------------------------------------------
  async function post(action, body) {
    const result = $("result");
    try {
      const resp = await fetch(base + "/" + action, {
        method: "POST", credentials: "same-origin",
        headers: { "Content-Type": "application/json", "X-Uwsgi-Ws-Admin": "1" },
        body: JSON.stringify(body),
      });
      const text = await resp.text();
      result.className = resp.ok ? "" : "error";
      result.textContent = resp.ok ? `${action}: done` : text.trim();
    } catch (err) {
      result.className = "error";
      result.textContent = `${action}: ${err}`;
    }
  }

  function disconnect(endpoint, id) {
    const form = $("disconnect-form");
    post("disconnect", { endpoint, id, code: Number(form.code.value || 1000), reason: form.reason.value });
  }

  $("emit-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const f = ev.target;
    let data = null;
    if (f.data.value.trim()) {
      try { data = JSON.parse(f.data.value); } catch (err) {
        $("result").className = "error";
        $("result").textContent = `emit: the data is not JSON (${err.message}); quote a string: "text"`;
        return;
      }
    }
    post("emit", { endpoint: f.endpoint.value, to: f.to.value.trim(), event: f.event.value.trim(), data });
  });

  $("disconnect-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    disconnect(ev.target.endpoint.value, ev.target.conn_id.value.trim());
  });

  connect();
})();
