// SessionPush: a small, dependency-free browser client for sessionpush.
//
//   const sub = SessionPush.connect({
//     subscribeURL: '/subscribe',              // answers {channel, cursor, url[, broadcast]}
//     transports: ['websocket', 'eventsource', 'longpoll'], // in order of preference
//     events: [],               // EventSource event names to receive besides unnamed ones
//     minDelay: 500, maxDelay: 15000,          // backoff after errors, in ms
//     onMessage(m) {},     // m: {data, text, id, event, channel}; data is the parsed JSON, else the text
//     onState(state, info) {}, // 'connecting', 'open' {transport, channel, broadcast},
//                              // 'reconnecting' {delay}, 'signed-out', 'closed'
//     onError(err) {},
//     onGap(lastId, info) {},  // messages after lastId were lost; info: {channel}
//   });
//   sub.close();
//
// It asks subscribeURL (with the session cookie) which channel to listen to,
// then listens on the URL it names, resuming after the last message seen, so
// nothing is lost or repeated across reconnects while the relay keeps the
// messages. When the channel ends (410, WebSocket close 1001) or is refused
// (403, a failed handshake) it asks subscribeURL again: the same channel
// resumes where it was, a new one (or one the relay lost and opened anew)
// from its cursor. A transport that fails twice in a row before opening
// gives way to the next one. The wire format is Nchan's (WebSocket with its
// ws+meta.nchan subprotocol, for the ids), so the client works unchanged
// against the embedded relay or Nchan; it also offers ws+meta.sessionpush,
// the same frames with the embedded relay's gap line, which Nchan ignores. Bodies are delivered as text: the
// kit is for JSON and text messages.
//
// When the answer names a broadcast channel ("broadcast": {channel, cursor,
// url}), the client listens to it too, on a second stream of the same
// transport with a position of its own; m.channel tells the two apart. The
// end of either stream makes it ask subscribeURL again and restart the
// stream that ended (or whose channel changed); the other one carries on.
// The states follow the session's stream: 'open' when it opens, and again,
// with info.broadcast (the broadcast channel's ID, else null), when the
// broadcast stream opens beside it.
//
// The embedded relay (package hub) keeps a bounded buffer per channel; a
// listener that resumes after a message older than the buffer, or falls so
// far behind that messages were dropped before it got them, is told so
// before the next message: an EventSource event "gap", a long-poll header
// X-Gap, a "gap:" line in a ws+meta.sessionpush frame. The client then calls
// onGap(lastId, {channel}) with the id of the last message it had, before
// the onMessage of the first message after the gap, and carries on; the
// application may reload what the lost messages would have told it. Nchan
// sends no such signal, and a plain WebSocket carries none.
(function (root) {
  'use strict';

  // WebSocket subprotocols, offered in this order: Nchan takes the first
  // (it checks the header's start), the embedded relay prefers the second,
  // whose frames may also carry a "gap:" line.
  const META = ['ws+meta.nchan', 'ws+meta.sessionpush']; // frames with "id:" and "content-type:" lines

  function connect(options) {
    const opts = Object.assign({
      subscribeURL: '/subscribe',
      transports: ['websocket', 'eventsource', 'longpoll'],
      events: [],
      minDelay: 500,
      maxDelay: 15000,
      onMessage() {},
      onState() {},
      onError() {},
      onGap() {},
    }, options);
    const listen = {websocket: webSocket, eventsource: eventSource, longpoll: longPoll};
    const usable = {
      websocket: typeof root.WebSocket === 'function',
      eventsource: typeof root.EventSource === 'function',
      longpoll: true,
    };
    for (const t of opts.transports) {
      if (!listen[t]) throw new Error('SessionPush: unknown transport ' + t);
    }
    const transports = opts.transports.filter((t) => usable[t]);
    if (transports.length === 0) throw new Error('SessionPush: no usable transport');

    let closed = false;
    let transport = 0;   // index in transports, for both streams
    let unopened = 0;    // session streams in a row that never opened
    let pending = false; // a call of subscribeURL is due or under way
    let aborter = null;  // of that call
    const timers = new Set();
    // The two listeners, each with its own position (lastId: the last
    // message's id, else the cursor), backoff, and stream under way (run:
    // {transport, open, stream or, for long-poll, aborter}; null when none).
    const session = {sub: null, lastId: '', failures: 0, run: null};
    const broadcast = {sub: null, lastId: '', failures: 0, run: null};

    const state = (s, info) => { if (!closed) opts.onState(s, info || {}); };

    // later runs fn after a delay that doubles with l's failures, with
    // jitter. Only the session's troubles show as 'reconnecting'.
    function later(l, fn, err) {
      if (closed) return;
      if (err) opts.onError(err);
      const max = Math.min(opts.maxDelay, opts.minDelay * 2 ** l.failures++);
      const delay = Math.round(max / 2 + Math.random() * max / 2);
      if (l === session) state('reconnecting', {delay});
      const t = setTimeout(() => { timers.delete(t); fn(); }, delay);
      timers.add(t);
    }

    // opened reports 'open' when the session stream opens (or is back after
    // errors), and again when the broadcast stream opens beside it.
    function opened(l, run) {
      if (l.run !== run) return;
      const first = !run.open;
      run.open = true;
      l.failures = 0;
      if (l === session) unopened = 0;
      if ((l === session || first) && session.run && session.run.open) {
        state('open', {
          transport: session.run.transport,
          channel: session.sub.channel,
          broadcast: broadcast.run && broadcast.run.open ? broadcast.sub.channel : null,
        });
      }
    }

    function request(url, init, controller) {
      return fetch(url, Object.assign({credentials: 'same-origin', cache: 'no-store', signal: controller.signal}, init));
    }

    // resubscribe asks subscribeURL again after a backoff: once, however
    // many streams end meanwhile. While the session's stream carries on,
    // the broadcast stream's backoff counts, and no state changes.
    function resubscribe(err) {
      if (pending) return err && opts.onError(err);
      pending = true;
      later(session.run ? broadcast : session, subscribe, err);
    }

    async function subscribe() {
      if (!session.run) state('connecting');
      let next;
      try {
        aborter = new AbortController();
        const res = await request(opts.subscribeURL, {method: 'POST', headers: {Accept: 'application/json'}}, aborter);
        if (res.status === 401) {
          state('signed-out');
          return close();
        }
        if (!res.ok) throw new Error('SessionPush: ' + opts.subscribeURL + ': HTTP ' + res.status);
        next = await res.json();
      } catch (err) {
        return later(session.run ? broadcast : session, subscribe, err);
      }
      if (closed) return;
      pending = false;
      start(broadcast, next.broadcast); // first: the session's 'open' then names it
      start(session, next);
    }

    // start listens to sub's channel with l, unless l listens there
    // already; without sub, it stops listening.
    function start(l, sub) {
      if (l.run && sub && sub.channel === l.sub.channel) return;
      stop(l);
      if (!sub) return;
      // A new channel, or one whose newest message is older than ours (the
      // relay lost it and opened it anew, e.g. after a restart): start from
      // its cursor. Otherwise resume after the last message seen.
      if (!l.sub || sub.channel !== l.sub.channel || !l.lastId || older(sub.cursor, l.lastId)) l.lastId = sub.cursor || '';
      l.sub = sub;
      const run = l.run = {transport: transports[transport], open: false};
      try {
        listen[run.transport](l, run);
      } catch (err) { // e.g. a URL that WebSocket refuses
        opts.onError(err);
        ended(l, run);
      }
    }

    function stop(l) {
      const run = l.run;
      l.run = null;
      if (run && run.stream) run.stream.close();
      if (run && run.aborter) run.aborter.abort();
    }

    // ended follows the end of l's stream: ask subscribeURL again, and fall
    // back to the next transport when the session's keeps failing to open.
    function ended(l, run, err) {
      if (l.run !== run) return; // stopped meanwhile
      l.run = null;
      if (l === session && !run.open && ++unopened >= 2 && transport < transports.length - 1) {
        transport++;
        unopened = 0;
      }
      resubscribe(err);
    }

    function withPosition(l) {
      const url = l.sub.url;
      return l.lastId ? url + (url.includes('?') ? '&' : '?') + 'last_event_id=' + encodeURIComponent(l.lastId) : url;
    }

    function webSocket(l, run) {
      const url = new URL(withPosition(l), root.location && root.location.href);
      url.protocol = url.protocol.replace(/^http/, 'ws');
      const ws = run.stream = new root.WebSocket(url.href, META);
      ws.binaryType = 'arraybuffer';
      ws.onopen = () => opened(l, run);
      ws.onmessage = (e) => {
        let frame = typeof e.data === 'string' ? e.data : new TextDecoder().decode(e.data);
        let id = '', type = '', after = '';
        if (META.includes(ws.protocol)) {
          const end = frame.indexOf('\n\n');
          for (const line of frame.slice(0, Math.max(end, 0)).split('\n')) {
            const [, key, value] = /^([^:]*): ?(.*)$/.exec(line) || [];
            if (key === 'id') id = value;
            else if (key === 'content-type') type = value;
            else if (key === 'gap') after = value;
          }
          frame = end < 0 ? frame : frame.slice(end + 2);
        }
        if (after) gap(l, after);
        if (id) l.lastId = id;
        deliver(l, frame, id, 'message', !type || /json/i.test(type));
      };
      // Closed by the relay (1001 "410 Gone": the channel ended), by the
      // network, or refused at the handshake (403): the browser does not
      // tell which. onerror always comes with onclose.
      ws.onclose = () => ended(l, run);
    }

    function eventSource(l, run) {
      const onEvent = (e) => {
        if (e.lastEventId) l.lastId = e.lastEventId;
        deliver(l, e.data, e.lastEventId, e.type, true);
      };
      const es = run.stream = new root.EventSource(withPosition(l));
      es.onopen = () => opened(l, run);
      es.onmessage = onEvent;
      for (const name of opts.events) es.addEventListener(name, onEvent);
      // The relay's gap signal: no id, so lastEventId stays the last message's.
      es.addEventListener('gap', (e) => gap(l, e.data));
      es.onerror = () => {
        // The stream ended or was refused; EventSource does not say which.
        // Rather than let the browser retry the same channel, ask which
        // channel to listen to and resume after lastId.
        es.close();
        ended(l, run);
      };
    }

    function longPoll(l, run) {
      opened(l, run);
      poll(l, run, l.lastId ? {'Last-Event-ID': l.lastId} : {});
    }

    async function poll(l, run, headers) {
      if (l.run !== run) return;
      let res, text;
      try {
        run.aborter = new AbortController();
        res = await request(l.sub.url, {headers}, run.aborter);
        text = await res.text();
      } catch (err) {
        return l.run === run && later(l, () => poll(l, run, headers), err);
      }
      if (closed || l.run !== run) return;
      const status = res.status;
      if (l.failures && (status === 200 || status === 304 || status === 408)) opened(l, run); // back after errors
      if (status === 200) {
        const modified = res.headers.get('Last-Modified');
        const etag = res.headers.get('Etag');
        const type = res.headers.get('Content-Type');
        const seconds = Date.parse(modified) / 1000; // NaN without Last-Modified
        const id = Number.isInteger(seconds) && etag !== null ? seconds + ':' + etag : '';
        const after = res.headers.get('X-Gap');
        if (after) gap(l, after);
        if (id) l.lastId = id;
        deliver(l, text, id, 'message', !type || /json/i.test(type));
        // Walk on from this message, as Nchan expects.
        poll(l, run, id ? {'If-Modified-Since': modified, 'If-None-Match': etag} : l.lastId ? {'Last-Event-ID': l.lastId} : {});
      } else if (status === 304 || status === 408) {
        poll(l, run, headers); // the poll timed out: ask again at once
      } else if (status >= 500 || status === 429) {
        later(l, () => poll(l, run, headers), new Error('SessionPush: listening: HTTP ' + status));
      } else if (status === 403 || status === 410) {
        ended(l, run); // the channel ended or is not (or no longer) ours
      } else {
        l.lastId = ''; // e.g. 400, a position the relay does not take: restart from the cursor
        ended(l, run, new Error('SessionPush: listening: HTTP ' + status));
      }
    }

    // gap tells the application that messages after lastId were lost.
    function gap(l, lastId) {
      try {
        opts.onGap(lastId, {channel: l.sub.channel});
      } catch (err) {
        opts.onError(err);
      }
    }

    function deliver(l, text, id, event, maybeJSON) {
      let data = text;
      if (maybeJSON) {
        try {
          data = JSON.parse(text);
        } catch (_) { /* not JSON: give the text */ }
      }
      try {
        opts.onMessage({data, text, id: id || null, event, channel: l.sub.channel});
      } catch (err) {
        opts.onError(err);
      }
    }

    function close() {
      if (closed) return;
      closed = true;
      timers.forEach(clearTimeout);
      stop(session);
      stop(broadcast);
      if (aborter) aborter.abort();
      opts.onState('closed', {});
    }

    pending = true;
    subscribe();
    return {close};
  }

  // older reports whether message id a ("<seconds>:<tag>") comes before b;
  // false when either is not such an id.
  function older(a, b) {
    const x = /^(\d+):(\d+)$/.exec(a || ''), y = /^(\d+):(\d+)$/.exec(b);
    return !!(x && y) && (+x[1] < +y[1] || (+x[1] === +y[1] && +x[2] < +y[2]));
  }

  const SessionPush = {connect};
  if (typeof module === 'object' && module.exports) module.exports = SessionPush;
  else root.SessionPush = SessionPush;
})(typeof self !== 'undefined' ? self : globalThis);
