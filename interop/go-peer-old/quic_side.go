// The QUIC side of a connection: go-libp2p v0.38.2 has no network.Conn.As to
// reach quic-go's connection, so the old peer does not tell it (it is not
// used in the NAT test). go-peer has its own quic_side.go: main.go is shared.

package main

import "github.com/libp2p/go-libp2p/core/network"

// quicServer is nil: not known with go-libp2p v0.38.2.
func quicServer(network.Conn) *bool { return nil }

// resetStreamAt is nil: quic-go v0.48.2 has no RESET_STREAM_AT.
func resetStreamAt(network.Conn) *bool { return nil }
