// The Switchboard web console: a STOMP client (stomp.js) plus the gateway's HTTP API.
import { StompClient } from './stomp.js';
import { $, el, timeStamp } from './dom.js';
import { addLog, clearLog, info, logEntries, logFrame, rerenderLog } from './frame-log.js';

const HEALTH_EVERY_MS = 2000;
const QUICK_TIMEOUT_MS = 5000;
// Counters the console turns into rates: read from GET /metrics (Prometheus text, summed
// over labels) when the gateway has it, else from /health if it reports them.
const RATE_COUNTERS = [
  ['messagesDelivered', 'delivered', 'switchboard_messages_delivered_total'],
  ['framesIn', 'frames in', 'switchboard_frames_in_total'],
  ['framesOut', 'frames out', 'switchboard_frames_out_total'],
  ['redisPubsubIn', 'redis in', 'switchboard_redis_pubsub_messages_in_total'],
  ['sessionErrors', 'errors', 'switchboard_session_errors_total'],
];

const state = {
  client: null,
  health: null,
  prevCounters: null,   // {t, values}
  subCounts: new Map(), // subscription id -> messages received
  reconnectInfo: null,
};

// ---------------------------------------------------------------------------------------
// Helpers

function defaultUrl() {
  const proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
  return `${proto}//${location.host || 'localhost:8080'}/stomp`;
}

function setResult(node, text, kind = '') {
  node.textContent = text;
  node.className = 'result' + (kind ? ' ' + kind : '');
}

function parseHeartbeatInput(text) {
  const m = /^\s*(\d+)\s*,\s*(\d+)\s*$/.exec(text || '');
  return m ? [parseInt(m[1], 10), parseInt(m[2], 10)] : [10000, 10000];
}

function remember(key, value) { try { localStorage.setItem('switchboard.console.' + key, value); } catch { /* private mode */ } }
function recall(key) { try { return localStorage.getItem('switchboard.console.' + key); } catch { return null; } }

// ---------------------------------------------------------------------------------------
// Connection

function setStatus(kind, text) {
  const s = $('status');
  s.className = `status state-${kind}`;
  s.dataset.state = kind;
  $('status-text').textContent = text;
  s.title = text;
}

function ms(v) { return !v ? 'off' : v % 1000 === 0 ? `${v / 1000}s` : `${v}ms`; }

function describeConnected(c) {
  const hb = c.heartbeat;
  return `connected · STOMP ${c.version} · heart-beat ↑${ms(hb.outgoing)} ↓${ms(hb.incoming)}`;
}

function describeConnectedLong(c) {
  const hb = c.heartbeat;
  return `STOMP ${c.version}, session ${c.session ?? '?'}, server ${c.server ?? '?'}; heart-beat: client sends every ${ms(hb.outgoing)}, server every ${ms(hb.incoming)}`;
}

function showError(message) {
  $('error-text').textContent = message;
  $('error-banner').hidden = false;
}

function updateConnectButton() {
  const c = state.client;
  const active = c && !['idle', 'disconnected'].includes(c.state);
  const btn = $('connect-btn');
  btn.textContent = active ? 'Disconnect' : 'Connect';
  btn.className = active ? 'danger' : 'primary';
  for (const id of ['url', 'token', 'heartbeat']) $(id).disabled = !!active;
}

