package msg

import (
	"bytes"
	"encoding/hex"
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

func unhex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(strings.ReplaceAll(s, " ", ""))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestDecodeMalformed: undecodable CoAP wraps ErrMalformed.
func TestDecodeMalformed(t *testing.T) {
	manyOpts := append(unhex(t, "41011234 01 b161"), make([]byte, 300)...)                      // 301 Uri-Path options
	longPath := append(unhex(t, "41011234 01 b161 0e 0000"), bytes.Repeat([]byte{'a'}, 269)...) // 269 bytes
	tests := []struct {
		name string
		hex  string
		raw  []byte
	}{
		{name: "empty", hex: ""},
		{name: "3 bytes", hex: "410112"},
		{name: "version 0", hex: "01011234"},
		{name: "version 2", hex: "81011234"},
		{name: "TKL 9", hex: "49011234 010203040506070809"},
		{name: "TKL 12", hex: "4c011234 010203040506070809101112"},
		{name: "TKL 15", hex: "4f011234 010203040506070809101112131415"},
		{name: "truncated token", hex: "44011234 0102"},
		{name: "truncated option value", hex: "41011234 01 b2 61"},
		{name: "truncated option length ext", hex: "41011234 01 bd"},
		{name: "truncated option delta ext", hex: "41011234 01 d1"},
		{name: "truncated 2-byte ext", hex: "41011234 01 be 00"},
		{name: "option delta 15", hex: "41011234 01 f1 61"},
		{name: "option length 15", hex: "41011234 01 bf 61"},
		{name: "unsupported critical option (Uri-Host)", hex: "41011234 01 3161"},
		{name: "unsupported critical option (Block2)", hex: "41011234 01 b164 c0 c101"},
		{name: "option number overflow", hex: "41011234 01 e0 ffff e0 ffff"},
		{name: "too many options", raw: manyOpts},
		{name: "Uri-Path over 255 bytes", raw: longPath},
		{name: "over MaxSize", raw: append(unhex(t, "61451234 01 ff"), make([]byte, MaxSize)...)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			b := tc.raw
			if b == nil {
				b = unhex(t, tc.hex)
			}
			m, err := Decode(b)
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("got %+v, %v; want ErrMalformed", m, err)
			}
		})
	}
}

// TestDecodeBareMarker: the firmware writes the payload marker with no
// payload after it (an empty string variable, an event with empty data);
// such a message decodes as one without a payload.
func TestDecodeBareMarker(t *testing.T) {
	tests := []struct {
		name, hex string
		kind      Kind
		path      []string
	}{
		{"empty string variable (piggybacked 2.05)", "61451234 01 ff", KindResponse, nil},
		{"event with empty data", "50021234 b165 04 74656d70 ff", KindEvent, []string{"e", "temp"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m, err := Decode(unhex(t, tc.hex))
			if err != nil {
				t.Fatal(err)
			}
			if len(m.Payload) != 0 || m.Kind() != tc.kind || !slices.Equal(m.Path, tc.path) {
				t.Fatalf("got %+v (kind %v), want kind %v, path %q, no payload", m, m.Kind(), tc.kind, tc.path)
			}
		})
	}
}

