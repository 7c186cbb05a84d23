'use strict';
/**
 * Broadcast load client for bench/run.py.
 *
 * Contract with the server under test:
 *   - proto "ws":  clients open `GET /ws` (plain WebSocket) and only receive;
 *   - proto "sio": clients speak Engine.IO v4 over WebSocket
 *     (`/socket.io/?EIO=4&transport=websocket`: receive `0{...}`, send `40`,
 *     wait for `40{...}`, answer pings `2` with `3`) and receive
 *     `42["msg","<payload>"]`;
 *   - `POST /publish` with a text body broadcasts that body to every client.
 *
 * Usage: node load.js '<json config>'   (see DEFAULTS below for the keys)
 *
 * Steps: connect N clients -> warm-up (publish `W<k>|` until every client got
 * the same k, which proves every subscription is registered and the pipe is
 * empty) -> throughput phase (M messages `T%08d|pad`, exactly `size` bytes,
 * published as fast as the server accepts them by `pubConcurrency` sequential
 * publishers on a keep-alive agent; bounded by tpSeconds, then a drain wait)
 * -> optional latency phase (`L%08d|<send ms>|pad` at a fixed rate).
 *
 * stdout: one JSON object per line. `{"event":"tp_start"}` and
 * `{"event":"tp_end"}` bracket the throughput phase, `lat_start`/`lat_end`
 * the latency phase; when config.sync is true
 * the client then waits for one line on stdin before going on (so the
 * orchestrator can sample server CPU exactly at the boundaries). The last line
 * is `{"event":"result", ...}` (with an "error" key if the run failed).
 */
const http = require('http');
const readline = require('readline');
const { performance } = require('perf_hooks');
const WebSocket = require('ws');

const DEFAULTS = {
  url: 'http://127.0.0.1:8000',
  proto: 'ws',
  clients: 100,
  size: 100,
  messages: 1000,
  pubConcurrency: 1,
  connectConcurrency: 64,
  connectSeconds: 60,
  warmupSeconds: 30,
  tpSeconds: 30, // publishing stops after this
  drainSeconds: 20, // max wait for deliveries after the last publish
  quietSeconds: 3, // ...or stop waiting after this long without any delivery
  latency: null, // {rate: 50, seconds: 5, size: 100}
  subUrls: null, // optional list of base URLs the clients are spread over
  maxSeconds: 300, // watchdog for the whole run
  sync: false,
};

const cfg = Object.assign({}, DEFAULTS, JSON.parse(process.argv[2] || '{}'));
const now = () => performance.now();
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const emit = (obj) => process.stdout.write(JSON.stringify(obj) + '\n');

// ---------------------------------------------------------------- stdin sync
const goWaiters = [];
let goBuffered = 0;
if (cfg.sync) {
  readline.createInterface({ input: process.stdin }).on('line', () => {
    if (goWaiters.length) goWaiters.shift()();
    else goBuffered += 1;
  });
}
function waitGo() {
  if (!cfg.sync) return Promise.resolve();
  if (goBuffered) { goBuffered -= 1; return Promise.resolve(); }
  return new Promise((r) => goWaiters.push(r));
}

// ---------------------------------------------------------------- payloads
const pad8 = (n) => String(n).padStart(8, '0');
function makePayload(prefix, seq, size, extra = '') {
  const head = prefix + pad8(seq) + '|' + extra;
  return head + 'x'.repeat(Math.max(0, size - head.length));
}
/** Parse the 8 ASCII digits at buf[off+1 .. off+8]. */
function parseSeq(buf, off) {
  let n = 0;
  for (let i = off + 1; i < off + 9; i++) n = n * 10 + (buf[i] - 48);
  return n;
}

// ---------------------------------------------------------------- counters
const stats = {
  phase: 'connect',
  lastRecv: 0,
  tp: { unique: 0, dup: 0, reorder: 0 },
  lat: { unique: 0, dup: 0, samples: null, n: 0 },
  stray: 0, // messages that belong to no current phase
  closedByServer: 0, // connections closed after they were ready
};

