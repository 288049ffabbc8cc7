// Tests of client.js: against a scripted fake network (fetch, EventSource,
// WebSocket), then against the example server itself (long-poll; Node 20
// has no EventSource or WebSocket; e2e/ runs all three in Chromium). Run with
// node --test example/
import {test} from 'node:test';
import assert from 'node:assert/strict';
import {spawn, execFileSync} from 'node:child_process';
import {mkdtempSync, rmSync} from 'node:fs';
import {createRequire} from 'node:module';
import {tmpdir} from 'node:os';
import {dirname, join} from 'node:path';
import {fileURLToPath} from 'node:url';

const SessionPush = createRequire(import.meta.url)('../client.js');
const realFetch = globalThis.fetch;

// fakeNet replaces fetch: each request waits until the test answers it.
function fakeNet() {
  const queued = [];
  const takers = [];
  globalThis.fetch = (url, init = {}) => new Promise((resolve, reject) => {
    const req = {
      url,
      method: init.method || 'GET',
      headers: new Headers(init.headers),
      respond(status, body = null, headers = {}) {
        resolve(new Response(status === 304 ? null : body, {status, headers}));
      },
      reject,
    };
    init.signal?.addEventListener('abort', () => {
      req.aborted = true;
      reject(new DOMException('aborted', 'AbortError'));
    });
    if (takers.length) takers.shift()(req);
    else queued.push(req);
  });
  return {next: () => (queued.length ? Promise.resolve(queued.shift()) : new Promise((r) => takers.push(r)))};
}

// FakeEventSource records the streams the client opens.
class FakeEventSource {
  static opened = [];
  static takers = [];
  static next() {
    return FakeEventSource.opened.length
      ? Promise.resolve(FakeEventSource.opened.shift())
      : new Promise((r) => FakeEventSource.takers.push(r));
  }
  constructor(url) {
    this.url = url;
    this.closed = false;
    if (FakeEventSource.takers.length) FakeEventSource.takers.shift()(this);
    else FakeEventSource.opened.push(this);
  }
  addEventListener(name, fn) { this['on' + name] = fn; }
  close() { this.closed = true; }
}

// FakeWebSocket records the WebSockets the client opens; the test plays
// the server by setting protocol and calling onopen, onmessage, onclose.
class FakeWebSocket {
  static opened = [];
  static takers = [];
  static next() {
    return FakeWebSocket.opened.length
      ? Promise.resolve(FakeWebSocket.opened.shift())
      : new Promise((r) => FakeWebSocket.takers.push(r));
  }
  constructor(url, protocols) {
    this.url = url;
    this.protocols = protocols;
    this.protocol = '';
    this.closed = false;
    if (FakeWebSocket.takers.length) FakeWebSocket.takers.shift()(this);
    else FakeWebSocket.opened.push(this);
  }
  close() { this.closed = true; }
}

// withGlobals runs fn with globalThis' properties set as given, then puts
// back what was there (Node 22 has a WebSocket of its own).
async function withGlobals(globals, fn) {
  const saved = Object.fromEntries(Object.keys(globals).map((k) => [k, Object.getOwnPropertyDescriptor(globalThis, k)]));
  Object.assign(globalThis, globals);
  try {
    await fn();
  } finally {
    for (const [k, d] of Object.entries(saved)) {
      if (d) Object.defineProperty(globalThis, k, d);
      else delete globalThis[k];
    }
  }
}

const json = {'Content-Type': 'application/json'};
const at = (seconds) => new Date(seconds * 1000).toUTCString();

function start(options) {
  const messages = [];
  const states = [];
  const sub = SessionPush.connect(Object.assign({
    minDelay: 1,
    maxDelay: 4,
    onMessage: (m) => messages.push(m),
    onState: (s) => states.push(s),
  }, options));
  return {sub, messages, states};
}

async function expectSubscribe(net, answer) {
  const req = await net.next();
  assert.equal(req.url, '/subscribe');
  assert.equal(req.method, 'POST');
  req.respond(200, JSON.stringify(answer), json);
}

