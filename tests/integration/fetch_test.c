/*
 * fetch_test — the fetch engine against real servers on loopback (caddy,
 * nghttpd, openssl s_server, dnsmasq, nst-rawserver), through the public API
 * only, as an embedder would use it.
 */
#define _GNU_SOURCE 1
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <netstash/netstash.h>

#include "harness.h"
#include "site_cmp.h"

static nst_server caddy_h2, caddy_h1, caddy_tls12, raw, dnsmasq;

static uint64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static char *url_of(int port, const char *host, const char *path) {
  static char bufs[8][512];
  static int i;
  char *b = bufs[i++ % 8];
  snprintf(b, sizeof(bufs[0]), "https://%s:%d%s", host, port, path);
  return b;
}

static char *http_url(int port, const char *path) {
  static char bufs[8][512];
  static int i;
  char *b = bufs[i++ % 8];
  snprintf(b, sizeof(bufs[0]), "http://127.0.0.1:%d%s", port, path);
  return b;
}

static netstash_ctx *new_ctx_opts(netstash_options *o) {
  netstash_ctx *ctx = NULL;
  char detail[256];
  assert_int_equal(netstash_ctx_new(&ctx, o, detail, sizeof(detail)), NETSTASH_OK);
  return ctx;
}

static netstash_ctx *new_ctx(void) {
  netstash_options *o;
  netstash_ctx *ctx;
  assert_int_equal(netstash_options_new(&o), NETSTASH_OK);
  assert_int_equal(netstash_options_set_ca_file(o, nst_cert("ca.pem")), NETSTASH_OK);
  ctx = new_ctx_opts(o);
  netstash_options_del(o);
  return ctx;
}

/* Fetch url synchronously with the body collected; returns the fetch. */
static netstash_fetch *get(netstash_ctx *ctx, const char *url, netstash_error expect) {
  netstash_request *req;
  netstash_fetch *f = NULL;
  netstash_error rv;
  assert_int_equal(netstash_request_new(&req, url), NETSTASH_OK);
  assert_int_equal(netstash_request_set_collect_body(req, 1 << 30), NETSTASH_OK);
  rv = netstash_fetch_sync(ctx, req, &f);
  if (rv != expect)
    fprintf(stderr, "%s: got %s (%s), expected %s\n", url, netstash_error_name(rv),
            netstash_fetch_error_detail(f), netstash_error_name(expect));
  assert_int_equal(rv, expect);
  netstash_request_del(req);
  return f;
}

/* ------------------------------------------------------------------ cases */

static void test_get_h2_basic(void **state) {
  netstash_ctx *ctx = new_ctx();
  netstash_fetch *f = get(ctx, url_of(caddy_h2.port, "127.0.0.1", "/hello.txt"), NETSTASH_OK);
  const uint8_t *body;
  size_t len;
  (void)state;
  assert_int_equal(netstash_fetch_status(f), 200);
  assert_string_equal(netstash_fetch_protocol_name(f), "h2");
  assert_string_equal(netstash_fetch_tls_version(f), "TLSv1.3");
  assert_true(strlen(netstash_fetch_tls_cipher(f)) > 0);
  assert_int_equal(netstash_fetch_body(f, &body, &len), NETSTASH_OK);
  assert_int_equal(len, strlen("hello, netstash\n"));
  assert_memory_equal(body, "hello, netstash\n", len);
  assert_int_equal(netstash_fetch_source(f), NETSTASH_SOURCE_NETWORK);
  assert_int_equal(netstash_fetch_new_connections(f), 1);
  assert_true(netstash_fetch_timing_us(f, NETSTASH_TIMING_TLS) > 0);
  assert_true(netstash_fetch_timing_us(f, NETSTASH_TIMING_TTFB) >=
              netstash_fetch_timing_us(f, NETSTASH_TIMING_TLS));
  assert_true(netstash_fetch_timing_us(f, NETSTASH_TIMING_TOTAL) >=
              netstash_fetch_timing_us(f, NETSTASH_TIMING_TTFB));
  assert_non_null(netstash_fetch_header(f, "Content-Type"));
  netstash_fetch_del(f);
  netstash_ctx_del(ctx);
}

typedef struct multi_state {
  atomic_int done;
  atomic_int ok;
  atomic_int h2;
  atomic_int completes;
} multi_state;

static void multi_complete(netstash_fetch *f, netstash_error err, void *ud) {
  multi_state *ms = ud;
  const uint8_t *b;
  size_t len;
  atomic_fetch_add(&ms->completes, 1);
  if (err == NETSTASH_OK && netstash_fetch_status(f) == 200 &&
      netstash_fetch_body(f, &b, &len) == NETSTASH_OK && len == 20000)
    atomic_fetch_add(&ms->ok, 1);
  if (!strcmp(netstash_fetch_protocol_name(f), "h2"))
    atomic_fetch_add(&ms->h2, 1);
  atomic_fetch_add(&ms->done, 1);
}

/* n concurrent requests multiplexed over HTTP/2: at most max_conns TCP
 * connections and TLS handshakes. */
static void run_multiplex(int port, int n, uint64_t max_conns) {
  netstash_ctx *ctx = new_ctx();
  netstash_fetch **fs = calloc((size_t)n, sizeof(*fs));
  multi_state ms;
  netstash_fetch_callbacks cbs = {NULL, NULL, multi_complete};
  int i;
  memset(&ms, 0, sizeof(ms));
  for (i = 0; i < n; i++) {
    netstash_request *req;
    char path[64];
    snprintf(path, sizeof(path), "/r/%d.bin", i % 200);
    assert_int_equal(netstash_request_new(&req, url_of(port, "127.0.0.1", path)), NETSTASH_OK);
    netstash_request_set_collect_body(req, 1 << 20);
    assert_int_equal(netstash_fetch_start(ctx, req, &cbs, &ms, &fs[i]), NETSTASH_OK);
    netstash_request_del(req);
  }
  for (i = 0; i < n; i++)
    assert_int_equal(netstash_fetch_wait(fs[i], 30000), NETSTASH_OK);
  assert_int_equal(atomic_load(&ms.completes), n);
  assert_int_equal(atomic_load(&ms.ok), n);
  assert_int_equal(atomic_load(&ms.h2), n);
  if (netstash_ctx_stat(ctx, NETSTASH_STAT_TLS_HANDSHAKES) > max_conns ||
      netstash_ctx_stat(ctx, NETSTASH_STAT_CONNECTIONS_OPENED) > max_conns)
    fail_msg("%llu handshakes, %llu connections; at most %llu expected",
             (unsigned long long)netstash_ctx_stat(ctx, NETSTASH_STAT_TLS_HANDSHAKES),
             (unsigned long long)netstash_ctx_stat(ctx, NETSTASH_STAT_CONNECTIONS_OPENED),
             (unsigned long long)max_conns);
  assert_int_equal(netstash_ctx_stat(ctx, NETSTASH_STAT_TLS_HANDSHAKES),
                   netstash_ctx_stat(ctx, NETSTASH_STAT_CONNECTIONS_OPENED));
  for (i = 0; i < n; i++)
    netstash_fetch_del(fs[i]);
  free(fs);
  netstash_ctx_del(ctx);
}

