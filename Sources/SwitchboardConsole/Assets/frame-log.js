// frame-log.js — the console's frame log: STOMP frames in and out, HTTP calls and the
// console's own notes, the last LOG_CAP of them, filtered by the controls above the log and
// rendered in batches.
import { $, el, timeStamp } from './dom.js';

const LOG_CAP = 1000;
const BODY_PREVIEW = 4096;

const state = {
  entries: [],          // {seq, dir, command, text, node}, oldest first, at most LOG_CAP
  pending: [],          // entries waiting for the next flushLog
  flushTimer: null,
  seq: 0,
  framesIn: 0,
  framesOut: 0,
};

function summaryOf(command, headers) {
  if (command === 'ERROR') return headers.message || '(no message header)';
  if (headers.destination) return headers.destination;
  if (command === 'RECEIPT') return 'receipt-id ' + headers['receipt-id'];
  if (command === 'CONNECTED') return `version ${headers.version || '1.0'}` + (headers.session ? ` · session ${headers.session}` : '');
  if (command === 'UNSUBSCRIBE') return 'id ' + headers.id;
  if (headers.transaction) return 'transaction ' + headers.transaction;
  return '';
}

/** Adds a log entry. dir: 'in' | 'out' | '' ; headerList: [[k, v]]; body: string | null. */
export function addLog({ dir = '', command, summary = '', headerList = [], body = null, binary = false, extraClass = '' }) {
  const seq = ++state.seq;
  // Only the preview of a body is kept (and searched): 1,000 entries of 1 MiB bodies held
  // gigabytes of strings.
  const bodyLength = body?.length ?? 0;
  if (body !== null && body.length > BODY_PREVIEW) body = body.slice(0, BODY_PREVIEW);
  const text = [command, summary, ...headerList.map(([k, v]) => `${k}:${v}`), body ?? ''].join('\n').toLowerCase();
  const entry = { seq, dir, command, text, node: null, extraClass, summary, headerList, body, bodyLength, binary, time: new Date() };
  state.entries.push(entry);
  while (state.entries.length > LOG_CAP) {
    const old = state.entries.shift();
    old.evicted = true;
    old.node?.remove();
  }
  if (matches(entry)) state.pending.push(entry);
  scheduleFlush();
  return entry;
}

// New entries are rendered in batches, so a burst of frames costs one layout, not one each.
function scheduleFlush() {
  if (state.flushTimer == null) state.flushTimer = setTimeout(flushLog, 40);
}

function flushLog() {
  state.flushTimer = null;
  const log = $('log');
  const batch = state.pending.filter((e) => !e.evicted);
  state.pending = [];
  if (batch.length) {
    log.querySelector('.empty-log')?.remove();
    const frag = document.createDocumentFragment();
    for (const e of batch) frag.append(e.node = e.node || renderEntry(e));
    log.append(frag);
    if ($('log-follow').checked) log.scrollTop = log.scrollHeight;
  }
  updateLogCount();
}

function renderEntry(entry) {
  const { dir, command, summary, headerList, body, bodyLength, binary } = entry;
  const node = el('div', {
    class: `entry cmd-${command}` + (dir ? ` dir-${dir}` : '') + (entry.extraClass ? ' ' + entry.extraClass : ''),
    'data-command': command, 'data-dir': dir || 'none',
  });
  node.append(el('div', { class: 'line1' },
    el('time', { text: timeStamp(entry.time) }),
    el('span', { class: 'dir', text: dir === 'in' ? '◀ in' : dir === 'out' ? 'out ▶' : '' }),
    el('span', { class: 'cmd', text: command === 'HB' ? 'heart-beat' : command }),
    el('span', { class: 'summary', text: command === 'ERROR' ? `message: ${summary}` : summary })));
  if (headerList.length) {
    const hdrs = el('div', { class: 'hdrs' });
    for (const [k, v] of headerList) hdrs.append(el('span', { class: 'h' }, el('span', { class: 'hk', text: k + ':' }), v));
    node.append(hdrs);
  }
  if (body !== null && body !== '') {
    const shown = bodyLength > body.length ? body + `… (${bodyLength} chars)` : body;
    node.append(el('pre', { class: 'body' + (binary ? ' binary' : ''), text: shown }));
  }
  return node;
}

function matches(entry) {
  const cmd = $('log-command').value;
  const dir = $('log-dir').value;
  const q = $('log-filter').value.trim().toLowerCase();
  if (entry.command === 'HB' && !$('log-heartbeats').checked) return false;
  if (cmd && entry.command !== cmd && !(cmd === 'INFO' && entry.command === 'HB')) return false;
  if (dir && entry.dir !== dir) return false;
  if (q && !entry.text.includes(q)) return false;
  return true;
}

export function rerenderLog() {
  const log = $('log');
  state.pending = [];
  log.textContent = '';
  const frag = document.createDocumentFragment();
  for (const e of state.entries) {
    if (!matches(e)) continue;
    e.node = e.node || renderEntry(e);
    frag.append(e.node);
  }
  log.append(frag);
  if (!log.children.length) log.append(el('div', { class: 'empty-log', text: state.entries.length ? 'no frames match the filter' : 'no frames yet — connect to start' }));
  if ($('log-follow').checked) log.scrollTop = log.scrollHeight;
  updateLogCount();
}

function updateLogCount() {
  const log = $('log');
  const shown = log.childElementCount - (log.firstElementChild?.classList.contains('empty-log') ? 1 : 0);
  $('log-count').textContent = shown === state.entries.length ? `${shown}` : `${shown} / ${state.entries.length}`;
  $('log-count').title = `log keeps the last ${LOG_CAP} entries`;
  $('stat-local').textContent = `${state.framesIn} in · ${state.framesOut} out`;
}

// Credentials are not shown in the log.
function maskCredentials(headerList) {
  return headerList.map(([k, v]) => {
    if (k === 'passcode') return [k, '•'.repeat(Math.min(8, v.length || 1))];
    if (k.toLowerCase() === 'authorization') return [k, v.replace(/^(\S+\s+)?.*$/, (m, scheme) => (scheme || '') + '•••')];
    return [k, v];
  });
}

/** Logs a frame sent (`out`) or received (`in`) and counts it. */
export function logFrame(dir, frame) {
  if (dir === 'in') state.framesIn++; else state.framesOut++;
  const binary = !frame.isText;
  const headerList = frame.command === 'CONNECT' || frame.command === 'STOMP' ? maskCredentials(frame.headerList) : frame.headerList;
  let body = null;
  if (frame.binaryBody.length) {
    body = binary ? hexPreview(frame.binaryBody) : frame.body;
  }
  addLog({ dir, command: frame.command, summary: summaryOf(frame.command, frame.headers), headerList, body, binary });
}

function hexPreview(bytes) {
  const n = Math.min(bytes.length, 256);
  let s = `binary, ${bytes.length} bytes:`;
  for (let i = 0; i < n; i++) s += (i % 16 === 0 ? '\n' : ' ') + bytes[i].toString(16).padStart(2, '0');
  return n < bytes.length ? s + ' …' : s;
}

/** Logs a line of the console's own (`warn` highlights it). */
export function info(text, warn = false) {
  addLog({ command: 'INFO', summary: text, extraClass: warn ? 'warn' : '' });
}

/** Forgets every entry. */
export function clearLog() {
  state.entries = [];
  rerenderLog();
}

/** The log's entries, oldest first (for debugging and the browser tests). */
export function logEntries() {
  return state.entries;
}