async function expectPoll(net, url, headers) {
  const req = await net.next();
  assert.equal(req.url, url);
  assert.deepEqual(Object.fromEntries(req.headers), headers);
  return req;
}

test('long-poll: resumes from the cursor, walks, resubscribes', async () => {
  const net = fakeNet();
  const {sub, messages, states} = start({transports: ['longpoll']});

  await expectSubscribe(net, {channel: 'c1', cursor: '100:0', url: '/sub/c1'});
  (await expectPoll(net, '/sub/c1', {'last-event-id': '100:0'}))
    .respond(200, '{"a":1}', {...json, 'Last-Modified': at(101), Etag: '0'});
  (await expectPoll(net, '/sub/c1', {'if-modified-since': at(101), 'if-none-match': '0'})).respond(408);
  (await expectPoll(net, '/sub/c1', {'if-modified-since': at(101), 'if-none-match': '0'}))
    .respond(200, 'plain', {'Content-Type': 'text/plain', 'Last-Modified': at(101), Etag: '1'});
  (await expectPoll(net, '/sub/c1', {'if-modified-since': at(101), 'if-none-match': '1'})).respond(410);

  // Same channel: resume after the last message, not from the new cursor.
  await expectSubscribe(net, {channel: 'c1', cursor: '105:0', url: '/sub/c1'});
  (await expectPoll(net, '/sub/c1', {'last-event-id': '101:1'})).respond(403);

  // A new channel: start from its cursor.
  await expectSubscribe(net, {channel: 'c2', cursor: '0:0', url: '/sub/c2'});
  (await expectPoll(net, '/sub/c2', {'last-event-id': '0:0'})).respond(503);
  const last = await expectPoll(net, '/sub/c2', {'last-event-id': '0:0'}); // retried after a 5xx
  sub.close();
  last.respond(200, 'late', {'Last-Modified': at(102), Etag: '0'}); // after close: dropped

  assert.deepEqual(messages.map((m) => [m.data, m.text, m.id, m.channel]), [
    [{a: 1}, '{"a":1}', '101:0', 'c1'],
    ['plain', 'plain', '101:1', 'c1'],
  ]);
  assert.equal(states.at(-1), 'closed');
  assert.ok(states.includes('reconnecting'));
});

test('eventsource: resumes with last_event_id, falls back to long-poll', async () => {
  const net = fakeNet();
  globalThis.EventSource = FakeEventSource;
  try {
    const {sub, messages, states} = start({transports: ['eventsource', 'longpoll'], events: ['upd']});

    await expectSubscribe(net, {channel: 'c1', cursor: '100:0', url: '/sub/c1'});
    const es1 = await FakeEventSource.next();
    assert.equal(es1.url, '/sub/c1?last_event_id=100%3A0');
    es1.onopen();
    es1.onmessage({type: 'message', data: '{"x":1}', lastEventId: '100:1'});
    es1.onupd({type: 'upd', data: 'text', lastEventId: '100:2'});
    es1.onerror(); // the stream ended
    assert.ok(es1.closed, 'the client takes over reconnecting');

    await expectSubscribe(net, {channel: 'c1', cursor: '100:2', url: '/sub/c1'});
    const es2 = await FakeEventSource.next();
    assert.equal(es2.url, '/sub/c1?last_event_id=100%3A2');
    es2.onerror(); // refused before opening, once...

    await expectSubscribe(net, {channel: 'c1', cursor: '100:2', url: '/sub/c1'});
    (await FakeEventSource.next()).onerror(); // ...twice: try long-poll

    await expectSubscribe(net, {channel: 'c1', cursor: '100:2', url: '/sub/c1'});
    await expectPoll(net, '/sub/c1', {'last-event-id': '100:2'});
    sub.close();

    assert.deepEqual(messages.map((m) => [m.data, m.id, m.event]), [
      [{x: 1}, '100:1', 'message'],
      ['text', '100:2', 'upd'],
    ]);
    assert.deepEqual(states.filter((s) => s === 'open').length, 2);
  } finally {
    delete globalThis.EventSource;
  }
});

