// go-peer: a small go-libp2p peer (QUIC and WebTransport) used as an interop
// partner for libp2p-quinn's tests.
//
// The same source builds against three go-libp2p versions:
//   - interop/go-peer      : go-libp2p v0.52.0 (quic-go v0.64.1, webtransport-go v0.13.0)
//   - interop/go-peer-v048 : go-libp2p v0.48.0 (quic-go v0.59.0, webtransport-go v0.10.0)
//   - interop/go-peer-old  : go-libp2p v0.38.2 (quic-go v0.48.2, before the
//     fix of quic-go issue 4803)
//
// The other two link to this file, to reliable_reset.go and to perf.go;
// go-peer-old has its own quic_side.go.
//
// Every report goes to stdout as one JSON object per line. See ../README.md.
package main

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	"github.com/libp2p/go-libp2p/p2p/protocol/circuitv2/client"
	"github.com/libp2p/go-libp2p/p2p/protocol/holepunch"
	"github.com/libp2p/go-libp2p/p2p/protocol/ping"
	libp2pquic "github.com/libp2p/go-libp2p/p2p/transport/quic"
	webtransport "github.com/libp2p/go-libp2p/p2p/transport/webtransport"
	ma "github.com/multiformats/go-multiaddr"
	manet "github.com/multiformats/go-multiaddr/net"
)

const (
	echoProtocol  = protocol.ID("/libp2p-quinn/echo/1.0.0")
	stormProtocol = protocol.ID("/libp2p-quinn/storm/1.0.0")
	stormMsgLen   = 8
	progressEvery = 256
)

// ---------------------------------------------------------------------------
// JSON lines on stdout

var outMu sync.Mutex

// kv is one field of an output line; fields keep their order, "event" first.
type kv struct {
	k string
	v any
}

// emit writes {"event":event, k1:v1, ...} as one line.
func emit(event string, fields ...kv) {
	writeLine(append([]kv{{"event", event}}, fields...))
}

// emitResult writes a perf result line, {"type":typ, k1:v1, ...}: the shape of
// libp2p test-plans' perf clients, so it has no "event".
func emitResult(typ string, fields ...kv) {
	writeLine(append([]kv{{"type", typ}}, fields...))
}

// writeLine writes the fields as one JSON object on one line. os.Stdout is not
// buffered, so the line is flushed when writeLine returns.
func writeLine(fields []kv) {
	var b bytes.Buffer
	for i, f := range fields {
		if i == 0 {
			b.WriteByte('{')
		} else {
			b.WriteByte(',')
		}
		k, _ := json.Marshal(f.k)
		b.Write(k)
		b.WriteByte(':')
		v, err := json.Marshal(f.v)
		if err != nil {
			v, _ = json.Marshal(fmt.Sprint(f.v))
		}
		b.Write(v)
	}
	b.WriteString("}\n")
	outMu.Lock()
	os.Stdout.Write(b.Bytes())
	outMu.Unlock()
}

func emitError(what string, err error) {
	if err != nil {
		what = what + ": " + errorText(err)
	}
	emit("error", kv{"what", what})
}

func errorText(err error) string {
	msg := err.Error()
	if msg == "" {
		// webtransport-go's errors for a session torn down under a stream read
		// print as "": show their fields instead.
		msg = fmt.Sprintf("%#v", err)
	}
	return msg
}

// ms converts a duration to milliseconds, rounded to microseconds.
func ms(d time.Duration) float64 {
	return float64(d.Microseconds()) / 1000.0
}

// ---------------------------------------------------------------------------
// process exit

var (
	exitOnce sync.Once
	hostMu   sync.Mutex
	theHost  host.Host // closed by exit; perf-client's is the current run's
)

func setHost(h host.Host) {
	hostMu.Lock()
	theHost = h
	hostMu.Unlock()
}

// exit closes the host (bounded) and ends the process with code.
func exit(code int) { exitWith(code, nil) }

