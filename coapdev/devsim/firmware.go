package devsim

import (
	"fmt"
	"strings"
	"time"
)

// Firmware selects which device and which protocol code line a Device
// simulates. The differences follow spark-protocol.md §6 and what the
// recorded sessions (session_fixture_*.json) show; see quirks.
type Firmware uint8

// The simulated firmwares.
const (
	// Core is a Spark Core (core-communication-lib): 52-byte handshake
	// block, 6-byte Hello, no wait for the server Hello, drops the
	// connection on a 64-byte function argument.
	Core Firmware = iota + 1
	// Photon07 is a Photon on Device OS 0.4–0.7 (the Core's SparkProtocol
	// code line): 214-byte handshake block, 8-byte Hello with flags 0,
	// waits 2 s for the server Hello, every ACK reuses the request id,
	// drops the connection on an error code in an ACK.
	Photon07
	// Photon08 is a Photon on Device OS 0.8 (the lightssl code line):
	// counters seeded little-endian from the salt, tokens from 1, Hello
	// flags 0x02, waits 4 s for the server Hello, and the ACKs to Signal and
	// to a server ping use up a new device message id.
	Photon08
)

// String returns the name ParseFirmware accepts: "core", "photon07" or
// "photon08".
func (f Firmware) String() string {
	switch f {
	case Core:
		return "core"
	case Photon07:
		return "photon07"
	case Photon08:
		return "photon08"
	}
	return fmt.Sprintf("firmware(%d)", uint8(f))
}

// ParseFirmware parses a firmware name as String writes it, in any case;
// "photon" means Photon08, "photon-0.7" and "photon-0.8" are accepted too.
func ParseFirmware(s string) (Firmware, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "core":
		return Core, nil
	case "photon07", "photon-0.7", "photon0.7":
		return Photon07, nil
	case "photon08", "photon-0.8", "photon0.8", "photon":
		return Photon08, nil
	}
	return 0, fmt.Errorf("%w: unknown firmware %q (core, photon07, photon08)", ErrConfig, s)
}

// Platform ids sent in the Hello and the Describe (spark-protocol.md §4.4).
const (
	platformCore   = 0
	platformPhoton = 6
)

// Device-side limits (spark-protocol.md §4.4; both Photon code lines
// simulated here still have the Core's limits).
const (
	maxFunctionName = 12  // longer names are truncated (Describe and lookup)
	maxFunctionArg  = 63  // 64 or more: Core drops, Photon ACKs 4.00
	maxEventName    = 63  // longer names are truncated, like strnlen in the firmware
	maxStringVar    = 622 // a Core string variable: 640 − 2 − 16
)

// quirks is the behaviour table of one firmware. Every difference between the
// simulated firmwares is a field here, so the rest of the code never switches
// on the Firmware.
type quirks struct {
	photon bool // 214-byte handshake block, 8-byte Hello, Describe with "p"/"m"

	// counterLE: the first message id is u16 LE of salt[0:2] (0.8) instead
	// of BE (spark-protocol.md §2.3; fixture: salt a780 → Hello 0x80a8).
	counterLE bool
	// tokenFromSalt: the first device token is salt[2]+1 (Core, 0.7); on
	// 0.8 tokens count from 1 per boot (fixture: GetTime token 01).
	tokenFromSalt bool

	productID      uint16 // Hello product id (fixtures: Core 0xffff, Photon 6)
	productVersion uint16 // Hello product firmware version (0xffff in both)
	helloFlags     byte   // 0.8: 0x02 (diagnostics) as recorded; 0x04 was not sent
	platformID     uint16 // 8-byte Hello only

	// helloWait: how long the Photon waits for the server Hello before it
	// drops the connection (spark-protocol.md §2.4); 0 = the Core, no wait.
	helloWait time.Duration

	// ackUsesID: the ACK 2.04 to Signal and the empty ACK to a server ping
	// carry the device's next message id instead of the request's
	// (spark-protocol.md §4.2; recorded on 0.8.0-rc.1).
	ackUsesID bool
	// dropOnLongArg: a 64-byte function argument drops the connection
	// (Core); otherwise the device ACKs 4.00 and runs the function with the
	// previous call's argument (Photon, spark-protocol.md §4.4).
	dropOnLongArg bool
	// dropOnErrorAck: an ACK carrying an error code (4.xx/5.xx) to one of
	// the device's own messages drops the connection (0.7, §6 and §5).
	dropOnErrorAck bool

	maxEventData int // event data is truncated to this (Core 63, Photon 255)
	maxFrame     int // receive and send limit, bytes of ciphertext
}

func (f Firmware) quirks() (quirks, bool) {
	switch f {
	case Core:
		return quirks{
			tokenFromSalt:  true,
			productID:      0xffff,
			productVersion: 0xffff,
			dropOnLongArg:  true,
			maxEventData:   63,
			maxFrame:       640,
		}, true
	case Photon07:
		return quirks{
			photon:         true,
			tokenFromSalt:  true,
			productID:      platformPhoton,
			productVersion: 0xffff,
			platformID:     platformPhoton,
			helloWait:      2 * time.Second,
			dropOnErrorAck: true,
			maxEventData:   255,
			maxFrame:       800,
		}, true
	case Photon08:
		return quirks{
			photon:         true,
			counterLE:      true,
			productID:      platformPhoton,
			productVersion: 0xffff,
			helloFlags:     0x02,
			platformID:     platformPhoton,
			helloWait:      4 * time.Second,
			ackUsesID:      true,
			maxEventData:   255,
			maxFrame:       800,
		}, true
	}
	return quirks{}, false
}
