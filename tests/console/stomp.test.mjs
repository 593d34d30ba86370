// Unit tests of the console's STOMP client (Sources/SwitchboardConsole/Assets/stomp.js).
// Run: node --test tests/console/
import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import {
  FrameParser, Frame, encodeFrame, encodeFrameText, escapeHeader, unescapeHeader, escapesHeaders,
  negotiateHeartbeat, parseHeartbeat, backoffDelay, StompClient, StompProtocolError, SUBPROTOCOLS,
} from '../../Sources/SwitchboardConsole/Assets/stomp.js';

const enc = new TextEncoder();
const dec = new TextDecoder();

function collect(opts = {}) {
  const frames = [];
  let heartbeats = 0;
  const parser = new FrameParser({ onFrame: (f) => frames.push(f), onHeartbeat: () => heartbeats++, ...opts });
  return { parser, frames, get heartbeats() { return heartbeats; } };
}

// ---------------------------------------------------------------------------------------
// A fake clock and a fake WebSocket, injected into the client.

class FakeClock {
  constructor() { this.t = 1000; this.seq = 0; this.tasks = new Map(); }
  now = () => this.t;
  setTimeout = (f, ms) => { const id = ++this.seq; this.tasks.set(id, { f, at: this.t + ms }); return id; };
  clearTimeout = (id) => { this.tasks.delete(id); };
  setInterval = (f, ms) => { const id = ++this.seq; this.tasks.set(id, { f, at: this.t + ms, every: ms }); return id; };
  clearInterval = (id) => { this.tasks.delete(id); };
  advance(ms) {
    const end = this.t + ms;
    for (;;) {
      let next = null;
      for (const [id, task] of this.tasks) if (task.at <= end && (!next || task.at < next[1].at)) next = [id, task];
      if (!next) break;
      const [id, task] = next;
      this.t = task.at;
      if (task.every) task.at += task.every; else this.tasks.delete(id);
      task.f();
    }
    this.t = end;
  }
}

function fakeWebSocketFactory() {
  const sockets = [];
  class FakeWebSocket {
    constructor(url, protocols) {
      this.url = url; this.protocols = protocols; this.readyState = 0; this.sent = []; this.closed = null;
      sockets.push(this);
    }
    send(data) { this.sent.push(data); }
    close(code, reason) { this.closed = { code, reason }; this.readyState = 3; }
    // test helpers
    open() { this.readyState = 1; this.onopen?.({}); }
    receive(data) { this.onmessage?.({ data }); }
    serverClose(code = 1006) { this.readyState = 3; this.onclose?.({ code, reason: '', wasClean: false }); }
    sentFrames() {
      const out = [];
      const p = new FrameParser({ onFrame: (f) => out.push(f), version: '1.2' });
      for (const d of this.sent) if (d !== '\n') p.push(d);
      return out;
    }
  }
  return { FakeWebSocket, sockets };
}

const tick = () => new Promise((r) => setImmediate(r));

function connectedClient(options = {}, connectedHeaders = 'version:1.2\nsession:s-1\nserver:switchboard\nheart-beat:0,0') {
  const clock = new FakeClock();
  const { FakeWebSocket, sockets } = fakeWebSocketFactory();
  const client = new StompClient('ws://example.test:8080/stomp', {
    WebSocket: FakeWebSocket, timers: clock, heartbeat: [0, 0],
    reconnect: { initialDelay: 100, maxDelay: 1000, factor: 2, jitter: 0 }, ...options,
  });
  const connected = client.connect();
  sockets[0].open();
  sockets[0].receive(`CONNECTED\n${connectedHeaders}\n\n\0`);
  return { client, clock, sockets, ws: sockets[0], connected };
}

// ---------------------------------------------------------------------------------------

