package sessionpushtest

import (
	"encoding/json"
	"fmt"
)

// JSONSerializer is a securecookie.Serializer that keeps gorilla session
// values in JSON, for tests and benchmarks of JSON-encoded sessions:
// securecookie.JSONEncoder cannot encode a session's
// map[interface{}]interface{} values. Keys must be strings, and numbers come
// back as float64 (the Middleware accepts a float64 user ID). Set it on a
// CookieStore's codecs:
//
//	for _, c := range store.Codecs {
//		c.(*securecookie.SecureCookie).SetSerializer(sessionpushtest.JSONSerializer{})
//	}
type JSONSerializer struct{}

// Serialize encodes src, a session's values or any JSON-encodable value. It
// fails on a session value whose key is not a string.
func (JSONSerializer) Serialize(src any) ([]byte, error) {
	v, ok := src.(map[any]any)
	if !ok {
		return json.Marshal(src)
	}
	m := make(map[string]any, len(v))
	for k, x := range v {
		ks, ok := k.(string)
		if !ok {
			return nil, fmt.Errorf("sessionpushtest: JSON session key %v (%T) is not a string", k, k)
		}
		m[ks] = x
	}
	return json.Marshal(m)
}

// Deserialize decodes src into dst, a *map[interface{}]interface{} of
// session values or anything json.Unmarshal takes.
func (JSONSerializer) Deserialize(src []byte, dst any) error {
	d, ok := dst.(*map[any]any)
	if !ok {
		return json.Unmarshal(src, dst)
	}
	var m map[string]any
	if err := json.Unmarshal(src, &m); err != nil {
		return err
	}
	if *d == nil {
		*d = make(map[any]any, len(m))
	}
	for k, x := range m {
		(*d)[k] = x
	}
	return nil
}
