// tools/cache-tests.mjs — runs http-cache-tests (Mark Nottingham's suite,
// https://cache-tests.fyi, npm package http-cache-tests) against an HTTP
// cache in front of the suite's own origin, as a private (browser) cache:
// the tests for shared caches only are left out, those for browsers only are
// run. Driven by tools/cache-tests, which starts the origin and netd's
// gateway; see there for the options.
//
//   node cache-tests.mjs PKGDIR BASEURL [--id ID] [--json FILE]
//        [--expect FILE] [--compare] [--h2]
//
// --h2: BASEURL is https and speaks HTTP/2 only (netd's --gateway-h2): the
// requests go over one HTTP/2 connection (node's http2 module; the test
// certificate is not checked) instead of node-fetch's HTTP/1.1;
// --proxy HOST:PORT: BASEURL is the origin itself, every request goes to
// the forward proxy at HOST:PORT in absolute form (netd's --proxy);
// --unix SOCKET (with --h2): BASEURL is the origin itself, every request
// goes to netd's IPC socket as a kernel process sends it in remote mode
// (HTTP/2 with prior knowledge, :scheme/:authority/:path the target's,
// bodies decoded by netd);
// --id runs one test and prints what went to and came from the cache;
// --json writes the raw results (the suite's format, as in its results/);
// --expect FILE checks every result against FILE: {"test-id": "why it does
// not pass", ...} — a test listed there must not pass, every other test
// must (so the file stays true both ways); one line per case, then
// "[  PASSED  ] N test(s)." / "[  FAILED  ] N test(s)." (cmocka's form,
// which scripts/test adds up); --compare prints the same counts for the
// implementations whose results the package ships (browsers, proxies).
// Exit status: 0, or 1 when a result differs from --expect.
import fs from 'fs'
import http from 'http'
import http2 from 'http2'
import net from 'net'
import path from 'path'
import { pathToFileURL } from 'url'

const args = process.argv.slice(2)
const usage = 'usage: node cache-tests.mjs PKGDIR BASEURL [--id ID] [--json FILE] [--expect FILE] [--compare] [--h2 [--unix SOCKET] | --proxy HOST:PORT]'
if (args.length < 2) {
  console.error(usage)
  process.exit(2)
}
const [pkg, base] = args
let only = ''
let jsonOut = ''
let expectFile = ''
let compare = false
let h2 = false
let proxy = ''
let unix = ''
for (let i = 2; i < args.length; i++) {
  if (args[i] === '--id' && i + 1 < args.length) only = args[++i]
  else if (args[i] === '--json' && i + 1 < args.length) jsonOut = args[++i]
  else if (args[i] === '--expect' && i + 1 < args.length) expectFile = args[++i]
  else if (args[i] === '--compare') compare = true
  else if (args[i] === '--h2') h2 = true
  else if (args[i] === '--proxy' && i + 1 < args.length) proxy = args[++i]
  else if (args[i] === '--unix' && i + 1 < args.length) unix = args[++i]
  else {
    console.error(usage)
    process.exit(2)
  }
}

const load = p => import(pathToFileURL(path.join(pkg, p)).href)
const { runTests, getResults } = await load('client/runner.mjs')
const suites = (await load('tests/index.mjs')).default
// node-fetch 2, the suite's own dependency, beside it in node_modules
const nodeFetchModule = await import(pathToFileURL(path.join(pkg, '..', 'node-fetch', 'lib', 'index.mjs')).href)
const nodeFetch = nodeFetchModule.default

