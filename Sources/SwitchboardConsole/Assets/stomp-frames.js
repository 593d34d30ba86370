// stomp-frames.js — the STOMP 1.0/1.1/1.2 codec used by stomp.js: frames, header escaping,
// an incremental parser (split and batched frames, content-length, NUL, heart-beat EOLs),
// heart-beat negotiation and reconnect backoff. No I/O.

export const VERSIONS = ['1.0', '1.1', '1.2'];
export const SUBPROTOCOLS = ['v12.stomp', 'v11.stomp', 'v10.stomp'];

const LF = 10, CR = 13, NUL = 0;
const encoder = new TextEncoder();
export const decoder = new TextDecoder('utf-8'); // lenient: invalid bytes become U+FFFD

export class StompProtocolError extends Error {
  constructor(message) { super(message); this.name = 'StompProtocolError'; }
}

// ---------------------------------------------------------------------------------------
// Header escaping

/** Whether headers of `command` are escaped in `version` (1.1+, but never CONNECT/CONNECTED). */
export function escapesHeaders(command, version) {
  if (!version || version === '1.0') return false;
  return command !== 'CONNECT' && command !== 'CONNECTED' && command !== 'STOMP';
}

/** Escapes a header key or value (STOMP 1.1+: backslash, LF, colon; 1.2 adds CR). */
export function escapeHeader(value, version = '1.2') {
  let out = '';
  for (const ch of String(value)) {
    switch (ch) {
      case '\\': out += '\\\\'; break;
      case '\n': out += '\\n'; break;
      case ':': out += '\\c'; break;
      case '\r': out += version === '1.1' ? ch : '\\r'; break;
      default: out += ch;
    }
  }
  return out;
}

/** Reverses escapeHeader; an undefined escape sequence throws StompProtocolError. */
export function unescapeHeader(value, version = '1.2') {
  if (!value.includes('\\')) return value;
  let out = '';
  for (let i = 0; i < value.length; i++) {
    const ch = value[i];
    if (ch !== '\\') { out += ch; continue; }
    const next = value[++i];
    if (next === '\\') out += '\\';
    else if (next === 'n') out += '\n';
    else if (next === 'c') out += ':';
    else if (next === 'r' && version !== '1.1') out += '\r';
    else throw new StompProtocolError(`undefined escape sequence \\${next ?? ''} in header`);
  }
  return out;
}

// ---------------------------------------------------------------------------------------
// Frames

function toBytes(body) {
  if (body == null) return new Uint8Array(0);
  if (typeof body === 'string') return encoder.encode(body);
  if (body instanceof Uint8Array) return body;
  if (body instanceof ArrayBuffer) return new Uint8Array(body);
  if (ArrayBuffer.isView(body)) return new Uint8Array(body.buffer, body.byteOffset, body.byteLength);
  return encoder.encode(String(body));
}

/**
 * A STOMP frame. `headers` is an object where the first of repeated headers wins;
 * `headerList` keeps every [name, value] pair in order; `binaryBody` holds the body bytes
 * and `body` their UTF-8 text.
 */
export class Frame {
  constructor(command, headers = {}, body = '', headerList = null) {
    this.command = command;
    this.headerList = headerList ?? Object.entries(headers).filter(([, v]) => v !== undefined && v !== null)
      .map(([k, v]) => [k, String(v)]);
    this.headers = {};
    for (const [k, v] of this.headerList) if (!(k in this.headers)) this.headers[k] = v;
    this.binaryBody = toBytes(body);
    this._text = typeof body === 'string' ? body : null;
  }
  get body() {
    if (this._text === null) this._text = decoder.decode(this.binaryBody);
    return this._text;
  }
  /** Whether the body is valid UTF-8 (it can then go out as a WebSocket text message). */
  get isText() {
    if (typeof this._text === 'string') return true;
    try { new TextDecoder('utf-8', { fatal: true }).decode(this.binaryBody); return true; } catch { return false; }
  }
}