class Sub {
  constructor(i) {
    this.i = i;
    this.ws = null;
    this.ready = false;
    this.warm = -1;
    this.seen = null; // Uint8Array per phase
    this.last = -1;
  }

  onPayload(buf, off) {
    const kind = buf[off];
    const t = now();
    if (kind === 87 /* W */) {
      this.warm = Math.max(this.warm, parseSeq(buf, off));
      return;
    }
    const seq = parseSeq(buf, off);
    if (kind === 84 /* T */ && stats.phase === 'tp' && seq < this.seen.length) {
      stats.lastRecv = t;
      if (this.seen[seq]) { stats.tp.dup += 1; return; }
      this.seen[seq] = 1;
      stats.tp.unique += 1;
      if (seq < this.last) stats.tp.reorder += 1;
      else this.last = seq;
    } else if (kind === 76 /* L */ && stats.phase === 'lat' && seq < this.seen.length) {
      stats.lastRecv = t;
      if (this.seen[seq]) { stats.lat.dup += 1; return; }
      this.seen[seq] = 1;
      stats.lat.unique += 1;
      const end = buf.indexOf(124 /* | */, off + 10);
      const sent = parseFloat(buf.toString('latin1', off + 10, end));
      stats.lat.samples[stats.lat.n++] = t - sent;
    } else {
      stats.stray += 1;
    }
  }
}

// ---------------------------------------------------------------- connecting
function wsUrl(i) {
  // subUrls (optional): client i connects to subUrls[i % length] (servers with
  // several instances, e.g. bench/redis_bench.py); publishing always uses url.
  const urls = cfg.subUrls && cfg.subUrls.length ? cfg.subUrls : [cfg.url];
  const base = urls[i % urls.length].replace(/^http/, 'ws');
  return cfg.proto === 'sio' ? base + '/socket.io/?EIO=4&transport=websocket' : base + '/ws';
}

/** Open one client; resolves when it is ready to receive broadcasts. */
function openSub(sub) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(wsUrl(sub.i), {
      perMessageDeflate: false,
      skipUTF8Validation: true,
      handshakeTimeout: 30000,
    });
    sub.ws = ws;
    const fail = (err) => { if (!sub.ready) reject(err); };
    ws.on('error', fail);
    ws.on('close', (code) => {
      if (!sub.ready) fail(new Error(`closed before ready (code ${code})`));
      else stats.closedByServer += 1;
      sub.ready = false;
    });
    if (cfg.proto === 'ws') {
      ws.on('open', () => { sub.ready = true; resolve(); });
      ws.on('message', (data) => sub.onPayload(data, 0));
      return;
    }
    // Engine.IO v4 / Socket.IO v5 over WebSocket.
    ws.on('message', (data) => {
      const c0 = data[0];
      if (c0 === 52 /* 4 */ && data[1] === 50 /* 2: EVENT */) {
        sub.onPayload(data, 10); // 42["msg","<payload>"]
      } else if (c0 === 50 /* 2: ping */) {
        ws.send('3');
      } else if (c0 === 48 /* 0: open */) {
        ws.send('40');
      } else if (c0 === 52 && data[1] === 48 /* 40: connected */) {
        sub.ready = true;
        resolve();
      } else if (c0 === 52 && data[1] === 52 /* 44: connect error */) {
        fail(new Error('socket.io connect error ' + data.toString()));
      }
    });
  });
}

async function connectAll(subs) {
  const deadline = now() + cfg.connectSeconds * 1000;
  let next = 0;
  let failed = 0;
  let firstError = null;
  async function worker() {
    while (next < subs.length && now() < deadline) {
      const sub = subs[next++];
      try {
        await openSub(sub);
      } catch (err) {
        failed += 1;
        firstError = firstError || String(err && err.message ? err.message : err);
      }
    }
  }
  await Promise.all(Array.from({ length: cfg.connectConcurrency }, worker));
  const ready = subs.filter((s) => s.ready).length;
  if (ready < subs.length) {
    const why = failed ? `${failed} failed: ${firstError}` : 'none failed';
    throw new Error(`only ${ready}/${subs.length} clients connected (${why}; `
      + `${stats.closedByServer} closed by the server after opening)`);
  }
}