// fetch() over HTTP/2 with node's http2 module, one session per origin; the
// answer is a node-fetch Response, which is what the suite reads
const sessions = new Map()
function h2Fetch (url, init) {
  const u = new URL(url)
  let session = sessions.get(u.origin)
  if (!session || session.closed || session.destroyed) {
    session = unix
      ? http2.connect(u.origin, { createConnection: () => net.connect(unix) })
      : http2.connect(u.origin, { rejectUnauthorized: false })
    session.on('error', () => {})
    sessions.set(u.origin, session)
  }
  const head = {
    ':method': (init.method || 'GET').toUpperCase(),
    ':path': u.pathname + u.search,
    ':authority': u.host
  }
  for (const [name, value] of init.headers || []) {
    const n = name.toLowerCase()
    // as fetch() normalises a value (and HTTP/2 forbids whitespace at its
    // ends, RFC 9113 §8.2.1: netd resets such a stream)
    const v = String(value).trim()
    if (n === 'connection' || n === 'host') continue
    head[n] = n in head ? [].concat(head[n], v) : v
  }
  return new Promise((resolve, reject) => {
    const req = session.request(head, { endStream: init.body === undefined })
    const chunks = []
    let status = 0
    const headers = new nodeFetchModule.Headers()
    req.on('response', h => {
      status = h[':status']
      for (const [n, v] of Object.entries(h)) {
        if (n.startsWith(':')) continue
        for (const one of [].concat(v)) headers.append(n, String(one))
      }
    })
    req.on('data', c => chunks.push(c))
    req.on('end', () => resolve(new nodeFetchModule.Response(Buffer.concat(chunks),
      { status, statusText: String(status), headers })))
    req.on('error', reject)
    if (init.body !== undefined) req.end(init.body)
  })
}

// What a browser's fetch() does with a cache mode when its own cache is not
// there (netd is the cache): "no-cache" validates, so the request carries
// Cache-Control: max-age=0 (as Chromium sends it). node-fetch ignores cache
// modes; the suite uses "no-cache" only.
// fetch() through a forward proxy: the request line in absolute form
// (RFC 9112 §3.2.2), Host the origin's; the answer a node-fetch Response
function proxyFetch (url, init) {
  const u = new URL(url)
  const [phost, pport] = proxy.split(':')
  const headers = { host: u.host }
  for (const [name, value] of init.headers || []) {
    const n = name.toLowerCase()
    if (n === 'host') continue
    headers[n] = n in headers ? [].concat(headers[n], value) : value
  }
  // node frames a body by itself only for the methods that usually carry one
  // (chunked for POST and PUT); a DELETE's went out unframed, and netd read
  // it as the next request on the connection (a 400 the next GET received)
  if (init.body != null && !('content-length' in headers) && !('transfer-encoding' in headers)) {
    headers['content-length'] = Buffer.byteLength(init.body)
  }
  return new Promise((resolve, reject) => {
    const req = http.request({ host: phost, port: Number(pport), method: init.method || 'GET', path: u.href, headers },
      res => {
        const chunks = []
        const h = new nodeFetchModule.Headers()
        for (let i = 0; i < res.rawHeaders.length; i += 2) h.append(res.rawHeaders[i], res.rawHeaders[i + 1])
        res.on('data', c => chunks.push(c))
        res.on('end', () => resolve(new nodeFetchModule.Response(Buffer.concat(chunks),
          { status: res.statusCode, statusText: res.statusMessage, headers: h })))
        res.on('error', reject)
      })
    req.on('error', reject)
    req.end(init.body)
  })
}

function browserFetch (url, init) {
  const o = Object.assign({}, init)
  const h = (o.headers || []).slice()
  if (o.cache === 'no-cache') h.push(['Cache-Control', 'max-age=0'])
  delete o.cache
  o.headers = h
  return h2 ? h2Fetch(url, o) : proxy ? proxyFetch(url, o) : nodeFetch(url, o)
}

const byId = new Map()
for (const s of suites) for (const t of s.tests) byId.set(t.id, t)

let run = suites
if (only) {
  const t = byId.get(only)
  if (!t) {
    console.error(`cache-tests: no test ${only}`)
    process.exit(2)
  }
  t.dump = true
  run = [{ name: 'one', id: 'one', tests: [t] }]
}

// true: a private cache (tests marked browser_only run, browser_skip do not)
await runTests(run, browserFetch, true, base)
for (const session of sessions.values()) session.close()
const results = getResults()
if (jsonOut) fs.writeFileSync(jsonOut, JSON.stringify(results, null, 2) + '\n')