// fatal prints an error line and exits 1, unless the process is already
// exiting: then the first reason stands alone (a perf client stopped by a
// signal gets no second error line from the run that the closing host broke).
func fatal(what string, err error) {
	exitWith(1, func() { emitError(what, err) })
}

// exitWith: only the first call runs first (if not nil) and exits; later
// calls block.
func exitWith(code int, first func()) {
	exitOnce.Do(func() {
		if first != nil {
			first()
		}
		if n := stormServed.Load(); n%progressEvery != 0 {
			emit("storm_served", kv{"count", n}, kv{"failed", stormServedFailed.Load()}, kv{"final", true})
		}
		emitReliableServed(true)
		hostMu.Lock()
		h := theHost
		hostMu.Unlock()
		if h != nil {
			closeHost(h)
		}
		os.Exit(code)
	})
	select {} // another goroutine is already exiting
}

// closeHost closes h, waiting at most 2 s.
func closeHost(h host.Host) {
	done := make(chan struct{})
	go func() {
		h.Close()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(2 * time.Second):
	}
}

// ---------------------------------------------------------------------------
// options

type options struct {
	listen        listenFlag
	dial          string
	mode          string
	count         int
	concurrency   int
	size          int
	closeHow      string
	openTimeout   time.Duration
	exitAfterMode bool
	seed          int64
	seedSet       bool
	ignoreStdin   bool
	holePunch     bool
	relay         string
	reserve       bool
	publicNet     string
	sizeSet       bool
	reliable      int
	resetCode     uint32
	rest          string
	perf          perfOptions
}

// listenFlag collects every --listen: one flag per address, so that QUIC and
// WebTransport (or several interfaces) can be listened on at once.
type listenFlag []string

func (l *listenFlag) String() string { return strings.Join(*l, " ") }

func (l *listenFlag) Set(v string) error {
	if v == "" {
		return errors.New("empty multiaddr")
	}
	*l = append(*l, v)
	return nil
}

