// ES module entry of uwsgi_ws.js (which defines globalThis.uwsgiWs).
import "./uwsgi_ws.js";

export const connect = globalThis.uwsgiWs.connect;
export default globalThis.uwsgiWs;