// TestDecodeOptions covers the option rules: empty Uri-Query survives,
// slashes stay in one segment, Max-Age width is kept, elective options are
// ignored.
func TestDecodeOptions(t *testing.T) {
	tests := []struct {
		name      string
		hex       string
		want      Message
		reencoded string // when the encoding is not the input
	}{
		{
			name: "empty Uri-Query",
			hex:  "41021237 04 b166 06686561746572 40",
			want: Message{Type: Confirmable, Code: POST, ID: 0x1237, Token: []byte{4}, Path: []string{"f", "heater"}, Query: [][]byte{{}}},
		},
		{
			name: "two empty Uri-Queries",
			hex:  "41021237 04 b166 40 00",
			want: Message{Type: Confirmable, Code: POST, ID: 0x1237, Token: []byte{4}, Path: []string{"f"}, Query: [][]byte{{}, {}}},
		},
		{
			name: "slash inside one Uri-Path",
			hex:  "50021235 b165 0c6c616b652d64657074682f31",
			want: Message{Type: NonConfirmable, Code: POST, ID: 0x1235, Path: []string{"e", "lake-depth/1"}},
		},
		{
			name: "empty Uri-Path segment",
			hex:  "50021235 b165 00 01 61",
			want: Message{Type: NonConfirmable, Code: POST, ID: 0x1235, Path: []string{"e", "", "a"}},
		},
		{
			name: "Max-Age 3 bytes (Core)",
			hex:  "50021235 b165 0161 3300003c",
			want: Message{Type: NonConfirmable, Code: POST, ID: 0x1235, Path: []string{"e", "a"}, MaxAge: 60, HasMaxAge: true, MaxAgeLen: 3},
		},
		{
			name: "Max-Age 0 in 0 bytes",
			hex:  "50021235 b165 0161 30",
			want: Message{Type: NonConfirmable, Code: POST, ID: 0x1235, Path: []string{"e", "a"}, HasMaxAge: true},
		},
		{
			name: "Max-Age 4 bytes",
			hex:  "50021235 b165 0161 34ffffffff",
			want: Message{Type: NonConfirmable, Code: POST, ID: 0x1235, Path: []string{"e", "a"}, MaxAge: 0xFFFFFFFF, HasMaxAge: true},
		},
		{
			name:      "Max-Age of 5 bytes is skipped (RFC 7252 §5.4.3)",
			hex:       "50021235 b165 0161 350000000001",
			want:      Message{Type: NonConfirmable, Code: POST, ID: 0x1235, Path: []string{"e", "a"}},
			reencoded: "50021235 b165 0161",
		},
		{
			name:      "repeated Max-Age: the first counts",
			hex:       "50021235 b165 0161 3115 0116",
			want:      Message{Type: NonConfirmable, Code: POST, ID: 0x1235, Path: []string{"e", "a"}, MaxAge: 0x15, HasMaxAge: true},
			reencoded: "50021235 b165 0161 3115",
		},
		{
			name:      "elective Content-Format is ignored",
			hex:       "61451235 02 c132 ff7b7d",
			want:      Message{Type: Acknowledgement, Code: Content, ID: 0x1235, Token: []byte{2}, Payload: []byte("{}")},
			reencoded: "61451235 02 ff7b7d",
		},
		{
			name: "13-byte segment uses the 1-byte length extension",
			hex:  "41011234 01 bd 00 61616161616161616161616161",
			want: Message{Type: Confirmable, Code: GET, ID: 0x1234, Token: []byte{1}, Path: []string{"aaaaaaaaaaaaa"}},
		},
		{
			name: "empty ACK with a token (reference server quirk)",
			hex:  "61001234 07",
			want: Message{Type: Acknowledgement, Code: Empty, ID: 0x1234, Token: []byte{7}},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m, err := Decode(unhex(t, tc.hex))
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.want, m, cmpopts.EquateEmpty()); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
			want := tc.reencoded
			if want == "" {
				want = tc.hex
			}
			got, err := m.Encode()
			if err != nil {
				t.Fatal(err)
			}
			if w := unhex(t, want); !bytes.Equal(got, w) {
				t.Errorf("Encode:\n got %x\nwant %x", got, w)
			}
		})
	}
}

func TestDecodeAliases(t *testing.T) {
	b := unhex(t, "41021237 04 b166 06686561746572 426f6e ff 0102")
	m, err := Decode(b)
	if err != nil {
		t.Fatal(err)
	}
	b[4], b[len(b)-1] = 9, 9
	if m.Token[0] != 9 || m.Payload[1] != 9 {
		t.Errorf("Token/Payload do not alias the input")
	}
	b[6] = 'x'
	if m.Path[0] != "f" {
		t.Errorf("Path aliases the input")
	}
}

func TestEncodeErrors(t *testing.T) {
	long := strings.Repeat("a", 256)
	tests := []struct {
		name string
		m    Message
	}{
		{"type 4", Message{Type: 4}},
		{"token of 9 bytes", Message{Token: make([]byte, 9)}},
		{"Uri-Path of 256 bytes", Message{Code: GET, Path: []string{"e", long}}},
		{"Uri-Query of 256 bytes", Message{Code: GET, Path: []string{"e"}, Query: [][]byte{[]byte(long)}}},
		{"too many options", Message{Code: POST, Path: make([]string, 300)}},
		{"over MaxSize", Message{Code: Content, Payload: make([]byte, MaxSize)}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dst := []byte("keep")
			got, err := tc.m.AppendEncode(dst)
			if !errors.Is(err, ErrEncode) {
				t.Fatalf("got %v, want ErrEncode", err)
			}
			if string(got) != "keep" {
				t.Errorf("dst changed to %q", got)
			}
		})
	}
}

func TestAppendEncode(t *testing.T) {
	dst := []byte{0xAA}
	got, err := NewPing(0x1234).AppendEncode(dst)
	if err != nil {
		t.Fatal(err)
	}
	if want := unhex(t, "aa 40001234"); !bytes.Equal(got, want) {
		t.Errorf("got %x, want %x", got, want)
	}
}