static void test_h2_multiplex_100(void **state) {
  (void)state;
  /* 100 concurrent requests, one connection, one TLS handshake */
  run_multiplex(caddy_h2.port, 100, 1);
}

/* nghttpd with tight HTTP/2 flow control (16 KiB stream windows, 64 KiB
 * connection window: every 20 KB body needs WINDOW_UPDATEs) and no HPACK
 * dynamic table: 60 concurrent requests still complete over one connection. */
static void test_h2_nghttpd_flow_control(void **state) {
  nst_server ng;
  (void)state;
  assert_int_equal(nst_nghttpd_start("--window-bits=14 --connection-window-bits=16 "
                                     "--header-table-size=0", &ng), 0);
  for (int run = 0; run < 5; run++)
    run_multiplex(ng.port, 60, 1);
  nst_stop(&ng);
}

/* nghttpd allowing 8 concurrent streams per connection, 60 concurrent 20 KB
 * fetches, 15 times: every fetch ends, whole, within 10 s. Before the
 * transport's quiet-socket kicks (transport.c, "Kicks"), libcurl 7.88 left
 * the last DATA frame of 1-4 streams unprocessed in its connection buffer
 * in about one run in five against this server (-v: its logging slows it
 * and made the race likelier): this test failed 9 times in 10 then. */
static void test_h2_nghttpd_stream_limit(void **state) {
  nst_server ng;
  (void)state;
  assert_int_equal(nst_nghttpd_start("--max-concurrent-streams=8 -v", &ng), 0);
  for (int run = 0; run < 15; run++) {
    netstash_ctx *ctx = new_ctx();
    netstash_fetch *fs[60];
    multi_state ms;
    netstash_fetch_callbacks cbs = {NULL, NULL, multi_complete};
    uint64_t t0 = now_ms();
    memset(&ms, 0, sizeof(ms));
    for (int i = 0; i < 60; i++) {
      netstash_request *req;
      char path[64];
      snprintf(path, sizeof(path), "/r/%d.bin", i);
      assert_int_equal(netstash_request_new(&req, url_of(ng.port, "127.0.0.1", path)),
                       NETSTASH_OK);
      netstash_request_set_collect_body(req, 1 << 20);
      assert_int_equal(netstash_fetch_start(ctx, req, &cbs, &ms, &fs[i]), NETSTASH_OK);
      netstash_request_del(req);
    }
    for (int i = 0; i < 60; i++) {
      uint64_t spent = now_ms() - t0;
      netstash_error e = netstash_fetch_wait(fs[i], spent < 10000 ? (uint32_t)(10000 - spent) : 1);
      if (e != NETSTASH_OK)
        fail_msg("run %d: fetch %d (/r/%d.bin): %s after %llu ms, status %d", run, i, i,
                 netstash_error_name(e), (unsigned long long)(now_ms() - t0),
                 netstash_fetch_status(fs[i]));
    }
    assert_int_equal(atomic_load(&ms.ok), 60);
    assert_int_equal(atomic_load(&ms.h2), 60);
    for (int i = 0; i < 60; i++)
      netstash_fetch_del(fs[i]);
    netstash_ctx_del(ctx);
  }
  nst_stop(&ng);
}

static void test_h1_fallback(void **state) {
  netstash_ctx *ctx = new_ctx();
  netstash_fetch *f = get(ctx, url_of(caddy_h1.port, "127.0.0.1", "/hello.txt"), NETSTASH_OK);
  (void)state;
  assert_int_equal(netstash_fetch_status(f), 200);
  assert_string_equal(netstash_fetch_protocol_name(f), "http/1.1");
  assert_int_equal(netstash_fetch_protocol(f), NETSTASH_HTTP_1_1);
  assert_string_equal(netstash_fetch_tls_version(f), "TLSv1.3");
  netstash_fetch_del(f);
  netstash_ctx_del(ctx);
}

static void test_tls12_refused_by_default(void **state) {
  netstash_ctx *ctx = new_ctx();
  netstash_options *o;
  netstash_fetch *f = get(ctx, url_of(caddy_tls12.port, "127.0.0.1", "/hello.txt"),
                          NETSTASH_E_TLS_VERSION);
  (void)state;
  assert_int_equal(netstash_fetch_status(f), 0);
  netstash_fetch_del(f);
  netstash_ctx_del(ctx);
  /* allowed when the context lowers the floor, and then it is 1.2 */
  assert_int_equal(netstash_options_new(&o), NETSTASH_OK);
  netstash_options_set_ca_file(o, nst_cert("ca.pem"));
  assert_int_equal(netstash_options_set_tls_min_version(o, NETSTASH_TLS_1_2), NETSTASH_OK);
  ctx = new_ctx_opts(o);
  netstash_options_del(o);
  f = get(ctx, url_of(caddy_tls12.port, "127.0.0.1", "/hello.txt"), NETSTASH_OK);
  assert_string_equal(netstash_fetch_tls_version(f), "TLSv1.2");
  netstash_fetch_del(f);
  netstash_ctx_del(ctx);
}

