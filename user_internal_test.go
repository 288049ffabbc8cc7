package sessionpush

import (
	"fmt"
	"net/http/httptest"
	"testing"

	"github.com/gorilla/sessions"
)

type stringer string

func (s stringer) String() string { return string(s) }

// isUser must agree with formatting the user (m.user) and comparing, for
// every type of user value the kit understands and names that are, or
// almost are, its canonical form.
func TestIsUserAgreesWithUser(t *testing.T) {
	m := &Manager{userKey: defaultUserKey}
	r := httptest.NewRequest("GET", "/", nil)
	values := []any{
		nil, "", "alice", "42", stringer("bob"), 0, 42, -7, 1234567, int64(-1234567), uint64(18446744073709551615),
		float64(0), float64(42), float64(1234567), float64(-3), 1.5, float64(1e300), true, []byte("42"),
	}
	names := []string{
		"", "alice", "bob", "0", "-0", "42", "042", "+42", "-7", "1234567", "-1234567", " 42", "42 ",
		"18446744073709551615", "-3", "1.5", "1e300", "true", "4.2e1",
	}
	for _, v := range values {
		s := sessions.NewSession(nil, "session")
		if v != nil {
			s.Values[defaultUserKey] = v
		}
		for _, name := range names {
			want := name != "" && m.user(r, s) == name
			if got := m.isUser(r, s, name); got != want {
				t.Errorf("user %s, name %q: isUser %v, user() gives %q", fmt.Sprintf("%#v", v), name, got, m.user(r, s))
			}
		}
	}
}
