// SessionPush: a small, dependency-free browser client for sessionpush.
//
//   const sub = SessionPush.connect({
//     subscribeURL: '/subscribe',              // answers {channel, cursor, url}
//     transports: ['eventsource', 'longpoll'], // in order of preference
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
// nothing is lost or repeated across reconnects. When the channel ends (410)
// or is refused (403) it asks subscribeURL again: the same channel resumes
// where it was, a new one from its cursor. The wire format is Nchan's, so the
// client works unchanged against the embedded relay or Nchan.
(function (root) {
  'use strict';

  function connect(options) {
    const opts = Object.assign({
      subscribeURL: '/subscribe',
      transports: ['eventsource', 'longpoll'],
      events: [],
      minDelay: 500,
      maxDelay: 15000,
      onMessage() {},
      onState() {},
      onError() {},
    }, options);
    const transports = opts.transports.filter((t) => t === 'longpoll' ||
      (t === 'eventsource' && typeof root.EventSource === 'function'));
    if (transports.length === 0) throw new Error('SessionPush: no usable transport');

    let closed = false;
    let sub = null;     // the last answer of subscribeURL
    let lastId = '';    // where to resume: the last message's id, else the cursor
    let transport = 0;  // index in transports
    let failures = 0;   // errors in a row, for the backoff
    let unopened = 0;   // EventSources in a row that never opened
    let timer = null;
    let es = null;
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
      if (!sub || next.channel !== sub.channel || !lastId) lastId = next.cursor || '';
      sub = next;
      if (transports[transport] === 'eventsource') return eventSource();
      state('open', {transport: 'longpoll', channel: sub.channel});
      poll(lastId ? {'Last-Event-ID': lastId} : {});
    }

    function eventSource() {
      let url = sub.url;
      if (lastId) url += (url.includes('?') ? '&' : '?') + 'last_event_id=' + encodeURIComponent(lastId);
      let opened = false;
      const onEvent = (e) => {
        if (e.lastEventId) lastId = e.lastEventId;
        deliver(e.data, e.lastEventId, e.type, true);
      };
      es = new root.EventSource(url);
      es.onopen = () => {
        opened = true;
        failures = unopened = 0;
        state('open', {transport: 'eventsource', channel: sub.channel});
      };
      es.onmessage = onEvent;
      for (const name of opts.events) es.addEventListener(name, onEvent);
      es.onerror = () => {
        // The stream ended or was refused; EventSource does not say which.
        // Rather than let the browser retry the same channel, ask which
        // channel to listen to and resume after lastId. Fall back to the
        // next transport when EventSource keeps failing to open.
        es.close();
        es = null;
        if (!opened && ++unopened >= 2 && transport < transports.length - 1) {
          transport++;
          unopened = 0;
        }
        later(subscribe);
      };
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
      if (status === 200) {
        failures = 0;
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
        failures = 0; // the poll timed out: ask again at once
        poll(headers);
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
      if (es) es.close();
      if (aborter) aborter.abort();
      opts.onState('closed', {});
    }

    subscribe();
    return {close};
  }

  const SessionPush = {connect};
  if (typeof module === 'object' && module.exports) module.exports = SessionPush;
  else root.SessionPush = SessionPush;
})(typeof self !== 'undefined' ? self : globalThis);
