/*
 * netd_front_test — netd's HTTP/1.1 fronts (netd/front.c) and its metrics
 * (netd/metrics.c), end to end: netd runs as a child process
 * ($NST_BUILDDIR/netd/netd) with a proxy, a gateway to nst-rawserver and a
 * metrics listener; the test talks to it over plain sockets (exact bytes in,
 * exact bytes out) and with curl for the CONNECT tunnel to caddy.
 *
 * A second netd serves a gateway to a tiny upstream inside this test that
 * answers with several Set-Cookie lines (nst-rawserver sends one at most).
 */
#define _GNU_SOURCE 1
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "harness.h"
#include "netd_run.h"

#define IO_TIMEOUT_MS 15000

static nst_server raw, caddy;
static netd_proc nd = {.pid = -1}, nd_cookies = {.pid = -1};
static int cookie_port = -1, cookie_lfd = -1;
static pthread_t cookie_thread;

/* ------------------------------------------------------------ netd as a child */

static int start_netd_once(netd_proc *p, const char *name, const char *upstream, int with_proxy,
                           int with_metrics, const char *config) {
  char proxy[64], gateway[64], gateway_h2[64], metrics[64];
  const char *args[32];
  size_t n = 0;
  snprintf(p->profile, sizeof(p->profile), "%s", nst_path(name));
  snprintf(p->log, sizeof(p->log), "%s.log", p->profile);
  p->proxy = with_proxy ? netd_run_free_port() : 0;
  p->gateway = upstream ? netd_run_free_port() : 0;
  p->gateway_h2 = upstream ? netd_run_free_port() : 0;
  p->metrics = with_metrics ? netd_run_free_port() : 0;
  args[n++] = "--profile";
  args[n++] = p->profile;
  args[n++] = "--cacert";
  args[n++] = nst_cert("ca.pem");
  args[n++] = "-v";
  if (config) {
    args[n++] = "--config";
    args[n++] = config;
  }
  if (p->proxy) {
    snprintf(proxy, sizeof(proxy), "127.0.0.1:%d", p->proxy);
    args[n++] = "--proxy";
    args[n++] = proxy;
  }
  if (upstream) {
    snprintf(gateway, sizeof(gateway), "127.0.0.1:%d", p->gateway);
    args[n++] = "--gateway";
    args[n++] = gateway;
    args[n++] = "--upstream";
    args[n++] = upstream;
    snprintf(gateway_h2, sizeof(gateway_h2), "127.0.0.1:%d", p->gateway_h2);
    args[n++] = "--gateway-h2";
    args[n++] = gateway_h2;
    args[n++] = "--tls-cert";
    args[n++] = nst_cert("good.pem");
    args[n++] = "--tls-key";
    args[n++] = nst_cert("good.key");
  }
  if (p->metrics) {
    snprintf(metrics, sizeof(metrics), "127.0.0.1:%d", p->metrics);
    args[n++] = "--metrics";
    args[n++] = metrics;
  }
  args[n] = NULL;
  return netd_run_start(p, args, 15000);
}

/* The ports are picked free but not held: another test may take one in
 * between, so a failed start is retried with new ones. */
static int start_netd(netd_proc *p, const char *name, const char *upstream, int with_proxy,
                      int with_metrics, const char *config) {
  for (int attempt = 0; attempt < 3; attempt++) {
    if (start_netd_once(p, name, upstream, with_proxy, with_metrics, config) == 0)
      return 0;
    netd_run_stop(p);
  }
  return -1;
}

/* ------------------------------------------------------------ raw HTTP */

typedef struct resp {
  char *raw; /* everything received (NUL-terminated) */
  size_t len;
  int status;
  char *head; /* raw, up to and including the blank line */
  size_t head_len;
  const char *body;
  size_t body_len;
} resp;

static void resp_free(resp *r) {
  free(r->raw);
  memset(r, 0, sizeof(*r));
}

static void resp_parse(resp *r) {
  char *eoh = r->raw ? strstr(r->raw, "\r\n\r\n") : NULL;
  r->status = 0;
  if (r->len > 12 && strncmp(r->raw, "HTTP/1.1 ", 9) == 0)
    r->status = atoi(r->raw + 9);
  if (eoh) {
    r->head = r->raw;
    r->head_len = (size_t)(eoh + 4 - r->raw);
    r->body = eoh + 4;
    r->body_len = r->len - r->head_len;
  }
}

/* One request on a new connection; the whole answer until the server closes. */
static resp exchange(int port, const void *req, size_t req_len) {
  resp r;
  int fd = netd_run_connect(port);
  memset(&r, 0, sizeof(r));
  assert_true(fd >= 0);
  assert_int_equal(netd_run_send(fd, req, req_len), 0);
  netd_run_read(fd, IO_TIMEOUT_MS, &r.raw, &r.len);
  close(fd);
  resp_parse(&r);
  return r;
}

static resp exchange_str(int port, const char *req) {
  return exchange(port, req, strlen(req));
}

/* Value of the first header line "Name: value" in the head (case-insensitive
 * name), copied into a static ring buffer; NULL if absent. */
static const char *header(const resp *r, const char *name) {
  static char bufs[8][1024];
  static int k;
  size_t nl = strlen(name);
  const char *p = r->head;
  if (!p)
    return NULL;
  while ((p = strstr(p, "\r\n")) != NULL && p < r->head + r->head_len) {
    p += 2;
    if (strncasecmp(p, name, nl) == 0 && p[nl] == ':') {
      const char *v = p + nl + 1, *e = strstr(v, "\r\n");
      char *out = bufs[k++ % 8];
      while (*v == ' ')
        v++;
      snprintf(out, sizeof(bufs[0]), "%.*s", (int)(e - v), v);
      return out;
    }
  }
  return NULL;
}

static size_t count_headers(const resp *r, const char *name) {
  size_t n = 0, nl = strlen(name);
  const char *p = r->head;
  while (p && (p = strstr(p, "\r\n")) != NULL && p < r->head + r->head_len) {
    p += 2;
    if (strncasecmp(p, name, nl) == 0 && p[nl] == ':')
      n++;
  }
  return n;
}

/* ------------------------------------------------------------ a second upstream */

#define BIG_LEN (64u << 20)

/* 64 MiB, not cacheable, in 64 KiB writes (blocks while netd does not read). */
static void send_big(int fd) {
  static const char head[] = "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                             "Cache-Control: no-store\r\nContent-Length: 67108864\r\n"
                             "Connection: close\r\n\r\n";
  char *chunk = malloc(65536);
  memset(chunk, 'z', 65536);
  if (netd_run_send(fd, head, sizeof(head) - 1) == 0)
    for (unsigned i = 0; i < BIG_LEN / 65536; i++)
      if (netd_run_send(fd, chunk, 65536) != 0)
        break;
  free(chunk);
}

/* The second upstream: "POST /big" is send_big(), anything else three Set-Cookie
 * lines around another field. One connection at a time. */
static void *cookie_server(void *arg) {
  static const char answer[] = "HTTP/1.1 200 OK\r\n"
                               "Content-Type: text/plain\r\n"
                               "Set-Cookie: a=1; Path=/\r\n"
                               "X-Between: yes\r\n"
                               "Set-Cookie: b=2; Path=/; HttpOnly\r\n"
                               "Set-Cookie: c=3; Path=/x\r\n"
                               "Content-Length: 8\r\n"
                               "Connection: close\r\n"
                               "\r\n"
                               "cookies\n";
  (void)arg;
  for (;;) {
    char buf[8192];
    size_t n = 0;
    int fd = accept(cookie_lfd, NULL, NULL);
    if (fd < 0) {
      if (errno == EINTR)
        continue;
      return NULL; /* closed: the end */
    }
    buf[0] = 0;
    while (n < sizeof(buf) - 1) {
      ssize_t r = recv(fd, buf + n, sizeof(buf) - 1 - n, 0);
      if (r <= 0)
        break;
      n += (size_t)r;
      buf[n] = 0;
      if (strstr(buf, "\r\n\r\n"))
        break;
    }
    if (strncmp(buf, "POST /big ", 10) == 0)
      send_big(fd);
    else
      netd_run_send(fd, answer, sizeof(answer) - 1);
    close(fd);
  }
}

static int start_cookie_server(void) {
  struct sockaddr_in sa;
  socklen_t sl = sizeof(sa);
  cookie_lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  memset(&sa, 0, sizeof(sa));
  sa.sin_family = AF_INET;
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (cookie_lfd < 0 || bind(cookie_lfd, (struct sockaddr *)&sa, sizeof(sa)) != 0 ||
      listen(cookie_lfd, 16) != 0 || getsockname(cookie_lfd, (struct sockaddr *)&sa, &sl) != 0)
    return -1;
  cookie_port = ntohs(sa.sin_port);
  return pthread_create(&cookie_thread, NULL, cookie_server, NULL) == 0 ? 0 : -1;
}

/* ------------------------------------------------------------ gateway */

