// socket.io-client v4 clients that live through server reloads, for tests/test_socketio_reload.py
// and tests/test_socketio_run.py.
//
// node socketio_reload.mjs URL COUNT MODE
//   MODE "default": the client's default options (polling, then the upgrade);
//   "websocket": transports: ["websocket"]; "polling": transports: ["polling"].
//   Reconnection stays on (the default): a client whose server went away comes back.
//
// Prints one JSON line per thing that happens (k: the client's index):
//   {"i":k,"type":"open","transport":...,"eio":engineSid}    each Engine.IO connection
//   {"i":k,"type":"upgrade","transport":"websocket","eio":engineSid}
//   {"i":k,"type":"connect","id":socket.id,"transport":...,"eio":engineSid}
//   {"i":k,"type":"engine_close","reason":...,"description":...,"code":wsCloseCode|null,"transport":...,"eio":...}
//   {"i":k,"type":"disconnect","reason":...,"description":...,"code":...}
//   {"i":k,"type":"event","event":name,"args":[...]}
// Reads JSON lines on stdin: {"i":k,"emit":[event, ...args]} (i: -1 = every client), {"exit":true}.
import { io } from "socket.io-client";
import readline from "node:readline";

const [url, countArg, mode] = process.argv.slice(2);
const count = Number(countArg || 1);
const out = (obj) => process.stdout.write(JSON.stringify(obj) + "\n");
const options = { forceNew: true, reconnectionDelay: 100, reconnectionDelayMax: 500 };
if (mode === "websocket") options.transports = ["websocket"];
if (mode === "polling") options.transports = ["polling"];

const details = (d) => ({
  description: d && typeof d.description !== "object" ? String(d.description) : null,
  code: d && d.context && typeof d.context.code === "number" ? d.context.code : null,
});

const clients = [];
for (let i = 0; i < count; i++) {
  const socket = io(url, options);
  clients.push(socket);
  socket.io.on("open", () => {
    const engine = socket.io.engine;
    const eio = engine.id;
    out({ i, type: "open", transport: engine.transport.name, eio });
    engine.on("upgrade", (t) => out({ i, type: "upgrade", transport: t.name, eio }));
    engine.on("close", (reason, d) => out({ i, type: "engine_close", reason, ...details(d),
                                            transport: engine.transport ? engine.transport.name : null, eio }));
  });
  socket.on("connect", () => {
    const engine = socket.io.engine;
    out({ i, type: "connect", id: socket.id, transport: engine.transport.name, eio: engine.id });
  });
  socket.on("connect_error", (err) => out({ i, type: "connect_error", message: String(err && err.message) }));
  socket.on("disconnect", (reason, d) => out({ i, type: "disconnect", reason, ...details(d) }));
  socket.onAny((event, ...args) => out({ i, type: "event", event, args }));
}

const rl = readline.createInterface({ input: process.stdin });
const quit = () => { clients.forEach((s) => s.disconnect()); setTimeout(() => process.exit(0), 50); };
rl.on("line", (line) => {
  if (!line.trim()) return;
  const cmd = JSON.parse(line);
  if (cmd.exit) return quit();
  const targets = cmd.i === -1 ? clients.map((_, k) => k) : [cmd.i];
  for (const k of targets) {
    if (cmd.emit) clients[k].emit(...cmd.emit);
  }
});
rl.on("close", quit);
