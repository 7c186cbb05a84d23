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
 * Status: "connecting", "open", "resuming", "closed" (and "sse" on the fallback).
 */
(function (root) {
  "use strict";

  function connect(path, options) {
    options = options || {};
    var minDelay = options.minDelay || 500, maxDelay = options.maxDelay || 15000;
    var ackTimeout = options.ackTimeout || 10000;
    var sseAfter = options.sseAfter === undefined ? 2 : options.sseAfter; // failed opens before SSE
    var handlers = {}, acks = {}, nextId = 1;
    var rooms = {};       // rooms this client joined itself
    var lastSeq = {};     // room ("" for the endpoint-wide stream) -> last seq seen
    var maxSeq = 0, epoch = null;
    var sock = null, source = null, closed = false, attempt = 0, everOpened = false, timer = null;

    function status(s) { if (options.onStatus) { try { options.onStatus(s); } catch (e) { console.error(e); } } }
    function fire(name, args) {
      var list = handlers[name] || [];
      for (var i = 0; i < list.length; i++) {
        try { list[i].apply(null, args); } catch (e) { console.error(e); }
      }
    }
    function url(p) {
      var loc = root.location, u = new URL(p, loc ? loc.href : undefined);
      if (u.protocol === "http:") u.protocol = "ws:";
      if (u.protocol === "https:") u.protocol = "wss:";
      return u;
    }

    function onBroadcast(frame) {
      if (typeof frame.seq === "number") {
        var key = frame.room === null || frame.room === undefined ? "" : frame.room;
        if (epoch === frame.epoch && lastSeq[key] !== undefined && frame.seq <= lastSeq[key]) return; // duplicate
        epoch = frame.epoch;
        lastSeq[key] = frame.seq;
        if (frame.seq > maxSeq) maxSeq = frame.seq;
      }
      fire(frame.event, [frame.data, frame]);
    }

    function onFrame(text) {
      var frame;
      try { frame = JSON.parse(text); } catch (e) { return; }
      if (frame.type === "event") onBroadcast(frame);
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
      var delay = Math.min(maxDelay, minDelay * Math.pow(2, attempt));
      delay = delay / 2 + Math.random() * delay / 2; // jitter
      attempt++;
      timer = setTimeout(open, delay);
    }

    function failAcks() {
      for (var id in acks) { clearTimeout(acks[id].timer); acks[id].reject(new Error("disconnected")); }
      acks = {};
    }

    function open() {
      if (closed) return;
      if (!everOpened && attempt >= sseAfter && typeof root.EventSource === "function") return openSSE();
      status("connecting");
      var resume = epoch !== null;
      var u = url(path);
      if (resume) u.searchParams.set("resume", "1");
      var ws;
      try { ws = new WebSocket(u.toString()); } catch (e) { schedule(); return; }
      sock = ws;
      ws.onopen = function () {
        everOpened = true;
        attempt = 0;
        if (resume) {
          status("resuming");
          var want = {};
          for (var key in lastSeq) want[key] = lastSeq[key];
          for (var room in rooms) if (!(room in want)) want[room] = maxSeq;
          if (!("" in want)) want[""] = maxSeq;
          ws.send(JSON.stringify({type: "resume", epoch: epoch, rooms: want}));
        } else {
          for (var r in rooms) ws.send(joinFrame(r));
          status("open");
        }
      };
      ws.onmessage = function (ev) { if (typeof ev.data === "string") onFrame(ev.data); };
      ws.onclose = function () {
        if (sock !== ws) return;
        sock = null;
        failAcks();
        status(closed ? "closed" : "connecting");
        schedule();
      };
    }

    function openSSE() {
      if (source) source.close();
      var u = new URL(path.replace(/\/$/, "") + "/sse", root.location ? root.location.href : undefined);
      u.searchParams.set("rooms", Object.keys(rooms).join(","));
      if (epoch !== null) u.searchParams.set("lastEventId", epoch + "-" + maxSeq);
      else {  // nothing seen yet: the rooms' last messages, as join's `last` (one n for all rooms)
        var last = 0;
        for (var r in rooms) last = Math.max(last, (rooms[r] && rooms[r].last) || 0);
        if (last) u.searchParams.set("last", String(last));
      }
      var es = source = new EventSource(u.toString());
      var names = Object.keys(handlers).concat(["not_recovered"]);
      names.forEach(function (name) {
        source.addEventListener(name, function (ev) {
          var frame = JSON.parse(ev.data);
          if (name === "not_recovered" || frame.type === "not_recovered") onFrame(ev.data);
          else onBroadcast(frame);
        });
      });
      es.onopen = function () { attempt = sseAfter; status("sse"); };  // the backoff starts over
      es.onerror = function () {
        if (closed || source !== es) return;
        status("connecting");
        // The browser retries by itself after a network error, not after an HTTP error
        // (a proxy's 502 while the app restarts) or another content type: it closes the
        // source for good. Open a new one, with backoff (open() goes back to openSSE).
        if (es.readyState === 2) schedule();
      };
    }

    var api = {
      on: function (event, fn) {
        (handlers[event] = handlers[event] || []).push(fn);
        if (source) openSSE(); // listen for the new name too
        return api;
      },
      emit: function (event, data) {
        return new Promise(function (resolve, reject) {
          if (!sock || sock.readyState !== 1) { reject(new Error(source ? "the SSE fallback is receive-only" : "not connected")); return; }
          var id = nextId++;
          acks[id] = {resolve: resolve, reject: reject,
                      timer: setTimeout(function () { delete acks[id]; reject(new Error("no ack in " + ackTimeout + " ms")); }, ackTimeout)};
          sock.send(JSON.stringify({type: "event", event: event, data: data === undefined ? null : data, id: id}));
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
      close: function () {
        closed = true;
        clearTimeout(timer);
        if (sock) sock.close(1000);
        if (source) source.close();
        failAcks();
        status("closed");
      },
      get transport() { return sock ? "websocket" : source ? "sse" : null; }
    };
    open();
    return api;
  }

  root.uwsgiWs = {connect: connect};
})(typeof globalThis !== "undefined" ? globalThis : this);