test('websocket: ws+meta.nchan ids, resumes after close 1001, falls back after failed handshakes', async () => {
  const net = fakeNet();
  await withGlobals({WebSocket: FakeWebSocket, EventSource: FakeEventSource, location: {href: 'http://example.test/app/'}}, async () => {
    const {sub, messages, states} = start({}); // the default order: websocket first

    await expectSubscribe(net, {channel: 'c1', cursor: '100:0', url: '/sub/c1'});
    const ws1 = await FakeWebSocket.next();
    assert.equal(ws1.url, 'ws://example.test/sub/c1?last_event_id=100%3A0');
    assert.deepEqual(ws1.protocols, ['ws+meta.nchan', 'ws+meta.sessionpush']); // Nchan takes the first
    ws1.protocol = 'ws+meta.nchan'; // the server took Nchan's subprotocol
    ws1.onopen();
    ws1.onmessage({data: 'id: 100:1\ncontent-type: application/json\n\n{"x":1}'});
    ws1.onmessage({data: 'id: 100:2\n\ntwo\n\nparagraphs'}); // no type: JSON if it parses
    ws1.onmessage({data: new TextEncoder().encode('id: 100:3\ncontent-type: text/plain\n\n{"as":"text"}').buffer});
    ws1.onmessage({data: 'id: 100:4\n\n'}); // an empty message
    ws1.onclose({code: 1001, reason: '410 Gone'}); // the channel ended, or the relay stopped

    await expectSubscribe(net, {channel: 'c1', cursor: '100:4', url: '/sub/c1'});
    const ws2 = await FakeWebSocket.next();
    assert.equal(ws2.url, 'ws://example.test/sub/c1?last_event_id=100%3A4');
    ws2.onclose({code: 1006, reason: ''}); // a failed handshake (403), once...

    await expectSubscribe(net, {channel: 'c1', cursor: '100:4', url: '/sub/c1'});
    (await FakeWebSocket.next()).onclose({code: 1006, reason: ''}); // ...twice: try EventSource

    await expectSubscribe(net, {channel: 'c1', cursor: '100:4', url: '/sub/c1'});
    const es = await FakeEventSource.next();
    assert.equal(es.url, '/sub/c1?last_event_id=100%3A4');
    sub.close();

    assert.deepEqual(messages.map((m) => [m.data, m.text, m.id, m.event]), [
      [{x: 1}, '{"x":1}', '100:1', 'message'],
      ['two\n\nparagraphs', 'two\n\nparagraphs', '100:2', 'message'],
      ['{"as":"text"}', '{"as":"text"}', '100:3', 'message'],
      ['', '', '100:4', 'message'],
    ]);
    assert.deepEqual(states.filter((s) => s === 'open').length, 1);
  });
});

test('websocket: https becomes wss; without ws+meta.nchan, frames are bodies', async () => {
  const net = fakeNet();
  await withGlobals({WebSocket: FakeWebSocket, location: {href: 'https://example.test/'}}, async () => {
    const {sub, messages, states} = start({transports: ['websocket']});
    await expectSubscribe(net, {channel: 'c1', cursor: '100:0', url: '/sub/c1?x=1'});
    const ws1 = await FakeWebSocket.next();
    assert.equal(ws1.url, 'wss://example.test/sub/c1?x=1&last_event_id=100%3A0');
    ws1.onopen(); // protocol '': the server ignored the subprotocol
    ws1.onmessage({data: 'id: 100:1\n\n"body"'});
    ws1.onclose({code: 1006});

    // No id was learnt: resume from the same place, on an absolute URL.
    await expectSubscribe(net, {channel: 'c1', cursor: '100:1', url: 'http://push.example.test/sub/c1'});
    const ws2 = await FakeWebSocket.next();
    assert.equal(ws2.url, 'ws://push.example.test/sub/c1?last_event_id=100%3A0');
    ws2.onopen();
    sub.close();
    assert.ok(ws2.closed);
    assert.deepEqual(messages.map((m) => [m.text, m.id]), [['id: 100:1\n\n"body"', null]]);
    assert.deepEqual(states.filter((s) => s === 'open').length, 2);
  });
});

