// The libp2p perf protocol, /perf/1.0.0 (libp2p/specs perf/perf.md), and the
// perf-server and perf-client modes. go-peer-v048 and go-peer-old link to this
// file. See ../README.md.
//
// On a perf stream the client writes the number of bytes it wants back (a
// big-endian u64), uploads its bytes and closes its write side; the server
// reads the number, reads (and drops) all up to the client's FIN, then writes
// the number of bytes asked for and closes the stream.

package main

import (
	"context"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io"
	"sort"
	"sync/atomic"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
)

const (
	perfProtocol = protocol.ID("/perf/1.0.0")
	perfBlock    = 64 << 10 // bytes per Write and per Read
	mib          = 1 << 20
)

type perfOptions struct {
	upload   uint64
	download uint64
	runs     int
}

func registerPerfFlags(p *perfOptions) {
	flag.Uint64Var(&p.upload, "upload-bytes", 0, "perf-client: bytes to upload in each run")
	flag.Uint64Var(&p.download, "download-bytes", 0, "perf-client: bytes to ask the server for in each run")
	flag.IntVar(&p.runs, "runs", 1, "perf-client: runs, each on a fresh host (so a fresh connection)")
}

// checkPerfFlags refuses what the perf modes cannot do.
func checkPerfFlags(o options) {
	switch o.mode {
	case "perf-server":
		if len(o.listen) == 0 {
			fatal("--mode perf-server needs --listen", nil)
		}
	case "perf-client":
		if o.dial == "" {
			fatal("--mode perf-client needs --dial", nil)
		}
		// Each run has a host of its own that only dials.
		if len(o.listen) != 0 || o.relay != "" || o.holePunch {
			fatal("--mode perf-client takes neither --listen, --relay nor --holepunch", nil)
		}
		if o.perf.runs < 1 {
			fatal("--runs must be >= 1", nil)
		}
	}
}

// perfSend writes n zero bytes in blocks of buf, calling progress (if not nil)
// with the running total after each Write; it returns the bytes written.
func perfSend(w io.Writer, n uint64, buf []byte, progress func(uint64)) (uint64, error) {
	clear(buf)
	var sent uint64
	for sent < n {
		b := buf
		if n-sent < uint64(len(b)) {
			b = b[:n-sent]
		}
		k, err := w.Write(b)
		sent += uint64(k)
		if progress != nil {
			progress(sent)
		}
		if err != nil {
			return sent, err
		}
	}
	return sent, nil
}

// perfDrain reads r to EOF into buf, calling progress (if not nil) with the
// running total after each Read; it returns the bytes read.
func perfDrain(r io.Reader, buf []byte, progress func(uint64)) (uint64, error) {
	var got uint64
	for {
		k, err := r.Read(buf)
		if k > 0 {
			got += uint64(k)
			if progress != nil {
				progress(got)
			}
		}
		if errors.Is(err, io.EOF) {
			return got, nil
		}
		if err != nil {
			return got, err
		}
	}
}

// ---------------------------------------------------------------------------
// server

// perfHandler serves one perf stream and prints a perf_served line. A failed
// stream is told there ("ok":false, "error"), not by an error line: a client
// that gives up is normal in perf (the spec's timed download asks for 2^64-1
// bytes and resets the stream when its time is up).
func perfHandler(s network.Stream) {
	start := time.Now()
	var requested, received, sent uint64
	err := func() error {
		var hdr [8]byte
		if _, err := io.ReadFull(s, hdr[:]); err != nil {
			return fmt.Errorf("read the size: %w", err)
		}
		requested = binary.BigEndian.Uint64(hdr[:])
		buf := make([]byte, perfBlock)
		var err error
		if received, err = perfDrain(s, buf, nil); err != nil {
			return fmt.Errorf("read: %w", err)
		}
		// Only now: the spec forbids sending while the upload goes on.
		if sent, err = perfSend(s, requested, buf, nil); err != nil {
			return fmt.Errorf("write: %w", err)
		}
		return s.Close()
	}()
	fields := []kv{
		{"peer_id", s.Conn().RemotePeer().String()}, {"requested", requested},
		{"received", received}, {"sent", sent}, {"ok", err == nil},
		{"elapsed_ms", ms(time.Since(start))},
	}
	if err != nil {
		s.Reset()
		fields = append(fields, kv{"error", errorText(err)})
	}
	emit("perf_served", fields...)
}

// ---------------------------------------------------------------------------
// client

