package nchan

import (
	"bytes"
	"io"
	"net/http"
	"os"
	"time"

	"github.com/valyala/fasthttp"
)

func expPublisher(base string, body []byte) func(ch string) error {
	switch os.Getenv("EXP") {
	case "fast":
		hc := &fasthttp.HostClient{Addr: base[len("http://"):], MaxConns: 128, ReadTimeout: 5 * time.Second}
		return func(ch string) error {
			req := fasthttp.AcquireRequest()
			resp := fasthttp.AcquireResponse()
			req.SetRequestURI(base + "/pub/" + ch)
			req.Header.SetMethod("POST")
			req.Header.SetContentType("application/json")
			req.SetBodyRaw(body)
			err := hc.Do(req, resp)
			fasthttp.ReleaseRequest(req)
			fasthttp.ReleaseResponse(resp)
			return err
		}
	case "pipe":
		hc := &fasthttp.PipelineClient{Addr: base[len("http://"):], MaxConns: 4, MaxPendingRequests: 256, ReadTimeout: 5 * time.Second}
		return func(ch string) error {
			req := fasthttp.AcquireRequest()
			resp := fasthttp.AcquireResponse()
			req.SetRequestURI(base + "/pub/" + ch)
			req.Header.SetMethod("POST")
			req.Header.SetContentType("application/json")
			req.SetBodyRaw(body)
			err := hc.Do(req, resp)
			fasthttp.ReleaseRequest(req)
			fasthttp.ReleaseResponse(resp)
			return err
		}
	case "raw":
		hc := &http.Client{Transport: newTransport()}
		return func(ch string) error {
			req, _ := http.NewRequest(http.MethodPost, base+"/pub/"+ch, bytes.NewReader(body))
			req.Header.Set("Content-Type", "application/json")
			resp, err := hc.Do(req)
			if err != nil {
				return err
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			return nil
		}
	}
	return nil
}
