/*
 * tools/bench/netd.c (program netd-client) — hits through netd's unix
 * socket next to their physical floor and to reading the store directly,
 * all measured in the same run. Driven by tools/bench/netd, which starts
 * caddy and netd and puts the resources in netd's HTTP cache (and, with -P,
 * in a preload manifest warmed into the profile).
 *
 *   netd-client [-n N] [-r REPS] [-w WARMUP] [-b BIG] [-s SMALL] [-p NETD_PID] [-P]
 *               [-o ROWS] SOCKET PROFILE BASE_URL
 *
 * Rows (N sequential requests each after WARMUP unmeasured ones, one
 * process per row and repetition, the order reversed every other run):
 *   pingpong   the floor: a plain unix-socket ping-pong with a server
 *              process of this program; the client writes 1 byte and reads
 *              the answer (BIG bytes, or 1 byte) into its buffer
 *   netd       a remote-mode context (netstash_options_set_remote): request
 *              BASE_URL c/big.bin or c/small.bin through netd, body copied
 *              into a buffer by on_data; every answer must come from netd's
 *              HTTP cache (netstash_fetch_source() == NETSTASH_SOURCE_CACHE)
 *              with the right size, else the run fails
 *   direct     the same URLs through a local-mode context opened on netd's
 *              profile directory while netd runs: the kernel reading the
 *              LMDB store itself (many readers, netd the writer)
 * With -P, the same for p/big.bin and p/small.bin, preloaded (source
 * NETSTASH_SOURCE_PRELOAD), plus
 *   lookup     netstash_preload_lookup() on a local context, the body's
 *              chunks copied into a buffer, the hit released
 *   netd lookup  the kernel's synchronous fast path through the socket:
 *              netstash_request_new(), netstash_intercept_preloaded() on a
 *              remote-mode context (one round trip on the hit's own
 *              connection to netd, from the calling thread), the body copied
 *              into a buffer, the hit released, the request deleted; also
 *              without -P for the HTTP cache's entries (c/big.bin,
 *              c/small.bin) with netstash_intercept_cached()
 *   netd kernel lookup  the kernel's whole fast path for those HTTP-cache
 *              entries: netstash_intercept_lookup() (netd tries its preload
 *              store, then its HTTP cache: one round trip)
 *   netd two lookups  the same as two calls, netstash_intercept_preloaded()
 *              (a miss) then netstash_intercept_cached(): two round trips
 *   netd, miss  a remote-mode fetch of c/small.bin with a query of its own
 *              (?miss=PID-I): netd fetches it from caddy (source network)
 *              and stores it; the fetch ends with the last body byte, not
 *              with netd's commit of the entry. N/10 requests (at least 100)
 * A request is timed from netstash_request_new() to the end of
 * netstash_fetch_wait() (all of it the caller's latency). Per row: median
 * over REPS of the p50 and p99 latency, of the client's CPU per request
 * (getrusage, every thread of the process), of the server's CPU per request
 * (the ping-pong process or netd: clock_getcpuclockid, ns), of the server's
 * minor page faults and of the client's allocations per request (malloc
 * interposed); the largest peak RSS of the client process. Splits: the time
 * to submit (request_new + fetch_start), the library's TTFB and, for netd
 * rows, netd's own mean time from a request's start to its head
 * (netd_request_head_seconds of GET /metrics, read before and after the
 * row). Ratios are taken per run (rows measured minutes apart are never
 * compared) and their median printed with the range. -o keeps only the
 * rows whose name contains ROWS (for profiling one of them).
 */
#define _GNU_SOURCE /* nftw (benchutil.h) */

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <netstash/netstash.h>

#include "benchutil.h"

#define BUF_CAP (1u << 20)

__attribute__((noreturn)) static void die(const char *msg) {
  fprintf(stderr, "bench/netd: %s\n", msg);
  exit(1);
}

/* K_KLOOKUP: the kernel's whole fast path, netstash_intercept_lookup (one
 * round trip); K_KLOOKUP2: the same as two calls, netstash_intercept_preloaded
 * (a miss for an HTTP-cache entry) then netstash_intercept_cached */
typedef enum kind {
  K_PINGPONG,
  K_NETD,
  K_DIRECT,
  K_LOOKUP,
  K_RLOOKUP,
  K_MISS,
  K_KLOOKUP,
  K_KLOOKUP2
} kind;

typedef struct row {
  const char *name;
  kind k;
  int big;     /* BIG or small resource / answer */
  int preload; /* p/ (preloaded) rather than c/ (HTTP cache) */
} row;