test('gap: onGap(lastId) before the next message, on every transport', async () => {
  const net = fakeNet();
  await withGlobals({WebSocket: FakeWebSocket, EventSource: FakeEventSource, location: {href: 'http://example.test/'}}, async () => {
    const log = [];
    const {sub} = start({
      onMessage: (m) => log.push(['message', m.id]),
      onGap: (lastId, info) => log.push(['gap', lastId, info.channel]),
    });

    // WebSocket with ws+meta.sessionpush (the embedded relay's choice): a "gap:" line in the frame.
    await expectSubscribe(net, {channel: 'c1', cursor: '100:0', url: '/sub/c1'});
    const ws = await FakeWebSocket.next();
    ws.protocol = 'ws+meta.sessionpush';
    ws.onopen();
    ws.onmessage({data: 'id: 100:5\ncontent-type: application/json\ngap: 100:0\n\n{"n":5}'});
    ws.onmessage({data: 'id: 100:6\n\n{"n":6}'});
    ws.onclose({code: 1006});
    for (let i = 0; i < 2; i++) { // two failed handshakes: EventSource
      await expectSubscribe(net, {channel: 'c1', cursor: '100:6', url: '/sub/c1'});
      (await FakeWebSocket.next()).onclose({code: 1006});
    }

    // EventSource: an event "gap" whose data is the last id, without an id.
    await expectSubscribe(net, {channel: 'c1', cursor: '100:6', url: '/sub/c1'});
    const es = await FakeEventSource.next();
    assert.equal(es.url, '/sub/c1?last_event_id=100%3A6');
    es.onopen();
    es.ongap({type: 'gap', data: '100:6', lastEventId: '100:6'});
    es.onmessage({type: 'message', data: '{"n":9}', lastEventId: '100:9'});
    es.onerror();
    for (let i = 0; i < 2; i++) { // two streams that never open: long-poll
      await expectSubscribe(net, {channel: 'c1', cursor: '100:9', url: '/sub/c1'});
      (await FakeEventSource.next()).onerror();
    }

    // Long-poll: the X-Gap header on the answer.
    await expectSubscribe(net, {channel: 'c1', cursor: '100:9', url: '/sub/c1'});
    (await expectPoll(net, '/sub/c1', {'last-event-id': '100:9'}))
      .respond(200, '{"n":12}', {...json, 'Last-Modified': at(100), Etag: '12', 'X-Gap': '100:9'});
    (await expectPoll(net, '/sub/c1', {'if-modified-since': at(100), 'if-none-match': '12'}))
      .respond(200, '{"n":13}', {...json, 'Last-Modified': at(100), Etag: '13'});
    await expectPoll(net, '/sub/c1', {'if-modified-since': at(100), 'if-none-match': '13'});
    sub.close();

    assert.deepEqual(log, [
      ['gap', '100:0', 'c1'], ['message', '100:5'], ['message', '100:6'],
      ['gap', '100:6', 'c1'], ['message', '100:9'],
      ['gap', '100:9', 'c1'], ['message', '100:12'], ['message', '100:13'],
    ]);
  });
});

test('a channel that the relay lost and opened anew resumes from its cursor', async () => {
  const net = fakeNet();
  const {sub, messages} = start({transports: ['longpoll']});
  await expectSubscribe(net, {channel: 'c1', cursor: '200:0', url: '/sub/c1'});
  (await expectPoll(net, '/sub/c1', {'last-event-id': '200:0'}))
    .respond(200, '"a"', {'Last-Modified': at(201), Etag: '4'});
  (await expectPoll(net, '/sub/c1', {'if-modified-since': at(201), 'if-none-match': '4'})).respond(410);
  // The relay restarted: the same channel, empty. 201:4 would skip its
  // first messages if they came within that second.
  await expectSubscribe(net, {channel: 'c1', cursor: '0:0', url: '/sub/c1'});
  await expectPoll(net, '/sub/c1', {'last-event-id': '0:0'});
  sub.close();
  assert.deepEqual(messages.map((m) => m.id), ['201:4']);
});