/**
 * Encodes a frame to bytes. Adds content-length for a non-empty body unless the frame
 * already has one or `options.contentLength === false`.
 */
export function encodeFrame(frame, version = '1.2', options = {}) {
  const escape = escapesHeaders(frame.command, version);
  const body = frame.binaryBody;
  let head = frame.command + '\n';
  let hasLength = false;
  for (const [k, v] of frame.headerList) {
    if (k === 'content-length') hasLength = true;
    head += (escape ? escapeHeader(k, version) : k) + ':' + (escape ? escapeHeader(v, version) : v) + '\n';
  }
  if (!hasLength && body.length > 0 && options.contentLength !== false) head += `content-length:${body.length}\n`;
  head += '\n';
  const headBytes = encoder.encode(head);
  const out = new Uint8Array(headBytes.length + body.length + 1);
  out.set(headBytes, 0);
  out.set(body, headBytes.length);
  out[out.length - 1] = NUL;
  return out;
}

/** Encodes a frame to a string (for a WebSocket text message; the body must be text). */
export function encodeFrameText(frame, version = '1.2', options = {}) {
  return decoder.decode(encodeFrame(frame, version, options));
}

/**
 * Incremental STOMP frame parser. Feed it WebSocket message data (string, ArrayBuffer or
 * Uint8Array) with push(); frames may be split across pushes and a push may carry several
 * frames. EOLs between frames are heart-beats. Calls onFrame(frame) and onHeartbeat().
 * Throws StompProtocolError on malformed input (the connection should then be closed).
 */
export class FrameParser {
  constructor({ onFrame = () => {}, onHeartbeat = () => {}, version = null, maxFrameBytes = 16 * 1024 * 1024 } = {}) {
    this.onFrame = onFrame;
    this.onHeartbeat = onHeartbeat;
    this.version = version; // set once CONNECTED is known; decides header unescaping
    this.maxFrameBytes = maxFrameBytes;
    this.reset();
  }

  reset() {
    this.buf = new Uint8Array(0);
    this.start = 0;  // first unconsumed byte
    this.scan = 0;   // resume point of the current search
    this.pending = null; // {command, headerList, headers, bodyStart, length}
  }

  push(data) {
    const chunk = typeof data === 'string' ? encoder.encode(data) : toBytes(data);
    if (chunk.length === 0) return;
    const rest = this.buf.length - this.start;
    const next = new Uint8Array(rest + chunk.length);
    next.set(this.buf.subarray(this.start), 0);
    next.set(chunk, rest);
    if (this.pending) this.pending.bodyStart -= this.start;
    this.scan -= this.start;
    this.buf = next;
    this.start = 0;
    while (this._step()) { /* keep parsing */ }
  }