typedef struct result {
  uint64_t p50, p99;     /* ns */
  uint64_t sub50;        /* request_new + fetch_start, p50 ns */
  uint64_t ttfb50;       /* the library's TTFB timing, p50 ns */
  double netd_head_ns;   /* netd's own time to head, mean (its metrics) */
  double cpu_ns, srv_ns; /* per request */
  double srv_faults;     /* the server's minor page faults per request */
  double allocs;         /* per request */
  long rss_kb;
} result;

static size_t nreq = 5000, warmup = 200, big_size = 51200, small_size = 200;
static unsigned reps = 7;
static int with_preload;
static const char *only; /* -o: rows whose name contains this */
static pid_t netd_pid, pp_pid;
static const char *sock_path, *profile, *base;
static struct sockaddr_un pp_addr;
static char tmpdir[] = "/tmp/netstash-bench-netd.XXXXXX";

/* ------------------------------------------------------------ ping-pong server */

static void write_all(int fd, const uint8_t *p, size_t n) {
  while (n) {
    ssize_t w = write(fd, p, n);
    if (w < 0 && errno == EINTR)
      continue;
    if (w <= 0)
      return;
    p += w;
    n -= (size_t)w;
  }
}

/* One client at a time: 'B' asks for BIG bytes, anything else for 1 byte. */
__attribute__((noreturn)) static void pp_serve(int lfd) {
  uint8_t *resp = malloc(big_size);
  if (!resp)
    _exit(1);
  for (size_t i = 0; i < big_size; i++)
    resp[i] = (uint8_t)(i * 31 + 7);
  for (;;) {
    int c = accept(lfd, NULL, NULL);
    uint8_t q;
    if (c < 0)
      continue;
    for (;;) {
      ssize_t r = read(c, &q, 1);
      if (r < 0 && errno == EINTR)
        continue;
      if (r <= 0)
        break;
      write_all(c, resp, q == 'B' ? big_size : 1);
    }
    close(c);
  }
}

static void pp_start(void) {
  int lfd = socket(AF_UNIX, SOCK_STREAM, 0);
  pp_addr.sun_family = AF_UNIX;
  snprintf(pp_addr.sun_path, sizeof(pp_addr.sun_path), "%s/pp.sock", tmpdir);
  if (lfd < 0 || bind(lfd, (struct sockaddr *)&pp_addr, sizeof(pp_addr)) != 0 ||
      listen(lfd, 4) != 0)
    die("ping-pong socket");
  pp_pid = fork();
  if (pp_pid < 0)
    die("fork");
  if (pp_pid == 0)
    pp_serve(lfd);
  close(lfd);
}

static int pp_connect(void) {
  int fd = socket(AF_UNIX, SOCK_STREAM, 0);
  if (fd < 0 || connect(fd, (struct sockaddr *)&pp_addr, sizeof(pp_addr)) != 0)
    die("ping-pong connect");
  return fd;
}

static void pp_once(int fd, int big, uint8_t *buf) {
  uint8_t q = big ? 'B' : 'S';
  size_t want = big ? big_size : 1, got = 0;
  write_all(fd, &q, 1);
  while (got < want) {
    ssize_t r = read(fd, buf + got, BUF_CAP - got);
    if (r < 0 && errno == EINTR)
      continue;
    if (r <= 0)
      die("ping-pong read");
    got += (size_t)r;
  }
  if (got != want)
    die("ping-pong: answer of the wrong size");
}

/* ------------------------------------------------------------ netstash */

typedef struct sink {
  uint8_t *buf;
  size_t len;
} sink;

static void on_data(netstash_fetch *f, const uint8_t *data, size_t len, void *ud) {
  sink *s = ud;
  (void)f;
  if (s->len + len <= BUF_CAP)
    memcpy(s->buf + s->len, data, len);
  s->len += len;
}

static const netstash_fetch_callbacks cbs = {NULL, on_data, NULL};

static netstash_ctx *ctx_open(kind k) {
  netstash_options *o;
  netstash_ctx *ctx;
  char det[256] = "";
  if (netstash_options_new(&o) != NETSTASH_OK)
    die("options");
  if (k == K_NETD || k == K_RLOOKUP || k == K_MISS || k == K_KLOOKUP || k == K_KLOOKUP2
          ? netstash_options_set_remote(o, sock_path) != NETSTASH_OK
          : netstash_options_set_profile_dir(o, profile) != NETSTASH_OK)
    die("options");
  if (netstash_ctx_new(&ctx, o, det, sizeof(det)) != NETSTASH_OK) {
    fprintf(stderr, "bench/netd: context: %s\n", det);
    exit(1);
  }
  netstash_options_del(o);
  return ctx;
}