test('long-poll: back to open after network errors', async () => {
  const net = fakeNet();
  const {sub, states} = start({transports: ['longpoll']});
  await expectSubscribe(net, {channel: 'c1', cursor: '0:0', url: '/sub/c1'});
  const first = await expectPoll(net, '/sub/c1', {'last-event-id': '0:0'});
  first.reject(new TypeError('network error'));
  (await expectPoll(net, '/sub/c1', {'last-event-id': '0:0'})).respond(408);
  await expectPoll(net, '/sub/c1', {'last-event-id': '0:0'});
  sub.close();
  assert.deepEqual(states, ['connecting', 'open', 'reconnecting', 'open', 'closed']);
});

test('a WebSocket that cannot be made counts as a failed handshake', async () => {
  const net = fakeNet();
  class Refusing { constructor() { throw new SyntaxError('bad URL'); } }
  const errors = [];
  await withGlobals({WebSocket: Refusing, location: {href: 'http://example.test/'}}, async () => {
    const {sub} = start({transports: ['websocket', 'longpoll'], onError: (e) => errors.push(e)});
    await expectSubscribe(net, {channel: 'c1', cursor: '0:0', url: '/sub/c1'});
    await expectSubscribe(net, {channel: 'c1', cursor: '0:0', url: '/sub/c1'});
    await expectSubscribe(net, {channel: 'c1', cursor: '0:0', url: '/sub/c1'});
    await expectPoll(net, '/sub/c1', {'last-event-id': '0:0'}); // fell back
    sub.close();
  });
  assert.deepEqual(errors.map(String), ['SyntaxError: bad URL', 'SyntaxError: bad URL']);
});

test('unknown transports are refused', () => {
  assert.throws(() => SessionPush.connect({transports: ['carrier-pigeon']}), /unknown transport carrier-pigeon/);
});

test('signed out: 401 from /subscribe stops the client', async () => {
  const net = fakeNet();
  const {states} = start({transports: ['longpoll']});
  (await net.next()).respond(401);
  await new Promise((r) => setTimeout(r, 10));
  assert.deepEqual(states, ['connecting', 'signed-out', 'closed']);
});

test('errors from /subscribe back off and retry', async () => {
  const net = fakeNet();
  const errors = [];
  const {sub} = start({transports: ['longpoll'], onError: (e) => errors.push(e)});
  (await net.next()).respond(500);
  await expectSubscribe(net, {channel: 'c1', cursor: '0:0', url: '/sub/c1'});
  await expectPoll(net, '/sub/c1', {'last-event-id': '0:0'});
  sub.close();
  assert.equal(errors.length, 1);
  assert.match(String(errors[0]), /HTTP 500/);
});

// With "broadcast" in the answer, a second stream of the same transport
// listens to the broadcast channel, from its own position.
const bc = (cursor) => ({channel: 'b', cursor, url: '/sub/b'});
const openStates = (states) => (s, info) => states.push(s === 'open' ? `open ${info.channel} ${info.broadcast}` : s);

