// Pulsar Relay browser client: subscribe to a topic over WebSocket, resume after every
// reconnect from the last id delivered, fall back to Server-Sent Events when WebSocket cannot
// connect. No dependencies, no build step:
//
//   import { RelaySubscription } from "/ui/relay.js";
//   const sub = new RelaySubscription({ topic: "orders.eu", since: "0" });
//   sub.addEventListener("message", (e) => console.log(e.detail));   // the envelope
//   sub.addEventListener("gap", (e) => console.log(e.detail));       // {topic, reason, from}
//   sub.addEventListener("status", (e) => console.log(e.detail));    // connecting|live|reconnecting|failed
//   sub.addEventListener("error", (e) => console.log(e.detail));     // {code, message}: gave up
//   sub.start();  ...  sub.close();
//
// Guarantees, like the Python SDK: every message once, in id order, or a "gap" event first.

const TOPIC = /^[A-Za-z0-9][A-Za-z0-9_.:-]{0,199}$/;
// Close codes and error slugs that reconnecting cannot fix.
const FATAL_CLOSES = new Map([
  [4401, "unauthorized"], [4403, "forbidden"], [4400, "protocol_violation"], [1009, "too_large"],
]);
const RETRY_ERRORS = new Set(["unavailable", "slow_consumer", "draining"]);

/** "<ms>-<seq>" (or a bare millisecond cursor) as [ms, seq]; a bare cursor sorts first. */
export function idKey(id) {
  const [ms, seq] = String(id).split("-");
  return [Number(ms), seq === undefined ? -1 : Number(seq)];
}

/** Negative, zero or positive as id a is before, equal to or after id b. */
export function compareIds(a, b) {
  const [am, as] = idKey(a);
  const [bm, bs] = idKey(b);
  return am !== bm ? am - bm : as - bs;
}

/** The gateway's base URL as seen from this page (the page is served by a gateway). */
export function defaultGatewayUrl() {
  return `${location.protocol}//${location.host}`;
}

export class RelaySubscription extends EventTarget {
  /**
   * @param {object} options
   * @param {string} options.topic
   * @param {string=} options.since   cursor: a message id or a millisecond timestamp
   * @param {string=} options.gatewayUrl  default: this page's origin
   * @param {string=} options.token   JWT, sent as the token query parameter
   * @param {"auto"|"ws"|"sse"=} options.transport  auto: WebSocket, SSE when it cannot connect
   * @param {{initial:number, max:number}=} options.backoff  reconnect delays in ms
   */
  constructor({ topic, since = null, gatewayUrl = defaultGatewayUrl(), token = null,
                transport = "auto", backoff = { initial: 250, max: 5000 } }) {
    super();
    if (!TOPIC.test(topic || "")) throw new TypeError(`invalid topic ${JSON.stringify(topic)}`);
    this.topic = topic;
    this.cursor = since || null;   // resume point: the last id delivered
    this.gatewayUrl = gatewayUrl.replace(/\/+$/, "");
    this.token = token;
    this.transport = transport === "sse" ? "sse" : "ws";
    this.fallback = transport === "auto";
    this.backoff = backoff;
    this.status = "idle";
    this.reconnects = 0;
    this._attempt = 0;
    this._wsOpened = false;       // any WebSocket subscription ever confirmed
    this._wsFailures = 0;
    this._gapFrom = null;          // cursor of a resume the gateway could not recover
    this._afterGap = false;
    this._timer = null;
    this._socket = null;
    this._source = null;
    this._closed = false;
  }

  start() {
    this._closed = false;
    this._connect();
    return this;
  }

  close() {
    this._closed = true;
    clearTimeout(this._timer);
    this._teardown();
    this._setStatus("idle");
  }

  // -- delivery ---------------------------------------------------------------------------

  _deliver(envelope) {
    if (this._gapFrom !== null) {
      const reason = compareIds(envelope.id, this._gapFrom) <= 0 ? "reset" : "trimmed";
      this._gapFrom = null;
      this._gap({ topic: this.topic, reason, from: envelope.id });
    }
    if (!this._afterGap && this.cursor !== null && compareIds(envelope.id, this.cursor) <= 0) {
      return; // already delivered before a reconnect
    }
    this._afterGap = false;
    this.cursor = envelope.id;
    this.dispatchEvent(new CustomEvent("message", { detail: envelope }));
  }

  _gap(detail) {
    this._afterGap = true;
    this.dispatchEvent(new CustomEvent("gap", { detail }));
  }

  _setStatus(status) {
    if (status === this.status) return;
    this.status = status;
    this.dispatchEvent(new CustomEvent("status", { detail: status }));
  }

  _fail(code, message) {
    this._closed = true;
    this._teardown();
    this._setStatus("failed");
    this.dispatchEvent(new CustomEvent("error", { detail: { code, message } }));
  }

  _established() {
    this._attempt = 0;
    this._setStatus("live");
  }

