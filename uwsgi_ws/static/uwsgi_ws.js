/* uwsgi_ws.js: the browser client of the uwsgi_ws event protocol (docs/protocol.md).
 * No dependencies. As a script tag it defines `uwsgiWs`; as an ES module import
 * uwsgi_ws.mjs next to it (`import {connect} from "/_uwsgi_ws/uwsgi_ws.mjs"`).
 *
 *   const live = uwsgiWs.connect("/live", {onStatus: s => ..., ackTimeout: 10000});
 *   live.on("said", (data, frame) => ...);
 *   live.emit("say", {text: "hi"}).then(ack => ..., err => ...);
 *   live.join("lobby", {last: 20}); live.leave("lobby"); live.close();
 *
 * Reconnects with jittered exponential backoff and resumes (every broadcast of its
 * rooms exactly once, in order, while the server's ring still holds them; otherwise
 * the "not_recovered" handler gets (room, reason): refetch the state). Falls back to
 * Server-Sent Events (receive only) when the WebSocket never opens.
 * Server calls: the first `on(event)` handler's return value (or Promise) is the reply to
 * the server's `conn.call(event, data)`; a throw or rejection replies with its message.
 * Presence: `on("presence", p => ...)` gets {op: "join"|"leave", room, id, identity} on
 * endpoints with join_leave; `on("left", room => ...)` when the server closed a room for
 * this client. `off(event[, fn])` removes handlers. `client.id`: this connection's id.
 * Binary: Uint8Array/ArrayBuffer values in emitted data travel as {"$bin": base64} and
 * come back as Uint8Array. `buffer: n` (default 0): up to n emits made while
 * reconnecting wait and are sent once the connection is back (beyond: rejected).
 * Status: "connecting", "open", "resuming", "closed" (and "sse" on the fallback);
 * "unauthorized" after a refused attempt, "refused" when the client gave up (below).
 *
 * Credentials: `auth` is an object of query parameters ({token: "..."}) or a
 * function, sync or async, returning one; a function is called before every
 * (re)connect and every SSE open with {refused: the HTTP status of the last
 * attempt when it was refused (401, 403, 302 for a redirect), else null;
 * attempt: consecutive failures}: cache a token, fetch a new one once refused.
 *   connect("/live", {auth: async ({refused}) => ({token: await token(refused)})})
 * How a refusal is seen: a browser's WebSocket never shows the HTTP status of a
 * refused upgrade (a 401 and a dead server both close it before it opens), and
 * an EventSource closes for good on any HTTP error. So when a WebSocket closes
 * before it opened, or an SSE source closes for good, the client asks the
 * server's access policy with the same credentials: GET <path>/sse?probe=1 runs
 * every check of the endpoint (Origin, before_connect, the SSE rooms, limits)
 * and answers 204 or the refusal (no stream). 401, 403 or a redirect: a
 * refusal ("unauthorized"; `auth` is called again before the next try); after
 * `maxRefusals` (3) refusals in a row the client stops: status "refused", an
 * "error" event with the server's answer, no more tries until `reconnect()`.
 * 503 (a connection limit): the next try waits at least its Retry-After.
 */
