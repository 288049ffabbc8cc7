// Listens with the npm package eventsource, for eventsource_test.go:
//
//	node eventsource.mjs <url> <cookie> [<last-event-id>]
//
// Every request carries the Cookie header (the listening endpoint checks
// that the session owns the channel) and, until the client has an ID of
// its own, Last-Event-ID: <last-event-id> (the cursor of /subscribe). It
// prints one JSON line per request, open, error and message, and ends when
// its standard input closes.
import {EventSource} from 'eventsource';

const [url, cookie, start] = process.argv.slice(2);
const print = (o) => process.stdout.write(JSON.stringify(o) + '\n');

const es = new EventSource(url, {
  fetch: (input, init) => {
    const headers = {...init.headers, Cookie: cookie};
    if (start && !headers['Last-Event-ID']) headers['Last-Event-ID'] = start;
    print({type: 'request', lastEventId: headers['Last-Event-ID'] ?? ''});
    return fetch(input, {...init, headers});
  },
});
es.addEventListener('open', () => print({type: 'open'}));
es.addEventListener('error', (e) => print({type: 'error', error: `${e.code ?? ''} ${e.message ?? ''}`.trim(), readyState: es.readyState}));
es.addEventListener('message', (e) => print({type: 'message', id: e.lastEventId, data: e.data}));

process.stdin.on('end', () => {
  es.close();
  process.exit(0);
});
process.stdin.resume();