// ---------------------------------------------------------------- publishing
const agent = new http.Agent({ keepAlive: true, maxSockets: Math.max(cfg.pubConcurrency, 8) });
const pubUrl = new URL(cfg.url + '/publish');

const postStatus = {}; // HTTP status (or error code) -> count, for error messages

/** POST one body; resolves true on 2xx. Retries once if a reused keep-alive
 * socket had been closed by the server (that request was never processed). */
function post(body, retry = true) {
  return postOnce(body, retry).then(([ok, status]) => {
    postStatus[status] = (postStatus[status] || 0) + 1;
    return ok;
  });
}

function postOnce(body, retry) {
  return new Promise((resolve) => {
    const req = http.request({
      host: pubUrl.hostname,
      port: pubUrl.port,
      path: pubUrl.pathname,
      method: 'POST',
      agent,
      headers: { 'Content-Type': 'text/plain', 'Content-Length': Buffer.byteLength(body) },
      timeout: 10000,
    }, (res) => {
      res.resume();
      res.on('end', () => resolve([res.statusCode >= 200 && res.statusCode < 300, res.statusCode]));
      res.on('error', (err) => resolve([false, err.code || 'response error']));
    });
    req.on('timeout', () => req.destroy(Object.assign(new Error('timeout'), { code: 'timeout' })));
    req.on('error', (err) => {
      if (retry && req.reusedSocket && (err.code === 'ECONNRESET' || err.code === 'EPIPE')) {
        resolve(postOnce(body, false));
      } else {
        resolve([false, err.code || String(err)]);
      }
    });
    req.end(body);
  });
}

async function waitFor(cond, seconds, quietSeconds = null) {
  const deadline = now() + seconds * 1000;
  while (!cond() && now() < deadline) {
    if (quietSeconds !== null && now() - stats.lastRecv > quietSeconds * 1000) return false;
    await sleep(5);
  }
  return cond();
}

// ---------------------------------------------------------------- phases
async function warmup(subs) {
  stats.phase = 'warm';
  const deadline = now() + cfg.warmupSeconds * 1000;
  let failures = 0; // consecutive non-2xx answers: a broken publish path fails fast
  for (let k = 0; now() < deadline && failures < 5; k++) {
    failures = (await post(makePayload('W', k, 10))) ? 0 : failures + 1;
    if (await waitFor(() => subs.every((s) => s.warm >= k), failures ? 0.2 : 1)) return k + 1;
  }
  const got = subs.filter((s) => s.warm >= 0).length;
  throw new Error(`warm-up: only ${got}/${subs.length} clients ever received a broadcast `
    + `(publish answers: ${JSON.stringify(postStatus)})`);
}

function resetPhase(subs, count) {
  for (const s of subs) { s.seen = new Uint8Array(count); s.last = -1; }
}

