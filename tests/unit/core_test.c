#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "ns_setup.h"
#include "core/buf.h"
#include "core/headers.h"
#include "core/reader.h"
#include "core/url.h"

#include <stdlib.h>

#include "url_corpus.h"

/* An allocator that fails the Nth allocation and counts live blocks. */
static long fail_at, nallocs, live;
static void *f_malloc(size_t n, void *ud) {
  (void)ud;
  if (++nallocs == fail_at)
    return NULL;
  live++;
  return malloc(n);
}
static void f_free(void *p, void *ud) {
  (void)ud;
  if (p)
    live--;
  free(p);
}
static void *f_calloc(size_t a, size_t b, void *ud) {
  (void)ud;
  if (++nallocs == fail_at)
    return NULL;
  live++;
  return calloc(a, b);
}
static void *f_realloc(void *p, size_t n, void *ud) {
  (void)ud;
  if (++nallocs == fail_at)
    return NULL;
  if (!p)
    live++;
  return realloc(p, n);
}

/* Every allocation of context creation may fail: each failure returns
 * NETSTASH_E_NOMEM (never a crash) and frees what was allocated. */
static void test_ctx_failmalloc(void **state) {
  netstash_options *o;
  netstash_allocator a = {NULL, f_malloc, f_free, f_calloc, f_realloc};
  netstash_ctx *ctx = NULL;
  netstash_error rv;
  char detail[128];
  (void)state;
  assert_int_equal(netstash_options_new(&o), NETSTASH_OK);
  assert_int_equal(netstash_options_set_allocator(o, &a), NETSTASH_OK);
  netstash_options_set_dns_servers(o, "127.0.0.1:53");
  netstash_options_set_ca_file(o, "/nonexistent/ca.pem");
  for (fail_at = 1; fail_at < 1000; fail_at++) {
    nallocs = 0;
    live = 0;
    rv = netstash_ctx_new(&ctx, o, detail, sizeof(detail));
    if (rv == NETSTASH_OK)
      break;
    assert_int_equal(rv, NETSTASH_E_NOMEM);
    assert_null(ctx);
    assert_int_equal(live, 0);
  }
  assert_int_equal(rv, NETSTASH_OK);
  assert_true(fail_at > 3); /* it did allocate through the hook */
  fail_at = 0;
  netstash_ctx_del(ctx);
  assert_int_equal(live, 0);
  netstash_options_del(o);
}

static void test_options_validation(void **state) {
  netstash_options *o;
  netstash_allocator bad = {NULL, NULL, NULL, NULL, NULL};
  (void)state;
  assert_int_equal(netstash_options_new(NULL), NETSTASH_E_INVALID_ARGUMENT);
  assert_int_equal(netstash_options_new(&o), NETSTASH_OK);
  assert_int_equal(netstash_options_set_tls_min_version(o, (netstash_tls_version)11),
                   NETSTASH_E_INVALID_ARGUMENT);
  assert_int_equal(netstash_options_set_dns_timeout_ms(o, 0), NETSTASH_E_INVALID_ARGUMENT);
  assert_int_equal(netstash_options_set_allocator(o, &bad), NETSTASH_E_INVALID_ARGUMENT);
  assert_int_equal(netstash_options_set_allocator_versioned(o, 0, &bad),
                   NETSTASH_E_INVALID_ARGUMENT);
  assert_int_equal(netstash_options_set_log(o, NULL, (netstash_log_level)9, NULL),
                   NETSTASH_E_INVALID_ARGUMENT);
  assert_int_equal(netstash_options_set_max_host_connections(o, 0), NETSTASH_E_INVALID_ARGUMENT);
  netstash_options_del(o);
  netstash_options_del(NULL);
  netstash_ctx_del(NULL);
}