static void bad_cert_case(const char *kind, netstash_error expect, const char *detail_has) {
  nst_server s;
  netstash_ctx *ctx = new_ctx();
  netstash_fetch *f;
  assert_int_equal(nst_badtls_start(kind, &s), 0);
  f = get(ctx, url_of(s.port, "127.0.0.1", "/"), expect);
  if (detail_has && !strstr(netstash_fetch_error_detail(f), detail_has))
    fail_msg("%s: detail \"%s\" lacks \"%s\"", kind, netstash_fetch_error_detail(f), detail_has);
  netstash_fetch_del(f);
  netstash_ctx_del(ctx);
  nst_stop(&s);
}

static void test_cert_expired(void **state) {
  (void)state;
  bad_cert_case("expired", NETSTASH_E_TLS_CERT_EXPIRED, "expired");
}

static void test_cert_wronghost(void **state) {
  (void)state;
  bad_cert_case("wronghost", NETSTASH_E_TLS_CERT_HOSTNAME, NULL);
}

static void test_cert_untrusted(void **state) {
  (void)state;
  bad_cert_case("untrusted", NETSTASH_E_TLS_CERT_UNTRUSTED, NULL);
}

/* Without the test CA, the good server is untrusted too (verification is
 * always on; the system store does not know the test CA). */
static void test_cert_system_store(void **state) {
  netstash_ctx *ctx = new_ctx_opts(NULL);
  netstash_fetch *f = get(ctx, url_of(caddy_h2.port, "127.0.0.1", "/hello.txt"),
                          NETSTASH_E_TLS_CERT_UNTRUSTED);
  (void)state;
  netstash_fetch_del(f);
  netstash_ctx_del(ctx);
}

static netstash_ctx *dns_ctx(const char *servers, uint32_t timeout_ms) {
  netstash_options *o;
  netstash_ctx *ctx;
  assert_int_equal(netstash_options_new(&o), NETSTASH_OK);
  netstash_options_set_ca_file(o, nst_cert("ca.pem"));
  assert_int_equal(netstash_options_set_dns_servers(o, servers), NETSTASH_OK);
  netstash_options_set_dns_timeout_ms(o, timeout_ms);
  netstash_options_set_dns_tries(o, 1);
  ctx = new_ctx_opts(o);
  netstash_options_del(o);
  return ctx;
}

static void test_dns_resolves_via_dnsmasq(void **state) {
  char srv[64];
  netstash_ctx *ctx;
  netstash_fetch *f;
  (void)state;
  snprintf(srv, sizeof(srv), "127.0.0.1:%d", dnsmasq.port);
  ctx = dns_ctx(srv, 1000);
  f = get(ctx, url_of(caddy_h2.port, "example.test", "/hello.txt"), NETSTASH_OK);
  assert_int_equal(netstash_fetch_status(f), 200);
  assert_true(netstash_fetch_timing_us(f, NETSTASH_TIMING_DNS) > 0);
  netstash_fetch_del(f);
  /* second time: from the DNS cache, no new query */
  f = get(ctx, url_of(caddy_h2.port, "www.example.test", "/hello.txt"), NETSTASH_OK);
  netstash_fetch_del(f);
  f = get(ctx, url_of(caddy_h2.port, "example.test", "/hello.txt"), NETSTASH_OK);
  netstash_fetch_del(f);
  assert_int_equal(netstash_ctx_stat(ctx, NETSTASH_STAT_DNS_QUERIES), 2);
  assert_true(netstash_ctx_stat(ctx, NETSTASH_STAT_DNS_CACHE_HITS) >= 1);
  netstash_ctx_del(ctx);
}

static void test_dns_not_found(void **state) {
  char srv[64];
  netstash_ctx *ctx;
  netstash_fetch *f;
  (void)state;
  snprintf(srv, sizeof(srv), "127.0.0.1:%d", dnsmasq.port);
  ctx = dns_ctx(srv, 1000);
  f = get(ctx, url_of(caddy_h2.port, "nosuch.invalid", "/"), NETSTASH_E_DNS_NOT_FOUND);
  assert_non_null(strstr(netstash_fetch_error_detail(f), "nosuch.invalid"));
  netstash_fetch_del(f);
  netstash_ctx_del(ctx);
}

static void test_dns_timeout(void **state) {
  char srv[64];
  netstash_ctx *ctx;
  netstash_fetch *f;
  uint64_t t0;
  (void)state;
  snprintf(srv, sizeof(srv), "127.0.0.1:%d", nst_udp_blackhole());
  ctx = dns_ctx(srv, 300);
  t0 = now_ms();
  f = get(ctx, url_of(caddy_h2.port, "example.test", "/"), NETSTASH_E_DNS_TIMEOUT);
  assert_true(now_ms() - t0 < 3000);
  netstash_fetch_del(f);
  netstash_ctx_del(ctx);
}

static void test_dns_prefetch(void **state) {
  char srv[64];
  netstash_ctx *ctx;
  netstash_fetch *f;
  const char *hosts[] = {"a.example.test", "b.example.test"};
  (void)state;
  snprintf(srv, sizeof(srv), "127.0.0.1:%d", dnsmasq.port);
  ctx = dns_ctx(srv, 1000);
  assert_int_equal(netstash_dns_prefetch(ctx, hosts, 2, NULL, NULL), NETSTASH_OK);
  for (int i = 0; i < 200 && netstash_ctx_stat(ctx, NETSTASH_STAT_DNS_QUERIES) < 2; i++)
    usleep(10000);
  usleep(50000);
  f = get(ctx, url_of(caddy_h2.port, "a.example.test", "/hello.txt"), NETSTASH_OK);
  assert_int_equal(netstash_fetch_timing_us(f, NETSTASH_TIMING_DNS) < 1000, 1);
  netstash_fetch_del(f);
  assert_int_equal(netstash_ctx_stat(ctx, NETSTASH_STAT_DNS_QUERIES), 2);
  netstash_ctx_del(ctx);
}

static void test_connection_refused(void **state) {
  netstash_ctx *ctx = new_ctx();
  netstash_fetch *f = get(ctx, url_of(nst_closed_port(), "127.0.0.1", "/"),
                          NETSTASH_E_CONNECT_REFUSED);
  (void)state;
  netstash_fetch_del(f);
  netstash_ctx_del(ctx);
}

