// tools/bench/browser.mjs — one page load in a fresh headless Chromium process,
// measured over the DevTools protocol (driven by tools/bench/browser).
//
//   node browser.mjs --udd DIR --url URL [--chromium PATH] [--flag=--chromium-flag]...
//                    [--timeout-ms N] [--settle-ms N] [--no-measure]
//
// Starts Chromium (--headless, --remote-debugging-port=0, --user-data-dir=DIR,
// HOME and the XDG dirs under DIR/home) on about:blank, attaches to the page,
// enables the Network domain, navigates to URL and waits for the load event,
// then for the network to be quiet (no request in flight for --settle-ms,
// 500 ms; at most 5 s), then reads from the page: its Navigation Timing entry
// (navigation start = 0: response start, DOMContentLoaded, load event start),
// the last 'largest-contentful-paint' entry (a buffered PerformanceObserver),
// the fixture's completion markers on <html> (tests/fixtures/README.md) and
// the Resource Timing count. Requests are Network.requestWillBeSent events
// (data: URLs aside), split by how they ended: from Chromium's cache
// (disk/memory/prefetch cache, requestServedFromCache), from the network
// (any other response, a 304 revalidation included) or failed
// (loadingFailed, cancellations listed apart). Then Browser.close (a clean
// exit writes the disk cache's index: a later run on the same DIR sees it)
// and the process group is killed. One JSON object on stdout; exit 0 when
// the load event fired, 1 otherwise, 2 on usage errors.
//
// chrome-remote-interface comes from NETSTASH_NODE_DIR (tools/bench/browser
// installs it there on first use); nothing is vendored in the repository.
import { spawn } from 'node:child_process';
import { createRequire } from 'node:module';
import fs from 'node:fs';
import path from 'node:path';

function usage(msg) {
  process.stderr.write(`browser.mjs: ${msg}\n`);
  process.exit(2);
}

const opt = { chromium: 'chromium', flags: [], timeoutMs: 120000, settleMs: 500, measure: true };
for (let i = 2; i < process.argv.length; i++) {
  const a = process.argv[i];
  const val = () => {
    const eq = a.indexOf('=');
    if (eq > 0) return a.slice(eq + 1);
    if (i + 1 >= process.argv.length) usage(`${a} needs a value`);
    return process.argv[++i];
  };
  if (a.startsWith('--udd')) opt.udd = val();
  else if (a.startsWith('--url')) opt.url = val();
  else if (a.startsWith('--chromium')) opt.chromium = val();
  else if (a.startsWith('--flag')) opt.flags.push(val());
  else if (a.startsWith('--timeout-ms')) opt.timeoutMs = Number(val());
  else if (a.startsWith('--settle-ms')) opt.settleMs = Number(val());
  else if (a === '--no-measure') opt.measure = false;
  else usage(`unknown argument ${a}`);
}
if (!opt.udd || !opt.url) usage('--udd DIR and --url URL are required');