static void test_bad_dns_servers_fail_ctx(void **state) {
  netstash_options *o;
  netstash_ctx *ctx = NULL;
  char detail[256] = "";
  (void)state;
  assert_int_equal(netstash_options_new(&o), NETSTASH_OK);
  netstash_options_set_dns_servers(o, "not-an-address:xx");
  assert_int_not_equal(netstash_ctx_new(&ctx, o, detail, sizeof(detail)), NETSTASH_OK);
  assert_null(ctx);
  assert_true(strlen(detail) > 0);
  netstash_options_del(o);
}

static void test_version(void **state) {
  uint32_t num = 0, feat = 0;
  (void)state;
  assert_string_equal(netstash_version(&num, &feat), "0.1.0");
  assert_int_equal(num, NETSTASH_VERSION_NUM);
  assert_true(feat & NETSTASH_FEATURE_HTTP2);
  assert_true(feat & NETSTASH_FEATURE_HTTP3);
}

/* ns_url_parse without curl_url (URLs already in its printed form) gives
 * the same fields as with it; the common forms take that path. */
static void test_url_fast_path_agrees(void **state) {
  unsigned taken = 0;
  (void)state;
  for (size_t i = 0; i < sizeof(nst_url_corpus) / sizeof(nst_url_corpus[0]); i++) {
    ns_url a, b;
    ns_url_parts parts;
    netstash_error ea, eb;
    taken += (unsigned)ns_url_split_canonical(nst_url_corpus[i], &parts);
    ns_url_fast_set(1);
    ea = ns_url_parse(ns_mem_default(), nst_url_corpus[i], &a, NULL, 0);
    ns_url_fast_set(0);
    eb = ns_url_parse(ns_mem_default(), nst_url_corpus[i], &b, NULL, 0);
    ns_url_fast_set(1);
    if (ea != eb)
      fail_msg("%s: %d with the fast path, %d with curl_url", nst_url_corpus[i], ea, eb);
    if (ea == NETSTASH_OK) {
      if (strcmp(a.url, b.url) || strcmp(a.scheme, b.scheme) || strcmp(a.host, b.host) ||
          a.port != b.port || a.host_is_ip != b.host_is_ip || a.ipv6 != b.ipv6)
        fail_msg("%s: fast {%s %s %s %d %d} curl_url {%s %s %s %d %d}", nst_url_corpus[i], a.url, a.scheme,
                 a.host, a.port, a.host_is_ip, b.url, b.scheme, b.host, b.port, b.host_is_ip);
      ns_url_free(ns_mem_default(), &a);
      ns_url_free(ns_mem_default(), &b);
    }
  }
  assert_true(taken >= 12);
}

static void test_url(void **state) {
  ns_url u;
  char d[128];
  (void)state;
  assert_int_equal(ns_url_parse(ns_mem_default(), "https://[::1]:8443/a?b", &u, d, sizeof(d)),
                   NETSTASH_OK);
  assert_string_equal(u.host, "::1");
  assert_int_equal(u.port, 8443);
  assert_true(u.host_is_ip && u.ipv6);
  ns_url_free(ns_mem_default(), &u);
  assert_int_equal(ns_url_parse(ns_mem_default(), "http://Example.TEST/", &u, d, sizeof(d)),
                   NETSTASH_OK);
  assert_int_equal(u.port, 80);
  assert_false(u.host_is_ip);
  ns_url_free(ns_mem_default(), &u);
  assert_int_equal(ns_url_parse(ns_mem_default(), "gopher://x/", &u, d, sizeof(d)),
                   NETSTASH_E_BAD_URL);
  assert_non_null(strstr(d, "gopher"));
  assert_int_equal(ns_url_resolve(ns_mem_default(), "https://a.test/x/y?q", "../z", &u, d,
                                  sizeof(d)),
                   NETSTASH_OK);
  assert_string_equal(u.url, "https://a.test/z");
  ns_url_free(ns_mem_default(), &u);
  assert_int_equal(ns_url_resolve(ns_mem_default(), "https://a.test/", "//b.test:81/p", &u, d,
                                  sizeof(d)),
                   NETSTASH_OK);
  assert_string_equal(u.host, "b.test");
  assert_int_equal(u.port, 81);
  ns_url_free(ns_mem_default(), &u);
}