async function throughput(subs) {
  const M = cfg.messages;
  const N = subs.length;
  resetPhase(subs, M);
  stats.phase = 'tp';
  emit({ event: 'tp_start' });
  await waitGo();
  const cpu0 = process.cpuUsage();
  const t0 = now();
  stats.lastRecv = t0;
  const deadline = t0 + cfg.tpSeconds * 1000;
  let next = 0;
  let accepted = 0;
  let errors = 0;
  async function publisher() {
    while (next < M && now() < deadline) {
      const seq = next++;
      if (await post(makePayload('T', seq, cfg.size))) accepted += 1;
      else errors += 1;
    }
  }
  await Promise.all(Array.from({ length: cfg.pubConcurrency }, publisher));
  const tPub = now();
  await waitFor(() => stats.tp.unique >= accepted * N, cfg.drainSeconds, cfg.quietSeconds);
  const cpu = process.cpuUsage(cpu0);
  const seconds = (Math.max(stats.lastRecv, tPub) - t0) / 1000;
  stats.phase = 'idle';
  emit({ event: 'tp_end' });
  await waitGo();
  return {
    published: accepted,
    publish_errors: errors,
    publish_seconds: (tPub - t0) / 1000,
    seconds,
    deliveries: stats.tp.unique,
    expected: accepted * N,
    lost: Math.max(0, accepted * N - stats.tp.unique),
    dup: stats.tp.dup,
    reorder: stats.tp.reorder,
    deliveries_per_s: seconds > 0 ? stats.tp.unique / seconds : 0,
    client_cpu_pct: seconds > 0 ? (100 * (cpu.user + cpu.system)) / 1e6 / seconds : 0,
  };
}

function percentile(sorted, q) {
  if (!sorted.length) return null;
  return sorted[Math.min(sorted.length - 1, Math.floor(q * (sorted.length - 1)))];
}

async function latency(subs) {
  const { rate, seconds, size } = cfg.latency;
  const L = Math.round(rate * seconds);
  const N = subs.length;
  resetPhase(subs, L);
  stats.lat.samples = new Float64Array(L * N);
  stats.phase = 'lat';
  emit({ event: 'lat_start' });
  await waitGo();
  const t0 = now();
  stats.lastRecv = t0;
  let accepted = 0;
  const inflight = [];
  for (let i = 0; i < L; i++) {
    const wait = t0 + (i * 1000) / rate - now();
    if (wait > 0) await sleep(wait);
    const body = makePayload('L', i, size, now().toFixed(3) + '|');
    inflight.push(post(body).then((ok) => { if (ok) accepted += 1; }));
  }
  await Promise.all(inflight);
  await waitFor(() => stats.lat.unique >= accepted * N, cfg.drainSeconds, cfg.quietSeconds);
  stats.phase = 'idle';
  emit({ event: 'lat_end' });
  await waitGo();
  const sorted = stats.lat.samples.slice(0, stats.lat.n).sort();
  let sum = 0;
  for (const v of sorted) sum += v;
  return {
    rate,
    published: accepted,
    samples: sorted.length,
    expected: accepted * N,
    lost: Math.max(0, accepted * N - stats.lat.unique),
    dup: stats.lat.dup,
    p50_ms: percentile(sorted, 0.5),
    p99_ms: percentile(sorted, 0.99),
    max_ms: sorted.length ? sorted[sorted.length - 1] : null,
    mean_ms: sorted.length ? sum / sorted.length : null,
  };
}

// ---------------------------------------------------------------- main
async function main() {
  const subs = Array.from({ length: cfg.clients }, (_, i) => new Sub(i));
  const result = { event: 'result', proto: cfg.proto, clients: cfg.clients, size: cfg.size };
  const watchdog = setTimeout(() => {
    emit(Object.assign(result, { error: `client watchdog: run exceeded ${cfg.maxSeconds}s in phase ${stats.phase}` }));
    process.exit(2);
  }, cfg.maxSeconds * 1000);
  try {
    const tc = now();
    await connectAll(subs);
    result.connect_ms = now() - tc;
    result.warmup_rounds = await warmup(subs);
    emit({ event: 'ready', clients: subs.length, connect_ms: result.connect_ms });
    if (cfg.messages > 0) result.tp = await throughput(subs);
    if (cfg.latency) result.lat = await latency(subs);
    result.stray = stats.stray;
    result.publish_status = postStatus;
    result.disconnected = subs.filter((s) => !s.ready).length;
    result.closed_by_server = stats.closedByServer;
  } catch (err) {
    result.error = String(err && err.stack ? err.message : err);
  }
  clearTimeout(watchdog);
  emit(result);
  for (const s of subs) if (s.ws) s.ws.terminate();
  agent.destroy();
  process.exit(result.error ? 1 : 0);
}

main();