function connect() {
  const url = $('url').value.trim() || defaultUrl();
  remember('url', url);
  remember('heartbeat', $('heartbeat').value);
  const token = $('token').value;
  const client = new StompClient(url, {
    token: token || undefined,
    heartbeat: parseHeartbeatInput($('heartbeat').value),
    reconnect: { initialDelay: 500, maxDelay: 15000, factor: 2, jitter: 0.2 },
  });
  // Keep the console's subscriptions across Connect/Disconnect.
  if (state.client) {
    for (const sub of state.client.subscriptions.values()) {
      client.subscribe(sub.destination, sub.callback, { ...sub.headers, id: sub.id }).position = sub.position;
    }
  }
  state.client = client;
  client.on('resume', ({ subscription, recovered, from }) => info(recovered
    ? `${subscription.destination}: resumed after ${from}, nothing missed`
    : `${subscription.destination}: resumed after ${from}, but messages were lost (history trimmed or restarted)`, !recovered));
  client.on('frame-in', (f) => { logFrame('in', f); });
  client.on('frame-out', (f) => { logFrame('out', f); });
  client.on('heartbeat-in', () => { if ($('log-heartbeats').checked) addLog({ dir: 'in', command: 'HB', summary: 'EOL' }); });
  client.on('heartbeat-out', () => { if ($('log-heartbeats').checked) addLog({ dir: 'out', command: 'HB', summary: 'EOL' }); });
  client.on('error', (e) => {
    if (e && e.command === 'ERROR') showError(e.headers.message || 'ERROR frame');
    else if (e) info(`client error: ${e.message || e}`, true);
  });
  client.on('heartbeat-timeout', ({ silentFor }) => info(`server silent for ${silentFor} ms: closing and reconnecting`, true));
  client.on('close', ({ code, reason }) => info(`WebSocket closed (${code}${reason ? ', ' + reason : ''})`, code !== 1000));
  client.on('reconnect', ({ attempt, delay }) => {
    state.reconnectInfo = { attempt, at: Date.now() + delay };
    info(`reconnecting in ${(delay / 1000).toFixed(1)} s (attempt ${attempt})`);
  });
  client.on('state', ({ state: s }) => {
    if (s === 'connected') { setStatus('connected', describeConnected(client)); $('status').title = describeConnectedLong(client); }
    else if (s === 'connecting') setStatus('connecting', `connecting to ${url}…`);
    else if (s === 'reconnecting') setStatus('reconnecting', `reconnecting (attempt ${state.reconnectInfo?.attempt ?? 1})…`);
    else if (s === 'disconnecting') setStatus('connecting', 'disconnecting…');
    else if (s === 'disconnected') setStatus('disconnected', 'disconnected');
    updateConnectButton();
    renderSubs();
  });
  info(`connecting to ${url}${token ? ' with a token' : ''}`);
  client.connect().catch(() => { /* reported through events */ });
  updateConnectButton();
}

async function disconnect() {
  const c = state.client;
  if (!c) return;
  await c.disconnect({ keepSubscriptions: true });
  info('disconnected by the user');
}

// ---------------------------------------------------------------------------------------
// Subscriptions

function onSubMessage(frame) {
  const id = frame.headers.subscription;
  state.subCounts.set(id, (state.subCounts.get(id) || 0) + 1);
  const count = document.querySelector(`#sub-list li[data-id="${CSS.escape(id)}"] .count`);
  if (count) count.textContent = String(state.subCounts.get(id));
}

function subscribe(destination, ack = 'auto', opts = {}) {
  const c = state.client;
  if (!c) throw new Error('connect first');
  const headers = ack && ack !== 'auto' ? { ack } : {};
  const sub = c.subscribe(destination, (frame) => {
    onSubMessage(frame);
    if (ack === 'client' || ack === 'client-individual') state.client.ack(frame).catch(() => { /* disconnected */ });
  }, headers, opts);
  renderSubs();
  return sub;
}

function renderSubs() {
  const list = $('sub-list');
  list.textContent = '';
  const subs = state.client ? [...state.client.subscriptions.values()] : [];
  if (!subs.length) { list.append(el('li', { class: 'empty', text: 'no subscriptions' })); return; }
  const live = state.client?.connected;
  for (const sub of subs) {
    list.append(el('li', { 'data-id': sub.id, 'data-destination': sub.destination },
      el('span', { class: 'dest', text: sub.destination, title: sub.destination }),
      el('span', { class: 'meta', text: `${sub.id}${sub.headers.ack ? ' · ' + sub.headers.ack : ''}${live ? '' : ' · pending'}` }),
      el('span', { class: 'count', title: 'messages received', text: String(state.subCounts.get(sub.id) || 0) }),
      el('button', { type: 'button', class: 'link unsub', text: 'Unsubscribe', onclick: () => {
        state.client.unsubscribe(sub.id).catch((e) => info(`unsubscribe failed: ${e.message}`, true));
        renderSubs();
      } })));
  }
}

function findSub(destination) {
  if (!state.client) return null;
  for (const s of state.client.subscriptions.values()) if (s.destination === destination) return s;
  return null;
}

// ---------------------------------------------------------------------------------------
// SEND

function addHeaderRow(k = '', v = '') {
  const row = $('kv-row').content.firstElementChild.cloneNode(true);
  row.querySelector('.k').value = k;
  row.querySelector('.v').value = v;
  row.querySelector('.rm').addEventListener('click', () => row.remove());
  $('send-headers').append(row);
  return row;
}

