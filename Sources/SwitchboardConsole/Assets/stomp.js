// stomp.js — a small STOMP 1.0/1.1/1.2 client over WebSocket, as a plain ES module.
//
//   import { StompClient } from './stomp.js';
//   const c = new StompClient('ws://localhost:8080/stomp', { token: 't', heartbeat: [10000, 10000] });
//   c.on('frame-in', f => console.log('<<', f.command, f.headers));
//   await c.connect();
//   const sub = c.subscribe('/topic/toast', msg => console.log(msg.body));
//   await c.send('/topic/toast', 'hi', { 'content-type': 'text/plain' }, { receipt: true });
//   sub.unsubscribe();
//   await c.disconnect();
//
// No dependencies: uses WebSocket, TextEncoder and TextDecoder (browsers, Node ≥ 18 for the
// codec; the WebSocket constructor can be injected, see StompClient options).


import { SUBPROTOCOLS, Frame, FrameParser, encodeFrame, parseHeartbeat, negotiateHeartbeat, backoffDelay, decoder } from './stomp-frames.js';

// The codec's API, re-exported so one import serves both.
export * from './stomp-frames.js';

const defaultTimers = {
  now: () => Date.now(),
  setTimeout: (f, ms) => setTimeout(f, ms),
  clearTimeout: (t) => clearTimeout(t),
  setInterval: (f, ms) => setInterval(f, ms),
  clearInterval: (t) => clearInterval(t),
};

/**
 * STOMP client.
 *
 * Options:
 *   protocols       WebSocket subprotocols offered (default SUBPROTOCOLS)
 *   acceptVersion   CONNECT accept-version (default '1.0,1.1,1.2')
 *   host            CONNECT host header (default: the URL's host name)
 *   login, passcode CONNECT credentials
 *   token           sent as 'Authorization: Bearer <token>' and as passcode (if none given)
 *   connectHeaders  extra CONNECT headers
 *   heartbeat       [cx, cy] offered in CONNECT (default [10000, 10000])
 *   tolerance       a server silent for tolerance × incoming interval is dropped (default 2)
 *   reconnect       false, or { initialDelay, maxDelay, factor, jitter, maxAttempts, stableAfter }
 *                   (default on; the backoff starts again once a connection stayed up
 *                   stableAfter ms, default 5000)
 *   receiptTimeout  ms before a receipt promise rejects (default 10000; 0: never)
 *   connectTimeout  ms from opening the socket to CONNECTED before the attempt is given up
 *                   and retried (default 10000; 0: never)
 *   WebSocket       WebSocket constructor (default globalThis.WebSocket)
 *   timers          { now, setTimeout, clearTimeout, setInterval, clearInterval } (tests)
 *
 * Events (on/off): 'frame-in' (frame), 'frame-out' (frame), 'heartbeat-in', 'heartbeat-out',
 *   'resume' ({subscription, recovered, from, position}: a re-subscription after a reconnect
 *   resumed from the last position seen; recovered false: messages were lost in between),
 *   'connected' (CONNECTED frame), 'message' (frame), 'receipt' (frame), 'error' (ERROR frame
 *   or Error), 'state' ({state, previous}), 'close' ({code, reason, wasClean}),
 *   'reconnect' ({attempt, delay}), 'heartbeat-timeout' ({silentFor}),
 *   'subscription-error' ({subscription, error}: the server refused a SUBSCRIBE; the
 *   subscription is dropped, not sent again after reconnects).
 * Every SUBSCRIBE asks for a receipt: its `x-position` is where the subscription resumes from
 * if no message comes before a reconnect, and an ERROR names the SUBSCRIBE it refused.
 * States: 'idle', 'connecting', 'connected', 'reconnecting', 'disconnecting', 'disconnected'.
 */