// The suite's own reading of a result (lib/display.mjs determineTestResult,
// which needs a DOM): pass, fail (required), optional_fail (optimal), yes /
// no (check), setup_fail, harness_fail, dependency_fail, untested.
function outcome (res, id, seen = new Set()) {
  const t = byId.get(id)
  const r = res[id]
  if (r === undefined) return 'untested'
  if (t.depends_on && !seen.has(id)) {
    seen.add(id)
    for (const d of t.depends_on) {
      const o = outcome(res, d, seen)
      if (o !== 'pass' && o !== 'yes') return 'dependency_fail'
    }
  }
  if (Array.isArray(r) && r[0] === 'Setup') return r[1] === 'retry' ? 'retry' : 'setup_fail'
  if (r === false) return 'harness_fail'
  const kind = t.kind || 'required'
  if (kind === 'required') return r === true ? 'pass' : 'fail'
  if (kind === 'optimal') return r === true ? 'pass' : 'optional_fail'
  return r === true ? 'yes' : 'no'
}

function detail (r) {
  return Array.isArray(r) ? r.filter(x => typeof x === 'string').join(': ') : String(r)
}

const ids = Object.keys(results)
function tally (res) {
  const c = { required: [0, 0], optimal: [0, 0], check: [0, 0] }
  for (const id of ids) {
    const kind = byId.get(id).kind || 'required'
    const o = outcome(res, id)
    if (o === 'untested') continue
    c[kind][1]++
    if (o === 'pass' || o === 'yes') c[kind][0]++
  }
  return c
}

if (only) {
  const o = outcome(results, only)
  console.log(`${only}: ${o}${results[only] === true ? '' : ' — ' + detail(results[only])}`)
  process.exit(0)
}

const pct = ([a, b]) => `${a}/${b}`.padEnd(9)
const ours = tally(results)
const via = unix ? ` through netd's IPC socket (remote mode)` : h2 ? ' over HTTP/2' : proxy ? ` through the proxy ${proxy}` : ''
console.log(`http-cache-tests against ${base}${via} as a private cache: ${ids.length} tests`)
console.log('                       required  optimal   checks (yes)')
console.log(`  this run             ${pct(ours.required)} ${pct(ours.optimal)} ${pct(ours.check)}`)
if (compare) {
  // the package's published results, read on the same tests (a proxy's were
  // taken as a shared cache: the tests for browsers only are untested there)
  const index = (await load('results/index.mjs')).default
  for (const impl of index) {
    let res
    try {
      res = JSON.parse(fs.readFileSync(path.join(pkg, 'results', impl.file), 'utf8'))
    } catch (e) {
      continue
    }
    const c = tally(res)
    const name = `${impl.name} ${impl.version}`.slice(0, 20).padEnd(20)
    console.log(`  ${name} ${pct(c.required)} ${pct(c.optimal)} ${pct(c.check)} (${impl.type})`)
  }
}

const notPassing = ids.filter(id => !['pass', 'yes'].includes(outcome(results, id)))
if (!expectFile) {
  for (const id of notPassing) {
    console.log(`  ${outcome(results, id).padEnd(15)} ${id} — ${detail(results[id])}`)
  }
  process.exit(0)
}

const expected = JSON.parse(fs.readFileSync(expectFile, 'utf8'))
let passed = 0
let failed = 0
for (const id of Object.keys(expected)) {
  if (!byId.has(id)) {
    console.log(`[  FAILED  ] ${id}: listed in ${expectFile} but not a test of this suite`)
    failed++
  }
}
for (const id of ids) {
  const o = outcome(results, id)
  const ok = o === 'pass' || o === 'yes'
  const known = Object.prototype.hasOwnProperty.call(expected, id)
  if (ok && !known) {
    passed++
  } else if (!ok && known) {
    passed++
    console.log(`[       OK ] ${id}: ${o} as expected (${expected[id]})`)
  } else if (ok && known) {
    failed++
    console.log(`[  FAILED  ] ${id}: passes now; take it out of ${expectFile}`)
  } else {
    failed++
    console.log(`[  FAILED  ] ${id}: ${o} — ${detail(results[id])}`)
  }
}
console.log(`[  PASSED  ] ${passed} test(s).`)
if (failed) console.log(`[  FAILED  ] ${failed} test(s).`)
process.exit(failed ? 1 : 0)