static void test_truncated_body(void **state) {
  netstash_ctx *ctx = new_ctx();
  netstash_fetch *f = get(ctx, http_url(raw.port, "/truncate"), NETSTASH_E_TRUNCATED);
  (void)state;
  assert_int_equal(netstash_fetch_status(f), 200);
  assert_true(netstash_fetch_body_bytes(f) < 100000);
  netstash_fetch_del(f);
  f = get(ctx, http_url(raw.port, "/chunked-trunc"), NETSTASH_E_TRUNCATED);
  netstash_fetch_del(f);
  netstash_ctx_del(ctx);
}

static void test_slow_server_timeout(void **state) {
  netstash_ctx *ctx = new_ctx();
  netstash_request *req;
  netstash_fetch *f;
  uint64_t t0 = now_ms();
  (void)state;
  assert_int_equal(netstash_request_new(&req, http_url(raw.port, "/slow")), NETSTASH_OK);
  netstash_request_set_timeout_ms(req, 700);
  assert_int_equal(netstash_fetch_sync(ctx, req, &f), NETSTASH_E_TIMEOUT);
  assert_true(now_ms() - t0 < 2500);
  assert_int_equal(netstash_fetch_status(f), 200); /* headers came, body did not */
  netstash_fetch_del(f);
  netstash_request_del(req);
  /* a server that never answers */
  assert_int_equal(netstash_request_new(&req, http_url(raw.port, "/hang")), NETSTASH_OK);
  netstash_request_set_timeout_ms(req, 500);
  assert_int_equal(netstash_fetch_sync(ctx, req, &f), NETSTASH_E_TIMEOUT);
  netstash_fetch_del(f);
  netstash_request_del(req);
  netstash_ctx_del(ctx);
}

static void coded_case(const char *accept, const char *expect_coding) {
  netstash_ctx *ctx = new_ctx();
  netstash_request *req;
  netstash_fetch *f;
  const uint8_t *body;
  size_t len, flen;
  unsigned char *file = site_cmp_read("text.txt", &flen);
  assert_int_equal(netstash_request_new(&req, url_of(caddy_h2.port, "127.0.0.1", "/text.txt")),
                   NETSTASH_OK);
  if (accept)
    netstash_request_add_header(req, "Accept-Encoding", accept);
  netstash_request_set_collect_body(req, 1 << 24);
  assert_int_equal(netstash_fetch_sync(ctx, req, &f), NETSTASH_OK);
  assert_string_equal(netstash_fetch_header(f, "content-encoding"), expect_coding);
  assert_int_equal(netstash_fetch_body(f, &body, &len), NETSTASH_OK);
  assert_int_equal(len, flen);
  assert_memory_equal(body, file, flen);
  assert_true(netstash_fetch_wire_bytes(f) < flen / 4); /* it was compressed */
  netstash_fetch_del(f);
  netstash_request_del(req);
  free(file);
  netstash_ctx_del(ctx);
}

static void test_brotli_body(void **state) {
  (void)state;
  coded_case(NULL, "br");
}

static void test_gzip_body(void **state) {
  (void)state;
  coded_case("gzip", "gzip");
}

static void test_zstd_body(void **state) {
  (void)state;
  coded_case("zstd", "zstd");
}

/* A range request asks for identity bytes (Accept-Encoding: identity, as
 * Chromium): caddy, which has br/zstd/gzip sidecars of the file, answers a
 * range of the file itself — a range of its .br would not decode alone. */
static void test_range_identity(void **state) {
  netstash_ctx *ctx = new_ctx();
  netstash_request *req;
  netstash_fetch *f;
  const uint8_t *body;
  size_t len, flen;
  unsigned char *file = site_cmp_read("text.txt", &flen);
  (void)state;
  assert_true(flen > 1000);
  assert_int_equal(netstash_request_new(&req, url_of(caddy_h2.port, "127.0.0.1", "/text.txt")),
                   NETSTASH_OK);
  netstash_request_add_header(req, "Range", "bytes=500-999");
  netstash_request_set_collect_body(req, 1 << 20);
  assert_int_equal(netstash_fetch_sync(ctx, req, &f), NETSTASH_OK);
  assert_int_equal(netstash_fetch_status(f), 206);
  assert_null(netstash_fetch_header(f, "content-encoding"));
  assert_int_equal(netstash_fetch_body(f, &body, &len), NETSTASH_OK);
  assert_int_equal(len, 500);
  assert_memory_equal(body, file + 500, 500);
  netstash_fetch_del(f);
  netstash_request_del(req);
  free(file);
  netstash_ctx_del(ctx);
}

static void test_raw_body(void **state) {
  netstash_ctx *ctx = new_ctx();
  netstash_request *req;
  netstash_fetch *f;
  const uint8_t *body;
  size_t len, blen;
  unsigned char *br = site_cmp_read("text.txt.br", &blen);
  (void)state;
  assert_int_equal(netstash_request_new(&req, url_of(caddy_h2.port, "127.0.0.1", "/text.txt")),
                   NETSTASH_OK);
  netstash_request_set_raw_body(req, 1);
  netstash_request_set_collect_body(req, 1 << 24);
  assert_int_equal(netstash_fetch_sync(ctx, req, &f), NETSTASH_OK);
  assert_int_equal(netstash_fetch_body(f, &body, &len), NETSTASH_OK);
  assert_int_equal(len, blen);
  assert_memory_equal(body, br, blen);
  netstash_fetch_del(f);
  netstash_request_del(req);
  free(br);
  netstash_ctx_del(ctx);
}

static void test_bad_gzip(void **state) {
  netstash_ctx *ctx = new_ctx();
  netstash_fetch *f = get(ctx, http_url(raw.port, "/gzip-bad"), NETSTASH_E_DECODE);
  (void)state;
  netstash_fetch_del(f);
  netstash_ctx_del(ctx);
}