static void test_gateway_echo(void **state) {
  static const char body[] = "a=1&b=\0binary\r\n\r\nGET / HTTP/1.1\r\n"; /* NUL and CRLFs intact */
  char req[2048];
  int n;
  resp r;
  (void)state;
  n = snprintf(req, sizeof(req),
               "POST /echo?x=1&y=two%%20words HTTP/1.1\r\n"
               "Host: front.example\r\n"
               "X-Dup: first\r\n"
               "X-Other: o\r\n"
               "X-Dup: second\r\n"
               "Content-Type: application/octet-stream\r\n"
               "Content-Length: %zu\r\n"
               "Connection: close\r\n"
               "\r\n",
               sizeof(body) - 1);
  memcpy(req + n, body, sizeof(body) - 1);
  r = exchange(nd.gateway, req, (size_t)n + sizeof(body) - 1);
  assert_int_equal(r.status, 200);
  assert_string_equal(header(&r, "X-Netstash-Source"), "network");
  /* what the upstream saw: method, path and query, Host replaced, the
   * duplicates in order, the body byte for byte */
  assert_non_null(strstr(r.body, "POST /echo?x=1&y=two%20words HTTP/1.1\r\n"));
  {
    char host[64];
    snprintf(host, sizeof(host), "\r\nHost: 127.0.0.1:%d\r\n", raw.port);
    assert_non_null(strstr(r.body, host));
    assert_null(strstr(r.body, "front.example"));
  }
  assert_non_null(strstr(r.body, "\r\nX-Dup: first\r\nX-Other: o\r\nX-Dup: second\r\n"));
  assert_non_null(strstr(r.body, "\r\nContent-Type: application/octet-stream\r\n"));
  assert_null(strstr(r.body, "Connection: close")); /* hop-by-hop: not forwarded */
  assert_true(r.body_len >= sizeof(body) - 1);
  assert_memory_equal(r.body + r.body_len - (sizeof(body) - 1), body, sizeof(body) - 1);
  resp_free(&r);

  /* a chunked request body arrives whole (re-framed by the library) */
  r = exchange_str(nd.gateway, "PUT /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                               "Connection: close\r\n\r\n"
                               "4\r\nwiki\r\n5\r\npedia\r\n0\r\n\r\n");
  assert_int_equal(r.status, 200);
  assert_non_null(strstr(r.body, "PUT /echo HTTP/1.1\r\n"));
  assert_true(r.body_len >= 9);
  assert_memory_equal(r.body + r.body_len - 9, "wikipedia", 9);
  resp_free(&r);
}