func parseFlags() options {
	var o options
	flag.Var(&o.listen, "listen", "multiaddr to listen on, e.g. /ip4/127.0.0.1/udp/0/quic-v1 or .../quic-v1/webtransport; repeat it for several (default: listen on nothing)")
	flag.StringVar(&o.dial, "dial", "", "multiaddr with /p2p/<ID> of the peer to connect to")
	flag.StringVar(&o.mode, "mode", "serve", "what to do after connecting (to the --dial peer, else to the first peer that connects): ping|echo|storm|reliable-reset|serve; or perf-server (serve, with /perf/1.0.0) | perf-client (--runs perf runs against --dial, then exit)")
	flag.IntVar(&o.count, "count", 0, "ping count (default 5) / storm streams (default 2560) / reliable-reset streams (default 10)")
	flag.IntVar(&o.concurrency, "concurrency", 1, "storm, reliable-reset: streams opened in parallel")
	flag.IntVar(&o.size, "size", 0, "payload bytes: echo (default 1048576); reliable-reset, sent and expected by the handler (default 102400)")
	flag.IntVar(&o.reliable, "reliable", defaultReliable, "reliable-reset: bytes of the payload below the reliable size (sent, and expected by the handler)")
	var resetCode uint64
	flag.Uint64Var(&resetCode, "reset-code", defaultResetCode, "reliable-reset: the application error code of the reset (sent, and expected by the handler)")
	flag.StringVar(&o.rest, "rest", "write", "reliable-reset: how the payload above the reliable size goes: write (Write, most of it leaves before the reset) | queue (quic-go's TryWriteAll right before the reset, which drops what has not left)")
	flag.StringVar(&o.closeHow, "close", "close", "storm: how each stream ends: close|closewrite|reset")
	flag.DurationVar(&o.openTimeout, "open-timeout", 10*time.Second, "storm: timeout of each NewStream+write (also of ping replies and the closewrite reply)")
	flag.BoolVar(&o.exitAfterMode, "exit-after-mode", false, "exit 0 once the mode finished (default: keep serving until stdin closes or SIGTERM)")
	flag.Int64Var(&o.seed, "seed", 0, "derive the ed25519 identity deterministically from this number (default: fresh random identity)")
	flag.BoolVar(&o.ignoreStdin, "ignore-stdin", false, "do not exit when stdin reaches EOF (for running by hand in the background)")
	flag.BoolVar(&o.holePunch, "holepunch", false, "run the relay client and DCUtR hole punching (EnableHolePunching); --dial waits until hole punching is ready")
	flag.StringVar(&o.relay, "relay", "", "multiaddr with /p2p/<ID> of a relay to connect to at start (before --dial)")
	flag.BoolVar(&o.reserve, "reserve", false, "reserve a slot on --relay (then peers can reach us at <relay>/p2p-circuit/p2p/<us>)")
	registerPerfFlags(&o.perf)
	flag.StringVar(&o.publicNet, "public-net", "", "an IPv4 CIDR inside a range go-multiaddr calls unroutable (e.g. 198.18.0.0/24 of 198.18.0.0/15) that go-libp2p is to take as public")
	flag.Parse()
	flag.Visit(func(f *flag.Flag) {
		switch f.Name {
		case "seed":
			o.seedSet = true
		case "size":
			o.sizeSet = true
		}
	})
	if flag.NArg() != 0 {
		fatal("unexpected arguments: "+fmt.Sprint(flag.Args()), nil)
	}
	switch o.mode {
	case "ping", "echo", "storm", "reliable-reset", "serve", "perf-server", "perf-client":
	default:
		fatal("unknown --mode "+o.mode, nil)
	}
	switch o.closeHow {
	case "close", "closewrite", "reset":
	default:
		fatal("unknown --close "+o.closeHow, nil)
	}
	switch o.rest {
	case "write", "queue":
	default:
		fatal("unknown --rest "+o.rest, nil)
	}
	if o.count <= 0 {
		switch o.mode {
		case "storm":
			o.count = 2560
		case "reliable-reset":
			o.count = 10
		default:
			o.count = 5
		}
	}
	if o.concurrency < 1 {
		o.concurrency = 1
	}
	if !o.sizeSet {
		// The serving side of reliable-reset expects --size too: its default is for it.
		o.size = defaultReliableSize
		if o.mode == "echo" {
			o.size = 1 << 20
		}
	}
	if o.size < 0 {
		fatal("--size must be >= 0", nil)
	}
	if o.reliable < 0 || (o.mode == "reliable-reset" && o.reliable > o.size) {
		fatal("--reliable must be in [0, --size]", nil)
	}
	if resetCode > 0xffffffff {
		fatal("--reset-code must fit 32 bits (WebTransport's and libp2p's codes do)", nil)
	}
	o.resetCode = uint32(resetCode)
	if o.openTimeout <= 0 {
		fatal("--open-timeout must be > 0", nil)
	}
	if o.reserve && o.relay == "" {
		fatal("--reserve needs --relay", nil)
	}
	checkPerfFlags(o)
	if !serving(o.mode) && o.dial == "" && len(o.listen) == 0 {
		fatal("--mode "+o.mode+" needs --dial or --listen", nil)
	}
	return o
}

// serving: the mode only serves (perf-server is serve with /perf/1.0.0 on).
func serving(mode string) bool { return mode == "serve" || mode == "perf-server" }

func identity(o options) crypto.PrivKey {
	var seed [ed25519.SeedSize]byte
	if o.seedSet {
		seed = sha256.Sum256([]byte(fmt.Sprintf("libp2p-quinn interop go-peer seed %d", o.seed)))
		priv, err := crypto.UnmarshalEd25519PrivateKey(ed25519.NewKeyFromSeed(seed[:]))
		if err != nil {
			fatal("identity", err)
		}
		return priv
	}
	priv, _, err := crypto.GenerateEd25519Key(nil) // nil: crypto/rand
	if err != nil {
		fatal("identity", err)
	}
	return priv
}