const nodeDir = process.env.NETSTASH_NODE_DIR;
if (!nodeDir) usage('NETSTASH_NODE_DIR is not set (tools/bench/browser sets it)');
let CDP;
try {
  CDP = createRequire(path.join(nodeDir, 'package.json'))('chrome-remote-interface');
} catch (e) {
  usage(`chrome-remote-interface not found in ${nodeDir}: ${e.message}`);
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const t_start = Date.now();
const deadline = t_start + opt.timeoutMs;
const out = { url: opt.url, ok: false, error: null };

// ---------------------------------------------------------------- chromium
const home = path.join(opt.udd, 'home');
fs.mkdirSync(home, { recursive: true });
const portFile = path.join(opt.udd, 'DevToolsActivePort');
fs.rmSync(portFile, { force: true });
const log = fs.openSync(path.join(opt.udd, 'chromium.log'), 'a');
const args = [
  '--headless', '--no-sandbox', '--disable-gpu', '--no-first-run', '--no-default-browser-check',
  '--disable-background-networking', '--disable-component-update', '--disable-sync',
  '--disable-default-apps', '--disable-extensions', '--mute-audio', '--window-size=1280,900',
  `--user-data-dir=${opt.udd}`, '--remote-debugging-port=0', ...opt.flags, 'about:blank',
];
const child = spawn(opt.chromium, args, {
  detached: true, // its own process group: renderers, GPU and zygote die with it
  stdio: ['ignore', log, log],
  env: { ...process.env, HOME: home, XDG_CONFIG_HOME: path.join(home, '.config'),
         XDG_CACHE_HOME: path.join(home, '.cache') },
});
let exited = false;
child.on('exit', () => { exited = true; });

function killGroup() {
  try { process.kill(-child.pid, 'SIGKILL'); } catch { /* gone */ }
}
process.on('exit', killGroup);
for (const s of ['SIGINT', 'SIGTERM']) process.on(s, () => { killGroup(); process.exit(130); });

async function devtoolsPort() {
  while (Date.now() < deadline) {
    if (exited) throw new Error('chromium exited at start (see chromium.log in the user-data-dir)');
    try {
      const port = Number(fs.readFileSync(portFile, 'utf8').split('\n')[0]);
      if (port > 0) return port;
    } catch { /* not yet */ }
    await sleep(20);
  }
  throw new Error('chromium did not open its DevTools port');
}

// ---------------------------------------------------------------- the load
async function run() {
  const port = await devtoolsPort();
  let target;
  while (!target && Date.now() < deadline) {
    target = (await CDP.List({ port })).find((t) => t.type === 'page');
    if (!target) await sleep(20);
  }
  const client = await CDP({ port, target });
  const { Network, Page, Runtime } = client;
  const reqs = new Map(); // requestId -> what became of it
  let t0 = null; // the first request's timestamp (s, the protocol's monotonic clock)
  let inflight = 0, lastActivity = Date.now(), loadFired = false, navigating = false;
  const done = (r, state, ts) => {
    if (r.state === 'pending') {
      inflight--;
      r.state = state;
      r.end = ts - t0;
    }
    lastActivity = Date.now();
  };
  Network.requestWillBeSent((p) => {
    if (!navigating || p.request.url.startsWith('data:')) return;
    const r = reqs.get(p.requestId);
    if (r) { // a redirect: same id, a new request
      r.redirects++;
      r.url = p.request.url;
      return;
    }
    if (t0 === null) t0 = p.timestamp;
    reqs.set(p.requestId, { url: p.request.url, state: 'pending', redirects: 0, cached: false,
                            status: 0, error: null, type: p.type, start: p.timestamp - t0, end: null,
                            sent: null, head: null });
    inflight++;
    lastActivity = Date.now();
  });
  Network.requestServedFromCache((p) => { const r = reqs.get(p.requestId); if (r) r.cached = true; });
  Network.responseReceived((p) => {
    const r = reqs.get(p.requestId);
    if (!r) return;
    r.status = p.response.status;
    r.protocol = p.response.protocol;
    const t = p.response.timing; // the browser's own record: not delayed by a busy renderer
    if (t && t.requestTime > 0) {
      r.sent = t.requestTime - t0 + Math.max(t.sendStart, 0) / 1000;
      r.head = t.requestTime - t0 + t.receiveHeadersEnd / 1000;
    }
    if (p.response.fromDiskCache || p.response.fromPrefetchCache || p.response.fromServiceWorker ||
        p.response.fromMemoryCache)
      r.cached = true;
  });
  Network.loadingFinished((p) => {
    const r = reqs.get(p.requestId);
    if (r) done(r, r.cached ? 'cache' : 'network', p.timestamp);
  });
  Network.loadingFailed((p) => {
    const r = reqs.get(p.requestId);
    if (!r) return;
    r.error = p.errorText;
    done(r, p.canceled ? 'canceled' : 'failed', p.timestamp);
  });
  Page.loadEventFired(() => { loadFired = true; });
  await Network.enable();
  await Page.enable();
  await Runtime.enable();
  // The browser's own cache stays on (arm B depends on it); a fresh
  // user-data-dir per run is what makes the other arms cold.
  navigating = true;
  const nav = await Page.navigate({ url: opt.url });
  if (nav.errorText) throw new Error(`navigation failed: ${nav.errorText}`);
  while (!loadFired && Date.now() < deadline) await sleep(10);
  if (!loadFired) throw new Error(`no load event within ${opt.timeoutMs} ms`);
  const quietEnd = Math.min(Date.now() + 5000, deadline);
  while (Date.now() < quietEnd && (inflight > 0 || Date.now() - lastActivity < opt.settleMs))
    await sleep(20);
  if (opt.measure) {
    const { result, exceptionDetails } = await Runtime.evaluate({
      awaitPromise: true, returnByValue: true,
      expression: `new Promise((resolve) => {
        const n = performance.getEntriesByType('navigation')[0] || {};
        const d = document.documentElement.dataset;
        const res = { nav: { response_start_ms: n.responseStart, dcl_ms: n.domContentLoadedEventEnd,
                             load_ms: n.loadEventStart, transfer_bytes: n.transferSize },
                      resources_timed: performance.getEntriesByType('resource').length,
                      markers: { app: d.app || null, cart: d.cart || null, headlines: d.headlines || null,
                                 chart: d.chart || null, highlighted: d.highlighted || null,
                                 resources: d.resources || null },
                      title: document.title, lcp_ms: null, lcp_element: null, lcp_size: null };
        try {
          new PerformanceObserver((list) => {
            const e = list.getEntries().at(-1);
            if (e) { res.lcp_ms = e.startTime; res.lcp_size = e.size;
                     res.lcp_element = (e.element ? e.element.tagName.toLowerCase() : '?') +
                                       (e.url ? ' ' + e.url.replace(/^.*\\//, '') : ''); }
            resolve(res);
          }).observe({ type: 'largest-contentful-paint', buffered: true });
        } catch (err) { res.lcp_error = String(err); resolve(res); }
        setTimeout(() => resolve(res), 1000);
      })`,
    });
    if (exceptionDetails) throw new Error(`page evaluation failed: ${exceptionDetails.text}`);
    Object.assign(out, result.value);
  }
  const counts = { requests: 0, network: 0, cache: 0, failed: 0, canceled: 0, pending: 0 };
  out.failures = [];
  for (const r of reqs.values()) {
    counts.requests++;
    counts[r.state === 'pending' ? 'pending' : r.state]++;
    if (r.state === 'failed' || r.state === 'canceled')
      out.failures.push(`${r.url} ${r.error}`);
  }
  out.counts = counts;
  // per request: path, type, how it ended, status, protocol, then in ms after
  // the first request (the document's): asked for, sent (the browser's
  // timing: after its queueing and connection set-up), response head, end
  const ms = (x) => (x === null ? null : Math.round(x * 10000) / 10);
  out.requests = [...reqs.values()].map((r) => [r.url.replace(/^[a-z]+:\/\/[^/]*/, ''), r.type, r.state,
                                               r.status, r.protocol || null, ms(r.start), ms(r.sent), ms(r.head),
                                               ms(r.end)]);
  out.protocols = [...new Set([...reqs.values()].map((r) => r.protocol).filter(Boolean))];
  out.ok = true;
  try {
    await client.Browser.close();
  } catch { /* closing: the socket may drop first */ }
  await client.close().catch(() => {});
}

try {
  await run();
} catch (e) {
  out.error = e.message;
}
// a clean exit flushes the disk cache; give it up to 10 s, then kill
for (let i = 0; i < 500 && !exited; i++) {
  if (i === 0 && !out.ok) break;
  await sleep(20);
}
killGroup();
out.wall_ms = Date.now() - t_start;
process.stdout.write(JSON.stringify(out) + '\n');
process.exit(out.ok ? 0 : 1);