  // -- connections ------------------------------------------------------------------------

  _teardown() {
    if (this._socket) {
      const socket = this._socket;
      this._socket = null;
      socket.onopen = socket.onmessage = socket.onclose = socket.onerror = null;
      socket.close();
    }
    if (this._source) {
      this._source.close();
      this._source = null;
    }
  }

  _reconnect() {
    if (this._closed) return;
    this._teardown();
    this._setStatus("reconnecting");
    const base = Math.min(this.backoff.max, this.backoff.initial * 2 ** this._attempt);
    const delay = base * (0.5 + Math.random() / 2);  // jitter: no thundering herd
    this._attempt += 1;
    this.reconnects += 1;
    clearTimeout(this._timer);
    this._timer = setTimeout(() => this._connect(), delay);
  }

  _connect() {
    if (this._closed) return;
    if (this.status !== "reconnecting") this._setStatus("connecting");
    if (this.transport === "ws") this._connectWebSocket();
    else this._connectEventSource();
  }

  _query(extra) {
    const params = new URLSearchParams({ topic: this.topic, ...extra });
    if (this.token) params.set("token", this.token);
    return params.toString();
  }

  _connectWebSocket() {
    const base = this.gatewayUrl.replace(/^http/, "ws");
    const url = `${base}/api/v1/ws${this.token ? `?token=${encodeURIComponent(this.token)}` : ""}`;
    const sentCursor = this.cursor;
    const socket = new WebSocket(url);
    this._socket = socket;
    let subscribed = false;
    socket.onopen = () => {
      const frame = { op: "subscribe", topic: this.topic, req: 1 };
      if (sentCursor !== null) frame.since = sentCursor;
      socket.send(JSON.stringify(frame));
    };
    socket.onmessage = (event) => {
      for (const line of String(event.data).split("\n")) {
        if (this._socket !== socket) return;
        const data = JSON.parse(line);
        if (data.op === "message") {
          this._deliver(data);
        } else if (data.op === "gap") {
          this._gap({ topic: data.topic, reason: data.reason, from: data.from });
        } else if (data.op === "subscribed") {
          subscribed = true;
          this._wsOpened = true;
          this._wsFailures = 0;
          if (sentCursor === null) this.cursor = data.last_id || "0-0";
          else if (data.recovered === false) this._gapFrom = sentCursor;
          this._established();
        } else if (data.op === "error") {
          if (RETRY_ERRORS.has(data.code)) this._reconnect();
          else this._fail(data.code, data.message);
        } else if (data.op === "unsubscribed") {
          this._reconnect();
        }
      }
    };
    socket.onerror = () => {};  // onclose follows with the code; nothing to add here
    socket.onclose = (event) => {
      if (this._socket !== socket) return;
      this._socket = null;
      if (FATAL_CLOSES.has(event.code)) {
        this._fail(FATAL_CLOSES.get(event.code), event.reason || `closed ${event.code}`);
        return;
      }
      if (!subscribed && !this._wsOpened && this.fallback && ++this._wsFailures >= 2) {
        this.transport = "sse";  // WebSocket never worked from here (a proxy?): use SSE
      }
      this._reconnect();
    };
  }

  async _connectEventSource() {
    if (this.cursor === null) {
      // Start from the stream's end now, so a reconnect resumes exactly.
      const anchor = await this._pollNow();
      if (anchor === undefined) return;
      this.cursor = anchor.next;
    }
    if (this._closed) return;
    const since = this.cursor;
    const source = new EventSource(`${this.gatewayUrl}/api/v1/sse?${this._query({ since })}`);
    this._source = source;
    source.onopen = () => this._established();
    source.addEventListener("message", (event) => this._deliver(JSON.parse(event.data)));
    source.addEventListener("gap", (event) => this._gap(JSON.parse(event.data)));
    source.onerror = async () => {
      if (this._source !== source) return;
      if (source.readyState === EventSource.CONNECTING) {
        // The browser reconnects by itself, sending Last-Event-ID = the last id delivered.
        this._setStatus("reconnecting");
        return;
      }
      // Closed for good (an HTTP error): learn why from a plain request, then retry or stop.
      this._source = null;
      source.close();
      const probe = await this._pollNow();
      if (probe !== undefined) this._reconnect();
    };
  }

  /** poll?timeout=0: the stream's end (and whether we may read); undefined after a failure. */
  async _pollNow() {
    let response;
    try {
      response = await fetch(`${this.gatewayUrl}/api/v1/poll?${this._query({ timeout: "0" })}`);
    } catch {
      this._reconnect();
      return undefined;
    }
    if (response.ok) return response.json();
    if (response.status >= 500 || response.status === 429) {
      this._reconnect();
      return undefined;
    }
    const body = await response.json().catch(() => ({}));
    const error = body.error || {};
    this._fail(error.code || String(response.status), error.message || response.statusText);
    return undefined;
  }
}
