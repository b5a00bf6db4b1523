// Runs app.js in headless Chromium against one WebTransport listener and prints what happens,
// one JSON object per line on stdout (diagnostics go to stderr). Exit code 0 only if every step
// passed. See README.md.
//
//   node run.mjs --addr <multiaddr> [--streams N] [--concurrency C] [--bytes B] [--pings P]
//                [--timeout-ms T]
//
// CHROMIUM overrides the browser (default /usr/bin/chromium).
import { createServer } from 'node:http'
import { accessSync, constants } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

const here = dirname(fileURLToPath(import.meta.url))
const started = performance.now()

function emit (obj) {
  process.stdout.write(JSON.stringify(obj) + '\n')
}

function since (t) {
  return Math.round((performance.now() - t) * 1000) / 1000
}

function usage (why) {
  emit({ event: 'error', step: 'args', what: `${why}; usage: node run.mjs --addr <multiaddr> [--streams N] [--concurrency C] [--bytes B] [--pings P] [--timeout-ms T]` })
  process.exit(2)
}

function parseArgs (argv) {
  const opts = { addr: null, streams: 100, concurrency: 10, bytes: 32, pings: 3, timeoutMs: 60000 }
  const ints = { '--streams': 'streams', '--concurrency': 'concurrency', '--bytes': 'bytes', '--pings': 'pings', '--timeout-ms': 'timeoutMs' }
  for (let i = 0; i < argv.length; i++) {
    const flag = argv[i]
    const value = argv[i + 1]
    if (value === undefined) usage(`${flag} needs a value`)
    i++
    if (flag === '--addr') {
      opts.addr = value
    } else if (flag in ints) {
      const n = Number(value)
      if (!Number.isInteger(n) || n < 0) usage(`${flag} wants a whole number >= 0, not ${JSON.stringify(value)}`)
      opts[ints[flag]] = n
    } else {
      usage(`unknown argument ${JSON.stringify(flag)}`)
    }
  }
  if (!opts.addr) usage('--addr is required')
  if (opts.timeoutMs === 0) usage('--timeout-ms must be > 0')
  return opts
}

// A dependency, or an error that says how to get it.
async function load (pkg) {
  try {
    return await import(pkg)
  } catch (e) {
    throw new Error(`cannot load ${pkg} (run \`npm ci\` in ${here}): ${e.message}`)
  }
}

const opts = parseArgs(process.argv.slice(2))
const chromium = process.env.CHROMIUM || '/usr/bin/chromium'

let browser = null
let server = null
let failed = false
let finish // resolves when the page reports "finished"
const finished = new Promise(resolve => { finish = resolve })
let lastPageError = null

// Everything the page reports is printed as is, but "finished", which becomes our last line.
function onReport (obj) {
  if (obj?.event === 'finished') {
    finish(obj.ok === true)
    return
  }
  if (obj?.event === 'error') failed = true
  emit(obj)
}

async function run () {
  const [{ default: puppeteer }, esbuild] = [await load('puppeteer-core'), await load('esbuild')]

  let t = performance.now()
  const bundle = await esbuild.build({
    entryPoints: [join(here, 'app.js')],
    bundle: true,
    format: 'esm',
    platform: 'browser',
    target: 'es2022',
    write: false,
    logLevel: 'silent'
  })
  const js = bundle.outputFiles[0].contents
  const bundleMs = since(t)

  const html = '<!doctype html><meta charset="utf-8"><title>libp2p-quinn browser test</title>' +
    '<script type="module" src="/app.js"></script>\n'
  server = createServer((req, res) => {
    const path = new URL(req.url, 'http://x').pathname
    if (path === '/') {
      res.writeHead(200, { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store' })
      res.end(html)
    } else if (path === '/app.js') {
      res.writeHead(200, { 'content-type': 'text/javascript; charset=utf-8', 'cache-control': 'no-store' })
      res.end(js)
    } else {
      res.writeHead(path === '/favicon.ico' ? 204 : 404)
      res.end()
    }
  })
  // 127.0.0.1 over http is a secure context, which WebTransport needs.
  await new Promise((resolve, reject) => {
    server.once('error', reject)
    server.listen(0, '127.0.0.1', resolve)
  })
  const port = server.address().port

  try {
    accessSync(chromium, constants.X_OK)
  } catch (e) {
    throw Object.assign(new Error(`cannot start chromium at ${chromium}: ${e.message}`), { step: 'chromium' })
  }
  t = performance.now()
  try {
    browser = await puppeteer.launch({
      executablePath: chromium,
      headless: true,
      // We run as root in CI, where Chromium's sandbox cannot start.
      args: ['--no-sandbox'],
      // The DevTools connection goes over a pipe: should we be killed, Chromium reads EOF
      // and exits too, instead of outliving us.
      pipe: true,
      // We close it ourselves, bounded, in the finally below.
      handleSIGINT: false,
      handleSIGTERM: false,
      handleSIGHUP: false
    })
  } catch (e) {
    throw Object.assign(new Error(`cannot start chromium at ${chromium}: ${e.message}`), { step: 'chromium' })
  }
  emit({ event: 'browser', version: await browser.version(), launch_ms: since(t), bundle_ms: bundleMs })

  const page = await browser.newPage()
  page.on('console', m => process.stderr.write(`page: ${m.text()}\n`))
  page.on('pageerror', e => {
    lastPageError = `${e.name}: ${e.message}`
    process.stderr.write(`pageerror: ${lastPageError}\n`)
  })
  await page.exposeFunction('report', onReport)
  const query = new URLSearchParams({
    addr: opts.addr,
    streams: opts.streams,
    concurrency: opts.concurrency,
    bytes: opts.bytes,
    pings: opts.pings
  })
  await page.goto(`http://127.0.0.1:${port}/?${query}`)
  const ok = await finished
  if (!ok || failed) return false
  emit({ event: 'done', elapsed_ms: since(started) })
  return true
}

// Bounded: a browser that will not close is killed.
async function cleanup () {
  if (browser) {
    const b = browser
    browser = null
    const closed = b.close().then(() => true, () => false)
    const inTime = await Promise.race([closed, new Promise(resolve => setTimeout(() => resolve(false), 5000))])
    if (!inTime) b.process()?.kill('SIGKILL')
  }
  if (server) {
    server.closeAllConnections()
    server.close()
    server = null
  }
}

let timer
const timeout = new Promise((_resolve, reject) => {
  timer = setTimeout(() => {
    const why = lastPageError ? ` (last page error: ${lastPageError})` : ''
    reject(Object.assign(new Error(`timed out after ${opts.timeoutMs} ms${why}`), { step: 'timeout' }))
  }, opts.timeoutMs)
})
const signalled = new Promise((_resolve, reject) => {
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP']) {
    process.once(sig, () => reject(Object.assign(new Error(`stopped by ${sig}`), { step: 'signal' })))
  }
})

let code = 1
try {
  code = (await Promise.race([run(), timeout, signalled])) ? 0 : 1
} catch (e) {
  emit({ event: 'error', step: e.step ?? 'runner', what: e.message })
} finally {
  clearTimeout(timer)
  await cleanup()
}
process.exit(code)