export class StompClient {
  constructor(url, options = {}) {
    this.url = url;
    this.options = {
      protocols: SUBPROTOCOLS,
      acceptVersion: '1.0,1.1,1.2',
      heartbeat: [10000, 10000],
      tolerance: 2,
      reconnect: {},
      receiptTimeout: 10000,
      connectTimeout: 10000,
      ...options,
    };
    this.timers = { ...defaultTimers, ...(options.timers || {}) };
    this.WebSocket = options.WebSocket || globalThis.WebSocket;
    this.state = 'idle';
    this.version = null;
    this.session = null;
    this.server = null;
    this.heartbeat = { outgoing: 0, incoming: 0 };
    this.subscriptions = new Map(); // id -> Subscription (re-subscribed after reconnect)
    this.receipts = new Map();      // receipt id -> {resolve, reject, timer}
    this.listeners = new Map();
    this.ws = null;
    this.attempt = 0;
    this._ids = 0;
    this._connectWaiters = [];
    this._userClosed = false;
    this._reconnectTimer = null;
    this._connectTimer = null;
    this._stableTimer = null;
    this._hbTimers = [];
    this.parser = new FrameParser({
      onFrame: (f) => this._onFrame(f),
      onHeartbeat: () => this._emit('heartbeat-in'),
    });
  }

  // --- events
  on(event, fn) {
    if (!this.listeners.has(event)) this.listeners.set(event, new Set());
    this.listeners.get(event).add(fn);
    return () => this.off(event, fn);
  }
  off(event, fn) { this.listeners.get(event)?.delete(fn); }
  _emit(event, arg) {
    for (const fn of [...(this.listeners.get(event) || [])]) {
      try { fn(arg); } catch (e) { if (event !== 'error') this._emit('error', e); }
    }
  }
  _setState(state) {
    if (state === this.state) return;
    const previous = this.state;
    this.state = state;
    this._emit('state', { state, previous });
  }

  get connected() { return this.state === 'connected'; }
  nextId(prefix = 'id') { return `${prefix}-${++this._ids}`; }

  // --- connection
  /**
   * Opens the WebSocket and sends CONNECT. Resolves with the CONNECTED frame. With
   * reconnect on, failed attempts are retried with backoff and the promise resolves on the
   * first success; it rejects if disconnect() is called first, if reconnect is off and the
   * attempt fails, or after reconnect.maxAttempts failures.
   */
  connect() {
    this._userClosed = false;
    const p = new Promise((resolve, reject) => this._connectWaiters.push({ resolve, reject }));
    if (this.state === 'connected') { this._settleConnect(null, this._lastConnected); return p; }
    if (this.state === 'connecting') return p;
    this.attempt = 0;
    this._open();
    return p;
  }

  _settleConnect(err, frame) {
    const waiters = this._connectWaiters;
    this._connectWaiters = [];
    for (const w of waiters) err ? w.reject(err) : w.resolve(frame);
  }

  _open() {
    this._clearReconnect();
    this._setState('connecting');
    this.parser.reset();
    this.parser.version = null;
    this.version = null;
    let ws;
    try {
      ws = new this.WebSocket(this.url, this.options.protocols);
    } catch (e) {
      this._emit('error', e);
      this._afterClose({ code: 1006, reason: String(e.message || e), wasClean: false });
      return;
    }
    this.ws = ws;
    ws.binaryType = 'arraybuffer';
    // A server (or proxy) that takes the connection and never answers: give up and retry.
    const limit = this.options.connectTimeout;
    if (limit > 0) {
      this._connectTimer = this.timers.setTimeout(() => {
        this._connectTimer = null;
        if (this.ws !== ws || this.state !== 'connecting') return;
        this._emit('error', new Error(`no CONNECTED within ${limit} ms`));
        this._closeSocket(4001, 'connect timeout');
      }, limit);
    }
    ws.onopen = () => { if (this.ws === ws) this._sendConnect(); };
    ws.onmessage = (ev) => { if (this.ws === ws) this._onData(ev.data); };
    ws.onerror = () => { /* a close event follows */ };
    ws.onclose = (ev) => {
      if (this.ws !== ws) return;
      this._afterClose({ code: ev?.code ?? 1006, reason: ev?.reason ?? '', wasClean: !!ev?.wasClean });
    };
  }