// ---------------------------------------------------------------------------
// serving side

var (
	stormServed       atomic.Int64
	stormServedFailed atomic.Int64
)

func echoHandler(s network.Stream) {
	data, err := io.ReadAll(s)
	if err != nil {
		emitError("echo handler: read", err)
		s.Reset()
		return
	}
	if _, err := s.Write(data); err != nil {
		emitError("echo handler: write", err)
		s.Reset()
		return
	}
	s.Close()
}

func stormHandler(s network.Stream) {
	var buf [stormMsgLen]byte
	_, err := io.ReadFull(s, buf[:])
	if err == nil {
		_, err = s.Write(buf[:])
	}
	if err != nil {
		// Expected for --close reset on the opener's side.
		stormServedFailed.Add(1)
		s.Reset()
	} else {
		s.Close() // CancelRead + Close, go-libp2p's usual way
	}
	if n := stormServed.Add(1); n%progressEvery == 0 {
		emit("storm_served", kv{"count", n}, kv{"failed", stormServedFailed.Load()})
	}
}

// ---------------------------------------------------------------------------
// modes

func runPing(h host.Host, p peer.ID, o options) {
	ok, failed := 0, 0
	var ch <-chan ping.Result
	var cancel context.CancelFunc = func() {}
	for i := 0; i < o.count; i++ {
		if ch == nil {
			var ctx context.Context
			ctx, cancel = context.WithCancel(context.Background())
			ch = ping.Ping(ctx, h, p)
		}
		var res ping.Result
		var got bool
		select {
		case res, got = <-ch:
			if !got {
				res.Error = errors.New("ping stream ended")
			}
		case <-time.After(o.openTimeout):
			res.Error = errors.New("ping timed out")
		}
		if res.Error != nil {
			failed++
			emitError("ping", res.Error)
			cancel()
			ch = nil // start over on a new stream
			continue
		}
		ok++
		emit("ping", kv{"peer_id", p.String()}, kv{"rtt_us", res.RTT.Microseconds()})
	}
	cancel()
	emit("ping_done", kv{"ok", ok}, kv{"failed", failed})
}

func echoPayload(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte((i * 31) % 251)
	}
	return b
}

func runEcho(h host.Host, p peer.ID, o options) {
	payload := echoPayload(o.size)
	start := time.Now()
	report := func(n int, ok bool) {
		emit("echo", kv{"bytes", n}, kv{"ok", ok}, kv{"elapsed_ms", ms(time.Since(start))})
	}
	s, err := h.NewStream(context.Background(), p, echoProtocol)
	if err != nil {
		emitError("echo: open stream", err)
		report(0, false)
		return
	}
	// Write in the background while reading, so a peer that echoes as it
	// reads cannot deadlock us on flow control.
	werr := make(chan error, 1)
	go func() {
		_, err := s.Write(payload)
		if err == nil {
			err = s.CloseWrite()
		}
		werr <- err
	}()
	got, rerr := io.ReadAll(s)
	if err := <-werr; err != nil {
		emitError("echo: write", err)
		s.Reset()
		report(len(got), false)
		return
	}
	if rerr != nil {
		emitError("echo: read", rerr)
		s.Reset()
		report(len(got), false)
		return
	}
	s.Close()
	ok := bytes.Equal(got, payload)
	if !ok {
		emitError(fmt.Sprintf("echo: reply differs (sent %d bytes, got %d)", len(payload), len(got)), nil)
	}
	report(len(got), ok)
}

