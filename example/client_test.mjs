// Tests of client.js: against a scripted fake network, then against the
// example server itself (long-poll; Node has no EventSource). Run with
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
    };
    init.signal?.addEventListener('abort', () => reject(new DOMException('aborted', 'AbortError')));
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
    const {sub, messages, states} = start({events: ['upd']});

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
