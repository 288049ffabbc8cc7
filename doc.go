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
// cursor and the URL to listen on. The browser listens there (EventSource or
// long-poll); application code pushes JSON with [Channel.PushJSON],
// [Manager.PushJSON], [Manager.PushUser] or [Manager.Broadcast]. Logout calls
// [Manager.Close], which closes the channel and ends its listeners.
//
// # Relays
//
// By default the Manager runs an embedded relay (package hub) in the
// application's process, and [Manager.SubscriberHandler] serves its
// listeners. Any [relay.Relay] can take its place through Config.Relay.
//
// # Protection
//
// Only channels opened by SubscribeHandler can be listened to or pushed to;
// each channel has a cap on listeners; and a listener is served only when
// its session owns the channel, checked on every request. Channel IDs are
// validated wherever they enter. The publisher side never faces browsers.
//
// # Concurrency
//
// A Manager, its Channels and the stores of this package are safe for
// concurrent use. New starts no goroutine; [Manager.Run] expires idle
// channels until its context ends, and [Manager.Shutdown] ends the embedded
// relay's listeners.
package sessionpush
