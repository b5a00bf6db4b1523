// Resets with a reliable size (RESET_STREAM_AT, draft-ietf-quic-reliable-stream-reset): the
// `reliable-reset` mode (opener) and the handler of reliableResetProtocol (always served).
//
// Shared by the builds (go-peer-v048 and go-peer-old link to this file). It reaches quic-go's
// and webtransport-go's streams under go-libp2p's, which export no way to them, by reflection;
// the methods it needs are looked up at run time, so the file compiles against every version
// and a build that lacks one reports it as an error line.

package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"reflect"
	"strconv"
	"sync"
	"time"
	"unsafe"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	"github.com/quic-go/quic-go"
	"github.com/quic-go/webtransport-go"
)

const (
	reliableResetProtocol = protocol.ID("/libp2p-quinn/reliable-reset/1.0.0")
	defaultReliableSize   = 100 * 1024
	defaultReliable       = 10 * 1024
	defaultResetCode      = 42
	// Per-stream lines of the handler, and error lines of the opener, are printed for the
	// first this many streams only.
	shownStreams = 10
)

// ---------------------------------------------------------------------------
// reaching quic-go's stream

// fieldOf returns the field name of the struct that v holds (through pointers and
// interfaces), readable even when unexported.
func fieldOf(v reflect.Value, name string) (reflect.Value, bool) {
	for v.IsValid() && (v.Kind() == reflect.Pointer || v.Kind() == reflect.Interface) {
		if v.IsNil() {
			return reflect.Value{}, false
		}
		v = v.Elem()
	}
	if !v.IsValid() || v.Kind() != reflect.Struct {
		return reflect.Value{}, false
	}
	if !v.CanAddr() {
		// A struct held by value in an interface (libp2pquic's stream): copy it to read it.
		c := reflect.New(v.Type()).Elem()
		c.Set(v)
		v = c
	}
	f := v.FieldByName(name)
	if !f.IsValid() {
		return reflect.Value{}, false
	}
	return reflect.NewAt(f.Type(), unsafe.Pointer(f.UnsafeAddr())).Elem(), true
}

// quicSender is what a reset with a reliable size needs of quic-go's send stream (quic-go
// v0.59 and later have SetReliableBoundary).
type quicSender interface {
	SetReliableBoundary()
	CancelWrite(quic.StreamErrorCode)
}

// reliableSender resets one opened stream with a reliable size.
type reliableSender struct {
	quic quicSender
	// Set over WebTransport: its CancelWrite carries the application code in HTTP/3's error
	// space (go-libp2p's ResetWithError drops the code on WebTransport).
	wt wtCanceler
}

// wtCanceler is webtransport-go's stream (*webtransport.Stream; an interface before v0.9).
type wtCanceler interface {
	CancelWrite(webtransport.StreamErrorCode)
}

// reliableSenderOf finds quic-go's send stream under a go-libp2p stream: basichost's
// streamWrapper (field Stream) -> swarm.Stream (field stream) -> libp2pquic's stream (field
// Stream: quic-go's stream) or libp2pwebtransport's stream (field Stream: webtransport-go's
// stream, whose sendStr.str is quic-go's stream).
func reliableSenderOf(s network.Stream) (reliableSender, error) {
	var r reliableSender
	v := reflect.ValueOf(s)
	for depth := 0; depth < 8 && v.IsValid(); depth++ {
		if v.CanInterface() {
			switch x := v.Interface().(type) {
			case wtCanceler:
				r.wt = x
				send, ok := fieldOf(v, "sendStr")
				if !ok {
					return r, errors.New("webtransport.Stream has no sendStr field")
				}
				str, ok := fieldOf(send, "str")
				if !ok {
					return r, errors.New("webtransport.SendStream has no str field")
				}
				v = str
				continue
			case quicSender:
				r.quic = x
				return r, nil
			}
		}
		next, ok := fieldOf(v, "Stream") // streamWrapper, libp2pquic and libp2pwebtransport
		if !ok {
			next, ok = fieldOf(v, "stream") // swarm.Stream
		}
		if !ok {
			return r, fmt.Errorf("no quic-go stream with SetReliableBoundary under %T (quic-go %s)",
				v.Interface(), depVersion("github.com/quic-go/quic-go"))
		}
		v = next
	}
	return r, errors.New("no quic-go stream found under the go-libp2p stream")
}

