package embedded

import (
	"strings"
	"unicode/utf8"
)

// maxTopicLen is the longest topic or filter MQTT can encode (a
// length-prefixed UTF-8 string, [MQTT-1.5.3]).
const maxTopicLen = 65535

// validTopic reports whether name may be published to: not empty, no
// wildcard, no NUL, valid UTF-8 ([MQTT-3.3.2-2], [MQTT-1.5.3-2]).
func validTopic(name string) bool {
	return name != "" && len(name) <= maxTopicLen && utf8.ValidString(name) &&
		!strings.ContainsAny(name, "+#\x00")
}

// validFilter reports whether filter is a valid subscription filter: '+' and
// '#' occupy whole levels and '#' is last ([MQTT-4.7.1-2], [MQTT-4.7.1-3]).
// Shared subscriptions ($share/...) are refused: the inline client has no
// use for them.
func validFilter(filter string) bool {
	if filter == "" || len(filter) > maxTopicLen || !utf8.ValidString(filter) ||
		strings.ContainsRune(filter, 0) || strings.HasPrefix(filter, "$share/") {
		return false
	}
	levels := strings.Split(filter, "/")
	for i, l := range levels {
		switch {
		case l == "#":
			if i != len(levels)-1 {
				return false
			}
		case l == "+":
		case strings.ContainsAny(l, "+#"):
			return false
		}
	}
	return true
}

// covers reports whether every topic matched by sub (a topic name or a
// filter) is also matched by filter. With a topic name as sub it is plain
// MQTT matching. Wildcards at the first level do not match topics that start
// with '$' ([MQTT-4.7.2-1]).
func covers(filter, sub string) bool {
	if strings.HasPrefix(sub, "$") && (strings.HasPrefix(filter, "+") || strings.HasPrefix(filter, "#")) {
		return false
	}
	for {
		f, frest, fmore := strings.Cut(filter, "/")
		s, srest, smore := strings.Cut(sub, "/")
		switch {
		case f == "#":
			return true
		case s == "#":
			return false // only '#' covers '#'
		case f == "+":
			// '+' covers any single level, '+' included.
		case f != s:
			return false
		}
		if !fmore || !smore {
			if fmore {
				// "a/#" also matches "a" ([MQTT-4.7.1-2]).
				return frest == "#"
			}
			return !smore
		}
		filter, sub = frest, srest
	}
}

// publishSize is the size of the MQTT 5 PUBLISH packet that carries m's
// fields: fixed header, topic, packet id, properties and payload. It is the
// figure compared with the maximum packet size.
func publishSize(topic string, payload int, qos byte, responseTopic string, correlation int) int {
	props := 0
	if responseTopic != "" {
		props += 1 + 2 + len(responseTopic)
	}
	if correlation > 0 {
		props += 1 + 2 + correlation
	}
	rem := 2 + len(topic) + varintLen(props) + props + payload
	if qos > 0 {
		rem += 2
	}
	return 1 + varintLen(rem) + rem
}

// varintLen is the length of n as an MQTT variable byte integer.
func varintLen(n int) int {
	switch {
	case n < 128:
		return 1
	case n < 16384:
		return 2
	case n < 2097152:
		return 3
	default:
		return 4
	}
}