describe('parser', () => {
  test('parses a simple frame', () => {
    const c = collect();
    c.parser.push('MESSAGE\ndestination:/topic/a\nmessage-id:1\n\nhello\0');
    assert.equal(c.frames.length, 1);
    assert.equal(c.frames[0].command, 'MESSAGE');
    assert.equal(c.frames[0].headers.destination, '/topic/a');
    assert.equal(c.frames[0].body, 'hello');
  });

  test('frames split across messages at every byte', () => {
    const wire = 'MESSAGE\ndestination:/topic/a\ncontent-length:5\n\nhello\0\nRECEIPT\nreceipt-id:r1\n\n\0';
    const bytes = enc.encode(wire);
    for (let cut = 1; cut < bytes.length; cut++) {
      const c = collect();
      c.parser.push(bytes.slice(0, cut));
      c.parser.push(bytes.slice(cut).buffer); // ArrayBuffer, as a binary WebSocket message
      assert.deepEqual(c.frames.map((f) => f.command), ['MESSAGE', 'RECEIPT'], `cut at ${cut}`);
      assert.equal(c.frames[0].body, 'hello');
      assert.equal(c.frames[1].headers['receipt-id'], 'r1');
    }
  });

  test('byte-by-byte feeding', () => {
    const c = collect();
    for (const b of enc.encode('MESSAGE\r\na:1\r\n\r\nxyz\0\r\n\n')) c.parser.push(new Uint8Array([b]));
    assert.equal(c.frames.length, 1);
    assert.equal(c.frames[0].headers.a, '1');
    assert.equal(c.frames[0].body, 'xyz');
    assert.equal(c.heartbeats, 2);
  });

  test('several frames in one message, with heart-beats between', () => {
    const c = collect();
    c.parser.push('\nMESSAGE\nx:1\n\none\0\n\nMESSAGE\nx:2\n\ntwo\0MESSAGE\nx:3\n\n\0\r\n');
    assert.deepEqual(c.frames.map((f) => [f.headers.x, f.body]), [['1', 'one'], ['2', 'two'], ['3', '']]);
    assert.equal(c.heartbeats, 4);
  });

  test('content-length with NUL bytes in the body', () => {
    const body = new Uint8Array([1, 0, 2, 0, 255]);
    const wire = encodeFrame(new Frame('MESSAGE', { destination: '/topic/bin' }, body), '1.2');
    const c = collect({ version: '1.2' });
    c.parser.push(wire.slice(0, 20));
    c.parser.push(wire.slice(20));
    assert.equal(c.frames.length, 1);
    assert.deepEqual([...c.frames[0].binaryBody], [1, 0, 2, 0, 255]);
    assert.equal(c.frames[0].headers['content-length'], '5');
    assert.equal(c.frames[0].isText, false);
  });

  test('UTF-8 multi-byte characters split across messages', () => {
    const bytes = enc.encode('MESSAGE\nk:é☃\n\nhé☃llo\0');
    const c = collect();
    for (let i = 0; i < bytes.length; i += 3) c.parser.push(bytes.slice(i, i + 3));
    assert.equal(c.frames[0].headers.k, 'é☃');
    assert.equal(c.frames[0].body, 'hé☃llo');
  });

  test('repeated headers: first wins, all kept in headerList; values not trimmed', () => {
    const c = collect();
    c.parser.push('MESSAGE\nfoo:1\nfoo:2\nsp: a b \n\n\0');
    assert.equal(c.frames[0].headers.foo, '1');
    assert.deepEqual(c.frames[0].headerList, [['foo', '1'], ['foo', '2'], ['sp', ' a b ']]);
    assert.equal(c.frames[0].headers.sp, ' a b ');
  });

  test('content-length without NUL after the body is an error', () => {
    const c = collect();
    assert.throws(() => c.parser.push('MESSAGE\ncontent-length:2\n\nabc\0'), StompProtocolError);
  });

  test('header unescaping depends on version and command', () => {
    const c = collect({ version: '1.2' });
    c.parser.push('MESSAGE\nk\\cey:a\\nb\\\\c\\cd\\re\n\n\0');
    assert.equal(c.frames[0].headers['k:ey'], 'a\nb\\c:d\re');
    const c10 = collect({ version: '1.0' });
    c10.parser.push('MESSAGE\nk:a\\nb\n\n\0');
    assert.equal(c10.frames[0].headers.k, 'a\\nb');
    const cc = collect({ version: '1.2' });
    cc.parser.push('CONNECTED\nserver:a\\cb\n\n\0');
    assert.equal(cc.frames[0].headers.server, 'a\\cb');
  });

  test('an undefined escape is a protocol error', () => {
    const c = collect({ version: '1.2' });
    assert.throws(() => c.parser.push('MESSAGE\nk:a\\tb\n\n\0'), /undefined escape/);
  });
});