func isTimeout(err error) bool {
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, os.ErrDeadlineExceeded) {
		return true
	}
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// stormResult is the outcome of one storm stream.
type stormResult struct {
	open     time.Duration // NewStream + write of the request
	end      time.Duration // the ending step (--close), incl. reading the reply for closewrite
	ok       bool          // opened, request written, (closewrite:) correct reply read
	blocked  bool          // the open hit --open-timeout
	err      error         // why !ok
	closeErr error         // error of Close/CloseWrite/Reset, not counted as a failure
}

// stormOne opens one stream, writes the request and ends the stream as --close
// says.
//
// Close/CloseWrite/Reset errors do not make a stream fail: go-libp2p's Close
// first waits for the peer's multistream-select answer (lazy negotiation), and
// by then the peer's handler has usually stopped our send half (STOP_SENDING),
// so quic-go's Close returns "close called for canceled stream". They are
// counted as close_errors instead.
func stormOne(h host.Host, p peer.ID, o options, idx uint64) (r stormResult) {
	var req [stormMsgLen]byte
	binary.BigEndian.PutUint64(req[:], idx)

	start := time.Now()
	deadline := start.Add(o.openTimeout)
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	s, err := h.NewStream(ctx, p, stormProtocol)
	if err != nil {
		r.open = time.Since(start)
		r.blocked = isTimeout(err) || ctx.Err() != nil
		r.err = fmt.Errorf("open: %w", err)
		return r
	}
	s.SetWriteDeadline(deadline)
	if _, err := s.Write(req[:]); err != nil {
		r.open = time.Since(start)
		r.blocked = isTimeout(err)
		r.err = fmt.Errorf("write: %w", err)
		s.Reset()
		return r
	}
	r.open = time.Since(start)
	s.SetWriteDeadline(time.Time{})

	endStart := time.Now()
	// Bounds go-libp2p's Close, which waits for the multistream answer
	// (v0.38.2 has no deadline of its own there), and the closewrite reply.
	s.SetReadDeadline(endStart.Add(o.openTimeout))
	switch o.closeHow {
	case "close":
		r.closeErr = s.Close()
		r.ok = true
	case "closewrite":
		r.closeErr = s.CloseWrite()
		var reply [stormMsgLen]byte
		if _, err := io.ReadFull(s, reply[:]); err != nil {
			r.err = fmt.Errorf("read reply: %w", err)
			s.Reset()
		} else if reply != req {
			r.err = errors.New("reply differs from request")
			s.Reset()
		} else {
			r.ok = true
			if err := s.Close(); err != nil && r.closeErr == nil {
				r.closeErr = err
			}
		}
	case "reset":
		r.closeErr = s.Reset()
		r.ok = true
	}
	r.end = time.Since(endStart)
	return r
}

// forEach runs do(i) for every i below count on `workers` goroutines, and returns when all
// have.
func forEach(count, workers int, do func(i int)) {
	var next atomic.Int64
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := next.Add(1) - 1; i < int64(count); i = next.Add(1) - 1 {
				do(int(i))
			}
		}()
	}
	wg.Wait()
}

func runStorm(h host.Host, p peer.ID, o options) {
	var (
		mu                                   sync.Mutex
		ok, failed, blocked, closeErrs, done int
		slowestOpen, slowestEnd              time.Duration
		errorsShown, closeErrorsShown        int
	)
	const maxErrorsShown = 10
	start := time.Now()
	forEach(o.count, o.concurrency, func(i int) {
		r := stormOne(h, p, o, uint64(i))
		mu.Lock()
		if r.open > slowestOpen {
			slowestOpen = r.open
		}
		if r.end > slowestEnd {
			slowestEnd = r.end
		}
		if r.ok {
			ok++
		} else {
			failed++
			if r.blocked {
				blocked++
			}
			if errorsShown < maxErrorsShown {
				errorsShown++
				emitError(fmt.Sprintf("storm stream %d (blocked=%v)", i, r.blocked), r.err)
			}
		}
		if r.closeErr != nil {
			closeErrs++
			if closeErrorsShown < 1 {
				closeErrorsShown++
				emitError(fmt.Sprintf("storm stream %d: %s (not counted as failure; further ones only counted)", i, o.closeHow), r.closeErr)
			}
		}
		done++
		if done%progressEvery == 0 {
			emit("storm_progress", kv{"done", done})
		}
		mu.Unlock()
	})
	emit("storm",
		kv{"count", o.count}, kv{"ok", ok}, kv{"failed", failed}, kv{"blocked", blocked},
		kv{"slowest_open_ms", ms(slowestOpen)}, kv{"elapsed_ms", ms(time.Since(start))},
		kv{"close", o.closeHow}, kv{"concurrency", o.concurrency},
		kv{"close_errors", closeErrs}, kv{"slowest_close_ms", ms(slowestEnd)})
}