static const char *source_name(netstash_source s) {
  switch (s) {
  case NETSTASH_SOURCE_NETWORK:
    return "network";
  case NETSTASH_SOURCE_CACHE:
    return "cache";
  case NETSTASH_SOURCE_REVALIDATED:
    return "revalidated";
  case NETSTASH_SOURCE_PRELOAD:
    return "preload";
  default:
    return "none";
  }
}

/* One request; fails the run unless it is a 200 of size bytes from want
 * (NETSTASH_SOURCE_NONE: any source). Returns the source; *sub gets the
 * time to submit, *ttfb the library's TTFB (ns). */
static netstash_source fetch_once(netstash_ctx *ctx, const char *url, size_t size,
                                  netstash_source want, uint8_t *buf, uint64_t *sub,
                                  uint64_t *ttfb) {
  netstash_request *req;
  netstash_fetch *f;
  netstash_error e;
  netstash_source src;
  sink s = {buf, 0};
  uint64_t t0 = now_ns();
  if (netstash_request_new(&req, url) != NETSTASH_OK ||
      netstash_fetch_start(ctx, req, &cbs, &s, &f) != NETSTASH_OK)
    die("cannot start a fetch");
  netstash_request_del(req);
  *sub = now_ns() - t0;
  e = netstash_fetch_wait(f, 10000);
  src = netstash_fetch_source(f);
  if (e != NETSTASH_OK || netstash_fetch_status(f) != 200 || s.len != size ||
      netstash_fetch_body_bytes(f) != size || (want != NETSTASH_SOURCE_NONE && src != want)) {
    fprintf(stderr,
            "bench/netd: %s: %s, status %d, %zu bytes (want %zu), source %s (want %s), "
            "cache reason \"%s\" %s\n",
            url, netstash_error_name(e), netstash_fetch_status(f), s.len, size, source_name(src),
            source_name(want), netstash_fetch_cache_reason(f), netstash_fetch_error_detail(f));
    exit(1);
  }
  *ttfb = netstash_fetch_timing_us(f, NETSTASH_TIMING_TTFB) * 1000;
  netstash_fetch_del(f);
  return src;
}

/* A preload hit of size bytes copied into buf: netstash_preload_lookup(url),
 * or (k other than K_LOOKUP) the interceptor's fast path on a new request. */
static void lookup_once(netstash_preload_hit *h, const char *url, size_t size, uint8_t *buf, kind k,
                        int cached) {
  size_t at = 0;
  netstash_request *req = NULL;
  netstash_error e;
  if (k != K_LOOKUP) {
    if (netstash_request_new(&req, url) != NETSTASH_OK)
      die("cannot make a request");
    switch (k) {
    case K_KLOOKUP:
      e = netstash_intercept_lookup(req, h);
      break;
    case K_KLOOKUP2:
      e = netstash_intercept_preloaded(req, h);
      if (e != NETSTASH_OK)
        e = netstash_intercept_cached(req, h);
      break;
    default:
      e = cached ? netstash_intercept_cached(req, h) : netstash_intercept_preloaded(req, h);
      break;
    }
  } else {
    e = netstash_preload_lookup(h, url);
  }
  if (e != NETSTASH_OK || netstash_preload_hit_status(h) != 200 ||
      netstash_preload_hit_body_size(h) != size ||
      netstash_preload_hit_source(h) !=
          (cached ? NETSTASH_SOURCE_CACHE : NETSTASH_SOURCE_PRELOAD)) {
    fprintf(stderr, "bench/netd: lookup %s: %s\n", url, netstash_error_name(e));
    exit(1);
  }
  for (uint32_t c = 0, nc = netstash_preload_hit_chunk_count(h); c < nc; c++) {
    const uint8_t *d;
    size_t len;
    if (netstash_preload_hit_chunk(h, c, &d, &len) != NETSTASH_OK || at + len > BUF_CAP)
      die("lookup: chunk");
    memcpy(buf + at, d, len);
    at += len;
  }
  if (at != size)
    die("lookup: body of the wrong size");
  netstash_preload_hit_release(h);
  netstash_request_del(req);
}

/* netd's GET /metrics (a control request through the same connection) into
 * buf, NUL-terminated; 0, or -1 when it could not be read. */