test('broadcast: a second stream with its own position; the end of either resubscribes', async () => {
  const net = fakeNet();
  const states = [];
  const {sub, messages} = start({transports: ['longpoll'], onState: openStates(states)});

  await expectSubscribe(net, {channel: 'c1', cursor: '100:0', url: '/sub/c1', broadcast: bc('50:0')});
  const b1 = await expectPoll(net, '/sub/b', {'last-event-id': '50:0'});
  const s1 = await expectPoll(net, '/sub/c1', {'last-event-id': '100:0'});
  b1.respond(200, '{"to":"all"}', {...json, 'Last-Modified': at(51), Etag: '0'});
  const b2 = await expectPoll(net, '/sub/b', {'if-modified-since': at(51), 'if-none-match': '0'});
  s1.respond(200, '{"to":"me"}', {...json, 'Last-Modified': at(101), Etag: '0'});
  const s2 = await expectPoll(net, '/sub/c1', {'if-modified-since': at(101), 'if-none-match': '0'});

  // The broadcast stream ends: /subscribe again. The session's poll carries
  // on; the broadcast stream resumes after its last id, not its new cursor.
  b2.respond(410);
  await expectSubscribe(net, {channel: 'c1', cursor: '101:0', url: '/sub/c1', broadcast: bc('60:0')});
  const b3 = await expectPoll(net, '/sub/b', {'last-event-id': '51:0'});

  // The session's stream ends, and its channel is new: it starts from its
  // cursor, and the broadcast poll carries on.
  s2.respond(410);
  await expectSubscribe(net, {channel: 'c2', cursor: '0:0', url: '/sub/c2', broadcast: bc('60:0')});
  const s3 = await expectPoll(net, '/sub/c2', {'last-event-id': '0:0'});
  b3.respond(200, '{"to":"all","n":2}', {...json, 'Last-Modified': at(61), Etag: '0'});
  const b4 = await expectPoll(net, '/sub/b', {'if-modified-since': at(61), 'if-none-match': '0'});
  s3.respond(200, '{"to":"me","n":2}', {...json, 'Last-Modified': at(1), Etag: '0'});
  const s4 = await expectPoll(net, '/sub/c2', {'if-modified-since': at(1), 'if-none-match': '0'});

  // An answer without "broadcast" ends the broadcast stream.
  s4.respond(403);
  await expectSubscribe(net, {channel: 'c2', cursor: '1:0', url: '/sub/c2'});
  await expectPoll(net, '/sub/c2', {'last-event-id': '1:0'});
  assert.ok(b4.aborted, 'the broadcast poll is aborted');
  sub.close();

  assert.deepEqual(messages.map((m) => [m.data, m.id, m.channel]), [
    [{to: 'all'}, '51:0', 'b'],
    [{to: 'me'}, '101:0', 'c1'],
    [{to: 'all', n: 2}, '61:0', 'b'],
    [{to: 'me', n: 2}, '1:0', 'c2'],
  ]);
  assert.deepEqual(states, [
    'connecting', 'open c1 b',
    'open c1 b', // the broadcast stream is back; the session's never left
    'reconnecting', 'connecting', 'open c2 b',
    'reconnecting', 'connecting', 'open c2 null',
    'closed',
  ]);
});

test('broadcast over websocket: both streams end, one /subscribe restarts both', async () => {
  const net = fakeNet();
  await withGlobals({WebSocket: FakeWebSocket, location: {href: 'http://example.test/'}}, async () => {
    const states = [];
    const {sub, messages} = start({transports: ['websocket'], onState: openStates(states)});

    await expectSubscribe(net, {channel: 'c1', cursor: '100:0', url: '/sub/c1', broadcast: bc('50:0')});
    const wb = await FakeWebSocket.next();
    const ws = await FakeWebSocket.next();
    assert.equal(wb.url, 'ws://example.test/sub/b?last_event_id=50%3A0');
    assert.equal(ws.url, 'ws://example.test/sub/c1?last_event_id=100%3A0');
    wb.protocol = ws.protocol = 'ws+meta.nchan';
    ws.onopen();
    wb.onopen();
    wb.onmessage({data: 'id: 50:1\n\n{"to":"all"}'});
    ws.onmessage({data: 'id: 100:1\n\n{"to":"me"}'});

    // The relay restarts, losing both channels: one call of /subscribe, and
    // both streams start again from their (older) cursors.
    wb.onclose({code: 1001});
    ws.onclose({code: 1001});
    await expectSubscribe(net, {channel: 'c1', cursor: '0:0', url: '/sub/c1', broadcast: bc('0:0')});
    const wb2 = await FakeWebSocket.next();
    const ws2 = await FakeWebSocket.next();
    assert.equal(wb2.url, 'ws://example.test/sub/b?last_event_id=0%3A0');
    assert.equal(ws2.url, 'ws://example.test/sub/c1?last_event_id=0%3A0');
    wb2.protocol = ws2.protocol = 'ws+meta.nchan';
    wb2.onopen();
    ws2.onopen();
    wb2.onmessage({data: 'id: 0:1\n\n{"to":"all","n":2}'});

    // The broadcast stream alone is refused: the session's stream carries
    // on, the state does not change, and the broadcast stream resumes.
    wb2.onclose({code: 1006});
    await expectSubscribe(net, {channel: 'c1', cursor: '0:0', url: '/sub/c1', broadcast: bc('0:1')});
    const wb3 = await FakeWebSocket.next();
    assert.equal(wb3.url, 'ws://example.test/sub/b?last_event_id=0%3A1');
    assert.ok(!ws2.closed);
    sub.close();
    assert.ok(wb3.closed && ws2.closed);

    assert.deepEqual(messages.map((m) => [m.data, m.id, m.channel]), [
      [{to: 'all'}, '50:1', 'b'],
      [{to: 'me'}, '100:1', 'c1'],
      [{to: 'all', n: 2}, '0:1', 'b'],
    ]);
    assert.deepEqual(states, ['connecting', 'open c1 null', 'open c1 b', 'connecting', 'open c1 b', 'closed']);
  });
});