func (r reliableSender) reset(code uint32) {
	if r.wt != nil {
		r.wt.CancelWrite(webtransport.StreamErrorCode(code))
	} else {
		r.quic.CancelWrite(quic.StreamErrorCode(code))
	}
}

// resetCodeOf returns the application code of a reset seen by a read: WebTransport's (decoded
// from HTTP/3's error space by webtransport-go) or QUIC's.
func resetCodeOf(err error) (uint64, bool) {
	var wtErr *webtransport.StreamError
	if errors.As(err, &wtErr) {
		return uint64(wtErr.ErrorCode), true
	}
	var qErr *quic.StreamError
	if errors.As(err, &qErr) {
		return uint64(qErr.ErrorCode), true
	}
	return 0, false
}

// ---------------------------------------------------------------------------
// opener: --mode reliable-reset

type reliableResetResult struct {
	ok         bool
	peerEnd    string // how the peer ended its side: "eof", "reset" or "other"
	firstOther error  // the error of an "other" end
	err        error
}

// reliableResetOne opens a stream, writes the first --reliable bytes of the payload, marks
// everything written so far (the multistream-select header, with WebTransport's stream header
// before it, and those bytes) reliable, hands the rest of the payload to the stream as --rest
// says, and resets the send half with --reset-code. Then it reads the peer's half to its end,
// so that the stream is over on both sides before the next one.
func reliableResetOne(h host.Host, p peer.ID, o options, payload []byte) (r reliableResetResult) {
	deadline := time.Now().Add(o.openTimeout)
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	s, err := h.NewStream(ctx, p, reliableResetProtocol)
	if err != nil {
		r.err = fmt.Errorf("open: %w", err)
		return r
	}
	defer s.Reset() // go-libp2p's bookkeeping; both halves are over by then
	s.SetDeadline(deadline)
	sender, err := reliableSenderOf(s)
	if err != nil {
		r.err = err
		return r
	}
	// With lazy multistream-select (go-libp2p knows the peer speaks the protocol) the first
	// Write carries the header; an empty one sends it alone, so that it is below the reliable
	// size even with --reliable 0.
	if _, err := s.Write(nil); err != nil {
		r.err = fmt.Errorf("write the multistream header: %w", err)
		return r
	}
	if _, err := s.Write(payload[:o.reliable]); err != nil {
		r.err = fmt.Errorf("write the reliable part: %w", err)
		return r
	}
	// Every byte written returned from Write inside quic-go (its Write returns once the data
	// sits in a frame), so the boundary covers all of it.
	sender.quic.SetReliableBoundary()
	rest := payload[o.reliable:]
	switch o.rest {
	case "write":
		if _, err := s.Write(rest); err != nil {
			r.err = fmt.Errorf("write the rest: %w", err)
			return r
		}
	case "queue":
		q, ok := sender.quic.(interface{ TryWriteAll([]byte) error })
		if !ok {
			r.err = fmt.Errorf("quic-go %s has no TryWriteAll", depVersion("github.com/quic-go/quic-go"))
			return r
		}
		if err := q.TryWriteAll(rest); err != nil {
			r.err = fmt.Errorf("queue the rest: %w", err)
			return r
		}
	}
	sender.reset(o.resetCode)
	// The peer's answer to multistream-select, then its end of the stream.
	_, err = io.Copy(io.Discard, s)
	_, isReset := resetCodeOf(err)
	switch {
	case err == nil:
		r.peerEnd = "eof"
	case isReset || errors.Is(err, network.ErrReset):
		r.peerEnd = "reset"
	case isTimeout(err) || s.Conn().IsClosed():
		r.err = fmt.Errorf("read the peer's end: %w", err)
		return r
	default:
		// Another end of the stream, e.g. an HTTP/3 code that webtransport-go cannot map to a
		// WebTransport one (H3_REQUEST_INCOMPLETE from a peer that lost the stream's header
		// to a plain RESET_STREAM).
		r.peerEnd, r.firstOther = "other", err
	}
	r.ok = true
	return r
}