static int netd_metrics(netstash_ctx *ctx, uint8_t *buf) {
  netstash_request *req;
  netstash_fetch *f;
  sink s = {buf, 0};
  int rc = -1;
  if (netstash_request_new(&req, "http://netd/metrics") != NETSTASH_OK ||
      netstash_fetch_start(ctx, req, &cbs, &s, &f) != NETSTASH_OK)
    die("cannot start a fetch");
  netstash_request_del(req);
  if (netstash_fetch_wait(f, 10000) == NETSTASH_OK && netstash_fetch_status(f) == 200 &&
      s.len < BUF_CAP) {
    buf[s.len] = 0;
    rc = 0;
  }
  netstash_fetch_del(f);
  return rc;
}

/* netd's request_head_seconds sum (us) and count. */
static void netd_head(netstash_ctx *ctx, uint8_t *buf, double *sum_us, double *count) {
  const char *p;
  *sum_us = *count = 0;
  if (netd_metrics(ctx, buf) != 0)
    return;
  if ((p = strstr((char *)buf, "netd_request_head_seconds_sum ")))
    *sum_us = strtod(p + 30, NULL) * 1e6;
  if ((p = strstr((char *)buf, "netd_request_head_seconds_count ")))
    *count = strtod(p + 32, NULL);
}

/* Waits (up to 5 s) until netd has no job finishing after its answer (a
 * miss's commit): the next row is not measured beside the commits of this
 * one's last misses. */
static void netd_settle(netstash_ctx *ctx, uint8_t *buf) {
  for (int i = 0; i < 500; i++) {
    const char *p;
    if (netd_metrics(ctx, buf) == 0 &&
        (!(p = strstr((char *)buf, "\nnetd_ipc_jobs_finishing ")) || strtod(p + 25, NULL) == 0))
      return;
    usleep(10000);
  }
}

/* ------------------------------------------------------------ rows */

static uint64_t cpu_self_ns(void) {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return (uint64_t)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1000000000u +
         (uint64_t)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) * 1000u;
}

