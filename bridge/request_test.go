package bridge

import (
	"bytes"
	"encoding/json"
	"testing"
	"time"
)

func TestParseCallRequest(t *testing.T) {
	b, err := New(Config{Client: nopClient{}})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		in      string
		arg, tx string
		ttl     time.Duration
	}{
		{`{}`, "", "", time.Hour},
		{`{"arg":"on"}`, "on", "", time.Hour},
		{`{"arg":"on","transaction":"abc","ttl":60}`, "on", `"abc"`, time.Minute},
		{`{"arg":"","transaction":42,"ttl":0}`, "", `42`, 0},
		{`{"arg":"x","transaction":null,"ttl":null}`, "x", "", time.Hour},
		{` { "arg" : "on" , "transaction" : "a b" } `, "on", `"a b"`, time.Hour},
		{`{"arg":"on","ttl":604800}`, "on", "", 7 * 24 * time.Hour},
	} {
		c, err := b.parseCallRequest([]byte(tc.in))
		if err != nil {
			t.Errorf("%s: %v", tc.in, err)
			continue
		}
		if c.arg != tc.arg || string(c.tx) != tc.tx || c.ttl != tc.ttl {
			t.Errorf("%s: arg %q tx %s ttl %v; want %q %s %v", tc.in, c.arg, c.tx, c.ttl, tc.arg, tc.tx, tc.ttl)
		}
	}
}

// FuzzCallRequest: any payload gives a call or an error with a message;
// an accepted call respects the ttl bounds and echoes a compact transaction.
func FuzzCallRequest(f *testing.F) {
	for _, s := range []string{`{"arg":"on","transaction":"t","ttl":60}`, `{"arg":1}`, `[]`, `{"ttl":-1}`, `{"ttl":1e400}`, `{"transaction":{"a":1}}`, `{"arg":"on"} {}`} {
		f.Add([]byte(s))
	}
	b, err := New(Config{Client: nopClient{}})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, p []byte) {
		c, err := b.parseCallRequest(p)
		if c == nil {
			t.Fatal("nil call")
		}
		if c.tx != nil {
			var buf bytes.Buffer
			if json.Compact(&buf, c.tx) != nil || !bytes.Equal(buf.Bytes(), c.tx) || len(c.tx) > maxTransaction {
				t.Fatalf("transaction %q not compact JSON within bounds", c.tx)
			}
		}
		if err != nil {
			if err.Error() == "" {
				t.Fatal("empty error")
			}
			return
		}
		if c.ttl < 0 || c.ttl > b.cfg.MaxTTL {
			t.Fatalf("ttl %v out of bounds", c.ttl)
		}
		if !json.Valid(p) {
			t.Fatalf("invalid JSON %q accepted", p)
		}
	})
}
