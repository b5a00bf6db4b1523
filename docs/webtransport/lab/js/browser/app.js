// js-libp2p (libp2p 3, @libp2p/webtransport 6) dialing a wt-lab listener from a page.
// ?addr=<multiaddr>&gater=default|open
import { createLibp2p } from 'libp2p'
import { webTransport } from '@libp2p/webtransport'
import { noise } from '@libp2p/noise'
import { multiaddr } from '@multiformats/multiaddr'

const q = new URLSearchParams(location.search)
const open = q.get('gater') !== 'default'
let results
try {
  const node = await createLibp2p({
    transports: [webTransport()],
    connectionEncrypters: [noise()],
    // In a browser, libp2p's default gater refuses private and loopback addresses.
    ...(open ? { connectionGater: { denyDialMultiaddr: () => false } } : {}),
  })
  const conn = await node.dial(multiaddr(q.get('addr')), { signal: AbortSignal.timeout(15000) })
  results = { gater: open ? 'open' : 'default', dial: 'ok', remotePeer: conn.remotePeer.toString(), remoteAddr: conn.remoteAddr.toString() }
  await node.stop()
} catch (e) {
  results = { gater: open ? 'open' : 'default', dial: `ERR ${e.name}: ${e.message}` }
}
window.results = results