  _sendConnect() {
    const o = this.options;
    const headers = { 'accept-version': o.acceptVersion };
    headers.host = o.host ?? hostOf(this.url);
    headers['heart-beat'] = `${o.heartbeat[0]},${o.heartbeat[1]}`;
    if (o.login != null) headers.login = o.login;
    const passcode = o.passcode ?? (o.token ? o.token : null);
    if (passcode != null) headers.passcode = passcode;
    if (o.token) headers.Authorization = `Bearer ${o.token}`;
    Object.assign(headers, o.connectHeaders || {});
    // Until CONNECTED names the version, frames are read as the highest one offered: a server
    // escapes the ERROR of a refused CONNECT with the version it agreed (the console showed
    // `authentication failed\c token expired`).
    this.parser.version = highestVersion(o.acceptVersion);
    this._transmit(new Frame('CONNECT', headers));
  }

  _onData(data) {
    this._lastReceived = this.timers.now();
    try {
      this.parser.push(data);
    } catch (e) {
      this._emit('error', e);
      this._closeSocket(1002, 'STOMP protocol error');
    }
  }

  _onFrame(frame) {
    this._emit('frame-in', frame);
    switch (frame.command) {
      case 'CONNECTED': return this._onConnected(frame);
      case 'MESSAGE': {
        const sub = this.subscriptions.get(frame.headers.subscription);
        if (sub && sub.callback) {
          try { sub.callback(frame); } catch (e) { this._emit('error', e); }
        }
        // Where to resume from after a reconnect (Switchboard's per-destination history):
        // once the callback has had the message.
        if (sub && frame.headers['x-position']) sub.position = frame.headers['x-position'];
        return this._emit('message', frame);
      }
      case 'RECEIPT': {
        this._settleReceipt(frame.headers['receipt-id'], null, frame);
        return this._emit('receipt', frame);
      }
      case 'ERROR': {
        const rid = frame.headers['receipt-id'];
        const err = new Error(frame.headers.message || 'ERROR frame');
        err.frame = frame;
        if (rid) this._settleReceipt(rid, err);
        if (this.state === 'connecting') this._connectError = err;
        return this._emit('error', frame);
      }
      default:
        return undefined;
    }
  }

  _onConnected(frame) {
    this.version = frame.headers.version || '1.0';
    this.parser.version = this.version;
    this.session = frame.headers.session ?? null;
    this.server = frame.headers.server ?? null;
    this.heartbeat = negotiateHeartbeat(this.options.heartbeat, parseHeartbeat(frame.headers['heart-beat']));
    this._clearConnectTimer();
    // The backoff starts again only once the connection stayed up: a server that accepts and
    // then refuses (an ERROR after CONNECTED) must not be retried twice a second for ever.
    const stableAfter = this.options.reconnect?.stableAfter ?? 5000;
    this._stableTimer = this.timers.setTimeout(() => { this._stableTimer = null; this.attempt = 0; }, stableAfter);
    this._connectError = null;
    this._lastConnected = frame;
    this._setState('connected');
    this._startHeartbeats();
    // Re-subscribe (after a reconnect, or subscriptions made while disconnected). A
    // subscription that has seen a position resumes after it: the server replays what was
    // missed, then live messages, and the RECEIPT says whether nothing was lost ('resume').
    for (const sub of [...this.subscriptions.values()]) {
      const f = sub._frame(true);
      const resuming = f.headers['x-resume-from'];
      const receipt = this._subscribeFrame(sub, f, resuming ? this.nextId(`resume-${sub.id}`) : (sub._pending?.id ?? this.nextId(`sub-${sub.id}`)));
      const pending = sub._pending;
      sub._pending = null;
      receipt.then((r) => {
        pending?.resolve(r);
        if (!resuming) return;
        const recovered = r?.headers['x-recovered'] === 'true';
        this._emit('resume', { subscription: sub, recovered, from: resuming, position: r?.headers['x-position'] });
      }, (e) => {
        pending?.reject(e);
        /* connection lost again: the next CONNECTED resumes */
      });
    }
    this._emit('connected', frame);
    this._settleConnect(null, frame);
  }

