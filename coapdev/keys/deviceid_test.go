package keys

import (
	"encoding/hex"
	"errors"
	"strings"
	"testing"
)

func TestParseDeviceID(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want string
	}{
		{"lower", "53ff6b065067544853360187", "53ff6b065067544853360187"},
		{"upper", "53FF6B065067544853360187", "53ff6b065067544853360187"},
		{"mixed", "3A0027000d47343432313031", "3a0027000d47343432313031"},
		{"zero", "000000000000000000000000", "000000000000000000000000"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id, err := ParseDeviceID(tt.in)
			if err != nil {
				t.Fatal(err)
			}
			if got := id.String(); got != tt.want {
				t.Errorf("got %s, want %s", got, tt.want)
			}
			txt, _ := id.MarshalText()
			var back DeviceID
			if err := back.UnmarshalText(txt); err != nil || back != id {
				t.Errorf("text round trip: got %v %v, want %v", back, err, id)
			}
		})
	}
	bad := []struct {
		name string
		in   string
	}{
		{"empty", ""},
		{"23 digits", "53ff6b06506754485336018"},
		{"25 digits", "53ff6b0650675448533601870"},
		{"48 digits", strings.Repeat("ab", 24)},
		{"non-hex", "53ff6b06506754485336018g"},
		{"spaces", "53ff6b06 5067544853360187"},
		{"0x prefix", "0x53ff6b065067544853360187"},
		{"12 raw bytes", "\x53\xff\x6b\x06\x50\x67\x54\x48\x53\x36\x01\x87"},
	}
	for _, tt := range bad {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := ParseDeviceID(tt.in); !errors.Is(err, ErrBadDeviceID) {
				t.Errorf("got %v, want ErrBadDeviceID", err)
			}
			var id DeviceID
			if err := id.UnmarshalText([]byte(tt.in)); !errors.Is(err, ErrBadDeviceID) {
				t.Errorf("UnmarshalText: got %v, want ErrBadDeviceID", err)
			}
		})
	}
}

func TestParseMode(t *testing.T) {
	for _, tt := range []struct {
		in   string
		want Mode
	}{{"strict", Strict}, {"STRICT", Strict}, {"tofu", TOFU}, {"TOFU", TOFU}} {
		got, err := ParseMode(tt.in)
		if err != nil || got != tt.want {
			t.Errorf("ParseMode(%q): got %v %v, want %v", tt.in, got, err, tt.want)
		}
		if strings.ToLower(tt.in) != got.String() {
			t.Errorf("String: got %s, want %s", got, strings.ToLower(tt.in))
		}
	}
	for _, in := range []string{"", "open", "tofu "} {
		if _, err := ParseMode(in); err == nil {
			t.Errorf("ParseMode(%q): got nil error", in)
		}
	}
}

// FuzzParseDeviceID: a string parses iff it is 24 hex digits; String is
// the lowercase input and parses back to the same id.
func FuzzParseDeviceID(f *testing.F) {
	for _, s := range []string{
		"53ff6b065067544853360187", "3a0027000d47343432313031", "1a118ad1c886d54240ce4b17",
		"54e1c888f6d9492bebee1ee9", "53FF6B065067544853360187", "", "zz", "53ff6b06506754485336018",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		id, err := ParseDeviceID(s)
		_, herr := hex.DecodeString(s)
		valid := len(s) == 24 && herr == nil
		if (err == nil) != valid {
			t.Fatalf("ParseDeviceID(%q): got err %v, want valid=%v", s, err, valid)
		}
		if err != nil {
			if !errors.Is(err, ErrBadDeviceID) {
				t.Fatalf("got %v, want ErrBadDeviceID", err)
			}
			return
		}
		if got := id.String(); got != strings.ToLower(s) {
			t.Fatalf("String: got %s, want %s", got, strings.ToLower(s))
		}
		back, err := ParseDeviceID(id.String())
		if err != nil || back != id {
			t.Fatalf("round trip: got %v %v, want %v", back, err, id)
		}
	})
}
