package relay_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/sessionpush/sessionpush/relay"
)

func TestValidateID(t *testing.T) {
	for _, id := range []string{"a", "0b6c5f8e-1f0a-4c3e-9b57-1f6f1d1d2c3a", "A.b_c-9", strings.Repeat("x", relay.MaxIDLength)} {
		if err := relay.ValidateID(id); err != nil {
			t.Errorf("ValidateID(%.20q) = %v, want nil", id, err)
		}
	}
	for name, id := range map[string]string{
		"empty":     "",
		"too long":  strings.Repeat("x", relay.MaxIDLength+1),
		"slash":     "a/b",
		"query":     "a?b=c",
		"escape":    "a%2Fb",
		"space":     "a b",
		"newline":   "a\nb",
		"dot":       ".",
		"dot-dot":   "..",
		"non-ASCII": "caf\u00e9",
		"NUL":       "a\x00",
	} {
		t.Run(name, func(t *testing.T) {
			err := relay.ValidateID(id)
			if !errors.Is(err, relay.ErrInvalidID) {
				t.Fatalf("ValidateID(%q) = %v, want ErrInvalidID", id, err)
			}
		})
	}
}

func TestParseMessageID(t *testing.T) {
	id, err := relay.ParseMessageID("1795742138:12")
	if err != nil || id != (relay.MessageID{Time: 1795742138, Tag: 12}) || id.String() != "1795742138:12" {
		t.Fatalf("ParseMessageID = %+v, %v", id, err)
	}
	for _, s := range []string{"", ":", "1:", ":1", "1", "a:1", "1:b", "-1:0", "1:-1", "1:2:3", "1 :2", "99999999999999999999:0", "+1:0"} {
		if _, err := relay.ParseMessageID(s); !errors.Is(err, relay.ErrInvalidMessageID) {
			t.Errorf("ParseMessageID(%q) = %v, want ErrInvalidMessageID", s, err)
		}
	}
}

func TestMessageIDCompare(t *testing.T) {
	ids := []relay.MessageID{{0, 0}, {1, 0}, {1, 1}, {1, 10}, {2, 0}}
	for i, a := range ids {
		for j, b := range ids {
			want := 0
			if i < j {
				want = -1
			} else if i > j {
				want = 1
			}
			if got := a.Compare(b); got != want {
				t.Errorf("%v.Compare(%v) = %d, want %d", a, b, got, want)
			}
		}
	}
}

func FuzzParseMessageID(f *testing.F) {
	for _, s := range []string{"0:0", "1795742138:1", "1:2:3", "", "abc", "1795742485:0,[0],-"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		id, err := relay.ParseMessageID(s)
		if err != nil {
			return
		}
		if id.Time < 0 || id.Tag < 0 {
			t.Fatalf("%q parsed to negative %+v", s, id)
		}
		again, err := relay.ParseMessageID(id.String())
		if err != nil || again != id {
			t.Fatalf("%q: round trip %+v -> %q -> %+v, %v", s, id, id.String(), again, err)
		}
	})
}

func FuzzValidateID(f *testing.F) {
	for _, s := range []string{"a", "../x", "a?b", "0b6c5f8e-1f0a-4c3e-9b57-1f6f1d1d2c3a", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if relay.ValidateID(s) != nil {
			return
		}
		if s == "" || len(s) > relay.MaxIDLength || strings.ContainsAny(s, "/?#%&= \r\n\x00") || s == "." || s == ".." {
			t.Fatalf("ValidateID accepted %q", s)
		}
	})
}
