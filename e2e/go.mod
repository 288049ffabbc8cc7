module github.com/sessionpush/sessionpush/e2e

go 1.26.0

replace github.com/sessionpush/sessionpush => ../

require (
	github.com/chromedp/cdproto v0.159.0
	github.com/chromedp/chromedp v0.23.0
	github.com/sessionpush/sessionpush v0.0.0-00010101000000-000000000000
	github.com/tmaxmax/go-sse v0.12.0
)

require github.com/go-json-experiment/json v0.0.0-20260213210345-44df1a37e875 // indirect