/* 64 MiB of 'a' compressed to a few KB: the decoded cap stops it early. */
static void test_decompression_bomb(void **state) {
  netstash_ctx *ctx = new_ctx();
  netstash_request *req;
  netstash_fetch *f;
  uint64_t t0 = now_ms();
  (void)state;
  assert_int_equal(netstash_request_new(&req, url_of(caddy_h2.port, "127.0.0.1", "/bomb.txt")),
                   NETSTASH_OK);
  netstash_request_set_max_body(req, 1 << 20);
  assert_int_equal(netstash_fetch_sync(ctx, req, &f), NETSTASH_E_TOO_LARGE);
  assert_true(netstash_fetch_body_bytes(f) <= (1 << 20));
  assert_true(now_ms() - t0 < 5000);
  netstash_fetch_del(f);
  netstash_request_del(req);
  netstash_ctx_del(ctx);
}

typedef struct cancel_state {
  atomic_int responses, datas, completes;
  atomic_int last_err;
  netstash_fetch *self;
} cancel_state;

static void cs_response(netstash_fetch *f, void *ud) {
  cancel_state *cs = ud;
  atomic_fetch_add(&cs->responses, 1);
  netstash_fetch_cancel(f); /* cancel from inside a callback */
}

static void cs_data(netstash_fetch *f, const uint8_t *d, size_t l, void *ud) {
  cancel_state *cs = ud;
  (void)f;
  (void)d;
  (void)l;
  atomic_fetch_add(&cs->datas, 1);
}

static void cs_complete(netstash_fetch *f, netstash_error err, void *ud) {
  cancel_state *cs = ud;
  (void)f;
  atomic_store(&cs->last_err, err);
  atomic_fetch_add(&cs->completes, 1);
}

static void test_cancel_in_flight(void **state) {
  netstash_ctx *ctx = new_ctx();
  netstash_request *req;
  netstash_fetch *f;
  cancel_state cs;
  netstash_fetch_callbacks cbs = {cs_response, cs_data, cs_complete};
  uint64_t t0 = now_ms();
  (void)state;
  memset(&cs, 0, sizeof(cs));
  assert_int_equal(netstash_request_new(&req, http_url(raw.port, "/slow")), NETSTASH_OK);
  assert_int_equal(netstash_fetch_start(ctx, req, &cbs, &cs, &f), NETSTASH_OK);
  assert_int_equal(netstash_fetch_wait(f, 10000), NETSTASH_E_CANCELED);
  assert_true(now_ms() - t0 < 3000);
  assert_int_equal(atomic_load(&cs.responses), 1);
  assert_int_equal(atomic_load(&cs.completes), 1);
  assert_int_equal(atomic_load(&cs.last_err), NETSTASH_E_CANCELED);
  assert_int_equal(netstash_fetch_result(f), NETSTASH_E_CANCELED);
  /* cancel after the end is a no-op */
  assert_int_equal(netstash_fetch_cancel(f), NETSTASH_OK);
  netstash_fetch_del(f);

  /* cancel from another thread while waiting on /hang */
  netstash_request_del(req);
  memset(&cs, 0, sizeof(cs));
  netstash_fetch_callbacks cbs2 = {NULL, cs_data, cs_complete};
  assert_int_equal(netstash_request_new(&req, http_url(raw.port, "/hang")), NETSTASH_OK);
  assert_int_equal(netstash_fetch_start(ctx, req, &cbs2, &cs, &f), NETSTASH_OK);
  usleep(100000);
  assert_int_equal(netstash_fetch_cancel(f), NETSTASH_OK);
  assert_int_equal(netstash_fetch_wait(f, 5000), NETSTASH_E_CANCELED);
  assert_int_equal(atomic_load(&cs.completes), 1);
  netstash_fetch_del(f);

  /* delete while running: no callback at all afterwards */
  memset(&cs, 0, sizeof(cs));
  assert_int_equal(netstash_fetch_start(ctx, req, &cbs2, &cs, &f), NETSTASH_OK);
  netstash_fetch_del(f);
  usleep(200000);
  assert_int_equal(atomic_load(&cs.completes), 0);
  netstash_request_del(req);
  netstash_ctx_del(ctx);
}

/* Shutting the context down ends every fetch with exactly one callback. */
static void test_ctx_del_cancels(void **state) {
  netstash_ctx *ctx = new_ctx();
  netstash_request *req;
  netstash_fetch *f[5];
  cancel_state cs;
  netstash_fetch_callbacks cbs = {NULL, NULL, cs_complete};
  int i;
  (void)state;
  memset(&cs, 0, sizeof(cs));
  assert_int_equal(netstash_request_new(&req, http_url(raw.port, "/hang")), NETSTASH_OK);
  for (i = 0; i < 5; i++)
    assert_int_equal(netstash_fetch_start(ctx, req, &cbs, &cs, &f[i]), NETSTASH_OK);
  usleep(100000);
  netstash_ctx_del(ctx);
  assert_int_equal(atomic_load(&cs.completes), 5);
  for (i = 0; i < 5; i++) {
    assert_int_equal(netstash_fetch_result(f[i]), NETSTASH_E_CANCELED);
    netstash_fetch_del(f[i]); /* fetches outlive their context */
  }
  netstash_request_del(req);
}

static void test_http_status_is_an_answer(void **state) {
  netstash_ctx *ctx = new_ctx();
  netstash_fetch *f = get(ctx, http_url(raw.port, "/status/503"), NETSTASH_OK);
  (void)state;
  assert_int_equal(netstash_fetch_status(f), 503);
  netstash_fetch_del(f);
  f = get(ctx, url_of(caddy_h2.port, "127.0.0.1", "/no-such-file"), NETSTASH_OK);
  assert_int_equal(netstash_fetch_status(f), 404);
  netstash_fetch_del(f);
  netstash_ctx_del(ctx);
}

static void test_redirects(void **state) {
  netstash_ctx *ctx = new_ctx();
  netstash_request *req;
  netstash_fetch *f;
  (void)state;
  /* not followed by default: the 3xx is the answer */
  f = get(ctx, http_url(raw.port, "/redirect/3"), NETSTASH_OK);
  assert_int_equal(netstash_fetch_status(f), 302);
  netstash_fetch_del(f);
  assert_int_equal(netstash_request_new(&req, http_url(raw.port, "/redirect/3")), NETSTASH_OK);
  netstash_request_set_follow_redirects(req, 5);
  assert_int_equal(netstash_fetch_sync(ctx, req, &f), NETSTASH_OK);
  assert_int_equal(netstash_fetch_status(f), 200);
  assert_non_null(strstr(netstash_fetch_effective_url(f), "/redirect/0"));
  netstash_fetch_del(f);
  netstash_request_del(req);
  assert_int_equal(netstash_request_new(&req, http_url(raw.port, "/redirect/3")), NETSTASH_OK);
  netstash_request_set_follow_redirects(req, 2);
  assert_int_equal(netstash_fetch_sync(ctx, req, &f), NETSTASH_E_TOO_MANY_REDIRECTS);
  netstash_fetch_del(f);
  netstash_request_del(req);
  netstash_ctx_del(ctx);
}