function sendHeaders() {
  const headers = {};
  for (const row of $('send-headers').querySelectorAll('.kv')) {
    const k = row.querySelector('.k').value;
    if (k) headers[k] = row.querySelector('.v').value;
  }
  return headers;
}

async function doSend(ev) {
  ev.preventDefault();
  const result = $('send-result');
  const c = state.client;
  if (!c || !c.connected) return setResult(result, 'not connected', 'bad');
  const destination = $('send-dest').value.trim();
  const wantReceipt = $('send-receipt').checked;
  setResult(result, wantReceipt ? 'waiting for RECEIPT…' : '', wantReceipt ? 'busy' : '');
  const t0 = performance.now();
  try {
    const r = await c.send(destination, $('send-body').value, sendHeaders(), { receipt: wantReceipt });
    setResult(result, r ? `RECEIPT ${r.headers['receipt-id']} in ${Math.round(performance.now() - t0)} ms` : 'sent', 'ok');
  } catch (e) {
    setResult(result, e.message, 'bad');
  }
}

// ---------------------------------------------------------------------------------------
// HTTP API

async function postJSON(path, payload) {
  addLog({ dir: 'out', command: 'HTTP', summary: `POST ${path}`, body: JSON.stringify(payload) });
  let res, text;
  try {
    res = await fetch(path, { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(payload) });
    text = await res.text();
  } catch (e) {
    addLog({ dir: 'in', command: 'HTTP', summary: `POST ${path} failed: ${e.message}`, extraClass: 'warn' });
    throw e;
  }
  let json = null;
  try { json = JSON.parse(text); } catch { /* not JSON */ }
  addLog({ dir: 'in', command: 'HTTP', summary: `${res.status} ${res.statusText || ''} ← POST ${path}`.replace('  ', ' '), body: text });
  return { status: res.status, ok: res.ok, json, text };
}

async function doPublish(ev) {
  ev.preventDefault();
  const result = $('api-result');
  const payload = { topic: $('api-topic').value.trim(), message: $('api-message').value };
  const ctype = $('api-ctype').value.trim();
  if (ctype) payload.contentType = ctype;
  setResult(result, 'publishing…', 'busy');
  try {
    const r = await postJSON('/api/notification', payload);
    if (r.ok && r.json) setResult(result, `published ${r.json.id} to ${r.json.topic}`, 'ok');
    else setResult(result, `HTTP ${r.status}: ${r.json?.error ?? r.text}${r.json?.field ? ` (field ${r.json.field})` : ''}`, 'bad');
  } catch (e) {
    setResult(result, `request failed: ${e.message}`, 'bad');
  }
}

// ---------------------------------------------------------------------------------------
// Seed tests

function waitForMessage(destination, predicate = () => true, timeout = QUICK_TIMEOUT_MS) {
  const c = state.client;
  let off, timer;
  const promise = new Promise((resolve, reject) => {
    off = c.on('message', (f) => { if (f.headers.destination === destination && predicate(f)) resolve(f); });
    timer = setTimeout(() => reject(new Error(`no MESSAGE on ${destination} within ${timeout / 1000} s`)), timeout);
  });
  promise.finally(() => { off(); clearTimeout(timer); }).catch(() => {});
  return promise;
}

async function ensureSubscribed(destination) {
  const existing = findSub(destination);
  if (existing) return existing;
  const sub = subscribe(destination, 'auto', { receipt: true });
  await sub.receipt;
  return sub;
}

async function runQuick(button, resultNode, fn) {
  const c = state.client;
  if (!c || !c.connected) { setResult(resultNode, 'connect first', 'bad'); return; }
  button.disabled = true;
  setResult(resultNode, 'running…', 'busy');
  const t0 = performance.now();
  try {
    const text = await fn();
    setResult(resultNode, `✓ ${text} (${Math.round(performance.now() - t0)} ms)`, 'ok');
  } catch (e) {
    setResult(resultNode, `✗ ${e.message}`, 'bad');
  } finally {
    button.disabled = false;
    updateRedisButton();
  }
}

