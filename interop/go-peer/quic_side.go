// The QUIC side of a connection, for go-libp2p v0.52.0 and v0.48.0 (quic-go
// v0.64.1 and v0.59.0: go-peer-v048 links to this file). go-peer-old has its
// own quic_side.go: main.go is shared.

package main

import (
	"reflect"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/quic-go/quic-go"
)

// quicServer says whether we are the QUIC server of c; nil if c is not a QUIC
// connection (a relayed one). quic-go does not export a connection's side, so
// this reads its perspective field (1 server, 2 client in quic-go's
// protocol.Perspective); how the connection came about does not tell it, since
// go-libp2p's hole punch accepts a connection inside a dial.
func quicServer(c network.Conn) *bool {
	var qc *quic.Conn
	if !c.As(&qc) || qc == nil {
		return nil
	}
	f := reflect.ValueOf(qc).Elem().FieldByName("perspective")
	if !f.IsValid() {
		return nil
	}
	server := f.Int() == 1
	return &server
}

// resetStreamAt says whether the peer of c advertised RESET_STREAM_AT (quic-go's
// SupportsStreamResetPartialDelivery.Remote: go-libp2p enables it on our side,
// so it is what the connection negotiated); nil if c is not over QUIC.
func resetStreamAt(c network.Conn) *bool {
	var qc *quic.Conn
	if !c.As(&qc) || qc == nil {
		return nil
	}
	remote := qc.ConnectionState().SupportsStreamResetPartialDelivery.Remote
	return &remote
}