// ---------------------------------------------------------------------------
// hole punching

// makePublic takes the IPv4 network cidr off go-multiaddr's manet.Unroutable4,
// so that go-libp2p treats its addresses as public: hole punching offers and
// accepts only public addresses (manet.IsPublicAddr). Every entry of
// Unroutable4 that contains cidr is replaced by the prefixes that cover the
// rest of it, so the rest stays unroutable (in the NAT test, the peers' LANs).
// It must run before the host starts.
func makePublic(cidr string) error {
	_, public, err := net.ParseCIDR(cidr)
	if err != nil {
		return err
	}
	publicOnes, bits := public.Mask.Size()
	if bits != 32 {
		return fmt.Errorf("%s is not an IPv4 network", cidr)
	}
	var kept []*net.IPNet
	found := false
	for _, n := range manet.Unroutable4 {
		ones, _ := n.Mask.Size()
		if !n.Contains(public.IP) || ones > publicOnes {
			kept = append(kept, n)
			continue
		}
		found = true
		// The siblings of each prefix of cidr longer than n's.
		for l := ones + 1; l <= publicOnes; l++ {
			mask := net.CIDRMask(l, 32)
			sibling := make(net.IP, 4)
			copy(sibling, public.IP.To4().Mask(mask))
			bit := l - 1
			sibling[bit/8] ^= 0x80 >> (bit % 8)
			kept = append(kept, &net.IPNet{IP: sibling, Mask: mask})
		}
	}
	if !found {
		return fmt.Errorf("%s is in no range of manet.Unroutable4", cidr)
	}
	manet.Unroutable4 = kept
	return nil
}

// holePunchTracer prints go-libp2p's hole punching events (a direct dial, the
// start and end of each punch, protocol errors) as "holepunch" lines.
type holePunchTracer struct{}

func (holePunchTracer) Trace(evt *holepunch.Event) {
	emit("holepunch", kv{"type", evt.Type}, kv{"remote", evt.Remote.String()}, kv{"evt", evt.Evt})
}

// waitHolePunchReady returns once go-libp2p's hole punching service has a
// public address to offer: it then registers its stream handler (it polls for
// such an address itself, every 250 ms to 5 s). Before that, it refuses a
// hole punch, so a peer must not be reached through the relay earlier.
func waitHolePunchReady(h host.Host, within time.Duration) error {
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		for _, p := range h.Mux().Protocols() {
			if p == holepunch.Protocol {
				return nil
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	return fmt.Errorf("no public address for hole punching within %s", within)
}

// transportOf names the transport of a listen address: "webtransport",
// "quic-v1", or "other".
func transportOf(a ma.Multiaddr) string {
	if _, err := a.ValueForProtocol(ma.P_WEBTRANSPORT); err == nil {
		return "webtransport"
	}
	if _, err := a.ValueForProtocol(ma.P_QUIC_V1); err == nil {
		return "quic-v1"
	}
	return "other"
}

// parseP2pAddr parses the multiaddr with /p2p/<ID> given to flag name.
func parseP2pAddr(name, s string) peer.AddrInfo {
	addr, err := ma.NewMultiaddr(s)
	if err != nil {
		fatal("parse "+name, err)
	}
	info, err := peer.AddrInfoFromP2pAddr(addr)
	if err != nil {
		fatal("parse "+name+" (needs /p2p/<ID>)", err)
	}
	return *info
}

// ---------------------------------------------------------------------------
// versions

// depVersion returns the version of module path linked into this binary.
func depVersion(path string) string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown"
	}
	for _, d := range bi.Deps {
		if d.Path == path {
			if d.Replace != nil {
				return d.Replace.Version + " (replaced)"
			}
			return d.Version
		}
	}
	return "unknown"
}

