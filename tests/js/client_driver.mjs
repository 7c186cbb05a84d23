// Drives uwsgi_ws.js (fetched from the server's fixed client URL) in Node for
// tests/test_events_client.py: node --experimental-websocket client_driver.mjs <base URL> [rooms]
// Prints one JSON line per thing seen: {"status": s}, {"hello": pid}, {"n": data, "seq": n},
// {"not_recovered": room, "reason": r}, {"ack": data} for the "echo" sent once open.
const base = process.argv[2];
const rooms = (process.argv[3] || "").split(",").filter(Boolean);
const out = (obj) => process.stdout.write(JSON.stringify(obj) + "\n");
const source = await (await fetch(base + "/_uwsgi_ws/uwsgi_ws.js")).text();
new Function(source)();
const live = globalThis.uwsgiWs.connect(base + "/live", {
  minDelay: 100, maxDelay: 1000, sseAfter: 1000,
  onStatus: (s) => {
    out({status: s});
    if (s === "open") live.emit("echo", "pong").then((d) => out({ack: d}), (e) => out({ack_error: e.message}));
  },
});
live.on("hello", (data) => out({hello: data.pid}));
live.on("n", (data, frame) => out({n: data, seq: frame.seq, room: frame.room}));
live.on("not_recovered", (room, reason) => out({not_recovered: room, reason}));
for (const room of rooms) live.join(room);
process.stdin.on("end", () => { live.close(); process.exit(0); });
process.stdin.resume();