// runPerfClient does --runs perf runs against --dial, each on a fresh host
// (a new UDP socket, identity unless --seed, and connection: what the
// test-plans runner gets by starting its client once per run), prints their
// result lines and a perf_summary line, and exits 0; on the first failure it
// prints an error line and exits 1.
func runPerfClient(o options) {
	info := parseP2pAddr("--dial", o.dial)
	var totals, connects []time.Duration
	for run := 1; run <= o.perf.runs; run++ {
		total, connect, err := perfRun(o, info)
		if err != nil {
			fatal(fmt.Sprintf("perf-client run %d of %d", run, o.perf.runs), err)
		}
		totals = append(totals, total)
		connects = append(connects, connect)
	}
	seconds := func(d time.Duration) float64 { return d.Seconds() }
	sortDurations(totals)
	sortDurations(connects)
	emit("perf_summary", kv{"runs", o.perf.runs},
		kv{"upload_bytes", o.perf.upload}, kv{"download_bytes", o.perf.download},
		kv{"time_min_s", seconds(totals[0])}, kv{"time_median_s", seconds(median(totals))},
		kv{"time_max_s", seconds(totals[len(totals)-1])},
		kv{"connect_min_s", seconds(connects[0])}, kv{"connect_median_s", seconds(median(connects))},
		kv{"connect_max_s", seconds(connects[len(connects)-1])})
	exit(0)
}

func sortDurations(d []time.Duration) { sort.Slice(d, func(i, j int) bool { return d[i] < d[j] }) }

// median of sorted d.
func median(d []time.Duration) time.Duration {
	if len(d)%2 == 1 {
		return d[len(d)/2]
	}
	return (d[len(d)/2-1] + d[len(d)/2]) / 2
}

// perfRun starts a host, connects to info, does one perf run and prints its
// intermediate and final lines. total is what the final line's timeSeconds
// says: from the dial until the whole download is in (host start and close
// not counted, as in test-plans).
func perfRun(o options, info peer.AddrInfo) (total, connect time.Duration, err error) {
	h, err := libp2p.New(hostOptions(o, nil)...)
	if err != nil {
		return 0, 0, fmt.Errorf("start host: %w", err)
	}
	// Set, so that an exit (signal, stdin closed) closes it: the server then
	// learns at once that we are gone.
	setHost(h)
	defer func() {
		setHost(nil)
		closeHost(h)
	}()

	start := time.Now()
	// Connect returns once identify is done too (go-libp2p waits for it, and
	// NewStream would wait for it anyway).
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	err = h.Connect(ctx, info)
	cancel()
	if err != nil {
		return 0, 0, fmt.Errorf("dial: %w", err)
	}
	connect = time.Since(start)

	streamStart := time.Now()
	s, err := h.NewStream(context.Background(), info.ID, perfProtocol)
	if err != nil {
		return 0, 0, fmt.Errorf("open stream: %w", err)
	}
	var uploaded, downloaded atomic.Uint64
	var firstMiB time.Duration // this goroutine only: the reports read the atomics
	stopReports := perfReports(&uploaded, &downloaded)
	err = func() error {
		defer stopReports()
		var hdr [8]byte
		binary.BigEndian.PutUint64(hdr[:], o.perf.download)
		if _, err := s.Write(hdr[:]); err != nil {
			return fmt.Errorf("write the size: %w", err)
		}
		buf := make([]byte, perfBlock)
		if _, err := perfSend(s, o.perf.upload, buf, uploaded.Store); err != nil {
			return fmt.Errorf("upload: %w", err)
		}
		if err := s.CloseWrite(); err != nil {
			return fmt.Errorf("close the write side: %w", err)
		}
		got, err := perfDrain(s, buf, func(n uint64) {
			downloaded.Store(n)
			if firstMiB == 0 && n >= mib {
				firstMiB = time.Since(streamStart)
			}
		})
		if err != nil {
			return fmt.Errorf("download (after %d bytes): %w", got, err)
		}
		if got != o.perf.download {
			return fmt.Errorf("download: got %d bytes, asked for %d", got, o.perf.download)
		}
		return nil
	}()
	if err != nil {
		s.Reset()
		return 0, 0, err
	}
	total = time.Since(start)
	s.Close()
	fields := []kv{
		{"timeSeconds", total.Seconds()}, {"uploadBytes", o.perf.upload}, {"downloadBytes", o.perf.download},
		{"connectSeconds", connect.Seconds()},
	}
	if o.perf.download >= mib {
		fields = append(fields, kv{"firstMiBSeconds", firstMiB.Seconds()})
	}
	emitResult("final", fields...)
	return total, connect, nil
}

// perfReports prints an intermediate line every second, with the bytes that
// went each way in that interval (as test-plans' clients do), until the
// returned function is called; that function returns once the last line is
// out.
func perfReports(uploaded, downloaded *atomic.Uint64) (stop func()) {
	quit, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(time.Second)
		defer t.Stop()
		last := time.Now()
		var lastUp, lastDown uint64
		for {
			select {
			case <-quit:
				return
			case now := <-t.C:
				up, down := uploaded.Load(), downloaded.Load()
				emitResult("intermediate", kv{"timeSeconds", now.Sub(last).Seconds()},
					kv{"uploadBytes", up - lastUp}, kv{"downloadBytes", down - lastDown})
				last, lastUp, lastDown = now, up, down
			}
		}
	}()
	return func() {
		close(quit)
		<-done
	}
}
