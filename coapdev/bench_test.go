package coapdev

import (
	"context"
	"io"
	"net"
	"slices"
	"testing"
	"time"

	"github.com/spark2mqtt/spark2mqtt/coapdev/devsim"
	"github.com/spark2mqtt/spark2mqtt/coapdev/handshake"
	"github.com/spark2mqtt/spark2mqtt/coapdev/msg"
)

// reportLatency reports the median and 99th percentile of per-operation
// durations (issue 2: p50 and p99 of a call round trip).
func reportLatency(b *testing.B, d []time.Duration) {
	if len(d) == 0 {
		return
	}
	slices.Sort(d)
	pct := func(p float64) float64 {
		return float64(d[min(len(d)-1, int(p*float64(len(d))))].Nanoseconds()) / 1e3
	}
	b.ReportMetric(pct(0.50), "p50-µs")
	b.ReportMetric(pct(0.99), "p99-µs")
}

// BenchmarkCallRoundTrip: Session.Call to a simulated Photon 0.8 (devsim)
// over loopback TCP: the server encodes, queues, encrypts and writes; the
// device decrypts, runs the function, answers with an empty ACK and a
// separate 2.04; the server matches it by token. Goal p50 < 60 µs.
func BenchmarkCallRoundTrip(b *testing.B) {
	for _, fw := range []devsim.Firmware{devsim.Core, devsim.Photon08} {
		b.Run(fw.String(), func(b *testing.B) {
			ctx := context.Background()
			ts := startServer(b, func(c *Config) { c.Logger = nil })
			sd := startSim(b, ts, fw, 1, func(c *devsim.HeaterConfig) {
				c.Device.SystemMessages = false
				c.Device.DescribeAtOnceEmpty = false
				c.Device.Subscriptions = nil
			})
			// The application Describe (here: the first function call
			// finds heater missing from the empty first answer, or not).
			if _, err := sd.s.Call(ctx, "heater", "on"); err != nil {
				b.Fatal(err)
			}
			durs := make([]time.Duration, 0, 1<<16)
			b.ReportAllocs()
			b.ResetTimer()
			for b.Loop() {
				t0 := time.Now()
				if _, err := sd.s.Call(ctx, "heater", "on"); err != nil {
					b.Fatal(err)
				}
				durs = append(durs, time.Since(t0))
			}
			reportLatency(b, durs)
		})
	}
}

// BenchmarkCallRoundTripScripted: the same call against a minimal scripted
// device that answers with a piggybacked ACK from one goroutine: the
// server's own share of the round trip.
func BenchmarkCallRoundTripScripted(b *testing.B) {
	ctx := context.Background()
	ts := startServer(b, func(c *Config) { c.Logger = nil })
	d := dialDevice(b, ts, testID(1), handshake.Photon)
	s := d.start(ts, heaterJSON)
	d.conn.SetDeadline(time.Time{})
	ret := msg.EncodeReturn(1)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			p, err := d.r.ReadFrame()
			if err != nil {
				return
			}
			m, err := msg.Decode(p)
			if err != nil {
				return
			}
			b, _ := msg.NewAck(m.ID, m.Token, msg.Changed, ret).Encode()
			if err := d.sendQuiet(b); err != nil {
				return
			}
		}
	}()
	durs := make([]time.Duration, 0, 1<<16)
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		t0 := time.Now()
		if _, err := s.Call(ctx, "heater", "on"); err != nil {
			b.Fatal(err)
		}
		durs = append(durs, time.Since(t0))
	}
	b.StopTimer()
	reportLatency(b, durs)
	d.conn.Close()
	<-done
}

// BenchmarkLoopbackPingPong is the machine's floor: a 32-byte write and a
// 32-byte read back over loopback TCP, one goroutine each side.
func BenchmarkLoopbackPingPong(b *testing.B) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	done := make(chan struct{})
	go func() {
		defer close(done)
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		buf := make([]byte, 32)
		for {
			if _, err := io.ReadFull(c, buf); err != nil {
				return
			}
			if _, err := c.Write(buf); err != nil {
				return
			}
		}
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	buf := make([]byte, 32)
	durs := make([]time.Duration, 0, 1<<16)
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		t0 := time.Now()
		if _, err := c.Write(buf); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(c, buf); err != nil {
			b.Fatal(err)
		}
		durs = append(durs, time.Since(t0))
	}
	b.StopTimer()
	reportLatency(b, durs)
	c.Close()
	<-done
}