function quickApi() {
  return runQuick($('qt-api'), $('qt-api-result'), async () => {
    await ensureSubscribed('/topic/toast');
    const got = waitForMessage('/topic/toast', (f) => f.body === 'testing API endpoint');
    const r = await postJSON('/api/notification', { topic: '/topic/toast', message: 'testing API endpoint' });
    if (!r.ok) throw new Error(`API answered HTTP ${r.status}: ${r.json?.error ?? r.text}`);
    const m = await got;
    return `MESSAGE "${m.body}" on /topic/toast`;
  });
}

function quickRedis() {
  return runQuick($('qt-redis'), $('qt-redis-result'), async () => {
    if (state.health?.engine !== 'redis') throw new Error(`needs Redis (engine: ${state.health?.engine ?? 'unknown'})`);
    await ensureSubscribed('/topic/greetings');
    const got = waitForMessage('/topic/greetings');
    const r = await postJSON('/api/console/redis-publish', { channel: 'GREETING_CHANNEL_INBOUND', message: '"Test Message from Backend PubSub"' });
    if (r.status === 404 || r.status === 405) throw new Error('this gateway has no POST /api/console/redis-publish endpoint');
    if (!r.ok) throw new Error(`HTTP ${r.status}: ${r.json?.error ?? r.text}`);
    const m = await got;
    return `MESSAGE ${JSON.stringify(m.body)} on /topic/greetings`;
  });
}

function quickApp() {
  return runQuick($('qt-app'), $('qt-app-result'), async () => {
    await ensureSubscribed('/topic/greetings');
    const got = waitForMessage('/topic/greetings');
    await state.client.send('/app/greet', 'Console', { 'content-type': 'text/plain' }, { receipt: true });
    const m = await got;
    return `RECEIPT, then "${m.body}"`;
  });
}

function updateRedisButton() {
  const redis = state.health?.engine === 'redis';
  const btn = $('qt-redis');
  btn.disabled = !redis;
  btn.title = redis ? 'PUBLISH GREETING_CHANNEL_INBOUND through the gateway; expect a MESSAGE on /topic/greetings'
    : 'needs the Redis engine';
  const r = $('qt-redis-result');
  if (!redis && !r.classList.contains('bad') && !r.classList.contains('ok')) {
    setResult(r, state.health ? `needs Redis (engine: ${state.health.engine})` : 'needs Redis');
  } else if (redis && r.textContent.startsWith('needs Redis')) {
    setResult(r, 'GREETING_CHANNEL_INBOUND → /topic/greetings');
  }
}

// ---------------------------------------------------------------------------------------
// Stats

/** Sums Prometheus text-format samples by metric name (labels ignored). */
function sumPrometheus(text) {
  const sums = {};
  for (const line of text.split('\n')) {
    if (!line || line.startsWith('#')) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{.*\})?\s+(\S+)/.exec(line);
    if (!m) continue;
    const v = Number(m[3]);
    if (Number.isFinite(v)) sums[m[1]] = (sums[m[1]] || 0) + v;
  }
  return sums;
}

function counterValues(h, metrics) {
  const src = h && h.counters && typeof h.counters === 'object' ? h.counters : (h || {});
  const out = {};
  for (const [key, , metric] of RATE_COUNTERS) {
    if (metrics && metric in metrics) out[key] = metrics[metric];
    else if (typeof src[key] === 'number') out[key] = src[key];
  }
  return out;
}

async function fetchMetrics() {
  if (state.metricsMissing) return null;
  try {
    const res = await fetch('/metrics', { cache: 'no-store' });
    if (res.status === 404) { state.metricsMissing = true; return null; }
    if (!res.ok) return null;
    return sumPrometheus(await res.text());
  } catch {
    return null;
  }
}

function renderRates(values) {
  const box = $('stat-rates');
  const now = performance.now();
  const prev = state.prevCounters;
  box.textContent = '';
  for (const [key, label] of RATE_COUNTERS) {
    if (!(key in values)) continue;
    let rate = '';
    if (prev && key in prev.values && now > prev.t) {
      const r = (values[key] - prev.values[key]) / ((now - prev.t) / 1000);
      rate = r >= 0 ? `${r < 10 ? r.toFixed(1) : Math.round(r)}/s` : '';
      if (key === 'sessionErrors') rate = '';
    }
    box.append(el('div', { class: 'stat', id: `stat-${key}` },
      el('span', { class: 'k', text: label }),
      key === 'sessionErrors'
        ? el('span', { class: 'v' + (values[key] > 0 ? ' bad' : ''), text: String(values[key]) })
        : el('span', { class: 'v' }, rate || '—', ' ', el('small', { text: `Σ ${values[key]}` }))));
  }
  state.prevCounters = { t: now, values };
}