// TestBuilders checks builder output the vectors do not cover.
func TestBuilders(t *testing.T) {
	tests := []struct {
		name string
		m    Message
		hex  string
	}{
		{"server hello, our form", NewHello(0x58c5, nil, nil), "500258c5 b168"},
		{"signal stop", NewSignal(0x594c, 0x0a, false), "4103594c 0a b173 4100"},
		{"empty ack has TKL 0", NewEmptyAck(0x80b7), "600080b7"},
		{"event to device split on /", NewEventToDevice(0x594a, "heater/cmd", []byte("on"), 60, false),
			"5002594a b165 06686561746572 03636d64 313c ff6f6e"},
		{"private event to device, ttl 0", NewEventToDevice(1, "a", nil, 0, true), "50020001 b145 0161 30"},
		{"event from device, ttl 21600, minimal Max-Age", NewEventFromDevice(Confirmable, 2, "a/b", []byte("x"), 21600, false),
			"40020002 b165 03612f62 325460 ff78"},
		{"subscribe to a device", NewSubscribe(0x97b3, "", false, "53ff73065067544816300187"),
			"400197b3 b165 ff353366663733303635303637353434383136333030313837"},
		{"subscribe, prefix, all devices", NewSubscribe(0xd2ea, "heater/", false, ""), "4001d2ea b165 076865617465722f"},
		{"time response", NewTimeResponse(0xd2e9, []byte{8}, 1795626068), "6145d2e9 08 ff6b071454"},
		{"4.00 ack", NewAck(1, []byte{2}, BadRequest, nil), "61800001 02"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := tc.m.Encode()
			if err != nil {
				t.Fatal(err)
			}
			if want := unhex(t, tc.hex); !bytes.Equal(got, want) {
				t.Errorf("got %x, want %x", got, want)
			}
		})
	}
}

func TestKind(t *testing.T) {
	tests := []struct {
		name string
		m    Message
		want Kind
	}{
		{"RST with a code", Message{Type: Reset, Code: BadRequest}, KindReset},
		{"empty RST", Message{Type: Reset}, KindReset},
		{"empty NON", Message{Type: NonConfirmable}, KindUnknown},
		{"type 4", Message{Type: 4, Code: GET, Path: []string{"d"}}, KindUnknown},
		{"ACK with a request code", Message{Type: Acknowledgement, Code: GET, Path: []string{"d"}}, KindUnknown},
		{"two-character first segment", Message{Type: NonConfirmable, Code: POST, Path: []string{"hh"}}, KindUnknown},
		{"empty first segment", Message{Type: NonConfirmable, Code: POST, Path: []string{""}}, KindUnknown},
		{"request without path", Message{Type: Confirmable, Code: GET}, KindUnknown},
		{"DELETE", Message{Type: Confirmable, Code: DELETE, Path: []string{"e"}}, KindUnknown},
		{"GET E", Message{Type: Confirmable, Code: GET, Path: []string{"E"}}, KindUnknown},
		{"separate 5.03", Message{Type: Confirmable, Code: ServiceUnavailable}, KindResponse},
		{"NON 4.04", Message{Type: NonConfirmable, Code: NotFound}, KindResponse},
		{"3.00 is not a response", Message{Type: NonConfirmable, Code: 0x60}, KindUnknown},
		{"POST d", Message{Type: Confirmable, Code: POST, Path: []string{"d"}}, KindDescribePost},
		{"POST x", Message{Type: Confirmable, Code: POST, Path: []string{"x"}}, KindGoodbye},
		{"PUT u from a device", Message{Type: Confirmable, Code: PUT, Path: []string{"u"}}, KindUpdateDone},
		{"POST E", Message{Type: Confirmable, Code: POST, Path: []string{"E", "x"}}, KindEvent},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.m.Kind(); got != tc.want {
				t.Errorf("got %v, want %v", got, tc.want)
			}
		})
	}
	if KindGoodbye.String() != "Goodbye" || Kind(200).String() != "Kind(200)" {
		t.Errorf("Kind.String: %q %q", KindGoodbye, Kind(200))
	}
}

func TestCodeAndTypeString(t *testing.T) {
	for c, want := range map[Code]string{Empty: "0.00", GET: "0.01", Content: "2.05", Changed: "2.04",
		BadRequest: "4.00", NotFound: "4.04", InternalServerError: "5.00", ServiceUnavailable: "5.03", 0xFF: "7.31"} {
		if got := c.String(); got != want {
			t.Errorf("Code(%#x): got %q, want %q", uint8(c), got, want)
		}
	}
	for ty, want := range map[Type]string{Confirmable: "CON", NonConfirmable: "NON", Acknowledgement: "ACK", Reset: "RST", 7: "Type(7)"} {
		if got := ty.String(); got != want {
			t.Errorf("Type %d: got %q, want %q", ty, got, want)
		}
	}
}

// TestDecodeEventAllocs: decoding a device event allocates only its Path
// (the slice and the name segment), not go-coap's option array: this runs
// once per device event.
func TestDecodeEventAllocs(t *testing.T) {
	b, err := NewEventFromDevice(NonConfirmable, 7, "temperature", []byte("48.5"), 60, false).Encode()
	if err != nil {
		t.Fatal(err)
	}
	if a := testing.AllocsPerRun(100, func() {
		if _, err := Decode(b); err != nil {
			t.Fatal(err)
		}
	}); a > 2 {
		t.Errorf("Decode of an event: %v allocations, want at most 2", a)
	}
}

func BenchmarkDecodeEvent(b *testing.B) {
	m, err := NewEventFromDevice(NonConfirmable, 7, "temperature", []byte("48.5"), 60, false).Encode()
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Decode(m); err != nil {
			b.Fatal(err)
		}
	}
}