  _startHeartbeats() {
    this._stopHeartbeats();
    const t = this.timers;
    const now = t.now();
    this._lastSent = now;
    this._lastReceived = now;
    const { outgoing, incoming } = this.heartbeat;
    if (outgoing > 0) {
      this._hbTimers.push(t.setInterval(() => {
        if (this.state !== 'connected') return;
        if (t.now() - this._lastSent >= outgoing * 0.9) this._sendHeartbeat();
      }, Math.max(10, Math.floor(outgoing / 2))));
    }
    if (incoming > 0) {
      const limit = incoming * this.options.tolerance;
      this._hbTimers.push(t.setInterval(() => {
        const silentFor = t.now() - this._lastReceived;
        if (silentFor > limit) {
          this._emit('heartbeat-timeout', { silentFor });
          this._emit('error', new Error(`server silent for ${silentFor} ms (heart-beat ${incoming} ms)`));
          this._closeSocket(4000, 'heart-beat timeout');
        }
      }, Math.max(10, Math.floor(incoming / 2))));
    }
  }

  _stopHeartbeats() {
    for (const h of this._hbTimers) this.timers.clearInterval(h);
    this._hbTimers = [];
  }

  _sendHeartbeat() {
    if (!this.ws || this.ws.readyState !== 1) return;
    this.ws.send('\n');
    this._lastSent = this.timers.now();
    this._emit('heartbeat-out');
  }

  _closeSocket(code, reason) {
    const ws = this.ws;
    if (!ws) return;
    try { ws.close(code >= 3000 || code === 1000 ? code : 1000, reason); } catch { /* ignore */ }
    // Do not wait for the close handshake: treat the connection as gone now.
    this.ws = null;
    this._afterClose({ code, reason, wasClean: false });
  }

  _clearConnectTimer() {
    if (this._connectTimer != null) this.timers.clearTimeout(this._connectTimer);
    this._connectTimer = null;
  }

  _afterClose(info) {
    this.ws = null;
    this._stopHeartbeats();
    this._clearConnectTimer();
    if (this._stableTimer != null) this.timers.clearTimeout(this._stableTimer);
    this._stableTimer = null;
    this._emit('close', info);
    const err = this._connectError || new Error(`connection closed (${info.code}${info.reason ? ' ' + info.reason : ''})`);
    this._connectError = null;
    for (const id of [...this.receipts.keys()]) {
      this._settleReceipt(id, new Error(`connection lost before receipt ${id}: the outcome is unknown (the frame may have been processed)`));
    }
    const rc = this.options.reconnect;
    const maxAttempts = rc && rc.maxAttempts != null ? rc.maxAttempts : Infinity;
    if (this._userClosed || !rc || this.attempt >= maxAttempts) {
      this._setState('disconnected');
      this._settleConnect(this._userClosed ? new Error('disconnected') : err);
      return;
    }
    const delay = backoffDelay(this.attempt, rc);
    this.attempt += 1;
    this._setState('reconnecting');
    this._emit('reconnect', { attempt: this.attempt, delay });
    this._reconnectTimer = this.timers.setTimeout(() => { this._reconnectTimer = null; this._open(); }, delay);
  }

  _clearReconnect() {
    if (this._reconnectTimer != null) this.timers.clearTimeout(this._reconnectTimer);
    this._reconnectTimer = null;
  }