// minorOf returns the minor number of "v0.48.2" / "go1.26.8" (-1 if unparsable).
func minorOf(v string) int {
	parts := strings.Split(v, ".")
	if len(parts) < 2 {
		return -1
	}
	n, err := strconv.Atoi(strings.TrimFunc(parts[1], func(r rune) bool { return r < '0' || r > '9' }))
	if err != nil {
		return -1
	}
	return n
}

func emitVersions(o options) {
	qv := depVersion("github.com/quic-go/quic-go")
	emit("version", kv{"go", runtime.Version()}, kv{"go_libp2p", depVersion("github.com/libp2p/go-libp2p")}, kv{"quic_go", qv},
		kv{"webtransport_go", depVersion("github.com/quic-go/webtransport-go")})
	// quic-go before v0.57.1 panics ("crypto/tls bug: where's my session
	// ticket?") on every inbound handshake when built with Go >= 1.26, since
	// crypto/tls no longer returns an error from SendSessionTicket when
	// session tickets are disabled (libp2p disables them).
	if len(o.listen) != 0 && strings.HasPrefix(qv, "v0.") && minorOf(qv) >= 0 && minorOf(qv) < 57 &&
		strings.HasPrefix(runtime.Version(), "go1.") && minorOf(runtime.Version()) >= 26 {
		emit("warning", kv{"what", "quic-go " + qv + " built with " + runtime.Version() +
			" panics on the first inbound QUIC handshake; use this peer as a dialer only"})
	}
}

// hostOptions: QUIC and WebTransport, no resource limits, relay and hole
// punching only with --holepunch, listening on listen.
func hostOptions(o options, listen []string) []libp2p.Option {
	opts := []libp2p.Option{
		libp2p.Identity(identity(o)),
		libp2p.NoTransports,
		libp2p.Transport(libp2pquic.NewTransport),
		// Beside QUIC, on the same quic-go sockets: a WebTransport listener given
		// the same UDP port as a QUIC one shares its socket.
		libp2p.Transport(webtransport.New),
		libp2p.ResourceManager(&network.NullResourceManager{}),
	}
	if o.holePunch {
		// The relay client (go-libp2p's default) and DCUtR.
		opts = append(opts, libp2p.EnableHolePunching(holepunch.WithTracer(holePunchTracer{})))
	} else {
		opts = append(opts, libp2p.DisableRelay())
	}
	if len(listen) != 0 {
		opts = append(opts, libp2p.ListenAddrStrings(listen...))
	} else {
		opts = append(opts, libp2p.NoListenAddrs)
	}
	return opts
}

// ---------------------------------------------------------------------------

