// gowt: go-libp2p v0.48 on WebTransport, for interop with wt-lab.
//
//	gowt listen <seconds>   prints its addresses, logs connections
//	gowt dial <multiaddr>   connects (WebTransport + Noise with certhash check), then pings
package main

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	webtransport "github.com/libp2p/go-libp2p/p2p/transport/webtransport"
)

func main() {
	switch os.Args[1] {
	case "listen":
		secs, _ := strconv.Atoi(os.Args[2])
		h, err := libp2p.New(
			libp2p.Transport(webtransport.New),
			// One UDP port for both, as go does it: pick a port for QUIC, reuse it.
			libp2p.ListenAddrStrings("/ip4/127.0.0.1/udp/0/quic-v1/webtransport"),
		)
		if err != nil {
			panic(err)
		}
		for _, a := range h.Addrs() {
			fmt.Printf("%s/p2p/%s\n", a, h.ID())
		}
		h.Network().Notify(&network.NotifyBundle{ConnectedF: func(_ network.Network, c network.Conn) {
			fmt.Fprintf(os.Stderr, "go listener: connected to %s via %s\n", c.RemotePeer(), c.RemoteMultiaddr())
		}})
		time.Sleep(time.Duration(secs) * time.Second)
	case "dial":
		// Default transports (QUIC, WebTransport, …).
		h, err := libp2p.New(libp2p.NoListenAddrs)
		if err != nil {
			panic(err)
		}
		ai, err := peer.AddrInfoFromString(os.Args[2])
		if err != nil {
			panic(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		err = h.Connect(ctx, *ai)
		fmt.Fprintf(os.Stderr, "go dialer: Connect -> %v\n", err)
		for _, c := range h.Network().ConnsToPeer(ai.ID) {
			fmt.Fprintf(os.Stderr, "go dialer: conn %s -> %s (%s)\n", c.LocalMultiaddr(), c.RemoteMultiaddr(), c.ConnState().Transport)
		}
		if err != nil {
			os.Exit(1)
		}
	}
}