(function (root) {
  "use strict";

  function connect(path, options) {
    options = options || {};
    var minDelay = options.minDelay || 500, maxDelay = options.maxDelay || 15000;
    var ackTimeout = options.ackTimeout || 10000;
    var sseAfter = options.sseAfter === undefined ? 2 : options.sseAfter; // failed opens before SSE
    var maxRefusals = options.maxRefusals || 3; // refused attempts in a row before the client stops
    var handlers = {}, acks = {}, nextId = 1;
    var rooms = {};       // rooms this client joined itself
    var lastSeq = {};     // room ("" for the endpoint-wide stream) -> last seq seen
    var maxSeq = 0, epoch = null;
    var sock = null, source = null, closed = false, attempt = 0, everOpened = false, timer = null;
    var failedOpens = 0;  // WebSocket opens that failed without a refusal (sseAfter counts these)
    var refusals = 0, refused = null;  // refused attempts in a row; the last one's HTTP status
    var sseGen = 0, minWait = 0;  // the current SSE open; the next try's least delay (Retry-After)
    var myId = null;      // this connection's id (the server's "connected" frame)
    var bufferMax = options.buffer || 0, buffered = [];  // emits waiting for the connection

    function status(s) { if (options.onStatus) { try { options.onStatus(s); } catch (e) { console.error(e); } } }
    function fire(name, args) {
      var list = handlers[name] || [];
      for (var i = 0; i < list.length; i++) {
        try { list[i].apply(null, args); } catch (e) { console.error(e); }
      }
    }
    function httpUrl(p, params) {
      var loc = root.location, u = new URL(p, loc ? loc.href : undefined);
      for (var k in params || {}) if (params[k] !== undefined && params[k] !== null) u.searchParams.set(k, String(params[k]));
      return u;
    }
    function url(p, params) {
      var u = httpUrl(p, params);
      if (u.protocol === "http:") u.protocol = "ws:";
      if (u.protocol === "https:") u.protocol = "wss:";
      return u;
    }
    function ssePath() { return path.replace(/\?.*$/, "").replace(/\/$/, "") + "/sse" + (path.match(/\?.*$/) || [""])[0]; }

    // The query parameters of the next attempt: options.auth, or what it returns (a Promise too).
    function credentials() {
      var auth = options.auth;
      if (typeof auth !== "function") return Promise.resolve(auth || {});
      return new Promise(function (resolve) { resolve(auth({refused: refused, attempt: attempt})); })
        .then(function (params) { return params || {}; });
    }

    // Asks the endpoint's access policy whether these credentials may connect (see the top):
    // resolves {refused: status, message} for 401/403/a redirect, {busy, retryAfter: s} for 503, else {}.
    function probe(params, withRooms) {
      if (typeof root.fetch !== "function") return Promise.resolve({});
      var u = httpUrl(ssePath(), params);
      if (withRooms) u.searchParams.set("rooms", Object.keys(rooms).join(","));
      u.searchParams.set("probe", "1");
      return root.fetch(u.toString(), {credentials: "same-origin", cache: "no-store", redirect: "manual"})
        .then(function (r) {
          if (r.type === "opaqueredirect" || r.status === 401 || r.status === 403) {
            var st = r.status || 302;
            return r.text().then(function (t) { return {refused: st, message: t.trim()}; },
                                 function () { return {refused: st, message: ""}; });
          }
          if (r.body && r.body.cancel) r.body.cancel().catch(function () {});  // never hold a stream open
          if (r.status === 503) return {busy: true, retryAfter: Number(r.headers.get("Retry-After")) || 0};
          return {};
        }, function () { return {}; });  // unreachable: an ordinary failure
    }

    // After an attempt that did not open: a refusal, or an ordinary failure (backoff).
    function failed(result, websocket) {
      if (closed) return;
      if (result.refused) {
        refusals++;
        refused = result.refused;
        status("unauthorized");
        if (refusals >= maxRefusals) {
          closed = true;
          clearTimeout(timer);
          sseGen++;
          if (source) { source.close(); source = null; }
          status("refused");
          fire("error", ["refused " + refusals + " times in a row (HTTP " + result.refused + ")" +
                         (result.message ? ": " + result.message : "") + "; stopped: call reconnect() to try again"]);
          return;
        }
      } else {
        refused = null;
        if (result.retryAfter) minWait = result.retryAfter * 1000;
        if (websocket && !result.busy) failedOpens++;  // a full server is no reason to fall back to SSE
      }
      schedule();
    }

    function toBase64(bytes) {
      var bin = "";
      for (var i = 0; i < bytes.length; i++) bin += String.fromCharCode(bytes[i]);
      return root.btoa(bin);
    }
    function fromBase64(text) {
      var bin = root.atob(text), out = new Uint8Array(bin.length);
      for (var i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
      return out;
    }
    function encode(frame) {
      return JSON.stringify(frame, function (key, value) {
        if (value instanceof ArrayBuffer) return {$bin: toBase64(new Uint8Array(value))};
        if (ArrayBuffer.isView(value)) return {$bin: toBase64(new Uint8Array(value.buffer, value.byteOffset, value.byteLength))};
        return value;
      });
    }
    function decode(text) {
      return JSON.parse(text, function (key, value) {
        if (value && typeof value === "object" && typeof value.$bin === "string" && Object.keys(value).length === 1) {
          try { return fromBase64(value.$bin); } catch (e) { return value; }
        }
        return value;
      });
    }

    function onCall(frame) {
      var ws = sock, list = handlers[frame.event] || [];
      function reply(body) { if (sock === ws && ws && ws.readyState === 1) ws.send(encode(body)); }
      if (!list.length) { reply({type: "reply", id: frame.id, error: "no handler for " + frame.event}); return; }
      new Promise(function (resolve) { resolve(list[0](frame.data, frame)); }).then(
        function (value) { reply({type: "reply", id: frame.id, data: value === undefined ? null : value}); },
        function (e) { reply({type: "reply", id: frame.id, error: String(e && e.message ? e.message : e)}); });
    }

    function sendEmit(item) {
      var id = nextId++;
      acks[id] = {resolve: item.resolve, reject: item.reject,
                  timer: setTimeout(function () { delete acks[id]; item.reject(new Error("no ack in " + ackTimeout + " ms")); }, ackTimeout)};
      sock.send(encode({type: "event", event: item.event, data: item.data === undefined ? null : item.data, id: id}));
    }
    function flushBuffer() {
      var todo = buffered; buffered = [];
      for (var i = 0; i < todo.length; i++) sendEmit(todo[i]);
    }
    function failBuffer(why) {
      var todo = buffered; buffered = [];
      for (var i = 0; i < todo.length; i++) todo[i].reject(new Error(why));
    }

    function onBroadcast(frame) {
      if (typeof frame.seq === "number") {
        var key = frame.room === null || frame.room === undefined ? "" : frame.room;
        if (epoch === frame.epoch && lastSeq[key] !== undefined && frame.seq <= lastSeq[key]) return; // duplicate
        epoch = frame.epoch;
        lastSeq[key] = frame.seq;
        if (frame.seq > maxSeq) maxSeq = frame.seq;
      }
      if (frame.skip !== undefined && frame.skip !== null && frame.skip === myId) return; // emit(..., skip=me)
      fire(frame.event, [frame.data, frame]);
    }

    function onFrame(text) {
      var frame;
      try { frame = decode(text); } catch (e) { return; }
      if (frame.type === "event") onBroadcast(frame);
      else if (frame.type === "connected") myId = frame.id;
      else if (frame.type === "call") onCall(frame);
      else if (frame.type === "presence") fire("presence", [{op: frame.op, room: frame.room, id: frame.id, identity: frame.identity}]);
      else if (frame.type === "left") { delete rooms[frame.room]; delete lastSeq[frame.room]; fire("left", [frame.room]); }
      else if (frame.type === "ack") {
        var pending = acks[frame.id];
        if (!pending) return;
        delete acks[frame.id];
        clearTimeout(pending.timer);
        if ("error" in frame) pending.reject(new Error(frame.error)); else pending.resolve(frame.data);
      } else if (frame.type === "not_recovered") {
        if (frame.room !== null) delete lastSeq[frame.room];
        fire("not_recovered", [frame.room, frame.reason]);
      } else if (frame.type === "resumed") {
        epoch = frame.epoch;
        status("open");
      } else if (frame.type === "error") {
        fire("error", [frame.message]);
      }
    }

    function joinFrame(room) {
      // the last messages only the first time: after that, resume covers what was missed
      var last = lastSeq[room] === undefined ? rooms[room].last : 0;
      return JSON.stringify(last ? {type: "join", room: room, last: last} : {type: "join", room: room});
    }

    function schedule() {
      if (closed) return;
      clearTimeout(timer);  // one pending try at most
      var delay = Math.min(maxDelay, minDelay * Math.pow(2, attempt));
      delay = Math.max(minWait, delay / 2 + Math.random() * delay / 2); // jitter; a 503's Retry-After
      minWait = 0;
      attempt++;
      timer = setTimeout(open, delay);
    }

    function failAcks() {
      for (var id in acks) { clearTimeout(acks[id].timer); acks[id].reject(new Error("disconnected")); }
      acks = {};
    }

    function open() {
      if (closed) return;
      if (!everOpened && failedOpens >= sseAfter && typeof root.EventSource === "function") return openSSE();
      status("connecting");
      credentials().then(function (params) { if (!closed) openWebSocket(params); },
                         function (e) { authFailed(e); });
    }

    function authFailed(e) {  // the auth function threw: its own failure, retried with backoff
      if (closed) return;
      fire("error", ["auth failed: " + (e && e.message ? e.message : e)]);
      schedule();
    }

    function openWebSocket(params) {
      var resume = epoch !== null;
      var u = url(path, params);
      if (resume) u.searchParams.set("resume", "1");
      u.searchParams.set("id", "1");  // the server says this connection's id first (skip, calls)
      var ws, opened = false;
      try { ws = new WebSocket(u.toString()); } catch (e) { failed({}, true); return; }
      sock = ws;
      ws.onopen = function () {
        opened = true;
        everOpened = true;
        attempt = 0; refusals = 0; refused = null;
        if (resume) {
          status("resuming");
          var want = {};
          for (var key in lastSeq) want[key] = lastSeq[key];
          for (var room in rooms) if (!(room in want)) want[room] = maxSeq;
          if (!("" in want)) want[""] = maxSeq;
          ws.send(JSON.stringify({type: "resume", epoch: epoch, rooms: want}));
          flushBuffer();  // after the resume frame, which must come first
        } else {
          for (var r in rooms) ws.send(joinFrame(r));
          status("open");
          flushBuffer();
        }
      };
      ws.onmessage = function (ev) { if (typeof ev.data === "string") onFrame(ev.data); };
      ws.onclose = function () {
        if (sock !== ws) return;
        sock = null;
        myId = null;
        failAcks();
        if (closed) { status("closed"); return; }
        status("connecting");
        if (opened) { schedule(); return; }
        // closed before it opened: refused (401/403/503, invisible here) or unreachable? ask
        probe(params, false).then(function (result) { if (sock === null) failed(result, true); });
      };
    }

    function openSSE() {
      var gen = ++sseGen;
      credentials().then(function (params) { if (!closed && gen === sseGen) startSSE(params, gen); },
                         function (e) { if (gen === sseGen) authFailed(e); });
    }

    function startSSE(params, gen) {
      if (source) source.close();
      var u = httpUrl(ssePath(), params);
      u.searchParams.set("rooms", Object.keys(rooms).join(","));
      if (epoch !== null) u.searchParams.set("lastEventId", epoch + "-" + maxSeq);
      else {  // nothing seen yet: the rooms' last messages, as join's `last` (one n for all rooms)
        var last = 0;
        for (var r in rooms) last = Math.max(last, (rooms[r] && rooms[r].last) || 0);
        if (last) u.searchParams.set("last", String(last));
      }
      var es = source = new EventSource(u.toString());
      // "error" and "open" are the EventSource's own events (no data): the client's "error"
      // handlers are local (refusals, error frames), never a server event
      var names = Object.keys(handlers).filter(function (n) { return n !== "error" && n !== "open"; })
        .concat(["not_recovered"]);
      names.forEach(function (name) {
        es.addEventListener(name, function (ev) {
          if (typeof ev.data !== "string") return;
          var frame;
          try { frame = JSON.parse(ev.data); } catch (e) { return; }
          if (name === "not_recovered" || frame.type === "not_recovered") onFrame(ev.data);
          else onBroadcast(frame);
        });
      });
      es.onopen = function () { attempt = 0; refusals = 0; refused = null; status("sse"); };  // the backoff starts over
      es.onerror = function () {
        if (closed || source !== es) return;
        status("connecting");
        // The browser retries by itself after a network error (with the same URL, so the
        // same credentials), not after an HTTP error (a 401, or a proxy's 502 while the
        // app restarts) or another content type: it closes the source for good. Then ask
        // whether it was refused, and open a new one with backoff (open() comes back here).
        // With an auth function every open gets fresh credentials: reopen ourselves.
        if (es.readyState === 2) {
          probe(params, true).then(function (result) { if (source === es && gen === sseGen) failed(result, false); });
        } else if (typeof options.auth === "function") {
          es.close();
          schedule();
        }
      };
    }

    var api = {
      on: function (event, fn) {
        (handlers[event] = handlers[event] || []).push(fn);
        if (source) openSSE(); // listen for the new name too
        return api;
      },
      off: function (event, fn) {
        if (fn === undefined) delete handlers[event];
        else if (handlers[event]) handlers[event] = handlers[event].filter(function (h) { return h !== fn; });
        return api;
      },
      emit: function (event, data) {
        return new Promise(function (resolve, reject) {
          var item = {event: event, data: data, resolve: resolve, reject: reject};
          if (sock && sock.readyState === 1) { sendEmit(item); return; }
          if (source) { reject(new Error("the SSE fallback is receive-only")); return; }
          if (closed || buffered.length >= bufferMax) {
            reject(new Error(closed ? "closed" : bufferMax ? "not connected and the buffer is full (" + bufferMax + ")" : "not connected"));
            return;
          }
          buffered.push(item);
        });
      },
      join: function (room, opts) {
        // opts.last: first receive the room's last n messages (when the server keeps them)
        rooms[room] = {last: (opts && opts.last) || 0};
        if (sock && sock.readyState === 1) sock.send(joinFrame(room));
        else if (source) openSSE();
      },
      leave: function (room) {
        delete rooms[room]; delete lastSeq[room];
        if (sock && sock.readyState === 1) sock.send(JSON.stringify({type: "leave", room: room}));
        else if (source) openSSE();
      },
      // Start again after "refused" or close() (e.g. once the user has logged in again), or
      // drop the connection and reconnect with fresh credentials.
      reconnect: function () {
        closed = false; refusals = 0; refused = null; attempt = 0;
        clearTimeout(timer);
        if (sock) { var s = sock; sock = null; s.close(1000); failAcks(); }
        if (source) { source.close(); source = null; }
        sseGen++;
        open();
      },
      close: function () {
        closed = true;
        sseGen++;
        clearTimeout(timer);
        if (sock) sock.close(1000);
        if (source) { source.close(); source = null; }
        failAcks();
        failBuffer("closed");
        status("closed");
      },
      get transport() { return sock ? "websocket" : source ? "sse" : null; },
      get id() { return myId; }
    };
    open();
    return api;
  }

  root.uwsgiWs = {connect: connect};
})(typeof globalThis !== "undefined" ? globalThis : this);