static void test_post_body(void **state) {
  netstash_ctx *ctx = new_ctx();
  netstash_request *req;
  netstash_fetch *f;
  const uint8_t *body;
  size_t len;
  static const char payload[] = "name=netstash&kind=post";
  (void)state;
  assert_int_equal(netstash_request_new(&req, http_url(raw.port, "/echo")), NETSTASH_OK);
  netstash_request_set_body(req, (const uint8_t *)payload, strlen(payload));
  netstash_request_add_header(req, "X-Test", "yes");
  netstash_request_set_collect_body(req, 1 << 20);
  assert_int_equal(netstash_fetch_sync(ctx, req, &f), NETSTASH_OK);
  assert_int_equal(netstash_fetch_body(f, &body, &len), NETSTASH_OK);
  {
    char *text = strndup((const char *)body, len);
    assert_non_null(strstr(text, "POST /echo"));
    assert_non_null(strstr(text, payload));
    assert_non_null(strcasestr(text, "x-test: yes"));
    free(text);
  }
  netstash_fetch_del(f);
  netstash_request_del(req);
  netstash_ctx_del(ctx);
}

typedef struct upload {
  size_t sent, total;
} upload;

static netstash_error upload_read(uint8_t *buf, size_t cap, size_t *len, int *eof, void *ud) {
  upload *u = ud;
  size_t n = u->total - u->sent;
  if (n > cap)
    n = cap;
  if (n > 1000)
    n = 1000; /* many small parts */
  for (size_t i = 0; i < n; i++)
    buf[i] = (uint8_t)('a' + (u->sent + i) % 26);
  u->sent += n;
  *len = n;
  *eof = u->sent == u->total;
  return NETSTASH_OK;
}

/* A streamed request body of unknown length (chunked on HTTP/1.1). */
static void test_streamed_upload(void **state) {
  netstash_ctx *ctx = new_ctx();
  netstash_request *req;
  netstash_fetch *f;
  const uint8_t *body;
  size_t len;
  upload u = {0, 50000};
  (void)state;
  assert_int_equal(netstash_request_new(&req, http_url(raw.port, "/echo")), NETSTASH_OK);
  assert_int_equal(netstash_request_set_body_reader(req, upload_read, UINT64_MAX, &u),
                   NETSTASH_OK);
  netstash_request_set_method(req, "PUT");
  netstash_request_set_priority(req, NETSTASH_PRIORITY_HIGHEST);
  netstash_request_set_collect_body(req, 1 << 20);
  assert_int_equal(netstash_fetch_sync(ctx, req, &f), NETSTASH_OK);
  assert_int_equal(netstash_fetch_status(f), 200);
  assert_int_equal(netstash_fetch_body(f, &body, &len), NETSTASH_OK);
  {
    char *text = strndup((const char *)body, len);
    assert_non_null(strstr(text, "PUT /echo"));
    assert_non_null(strstr(text, "abcdefghijklmnopqrstuvwxyzabc"));
    assert_true(len > 50000);
    free(text);
  }
  assert_int_equal(u.sent, 50000);
  netstash_fetch_del(f);
  netstash_request_del(req);
  /* a GET with a body stays a GET (libcurl would send it as POST) */
  assert_int_equal(netstash_request_new(&req, http_url(raw.port, "/echo")), NETSTASH_OK);
  netstash_request_set_method(req, "GET");
  assert_int_equal(netstash_request_set_body(req, (const uint8_t *)"q=1", 3), NETSTASH_OK);
  netstash_request_set_collect_body(req, 1 << 20);
  assert_int_equal(netstash_fetch_sync(ctx, req, &f), NETSTASH_OK);
  assert_int_equal(netstash_fetch_body(f, &body, &len), NETSTASH_OK);
  {
    char *text = strndup((const char *)body, len);
    assert_true(strncmp(text, "GET /echo", 9) == 0);
    assert_non_null(strstr(text, "\r\n\r\nq=1"));
    free(text);
  }
  netstash_fetch_del(f);
  netstash_request_del(req);
  netstash_ctx_del(ctx);
}

/* Strict-Transport-Security learnt over https upgrades a later http:// URL
 * of the same host (RFC 6797 8.3). */
static void test_hsts_upgrade(void **state) {
  netstash_ctx *ctx = new_ctx();
  netstash_request *req;
  netstash_fetch *f;
  char pin[128], url[256];
  (void)state;
  snprintf(pin, sizeof(pin), "example.test:%d:127.0.0.1", caddy_h2.port);
  assert_int_equal(netstash_request_new(&req, url_of(caddy_h2.port, "example.test", "/hsts")),
                   NETSTASH_OK);
  netstash_request_add_resolve(req, pin);
  assert_int_equal(netstash_fetch_sync(ctx, req, &f), NETSTASH_OK);
  assert_non_null(netstash_fetch_header(f, "strict-transport-security"));
  netstash_fetch_del(f);
  netstash_request_del(req);
  snprintf(url, sizeof(url), "http://example.test:%d/hello.txt", caddy_h2.port);
  assert_int_equal(netstash_request_new(&req, url), NETSTASH_OK);
  netstash_request_add_resolve(req, pin);
  assert_int_equal(netstash_fetch_sync(ctx, req, &f), NETSTASH_OK);
  assert_int_equal(netstash_fetch_status(f), 200);
  assert_string_equal(netstash_fetch_tls_version(f), "TLSv1.3"); /* went over TLS */
  netstash_fetch_del(f);
  netstash_request_del(req);
  netstash_ctx_del(ctx);
}

