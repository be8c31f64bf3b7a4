package bridge

import (
	"context"
	"errors"
	"testing"
	"time"
)

func TestNewConfig(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  Config
		ok   bool
	}{
		{"defaults", Config{Client: nopClient{}}, true},
		{"no client", Config{}, false},
		{"base with levels", Config{Client: nopClient{}, BaseTopic: "home/spark"}, true},
		{"base wildcard", Config{Client: nopClient{}, BaseTopic: "spark/#"}, false},
		{"base trailing slash", Config{Client: nopClient{}, BaseTopic: "spark/"}, false},
		{"poll off", Config{Client: nopClient{}, PollInterval: -1}, true},
		{"poll too fast", Config{Client: nopClient{}, PollInterval: 10 * time.Millisecond}, false},
		{"queue ttl over max", Config{Client: nopClient{}, QueueTTL: 8 * 24 * time.Hour}, false},
		{"negative timeout", Config{Client: nopClient{}, CallTimeout: -time.Second}, false},
		{"negative queue", Config{Client: nopClient{}, InboundQueue: -1}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := New(tc.cfg)
			if (err == nil) != tc.ok || (err != nil && !errors.Is(err, ErrConfig)) {
				t.Errorf("New = %v, want ok %v", err, tc.ok)
			}
		})
	}
}

func TestFreshness(t *testing.T) {
	for p, want := range map[time.Duration]time.Duration{
		time.Second: 5 * time.Minute, 30 * time.Second: 5 * time.Minute, time.Minute: 10 * time.Minute,
	} {
		if got := Freshness(p); got != want {
			t.Errorf("Freshness(%v) = %v, want %v", p, got, want)
		}
	}
}

// TestRunOnce: a Bridge runs once; a second Run is refused.
func TestRunOnce(t *testing.T) {
	b, err := New(Config{Client: nopClient{}, SyncTimeout: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- b.Run(ctx) }()
	<-b.Ready()
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if err := b.Run(context.Background()); !errors.Is(err, ErrAlreadyRunning) {
		t.Errorf("second Run = %v", err)
	}
}
