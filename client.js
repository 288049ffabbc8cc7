// SessionPush: a small, dependency-free browser client for sessionpush.
//
//   const sub = SessionPush.connect({
//     subscribeURL: '/subscribe',              // answers {channel, cursor, url}
//     transports: ['websocket', 'eventsource', 'longpoll'], // in order of preference
//     events: [],               // EventSource event names to receive besides unnamed ones
//     minDelay: 500, maxDelay: 15000,          // backoff after errors, in ms
//     onMessage(m) {},     // m: {data, text, id, event, channel}; data is the parsed JSON, else the text
//     onState(state, info) {}, // 'connecting', 'open' {transport, channel},
//                              // 'reconnecting' {delay}, 'signed-out', 'closed'
//     onError(err) {},
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
// against the embedded relay or Nchan. Bodies are delivered as text: the
// kit is for JSON and text messages.
(function (root) {
  'use strict';

  const META = 'ws+meta.nchan'; // WebSocket frames with "id:" and "content-type:" lines

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
    let sub = null;     // the last answer of subscribeURL
    let lastId = '';    // where to resume: the last message's id, else the cursor
    let transport = 0;  // index in transports
    let failures = 0;   // errors in a row, for the backoff
    let unopened = 0;   // streams in a row that never opened
    let timer = null;
    let stream = null;  // the open EventSource or WebSocket
    let aborter = null;

    const state = (s, info) => { if (!closed) opts.onState(s, info || {}); };

    // later runs fn after a doubling delay with jitter.
    function later(fn, err) {
      if (closed) return;
      if (err) opts.onError(err);
      const max = Math.min(opts.maxDelay, opts.minDelay * 2 ** failures++);
      const delay = Math.round(max / 2 + Math.random() * max / 2);
      state('reconnecting', {delay});
      timer = setTimeout(fn, delay);
    }

    function opened(name) {
      failures = unopened = 0;
      state('open', {transport: name, channel: sub.channel});
    }

    function request(url, init) {
      aborter = new AbortController();
      return fetch(url, Object.assign({credentials: 'same-origin', cache: 'no-store', signal: aborter.signal}, init));
    }

    async function subscribe() {
      state('connecting');
      let next;
      try {
        const res = await request(opts.subscribeURL, {method: 'POST', headers: {Accept: 'application/json'}});
        if (res.status === 401) {
          state('signed-out');
          return close();
        }
        if (!res.ok) throw new Error('SessionPush: ' + opts.subscribeURL + ': HTTP ' + res.status);
        next = await res.json();
      } catch (err) {
        return later(subscribe, err);
      }
      if (closed) return;
      // A new channel, or one whose newest message is older than ours (the
      // relay lost it and opened it anew, e.g. after a restart): start from
      // its cursor. Otherwise resume after the last message seen.
      if (!sub || next.channel !== sub.channel || !lastId || older(next.cursor, lastId)) lastId = next.cursor || '';
      sub = next;
      try {
        listen[transports[transport]]();
      } catch (err) { // e.g. a URL that WebSocket refuses
        opts.onError(err);
        streamEnded(false);
      }
    }

    // streamEnded follows the end of an EventSource or WebSocket: ask
    // subscribeURL again, and fall back to the next transport when this one
    // keeps failing to open.
    function streamEnded(wasOpen) {
      stream = null;
      if (!wasOpen && ++unopened >= 2 && transport < transports.length - 1) {
        transport++;
        unopened = 0;
      }
      later(subscribe);
    }

    function withPosition(url) {
      return lastId ? url + (url.includes('?') ? '&' : '?') + 'last_event_id=' + encodeURIComponent(lastId) : url;
    }

    function webSocket() {
      const url = new URL(withPosition(sub.url), root.location && root.location.href);
      url.protocol = url.protocol.replace(/^http/, 'ws');
      let open = false;
      const ws = stream = new root.WebSocket(url.href, META);
      ws.binaryType = 'arraybuffer';
      ws.onopen = () => {
        open = true;
        opened('websocket');
      };
      ws.onmessage = (e) => {
        let frame = typeof e.data === 'string' ? e.data : new TextDecoder().decode(e.data);
        let id = '', type = '';
        if (ws.protocol === META) {
          const end = frame.indexOf('\n\n');
          for (const line of frame.slice(0, Math.max(end, 0)).split('\n')) {
            const [, key, value] = /^([^:]*): ?(.*)$/.exec(line) || [];
            if (key === 'id') id = value;
            else if (key === 'content-type') type = value;
          }
          frame = end < 0 ? frame : frame.slice(end + 2);
        }
        if (id) lastId = id;
        deliver(frame, id, 'message', !type || /json/i.test(type));
      };
      // Closed by the relay (1001 "410 Gone": the channel ended), by the
      // network, or refused at the handshake (403): the browser does not
      // tell which. onerror always comes with onclose.
      ws.onclose = () => {
        if (stream === ws) streamEnded(open);
      };
    }

    function eventSource() {
      let open = false;
      const onEvent = (e) => {
        if (e.lastEventId) lastId = e.lastEventId;
        deliver(e.data, e.lastEventId, e.type, true);
      };
      const es = stream = new root.EventSource(withPosition(sub.url));
      es.onopen = () => {
        open = true;
        opened('eventsource');
      };
      es.onmessage = onEvent;
      for (const name of opts.events) es.addEventListener(name, onEvent);
      es.onerror = () => {
        // The stream ended or was refused; EventSource does not say which.
        // Rather than let the browser retry the same channel, ask which
        // channel to listen to and resume after lastId.
        es.close();
        streamEnded(open);
      };
    }

    function longPoll() {
      opened('longpoll');
      poll(lastId ? {'Last-Event-ID': lastId} : {});
    }

    async function poll(headers) {
      let res, text;
      try {
        res = await request(sub.url, {headers});
        text = await res.text();
      } catch (err) {
        return later(() => poll(headers), err);
      }
      if (closed) return;
      const status = res.status;
      if (failures && (status === 200 || status === 304 || status === 408)) opened('longpoll'); // back after errors
      if (status === 200) {
        const modified = res.headers.get('Last-Modified');
        const etag = res.headers.get('Etag');
        const type = res.headers.get('Content-Type');
        const seconds = Date.parse(modified) / 1000; // NaN without Last-Modified
        const id = Number.isInteger(seconds) && etag !== null ? seconds + ':' + etag : '';
        if (id) lastId = id;
        deliver(text, id, 'message', !type || /json/i.test(type));
        // Walk on from this message, as Nchan expects.
        poll(id ? {'If-Modified-Since': modified, 'If-None-Match': etag} : lastId ? {'Last-Event-ID': lastId} : {});
      } else if (status === 304 || status === 408) {
        poll(headers); // the poll timed out: ask again at once
      } else if (status >= 500 || status === 429) {
        later(() => poll(headers), new Error('SessionPush: listening: HTTP ' + status));
      } else if (status === 403 || status === 410) {
        later(subscribe); // the channel ended or is not (or no longer) ours
      } else {
        lastId = ''; // e.g. 400, a position the relay does not take: restart from the cursor
        later(subscribe, new Error('SessionPush: listening: HTTP ' + status));
      }
    }

    function deliver(text, id, event, maybeJSON) {
      let data = text;
      if (maybeJSON) {
        try {
          data = JSON.parse(text);
        } catch (_) { /* not JSON: give the text */ }
      }
      try {
        opts.onMessage({data, text, id: id || null, event, channel: sub.channel});
      } catch (err) {
        opts.onError(err);
      }
    }

    function close() {
      if (closed) return;
      closed = true;
      clearTimeout(timer);
      if (stream) stream.close();
      if (aborter) aborter.abort();
      opts.onState('closed', {});
    }

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
