package frame

import (
	"bytes"
	"crypto/aes"
	"testing"

	"github.com/spark2mqtt/spark2mqtt/internal/vectors"
)

type aesFraming struct {
	Key      string `json:"key_hex"`
	IV       string `json:"initial_iv_hex"`
	Sequence []struct {
		Message string `json:"message"`
		CoAP    string `json:"coap_hex"`
		Padded  string `json:"padded_plaintext_hex"`
		IV      string `json:"iv_hex"`
		CT      string `json:"ciphertext_hex"`
		Frame   string `json:"frame_hex"`
	} `json:"sequence"`
}

// TestAESFramingVectors checks every frame of aes_framing.json: Seal gives
// the frame byte for byte, Open gives the CoAP back, and both follow the
// first-block IV chain (spark-protocol.md §3).
func TestAESFramingVectors(t *testing.T) {
	var v aesFraming
	vectors.Load(t, "aes_framing.json", &v)
	if len(v.Sequence) != 4 {
		t.Fatalf("got %d frames in aes_framing.json, want 4", len(v.Sequence))
	}
	key := vectors.Hex(t, v.Key)
	block, err := aes.NewCipher(key)
	if err != nil {
		t.Fatal(err)
	}
	var sealIV, openIV [16]byte
	copy(sealIV[:], vectors.Hex(t, v.IV))
	openIV = sealIV
	ran := 0
	for _, f := range v.Sequence {
		t.Run(f.Message, func(t *testing.T) {
			ran++
			iv := vectors.Hex(t, f.IV)
			if bytes.Equal(iv, vectors.Hex(t, v.IV)) {
				// The aligned message restarts from the initial IV.
				copy(sealIV[:], iv)
				copy(openIV[:], iv)
			}
			if !bytes.Equal(sealIV[:], iv) {
				t.Fatalf("IV chain: got %x, want %x", sealIV, iv)
			}
			coap := vectors.Hex(t, f.CoAP)
			frame := Seal(nil, block, &sealIV, coap)
			if want := vectors.Hex(t, f.Frame); !bytes.Equal(frame, want) {
				t.Fatalf("Seal: got %x, want %x", frame, want)
			}
			ct := vectors.Hex(t, f.CT)
			if !bytes.Equal(sealIV[:], ct[:16]) {
				t.Errorf("next IV: got %x, want first block %x", sealIV, ct[:16])
			}
			plain, err := Open(block, &openIV, bytes.Clone(ct))
			if err != nil {
				t.Fatalf("Open: %v", err)
			}
			if !bytes.Equal(plain, coap) {
				t.Errorf("Open: got %x, want %x", plain, coap)
			}
			if openIV != sealIV {
				t.Errorf("Open IV %x != Seal IV %x", openIV, sealIV)
			}
		})
	}
	if ran != len(v.Sequence) {
		t.Errorf("ran %d of %d vectors", ran, len(v.Sequence))
	}
}
