package external

import (
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"

	"github.com/spark2mqtt/spark2mqtt/broker"
)

// maxTopicLen is the longest topic an MQTT UTF-8 string can carry.
const maxTopicLen = 65535

var (
	errEmpty    = errors.New("empty")
	errLong     = errors.New("longer than 65535 bytes")
	errUTF8     = errors.New("not valid UTF-8")
	errNUL      = errors.New("contains NUL")
	errWildcard = errors.New("contains a wildcard (+ or #)")
	errHash     = errors.New("# must be the last level, alone")
	errPlus     = errors.New("+ must be a level of its own")
	errShare    = errors.New("bad $share/<group>/<filter>")
)

// checkString applies the rules common to topics and filters
// ([MQTT-1.5.3-1], [MQTT-1.5.3-2], [MQTT-4.7.3-1]).
func checkString(s string) error {
	switch {
	case s == "":
		return errEmpty
	case len(s) > maxTopicLen:
		return errLong
	case strings.IndexByte(s, 0) >= 0:
		return errNUL
	case !utf8.ValidString(s):
		return errUTF8
	}
	return nil
}

// checkTopic validates a topic name to publish to: no wildcards
// ([MQTT-3.3.2-2]). Errors wrap broker.ErrInvalidTopic.
func checkTopic(t string) error {
	err := checkString(t)
	if err == nil && strings.ContainsAny(t, "+#") {
		err = errWildcard
	}
	if err != nil {
		return fmt.Errorf("%w: %w", broker.ErrInvalidTopic, err)
	}
	return nil
}

// parseFilter validates a subscription filter ([MQTT-4.7.1-2],
// [MQTT-4.7.1-3]) and returns the levels to match topics against. For a
// shared subscription ($share/<group>/<filter>) those are the levels of
// <filter>. Errors wrap broker.ErrInvalidTopic.
func parseFilter(f string) ([]string, error) {
	levels, err := splitFilter(f)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", broker.ErrInvalidTopic, err)
	}
	return levels, nil
}

func splitFilter(f string) ([]string, error) {
	if err := checkString(f); err != nil {
		return nil, err
	}
	if rest, ok := strings.CutPrefix(f, "$share/"); ok {
		group, filter, ok := strings.Cut(rest, "/")
		if !ok || group == "" || filter == "" || strings.ContainsAny(group, "+#") {
			return nil, errShare
		}
		f = filter
	}
	levels := strings.Split(f, "/")
	for i, l := range levels {
		switch {
		case l == "#":
			if i != len(levels)-1 {
				return nil, errHash
			}
		case strings.Contains(l, "#"):
			return nil, errHash
		case l != "+" && strings.Contains(l, "+"):
			return nil, errPlus
		}
	}
	return levels, nil
}

// match reports whether topic matches the filter levels. '#' matches the
// parent level and any number of children, '+' exactly one level, and a
// filter starting with a wildcard does not match a topic starting with '$'
// ([MQTT-4.7.2-1]).
func match(filter []string, topic string) bool {
	if len(topic) > 0 && topic[0] == '$' && len(filter) > 0 && (filter[0] == "+" || filter[0] == "#") {
		return false
	}
	rest, end := topic, false
	for _, f := range filter {
		if f == "#" {
			return true
		}
		if end {
			return false
		}
		level := rest
		if i := strings.IndexByte(rest, '/'); i >= 0 {
			level, rest = rest[:i], rest[i+1:]
		} else {
			end = true
		}
		if f != "+" && f != level {
			return false
		}
	}
	return end
}

// packetSize returns the size in bytes of the PUBLISH packet for a message:
// the fixed header (type byte and the remaining length's 1 to 4 bytes),
// the topic with its 2-byte length, the packet id for QoS 1 and 2, and the
// payload ([MQTT-2.2.3], [MQTT-3.3.2]).
func packetSize(topic string, payload int, qos byte) int {
	rem := 2 + len(topic) + payload
	if qos > 0 {
		rem += 2
	}
	n := 1
	for v := rem; ; v >>= 7 {
		n++
		if v < 128 {
			break
		}
	}
	return n + rem
}
