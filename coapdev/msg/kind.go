package msg

import "strconv"

// Kind is what a message is in the Spark protocol, found from its type,
// code and first Uri-Path character (spark-protocol.md §4.3, §4.4).
type Kind uint8

// Kinds. The comments give type, code and first Uri-Path segment.
const (
	KindUnknown         Kind = iota // anything else
	KindHello                       // POST h (NON both ways)
	KindDescribe                    // GET d (S→D CON)
	KindDescribePost                // POST d (D→S, newer Device OS)
	KindFunctionCall                // POST f/<name>
	KindVariableRequest             // GET v/<name>
	KindEvent                       // POST e/<name> or E/<name>
	KindSubscribe                   // GET e[/<prefix>] (D→S CON)
	KindGetTime                     // GET t (D→S CON)
	KindPing                        // CON 0.00
	KindEmptyAck                    // ACK 0.00
	KindReset                       // RST, any code
	KindResponse                    // 2.xx/4.xx/5.xx, any type but RST
	KindSignal                      // PUT s
	KindUpdateBegin                 // POST u
	KindChunk                       // POST c
	KindChunkMissed                 // GET c (D→S)
	KindUpdateDone                  // PUT u
	KindKeyChange                   // PUT k
	KindGoodbye                     // POST x (D→S, newer Device OS)
)

var kindNames = [...]string{
	KindUnknown:         "Unknown",
	KindHello:           "Hello",
	KindDescribe:        "Describe",
	KindDescribePost:    "DescribePost",
	KindFunctionCall:    "FunctionCall",
	KindVariableRequest: "VariableRequest",
	KindEvent:           "Event",
	KindSubscribe:       "Subscribe",
	KindGetTime:         "GetTime",
	KindPing:            "Ping",
	KindEmptyAck:        "EmptyAck",
	KindReset:           "Reset",
	KindResponse:        "Response",
	KindSignal:          "Signal",
	KindUpdateBegin:     "UpdateBegin",
	KindChunk:           "Chunk",
	KindChunkMissed:     "ChunkMissed",
	KindUpdateDone:      "UpdateDone",
	KindKeyChange:       "KeyChange",
	KindGoodbye:         "Goodbye",
}

// String returns the kind's name, e.g. "FunctionCall".
func (k Kind) String() string {
	if int(k) < len(kindNames) {
		return kindNames[k]
	}
	return "Kind(" + strconv.Itoa(int(k)) + ")"
}

// Kind classifies m (spark-protocol.md §4.3):
//   - RST, whatever its code, is KindReset;
//   - code 0.00 is KindPing when CON, KindEmptyAck when ACK, else unknown;
//   - a response code (2.xx/4.xx/5.xx) is KindResponse (piggybacked in an ACK
//     or separate in a CON/NON), to be matched by token;
//   - a request (CON or NON only) is routed by code and the first Uri-Path
//     segment, which must be exactly one character (§4.1: the devices find
//     it at offset 5+TKL).
//
// Kind looks at nothing else; the payload and further options are checked
// by ParseEvent, ParseSubscribe and friends.
func (m Message) Kind() Kind {
	switch {
	case m.Type == Reset:
		return KindReset
	case m.Type > Reset:
		return KindUnknown
	case m.Code == Empty:
		switch m.Type {
		case Confirmable:
			return KindPing
		case Acknowledgement:
			return KindEmptyAck
		}
		return KindUnknown
	case m.Code.IsResponse():
		return KindResponse
	case m.Type == Acknowledgement || len(m.Path) == 0 || len(m.Path[0]) != 1:
		return KindUnknown
	}
	switch m.Code {
	case GET:
		switch m.Path[0][0] {
		case 'd':
			return KindDescribe
		case 'v':
			return KindVariableRequest
		case 'e':
			return KindSubscribe
		case 't':
			return KindGetTime
		case 'c':
			return KindChunkMissed
		}
	case POST:
		switch m.Path[0][0] {
		case 'h':
			return KindHello
		case 'd':
			return KindDescribePost
		case 'f':
			return KindFunctionCall
		case 'e', 'E':
			return KindEvent
		case 'u':
			return KindUpdateBegin
		case 'c':
			return KindChunk
		case 'x':
			return KindGoodbye
		}
	case PUT:
		switch m.Path[0][0] {
		case 's':
			return KindSignal
		case 'u':
			return KindUpdateDone
		case 'k':
			return KindKeyChange
		}
	}
	return KindUnknown
}