func main() {
	o := parseFlags()
	emitVersions(o)

	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	// A perf client stopped before its last run has no result: it fails.
	stop := func(why string) {
		if o.mode == "perf-client" {
			fatal("perf-client: "+why+" before the last run ended", nil)
		}
		exit(0)
	}
	go func() {
		<-sigs
		stop("signal")
	}()
	if !o.ignoreStdin {
		go func() {
			io.Copy(io.Discard, os.Stdin)
			stop("stdin closed")
		}()
	}

	if o.publicNet != "" {
		if err := makePublic(o.publicNet); err != nil {
			fatal("--public-net", err)
		}
	}
	if o.mode == "perf-client" {
		runPerfClient(o) // its own host for each run
	}
	h, err := libp2p.New(hostOptions(o, o.listen)...)
	if err != nil {
		fatal("start host", err)
	}
	setHost(h)

	// The mode runs once, against the dialed peer, or, without --dial,
	// against the first peer that connects to us.
	var modeOnce sync.Once
	startMode := func(p peer.ID) {
		modeOnce.Do(func() {
			go func() {
				switch o.mode {
				case "ping":
					runPing(h, p, o)
				case "echo":
					runEcho(h, p, o)
				case "storm":
					runStorm(h, p, o)
				case "reliable-reset":
					runReliableReset(h, p, o)
				}
				if o.exitAfterMode {
					exit(0)
				}
			}()
		})
	}

	h.Network().Notify(&network.NotifyBundle{
		ConnectedF: func(_ network.Network, c network.Conn) {
			fields := []kv{{"peer_id", c.RemotePeer().String()}, {"remote_addr", c.RemoteMultiaddr().String()}}
			if o.holePunch {
				_, err := c.RemoteMultiaddr().ValueForProtocol(ma.P_CIRCUIT)
				fields = append(fields, kv{"relayed", err == nil})
				if server := quicServer(c); server != nil {
					fields = append(fields, kv{"quic_server", *server})
				}
			}
			if negotiated := resetStreamAt(c); negotiated != nil {
				fields = append(fields, kv{"reset_stream_at", *negotiated})
			}
			emit("connected", fields...)
			if o.dial == "" && !serving(o.mode) {
				startMode(c.RemotePeer())
			}
		},
		DisconnectedF: func(_ network.Network, c network.Conn) {
			emit("disconnected", kv{"peer_id", c.RemotePeer().String()})
		},
	})
	ping.NewPingService(h)
	h.SetStreamHandler(echoProtocol, echoHandler)
	h.SetStreamHandler(stormProtocol, stormHandler)
	handlerOpts = o
	h.SetStreamHandler(reliableResetProtocol, reliableResetHandler)
	if o.mode == "perf-server" {
		// Not always on: the spec says a perf server SHOULD NOT be on by default.
		h.SetStreamHandler(perfProtocol, perfHandler)
	}

	addrs, err := h.Network().InterfaceListenAddresses()
	if err != nil {
		fatal("listen addresses", err)
	}
	// go-libp2p lists them in its own order (WebTransport first): "transport"
	// tells the lines apart without parsing the address.
	for _, a := range addrs {
		full := a.String() + "/p2p/" + h.ID().String()
		emit("listening", kv{"addr", full}, kv{"peer_id", h.ID().String()}, kv{"transport", transportOf(a)})
	}

	if o.relay != "" {
		relay := parseP2pAddr("--relay", o.relay)
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		err = h.Connect(ctx, relay)
		cancel()
		if err != nil {
			fatal("connect to the relay", err)
		}
		if o.holePunch {
			// Our address comes from the relay's identify.
			if err := waitHolePunchReady(h, 20*time.Second); err != nil {
				fatal("hole punching", err)
			}
			emit("holepunch_ready", kv{"addrs", fmt.Sprint(h.Addrs())})
		}
		if o.reserve {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			_, err := client.Reserve(ctx, h, relay)
			cancel()
			if err != nil {
				fatal("reserve a slot on the relay", err)
			}
			emit("reserved", kv{"relay", relay.ID.String()})
		}
	}

	if o.dial != "" {
		info := parseP2pAddr("--dial", o.dial)
		// A relayed connection is a limited one.
		ctx, cancel := context.WithTimeout(network.WithAllowLimitedConn(context.Background(), "dial"), 30*time.Second)
		err = h.Connect(ctx, info)
		cancel()
		if err != nil {
			fatal("dial", err)
		}
		startMode(info.ID)
	}

	select {}
}