  // One unit of progress: a heart-beat EOL, a frame head, or a frame body. False if more
  // bytes are needed.
  _step() {
    const buf = this.buf;
    if (!this.pending) {
      // Heart-beats (EOL, CRLF) between frames.
      while (this.start < buf.length) {
        if (buf[this.start] === LF) { this.start++; this.onHeartbeat(); continue; }
        if (buf[this.start] === CR) {
          if (this.start + 1 >= buf.length) return false;
          if (buf[this.start + 1] === LF) { this.start += 2; this.onHeartbeat(); continue; }
          throw new StompProtocolError('CR not followed by LF between frames');
        }
        break;
      }
      if (this.start >= buf.length) { this.scan = this.start; return false; }
      // Frame head: up to an empty line.
      let i = Math.max(this.scan, this.start);
      let headEnd = -1, bodyStart = -1;
      for (; i < buf.length; i++) {
        if (buf[i] !== LF) continue;
        if (i + 1 < buf.length && buf[i + 1] === LF) { headEnd = i; bodyStart = i + 2; break; }
        if (i + 2 < buf.length && buf[i + 1] === CR && buf[i + 2] === LF) { headEnd = i; bodyStart = i + 3; break; }
      }
      if (headEnd < 0) {
        this.scan = Math.max(this.start, buf.length - 2);
        if (buf.length - this.start > this.maxFrameBytes) throw new StompProtocolError('frame head too large');
        return false;
      }
      const lines = decoder.decode(buf.subarray(this.start, headEnd)).split('\n')
        .map(l => (l.endsWith('\r') ? l.slice(0, -1) : l));
      const command = lines.shift();
      if (!command) throw new StompProtocolError('empty command');
      const unescape = escapesHeaders(command, this.version);
      const headerList = [];
      for (const line of lines) {
        const colon = line.indexOf(':');
        if (colon < 0) throw new StompProtocolError(`header line without ':' in ${command}`);
        let k = line.slice(0, colon), v = line.slice(colon + 1);
        if (unescape) { k = unescapeHeader(k, this.version); v = unescapeHeader(v, this.version); }
        headerList.push([k, v]);
      }
      const first = headerList.find(([k]) => k === 'content-length');
      let length = -1;
      if (first) {
        if (!/^\d+$/.test(first[1].trim())) throw new StompProtocolError(`invalid content-length '${first[1]}'`);
        length = parseInt(first[1].trim(), 10);
        if (length > this.maxFrameBytes) throw new StompProtocolError('frame body too large');
      }
      this.pending = { command, headerList, bodyStart, length };
      this.start = bodyStart;
      this.scan = bodyStart;
    }
    // Frame body: content-length bytes then NUL, or up to the first NUL.
    const p = this.pending;
    let bodyEnd;
    if (p.length >= 0) {
      if (buf.length < p.bodyStart + p.length + 1) return false;
      bodyEnd = p.bodyStart + p.length;
      if (buf[bodyEnd] !== NUL) throw new StompProtocolError(`frame ${p.command} body not followed by NUL (content-length ${p.length})`);
    } else {
      bodyEnd = buf.indexOf(NUL, this.scan);
      if (bodyEnd < 0) {
        this.scan = buf.length;
        if (buf.length - p.bodyStart > this.maxFrameBytes) throw new StompProtocolError('frame body too large');
        return false;
      }
    }
    const body = buf.slice(p.bodyStart, bodyEnd);
    this.pending = null;
    this.start = bodyEnd + 1;
    this.scan = this.start;
    this.onFrame(new Frame(p.command, undefined, body, p.headerList));
    return true;
  }
}

// ---------------------------------------------------------------------------------------
// Heart-beats

/** Parses a heart-beat header "x,y" into [x, y] (missing or invalid: [0, 0]). */
export function parseHeartbeat(value) {
  if (!value) return [0, 0];
  const m = /^\s*(\d+)\s*,\s*(\d+)\s*$/.exec(value);
  return m ? [parseInt(m[1], 10), parseInt(m[2], 10)] : [0, 0];
}

/**
 * The STOMP heart-beat arithmetic. client = [cx, cy] (CONNECT), server = [sx, sy]
 * (CONNECTED). outgoing: the client sends every max(cx, sy) ms (0 if either is 0);
 * incoming: the server sends every max(sx, cy) ms (0 if either is 0).
 */
export function negotiateHeartbeat(client, server) {
  const [cx, cy] = client, [sx, sy] = server;
  return {
    outgoing: cx === 0 || sy === 0 ? 0 : Math.max(cx, sy),
    incoming: sx === 0 || cy === 0 ? 0 : Math.max(sx, cy),
  };
}

/** Delay before reconnect attempt `attempt` (0-based): initial × factor^attempt, capped, ± jitter. */
export function backoffDelay(attempt, { initialDelay = 500, maxDelay = 15000, factor = 2, jitter = 0.2 } = {}, random = Math.random) {
  const base = Math.min(maxDelay, initialDelay * Math.pow(factor, attempt));
  return Math.round(base * (1 - jitter + 2 * jitter * random()));
}

// ---------------------------------------------------------------------------------------
// Client
