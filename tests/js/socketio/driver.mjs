// Drives socket.io-client v4 clients for tests/test_socketio*.py.
//
// node driver.mjs URL COUNT MODE [AUTH_JSON]
//   MODE "default": the client's default options (HTTP long-polling first, then
//   the upgrade to WebSocket); "websocket": transports: ["websocket"];
//   "polling": transports: ["polling"] (no upgrade).
//
// Prints one JSON line per thing that happens:
//   {"i":k,"type":"open","transport":"polling"|"websocket"}   (the Engine.IO connection)
//   {"i":k,"type":"connect","id":socket.id,"transport":"polling"|"websocket"}
//   {"i":k,"type":"upgrade","transport":"websocket"}
//   {"i":k,"type":"event","event":name,"args":[...]}
//   {"i":k,"type":"ack","tag":tag,"args":[...]}
//   {"i":k,"type":"disconnect","reason":...} / {"i":k,"type":"connect_error","message":...}
// Reads JSON lines on stdin:
//   {"i":k,"emit":[event, ...args],"ack":tag?}  (i: -1 = every client)
//   {"i":k,"disconnect":true}   {"exit":true}
import { io } from "socket.io-client";
import readline from "node:readline";

const [url, countArg, mode, authArg] = process.argv.slice(2);
const count = Number(countArg || 1);
const out = (obj) => process.stdout.write(JSON.stringify(obj) + "\n");
const options = { reconnection: false, forceNew: true };
if (mode === "websocket") options.transports = ["websocket"];
if (mode === "polling") options.transports = ["polling"];
if (authArg) options.auth = JSON.parse(authArg);

const clients = [];
for (let i = 0; i < count; i++) {
  const socket = io(url, options);
  clients.push(socket);
  socket.io.on("open", () => {  // the Engine.IO connection: the upgrade may come before "connect"
    out({ i, type: "open", transport: socket.io.engine.transport.name });
    socket.io.engine.on("upgrade", (t) => out({ i, type: "upgrade", transport: t.name }));
  });
  socket.on("connect", () => {
    out({ i, type: "connect", id: socket.id, transport: socket.io.engine.transport.name });
  });
  socket.on("connect_error", (err) => out({ i, type: "connect_error", message: String(err && err.message), data: err && err.data }));
  socket.on("disconnect", (reason) => out({ i, type: "disconnect", reason }));
  socket.onAny((event, ...args) => {
    const last = args[args.length - 1];
    if (typeof last === "function") {  // the server asked for an ack
      args.pop();
      last({ acked: event });
    }
    out({ i, type: "event", event, args });
  });
}

const rl = readline.createInterface({ input: process.stdin });
rl.on("line", (line) => {
  if (!line.trim()) return;
  const cmd = JSON.parse(line);
  if (cmd.exit) {
    clients.forEach((s) => s.disconnect());
    setTimeout(() => process.exit(0), 50);
    return;
  }
  const targets = cmd.i === -1 ? clients.map((_, k) => k) : [cmd.i];
  for (const k of targets) {
    const socket = clients[k];
    if (cmd.disconnect) socket.disconnect();
    if (cmd.emit) {
      if (cmd.ack !== undefined) {
        socket.emit(...cmd.emit, (...args) => out({ i: k, type: "ack", tag: cmd.ack, args }));
      } else {
        socket.emit(...cmd.emit);
      }
    }
  }
});
rl.on("close", () => { clients.forEach((s) => s.disconnect()); setTimeout(() => process.exit(0), 50); });