describe('escaping', () => {
  test('round trips in 1.2 and 1.1', () => {
    const values = ['plain', 'a:b', 'line\nbreak', 'back\\slash', 'cr\rlf', '\\n literal', ':\\:\n\r', 'é☃'];
    for (const v of values) {
      assert.equal(unescapeHeader(escapeHeader(v, '1.2'), '1.2'), v);
      assert.equal(unescapeHeader(escapeHeader(v, '1.1'), '1.1'), v);
    }
    assert.equal(escapeHeader('a:b\nc\\d\re', '1.2'), 'a\\cb\\nc\\\\d\\re');
    assert.equal(escapeHeader('a\rb', '1.1'), 'a\rb'); // 1.1 has no \r escape
    assert.throws(() => unescapeHeader('a\\rb', '1.1'), StompProtocolError);
  });

  test('encode/parse round trip of a frame with awkward headers', () => {
    const f = new Frame('SEND', { destination: '/topic/x', 'we:ird': 'a\nb:c\\d', empty: '' }, 'body ☃');
    const c = collect({ version: '1.2' });
    c.parser.push(encodeFrameText(f, '1.2'));
    const g = c.frames[0];
    assert.equal(g.command, 'SEND');
    assert.equal(g.headers['we:ird'], 'a\nb:c\\d');
    assert.equal(g.headers.empty, '');
    assert.equal(g.body, 'body ☃');
    assert.equal(g.headers['content-length'], String(enc.encode('body ☃').length));
  });

  test('CONNECT headers are never escaped', () => {
    assert.equal(escapesHeaders('CONNECT', '1.2'), false);
    assert.equal(escapesHeaders('CONNECTED', '1.2'), false);
    assert.equal(escapesHeaders('SEND', '1.0'), false);
    assert.equal(escapesHeaders('SEND', '1.1'), true);
    const text = encodeFrameText(new Frame('CONNECT', { passcode: 'a:b' }), '1.2');
    assert.match(text, /^CONNECT\npasscode:a:b\n\n\0$/);
  });
});