// The example server, built and started on a free port, driven by the client
// over real HTTP with a one-cookie jar.
test('against the example server', {timeout: 120000}, async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'sessionpush-example-'));
  t.after(() => rmSync(dir, {recursive: true, force: true}));
  const bin = join(dir, 'example');
  try {
    execFileSync('go', ['build', '-o', bin, '.'], {cwd: dirname(fileURLToPath(import.meta.url)), stdio: 'inherit'});
  } catch (err) {
    t.skip('cannot build the example: ' + err.message);
    return;
  }
  const server = spawn(bin, ['-addr', '127.0.0.1:0'], {stdio: ['ignore', 'pipe', 'inherit']});
  const exited = new Promise((resolve) => server.on('exit', (code, signal) => resolve({code, signal})));
  t.after(() => server.kill('SIGKILL'));
  const base = await new Promise((resolve, reject) => {
    let out = '';
    server.stdout.on('data', (chunk) => {
      out += chunk;
      const m = out.match(/msg=listening url=(\S+)/);
      if (m) resolve(m[1]);
    });
    exited.then(() => reject(new Error('the server exited: ' + out)));
  });

  let cookie = '';
  const http = async (path, init = {}) => {
    const res = await realFetch(base + path, {...init, redirect: 'manual', headers: {...init.headers, Cookie: cookie}});
    for (const c of res.headers.getSetCookie()) {
      cookie = /max-age=0/i.test(c) ? '' : c.split(';')[0];
    }
    return res;
  };
  globalThis.fetch = http;
  try {
    const login = await http('/login', {method: 'POST', body: new URLSearchParams({user: 'alice'})});
    assert.equal(login.status, 303);

    const messages = [];
    const states = [];
    let wake = () => {};
    const changed = () => new Promise((r) => { wake = r; });
    let next = changed();
    SessionPush.connect({
      transports: ['longpoll'],
      onMessage: (m) => { messages.push(m); wake(); next = changed(); },
      onState: (s) => { states.push(s); wake(); next = changed(); },
    });
    while (!states.includes('open')) await next;

    // The cursor makes this safe even if the first poll is not there yet.
    const push = await http('/push', {method: 'POST', headers: {'Content-Type': 'application/json'}, body: '{"text":"hi"}'});
    assert.equal(push.status, 204);
    while (messages.length < 1) await next;
    assert.deepEqual(messages[0].data, {text: 'hi'});
    assert.match(messages[0].id, /^\d+:\d+$/);

    await http('/push', {method: 'POST', headers: {'Content-Type': 'application/json'}, body: '"two"'});
    while (messages.length < 2) await next;
    assert.equal(messages[1].data, 'two');

    // Logout ends the long-poll (410); /subscribe then says 401.
    assert.equal((await http('/logout', {method: 'POST'})).status, 303);
    while (!states.includes('closed')) await next;
    assert.deepEqual(states.slice(-2), ['signed-out', 'closed']);
  } finally {
    globalThis.fetch = realFetch;
  }
  server.kill('SIGINT');
  assert.deepEqual(await exited, {code: 0, signal: null});
});