func runReliableReset(h host.Host, p peer.ID, o options) {
	payload := echoPayload(o.size)
	var (
		mu                   sync.Mutex
		ok, failed, shownErr int
		otherShown           bool
		peerEnds             = map[string]int{}
	)
	start := time.Now()
	forEach(o.count, o.concurrency, func(i int) {
		r := reliableResetOne(h, p, o, payload)
		mu.Lock()
		if r.ok {
			ok++
			peerEnds[r.peerEnd]++
			if r.firstOther != nil && !otherShown {
				otherShown = true
				emit("warning", kv{"what", fmt.Sprintf("reliable-reset stream %d: the peer ended its half with %v (counted in peer_ends as other; further ones only counted)", i, r.firstOther)})
			}
		} else {
			failed++
			if shownErr < shownStreams {
				shownErr++
				emitError(fmt.Sprintf("reliable-reset stream %d", i), r.err)
			}
		}
		mu.Unlock()
	})
	emit("reliable_reset",
		kv{"count", o.count}, kv{"ok", ok}, kv{"failed", failed},
		kv{"size", o.size}, kv{"reliable", o.reliable}, kv{"code", o.resetCode}, kv{"rest", o.rest},
		kv{"concurrency", o.concurrency}, kv{"peer_ends", peerEnds},
		kv{"elapsed_ms", ms(time.Since(start))})
}

// ---------------------------------------------------------------------------
// handler

// reliableServed sums up what the handler saw. Its expectations are this peer's own --size,
// --reliable and --reset-code (their defaults are the opener's).
type reliableServed struct {
	mu sync.Mutex
	// streams handled
	count int
	// streams that got at least --reliable and at most --size bytes, all of the payload's
	// pattern, then a reset with --reset-code
	ok int
	// those of ok that got exactly --reliable bytes
	exact int
	// streams whose bytes differ from the pattern
	patternBad         int
	minBytes, maxBytes int
	// how the streams ended: "reset", "eof", "error"
	ends map[string]int
	// reset codes seen, in decimal
	codes map[string]int
}

var served = reliableServed{ends: map[string]int{}, codes: map[string]int{}}

// handlerOpts is set by main before the handler is registered.
var handlerOpts options

func reliableResetHandler(s network.Stream) {
	o := handlerOpts
	pattern := echoPayload(o.size)
	buf := make([]byte, 32*1024)
	got, patternOK := 0, true
	var err error
	for {
		var n int
		n, err = s.Read(buf)
		// quic-go hands over the bytes below the reliable size together with the reset.
		for i := 0; i < n; i++ {
			if got+i >= len(pattern) || buf[i] != pattern[got+i] {
				patternOK = false
				break
			}
		}
		got += n
		if err != nil {
			break
		}
	}
	end, code, codeSeen := "error", uint64(0), false
	if errors.Is(err, io.EOF) {
		end = "eof"
	} else if c, ok := resetCodeOf(err); ok {
		end, code, codeSeen = "reset", c, true
	} else if errors.Is(err, network.ErrReset) {
		end = "reset" // go-libp2p v0.38 does not pass the code on
	}
	s.Close() // our half: FIN, which the opener reads to its end

	ok := patternOK && end == "reset" && code == uint64(o.resetCode) &&
		got >= o.reliable && got <= o.size
	served.mu.Lock()
	served.count++
	idx := served.count
	if ok {
		served.ok++
		if got == o.reliable {
			served.exact++
		}
	}
	if !patternOK {
		served.patternBad++
	}
	if idx == 1 || got < served.minBytes {
		served.minBytes = got
	}
	if got > served.maxBytes {
		served.maxBytes = got
	}
	served.ends[end]++
	if codeSeen {
		served.codes[strconv.FormatUint(code, 10)]++
	}
	served.mu.Unlock()

	if idx <= shownStreams {
		fields := []kv{{"index", idx - 1}, {"bytes", got}, {"pattern_ok", patternOK}, {"end", end}}
		if codeSeen {
			fields = append(fields, kv{"code", code})
		}
		if end == "error" {
			fields = append(fields, kv{"error", fmt.Sprint(err)})
		}
		emit("reliable_reset_stream", fields...)
	}
	emitReliableServed(false)
}

// emitReliableServed prints the running totals (after every stream, and at exit).
func emitReliableServed(final bool) {
	served.mu.Lock()
	defer served.mu.Unlock()
	if served.count == 0 {
		return
	}
	fields := []kv{
		{"count", served.count}, {"ok", served.ok}, {"bad", served.count - served.ok},
		{"exact", served.exact}, {"pattern_bad", served.patternBad},
		{"min_bytes", served.minBytes}, {"max_bytes", served.maxBytes},
		{"reliable", handlerOpts.reliable}, {"size", handlerOpts.size}, {"code", handlerOpts.resetCode},
		{"ends", served.ends}, {"codes", served.codes}, // encoding/json sorts their keys
	}
	if final {
		fields = append(fields, kv{"final", true})
	}
	emit("reliable_reset_served", fields...)
}