describe('heart-beats', () => {
  test('negotiation arithmetic', () => {
    assert.deepEqual(negotiateHeartbeat([10000, 10000], [5000, 20000]), { outgoing: 20000, incoming: 10000 });
    assert.deepEqual(negotiateHeartbeat([0, 10000], [5000, 20000]), { outgoing: 0, incoming: 10000 });
    assert.deepEqual(negotiateHeartbeat([4000, 0], [5000, 3000]), { outgoing: 4000, incoming: 0 });
    assert.deepEqual(negotiateHeartbeat([4000, 6000], [0, 0]), { outgoing: 0, incoming: 0 });
    assert.deepEqual(parseHeartbeat('100, 200'), [100, 200]);
    assert.deepEqual(parseHeartbeat(undefined), [0, 0]);
    assert.deepEqual(parseHeartbeat('x'), [0, 0]);
  });

  test('client sends EOLs when idle and notices a silent server', () => {
    const { client, clock, ws, sockets } = connectedClient({ heartbeat: [1000, 2000], tolerance: 2 },
      'version:1.2\nheart-beat:500,800');
    assert.deepEqual(client.heartbeat, { outgoing: 1000, incoming: 2000 });
    const events = [];
    client.on('heartbeat-out', () => events.push('out'));
    client.on('heartbeat-timeout', () => events.push('timeout'));
    clock.advance(1100);
    assert.ok(ws.sent.includes('\n'), 'an EOL heart-beat was sent');
    assert.ok(events.includes('out'));
    ws.receive('\n'); // server heart-beat at t+1100
    clock.advance(3000); // 3000 ms since: not yet over 2 × 2000
    assert.ok(!events.includes('timeout'));
    assert.equal(client.state, 'connected');
    clock.advance(2000); // 5000 ms silent: noticed within half an interval of passing 4000
    assert.ok(events.includes('timeout'));
    assert.ok(ws.closed);
    assert.ok(sockets.length >= 2, 'a reconnect attempt followed');
  });

  test('CONNECT offers heart-beat, versions, subprotocols, host and token', () => {
    const { ws } = connectedClient({ heartbeat: [3000, 4000], token: 'tok:en' });
    assert.deepEqual(ws.protocols, SUBPROTOCOLS);
    assert.deepEqual(SUBPROTOCOLS, ['v12.stomp', 'v11.stomp', 'v10.stomp']);
    const connect = ws.sentFrames()[0];
    assert.equal(connect.command, 'CONNECT');
    assert.equal(connect.headers['accept-version'], '1.0,1.1,1.2');
    assert.equal(connect.headers['heart-beat'], '3000,4000');
    assert.equal(connect.headers.host, 'example.test');
    assert.equal(connect.headers.Authorization, 'Bearer tok:en');
    assert.equal(connect.headers.passcode, 'tok:en');
  });
});

