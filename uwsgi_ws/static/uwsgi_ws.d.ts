// TypeScript declarations of the uwsgi_ws browser client (uwsgi_ws.js / uwsgi_ws.mjs),
// served next to them: import {connect} from "/_uwsgi_ws/uwsgi_ws.mjs".
// The wire protocol is docs/protocol.md.

export type Status = "connecting" | "open" | "resuming" | "closed" | "sse" | "unauthorized" | "refused";

/** Query parameters sent with every (re)connect, or a function (sync or async) returning them. */
export type Auth =
  | Record<string, string | number | boolean>
  | ((info: { refused: number | null; attempt: number }) =>
      Record<string, string | number | boolean> | Promise<Record<string, string | number | boolean>>);

export interface Options {
  onStatus?: (status: Status) => void;
  /** ms to wait for an ack (default 10000). */
  ackTimeout?: number;
  /** ms, the reconnect backoff bounds (default 500 and 15000). */
  minDelay?: number;
  maxDelay?: number;
  /** WebSocket opens that failed before falling back to SSE (default 2). */
  sseAfter?: number;
  /** refused attempts in a row before the client stops (default 3). */
  maxRefusals?: number;
  auth?: Auth;
  /** emits kept while reconnecting and sent once connected (default 0: rejected at once). */
  buffer?: number;
}

/** An event frame as received (broadcasts carry seq and epoch; direct events do not). */
export interface EventFrame<T = unknown> {
  type: "event";
  event: string;
  data: T;
  room: string | null;
  seq?: number;
  epoch?: string;
  skip?: string;
}

export interface PresenceInfo {
  op: "join" | "leave";
  room: string;
  id: string;
  identity: unknown;
}

export interface CallFrame {
  type: "call";
  id: number;
  event: string;
  data: unknown;
}

/** An event handler; for a server call the first handler's return value (or Promise) is the reply. */
export type Handler = (data: any, frame: EventFrame | CallFrame) => unknown;

export interface Client {
  on(event: "presence", fn: (info: PresenceInfo) => void): Client;
  on(event: "left", fn: (room: string) => void): Client;
  on(event: "not_recovered", fn: (room: string | null, reason: string) => void): Client;
  on(event: "error", fn: (message: string) => void): Client;
  on(event: string, fn: Handler): Client;
  /** Remove `fn`, or every handler of `event`. */
  off(event: string, fn?: (...args: any[]) => unknown): Client;
  /** Call the server's handler; resolves with its ack's data, rejects with its error. */
  emit<R = unknown>(event: string, data?: unknown): Promise<R>;
  join(room: string, opts?: { last?: number }): void;
  leave(room: string): void;
  reconnect(): void;
  close(): void;
  readonly transport: "websocket" | "sse" | null;
  /** This connection's id ("<pid>-<n>"), null while not connected. */
  readonly id: string | null;
}

export function connect(path: string, options?: Options): Client;

declare const uwsgiWs: { connect: typeof connect };
export default uwsgiWs;