async function refreshHealth() {
  try {
    const [res, metrics] = await Promise.all([fetch('/health', { cache: 'no-store' }), fetchMetrics()]);
    const h = await res.json();
    state.health = h;
    const engine = $('stat-engine');
    engine.textContent = h.engine ?? '—';
    engine.className = 'v engine-' + (h.engine ?? 'unknown');
    $('stat-instance').textContent = h.instance ?? '—';
    for (const k of ['connections', 'sessions', 'subscriptions', 'destinations']) $('stat-' + k).textContent = h[k] ?? '—';
    if (h.redis && typeof h.redis === 'object') {
      $('stat-redis-box').hidden = false;
      const up = (v) => (v === 'connected' ? 'up' : String(v));
      $('stat-redis').textContent = `cmd ${up(h.redis.commands)} · sub ${up(h.redis.subscriptions)} · ↻ ${h.redis.reconnects}`;
      $('stat-redis').title = `commands connection: ${h.redis.commands}; subscriptions connection: ${h.redis.subscriptions}; reconnects: ${h.redis.reconnects}`;
    } else {
      $('stat-redis-box').hidden = true;
    }
    renderRates(counterValues(h, metrics));
    const note = $('stat-note');
    note.textContent = `${h.status ?? '?'} · ${timeStamp().slice(0, 8)}`;
    note.title = `GET /health: status ${h.status}; refreshed every ${HEALTH_EVERY_MS / 1000} s`;
    note.className = 'stat-note' + (h.status === 'ok' ? '' : ' bad');
  } catch (e) {
    const note = $('stat-note');
    note.textContent = `/health unreachable (${e.message})`;
    note.className = 'stat-note bad';
  }
  updateRedisButton();
}

// ---------------------------------------------------------------------------------------
// Wiring

function init() {
  $('url').value = recall('url') || defaultUrl();
  $('heartbeat').value = recall('heartbeat') || '10000,10000';
  addHeaderRow('content-type', 'text/plain');

  $('connect-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    const c = state.client;
    if (c && !['idle', 'disconnected'].includes(c.state)) disconnect();
    else connect();
  });
  $('sub-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    const dest = $('sub-dest').value.trim();
    if (!dest) return;
    if (!state.client) { info('connect first, then subscribe', true); return; }
    const sub = subscribe(dest, $('sub-ack').value);
    sub.receipt?.catch?.(() => {});
  });
  $('send-add-header').addEventListener('click', () => addHeaderRow().querySelector('.k').focus());
  $('send-form').addEventListener('submit', doSend);
  $('api-form').addEventListener('submit', doPublish);
  $('qt-api').addEventListener('click', quickApi);
  $('qt-redis').addEventListener('click', quickRedis);
  $('qt-app').addEventListener('click', quickApp);
  $('error-close').addEventListener('click', () => { $('error-banner').hidden = true; });

  let filterTimer = null;
  $('log-filter').addEventListener('input', () => { clearTimeout(filterTimer); filterTimer = setTimeout(rerenderLog, 120); });
  for (const id of ['log-command', 'log-dir', 'log-heartbeats']) $(id).addEventListener('change', rerenderLog);
  $('log-clear').addEventListener('click', clearLog);
  $('log-follow').addEventListener('change', () => { if ($('log-follow').checked) $('log').scrollTop = $('log').scrollHeight; });

  rerenderLog();
  refreshHealth();
  setInterval(refreshHealth, HEALTH_EVERY_MS);
  // Keep the reconnect countdown honest in the status pill.
  setInterval(() => {
    const c = state.client;
    if (c?.state === 'reconnecting' && state.reconnectInfo) {
      const left = Math.max(0, state.reconnectInfo.at - Date.now());
      setStatus('reconnecting', `reconnecting in ${(left / 1000).toFixed(1)} s (attempt ${state.reconnectInfo.attempt})`);
    }
  }, 250);
  // For debugging from the devtools console (and the browser tests): the page's state and the log.
  Object.defineProperty(state, 'entries', { get: logEntries, enumerable: true });
  window.switchboardConsole = state;
}

init();
