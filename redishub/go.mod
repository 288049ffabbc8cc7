module github.com/sessionpush/sessionpush/redishub

go 1.26.0

replace github.com/sessionpush/sessionpush => ../

replace github.com/sessionpush/sessionpush/redisstore => ../redisstore

require (
	github.com/gorilla/securecookie v1.1.2
	github.com/gorilla/sessions v1.4.0
	github.com/redis/go-redis/v9 v9.23.0
	github.com/sessionpush/sessionpush v0.0.0-00010101000000-000000000000
	github.com/sessionpush/sessionpush/redisstore v0.0.0-00010101000000-000000000000
	go.uber.org/goleak v1.3.0
)

require (
	github.com/cespare/xxhash/v2 v2.3.0 // indirect
	github.com/coder/websocket v1.8.15 // indirect
	github.com/google/uuid v1.6.0 // indirect
	go.uber.org/atomic v1.12.0 // indirect
	golang.org/x/sys v0.50.0 // indirect
)