static void test_gateway_status_and_redirect(void **state) {
  resp r;
  (void)state;
  r = exchange_str(nd.gateway, "GET /status/404 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
  assert_int_equal(r.status, 404);
  assert_string_equal(header(&r, "Content-Length"), "11");
  assert_int_equal(r.body_len, 11);
  assert_memory_equal(r.body, "status 404\n", 11);
  resp_free(&r);

  /* redirects are relayed, not followed */
  r = exchange_str(nd.gateway, "GET /redirect/1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
  assert_int_equal(r.status, 302);
  assert_string_equal(header(&r, "Location"), "/redirect/0");
  assert_non_null(strstr(r.body, "redirecting to /redirect/0"));
  resp_free(&r);

  /* HEAD: the head only */
  r = exchange_str(nd.gateway, "HEAD /ok HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
  assert_int_equal(r.status, 200);
  assert_string_equal(header(&r, "Content-Length"), "5");
  assert_int_equal(r.body_len, 0);
  resp_free(&r);
}

static void test_gateway_keepalive_pipelined(void **state) {
  static const char reqs[] = "GET /ok HTTP/1.1\r\nHost: x\r\n\r\n"
                             "GET /status/201 HTTP/1.1\r\nHost: x\r\n\r\n"
                             "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
                             "GET /ok HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
  resp r;
  const char *p;
  (void)state;
  r = exchange(nd.gateway, reqs, sizeof(reqs) - 1);
  /* four answers on one connection, in order */
  p = strstr(r.raw, "HTTP/1.1 200 OK\r\n");
  assert_non_null(p);
  p = strstr(p + 1, "HTTP/1.1 201 ");
  assert_non_null(p);
  p = strstr(p + 1, "HTTP/1.1 200 OK\r\n");
  assert_non_null(p);
  assert_non_null(strstr(p, "POST /echo HTTP/1.1\r\n"));
  p = strstr(p + 1, "HTTP/1.1 200 OK\r\n");
  assert_non_null(p);
  assert_non_null(strstr(p, "Connection: close\r\n"));
  assert_int_equal(memcmp(r.raw + r.len - 5, "hello", 5), 0);
  resp_free(&r);
}

static void test_gateway_set_cookies(void **state) {
  resp r;
  const char *p;
  (void)state;
  r = exchange_str(nd_cookies.gateway, "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
  assert_int_equal(r.status, 200);
  assert_int_equal(count_headers(&r, "Set-Cookie"), 3);
  p = strstr(r.head, "set-cookie: a=1; Path=/\r\n");
  assert_non_null(p);
  p = strstr(p, "x-between: yes\r\n");
  assert_non_null(p);
  p = strstr(p, "set-cookie: b=2; Path=/; HttpOnly\r\n");
  assert_non_null(p);
  assert_non_null(strstr(p, "set-cookie: c=3; Path=/x\r\n"));
  assert_int_equal(r.body_len, 8);
  resp_free(&r);
}

/* Resident memory of a process, KiB. */
static long rss_kib(pid_t pid) {
  char path[64], line[256];
  long kib = -1;
  FILE *f;
  snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
  f = fopen(path, "r");
  while (f && fgets(line, sizeof(line), f))
    if (strncmp(line, "VmRSS:", 6) == 0)
      kib = strtol(line + 6, NULL, 10);
  if (f)
    fclose(f);
  return kib;
}

/* Measured: ~2 MiB (the library's 1 MiB pull buffer, the front's 256 KiB
 * backlog); under ASan its quarantine keeps freed buffers around (~19 MiB). */
#ifdef __SANITIZE_ADDRESS__
#define STALL_GROWTH_KIB (40 * 1024)
#else
#define STALL_GROWTH_KIB (16 * 1024)
#endif

/* A client that stops reading stops netd reading the upstream: netd's
 * memory does not grow by the body (64 MiB) while the client waits. */
static void test_gateway_backpressure(void **state) {
  static char buf[1 << 16];
  long before, during;
  size_t got = 0;
  int fd;
  (void)state;
  before = rss_kib(nd_cookies.pid);
  fd = netd_run_connect(nd_cookies.gateway);
  assert_true(fd >= 0);
  {
    /* POST: the library's HTTP cache buffers GET bodies (up to 32 MiB) until
     * it knows whether to store them; this test is about the front's own
     * buffering */
    static const char req[] = "POST /big HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n"
                              "Connection: close\r\n\r\n";
    assert_int_equal(netd_run_send(fd, req, sizeof(req) - 1), 0);
  }
  while (got < (1u << 20)) {
    ssize_t r = recv(fd, buf, sizeof(buf), 0);
    assert_true(r > 0);
    got += (size_t)r;
  }
  sleep(2); /* the client stalls; everything that can fill up fills up */
  during = rss_kib(nd_cookies.pid);
  if (getenv("NST_VERBOSE") || during - before > STALL_GROWTH_KIB)
    fprintf(stderr, "netd grew from %ld to %ld KiB while its client stalled\n", before, during);
  assert_true(during - before <= STALL_GROWTH_KIB);
  for (;;) {
    ssize_t r = recv(fd, buf, sizeof(buf), 0);
    if (r <= 0)
      break;
    got += (size_t)r;
  }
  close(fd);
  /* head + 64 MiB */
  assert_true(got > BIG_LEN);
  assert_true(got < BIG_LEN + 1024);
}

#define NCONC 64

static void test_gateway_64_concurrent(void **state) {
  int fds[NCONC], i;
  (void)state;
  /* all connections open at once, then all requests, then all answers */
  for (i = 0; i < NCONC; i++) {
    fds[i] = netd_run_connect(nd.gateway);
    assert_true(fds[i] >= 0);
  }
  for (i = 0; i < NCONC; i++) {
    char req[256];
    int n = snprintf(req, sizeof(req),
                     "GET /echo?i=%d HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", i);
    assert_int_equal(netd_run_send(fds[i], req, (size_t)n), 0);
  }
  for (i = 0; i < NCONC; i++) {
    char want[64];
    resp r;
    memset(&r, 0, sizeof(r));
    netd_run_read(fds[i], IO_TIMEOUT_MS, &r.raw, &r.len);
    close(fds[i]);
    resp_parse(&r);
    assert_int_equal(r.status, 200);
    snprintf(want, sizeof(want), "GET /echo?i=%d HTTP/1.1\r\n", i);
    assert_non_null(strstr(r.body, want));
    resp_free(&r);
  }
}

static void test_gateway_limits(void **state) {
  char *req;
  size_t n;
  resp r;
  (void)state;
  /* a header section over 64 KiB: 431 */
  req = malloc(80 * 1024);
  n = (size_t)sprintf(req, "GET /ok HTTP/1.1\r\nHost: x\r\nX-Big: ");
  memset(req + n, 'a', 70 * 1024);
  n += 70 * 1024;
  memcpy(req + n, "\r\n\r\n", 4);
  n += 4;
  r = exchange(nd.gateway, req, n);
  assert_int_equal(r.status, 431);
  resp_free(&r);
  free(req);
  /* a declared body over 64 MiB: 413 before any of it is read */
  r = exchange_str(nd.gateway,
                   "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 67108865\r\n\r\n");
  assert_int_equal(r.status, 413);
  resp_free(&r);
  /* garbage: 400 */
  r = exchange_str(nd.gateway, "NOT HTTP AT ALL\r\n\r\n");
  assert_int_equal(r.status, 400);
  resp_free(&r);
  /* a body with no framing (no Content-Length, not chunked) is no body
   * (RFC 9112 §6.3): a DELETE's stray "abc" is read as the next request on
   * the connection, refused with a 400 that closes it — after the DELETE
   * itself was answered (node's http client sent such DELETEs in the
   * http-cache-tests harness) */
  r = exchange_str(nd.gateway, "DELETE /ok HTTP/1.1\r\nHost: x\r\n\r\nabc");
  assert_true(r.status != 400);
  assert_non_null(r.raw);
  {
    const char *second = strstr(r.raw + 12, "HTTP/1.1 400 "); /* after the first status line */
    assert_non_null(second);
    assert_non_null(strstr(second, "invalid HTTP method"));
    assert_non_null(strstr(second, "Connection: close"));
  }
  resp_free(&r);
  /* the gateway takes origin-form targets only */
  r = exchange_str(nd.gateway, "GET http://elsewhere.test/ HTTP/1.1\r\nHost: x\r\n"
                               "Connection: close\r\n\r\n");
  assert_int_equal(r.status, 400);
  resp_free(&r);
}

static void test_gateway_cache(void **state) {
  resp r1, r2;
  static const char req[] = "GET /cache/max-age/600/gw HTTP/1.1\r\nHost: x\r\n"
                            "Connection: close\r\n\r\n";
  (void)state;
  r1 = exchange_str(nd.gateway, req);
  assert_int_equal(r1.status, 200);
  assert_string_equal(header(&r1, "X-Netstash-Source"), "network");
  r2 = exchange_str(nd.gateway, req);
  assert_int_equal(r2.status, 200);
  assert_string_equal(header(&r2, "X-Netstash-Source"), "cache");
  /* the same body: the upstream's counter did not move */
  assert_int_equal(r1.body_len, r2.body_len);
  assert_memory_equal(r1.body, r2.body, r1.body_len);
  resp_free(&r1);
  resp_free(&r2);
  /* only-if-cached with nothing stored: 504 (RFC 9111 §5.2.1.7; was 502),
   * the error named; with the answer stored: the stored answer */
  r1 = exchange_str(nd.gateway, "GET /cache/max-age/600/gw-oic HTTP/1.1\r\nHost: x\r\n"
                                "Cache-Control: only-if-cached\r\nConnection: close\r\n\r\n");
  assert_int_equal(r1.status, 504);
  assert_string_equal(header(&r1, "X-Netstash-Error"), "NETSTASH_E_NOT_CACHED");
  resp_free(&r1);
  r1 = exchange_str(nd.gateway, "GET /cache/max-age/600/gw HTTP/1.1\r\nHost: x\r\n"
                                "Cache-Control: only-if-cached\r\nConnection: close\r\n\r\n");
  assert_int_equal(r1.status, 200);
  assert_string_equal(header(&r1, "X-Netstash-Source"), "cache");
  resp_free(&r1);
}

/* A connection whose receive window is small (SO_RCVBUF before connect), so
 * that a large answer cannot sit in the sockets' buffers whole. */
static int connect_small_window(int port) {
  struct sockaddr_in sa;
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), rb = 32 << 10;
  assert_true(fd >= 0);
  assert_int_equal(setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rb, sizeof(rb)), 0);
  memset(&sa, 0, sizeof(sa));
  sa.sin_family = AF_INET;
  sa.sin_port = htons((uint16_t)port);
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  assert_int_equal(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
  return fd;
}

/* Reads everything until the server closes, slowly at first (64 KiB, then
 * 2 ms, for the first 2 MiB): netd's socket fills, so the front queues what
 * it could not write and relays the rest when the socket drains. */
static void read_slowly(int fd, char **out, size_t *len) {
  size_t cap = 1 << 20, n = 0;
  char *b = malloc(cap);
  assert_non_null(b);
  for (;;) {
    ssize_t r;
    if (cap - n < 65536) {
      cap *= 2;
      b = realloc(b, cap);
      assert_non_null(b);
    }
    r = recv(fd, b + n, 65536, 0);
    assert_true(r >= 0);
    if (r == 0)
      break;
    n += (size_t)r;
    if (n < (2u << 20))
      usleep(2000);
  }
  *out = b;
  *len = n;
}

/* One answer at p: its head (NUL-terminated in place of the blank line's
 * CR) and body, de-chunked into body if chunked. Returns the bytes used. */
static size_t take_answer(char *p, size_t len, char **head, unsigned char *body, size_t cap,
                          size_t *body_len) {
  char *eoh = memmem(p, len, "\r\n\r\n", 4), *te, *cl;
  size_t used, bl = 0;
  assert_non_null(eoh);
  *eoh = 0;
  *head = p;
  used = (size_t)(eoh + 4 - p);
  te = strcasestr(p, "\r\ntransfer-encoding: chunked");
  cl = strcasestr(p, "\r\ncontent-length:");
  if (te) {
    for (;;) {
      char *end;
      unsigned long k = strtoul(p + used, &end, 16);
      assert_true(end > p + used && end[0] == '\r' && end[1] == '\n');
      used = (size_t)(end + 2 - p);
      if (k == 0) {
        assert_true(used + 2 <= len && memcmp(p + used, "\r\n", 2) == 0);
        used += 2;
        break;
      }
      assert_true(used + k + 2 <= len && bl + k <= cap);
      memcpy(body + bl, p + used, k);
      bl += k;
      used += k;
      assert_memory_equal(p + used, "\r\n", 2);
      used += 2;
    }
  } else {
    assert_non_null(cl);
    bl = strtoul(cl + 17, NULL, 10);
    assert_true(used + bl <= len && bl <= cap);
    memcpy(body, p + used, bl);
    used += bl;
  }
  *body_len = bl;
  return used;
}

/* A 4 MiB body through the gateway to a client that reads slowly through a
 * small window, from the
 * network and then from the cache (a stored body comes whole: what the
 * socket does not take is written from the job's buffer as it drains),
 * framed by Content-Length and chunked, followed on the same connection by
 * a pipelined request whose answer must come after every byte of it. */
static void test_gateway_slow_reader(void **state) {
  static const char *variants[2] = {"/cache/big/4194304", "/cache/big/4194304/chunked"};
  const size_t big = 4u << 20;
  unsigned char *want = malloc(big), *got = malloc(big);
  (void)state;
  assert_non_null(want);
  assert_non_null(got);
  nst_pattern(want, 0, big);
  for (int v = 0; v < 2; v++) {
    for (int round = 0; round < 2; round++) {
      char req[512], *all, *head, *small_head;
      unsigned char small[64];
      size_t len, used, bl, sl;
      int fd, n = snprintf(req, sizeof(req),
                           "GET %s HTTP/1.1\r\nHost: x\r\n\r\n"
                           "GET /ok HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                           variants[v]);
      fd = connect_small_window(nd.gateway);
      assert_int_equal(netd_run_send(fd, req, (size_t)n), 0);
      read_slowly(fd, &all, &len);
      close(fd);
      used = take_answer(all, len, &head, got, big, &bl);
      assert_true(strncmp(head, "HTTP/1.1 200 ", 13) == 0);
      assert_non_null(
          strstr(head, round ? "X-Netstash-Source: cache" : "X-Netstash-Source: network"));
      assert_int_equal(bl, big);
      assert_memory_equal(got, want, big);
      /* then the pipelined answer, whole */
      used += take_answer(all + used, len - used, &small_head, small, sizeof(small), &sl);
      assert_true(strncmp(small_head, "HTTP/1.1 200 ", 13) == 0);
      assert_int_equal(sl, 5);
      assert_memory_equal(small, "hello", 5);
      assert_int_equal(used, len);
      free(all);
    }
  }
  free(want);
  free(got);
}

/* ------------------------------------------------------------ HTTP/2 gateway */

static char *curl_h2(const char *args, int *st) {
  char cmd[4096];
  snprintf(cmd, sizeof(cmd), "curl -sS --max-time 20 --cacert %s %s 2>&1", nst_cert("ca.pem"),
           args);
  return netd_run_capture(cmd, st);
}

/* The gateway over TLS 1.3 and HTTP/2 (for browsers, which speak h2 only
 * over TLS): the HTTP/1.1 gateway's semantics on one multiplexed
 * connection. */
static void test_gateway_h2(void **state) {
  char args[2048], want[256];
  char *out;
  int st;
  (void)state;
  /* HTTP/2, TLS 1.3, the upstream's answer with netd's source field */
  snprintf(args, sizeof(args),
           "-i https://127.0.0.1:%d/ok -w '|%%{http_version} %%{ssl_verify_result}'",
           nd.gateway_h2);
  out = curl_h2(args, &st);
  assert_int_equal(st, 0);
  assert_non_null(strstr(out, "HTTP/2 200"));
  assert_non_null(strstr(out, "x-netstash-source: network"));
  assert_non_null(strstr(out, "\r\n\r\nhello|2 0"));
  free(out);

  /* method, path, query, duplicates and body upstream; x-netstash-* from a
   * client neither applied nor forwarded; Host is the upstream's */
  snprintf(args, sizeof(args),
           "-X POST --data-binary 'a=1&b=2' -H 'X-Dup: first' -H 'X-Dup: second' "
           "-H 'x-netstash-jar: other' -H 'x-netstash-load-flags: 8' "
           "'https://127.0.0.1:%d/echo?x=1&y=two%%20words'",
           nd.gateway_h2);
  out = curl_h2(args, &st);
  assert_int_equal(st, 0);
  assert_non_null(strstr(out, "POST /echo?x=1&y=two%20words HTTP/1.1\r\n"));
  snprintf(want, sizeof(want), "\r\nHost: 127.0.0.1:%d\r\n", raw.port);
  assert_non_null(strstr(out, want));
  assert_non_null(strstr(out, "\r\nx-dup: first\r\nx-dup: second\r\n"));
  assert_null(strstr(out, "x-netstash"));
  assert_int_equal(memcmp(out + strlen(out) - 7, "a=1&b=2", 7), 0);
  free(out);

  /* statuses and redirects relayed, not followed */
  snprintf(args, sizeof(args),
           "https://127.0.0.1:%d/status/404 -o /dev/null https://127.0.0.1:%d/redirect/1 "
           "-o /dev/null -w '%%{http_code} %%{redirect_url}\n'",
           nd.gateway_h2, nd.gateway_h2);
  out = curl_h2(args, &st);
  assert_int_equal(st, 0);
  snprintf(want, sizeof(want), "404 \n302 https://127.0.0.1:%d/redirect/0\n", nd.gateway_h2);
  assert_string_equal(out, want);
  free(out);

  /* the HTTP cache behind it, as for every front */
  snprintf(args, sizeof(args),
           "-o /dev/null -D - https://127.0.0.1:%d/cache/max-age/600/gwh2 "
           "-o /dev/null -D - https://127.0.0.1:%d/cache/max-age/600/gwh2",
           nd.gateway_h2, nd.gateway_h2);
  out = curl_h2(args, &st);
  assert_int_equal(st, 0);
  assert_non_null(strstr(out, "x-netstash-source: network"));
  assert_non_null(strstr(out, "x-netstash-source: cache"));
  free(out);

  /* 40 requests at once on one connection */
  {
    size_t n = 0;
    n += (size_t)snprintf(args + n, sizeof(args) - n,
                          "--parallel --parallel-max 40 -w '%%{http_code} %%{num_connects}\n'");
    for (int i = 0; i < 40; i++)
      n += (size_t)snprintf(args + n, sizeof(args) - n, " https://127.0.0.1:%d/ok -o /dev/null",
                            nd.gateway_h2);
    out = curl_h2(args, &st);
    assert_int_equal(st, 0);
    {
      int ok = 0, conns = 0;
      for (char *l = out; l && *l; l = strchr(l, '\n') ? strchr(l, '\n') + 1 : NULL) {
        int code = 0, nc = 0;
        if (sscanf(l, "%d %d", &code, &nc) == 2) {
          ok += code == 200;
          conns += nc;
        }
      }
      if (ok != 40 || conns != 1)
        fprintf(stderr, "curl --parallel through the HTTP/2 gateway:\n%s", out);
      assert_int_equal(ok, 40);
      assert_int_equal(conns, 1);
    }
    free(out);
  }

  /* h2 only: a client that offers only http/1.1 fails the handshake, and
   * plain HTTP on the TLS port gets nothing */
  snprintf(args, sizeof(args), "--http1.1 https://127.0.0.1:%d/ok", nd.gateway_h2);
  out = curl_h2(args, &st);
  assert_int_not_equal(st, 0);
  free(out);
  snprintf(args, sizeof(args), "http://127.0.0.1:%d/ok", nd.gateway_h2);
  out = curl_h2(args, &st);
  assert_int_not_equal(st, 0);
  free(out);
  /* TLS and ALPN h2 right, then bytes that are not HTTP/2: GOAWAY and close */
  {
    char cmd[1024];
    snprintf(cmd, sizeof(cmd),
             "printf 'GET / HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n' | timeout 10 openssl s_client "
             "-quiet -alpn h2 -CAfile %s -connect 127.0.0.1:%d 2>/dev/null | od -An -tx1 | "
             "tr -d '\\n' | head -c 300",
             nst_cert("ca.pem"), nd.gateway_h2);
    out = netd_run_capture(cmd, &st);
    /* the server's SETTINGS first, later a GOAWAY (length 8, type 7, stream
     * 0; last stream 0) with PROTOCOL_ERROR (1) */
    if (strncmp(out, " 00 00 0c 04 00", 15) != 0 ||
        !strstr(out, " 00 00 08 07 00 00 00 00 00 00 00 00 00 00 00 00 01"))
      fprintf(stderr, "garbage after the h2 handshake, netd answered:%s\n", out);
    assert_int_equal(strncmp(out, " 00 00 0c 04 00", 15), 0);
    assert_non_null(strstr(out, " 00 00 08 07 00 00 00 00 00 00 00 00 00 00 00 00 01"));
    free(out);
  }
  /* a connection that never starts its TLS handshake is closed after 10 s
   * (a TCP port is open to every local user: half-open connections must not
   * pile up) */
  {
    int fd = netd_run_connect(nd.gateway_h2);
    char *got = NULL;
    size_t len = 0;
    time_t t0 = time(NULL);
    assert_true(fd >= 0);
    assert_int_equal(netd_run_read(fd, 20000, &got, &len), 0); /* EOF, not the 20 s limit */
    close(fd);
    free(got);
    assert_int_equal(len, 0);
    assert_true(time(NULL) - t0 >= 9);
  }
  /* netd is fine after all four */
  snprintf(args, sizeof(args), "https://127.0.0.1:%d/ok", nd.gateway_h2);
  out = curl_h2(args, &st);
  assert_int_equal(st, 0);
  assert_string_equal(out, "hello");
  free(out);
}

/* ------------------------------------------------------------ proxy */

static void test_proxy_get_and_cache(void **state) {
  char req[512];
  resp r1, r2;
  (void)state;
  snprintf(req, sizeof(req),
           "GET http://127.0.0.1:%d/cache/max-age/600/proxy HTTP/1.1\r\n"
           "Host: 127.0.0.1:%d\r\nProxy-Connection: keep-alive\r\nConnection: close\r\n\r\n",
           raw.port, raw.port);
  r1 = exchange_str(nd.proxy, req);
  assert_int_equal(r1.status, 200);
  assert_string_equal(header(&r1, "X-Netstash-Source"), "network");
  assert_string_equal(header(&r1, "Cache-Control"), "max-age=600");
  r2 = exchange_str(nd.proxy, req);
  assert_int_equal(r2.status, 200);
  assert_string_equal(header(&r2, "X-Netstash-Source"), "cache");
  assert_int_equal(r1.body_len, r2.body_len);
  assert_memory_equal(r1.body, r2.body, r1.body_len);
  resp_free(&r1);
  resp_free(&r2);

  /* what the origin sees through the proxy: origin-form, no Proxy-* */
  snprintf(req, sizeof(req),
           "GET http://127.0.0.1:%d/echo?q=1 HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n"
           "Proxy-Authorization: Basic Zm9vOmJhcg==\r\nSec-Fetch-Dest: document\r\n"
           "Connection: close\r\n\r\n",
           raw.port, raw.port);
  r1 = exchange_str(nd.proxy, req);
  assert_int_equal(r1.status, 200);
  assert_non_null(strstr(r1.body, "GET /echo?q=1 HTTP/1.1\r\n"));
  assert_null(strstr(r1.body, "Proxy-"));
  assert_non_null(strstr(r1.body, "Sec-Fetch-Dest: document\r\n"));
  resp_free(&r1);
}

static void test_proxy_refusals(void **state) {
  char req[512];
  resp r;
  (void)state;
  /* https URLs come through CONNECT */
  r = exchange_str(nd.proxy, "GET https://127.0.0.1/ HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                             "Connection: close\r\n\r\n");
  assert_int_equal(r.status, 400);
  assert_non_null(strstr(r.body, "CONNECT"));
  resp_free(&r);
  /* origin-form at a proxy */
  r = exchange_str(nd.proxy, "GET /ok HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
  assert_int_equal(r.status, 400);
  resp_free(&r);
  /* a library error is a 502 that names it */
  snprintf(req, sizeof(req),
           "GET http://127.0.0.1:%d/ HTTP/1.1\r\nHost: x\r\n"
           "Connection: close\r\n\r\n",
           nst_closed_port());
  r = exchange_str(nd.proxy, req);
  assert_int_equal(r.status, 502);
  assert_string_equal(header(&r, "X-Netstash-Error"), "NETSTASH_E_CONNECT_REFUSED");
  assert_non_null(strstr(r.body, "NETSTASH_E_CONNECT_REFUSED"));
  resp_free(&r);
  /* CONNECT to a closed port */
  snprintf(req, sizeof(req), "CONNECT 127.0.0.1:%d HTTP/1.1\r\nHost: x\r\n\r\n", nst_closed_port());
  r = exchange_str(nd.proxy, req);
  assert_int_equal(r.status, 502);
  assert_string_equal(header(&r, "X-Netstash-Error"), "NETSTASH_E_CONNECT_REFUSED");
  resp_free(&r);
}

static void test_proxy_connect_tunnel(void **state) {
  char cmd[2048];
  char *out;
  int st;
  (void)state;
  /* two requests over one tunnel (curl reuses the proxied connection) */
  snprintf(cmd, sizeof(cmd),
           "curl -sS --max-time 20 --proxy http://127.0.0.1:%d --cacert %s "
           "https://127.0.0.1:%d/hello.txt -o /dev/null https://127.0.0.1:%d/r/7.bin -o /dev/null "
           "-w '%%{http_code} %%{size_download}\\n' 2>&1",
           nd.proxy, nst_cert("ca.pem"), caddy.port, caddy.port);
  out = netd_run_capture(cmd, &st);
  if (st != 0 || strcmp(out, "200 16\n200 20000\n") != 0)
    fprintf(stderr, "curl through the tunnel: status %d, output:\n%s", st, out);
  assert_int_equal(st, 0);
  assert_string_equal(out, "200 16\n200 20000\n");
  free(out);

  snprintf(cmd, sizeof(cmd),
           "curl -sS --max-time 20 --proxy http://127.0.0.1:%d --cacert %s "
           "https://127.0.0.1:%d/hello.txt 2>&1",
           nd.proxy, nst_cert("ca.pem"), caddy.port);
  out = netd_run_capture(cmd, &st);
  assert_int_equal(st, 0);
  assert_string_equal(out, "hello, netstash\n");
  free(out);

  /* a 4 MiB body, both ways intact */
  snprintf(cmd, sizeof(cmd),
           "curl -sS --max-time 30 --proxy http://127.0.0.1:%d --cacert %s "
           "https://127.0.0.1:%d/big.bin | cmp - %s/big.bin && echo same",
           nd.proxy, nst_cert("ca.pem"), caddy.port, nst_site());
  out = netd_run_capture(cmd, &st);
  assert_int_equal(st, 0);
  assert_string_equal(out, "same\n");
  free(out);
}

static void test_remote_bind_refused(void **state) {
  char addr[64];
  const char *args[8];
  netd_proc p;
  int st;
  (void)state;
  memset(&p, 0, sizeof(p));
  snprintf(p.profile, sizeof(p.profile), "%s", nst_path("netd-remote"));
  snprintf(p.log, sizeof(p.log), "%s.log", p.profile);
  snprintf(addr, sizeof(addr), "0.0.0.0:%d", netd_run_free_port());
  args[0] = "--profile";
  args[1] = p.profile;
  args[2] = "--proxy";
  args[3] = addr;
  args[4] = NULL;
  netd_run_spawn(&p, args);
  assert_true(p.pid > 0);
  assert_int_equal(waitpid(p.pid, &st, 0), p.pid);
  assert_true(WIFEXITED(st));
  assert_int_not_equal(WEXITSTATUS(st), 0);
  {
    FILE *f = fopen(p.log, "r");
    char text[4096];
    size_t n = f ? fread(text, 1, sizeof(text) - 1, f) : 0;
    text[n] = 0;
    if (f)
      fclose(f);
    if (!strstr(text, "loopback"))
      fprintf(stderr, "netd said: %s\n", text);
    assert_non_null(strstr(text, "loopback"));
  }
}

/* ------------------------------------------------------------ metrics */

/* The value of a sample line "NAME VALUE" in a scrape (NAME with labels). */
static double sample(const char *text, const char *name) {
  double v = netd_run_sample(text, name);
  if (v < 0)
    fail_msg("metric %s missing", name);
  return v;
}

static resp scrape_of(const netd_proc *p) {
  return exchange_str(p->metrics, "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
}

static resp scrape(void) {
  return scrape_of(&nd);
}

static void test_metrics(void **state) {
  static const char *const families[] = {"# TYPE netd_requests_total counter",
                                         "# TYPE netd_response_bytes_total counter",
                                         "# TYPE netd_hit_ratio gauge",
                                         "# TYPE netd_ipc_connections_total counter",
                                         "# TYPE netd_ipc_connections_open gauge",
                                         "# TYPE netd_front_connections_total counter",
                                         "# TYPE netd_warm_runs_total counter",
                                         "# TYPE netd_request_head_seconds histogram",
                                         "# TYPE netstash_fetches_started_total counter",
                                         "# TYPE netstash_connections_opened_total counter",
                                         "# HELP netd_requests_total "};
  resp m1, m2, r;
  double net1, bytes1, conns1, count1, cache1;
  (void)state;
  m1 = scrape();
  assert_int_equal(m1.status, 200);
  assert_string_equal(header(&m1, "Content-Type"), "text/plain; version=0.0.4; charset=utf-8");
  for (size_t i = 0; i < sizeof(families) / sizeof(families[0]); i++)
    if (!strstr(m1.body, families[i]))
      fail_msg("scrape lacks \"%s\":\n%s", families[i], m1.body);
  assert_non_null(strstr(m1.body, "netd_request_head_seconds_bucket{le=\"+Inf\"} "));
  assert_non_null(strstr(m1.body, "netd_warm_runs_total{result=\"deferred\"} "));
  net1 = sample(m1.body, "netd_requests_total{source=\"network\"}");
  cache1 = sample(m1.body, "netd_requests_total{source=\"cache\"}");
  bytes1 = sample(m1.body, "netd_response_bytes_total");
  conns1 = sample(m1.body, "netd_front_connections_total");
  count1 = sample(m1.body, "netd_request_head_seconds_count");

  /* one network answer (5 body bytes), one cache answer */
  r = exchange_str(nd.gateway, "GET /status/200 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
  assert_int_equal(r.status, 200);
  resp_free(&r);
  r = exchange_str(nd.gateway,
                   "GET /cache/max-age/600/m HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
  resp_free(&r);
  r = exchange_str(nd.gateway,
                   "GET /cache/max-age/600/m HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
  assert_string_equal(header(&r, "X-Netstash-Source"), "cache");
  resp_free(&r);

  m2 = scrape();
  assert_int_equal(m2.status, 200);
  assert_true(sample(m2.body, "netd_requests_total{source=\"network\"}") >= net1 + 2);
  assert_true(sample(m2.body, "netd_requests_total{source=\"cache\"}") >= cache1 + 1);
  assert_true(sample(m2.body, "netd_response_bytes_total") >= bytes1 + 11);
  assert_true(sample(m2.body, "netd_front_connections_total") >= conns1 + 4);
  assert_true(sample(m2.body, "netd_request_head_seconds_count") >= count1 + 3);
  assert_true(sample(m2.body, "netd_hit_ratio") > 0.0);
  assert_true(sample(m2.body, "netstash_fetches_started_total") >= 1);
  resp_free(&m1);
  resp_free(&m2);

  r = exchange_str(nd.metrics, "GET /other HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
  assert_int_equal(r.status, 404);
  resp_free(&r);
}

/* ------------------------------------------------------------ fast hits */

/* One sample of p's metrics. */
static double metric_of(const netd_proc *p, const char *name) {
  resp m = scrape_of(p);
  double v = sample(m.body, name);
  resp_free(&m);
  return v;
}

static double fast_hits(void) {
  return metric_of(&nd, "netd_gateway_fast_hits_total");
}

/* Waits until no front job answered in full is still ending (a miss's
 * response committed to the HTTP cache): the fast path reads the store. */
static void jobs_settled(void) {
  for (int i = 0; i < 500; i++) {
    resp m = scrape();
    double v = sample(m.body, "netd_front_jobs_finishing");
    resp_free(&m);
    if (v == 0)
      return;
    usleep(10000);
  }
  fail_msg("front jobs still finishing after 5 s");
}

/* Waits until p's gateway's fast path answers path (the entry committed). */
static void stored_settled_on(const netd_proc *p, const char *path) {
  char req[512];
  snprintf(req, sizeof(req), "GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", path);
  for (int i = 0; i < 500; i++) {
    double f = metric_of(p, "netd_gateway_fast_hits_total");
    resp r = exchange_str(p->gateway, req);
    resp_free(&r);
    if (metric_of(p, "netd_gateway_fast_hits_total") > f)
      return;
    usleep(10000);
  }
  fail_msg("%s not answered by the fast path after 5 s", path);
}

static void stored_settled(const char *path) {
  stored_settled_on(&nd, path);
}

/* Reads one answer with a Content-Length from a keep-alive connection into
 * buf (NUL-terminated); its length. */
static size_t read_answer(int fd, char *buf, size_t cap) {
  size_t n = 0;
  for (;;) {
    char *eoh = memmem(buf, n, "\r\n\r\n", 4), *cl;
    ssize_t r;
    if (eoh && (cl = strcasestr(buf, "\r\ncontent-length:")) && cl < eoh &&
        n >= (size_t)(eoh + 4 - buf) + strtoul(cl + 17, NULL, 10))
      return n;
    assert_true(n + 1 < cap);
    r = recv(fd, buf + n, cap - 1 - n, 0);
    assert_true(r > 0);
    n += (size_t)r;
    buf[n] = 0;
  }
}

static double ms_since(const struct timespec *t0) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)(t.tv_sec - t0->tv_sec) * 1e3 + (double)(t.tv_nsec - t0->tv_nsec) / 1e6;
}

/* A miss's answer is over for its connection once its last byte is out:
 * the next request on it is answered while the response is still being
 * committed to the HTTP cache (here: held up by the store's write lock,
 * taken by this test), and the entry is stored once the lock is free. */
static void test_gateway_next_request_during_commit(void **state) {
  static const char miss[] = "GET /cache/max-age/600/parked HTTP/1.1\r\nHost: x\r\n\r\n";
  static const char next[] = "GET /cache/no-store HTTP/1.1\r\nHost: x\r\n\r\n";
  char lock[700], buf[8192];
  struct timespec t0;
  resp m, r;
  int lfd, fd;
  (void)state;
  snprintf(lock, sizeof(lock), "%s/store/write.lock", nd.profile);
  lfd = open(lock, O_RDWR | O_CLOEXEC);
  assert_true(lfd >= 0);
  assert_int_equal(flock(lfd, LOCK_EX), 0);
  clock_gettime(CLOCK_MONOTONIC, &t0);
  fd = netd_run_connect(nd.gateway);
  assert_true(fd >= 0);
  assert_int_equal(netd_run_send(fd, miss, sizeof(miss) - 1), 0);
  read_answer(fd, buf, sizeof(buf));
  assert_true(strncmp(buf, "HTTP/1.1 200 ", 13) == 0);
  assert_non_null(strstr(buf, "X-Netstash-Source: network"));
  assert_int_equal(netd_run_send(fd, next, sizeof(next) - 1), 0);
  read_answer(fd, buf, sizeof(buf));
  assert_true(strncmp(buf, "HTTP/1.1 200 ", 13) == 0);
  assert_non_null(strstr(buf, "\r\n\r\nno-store n="));
  /* the store was never free meanwhile: the miss's job is still ending */
  m = scrape();
  assert_int_equal((int)sample(m.body, "netd_front_jobs_finishing"), 1);
  resp_free(&m);
  assert_true(ms_since(&t0) < 500); /* the writer waits up to 1 s for the lock */
  assert_int_equal(flock(lfd, LOCK_UN), 0);
  close(lfd);
  jobs_settled();
  close(fd);
  r = exchange_str(nd.gateway, "GET /cache/max-age/600/parked HTTP/1.1\r\nHost: x\r\n"
                               "Connection: close\r\n\r\n");
  assert_string_equal(header(&r, "X-Netstash-Source"), "cache");
  resp_free(&r);
}

/* Two heads alike: the same status line and field lines in the same order
 * (names without case), Age and the cache reason aside (they move with the
 * clock). */
static void assert_heads_alike(const resp *a, const resp *b) {
  const char *p = a->head, *q = b->head;
  const char *pe = a->head + a->head_len, *qe = b->head + b->head_len;
  for (;;) {
    const char *pl, *ql, *colon;
    size_t nl;
    while (p < pe &&
           (!strncasecmp(p, "Age:", 4) || !strncasecmp(p, "X-Netstash-Cache-Reason:", 24)))
      p = strstr(p, "\r\n") + 2;
    while (q < qe &&
           (!strncasecmp(q, "Age:", 4) || !strncasecmp(q, "X-Netstash-Cache-Reason:", 24)))
      q = strstr(q, "\r\n") + 2;
    if (p >= pe || q >= qe)
      break;
    pl = strstr(p, "\r\n");
    ql = strstr(q, "\r\n");
    colon = memchr(p, ':', (size_t)(pl - p));
    nl = colon ? (size_t)(colon - p) : 0; /* names compare without case (a job's are lowercase) */
    if (pl - p != ql - q || strncasecmp(p, q, nl) != 0 ||
        strncmp(p + nl, q + nl, (size_t)(pl - p) - nl) != 0)
      fail_msg("heads differ at \"%.*s\" / \"%.*s\"", (int)(pl - p), p, (int)(ql - q), q);
    p = pl + 2;
    q = ql + 2;
  }
  assert_true(p >= pe && q >= qe);
}

/* The gateway answers fresh stored responses on its own thread, without a
 * job (netd_gateway_fast_hits_total): the same head and body as a job's
 * answer from the same entry (the proxy front's, which has no fast path),
 * pipelined, per Vary variant, a body larger than the socket takes at once;
 * and what it leaves to a job still answers as before (HEAD, Range,
 * No-Vary-Search, a body kept in the coding it came in). */
static void test_gateway_fast_hits(void **state) {
  static const char get[] = "GET /cache/max-age/600/fast HTTP/1.1\r\nHost: x\r\n"
                            "Connection: close\r\n\r\n";
  static const char twice[] = "GET /cache/max-age/600/fast HTTP/1.1\r\nHost: x\r\n\r\n"
                              "GET /cache/max-age/600/fast HTTP/1.1\r\nHost: x\r\n\r\n"
                              "GET /cache/max-age/600/fast HTTP/1.1\r\nHost: x\r\n\r\n"
                              "GET /ok HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
  const size_t big = 768u << 10;
  char req[512], *all, *head, body[256];
  unsigned char *want = malloc(big), *got = malloc(big);
  resp g1, g2, p, r, v1, v2, v3;
  size_t used, bl;
  double f0 = fast_hits();
  int fd;
  (void)state;
  assert_non_null(want);
  assert_non_null(got);

  /* stored by a job, then answered without one */
  g1 = exchange_str(nd.gateway, get);
  assert_int_equal(g1.status, 200);
  assert_string_equal(header(&g1, "X-Netstash-Source"), "network");
  jobs_settled();
  g2 = exchange_str(nd.gateway, get);
  assert_int_equal(g2.status, 200);
  assert_string_equal(header(&g2, "X-Netstash-Source"), "cache");
  assert_non_null(header(&g2, "Age"));
  assert_true(strncmp(header(&g2, "X-Netstash-Cache-Reason"), "fresh", 5) == 0);
  assert_int_equal(g2.body_len, g1.body_len);
  assert_memory_equal(g2.body, g1.body, g1.body_len);
  assert_true(fast_hits() == f0 + 1);

  /* the same entry through a job: the same answer */
  snprintf(req, sizeof(req),
           "GET http://127.0.0.1:%d/cache/max-age/600/fast HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n"
           "Connection: close\r\n\r\n",
           raw.port, raw.port);
  p = exchange_str(nd.proxy, req);
  assert_string_equal(header(&p, "X-Netstash-Source"), "cache");
  assert_heads_alike(&g2, &p);
  assert_int_equal(p.body_len, g2.body_len);
  assert_memory_equal(p.body, g2.body, g2.body_len);
  assert_true(fast_hits() == f0 + 1);

  /* pipelined on one connection, then a network answer */
  r = exchange_str(nd.gateway, twice);
  used = 0;
  for (int i = 0; i < 4; i++) {
    used +=
        take_answer(r.raw + used, r.len - used, &head, (unsigned char *)body, sizeof(body), &bl);
    assert_true(strncmp(head, "HTTP/1.1 200 ", 13) == 0);
    if (i < 3) {
      assert_non_null(strstr(head, "X-Netstash-Source: cache"));
      assert_int_equal(bl, g1.body_len);
      assert_memory_equal(body, g1.body, bl);
    } else {
      assert_int_equal(bl, 5);
      assert_memory_equal(body, "hello", 5);
    }
  }
  assert_int_equal(used, r.len);
  resp_free(&r);
  assert_true(fast_hits() == f0 + 4);

  /* an HTTP/1.0 client: the same answer, then the connection ends (the
   * exchange reads until netd closes) */
  r = exchange_str(nd.gateway, "GET /cache/max-age/600/fast HTTP/1.0\r\n\r\n");
  assert_int_equal(r.status, 200);
  assert_string_equal(header(&r, "X-Netstash-Source"), "cache");
  assert_string_equal(header(&r, "Connection"), "close");
  assert_int_equal(r.body_len, g1.body_len);
  assert_memory_equal(r.body, g1.body, g1.body_len);
  resp_free(&r);
  assert_true(fast_hits() == f0 + 5);

  /* Vary: each variant its own entry */
  v1 = exchange_str(nd.gateway, "GET /cache/vary HTTP/1.1\r\nHost: x\r\nAccept-Language: fr\r\n"
                                "Connection: close\r\n\r\n");
  jobs_settled();
  v2 = exchange_str(nd.gateway, "GET /cache/vary HTTP/1.1\r\nHost: x\r\nAccept-Language: fr\r\n"
                                "Connection: close\r\n\r\n");
  v3 = exchange_str(nd.gateway, "GET /cache/vary HTTP/1.1\r\nHost: x\r\nAccept-Language: de\r\n"
                                "Connection: close\r\n\r\n");
  assert_string_equal(header(&v2, "X-Netstash-Source"), "cache");
  assert_int_equal(v2.body_len, v1.body_len);
  assert_memory_equal(v2.body, v1.body, v1.body_len);
  assert_string_equal(header(&v3, "X-Netstash-Source"), "network");
  assert_non_null(strstr(v3.body, "lang=de"));
  resp_free(&v1);
  resp_free(&v2);
  resp_free(&v3);
  assert_true(fast_hits() == f0 + 6);

  /* larger than a small receive window takes at once: the rest queued */
  nst_pattern(want, 0, big);
  for (int round = 0; round < 2; round++) {
    int n = snprintf(req, sizeof(req),
                     "GET /cache/big/%zu HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", big);
    fd = connect_small_window(nd.gateway);
    assert_int_equal(netd_run_send(fd, req, (size_t)n), 0);
    read_slowly(fd, &all, &bl);
    close(fd);
    used = take_answer(all, bl, &head, got, big, &bl);
    assert_non_null(
        strstr(head, round ? "X-Netstash-Source: cache" : "X-Netstash-Source: network"));
    assert_int_equal(bl, big);
    assert_memory_equal(got, want, big);
    free(all);
    jobs_settled();
  }
  assert_true(fast_hits() == f0 + 7);

  /* left to a job, answered from the cache as before */
  r = exchange_str(nd.gateway, "HEAD /cache/max-age/600/fast HTTP/1.1\r\nHost: x\r\n"
                               "Connection: close\r\n\r\n");
  assert_string_equal(header(&r, "X-Netstash-Source"), "cache");
  assert_int_equal(r.body_len, 0);
  resp_free(&r);
  r = exchange_str(nd.gateway, "GET /cache/max-age/600/fast HTTP/1.1\r\nHost: x\r\n"
                               "Range: bytes=0-2\r\nConnection: close\r\n\r\n");
  assert_int_equal(r.status, 206);
  assert_string_equal(header(&r, "X-Netstash-Source"), "cache");
  assert_int_equal(r.body_len, 3);
  assert_memory_equal(r.body, g1.body, 3);
  resp_free(&r);
  /* a piece (a 206) is stored and answers the ranges within it; a request
   * for the whole asks the origin for the rest and is answered whole */
  {
    static const char *const asks[] = {"Range: bytes=0-99\r\n", "Range: bytes=10-19\r\n", "", ""};
    static const char *const from[] = {"network", "cache", "network", "cache"};
    unsigned char text[1000];
    nst_text(text, 0, sizeof(text));
    for (size_t i = 0; i < 4; i++) {
      char rq[256];
      snprintf(rq, sizeof(rq),
               "GET /cache/ranged/1000 HTTP/1.1\r\nHost: x\r\n%sConnection: close\r\n\r\n",
               asks[i]);
      r = exchange_str(nd.gateway, rq);
      assert_string_equal(header(&r, "X-Netstash-Source"), from[i]);
      assert_int_equal(r.status, i < 2 ? 206 : 200);
      assert_int_equal(r.body_len, i == 0 ? 100 : i == 1 ? 10 : 1000);
      assert_memory_equal(r.body, text + (i == 1 ? 10 : 0), r.body_len);
      if (i == 1)
        assert_string_equal(header(&r, "Content-Range"), "bytes 10-19/1000");
      if (i >= 2)
        assert_null(header(&r, "Content-Range"));
      resp_free(&r);
      jobs_settled();
    }
  }
  r = exchange_str(nd.gateway, "GET /cache/nvs?utm=1 HTTP/1.1\r\nHost: x\r\n"
                               "Connection: close\r\n\r\n");
  resp_free(&r);
  r = exchange_str(nd.gateway, "GET /cache/nvs?utm=2 HTTP/1.1\r\nHost: x\r\n"
                               "Connection: close\r\n\r\n");
  assert_string_equal(header(&r, "X-Netstash-Source"), "cache");
  resp_free(&r);
  for (int round = 0; round < 2; round++) {
    r = exchange_str(nd.gateway, "GET /cache/gzip HTTP/1.1\r\nHost: x\r\n"
                                 "Accept-Encoding: gzip\r\nConnection: close\r\n\r\n");
    assert_string_equal(header(&r, "X-Netstash-Source"), round ? "cache" : "network");
    assert_string_equal(header(&r, "Content-Encoding"), "gzip");
    assert_int_equal(r.body_len, 42);
    assert_int_equal((unsigned char)r.body[0], 0x1f);
    resp_free(&r);
  }
  assert_true(fast_hits() == f0 + 8); /* and the completed piece's second answer */

  resp_free(&g1);
  resp_free(&g2);
  resp_free(&p);
  free(want);
  free(got);
}

/* A head's field lines as "name: value\n", names lower-cased, without the
 * status line, Age, the cache reason (they move with the clock) and the
 * HTTP/1.1 connection fields. */
static void fields_of(const char *head, size_t len, char *out, size_t cap) {
  const char *p = strstr(head, "\r\n"), *e = head + len;
  size_t o = 0;
  out[0] = 0;
  for (p = p ? p + 2 : e; p < e;) {
    const char *l = strstr(p, "\r\n"), *colon;
    if (!l || l == p)
      break;
    colon = memchr(p, ':', (size_t)(l - p));
    if (colon && strncasecmp(p, "age:", 4) && strncasecmp(p, "x-netstash-cache-reason:", 24) &&
        strncasecmp(p, "connection:", 11) && strncasecmp(p, "keep-alive:", 11)) {
      for (const char *c = p; c < l && o + 2 < cap; c++)
        out[o++] = c < colon && *c >= 'A' && *c <= 'Z' ? (char)(*c + 32) : *c;
      out[o++] = '\n';
      out[o] = 0;
    }
    p = l + 2;
  }
}

static double ipc_fast_hits(void) {
  resp m = scrape();
  double v = sample(m.body, "netd_ipc_fast_hits_total");
  resp_free(&m);
  return v;
}

/* The HTTP/2 gateway answers stored hits without a job too (ipc.c
 * answer_stored, netd_ipc_fast_hits_total): the same fields and body as the
 * HTTP/1.1 gateway's answer from the same entry (itself a job's, see
 * test_gateway_fast_hits); a range and a body kept gzip-encoded are still a
 * job's. */
static void test_gateway_h2_fast_hits(void **state) {
  char args[2048], path[1024], f1[4096], f2[4096], *out, *h2;
  double f0 = ipc_fast_hits();
  size_t blen = 0;
  unsigned char *b2;
  resp g;
  int st;
  FILE *fp;
  (void)state;
  snprintf(path, sizeof(path), "%s/h2fast.body", nst_workdir());
  snprintf(args, sizeof(args), "-o /dev/null -D - https://127.0.0.1:%d/cache/max-age/600/h2fast",
           nd.gateway_h2);
  out = curl_h2(args, &st);
  assert_int_equal(st, 0);
  assert_non_null(strstr(out, "x-netstash-source: network"));
  free(out);
  /* END_STREAM comes with the last byte, before the entry is committed:
   * asked at once, the URL is answered by a job that waits for the commit */
  stored_settled("/cache/max-age/600/h2fast");
  f0 = ipc_fast_hits();
  snprintf(args, sizeof(args), "-o %s -D - https://127.0.0.1:%d/cache/max-age/600/h2fast", path,
           nd.gateway_h2);
  out = curl_h2(args, &st);
  assert_int_equal(st, 0);
  h2 = strstr(out, "HTTP/2 200");
  assert_non_null(h2);
  assert_non_null(strstr(h2, "x-netstash-source: cache\r\n"));
  assert_true(ipc_fast_hits() == f0 + 1);
  g = exchange_str(nd.gateway, "GET /cache/max-age/600/h2fast HTTP/1.1\r\nHost: x\r\n"
                               "Connection: close\r\n\r\n");
  assert_string_equal(header(&g, "X-Netstash-Source"), "cache");
  fields_of(h2, strlen(h2), f2, sizeof(f2));
  fields_of(g.head, g.head_len, f1, sizeof(f1));
  assert_string_equal(f2, f1);
  fp = fopen(path, "rb");
  assert_non_null(fp);
  b2 = malloc(g.body_len + 1);
  blen = fread(b2, 1, g.body_len + 1, fp);
  fclose(fp);
  assert_int_equal(blen, g.body_len);
  assert_memory_equal(b2, g.body, g.body_len);
  free(b2);
  resp_free(&g);
  free(out);

  /* a job's: a range, a body stored gzip-encoded as received */
  snprintf(args, sizeof(args),
           "-r 0-2 -o /dev/null -w '%%{http_code}\n' https://127.0.0.1:%d/cache/max-age/600/h2fast",
           nd.gateway_h2);
  out = curl_h2(args, &st);
  assert_int_equal(st, 0);
  assert_string_equal(out, "206\n");
  free(out);
  for (int round = 0; round < 2; round++) {
    snprintf(args, sizeof(args),
             "-H 'Accept-Encoding: gzip' -D - -o /dev/null https://127.0.0.1:%d/cache/gzip",
             nd.gateway_h2);
    out = curl_h2(args, &st);
    assert_int_equal(st, 0);
    if (round) /* (the first may be stored already, by test_gateway_fast_hits) */
      assert_non_null(strstr(out, "x-netstash-source: cache"));
    assert_non_null(strstr(out, "content-encoding: gzip"));
    free(out);
  }
  assert_true(ipc_fast_hits() == f0 + 1);
}

/* ------------------------------------------------------------ setup */

/* Through the gateway, a resource whose identity and gzip variants share one
 * stored body (Vary: Accept-Encoding, the same content; cache_test has the
 * library's side): a browser asking with "Accept-Encoding: gzip" after a
 * client that asked without gets from the cache either the gzip bytes
 * labelled gzip or the content with no coding named — never the identity
 * bytes labelled gzip. */
static void test_gateway_variants_share_a_body(void **state) {
  static const char plain[] = "netstash negotiated body\nnetstash negotiated body\n"
                              "netstash negotiated body\nnetstash negotiated body\n";
  static const char *const ae[3] = {"", "Accept-Encoding: gzip\r\n", "Accept-Encoding: gzip\r\n"};
  (void)state;
  for (int i = 0; i < 3; i++) {
    char req[256];
    resp r;
    snprintf(req, sizeof(req),
             "GET /cache/negotiated HTTP/1.1\r\nHost: x\r\n%sConnection: close\r\n\r\n", ae[i]);
    if (i > 0)
      jobs_settled(); /* the identity variant committed first: its body is kept */
    r = exchange_str(nd.gateway, req);
    assert_int_equal(r.status, 200);
    assert_string_equal(header(&r, "X-Netstash-Source"), i == 2 ? "cache" : "network");
    if (i == 1) {
      assert_string_equal(header(&r, "Content-Encoding"), "gzip");
    } else {
      if (header(&r, "Content-Encoding"))
        fail_msg("answer %d names a coding (%zu body bytes, %02x):\n%.*s", i, r.body_len,
                 (unsigned)(unsigned char)r.body[0], (int)r.head_len, r.head);
      assert_int_equal(r.body_len, sizeof(plain) - 1);
      assert_memory_equal(r.body, plain, sizeof(plain) - 1);
      assert_int_equal(atoi(header(&r, "Content-Length")), (int)(sizeof(plain) - 1));
    }
    resp_free(&r);
  }
}

/* ------------------------------------------------------------ hot bodies */

/* Requests path n times on one keep-alive connection to p's gateway, one
 * after the other, and checks each answer: 200 from the cache, the body
 * size bytes of nst_pattern (of nst_text for a /cache/text/ path). */
static void hot_rounds(const netd_proc *p, const char *path, size_t size, int n) {
  char req[512], *buf = malloc(size + 4096);
  unsigned char *want = malloc(size);
  int fd = netd_run_connect(p->gateway), len;
  assert_non_null(buf);
  assert_non_null(want);
  assert_true(fd >= 0);
  if (strncmp(path, "/cache/text/", 12) == 0)
    nst_text(want, 0, size);
  else
    nst_pattern(want, 0, size);
  len = snprintf(req, sizeof(req), "GET %s HTTP/1.1\r\nHost: x\r\n\r\n", path);
  for (int i = 0; i < n; i++) {
    size_t got;
    char *eoh;
    assert_int_equal(netd_run_send(fd, req, (size_t)len), 0);
    got = read_answer(fd, buf, size + 4096);
    eoh = strstr(buf, "\r\n\r\n");
    assert_non_null(eoh);
    assert_true(strncmp(buf, "HTTP/1.1 200 ", 13) == 0);
    assert_non_null(strcasestr(buf, "\r\nX-Netstash-Source: cache\r\n"));
    assert_int_equal(got - (size_t)(eoh + 4 - buf), size);
    assert_memory_equal(eoh + 4, want, size);
  }
  close(fd);
  free(buf);
  free(want);
}

/* Bodies of 16 to 96 KiB the gateway answers from the store again and
 * again go out with sendfile from a sealed copy (netd/hotbody.c): copied
 * on the second fast hit, sent so from then on — the same bytes as ever,
 * one after another on a connection, pipelined, and to a client reading
 * slowly through a small window (what the socket does not take is queued
 * from the store's bytes). A body out of the range never is. */
static void test_gateway_hot_bodies(void **state) {
  static const char path[] = "/cache/big/40000", small[] = "/cache/big/8000";
  const size_t size = 40000;
  unsigned char *want = malloc(size), *got = malloc(size);
  char *all, *head;
  double sf0, hot0, sf;
  size_t len, used = 0, bl;
  int fd, n;
  resp r;
  (void)state;
  assert_non_null(want);
  assert_non_null(got);
  nst_pattern(want, 0, size);
  r = exchange_str(nd.gateway, "GET /cache/big/40000 HTTP/1.1\r\nHost: x\r\n"
                               "Connection: close\r\n\r\n");
  assert_int_equal(r.status, 200);
  resp_free(&r);
  stored_settled(path); /* a fast hit: the body seen once */
  sf0 = metric_of(&nd, "netd_gateway_sendfile_answers_total");
  hot0 = metric_of(&nd, "netd_hot_bodies");
  hot_rounds(&nd, path, size, 3); /* the second sighting copies it */
  assert_true(metric_of(&nd, "netd_gateway_sendfile_answers_total") == sf0 + 3);
  assert_true(metric_of(&nd, "netd_hot_bodies") == hot0 + 1);
  assert_true(metric_of(&nd, "netd_hot_body_bytes") >= (double)size);

  /* pipelined; then 200 of them to a client reading slowly through a small
   * window, so that the socket fills: a sendfile sends part of a body and
   * the rest is queued, later answers are written after it */
  for (int slow = 0; slow < 2; slow++) {
    int k = slow ? 200 : 3;
    char *req = malloc((size_t)k * 64 + 128);
    assert_non_null(req);
    n = 0;
    for (int i = 0; i < k; i++)
      n += sprintf(req + n, "GET %s HTTP/1.1\r\nHost: x\r\n\r\n", path);
    n += sprintf(req + n, "GET /ok HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    sf = metric_of(&nd, "netd_gateway_sendfile_answers_total");
    fd = slow ? connect_small_window(nd.gateway) : netd_run_connect(nd.gateway);
    assert_true(fd >= 0);
    assert_int_equal(netd_run_send(fd, req, (size_t)n), 0);
    free(req);
    if (slow) {
      read_slowly(fd, &all, &len);
    } else {
      assert_int_equal(netd_run_read(fd, IO_TIMEOUT_MS, &all, &len), 0);
    }
    close(fd);
    used = 0;
    for (int i = 0; i < k; i++) {
      used += take_answer(all + used, len - used, &head, got, size, &bl);
      assert_true(strncmp(head, "HTTP/1.1 200 ", 13) == 0);
      assert_non_null(strstr(head, "X-Netstash-Source: cache"));
      assert_int_equal(bl, size);
      assert_memory_equal(got, want, size);
    }
    used += take_answer(all + used, len - used, &head, got, size, &bl);
    assert_int_equal(bl, 5);
    assert_memory_equal(got, "hello", 5);
    assert_int_equal(used, len);
    free(all);
    /* the first of them at least went out with sendfile (the others may
     * find an earlier one's rest still queued: then they are written) */
    assert_true(metric_of(&nd, "netd_gateway_sendfile_answers_total") >= sf + 1);
  }

  /* a client that asks for 100 of them and leaves after 10 KiB: netd closes
   * that connection (a send or sendfile fails) and goes on */
  {
    char *req = malloc(100 * 64), buf[10240];
    size_t taken = 0;
    n = 0;
    assert_non_null(req);
    for (int i = 0; i < 100; i++)
      n += sprintf(req + n, "GET %s HTTP/1.1\r\nHost: x\r\n\r\n", path);
    fd = connect_small_window(nd.gateway);
    assert_int_equal(netd_run_send(fd, req, (size_t)n), 0);
    free(req);
    while (taken < sizeof(buf)) {
      ssize_t k = recv(fd, buf + taken, sizeof(buf) - taken, 0);
      assert_true(k > 0);
      taken += (size_t)k;
    }
    close(fd);
    hot_rounds(&nd, path, size, 2);
  }

  /* a text body that came uncompressed is stored as it came (the library's
   * default): its hits go out so too, not decoded each time */
  r = exchange_str(nd.gateway, "GET /cache/text/40000 HTTP/1.1\r\nHost: x\r\n"
                               "Connection: close\r\n\r\n");
  assert_int_equal(r.status, 200);
  resp_free(&r);
  stored_settled("/cache/text/40000");
  sf = metric_of(&nd, "netd_gateway_sendfile_answers_total");
  hot_rounds(&nd, "/cache/text/40000", size, 3);
  assert_true(metric_of(&nd, "netd_gateway_sendfile_answers_total") == sf + 3);

  /* 8000 bytes: below the range, written as before */
  r = exchange_str(nd.gateway, "GET /cache/big/8000 HTTP/1.1\r\nHost: x\r\n"
                               "Connection: close\r\n\r\n");
  resp_free(&r);
  stored_settled(small);
  sf = metric_of(&nd, "netd_gateway_sendfile_answers_total");
  hot_rounds(&nd, small, 8000, 3);
  assert_true(metric_of(&nd, "netd_gateway_sendfile_answers_total") == sf);
  free(want);
  free(got);
}

/* With room for one copy (hot_body_bytes 65536), a second hot body evicts
 * the first; the evicted one is answered from the store as before, and
 * kept again once it is hot again. A netd with "hot_body_bytes": 0 keeps
 * none. */
static void test_gateway_hot_body_room(void **state) {
  netd_proc p = {.pid = -1};
  char upstream[128], cfg[512];
  int n;
  static const char *const paths[2] = {"/cache/big/40000", "/cache/big/40001"};
  const size_t sizes[2] = {40000, 40001};
  FILE *f;
  (void)state;
  snprintf(upstream, sizeof(upstream), "http://127.0.0.1:%d", raw.port);
  for (int off = 0; off < 2; off++) {
    double sf;
    snprintf(cfg, sizeof(cfg), "%s", nst_path(off ? "hot-off.json" : "hot-room.json"));
    assert_non_null(f = fopen(cfg, "w"));
    fprintf(f, "{\"hot_body_bytes\": %d}\n", off ? 0 : 65536);
    fclose(f);
    {
      /* netd inherits a soft descriptor limit of 512 */
      struct rlimit was, low;
      assert_int_equal(getrlimit(RLIMIT_NOFILE, &was), 0);
      low = was;
      low.rlim_cur = was.rlim_max > 512 ? 512 : was.rlim_max;
      assert_int_equal(setrlimit(RLIMIT_NOFILE, &low), 0);
      n = start_netd(&p, off ? "netd-hot-off" : "netd-hot-room", upstream, 0, 1, cfg);
      assert_int_equal(setrlimit(RLIMIT_NOFILE, &was), 0);
      assert_int_equal(n, 0);
    }
    if (!off) { /* raised to the hard limit at start (hot bodies hold some) */
      char lp[64], line[256];
      unsigned long long soft = 0, hard = 1;
      FILE *lf;
      snprintf(lp, sizeof(lp), "/proc/%d/limits", (int)p.pid);
      assert_non_null(lf = fopen(lp, "r"));
      while (fgets(line, sizeof(line), lf))
        if (strncmp(line, "Max open files", 14) == 0)
          assert_int_equal(sscanf(line + 14, "%llu %llu", &soft, &hard), 2);
      fclose(lf);
      assert_true(soft == hard);
    }
    for (int i = 0; i < 2; i++) {
      char req[256];
      resp r;
      snprintf(req, sizeof(req), "GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
               paths[i]);
      r = exchange_str(p.gateway, req);
      assert_int_equal(r.status, 200);
      resp_free(&r);
      stored_settled_on(&p, paths[i]); /* seen once */
    }
    sf = metric_of(&p, "netd_gateway_sendfile_answers_total");
    hot_rounds(&p, paths[0], sizes[0], 2); /* kept */
    if (off) {
      assert_true(metric_of(&p, "netd_gateway_sendfile_answers_total") == sf);
      assert_true(metric_of(&p, "netd_hot_bodies") == 0);
      assert_int_equal(netd_run_stop(&p), 0);
      continue;
    }
    assert_true(metric_of(&p, "netd_gateway_sendfile_answers_total") == sf + 2);
    assert_true(metric_of(&p, "netd_hot_body_bytes") == 40000);
    hot_rounds(&p, paths[1], sizes[1], 2); /* kept; the first evicted */
    assert_true(metric_of(&p, "netd_gateway_sendfile_answers_total") == sf + 4);
    assert_true(metric_of(&p, "netd_hot_bodies") == 1);
    assert_true(metric_of(&p, "netd_hot_body_bytes") == 40001);
    /* the first again: seen anew (written), then kept again (sendfile) */
    hot_rounds(&p, paths[0], sizes[0], 3);
    assert_true(metric_of(&p, "netd_gateway_sendfile_answers_total") == sf + 6);
    assert_true(metric_of(&p, "netd_hot_body_bytes") == 40000);
    assert_int_equal(netd_run_stop(&p), 0);
  }
}

static int setup(void **state) {
  char upstream[128];
  (void)state;
  signal(SIGPIPE, SIG_IGN);
  if (netd_run_setup("netd_front") != 0)
    return -1;
  if (!nst_certs() || !nst_site() || nst_rawserver_start(&raw) != 0 ||
      nst_caddy_start("h2", &caddy) != 0 || start_cookie_server() != 0)
    return -1;
  snprintf(upstream, sizeof(upstream), "http://127.0.0.1:%d", raw.port);
  if (start_netd(&nd, "netd-main", upstream, 1, 1, NULL) != 0)
    return -1;
  snprintf(upstream, sizeof(upstream), "http://127.0.0.1:%d/", cookie_port);
  if (start_netd(&nd_cookies, "netd-cookies", upstream, 0, 0, NULL) != 0)
    return -1;
  return 0;
}

static int teardown(void **state) {
  int a, b;
  (void)state;
  /* a graceful stop closes fronts and connections, and exits 0 */
  a = netd_run_stop(&nd);
  b = netd_run_stop(&nd_cookies);
  if (cookie_lfd >= 0) {
    shutdown(cookie_lfd, SHUT_RDWR);
    close(cookie_lfd);
    pthread_join(cookie_thread, NULL);
  }
  nst_stop(&caddy);
  nst_stop(&raw);
  if (a != 0 || b != 0) {
    fprintf(stderr, "netd_front_test: netd exited with %d / %d on SIGTERM\n", a, b);
    return -1;
  }
  return 0;
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_gateway_echo),
      cmocka_unit_test(test_gateway_status_and_redirect),
      cmocka_unit_test(test_gateway_keepalive_pipelined),
      cmocka_unit_test(test_gateway_set_cookies),
      cmocka_unit_test(test_gateway_64_concurrent),
      cmocka_unit_test(test_gateway_backpressure),
      cmocka_unit_test(test_gateway_limits),
      cmocka_unit_test(test_gateway_cache),
      cmocka_unit_test(test_gateway_slow_reader),
      cmocka_unit_test(test_gateway_h2),
      cmocka_unit_test(test_proxy_get_and_cache),
      cmocka_unit_test(test_proxy_refusals),
      cmocka_unit_test(test_proxy_connect_tunnel),
      cmocka_unit_test(test_remote_bind_refused),
      cmocka_unit_test(test_metrics),
      cmocka_unit_test(test_gateway_fast_hits),
      cmocka_unit_test(test_gateway_next_request_during_commit),
      cmocka_unit_test(test_gateway_h2_fast_hits),
      cmocka_unit_test(test_gateway_variants_share_a_body),
      cmocka_unit_test(test_gateway_hot_bodies),
      cmocka_unit_test(test_gateway_hot_body_room),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