  /**
   * Sends DISCONNECT (with a receipt, waiting up to `timeout` ms for it) and closes the
   * WebSocket. Stops reconnecting. Subscriptions are forgotten unless keepSubscriptions.
   */
  async disconnect({ timeout = 3000, keepSubscriptions = false } = {}) {
    this._userClosed = true;
    this._clearReconnect();
    if (!keepSubscriptions) this.subscriptions.clear();
    if (this.state === 'connected' && this.ws) {
      this._setState('disconnecting');
      const receipt = this._receiptPromise(this.nextId('disconnect'), timeout);
      this._transmit(new Frame('DISCONNECT', { receipt: receipt.id }));
      try { await receipt.promise; } catch { /* close anyway */ }
    }
    if (this.ws) this._closeSocket(1000, 'disconnect');
    else { this._stopHeartbeats(); this._setState('disconnected'); this._settleConnect(new Error('disconnected')); }
  }

  // --- sending
  _transmit(frame) {
    const ws = this.ws;
    if (!ws || ws.readyState !== 1) throw new Error(`not connected (${this.state})`);
    const version = frame.command === 'CONNECT' ? '1.2' : (this.version || '1.0');
    const bytes = encodeFrame(frame, version);
    ws.send(frame.isText ? decoder.decode(bytes) : bytes);
    this._lastSent = this.timers.now();
    this._emit('frame-out', frame);
  }

  _receiptPromise(id, timeout = this.options.receiptTimeout) {
    let entry;
    const promise = new Promise((resolve, reject) => { entry = { resolve, reject, timer: null }; });
    if (timeout > 0) entry.timer = this.timers.setTimeout(() => this._settleReceipt(id, new Error(`no receipt ${id} within ${timeout} ms`)), timeout);
    this.receipts.set(id, entry);
    promise.catch(() => {}); // callers that ignore it must not cause unhandled rejections
    return { id, promise };
  }

  _settleReceipt(id, err, frame) {
    const entry = this.receipts.get(id);
    if (!entry) return;
    this.receipts.delete(id);
    if (entry.timer != null) this.timers.clearTimeout(entry.timer);
    err ? entry.reject(err) : entry.resolve(frame);
  }

  /**
   * Sends any frame. With `receipt` (true, or a receipt id) resolves with the RECEIPT frame,
   * else resolves at once. A `receipt` header in `headers` is honoured the same way.
   */
  sendFrame(command, headers = {}, body = '', { receipt = false } = {}) {
    headers = { ...headers };
    let wait = null;
    const rid = receipt === true ? this.nextId('receipt') : (receipt || headers.receipt || null);
    if (rid) { headers.receipt = rid; wait = this._receiptPromise(String(rid)); }
    try {
      this._transmit(new Frame(command, headers, body));
    } catch (e) {
      if (wait) this._settleReceipt(wait.id, e);
      return Promise.reject(e);
    }
    return wait ? wait.promise : Promise.resolve(null);
  }

  /** SEND. body: string (text) or Uint8Array/ArrayBuffer (binary). */
  send(destination, body = '', headers = {}, opts = {}) {
    return this.sendFrame('SEND', { destination, ...headers }, body, opts);
  }

  /**
   * SUBSCRIBE. Returns a Subscription {id, destination, headers, receipt, unsubscribe()}.
   * headers may set id and ack ('auto' | 'client' | 'client-individual'). If not connected
   * the SUBSCRIBE is sent on the next CONNECTED; it is re-sent after every reconnect.
   */
  subscribe(destination, callback, headers = {}, opts = {}) {
    const id = headers.id || this.nextId('sub');
    const { receipt, ...rest } = headers;
    const asked = opts.receipt || receipt;
    const rid = asked && asked !== true ? String(asked) : this.nextId(`sub-${id}`);
    const sub = new Subscription(this, id, destination, callback, rest);
    this.subscriptions.set(id, sub);
    if (this.connected) {
      sub.receipt = this._subscribeFrame(sub, sub._frame(), rid);
    } else {
      // Sent on CONNECTED, with this receipt: the promise settles then.
      let pending;
      sub.receipt = new Promise((resolve, reject) => { pending = { id: rid, resolve, reject }; });
      sub.receipt.catch(() => {});
      sub._pending = pending;
    }
    return sub;
  }