/* HSTS learnt in one context is kept in the profile's store and applied by
 * a later context (a later process) of the same profile. */
static void test_hsts_persisted(void **state) {
  netstash_options *o;
  netstash_ctx *ctx;
  netstash_request *req;
  netstash_fetch *f;
  char pin[128], url[256], *prof = strdup(nst_path("hsts-profile"));
  (void)state;
  snprintf(pin, sizeof(pin), "example.test:%d:127.0.0.1", caddy_h2.port);
  for (int round = 0; round < 3; round++) {
    assert_int_equal(netstash_options_new(&o), NETSTASH_OK);
    netstash_options_set_ca_file(o, nst_cert("ca.pem"));
    netstash_options_set_profile_dir(o, round < 2 ? prof : nst_path("other-profile"));
    ctx = new_ctx_opts(o);
    netstash_options_del(o);
    if (round == 0) {
      assert_int_equal(
          netstash_request_new(&req, url_of(caddy_h2.port, "example.test", "/hsts")), NETSTASH_OK);
      netstash_request_add_resolve(req, pin);
      assert_int_equal(netstash_fetch_sync(ctx, req, &f), NETSTASH_OK);
      netstash_fetch_del(f);
      netstash_request_del(req);
    } else {
      snprintf(url, sizeof(url), "http://example.test:%d/hello.txt", caddy_h2.port);
      assert_int_equal(netstash_request_new(&req, url), NETSTASH_OK);
      netstash_request_add_resolve(req, pin);
      netstash_request_set_cache_mode(req, NETSTASH_CACHE_BYPASS);
      netstash_request_set_timeout_ms(req, 3000);
      if (round == 1) {
        /* a new context of the same profile upgrades to https */
        assert_int_equal(netstash_fetch_sync(ctx, req, &f), NETSTASH_OK);
        assert_int_equal(netstash_fetch_status(f), 200);
        assert_string_equal(netstash_fetch_tls_version(f), "TLSv1.3");
      } else {
        /* another profile knows nothing: plain http reaches the TLS port,
         * which caddy answers 400 ("HTTP request to an HTTPS server") */
        assert_int_equal(netstash_fetch_sync(ctx, req, &f), NETSTASH_OK);
        assert_int_equal(netstash_fetch_status(f), 400);
        assert_string_equal(netstash_fetch_tls_version(f), "");
      }
      netstash_fetch_del(f);
      netstash_request_del(req);
    }
    netstash_ctx_del(ctx);
  }
  free(prof);
}

/* Counting allocator: live allocations of library state. */
static atomic_long live_allocs;
static void *c_malloc(size_t n, void *ud) {
  (void)ud;
  void *p = malloc(n);
  if (p)
    atomic_fetch_add(&live_allocs, 1);
  return p;
}
static void c_free(void *p, void *ud) {
  (void)ud;
  if (p)
    atomic_fetch_sub(&live_allocs, 1);
  free(p);
}
static void *c_calloc(size_t a, size_t b, void *ud) {
  (void)ud;
  void *p = calloc(a, b);
  if (p)
    atomic_fetch_add(&live_allocs, 1);
  return p;
}
static void *c_realloc(void *p, size_t n, void *ud) {
  (void)ud;
  void *q = realloc(p, n);
  if (q && !p)
    atomic_fetch_add(&live_allocs, 1);
  return q;
}

/* 1,000 sequential requests over the same context: no fd growth, no growth
 * of live library allocations (ASan/valgrind catch leaks on top). */
static void test_1000_sequential(void **state) {
  netstash_options *o;
  netstash_ctx *ctx;
  netstash_allocator a = {NULL, c_malloc, c_free, c_calloc, c_realloc};
  int i, fds_before = 0;
  long allocs_before = 0;
  (void)state;
  assert_int_equal(netstash_options_new(&o), NETSTASH_OK);
  netstash_options_set_ca_file(o, nst_cert("ca.pem"));
  assert_int_equal(netstash_options_set_allocator(o, &a), NETSTASH_OK);
  ctx = new_ctx_opts(o);
  netstash_options_del(o);
  for (i = 0; i < 1000; i++) {
    netstash_fetch *f = get(ctx, url_of(caddy_h2.port, "127.0.0.1", "/r/7.bin"), NETSTASH_OK);
    assert_int_equal(netstash_fetch_body_bytes(f), 20000);
    netstash_fetch_del(f);
    if (i == 9) {
      fds_before = nst_count_fds();
      allocs_before = atomic_load(&live_allocs);
    }
  }
  assert_true(nst_count_fds() <= fds_before);
  /* The loop thread drops its reference to a fetch just after waking the
   * waiter, so one fetch (~8 blocks) may still be alive at either sample; a
   * leak per request would show as thousands. */
  if (atomic_load(&live_allocs) > allocs_before + 16)
    fail_msg("live allocations grew from %ld to %ld", allocs_before, atomic_load(&live_allocs));
  assert_int_equal(netstash_ctx_stat(ctx, NETSTASH_STAT_CONNECTIONS_OPENED), 1);
  netstash_ctx_del(ctx);
  assert_int_equal(atomic_load(&live_allocs), 0);
}

/* Library state of an in-flight fetch (everything netstash allocates for
 * it, headers arena included; libcurl's easy handle and its buffers are
 * libcurl's) stays within 8 KB. */
static atomic_long live_bytes;
static void *b_malloc(size_t n, void *ud) {
  size_t *p = malloc(n + 16);
  (void)ud;
  if (!p)
    return NULL;
  *p = n;
  atomic_fetch_add(&live_bytes, (long)n);
  return (char *)p + 16;
}
static void b_free(void *q, void *ud) {
  (void)ud;
  if (!q)
    return;
  size_t *p = (size_t *)(void *)((char *)q - 16);
  atomic_fetch_sub(&live_bytes, (long)*p);
  free(p);
}
static void *b_calloc(size_t a, size_t b, void *ud) {
  void *q = b_malloc(a * b, ud);
  if (q)
    memset(q, 0, a * b);
  return q;
}
static void *b_realloc(void *q, size_t n, void *ud) {
  size_t *p, old;
  void *nq;
  if (!q)
    return b_malloc(n, ud);
  p = (size_t *)(void *)((char *)q - 16);
  old = *p;
  nq = b_malloc(n, ud);
  if (!nq)
    return NULL;
  memcpy(nq, q, old < n ? old : n);
  b_free(q, ud);
  return nq;
}

