// The browser side of the WebTransport test: js-libp2p in Chromium dials one WebTransport
// address, pings it, then runs the echo protocol on many streams, and hangs up.
//
// Parameters come from the page's query string, so the page can be opened by hand too:
//   ?addr=<multiaddr with /certhash/… and /p2p/…>&streams=100&concurrency=10&bytes=32&pings=3
// Every step is reported as one JSON-able object through window.report (exposed by run.mjs);
// opened by hand, the objects go to the console instead.
//
// Reports, in order (a fatal error ends the list early):
//   {event:"node", peer}                         our own peer id
//   {event:"connected", peer, remote_addr, dial_ms}
//   {event:"ping", seq, rtt_ms}                  one per ping
//   {event:"echo", streams, ok, failed, concurrency, bytes, elapsed_ms, slowest_ms}
//   {event:"closed", stop_ms}                    node.stop() returned
//   {event:"error", step, name, message, what}   step: start|dial|ping|echo|stop
//   {event:"finished", ok}                       last; ok = no error was reported
import { createLibp2p } from 'libp2p'
import { webTransport } from '@libp2p/webtransport'
import { noise } from '@libp2p/noise'
import { ping } from '@libp2p/ping'
import { multiaddr } from '@multiformats/multiaddr'

const ECHO = '/libp2p-quinn/echo/1.0.0'
// One stream (open, write, read to EOF) must not take longer than this.
const STREAM_TIMEOUT_MS = 10000
// Only the first few stream errors are reported one by one; the rest are counted.
const MAX_STREAM_ERRORS = 5

const q = new URLSearchParams(location.search)
const params = {
  addr: q.get('addr') ?? '',
  streams: intParam('streams', 100),
  concurrency: intParam('concurrency', 10),
  bytes: intParam('bytes', 32),
  pings: intParam('pings', 3)
}

function intParam (name, dflt) {
  const v = q.get(name)
  return v === null ? dflt : Number.parseInt(v, 10)
}

let failures = 0

async function report (obj) {
  if (typeof window.report === 'function') {
    await window.report(obj)
  } else {
    console.log(JSON.stringify(obj))
  }
}

async function reportError (step, e, extra = {}) {
  failures++
  const name = e?.name ?? 'Error'
  const message = e?.message ?? String(e)
  await report({ event: 'error', step, name, message, what: `${step}: ${name}: ${message}`, ...extra })
}

// The message of stream i: distinct per stream, so a reply that lands on the wrong stream shows.
function message (i, n) {
  const m = new Uint8Array(n)
  for (let j = 0; j < n; j++) m[j] = (i * 131 + j * 7 + 1) & 0xff
  return m
}

function equal (a, b) {
  if (a.length !== b.length) return false
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false
  return true
}

// One echo exchange: open, write, close our write side, read until the peer's EOF, compare.
async function echoOne (conn, i) {
  const sent = message(i, params.bytes)
  const stream = await conn.newStream(ECHO, { signal: AbortSignal.timeout(STREAM_TIMEOUT_MS) })
  const timer = setTimeout(() => stream.abort(new Error(`stream ${i} took over ${STREAM_TIMEOUT_MS} ms`)), STREAM_TIMEOUT_MS)
  try {
    // Read from the start, so that nothing the peer sends waits on us.
    const reading = (async () => {
      const chunks = []
      let len = 0
      for await (const chunk of stream) {
        const bytes = chunk.subarray()
        chunks.push(bytes)
        len += bytes.length
      }
      const got = new Uint8Array(len)
      let at = 0
      for (const c of chunks) { got.set(c, at); at += c.length }
      return got
    })()
    if (!stream.send(sent)) await stream.onDrain()
    await stream.close() // our write side: the peer reads EOF and echoes
    const got = await reading
    if (!equal(got, sent)) {
      throw Object.assign(new Error(`stream ${i}: sent ${sent.length} bytes, got back ${got.length} that differ`), { name: 'EchoMismatch' })
    }
    // Both halves are done by now; close() is a no-op then, but says what we mean.
    if (stream.status !== 'closed') await stream.close()
  } catch (e) {
    stream.abort(e instanceof Error ? e : new Error(String(e)))
    throw e
  } finally {
    clearTimeout(timer)
  }
}

async function runEcho (conn) {
  const start = performance.now()
  let next = 0
  let ok = 0
  let failed = 0
  let slowest = 0
  const worker = async () => {
    for (;;) {
      const i = next++
      if (i >= params.streams) return
      const t = performance.now()
      try {
        await echoOne(conn, i)
        ok++
      } catch (e) {
        failed++
        if (failed <= MAX_STREAM_ERRORS) await reportError('echo', e, { stream: i })
      }
      slowest = Math.max(slowest, performance.now() - t)
    }
  }
  const workers = []
  for (let w = 0; w < Math.max(1, params.concurrency); w++) workers.push(worker())
  await Promise.all(workers)
  if (failed > MAX_STREAM_ERRORS) failures++ // the unreported ones still fail the run
  await report({
    event: 'echo',
    streams: params.streams,
    ok,
    failed,
    concurrency: params.concurrency,
    bytes: params.bytes,
    elapsed_ms: round(performance.now() - start),
    slowest_ms: round(slowest)
  })
}

function round (ms) {
  return Math.round(ms * 1000) / 1000
}

async function main () {
  let node
  try {
    node = await createLibp2p({
      transports: [webTransport()],
      connectionEncrypters: [noise()],
      services: { ping: ping() },
      // In a browser, js-libp2p refuses to dial loopback and private addresses by default.
      connectionGater: { denyDialMultiaddr: () => false }
    })
    await report({ event: 'node', peer: node.peerId.toString() })
  } catch (e) {
    await reportError('start', e)
    return
  }
  try {
    let conn
    try {
      const t = performance.now()
      conn = await node.dial(multiaddr(params.addr), { signal: AbortSignal.timeout(STREAM_TIMEOUT_MS) })
      await report({
        event: 'connected',
        peer: conn.remotePeer.toString(),
        remote_addr: conn.remoteAddr.toString(),
        dial_ms: round(performance.now() - t)
      })
    } catch (e) {
      await reportError('dial', e)
      return
    }
    for (let seq = 0; seq < params.pings; seq++) {
      try {
        const rtt = await node.services.ping.ping(conn.remotePeer, { signal: AbortSignal.timeout(STREAM_TIMEOUT_MS) })
        await report({ event: 'ping', seq, rtt_ms: rtt })
      } catch (e) {
        await reportError('ping', e, { seq })
      }
    }
    if (params.streams > 0) await runEcho(conn)
  } finally {
    try {
      const t = performance.now()
      await node.stop()
      await report({ event: 'closed', stop_ms: round(performance.now() - t) })
    } catch (e) {
      await reportError('stop', e)
    }
  }
}

try {
  await main()
} catch (e) {
  await reportError('internal', e)
}
await report({ event: 'finished', ok: failures === 0 })