static void test_strerror_table(void **state) {
  (void)state;
  assert_string_equal(netstash_strerror(NETSTASH_OK), "success");
  assert_string_equal(netstash_error_name(NETSTASH_E_DNS_TIMEOUT), "NETSTASH_E_DNS_TIMEOUT");
  assert_string_equal(netstash_strerror((netstash_error)9999), "unknown error code");
  assert_true(netstash_error_is_network(NETSTASH_E_TLS_CERT_EXPIRED));
  assert_false(netstash_error_is_network(NETSTASH_E_INVALID_ARGUMENT));
  /* codes are ABI: pin a few numbers */
  assert_int_equal(NETSTASH_E_DNS_NOT_FOUND, 100);
  assert_int_equal(NETSTASH_E_TRUNCATED, 131);
}

/* The table-driven tchar and the word-at-a-time field value check agree
 * with their definitions (RFC 9110 §5.6.2, §5.5) for every byte, at every
 * position of values of every length around the word size. */
static void test_char_classes(void **state) {
  char v[40];
  (void)state;
  for (int c = -1; c < 256; c++) {
    int alnum = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
    int want = c > 0 && (alnum || strchr("!#$%&'*+-.^_`|~", c) != NULL);
    if (ns_is_tchar(c) != want)
      fail_msg("ns_is_tchar(%d) = %d", c, ns_is_tchar(c));
  }
  for (size_t len = 1; len <= sizeof(v); len++) {
    for (size_t at = 0; at < len; at++) {
      for (int c = 0; c < 256; c++) {
        int want = c == ' ' || c == '\t' || (c >= 0x21 && c != 0x7f);
        memset(v, 'a', sizeof(v));
        v[at] = (char)c;
        if (ns_header_value_valid(v, len) != want)
          fail_msg("byte %#x at %zu of %zu: %d", c, at, len, !want);
      }
    }
  }
  /* every other byte of a word bad, and high bytes beside low ones */
  memcpy(v, "\x80\xff\x7e a\x7f\xfe\x81", 8);
  assert_false(ns_header_value_valid(v, 8));
  memcpy(v, "\x80\xff\x7e a\x20\xfe\x81", 8);
  assert_true(ns_header_value_valid(v, 8));
}

static void test_fmt_u64(void **state) {
  char b[21];
  (void)state;
  assert_int_equal(ns_fmt_u64(b, 0), 1);
  assert_string_equal(b, "0");
  assert_int_equal(ns_fmt_u64(b, 600), 3);
  assert_string_equal(b, "600");
  assert_int_equal(ns_fmt_u64(b, UINT64_MAX), 20);
  assert_string_equal(b, "18446744073709551615");
}

static void test_buf_cap(void **state) {
  ns_buf b;
  (void)state;
  ns_buf_init(&b, ns_mem_default(), 10);
  assert_int_equal(ns_buf_append(&b, "0123456789", 10), NETSTASH_OK);
  assert_int_equal(ns_buf_append(&b, "x", 1), NETSTASH_E_TOO_LARGE);
  assert_int_equal(b.len, 10);
  assert_string_equal(ns_buf_str(&b), "0123456789");
  ns_buf_reset(&b);
  assert_int_equal(ns_buf_printf(&b, "%d-%s", 42, "x"), NETSTASH_OK);
  assert_string_equal(ns_buf_str(&b), "42-x");
  ns_buf_free(&b);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_strerror_table),
      cmocka_unit_test(test_buf_cap),
      cmocka_unit_test(test_char_classes),
      cmocka_unit_test(test_fmt_u64),
      cmocka_unit_test(test_ctx_failmalloc),
      cmocka_unit_test(test_options_validation),
      cmocka_unit_test(test_bad_dns_servers_fail_ctx),
      cmocka_unit_test(test_version),
      cmocka_unit_test(test_url),
      cmocka_unit_test(test_url_fast_path_agrees),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