describe('client', () => {
  test('connect resolves with CONNECTED; version and session known', async () => {
    const { client, connected } = connectedClient();
    const f = await connected;
    assert.equal(f.command, 'CONNECTED');
    assert.equal(client.version, '1.2');
    assert.equal(client.session, 's-1');
    assert.equal(client.state, 'connected');
  });

  test('receipts resolve per receipt id, errors reject them', async () => {
    const { client, ws } = connectedClient();
    const p1 = client.send('/topic/a', 'x', {}, { receipt: 'r-1' });
    const p2 = client.send('/topic/a', 'y', {}, { receipt: true });
    const sent = ws.sentFrames();
    const rid2 = sent[sent.length - 1].headers.receipt;
    assert.ok(rid2);
    let done1 = false;
    p1.then(() => { done1 = true; });
    ws.receive(`RECEIPT\nreceipt-id:${rid2}\n\n\0`);
    const r2 = await p2;
    assert.equal(r2.headers['receipt-id'], rid2);
    await tick();
    assert.equal(done1, false);
    ws.receive('RECEIPT\nreceipt-id:r-1\n\n\0');
    await p1;
    const p3 = client.send('/queue/nope', 'z', {}, { receipt: 'r-3' });
    ws.receive('ERROR\nreceipt-id:r-3\nmessage:destination /queue/nope is not allowed\n\n\0');
    await assert.rejects(p3, /not allowed/);
  });

  test('receipt timeout rejects', async () => {
    const { client, clock } = connectedClient({ receiptTimeout: 500 });
    const p = client.send('/topic/a', 'x', {}, { receipt: true });
    clock.advance(600);
    await assert.rejects(p, /no receipt/);
  });

  test('frame events for every frame in and out; MESSAGE dispatched to its subscription', () => {
    const { client, ws } = connectedClient();
    const log = [];
    client.on('frame-in', (f) => log.push('in ' + f.command));
    client.on('frame-out', (f) => log.push('out ' + f.command));
    const got = [];
    const sub = client.subscribe('/topic/a', (m) => got.push(m.body), { ack: 'client-individual' });
    ws.receive(`MESSAGE\nsubscription:${sub.id}\nmessage-id:m1\nack:a1\ndestination:/topic/a\n\nhi\0`);
    ws.receive('MESSAGE\nsubscription:other\nmessage-id:m2\ndestination:/topic/b\n\nnope\0');
    assert.deepEqual(got, ['hi']);
    client.ack({ headers: { ack: 'a1', 'message-id': 'm1', subscription: sub.id } });
    client.nack('a2');
    const tx = client.begin('t1');
    client.send('/topic/a', 'in tx', { transaction: tx.id });
    tx.commit();
    client.begin('t2').abort();
    sub.unsubscribe();
    assert.deepEqual(log, ['out SUBSCRIBE', 'in MESSAGE', 'in MESSAGE', 'out ACK', 'out NACK', 'out BEGIN', 'out SEND',
      'out COMMIT', 'out BEGIN', 'out ABORT', 'out UNSUBSCRIBE']);
    const sent = ws.sentFrames();
    const byCmd = (c) => sent.filter((f) => f.command === c);
    assert.equal(byCmd('SUBSCRIBE')[0].headers.ack, 'client-individual');
    assert.equal(byCmd('SUBSCRIBE')[0].headers.destination, '/topic/a');
    assert.equal(byCmd('ACK')[0].headers.id, 'a1');
    assert.equal(byCmd('NACK')[0].headers.id, 'a2');
    assert.equal(byCmd('SEND')[0].headers.transaction, 't1');
    assert.equal(byCmd('UNSUBSCRIBE')[0].headers.id, sub.id);
    assert.equal(client.subscriptions.size, 0);
  });

  test('binary bodies go out as binary WebSocket messages', () => {
    const { client, ws } = connectedClient();
    client.send('/topic/bin', new Uint8Array([0xff, 0, 1]));
    const last = ws.sent[ws.sent.length - 1];
    assert.ok(last instanceof Uint8Array);
    const c = collect({ version: '1.2' });
    c.parser.push(last);
    assert.deepEqual([...c.frames[0].binaryBody], [0xff, 0, 1]);
    client.send('/topic/txt', 'text');
    assert.equal(typeof ws.sent[ws.sent.length - 1], 'string');
  });

  test('reconnects with backoff and re-subscribes', () => {
    const { client, clock, sockets, ws } = connectedClient();
    client.subscribe('/topic/a', () => {}, { id: 'keep' });
    client.subscribe('/topic/b', () => {}, { id: 'gone' });
    client.unsubscribe('gone');
    const delays = [];
    client.on('reconnect', (e) => delays.push(e.delay));
    ws.serverClose();
    assert.equal(client.state, 'reconnecting');
    clock.advance(99);
    assert.equal(sockets.length, 1);
    clock.advance(1);
    assert.equal(sockets.length, 2);
    sockets[1].serverClose(); // attempt 2 fails before opening
    clock.advance(200);
    assert.equal(sockets.length, 3);
    assert.deepEqual(delays, [100, 200]);
    sockets[2].open();
    sockets[2].receive('CONNECTED\nversion:1.2\n\n\0');
    assert.equal(client.state, 'connected');
    const subs = sockets[2].sentFrames().filter((f) => f.command === 'SUBSCRIBE');
    assert.deepEqual(subs.map((f) => [f.headers.id, f.headers.destination]), [['keep', '/topic/a']]);
    // the backoff starts again once a connection stayed up (5 s by default)...
    clock.advance(5000);
    sockets[2].serverClose();
    assert.equal(delays[delays.length - 1], 100);
  });

  test('a server that accepts then drops at once is not retried faster and faster', () => {
    const { client, clock, sockets, ws } = connectedClient();
    const delays = [];
    client.on('reconnect', (e) => delays.push(e.delay));
    ws.serverClose();
    for (let n = 1; n <= 4; n++) {
      clock.advance(delays[delays.length - 1]);
      sockets[n].open();
      sockets[n].receive('CONNECTED\nversion:1.2\n\n\0');
      sockets[n].serverClose();
    }
    // Before, every CONNECTED started the backoff again: 100, 100, 100, ...
    assert.deepEqual(delays, [100, 200, 400, 800, 1000]);
  });

  test('no CONNECTED within connectTimeout: the attempt is given up and retried', () => {
    const { FakeWebSocket, sockets } = fakeWebSocketFactory();
    const clock = new FakeClock();
    const client = new StompClient('ws://x/stomp', {
      WebSocket: FakeWebSocket, timers: clock, heartbeat: [0, 0], connectTimeout: 3000,
      reconnect: { initialDelay: 100, maxDelay: 1000, factor: 2, jitter: 0 },
    });
    const errors = [];
    client.on('error', (e) => errors.push(String(e.message ?? e)));
    client.connect();
    sockets[0].open();  // CONNECT sent, never answered
    clock.advance(2999);
    assert.equal(client.state, 'connecting');
    clock.advance(1);
    assert.ok(sockets[0].closed);
    assert.equal(client.state, 'reconnecting');
    assert.deepEqual(errors, ['no CONNECTED within 3000 ms']);
    clock.advance(100);
    assert.equal(sockets.length, 2);
  });

  test('every SUBSCRIBE asks for a receipt; its x-position is where a quiet subscription resumes', async () => {
    const { client, clock, sockets, ws } = connectedClient();
    const sub = client.subscribe('/topic/quiet', () => {}, { id: 'q' });
    const frame = ws.sentFrames().find((f) => f.command === 'SUBSCRIBE');
    assert.ok(frame.headers.receipt);
    ws.receive(`RECEIPT\nreceipt-id:${frame.headers.receipt}\nx-position:ep\\c4\n\n\0`);
    assert.equal((await sub.receipt).headers['x-position'], 'ep:4');
    assert.equal(sub.position, 'ep:4');
    ws.serverClose();
    clock.advance(100);
    sockets[1].open();
    sockets[1].receive('CONNECTED\nversion:1.2\n\n\0');
    const again = sockets[1].sentFrames().find((f) => f.command === 'SUBSCRIBE');
    assert.equal(again.headers['x-resume-from'], 'ep:4');
  });

  test('a subscription made while disconnected gets its receipt and position on CONNECTED', async () => {
    const { FakeWebSocket, sockets } = fakeWebSocketFactory();
    const client = new StompClient('ws://x/stomp', { WebSocket: FakeWebSocket, timers: new FakeClock(), heartbeat: [0, 0] });
    const sub = client.subscribe('/topic/late', () => {}, { id: 'l', receipt: 'late-r' });
    client.connect();
    sockets[0].open();
    sockets[0].receive('CONNECTED\nversion:1.2\n\n\0');
    const frame = sockets[0].sentFrames().find((f) => f.command === 'SUBSCRIBE');
    assert.equal(frame.headers.receipt, 'late-r');
    sockets[0].receive('RECEIPT\nreceipt-id:late-r\nx-position:ep\\c9\n\n\0');
    assert.equal((await sub.receipt).headers['receipt-id'], 'late-r');
    assert.equal(sub.position, 'ep:9');
  });

  test('an x-last subscription resumes from its last position after a reconnect, without x-last', () => {
    const { client, clock, sockets, ws } = connectedClient();
    client.subscribe('/topic/xl', () => {}, { id: 'x', 'x-last': '5' });
    assert.equal(ws.sentFrames().find((f) => f.command === 'SUBSCRIBE').headers['x-last'], '5');
    ws.receive('MESSAGE\ndestination:/topic/xl\nmessage-id:1\nsubscription:x\nx-position:ep\\c66\n\nm\0');
    ws.serverClose();
    clock.advance(100);
    sockets[1].open();
    sockets[1].receive('CONNECTED\nversion:1.2\n\n\0');
    const again = sockets[1].sentFrames().find((f) => f.command === 'SUBSCRIBE');
    assert.equal(again.headers['x-resume-from'], 'ep:66');
    assert.equal(again.headers['x-last'], undefined);
  });

  test('a SUBSCRIBE the server refuses is dropped and named, not sent again after every reconnect', async () => {
    const { client, clock, sockets, ws } = connectedClient();
    const refused = [];
    client.on('subscription-error', (e) => refused.push([e.subscription.id, e.error.message]));
    client.subscribe('/topic/p.*', () => {}, { id: 'p', 'x-last': '3' });
    client.subscribe('/topic/ok', () => {}, { id: 'ok' });
    const bad = ws.sentFrames().find((f) => f.headers.id === 'p');
    ws.receive(`ERROR\nreceipt-id:${bad.headers.receipt}\nmessage:x-last needs one destination\n\n\0`);
    await Promise.resolve();
    await Promise.resolve();
    assert.deepEqual(refused, [['p', 'x-last needs one destination']]);
    ws.serverClose();
    clock.advance(100);
    sockets[1].open();
    sockets[1].receive('CONNECTED\nversion:1.2\n\n\0');
    assert.deepEqual(sockets[1].sentFrames().filter((f) => f.command === 'SUBSCRIBE').map((f) => f.headers.id), ['ok']);
  });

  test('ERROR frame is an event; the server close then triggers a reconnect', () => {
    const { client, clock, sockets, ws } = connectedClient();
    const errors = [];
    client.on('error', (e) => errors.push(e));
    ws.receive('ERROR\nmessage:destination /queue/nope is not allowed\n\nbad\0');
    assert.equal(errors[0].headers.message, 'destination /queue/nope is not allowed');
    ws.serverClose(1000);
    assert.equal(client.state, 'reconnecting');
    clock.advance(100);
    assert.equal(sockets.length, 2);
  });

  test('pending receipts reject when the connection drops', async () => {
    const { client, ws } = connectedClient();
    const p = client.send('/topic/a', 'x', {}, { receipt: true });
    ws.serverClose();
    await assert.rejects(p, /connection lost/);
  });

  test('disconnect sends DISCONNECT with a receipt, closes, and stops reconnecting', async () => {
    const { client, clock, sockets, ws } = connectedClient();
    const done = client.disconnect();
    const last = ws.sentFrames().pop();
    assert.equal(last.command, 'DISCONNECT');
    ws.receive(`RECEIPT\nreceipt-id:${last.headers.receipt}\n\n\0`);
    await done;
    assert.equal(client.state, 'disconnected');
    assert.ok(ws.closed);
    clock.advance(60000);
    assert.equal(sockets.length, 1);
  });

  test('without reconnect, a failed connect rejects', async () => {
    const { FakeWebSocket, sockets } = fakeWebSocketFactory();
    const client = new StompClient('ws://x/stomp', { WebSocket: FakeWebSocket, reconnect: false, timers: new FakeClock() });
    const p = client.connect();
    sockets[0].open();
    sockets[0].receive('ERROR\nmessage:Supported protocol versions are 1.2\nversion:1.2\n\n\0');
    sockets[0].serverClose();
    await assert.rejects(p, /Supported protocol versions/);
    assert.equal(client.state, 'disconnected');
  });

  test('the ERROR of a refused CONNECT is unescaped as the highest version offered', async () => {
    // The gateway escapes it with the version it agreed (1.2 here); CONNECTED never came.
    for (const [offered, message] of [['1.0,1.1,1.2', 'authentication failed: token expired'], ['1.0', 'authentication failed\\c token expired']]) {
      const { FakeWebSocket, sockets } = fakeWebSocketFactory();
      const client = new StompClient('ws://x/stomp', { WebSocket: FakeWebSocket, reconnect: false, timers: new FakeClock(), acceptVersion: offered });
      const p = client.connect();
      sockets[0].open();
      sockets[0].receive('ERROR\nmessage:authentication failed\\c token expired\n\n\0');
      sockets[0].serverClose();
      await assert.rejects(p, (e) => { assert.equal(e.message, message); return true; });
    }
  });

  test('after a reconnect a subscription resumes from the last x-position it saw', async () => {
    const { client, clock, sockets, ws } = connectedClient();
    const got = [];
    client.subscribe('/topic/h', (m) => got.push(m.body), { id: 'h' });
    client.subscribe('/topic/all.*', () => {}, { id: 'w' });  // a pattern: no position, no resume
    ws.receive('MESSAGE\ndestination:/topic/h\nmessage-id:1\nsubscription:h\nx-position:ep\\c7\n\none\0');
    assert.equal(client.subscriptions.get('h').position, 'ep:7');
    const resumes = [];
    client.on('resume', (e) => resumes.push(e));
    ws.serverClose();
    clock.advance(100);
    sockets[1].open();
    sockets[1].receive('CONNECTED\nversion:1.2\n\n\0');
    const subs = sockets[1].sentFrames().filter((f) => f.command === 'SUBSCRIBE');
    const h = subs.find((f) => f.headers.id === 'h');
    assert.equal(h.headers['x-resume-from'], 'ep:7');
    assert.ok(h.headers.receipt);
    assert.equal(subs.find((f) => f.headers.id === 'w').headers['x-resume-from'], undefined);
    sockets[1].receive(`RECEIPT\nreceipt-id:${h.headers.receipt}\nx-position:ep\\c9\nx-recovered:true\n\n\0`);
    sockets[1].receive('MESSAGE\ndestination:/topic/h\nmessage-id:2\nsubscription:h\nx-position:ep\\c8\n\ntwo\0');
    await Promise.resolve();
    await Promise.resolve();
    assert.deepEqual(resumes.map((e) => [e.subscription.id, e.recovered, e.from, e.position]), [['h', true, 'ep:7', 'ep:9']]);
    assert.deepEqual(got, ['one', 'two']);
    assert.equal(client.subscriptions.get('h').position, 'ep:8');
  });

  test('subscribing while disconnected sends SUBSCRIBE on CONNECTED', () => {
    const { FakeWebSocket, sockets } = fakeWebSocketFactory();
    const client = new StompClient('ws://x/stomp', { WebSocket: FakeWebSocket, timers: new FakeClock(), heartbeat: [0, 0] });
    client.subscribe('/topic/early', () => {}, { id: 'e' });
    client.connect();
    sockets[0].open();
    sockets[0].receive('CONNECTED\nversion:1.1\n\n\0');
    const sent = sockets[0].sentFrames();
    assert.deepEqual(sent.map((f) => f.command), ['CONNECT', 'SUBSCRIBE']);
  });

  test('a malformed frame closes the connection', () => {
    const { client, ws } = connectedClient();
    const errors = [];
    client.on('error', (e) => errors.push(e));
    ws.receive('MESSAGE\nk:\\x\n\n\0');
    assert.ok(errors[0] instanceof StompProtocolError);
    assert.ok(ws.closed);
    assert.equal(client.state, 'reconnecting');
  });

  test('backoff delay grows, caps, and jitters within bounds', () => {
    const o = { initialDelay: 100, maxDelay: 1000, factor: 2, jitter: 0 };
    assert.deepEqual([0, 1, 2, 3, 4, 5].map((a) => backoffDelay(a, o)), [100, 200, 400, 800, 1000, 1000]);
    const j = { ...o, jitter: 0.5 };
    assert.equal(backoffDelay(0, j, () => 0), 50);
    assert.equal(backoffDelay(0, j, () => 1), 150);
  });
});

test('text body decode is lenient and bodies keep bytes exactly', () => {
  const f = new Frame('MESSAGE', {}, new Uint8Array([0x68, 0x69]));
  assert.equal(f.body, 'hi');
  assert.equal(dec.decode(encodeFrame(f, '1.2')), 'MESSAGE\ncontent-length:2\n\nhi\0');
});