/* CPU time of another process (every thread), ns; 0 if unknown. */
static uint64_t cpu_of(pid_t pid) {
  clockid_t clk;
  struct timespec ts;
  if (pid <= 0 || clock_getcpuclockid(pid, &clk) != 0 || clock_gettime(clk, &ts) != 0)
    return 0;
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Minor page faults of another process so far (/proc/PID/stat field 10). */
static double faults_of(pid_t pid) {
  char path[64], line[1024], *p;
  unsigned long v = 0;
  FILE *fp;
  snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
  if (pid <= 0 || !(fp = fopen(path, "r")))
    return 0;
  if (fgets(line, sizeof(line), fp) && (p = strrchr(line, ')')))
    sscanf(p + 2, "%*s %*s %*s %*s %*s %*s %*s %lu", &v);
  fclose(fp);
  return (double)v;
}

static void url_of(char *out, size_t cap, const row *r) {
  snprintf(out, cap, "%s%s/%s.bin", base, r->preload ? "p" : "c", r->big ? "big" : "small");
}

/* Runs one row in this (child) process. */
static result run_row(const row *r) {
  result res;
  char url[1024];
  size_t size = r->big ? big_size : small_size;
  uint64_t *t = malloc(nreq * sizeof(uint64_t)), *sub = malloc(nreq * sizeof(uint64_t)),
           *tt = malloc(nreq * sizeof(uint64_t));
  uint8_t *buf = malloc(BUF_CAP);
  netstash_source want = r->preload ? NETSTASH_SOURCE_PRELOAD : NETSTASH_SOURCE_CACHE;
  netstash_ctx *ctx = NULL;
  netstash_preload_hit *h = NULL;
  int fd = -1;
  pid_t srv = r->k == K_PINGPONG ? pp_pid : netd_pid;
  /* misses cost a network fetch and a stored entry each: fewer of them */
  size_t n = r->k == K_MISS ? (nreq / 10 < 100 ? 100 : nreq / 10) : nreq;
  size_t w = r->k == K_MISS ? warmup / 10 : warmup;
  uint64_t c0 = 0, s0 = 0, dummy;
  double f0 = 0;
  double h_sum0 = 0, h_n0 = 0, h_sum1, h_n1;
  unsigned long a0 = 0;
  if (!t || !sub || !tt || !buf)
    die("out of memory");
  memset(&res, 0, sizeof(res));
  memset(sub, 0, nreq * sizeof(uint64_t));
  memset(tt, 0, nreq * sizeof(uint64_t));
  url_of(url, sizeof(url), r);
  if (r->k == K_PINGPONG) {
    fd = pp_connect();
    if (!r->big)
      size = 1;
  } else {
    ctx = ctx_open(r->k);
    if ((r->k == K_LOOKUP || r->k == K_RLOOKUP || r->k == K_KLOOKUP || r->k == K_KLOOKUP2) &&
        netstash_preload_hit_new(ctx, &h) != NETSTASH_OK)
      die("preload hit");
  }
  for (size_t i = 0; i < w + n; i++) {
    uint64_t t0;
    if (i == w) {
      if (r->k == K_NETD || r->k == K_MISS)
        netd_head(ctx, buf, &h_sum0, &h_n0);
      c0 = cpu_self_ns();
      s0 = cpu_of(srv);
      f0 = faults_of(srv);
      a0 = n_alloc;
    }
    t0 = now_ns();
    switch (r->k) {
    case K_PINGPONG:
      pp_once(fd, r->big, buf);
      break;
    case K_MISS:
      snprintf(url, sizeof(url), "%sc/small.bin?miss=%d-%zu", base, (int)getpid(), i);
      fetch_once(ctx, url, size, NETSTASH_SOURCE_NETWORK, buf, i >= w ? &sub[i - w] : &dummy,
                 i >= w ? &tt[i - w] : &dummy);
      break;
    case K_NETD:
    case K_DIRECT:
      fetch_once(ctx, url, size, want, buf, i >= w ? &sub[i - w] : &dummy,
                 i >= w ? &tt[i - w] : &dummy);
      break;
    case K_LOOKUP:
    case K_RLOOKUP:
    case K_KLOOKUP:
    case K_KLOOKUP2:
      lookup_once(h, url, size, buf, r->k, !r->preload);
      break;
    }
    if (i >= w)
      t[i - w] = now_ns() - t0;
  }
  if (r->k == K_MISS) /* its commits counted in netd's CPU, not in the next row's */
    netd_settle(ctx, buf);
  res.cpu_ns = (double)(cpu_self_ns() - c0) / (double)n;
  res.srv_ns = (double)(cpu_of(srv) - s0) / (double)n;
  res.srv_faults = (faults_of(srv) - f0) / (double)n;
  res.allocs = (double)(n_alloc - a0) / (double)n;
  if (r->k == K_NETD || r->k == K_MISS) {
    netd_head(ctx, buf, &h_sum1, &h_n1);
    if (h_n1 > h_n0)
      res.netd_head_ns = (h_sum1 - h_sum0) / (h_n1 - h_n0) * 1e3;
  }
  qsort(t, n, sizeof(uint64_t), cmp_u64);
  qsort(sub, n, sizeof(uint64_t), cmp_u64);
  qsort(tt, n, sizeof(uint64_t), cmp_u64);
  res.p50 = t[n / 2];
  res.p99 = t[n * 99 / 100];
  res.sub50 = sub[n / 2];
  res.ttfb50 = tt[n / 2];
  if (fd >= 0)
    close(fd);
  netstash_preload_hit_del(h);
  netstash_ctx_del(ctx);
  res.rss_kb = peak_rss_kb();
  return res;
}

/* Runs row r in a child process (no library state leaks between rows, and
 * each row's peak RSS is its own); the child's result comes back in *out. */
static void in_child(const row *r, result *out) {
  int fds[2];
  pid_t pid;
  int st;
  if (pipe(fds) != 0)
    die("pipe");
  fflush(NULL);
  pid = fork();
  if (pid < 0)
    die("fork");
  if (pid == 0) {
    result res;
    close(fds[0]);
    res = run_row(r);
    if (write(fds[1], &res, sizeof(res)) != (ssize_t)sizeof(res))
      _exit(1);
    _exit(0);
  }
  close(fds[1]);
  if (read(fds[0], out, sizeof(*out)) != (ssize_t)sizeof(*out) || waitpid(pid, &st, 0) != pid ||
      !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
    fprintf(stderr, "bench/netd: row \"%s\" failed (see above)\n", r->name);
    kill(pp_pid, SIGTERM);
    bench_rmtree(tmpdir);
    exit(1);
  }
  close(fds[0]);
}

/* Puts the HTTP-cache resources in netd's cache: fetched through netd until
 * netd answers from its cache (the first answer is the network's; the store
 * commit may land a moment later). */
static void prime(void) {
  static const row rows[] = {{"prime", K_NETD, 1, 0}, {"prime", K_NETD, 0, 0}};
  fflush(NULL);
  pid_t pid = fork();
  int st;
  if (pid == 0) {
    netstash_ctx *ctx = ctx_open(K_NETD);
    uint8_t *buf = malloc(BUF_CAP);
    uint64_t a, b;
    for (int k = 0; k < 2; k++) {
      char url[1024];
      int tries = 0;
      url_of(url, sizeof(url), &rows[k]);
      while (fetch_once(ctx, url, rows[k].big ? big_size : small_size, NETSTASH_SOURCE_NONE, buf,
                        &a, &b) != NETSTASH_SOURCE_CACHE) {
        if (++tries == 100)
          die("netd does not answer from its HTTP cache (after 100 requests)");
        usleep(10000);
      }
    }
    netstash_ctx_del(ctx);
    _exit(0);
  }
  if (pid < 0 || waitpid(pid, &st, 0) != pid || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
    kill(pp_pid, SIGTERM);
    bench_rmtree(tmpdir);
    die("priming netd's cache failed");
  }
}

/* ------------------------------------------------------------ report */

static int cmp_d(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

static double med_d(double *v, size_t n) {
  qsort(v, n, sizeof(double), cmp_d);
  return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

#define NROWS 24
static row rows[NROWS];
static size_t nrows;

static void add_row(row r) {
  if (nrows == NROWS)
    die("bench/netd: more rows than NROWS");
  rows[nrows++] = r;
}
static result (*res)[NROWS]; /* res[rep][row] */

typedef double (*field_fn)(const result *);
static double f_p50(const result *r) {
  return (double)r->p50;
}
static double f_p99(const result *r) {
  return (double)r->p99;
}
static double f_cpu(const result *r) {
  return r->cpu_ns;
}
static double f_srv(const result *r) {
  return r->srv_ns;
}
static double f_flt(const result *r) {
  return r->srv_faults;
}
static double f_alloc(const result *r) {
  return r->allocs;
}
static double f_sub(const result *r) {
  return (double)r->sub50;
}
static double f_ttfb(const result *r) {
  return (double)r->ttfb50;
}
static double f_nhead(const result *r) {
  return r->netd_head_ns;
}

static double med_of(size_t row_i, field_fn f) {
  double v[64];
  for (unsigned k = 0; k < reps; k++)
    v[k] = f(&res[k][row_i]);
  return med_d(v, reps);
}

static size_t find_row(kind k, int big, int preload) {
  for (size_t i = 0; i < nrows; i++)
    if (rows[i].k == k && rows[i].big == big && rows[i].preload == preload)
      return i;
  return SIZE_MAX;
}

/* Ratio a/b of a field per run: median and range. */
static void ratio(const char *label, size_t a, size_t b, field_fn f, const char *target) {
  double v[64], lo, hi, m;
  if (a == SIZE_MAX || b == SIZE_MAX)
    return;
  for (unsigned k = 0; k < reps; k++)
    v[k] = f(&res[k][a]) / f(&res[k][b]);
  m = med_d(v, reps);
  lo = v[0];
  hi = v[reps - 1];
  printf("  %-44s %5.2fx  (runs %.2f-%.2f)%s%s\n", label, m, lo, hi, target ? "  target " : "",
         target ? target : "");
}

int main(int argc, char **argv) {
  int o;
  while ((o = getopt(argc, argv, "n:r:w:b:s:p:Po:")) != -1) {
    switch (o) {
    case 'n':
      nreq = strtoul(optarg, NULL, 10);
      break;
    case 'r':
      reps = (unsigned)strtoul(optarg, NULL, 10);
      break;
    case 'w':
      warmup = strtoul(optarg, NULL, 10);
      break;
    case 'b':
      big_size = strtoul(optarg, NULL, 10);
      break;
    case 's':
      small_size = strtoul(optarg, NULL, 10);
      break;
    case 'p':
      netd_pid = (pid_t)strtol(optarg, NULL, 10);
      break;
    case 'P':
      with_preload = 1;
      break;
    case 'o':
      only = optarg;
      break;
    default:
      die("usage: netd-client [-n N] [-r REPS] [-w WARMUP] [-b BIG] [-s SMALL] "
          "[-p NETD_PID] [-P] [-o ROWS] SOCKET PROFILE BASE_URL");
    }
  }
  if (argc - optind != 3 || nreq < 100 || !reps || reps > 64 || !big_size || big_size > BUF_CAP ||
      !small_size || small_size > BUF_CAP)
    die("usage: netd-client [-n N>=100] [-r REPS<=64] [-w WARMUP] [-b BIG] [-s SMALL] "
        "[-p NETD_PID] [-P] [-o ROWS] SOCKET PROFILE BASE_URL");
  sock_path = argv[optind];
  profile = argv[optind + 1];
  base = argv[optind + 2];
  if (!mkdtemp(tmpdir))
    die("mkdtemp");
  signal(SIGPIPE, SIG_IGN);

  add_row((row){"pingpong 50 KB", K_PINGPONG, 1, 0});
  add_row((row){"pingpong 1 B", K_PINGPONG, 0, 0});
  add_row((row){"netd, HTTP cache, big", K_NETD, 1, 0});
  add_row((row){"netd, HTTP cache, small", K_NETD, 0, 0});
  add_row((row){"direct, HTTP cache, big", K_DIRECT, 1, 0});
  add_row((row){"direct, HTTP cache, small", K_DIRECT, 0, 0});
  add_row((row){"netd lookup, HTTP cache, big", K_RLOOKUP, 1, 0});
  add_row((row){"netd lookup, HTTP cache, small", K_RLOOKUP, 0, 0});
  add_row((row){"netd kernel lookup, HTTP cache, big", K_KLOOKUP, 1, 0});
  add_row((row){"netd kernel lookup, HTTP cache, small", K_KLOOKUP, 0, 0});
  add_row((row){"netd two lookups, HTTP cache, small", K_KLOOKUP2, 0, 0});
  add_row((row){"netd, miss, small", K_MISS, 0, 0});
  if (with_preload) {
    add_row((row){"netd, preload, big", K_NETD, 1, 1});
    add_row((row){"netd, preload, small", K_NETD, 0, 1});
    add_row((row){"direct, preload, big", K_DIRECT, 1, 1});
    add_row((row){"direct, preload, small", K_DIRECT, 0, 1});
    add_row((row){"lookup, preload, big", K_LOOKUP, 1, 1});
    add_row((row){"lookup, preload, small", K_LOOKUP, 0, 1});
    add_row((row){"netd lookup, preload, big", K_RLOOKUP, 1, 1});
    add_row((row){"netd lookup, preload, small", K_RLOOKUP, 0, 1});
  }
  if (only) { /* profiling one kind of row: keep the matching ones */
    size_t k = 0;
    for (size_t i = 0; i < nrows; i++)
      if (strstr(rows[i].name, only))
        rows[k++] = rows[i];
    nrows = k;
  }
  res = calloc(reps, sizeof(*res));
  if (!res)
    die("out of memory");
  pp_start();
  prime();
  for (unsigned k = 0; k < reps; k++) {
    for (size_t j = 0; j < nrows; j++) {
      size_t i = k % 2 ? nrows - 1 - j : j;
      in_child(&rows[i], &res[k][i]);
    }
  }
  kill(pp_pid, SIGTERM);
  waitpid(pp_pid, NULL, 0);
  bench_rmtree(tmpdir);

  printf("netd: %zu sequential requests per row after %zu warm-up, median of %u runs; big %zu B, "
         "small %zu B (pingpong small: 1 B)\n",
         nreq, warmup, reps, big_size, small_size);
  printf("%-27s %8s %8s %10s %10s %6s %7s %8s %9s %8s %9s\n", "row", "p50 us", "p99 us",
         "cli CPU us", "srv CPU us", "faults", "allocs", "RSS KB", "submit us", "TTFB us",
         "netd head");
  for (size_t i = 0; i < nrows; i++) {
    long rss = 0;
    for (unsigned k = 0; k < reps; k++)
      rss = res[k][i].rss_kb > rss ? res[k][i].rss_kb : rss;
    printf("%-27s %8.1f %8.1f %10.1f %10.1f %6.1f %7.1f %8ld", rows[i].name, med_of(i, f_p50) / 1e3,
           med_of(i, f_p99) / 1e3, med_of(i, f_cpu) / 1e3, med_of(i, f_srv) / 1e3, med_of(i, f_flt),
           med_of(i, f_alloc), rss);
    if (rows[i].k == K_NETD || rows[i].k == K_MISS)
      printf(" %9.1f %8.1f %9.1f\n", med_of(i, f_sub) / 1e3, med_of(i, f_ttfb) / 1e3,
             med_of(i, f_nhead) / 1e3);
    else if (rows[i].k == K_DIRECT)
      printf(" %9.1f %8.1f %9s\n", med_of(i, f_sub) / 1e3, med_of(i, f_ttfb) / 1e3, "-");
    else
      printf(" %9s %8s %9s\n", "-", "-", "-");
  }
  printf("(per request; cli CPU: this client, every thread; srv CPU and faults: the ping-pong "
         "server or netd (idle in the\n direct and lookup rows), CPU time and minor page faults; "
         "allocs: the client's; submit: request_new +\n fetch_start, p50; TTFB: the library's "
         "start to first byte, p50; netd head: netd's own time from a request's\n start to its "
         "response head, mean, from its metrics)\n");
  printf("ratios (per run, p50 unless said):\n");
  ratio("netd big / pingpong 50 KB", find_row(K_NETD, 1, 0), find_row(K_PINGPONG, 1, 0), f_p50,
        "<= 1.5x");
  ratio("netd small / pingpong 1 B", find_row(K_NETD, 0, 0), find_row(K_PINGPONG, 0, 0), f_p50,
        "<= 2x");
  ratio("netd big / pingpong 50 KB, p99", find_row(K_NETD, 1, 0), find_row(K_PINGPONG, 1, 0), f_p99,
        NULL);
  ratio("direct big / netd big (HTTP cache)", find_row(K_DIRECT, 1, 0), find_row(K_NETD, 1, 0),
        f_p50, NULL);
  ratio("direct small / netd small (HTTP cache)", find_row(K_DIRECT, 0, 0), find_row(K_NETD, 0, 0),
        f_p50, NULL);
  ratio("direct big / pingpong 50 KB", find_row(K_DIRECT, 1, 0), find_row(K_PINGPONG, 1, 0), f_p50,
        NULL);
  ratio("netd lookup HTTP cache big / pingpong 50 KB", find_row(K_RLOOKUP, 1, 0),
        find_row(K_PINGPONG, 1, 0), f_p50, "<= 1.5x");
  ratio("netd lookup HTTP cache small / pingpong 1 B", find_row(K_RLOOKUP, 0, 0),
        find_row(K_PINGPONG, 0, 0), f_p50, "<= 2x");
  ratio("netd lookup HTTP cache big / pingpong 50 KB, p99", find_row(K_RLOOKUP, 1, 0),
        find_row(K_PINGPONG, 1, 0), f_p99, NULL);
  ratio("netd kernel lookup HTTP cache big / pingpong 50 KB", find_row(K_KLOOKUP, 1, 0),
        find_row(K_PINGPONG, 1, 0), f_p50, "<= 1.5x");
  ratio("netd kernel lookup HTTP cache small / pingpong 1 B", find_row(K_KLOOKUP, 0, 0),
        find_row(K_PINGPONG, 0, 0), f_p50, "<= 2x");
  ratio("netd two lookups HTTP cache small / pingpong 1 B", find_row(K_KLOOKUP2, 0, 0),
        find_row(K_PINGPONG, 0, 0), f_p50, NULL);
  if (with_preload) {
    ratio("netd preload big / pingpong 50 KB", find_row(K_NETD, 1, 1), find_row(K_PINGPONG, 1, 0),
          f_p50, "<= 1.5x");
    ratio("netd preload small / pingpong 1 B", find_row(K_NETD, 0, 1), find_row(K_PINGPONG, 0, 0),
          f_p50, "<= 2x");
    ratio("direct preload big / netd preload big", find_row(K_DIRECT, 1, 1), find_row(K_NETD, 1, 1),
          f_p50, NULL);
    ratio("direct preload small / netd preload small", find_row(K_DIRECT, 0, 1),
          find_row(K_NETD, 0, 1), f_p50, NULL);
    ratio("lookup big / netd preload big", find_row(K_LOOKUP, 1, 1), find_row(K_NETD, 1, 1), f_p50,
          NULL);
    ratio("lookup small / netd preload small", find_row(K_LOOKUP, 0, 1), find_row(K_NETD, 0, 1),
          f_p50, NULL);
    ratio("netd lookup big / pingpong 50 KB", find_row(K_RLOOKUP, 1, 1), find_row(K_PINGPONG, 1, 0),
          f_p50, "<= 1.5x");
    ratio("netd lookup small / pingpong 1 B", find_row(K_RLOOKUP, 0, 1), find_row(K_PINGPONG, 0, 0),
          f_p50, "<= 2x");
    ratio("netd lookup big / pingpong 50 KB, p99", find_row(K_RLOOKUP, 1, 1),
          find_row(K_PINGPONG, 1, 0), f_p99, NULL);
  }
  return 0;
}
