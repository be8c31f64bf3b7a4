package external

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
)

// Configuration errors, returned by ParseURL and New.
var (
	// ErrBadURL is returned for a broker URL that cannot be used: empty, an
	// unknown scheme, no host, a bad port, a path on a TCP URL.
	ErrBadURL = errors.New("external: bad broker URL")
	// ErrConfig is returned for an inconsistent Config (TLS files on a
	// plain URL, a certificate without its key, a persistent session
	// without a client id, an invalid will).
	ErrConfig = errors.New("external: bad config")
	// ErrCAFile is returned when the CA file cannot be read or holds no PEM
	// certificate.
	ErrCAFile = errors.New("external: bad CA file")
	// ErrClientCert is returned when the client certificate or key cannot
	// be loaded.
	ErrClientCert = errors.New("external: bad client certificate")
)

// Connection errors. Every failed connection attempt is logged with one of
// these named (the log's reason attribute is the short name in brackets), and
// WaitReady wraps the last one.
var (
	// ErrUnreachable: the TCP (or WebSocket) connection could not be made
	// (connection refused, no route, DNS, timeout) [unreachable].
	ErrUnreachable = errors.New("external: broker unreachable")
	// ErrTLS: the TLS handshake failed, e.g. an unknown certificate
	// authority or a name mismatch [tls].
	ErrTLS = errors.New("external: tls handshake failed")
	// ErrBadCredentials: the broker answered CONNACK 4, bad user name or
	// password [bad_credentials].
	ErrBadCredentials = errors.New("external: bad user name or password")
	// ErrNotAuthorized: the broker answered CONNACK 5, not authorized.
	// Mosquitto 2 answers this to a wrong password too [not_authorized].
	ErrNotAuthorized = errors.New("external: not authorized")
	// ErrRefused: the broker refused the connection for another reason
	// (CONNACK 1, 2 or 3: protocol version, client id, server unavailable)
	// [refused].
	ErrRefused = errors.New("external: connection refused by broker")
	// ErrHandshake: the connection was made but the MQTT handshake did not
	// complete (closed or timed out before CONNACK; often a TLS port
	// dialled with tcp:// or the other way round) [handshake].
	ErrHandshake = errors.New("external: mqtt handshake failed")
)

// Operation errors (besides the broker package's sentinels).
var (
	// ErrBadQoS is returned for a QoS other than 0, 1 or 2.
	ErrBadQoS = errors.New("external: qos must be 0, 1 or 2")
	// ErrNilHandler is returned by Subscribe for a nil handler.
	ErrNilHandler = errors.New("external: nil handler")
	// ErrSubscribeRefused is returned by Subscribe when the broker answers
	// the SUBSCRIBE with a failure (SUBACK 0x80), typically an ACL.
	ErrSubscribeRefused = errors.New("external: subscription refused by broker")
)

// reason returns the short name logged for a connection error.
func reason(err error) string {
	switch {
	case errors.Is(err, ErrBadCredentials):
		return "bad_credentials"
	case errors.Is(err, ErrNotAuthorized):
		return "not_authorized"
	case errors.Is(err, ErrTLS):
		return "tls"
	case errors.Is(err, ErrUnreachable):
		return "unreachable"
	case errors.Is(err, ErrRefused):
		return "refused"
	case errors.Is(err, ErrHandshake):
		return "handshake"
	}
	return "unknown"
}

// connackError maps a CONNACK return code to our error.
func connackError(rc byte) error {
	switch rc {
	case 4:
		return fmt.Errorf("%w (CONNACK 4)", ErrBadCredentials)
	case 5:
		return fmt.Errorf("%w (CONNACK 5; a wrong user name or password, or a user who may not connect)", ErrNotAuthorized)
	case 1:
		return fmt.Errorf("%w: unacceptable protocol version (CONNACK 1; the broker does not speak MQTT 3.1.1)", ErrRefused)
	case 2:
		return fmt.Errorf("%w: client id rejected (CONNACK 2)", ErrRefused)
	case 3:
		return fmt.Errorf("%w: server unavailable (CONNACK 3)", ErrRefused)
	}
	return fmt.Errorf("%w: CONNACK %d", ErrRefused, rc)
}

// classify turns the outcome of one paho connect into one of our connection
// errors. dialErr is what our dialer returned (it already names
// ErrUnreachable or ErrTLS), secure whether the transport is TLS, rc the
// CONNACK code, err paho's error.
func classify(dialErr error, secure bool, rc byte, err error) error {
	switch {
	case dialErr != nil:
		return dialErr
	case rc >= 1 && rc <= 5:
		return connackError(rc)
	case isTLSError(err):
		return fmt.Errorf("%w: %w", ErrTLS, err)
	case secure:
		// With TLS 1.3 the broker checks our certificate after our side
		// of the handshake is done: a missing or refused client
		// certificate shows up as an alert or a reset while we send
		// CONNECT or wait for CONNACK.
		return fmt.Errorf("%w: the broker ended the TLS session before CONNACK (a client certificate missing or refused?): %w", ErrTLS, err)
	}
	return fmt.Errorf("%w: %w", ErrHandshake, err)
}

// isTLSError reports whether err comes from certificate verification or the
// TLS protocol (for connections dialled by a library, as WebSockets are).
func isTLSError(err error) bool {
	var (
		unknown   x509.UnknownAuthorityError
		hostname  x509.HostnameError
		invalid   x509.CertificateInvalidError
		verify    *tls.CertificateVerificationError
		alert     tls.AlertError
		record    tls.RecordHeaderError
		rootsErr  x509.SystemRootsError
		constrain x509.ConstraintViolationError
		op        *net.OpError
	)
	if errors.As(err, &op) && op.Op == "remote error" {
		return true // an alert from the peer, e.g. "tls: certificate required"
	}
	return errors.As(err, &unknown) || errors.As(err, &hostname) || errors.As(err, &invalid) ||
		errors.As(err, &verify) || errors.As(err, &alert) || errors.As(err, &record) ||
		errors.As(err, &rootsErr) || errors.As(err, &constrain)
}
