// Package sessionpush gives net/http applications that keep their users in
// gorilla/sessions cookie sessions a private server-push channel per signed-in
// session, on an embedded relay or on Nginx with Nchan.
//
// # The flow
//
// [Manager.Middleware] binds a channel ID (a random-looking UUID) to every
// signed-in session and puts the [Channel] in the request context, where
// [CurrentChannel] finds it. The browser calls the [Manager.SubscribeHandler]
// endpoint, which opens the channel on the relay and answers its ID, a resume
// cursor and the URL to listen on. The browser listens there over WebSocket,
// EventSource or long-poll (the kit's client.js, served by [ClientHandler],
// tries them in that order; Nchan's own client and standard EventSource
// clients work too); application code pushes JSON with [Channel.PushJSON],
// [Manager.PushJSON], [Manager.PushUser] or [Manager.Broadcast]. Logout calls
// [Manager.SignOut], which closes the channel and ends its listeners.
//
// # Relays
//
// By default the Manager runs an embedded relay (package hub) in the
// application's process, configured by Config.Hub, and
// [Manager.ListenHandler] serves its listeners on all three transports.
// Any [relay.Relay] can take its place through Config.Relay: an
// nchan.Client publishes to Nginx with Nchan, which then serves the
// listeners itself and asks [Manager.AuthorizeHandler] whom to let in.
//
// # Protection
//
// Only channels opened by SubscribeHandler can be listened to or pushed to;
// each channel has a cap on listeners; and a listener is served only when
// its session owns the channel, checked on every request. Channel IDs are
// validated wherever they enter. The publisher side never faces browsers.
//
// # Observability
//
// [Manager.Stats] returns the Manager's counters: channels opened and
// closed (by cause), pushes and failed pushes (by reason), failed relay
// requests, refused requests (by handler and reason), the number of open
// channels when the Store can tell it without I/O ([LenStore]), and the
// relay's own stats when the relay reports them ([relay.StatsReporter]).
// Counting costs an atomic add off the Middleware's path. A Store on a
// server may count its channels at the cost of a request
// ([ChannelCounter], [Manager.CountChannels]). Package metrics serves all
// of it to Prometheus.
//
// Config.Logger receives these events, with these attributes:
//
//	"sessionpush: channel opened"   Debug  channel
//	"sessionpush: channel closed"   Debug  channel, cause (logout, replaced, closed);
//	                                Info   for cause expired or lost
//	"sessionpush: request refused"  Info   handler (subscribe, listen, authorize), reason, status,
//	                                       method, path, remote_addr, err (absent for relay_refused);
//	                                       for reason not_signed_in also session (Config.SessionName)
//	                                       and session_cookie (whether a cookie of that name came);
//	                                Warn   for reason cross_origin or invalid_id, which the kit's client never causes;
//	                                Error  for reason error (a store or relay failure)
//
// The events name channels, never users (user IDs are often e-mail
// addresses), and carry nothing of cookies or sessions; an application that
// wants the user beside the channel logs CurrentChannel(r).User itself.
// remote_addr is the connection's peer, a proxy's address behind one.
//
// # Concurrency
//
// A Manager, its Channels and the stores of this package are safe for
// concurrent use. New starts no goroutine; [Manager.Run] expires idle
// channels until its context ends, and [Manager.Shutdown] ends the embedded
// relay's listeners.
package sessionpush