static void test_inflight_memory(void **state) {
  netstash_options *o;
  netstash_ctx *ctx;
  netstash_allocator a = {NULL, b_malloc, b_free, b_calloc, b_realloc};
  netstash_request *req;
  netstash_fetch *f[10];
  long before, per;
  int i;
  (void)state;
  assert_int_equal(netstash_options_new(&o), NETSTASH_OK);
  assert_int_equal(netstash_options_set_allocator(o, &a), NETSTASH_OK);
  ctx = new_ctx_opts(o);
  netstash_options_del(o);
  /* warm the connection pool so the sockets' watchers are counted once */
  netstash_fetch_del(get(ctx, http_url(raw.port, "/ok"), NETSTASH_OK));
  usleep(50000);
  before = atomic_load(&live_bytes);
  assert_int_equal(netstash_request_new(&req, http_url(raw.port, "/slow")), NETSTASH_OK);
  for (i = 0; i < 10; i++)
    assert_int_equal(netstash_fetch_start(ctx, req, NULL, NULL, &f[i]), NETSTASH_OK);
  usleep(1500000); /* headers arrived, body trickling */
  per = (atomic_load(&live_bytes) - before) / 10;
  fprintf(stderr, "in-flight fetch: %ld bytes of netstash state each\n", per);
  assert_true(per > 0);
  assert_true(per <= 8192);
  for (i = 0; i < 10; i++)
    netstash_fetch_del(f[i]);
  netstash_request_del(req);
  netstash_ctx_del(ctx);
  assert_int_equal(atomic_load(&live_bytes), 0);
}

static void test_bad_inputs(void **state) {
  netstash_request *req = NULL;
  netstash_ctx *ctx = new_ctx();
  netstash_fetch *f = NULL;
  (void)state;
  assert_int_equal(netstash_request_new(&req, "ftp://example.test/"), NETSTASH_E_BAD_URL);
  assert_int_equal(netstash_request_new(&req, "not a url"), NETSTASH_E_BAD_URL);
  assert_int_equal(netstash_request_new(&req, "https://127.0.0.1/"), NETSTASH_OK);
  assert_int_equal(netstash_request_add_header(req, "Bad Name", "v"),
                   NETSTASH_E_INVALID_ARGUMENT);
  assert_int_equal(netstash_request_add_header(req, "X", "a\r\nInjected: 1"),
                   NETSTASH_E_INVALID_ARGUMENT);
  assert_int_equal(netstash_request_add_resolve(req, "nonsense"), NETSTASH_E_INVALID_ARGUMENT);
  {
    /* HTTP/3 is https only */
    netstash_request *plain;
    assert_int_equal(netstash_request_new(&plain, "http://127.0.0.1/"), NETSTASH_OK);
    netstash_request_set_http_version(plain, NETSTASH_HTTP_3);
    assert_int_equal(netstash_fetch_start(ctx, plain, NULL, NULL, &f), NETSTASH_E_UNSUPPORTED);
    assert_null(f);
    netstash_request_del(plain);
  }
  netstash_request_set_timeout_ms(req, 1);
  assert_int_equal(netstash_fetch_start(ctx, req, NULL, NULL, &f), NETSTASH_OK);
  /* started: the request is frozen */
  assert_int_equal(netstash_request_set_timeout_ms(req, 5), NETSTASH_E_ILLEGAL_STATE);
  netstash_fetch_wait(f, 5000);
  netstash_fetch_del(f);
  netstash_request_del(req);
  netstash_ctx_del(ctx);
}

static int setup_servers(void **state) {
  (void)state;
  if (!nst_certs() || !nst_site())
    return -1;
  if (nst_caddy_start("h2", &caddy_h2) || nst_caddy_start("h1", &caddy_h1) ||
      nst_caddy_start("tls12", &caddy_tls12) || nst_rawserver_start(&raw) ||
      nst_dnsmasq_start(&dnsmasq))
    return -1;
  return 0;
}

static int teardown_servers(void **state) {
  (void)state;
  nst_cleanup();
  return 0;
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_get_h2_basic),
      cmocka_unit_test(test_h2_multiplex_100),
      cmocka_unit_test(test_h2_nghttpd_flow_control),
      cmocka_unit_test(test_h2_nghttpd_stream_limit),
      cmocka_unit_test(test_h1_fallback),
      cmocka_unit_test(test_tls12_refused_by_default),
      cmocka_unit_test(test_cert_expired),
      cmocka_unit_test(test_cert_wronghost),
      cmocka_unit_test(test_cert_untrusted),
      cmocka_unit_test(test_cert_system_store),
      cmocka_unit_test(test_dns_resolves_via_dnsmasq),
      cmocka_unit_test(test_dns_not_found),
      cmocka_unit_test(test_dns_timeout),
      cmocka_unit_test(test_dns_prefetch),
      cmocka_unit_test(test_connection_refused),
      cmocka_unit_test(test_truncated_body),
      cmocka_unit_test(test_slow_server_timeout),
      cmocka_unit_test(test_brotli_body),
      cmocka_unit_test(test_zstd_body),
      cmocka_unit_test(test_range_identity),
      cmocka_unit_test(test_gzip_body),
      cmocka_unit_test(test_raw_body),
      cmocka_unit_test(test_bad_gzip),
      cmocka_unit_test(test_decompression_bomb),
      cmocka_unit_test(test_cancel_in_flight),
      cmocka_unit_test(test_ctx_del_cancels),
      cmocka_unit_test(test_http_status_is_an_answer),
      cmocka_unit_test(test_redirects),
      cmocka_unit_test(test_post_body),
      cmocka_unit_test(test_streamed_upload),
      cmocka_unit_test(test_hsts_upgrade),
      cmocka_unit_test(test_hsts_persisted),
      cmocka_unit_test(test_1000_sequential),
      cmocka_unit_test(test_inflight_memory),
      cmocka_unit_test(test_bad_inputs),
  };
  return cmocka_run_group_tests(tests, setup_servers, teardown_servers);
}
