'use strict';
/**
 * Client-ceiling reference: a trivial Node `ws` server under the common
 * contract (GET /ws WebSocket, POST /publish broadcasts the body as text).
 * Usage: node node_ws_server.js PORT
 */
const http = require('http');
const path = require('path');
const { WebSocketServer, WebSocket } = require(path.join(__dirname, '..', 'client', 'node_modules', 'ws'));

const port = Number(process.argv[2]);
const server = http.createServer((req, res) => {
  if (req.method !== 'POST' || req.url !== '/publish') {
    res.writeHead(404, { 'Content-Length': '0' });
    res.end();
    return;
  }
  const chunks = [];
  req.on('data', (c) => chunks.push(c));
  req.on('end', () => {
    const body = Buffer.concat(chunks).toString();
    for (const client of wss.clients) {
      if (client.readyState === WebSocket.OPEN) client.send(body);
    }
    res.writeHead(204);
    res.end();
  });
});
const wss = new WebSocketServer({ server, path: '/ws' });
wss.on('connection', (ws) => ws.on('error', () => {}));
server.listen(port, '127.0.0.1', 2048);
process.on('SIGINT', () => process.exit(0));
process.on('SIGTERM', () => process.exit(0));