  /** Sends a SUBSCRIBE with receipt `rid`: the RECEIPT's x-position is where the subscription
   *  resumes from if no message comes; an ERROR for it drops the subscription. */
  _subscribeFrame(sub, frame, rid) {
    const receipt = this.sendFrame(frame.command, frame.headers, '', { receipt: rid });
    receipt.then((r) => {
      if (r && sub.position == null && r.headers['x-position']) sub.position = r.headers['x-position'];
    }, (e) => {
      if (!e?.frame || this.subscriptions.get(sub.id) !== sub) return;
      this.subscriptions.delete(sub.id);
      this._emit('subscription-error', { subscription: sub, error: e });
    });
    return receipt;
  }

  /** UNSUBSCRIBE by id (or Subscription). */
  unsubscribe(id, headers = {}, opts = {}) {
    if (id instanceof Subscription) id = id.id;
    const sub = this.subscriptions.get(id);
    this.subscriptions.delete(id);
    if (!this.connected) return Promise.resolve(null);
    const h = { id, ...headers };
    if (this.version === '1.0' && sub) h.destination = sub.destination;
    return this.sendFrame('UNSUBSCRIBE', h, '', opts);
  }

  _ackHeaders(message, headers) {
    if (typeof message === 'string') return { id: message, ...headers };
    const m = message.headers;
    if (this.version === '1.2') return { id: m.ack ?? m['message-id'], ...headers };
    if (this.version === '1.1') return { 'message-id': m['message-id'], subscription: m.subscription, ...headers };
    return { 'message-id': m['message-id'], ...headers };
  }
  /** ACK a MESSAGE frame (or an ack id string); headers may carry `transaction`. */
  ack(message, headers = {}, opts = {}) { return this.sendFrame('ACK', this._ackHeaders(message, headers), '', opts); }
  /** NACK a MESSAGE frame (1.1+). */
  nack(message, headers = {}, opts = {}) { return this.sendFrame('NACK', this._ackHeaders(message, headers), '', opts); }

  /** BEGIN a transaction; returns {id, commit(), abort()}. */
  begin(id = this.nextId('tx'), opts = {}) {
    const receipt = this.sendFrame('BEGIN', { transaction: id }, '', opts);
    return { id, receipt, commit: (o) => this.commit(id, o), abort: (o) => this.abort(id, o) };
  }
  commit(id, opts = {}) { return this.sendFrame('COMMIT', { transaction: id }, '', opts); }
  abort(id, opts = {}) { return this.sendFrame('ABORT', { transaction: id }, '', opts); }
}

export class Subscription {
  constructor(client, id, destination, callback, headers) {
    this.client = client;
    this.id = id;
    this.destination = destination;
    this.callback = callback;
    this.headers = headers;
    this.receipt = null;
    /** Not sent yet (made while disconnected): the receipt it will ask for, and its promise's settlers. */
    this._pending = null;
    /** The last `x-position` seen (a message's, or the subscribe RECEIPT's): where to resume. */
    this.position = null;
  }
  /** The SUBSCRIBE frame; with `resume`, from the last position seen (one destination only). */
  _frame(resume = false) {
    const headers = { ...this.headers, id: this.id, destination: this.destination };
    // Resumed from the last position seen: an x-last asked for history the first time only.
    if (resume && this.position && !this.destination.includes('*')) {
      delete headers['x-last'];
      headers['x-resume-from'] = this.position;
    }
    return new Frame('SUBSCRIBE', headers);
  }
  unsubscribe(headers, opts) { return this.client.unsubscribe(this.id, headers, opts); }
}

function hostOf(url) {
  try { return new URL(url).hostname; } catch { return 'localhost'; }
}

/** The highest of the STOMP versions in an accept-version list ('1.0,1.1,1.2' → '1.2'). */
export function highestVersion(list) {
  const offered = String(list || '1.0').split(',').map(v => v.trim()).filter(v => /^1\.[0-9]$/.test(v));
  return offered.sort().pop() || '1.0';
}
