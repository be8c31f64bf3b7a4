package brokertest

import (
	"strings"
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func TestPrefixUnique(t *testing.T) {
	a, b := prefix(t), prefix(t)
	if a == b {
		t.Errorf("prefix returned %q twice", a)
	}
	if strings.ContainsAny(a, "+#\x00") || !strings.HasPrefix(a, "brokertest/TestPrefixUnique-") {
		t.Errorf("prefix = %q", a)
	}
}
