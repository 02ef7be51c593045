/*
 * cache_test.c — lib/core/reader (HTTP field syntax, HTTP-date),
 * lib/core/headers (header lists and their binary form) and lib/cache (RFC
 * 9111 private-cache rules). Each table row is one rule: if the rule breaks,
 * its row fails and names itself.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <inttypes.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>

#include "ns_setup.h"
#include "cache/cache.h"
#include "core/url.h"
#include "core/headers.h"
#include "core/reader.h"

#include "url_corpus.h"

/* ---- an allocator that fails the Nth allocation and counts live blocks */
static long fail_at = -1, nallocs, live;
static void *f_malloc(size_t n, void *ud) {
  (void)ud;
  if (nallocs++ == fail_at)
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
  if (nallocs++ == fail_at)
    return NULL;
  live++;
  return calloc(a, b);
}
static void *f_realloc(void *p, size_t n, void *ud) {
  (void)ud;
  if (nallocs++ == fail_at)
    return NULL;
  if (!p)
    live++;
  return realloc(p, n);
}
static const ns_mem fmem = {NULL, f_malloc, f_free, f_calloc, f_realloc};

/* ---- fixtures: T0 is "now" at the start of every scenario */
#define T0 INT64_C(1700000000) /* Tue, 14 Nov 2023 22:13:20 GMT */
#define MS(s) ((int64_t)(s) * 1000)

/* Expands {T+N} / {T-N} into the IMF-fixdate of T0 ± N seconds. */
static void expand(const char *in, char *out, size_t cap) {
  size_t o = 0;
  while (*in && o + 1 < cap) {
    if (in[0] == '{' && in[1] == 'T') {
      char *end;
      long long off = strtoll(in + 2, &end, 10);
      char d[NS_HTTP_DATE_LEN];
      assert_true(*end == '}');
      ns_http_date_format(T0 + off, d);
      assert_true(o + strlen(d) < cap);
      memcpy(out + o, d, strlen(d));
      o += strlen(d);
      in = end + 1;
    } else {
      out[o++] = *in++;
    }
  }
  out[o] = 0;
}

/* Fills h (initialised) from "Name: value\n..." lines with {T±N} dates. */
static void hdrs(ns_headers *h, const char *lines) {
  char buf[4096];
  const char *p;
  ns_headers_init(h, ns_mem_default());
  if (!lines)
    return;
  expand(lines, buf, sizeof(buf));
  p = buf;
  while (*p) {
    const char *nl = strchr(p, '\n');
    size_t len = nl ? (size_t)(nl - p) : strlen(p);
    if (len)
      assert_int_equal(ns_headers_add_line(h, p, len), NETSTASH_OK);
    p += len + (nl ? 1 : 0);
  }
}

/* =================================================================== reader */

static void test_reader_tokens_lists(void **state) {
  ns_reader r;
  ns_span s, n, v;
  int q, hv;
  uint64_t u;
  int sat;
  const char *in = " a , ,b=\"x,\\\"y\" ;p=1; q=\"2\" ,c";
  (void)state;
  ns_reader_init(&r, in, strlen(in));
  assert_true(ns_reader_list_next(&r));
  assert_true(ns_reader_token(&r, &s));
  assert_true(ns_span_eq_ci(s, "A"));
  ns_reader_list_skip(&r);
  assert_true(ns_reader_list_next(&r)); /* empty element skipped */
  assert_true(ns_reader_token(&r, &s));
  assert_true(ns_span_eq_ci(s, "b"));
  assert_true(ns_reader_skip_char(&r, '='));
  assert_true(ns_reader_token_or_quoted(&r, &v, &q));
  assert_true(q);
  assert_int_equal(v.len, 5); /* raw: x,\"y */
  assert_int_equal(ns_reader_param(&r, &n, &v, &hv, &q), 1);
  assert_true(ns_span_eq_ci(n, "p") && hv && !q && v.len == 1 && v.p[0] == '1');
  assert_int_equal(ns_reader_param(&r, &n, &v, &hv, &q), 1);
  assert_true(ns_span_eq_ci(n, "q") && hv && q && v.p[0] == '2');
  assert_int_equal(ns_reader_param(&r, &n, &v, &hv, &q), 0);
  ns_reader_list_skip(&r);
  assert_true(ns_reader_list_next(&r));
  assert_true(ns_reader_token(&r, &s));
  assert_true(ns_span_eq_ci(s, "c"));
  assert_false(ns_reader_list_next(&r));
  assert_int_equal(ns_reader_peek(&r), -1);

  /* numbers saturate, never overflow */
  ns_reader_init(&r, "99999999999999999999999x", 24);
  assert_true(ns_reader_uint(&r, 1000, &u, &sat));
  assert_int_equal(u, 1000);
  assert_true(sat);
  assert_int_equal(ns_reader_peek(&r), 'x');
  assert_false(ns_reader_uint(&r, 1000, &u, &sat));
}

static void test_reader_quoted(void **state) {
  ns_reader r;
  ns_buf b;
  ns_span raw;
  (void)state;
  ns_buf_init(&b, ns_mem_default(), 100);
  ns_reader_init(&r, "\"a\\\"b\\\\c\"rest", 13);
  assert_int_equal(ns_reader_quoted(&r, &raw, &b), NETSTASH_OK);
  assert_string_equal(ns_buf_str(&b), "a\"b\\c");
  assert_int_equal(ns_reader_peek(&r), 'r');
  /* unterminated, control character, dangling escape: refused, cursor kept */
  ns_buf_reset(&b);
  ns_reader_init(&r, "\"abc", 4);
  assert_int_equal(ns_reader_quoted(&r, &raw, &b), NETSTASH_E_PROTOCOL);
  assert_int_equal(r.pos, 0);
  assert_int_equal(b.len, 0);
  ns_reader_init(&r, "\"a\nb\"", 5);
  assert_int_equal(ns_reader_quoted(&r, &raw, NULL), NETSTASH_E_PROTOCOL);
  ns_reader_init(&r, "\"a\\", 3);
  assert_int_equal(ns_reader_quoted(&r, &raw, NULL), NETSTASH_E_PROTOCOL);
  /* list_skip steps over commas inside quoted-strings */
  ns_reader_init(&r, "x=\"a,b\",y", 9);
  ns_reader_list_skip(&r);
  assert_int_equal(r.pos, 7);
  ns_buf_free(&b);
}

static void test_delta_seconds(void **state) {
  int64_t v;
  (void)state;
  assert_true(ns_delta_seconds_parse(ns_span_make("0", 1), &v) && v == 0);
  assert_true(ns_delta_seconds_parse(ns_span_make("600", 3), &v) && v == 600);
  /* RFC 9111 §1.2.2: too large → 2^31 */
  assert_true(ns_delta_seconds_parse(ns_span_make("99999999999999999999", 20), &v));
  assert_int_equal(v, NS_DELTA_SECONDS_MAX);
  assert_false(ns_delta_seconds_parse(ns_span_make("-1", 2), &v));
  assert_false(ns_delta_seconds_parse(ns_span_make("1.5", 3), &v));
  assert_false(ns_delta_seconds_parse(ns_span_make("", 0), &v));
  assert_false(ns_delta_seconds_parse(ns_span_make(" 1", 2), &v));
}

static const struct {
  const char *in;
  int64_t t; /* -1: invalid */
} k_dates[] = {
    /* RFC 9110 §5.6.7 examples: the same instant in all three formats */
    {"Sun, 06 Nov 1994 08:49:37 GMT", 784111777},
    {"Sunday, 06-Nov-94 08:49:37 GMT", 784111777},
    {"Sun Nov  6 08:49:37 1994", 784111777},
    {"  Sun, 06 Nov 1994 08:49:37 GMT  ", 784111777}, /* OWS around */
    {"Thu, 01 Jan 1970 00:00:00 GMT", 0},
    {"Wed, 31 Dec 1969 23:59:59 GMT", -1 - 0}, /* valid: one second before */
    {"Tue, 29 Feb 2000 12:00:00 GMT", 951825600},   /* leap year (÷400) */
    {"Fri, 31 Dec 9999 23:59:59 GMT", 253402300799},
    {"Mon, 06 Nov 1994 08:49:37 GMT", 784111777},   /* wrong weekday: tolerated */
    {"Sun, 06 Nov 1994 23:59:60 GMT", 784166400},   /* leap second */
    {"Thu, 13 Nov 2025 08:49:37 GMT", 1763023777},
    {"Thursday, 13-Nov-25 08:49:37 GMT", 1763023777}, /* 2-digit year, 2000s */
    {"Thursday, 13-Nov-70 08:49:37 GMT", 3183094177}, /* 47 y ahead: 2070 */
    {"Thursday, 13-Nov-80 08:49:37 GMT", 342953377},  /* > 50 y ahead: 1980 */
};
static const char *const k_bad_dates[] = {
    "0", "-1", "", "now", "Sun, 06 Nov 1994 08:49:37",  "Sun, 06 Nov 1994 08:49:37 UTC",
    "Sun, 6 Nov 1994 08:49:37 GMT", "Sun, 06 nov 1994 08:49:37 GMT", "sun, 06 Nov 1994 08:49:37 GMT",
    "Sun, 31 Nov 1994 08:49:37 GMT", "Sun, 29 Feb 1900 08:49:37 GMT", "Sun, 00 Nov 1994 08:49:37 GMT",
    "Sun, 06 Nov 1994 24:00:00 GMT", "Sun, 06 Nov 1994 08:60:00 GMT", "Sun, 06 Nov 1994 08:49:61 GMT",
    "Sun, 06 Nov 94 08:49:37 GMT", "Sun, 06 Nov 1994 08:49:37 GMTx", "Sun,06 Nov 1994 08:49:37 GMT",
    "Sunday, 06-Nov-1994 08:49:37 GMT", "Sun Nov 6 08:49:37 1994", "Sun Nov  6 08:49:37 94",
    "Sun Nov  6 08:49:37 1994 GMT", "Funday, 06-Nov-94 08:49:37 GMT", "Sun, 06 Nov 1994 8:49:37 GMT",
    "Sun, 06 Nov 1994 08:49:37 GMT\r\n",
};

static void test_http_date(void **state) {
  size_t i;
  int64_t t;
  char buf[NS_HTTP_DATE_LEN];
  (void)state;
  for (i = 0; i < NS_ARRAY_LEN(k_dates); i++) {
    int rc = ns_http_date_parse(k_dates[i].in, strlen(k_dates[i].in), T0, &t);
    if (rc != NETSTASH_OK || t != k_dates[i].t)
      fail_msg("date %zu \"%s\": rc %d t %lld", i, k_dates[i].in, rc, (long long)t);
  }
  for (i = 0; i < NS_ARRAY_LEN(k_bad_dates); i++)
    if (ns_http_date_parse(k_bad_dates[i], strlen(k_bad_dates[i]), T0, &t) == NETSTASH_OK)
      fail_msg("bad date %zu \"%s\" accepted", i, k_bad_dates[i]);
  /* NULL and length bounds: reads only len bytes */
  assert_int_equal(ns_http_date_parse(NULL, 0, T0, &t), NETSTASH_E_PROTOCOL);
  assert_int_equal(ns_http_date_parse("Sun, 06 Nov 1994 08:49:37 GMT", 28, T0, &t),
                   NETSTASH_E_PROTOCOL);
  /* 2-digit years pivot on now: in 1990, "45" is 1945 (2045 is > 50 years
   * ahead) and "35" is 2035 */
  assert_int_equal(ns_http_date_parse("Monday, 13-Nov-45 08:49:37 GMT", 30, 631152000, &t),
                   NETSTASH_OK);
  assert_true(t < 0);
  assert_int_equal(ns_http_date_parse("Tuesday, 13-Nov-35 08:49:37 GMT", 31, 631152000, &t),
                   NETSTASH_OK);
  assert_true(t > 2000000000);
  /* format round trips */
  ns_http_date_format(784111777, buf);
  assert_string_equal(buf, "Sun, 06 Nov 1994 08:49:37 GMT");
  ns_http_date_format(0, buf);
  assert_string_equal(buf, "Thu, 01 Jan 1970 00:00:00 GMT");
  ns_http_date_format(-1, buf);
  assert_string_equal(buf, "Wed, 31 Dec 1969 23:59:59 GMT");
  for (t = -86400 * 400; t < INT64_C(253402300799); t += 7777777) {
    int64_t back;
    ns_http_date_format(t, buf);
    assert_int_equal(ns_http_date_parse(buf, strlen(buf), T0, &back), NETSTASH_OK);
    assert_int_equal(back, t);
  }
}

/* ================================================================== headers */

static void test_headers_basic(void **state) {
  ns_headers h, c;
  ns_buf b;
  size_t it = 0;
  int present;
  const ns_header_field *f;
  (void)state;
  ns_headers_init(&h, ns_mem_default());
  assert_int_equal(ns_headers_add_str(&h, "Accept", "text/html"), NETSTASH_OK);
  assert_int_equal(ns_headers_add_line(&h, "set-cookie:  a=1 \t", 18), NETSTASH_OK);
  assert_int_equal(ns_headers_add_str(&h, "Set-Cookie", "b=2"), NETSTASH_OK);
  assert_int_equal(ns_headers_add_str(&h, "X-Empty", ""), NETSTASH_OK);
  assert_int_equal(ns_headers_len(&h), 4);
  /* case-insensitive names, trimmed values, order kept */
  assert_string_equal(ns_headers_get(&h, "SET-COOKIE"), "a=1");
  assert_int_equal(ns_headers_count(&h, "Set-Cookie"), 2);
  assert_null(ns_headers_get(&h, "Missing"));
  f = ns_headers_next(&h, &it, "set-cookie");
  assert_string_equal(f->value, "a=1");
  assert_string_equal(f->name, "set-cookie"); /* stored as given */
  f = ns_headers_next(&h, &it, "set-cookie");
  assert_string_equal(f->value, "b=2");
  assert_null(ns_headers_next(&h, &it, "set-cookie"));
  /* combined value, RFC 9110 §5.3 */
  ns_buf_init(&b, ns_mem_default(), 1000);
  assert_int_equal(ns_headers_combined(&h, "Set-Cookie", &b, &present), NETSTASH_OK);
  assert_true(present);
  assert_string_equal(ns_buf_str(&b), "a=1, b=2");
  ns_buf_reset(&b);
  assert_int_equal(ns_headers_combined(&h, "Nope", &b, &present), NETSTASH_OK);
  assert_false(present);
  ns_buf_free(&b);
  /* invalid names and values are refused, nothing stored */
  assert_int_equal(ns_headers_add_str(&h, "Bad Name", "x"), NETSTASH_E_INVALID_ARGUMENT);
  assert_int_equal(ns_headers_add_str(&h, "", "x"), NETSTASH_E_INVALID_ARGUMENT);
  assert_int_equal(ns_headers_add_str(&h, "X", "a\r\nInjected: 1"),
                   NETSTASH_E_INVALID_ARGUMENT);
  assert_int_equal(ns_headers_add(&h, "X", 1, "a\0b", 3), NETSTASH_E_INVALID_ARGUMENT);
  assert_int_equal(ns_headers_add_line(&h, "NoColon", 7), NETSTASH_E_INVALID_ARGUMENT);
  assert_int_equal(ns_headers_add_line(&h, "Name : v", 8), NETSTASH_E_INVALID_ARGUMENT);
  assert_int_equal(ns_headers_len(&h), 4);
  /* obs-text is allowed in values */
  assert_int_equal(ns_headers_add_str(&h, "X-Latin", "caf\xe9"), NETSTASH_OK);
  /* set replaces all lines at the first one's position */
  assert_int_equal(ns_headers_set_str(&h, "set-cookie", "z=9"), NETSTASH_OK);
  assert_int_equal(ns_headers_count(&h, "Set-Cookie"), 1);
  assert_string_equal(h.f[1].value, "z=9");
  assert_int_equal(ns_headers_set_str(&h, "New", "v"), NETSTASH_OK);
  assert_string_equal(h.f[h.len - 1].name, "New");
  /* copy is deep */
  ns_headers_init(&c, ns_mem_default());
  assert_int_equal(ns_headers_copy(&c, &h), NETSTASH_OK);
  assert_int_equal(ns_headers_remove(&h, "accept"), 1);
  assert_string_equal(ns_headers_get(&c, "Accept"), "text/html");
  assert_int_equal(ns_headers_remove(&h, "accept"), 0);
  ns_headers_free(&h);
  ns_headers_free(&c);
  ns_headers_free(NULL);
}

/* Field bytes come from blocks that never move: every field stays intact
 * while later ones fill blocks, outgrow them (one value larger than a block)
 * and replace earlier ones; a decoded list takes more fields after it. */
static void test_headers_blocks(void **state) {
  ns_headers h, c, d;
  ns_buf b;
  char name[32], value[10001];
  const ns_header_field *first;
  size_t i, k;
  (void)state;
  ns_headers_init(&h, ns_mem_default());
  for (i = 0; i < 300; i++) {
    size_t vl = i == 150 ? sizeof(value) - 1 : i % 97;
    snprintf(name, sizeof(name), "X-F%zu", i);
    for (k = 0; k < vl; k++)
      value[k] = (char)('a' + (i + k) % 26);
    value[vl] = 0;
    assert_int_equal(ns_headers_add_str(&h, name, value), NETSTASH_OK);
  }
  first = &h.f[0];
  assert_string_equal(first->name, "X-F0");
  for (i = 0; i < 300; i++) {
    size_t vl = i == 150 ? sizeof(value) - 1 : i % 97;
    snprintf(name, sizeof(name), "X-F%zu", i);
    assert_string_equal(h.f[i].name, name);
    assert_int_equal(h.f[i].value_len, vl);
    for (k = 0; k < vl; k++)
      assert_int_equal(h.f[i].value[k], (char)('a' + (i + k) % 26));
    assert_int_equal(h.f[i].value[vl], 0);
  }
  /* replaced a hundred times: the last value wins, the others are intact */
  for (i = 0; i < 100; i++) {
    snprintf(value, sizeof(value), "v%zu", i);
    assert_int_equal(ns_headers_set_str(&h, "x-f7", value), NETSTASH_OK);
  }
  assert_string_equal(ns_headers_get(&h, "X-F7"), "v99");
  assert_string_equal(ns_headers_get(&h, "X-F6"), "ghijkl");
  assert_int_equal(ns_headers_remove(&h, "X-F150"), 1);
  assert_int_equal(ns_headers_len(&h), 299);
  /* a copy and a decoded list are whole, and take more fields */
  ns_headers_init(&c, ns_mem_default());
  assert_int_equal(ns_headers_copy(&c, &h), NETSTASH_OK);
  ns_buf_init(&b, ns_mem_default(), 1 << 20);
  assert_int_equal(ns_headers_encode(&h, &b), NETSTASH_OK);
  ns_headers_init(&d, ns_mem_default());
  assert_int_equal(ns_headers_decode(&d, b.data, b.len, NULL), NETSTASH_OK);
  for (i = 0; i < 50; i++)
    assert_int_equal(ns_headers_add_str(&d, "X-More", "after the decoded block"), NETSTASH_OK);
  assert_int_equal(ns_headers_len(&d), 349);
  for (i = 0; i < h.len; i++) {
    assert_string_equal(c.f[i].name, h.f[i].name);
    assert_string_equal(c.f[i].value, h.f[i].value);
    assert_string_equal(d.f[i].name, h.f[i].name);
    assert_string_equal(d.f[i].value, h.f[i].value);
  }
  assert_string_equal(d.f[348].value, "after the decoded block");
  /* reset: empty, then refilled past a block; the copy made before stays */
  ns_headers_reset(&d);
  assert_int_equal(ns_headers_len(&d), 0);
  assert_null(ns_headers_get(&d, "a"));
  for (k = 0; k < 100; k++) {
    snprintf(name, sizeof(name), "r%zu", k);
    assert_int_equal(ns_headers_add_str(&d, name, "refilled value"), NETSTASH_OK);
  }
  assert_int_equal(ns_headers_len(&d), 100);
  assert_string_equal(ns_headers_get(&d, "r0"), "refilled value");
  assert_string_equal(ns_headers_get(&d, "r99"), "refilled value");
  assert_string_equal(c.f[0].name, h.f[0].name);
  ns_buf_free(&b);
  ns_headers_free(&h);
  ns_headers_free(&c);
  ns_headers_free(&d);
}

static void roundtrip(const ns_headers *h) {
  ns_buf b;
  ns_headers d;
  size_t i, used;
  ns_buf_init(&b, ns_mem_default(), 1 << 24);
  assert_int_equal(ns_headers_encode(h, &b), NETSTASH_OK);
  ns_headers_init(&d, ns_mem_default());
  assert_int_equal(ns_headers_decode(&d, b.data, b.len, NULL), NETSTASH_OK);
  assert_int_equal(d.len, h->len);
  for (i = 0; i < h->len; i++) {
    assert_string_equal(d.f[i].name, h->f[i].name);
    assert_int_equal(d.f[i].value_len, h->f[i].value_len);
    assert_memory_equal(d.f[i].value, h->f[i].value, h->f[i].value_len);
  }
  /* the allocation-free walk yields the same fields */
  {
    ns_headers_walk w;
    const char *n, *v;
    size_t nl, vl, k = 0;
    assert_true(ns_headers_walk_begin(&w, b.data, b.len));
    while (ns_headers_walk_next(&w, &n, &nl, &v, &vl)) {
      assert_true(k < h->len);
      assert_int_equal(nl, h->f[k].name_len);
      assert_memory_equal(n, h->f[k].name, nl);
      assert_int_equal(vl, h->f[k].value_len);
      assert_memory_equal(v, h->f[k].value, vl);
      k++;
    }
    assert_false(w.bad);
    assert_int_equal(k, h->len);
  }
  /* every proper prefix is refused (truncation), never read past */
  for (i = 0; i < b.len; i++) {
    uint8_t *copy = malloc(i ? i : 1);
    ns_headers_walk w;
    const char *n, *v;
    size_t nl, vl;
    memcpy(copy, b.data, i);
    if (ns_headers_decode(&d, copy, i, NULL) != NETSTASH_E_DECODE)
      fail_msg("prefix of %zu/%zu bytes accepted", i, b.len);
    assert_int_equal(d.len, 0);
    if (ns_headers_walk_begin(&w, copy, i)) {
      while (ns_headers_walk_next(&w, &n, &nl, &v, &vl))
        ;
      if (!w.bad)
        fail_msg("walk accepted a prefix of %zu/%zu bytes", i, b.len);
    }
    free(copy);
  }
  /* trailing bytes: refused, unless the caller asks for the used length */
  assert_int_equal(ns_buf_append(&b, "\x07", 1), NETSTASH_OK);
  assert_int_equal(ns_headers_decode(&d, b.data, b.len, NULL), NETSTASH_E_DECODE);
  assert_int_equal(ns_headers_decode(&d, b.data, b.len, &used), NETSTASH_OK);
  assert_int_equal(used, b.len - 1);
  ns_headers_free(&d);
  ns_buf_free(&b);
}

static void test_headers_binary(void **state) {
  ns_headers h, d;
  ns_buf b;
  char big[300];
  size_t i;
  static const struct {
    const char *what;
    const uint8_t *blob;
    size_t len;
  } bad[] = {
      {"empty", (const uint8_t *)"", 0},
      {"version only", (const uint8_t *)"\x01", 1},
      {"unknown version", (const uint8_t *)"\x02\x00", 2},
      {"count too large for the blob", (const uint8_t *)"\x01\x05\x01" "a\x00", 5},
      {"name length past the end", (const uint8_t *)"\x01\x01\x09" "a\x00", 5},
      {"value length past the end", (const uint8_t *)"\x01\x01\x01" "a\x05" "b", 6},
      {"empty name", (const uint8_t *)"\x01\x01\x00\x01" "b", 5},
      {"name not a token", (const uint8_t *)"\x01\x01\x01" ":\x00", 5},
      {"CR in value", (const uint8_t *)"\x01\x01\x01" "a\x01\r", 6},
      {"NUL in value", (const uint8_t *)"\x01\x01\x01" "a\x01\x00", 6},
      {"untrimmed value", (const uint8_t *)"\x01\x01\x01" "a\x02 b", 7},
      {"non-minimal varint", (const uint8_t *)"\x01\x81\x00\x01" "a\x00", 6},
      {"overlong varint", (const uint8_t *)"\x01\xff\xff\xff\xff\xff\x01", 7},
      {"varint cut", (const uint8_t *)"\x01\x80", 2},
      {"too many fields", (const uint8_t *)"\x01\x81\x20", 3},
  };
  (void)state;
  hdrs(&h, "Content-Type: text/html\nETag: \"abc\"\nSet-Cookie: a=1\nSet-Cookie: b=2\n"
           "X-Empty:\nX-Bin: caf\xc3\xa9\tend");
  memset(big, 'v', sizeof(big) - 1);
  big[sizeof(big) - 1] = 0; /* a 299-byte value needs a 2-byte varint */
  assert_int_equal(ns_headers_add_str(&h, "X-Big", big), NETSTASH_OK);
  roundtrip(&h);
  ns_headers_free(&h);
  ns_headers_init(&h, ns_mem_default());
  roundtrip(&h); /* empty list */
  ns_headers_free(&h);

  ns_headers_init(&d, ns_mem_default());
  for (i = 0; i < NS_ARRAY_LEN(bad); i++) {
    uint8_t *copy = malloc(bad[i].len ? bad[i].len : 1);
    memcpy(copy, bad[i].blob, bad[i].len);
    if (ns_headers_decode(&d, copy, bad[i].len, NULL) != NETSTASH_E_DECODE)
      fail_msg("malformed blob accepted: %s", bad[i].what);
    assert_int_equal(d.len, 0);
    free(copy);
  }
  assert_int_equal(ns_headers_decode(&d, NULL, 5, NULL), NETSTASH_E_DECODE);
  /* the format is stable: a known blob */
  hdrs(&h, "A: b");
  ns_buf_init(&b, ns_mem_default(), 100);
  assert_int_equal(ns_headers_encode(&h, &b), NETSTASH_OK);
  assert_int_equal(b.len, 6);
  assert_memory_equal(b.data, "\x01\x01\x01" "A\x01" "b", 6);
  /* encode respects the buffer's cap and leaves it as it was */
  ns_buf_free(&b);
  ns_buf_init(&b, ns_mem_default(), 4);
  assert_int_equal(ns_headers_encode(&h, &b), NETSTASH_E_TOO_LARGE);
  assert_int_equal(b.len, 0);
  ns_buf_free(&b);
  ns_headers_free(&h);
  ns_headers_free(&d);
}

static void test_headers_alloc_failures(void **state) {
  ns_headers src, h;
  ns_buf b;
  long n;
  (void)state;
  hdrs(&src, "A: 1\nB: 2\nC: 3\nD: 4\nE: 5\nF: 6\nG: 7\nH: 8\nI: 9\nJ: 10");
  ns_buf_init(&b, ns_mem_default(), 1 << 20);
  assert_int_equal(ns_headers_encode(&src, &b), NETSTASH_OK);
  for (n = 0;; n++) {
    netstash_error e1, e2, e3;
    ns_headers c;
    fail_at = n;
    nallocs = 0;
    live = 0;
    ns_headers_init(&h, &fmem);
    ns_headers_init(&c, &fmem);
    e1 = ns_headers_decode(&h, b.data, b.len, NULL);
    e2 = ns_headers_copy(&c, &src);
    e3 = e2 == NETSTASH_OK ? ns_cache_merge_304(&c, &src) : NETSTASH_OK;
    assert_true(e1 == NETSTASH_OK || e1 == NETSTASH_E_NOMEM);
    assert_true(e2 == NETSTASH_OK || e2 == NETSTASH_E_NOMEM);
    assert_true(e3 == NETSTASH_OK || e3 == NETSTASH_E_NOMEM);
    if (e1 != NETSTASH_OK)
      assert_int_equal(h.len, 0);
    if (e3 != NETSTASH_OK)
      assert_int_equal(c.len, src.len); /* unchanged */
    ns_headers_free(&h);
    ns_headers_free(&c);
    assert_int_equal(live, 0);
    if (e1 == NETSTASH_OK && e2 == NETSTASH_OK && e3 == NETSTASH_OK)
      break;
  }
  fail_at = -1;
  ns_buf_free(&b);
  ns_headers_free(&src);
}

/* ============================================================ Cache-Control */

static void test_cache_control_parse(void **state) {
  static const struct {
    const char *v;
    int req;
    uint32_t flags; /* exactly these */
    int64_t max_age, other;
  } k[] = {
      {"max-age=600", 0, NS_CC_MAX_AGE, 600, 0},
      {"MAX-AGE=600", 0, NS_CC_MAX_AGE, 600, 0}, /* case-insensitive names */
      {"max-age=\"600\"", 0, NS_CC_MAX_AGE, 600, 0}, /* quoted form accepted (§5.2) */
      {"max-age = 600", 0, NS_CC_MAX_AGE, 600, 0},   /* leniency: OWS around = */
      {"max-age=abc", 0, NS_CC_MAX_AGE_INVALID, 0, 0},
      {"max-age=-1", 0, NS_CC_MAX_AGE_INVALID, 0, 0},
      {"max-age", 0, NS_CC_MAX_AGE_INVALID, 0, 0},
      {"max-age=60 junk", 0, NS_CC_MAX_AGE_INVALID, 0, 0},
      {"max-age=1, max-age=2", 0, NS_CC_MAX_AGE | NS_CC_MAX_AGE_INVALID, 1, 0},
      {"max-age=5, max-age=5", 0, NS_CC_MAX_AGE, 5, 0},
      {"max-age=99999999999", 0, NS_CC_MAX_AGE, NS_DELTA_SECONDS_MAX, 0},
      {"max-age=1, max-age=2", 1, NS_CC_MAX_AGE, 1, 0}, /* request: most restrictive */
      {"max-age=2, max-age=1", 1, NS_CC_MAX_AGE, 1, 0},
      {"max-age=x", 1, 0, 0, 0},                        /* request: ignored */
      {"s-maxage=10", 0, NS_CC_S_MAXAGE, 0, 0},
      {"no-store", 0, NS_CC_NO_STORE, 0, 0},
      {"no-cache", 0, NS_CC_NO_CACHE, 0, 0},
      /* qualified (§5.2.2.4): reusable without the listed fields */
      {"no-cache=\"Set-Cookie, X-A\"", 0, NS_CC_NO_CACHE_FIELDS, 0, 0},
      {"no-cache=Set-Cookie", 0, NS_CC_NO_CACHE_FIELDS, 0, 0},
      {"no-cache=\"\"", 0, NS_CC_NO_CACHE, 0, 0}, /* lists nothing: unqualified */
      {"no-cache=\"X-A\", no-cache", 0, NS_CC_NO_CACHE | NS_CC_NO_CACHE_FIELDS, 0, 0},
      {"no-cache=\"X-A\"", 1, NS_CC_NO_CACHE, 0, 0}, /* a request's: no-cache */
      {"must-revalidate", 0, NS_CC_MUST_REVALIDATE, 0, 0},
      {"proxy-revalidate", 0, NS_CC_PROXY_REVALIDATE, 0, 0},
      {"private", 0, NS_CC_PRIVATE, 0, 0},
      {"private=\"X-A\"", 0, NS_CC_PRIVATE, 0, 0},
      {"public", 0, NS_CC_PUBLIC, 0, 0},
      {"immutable", 0, NS_CC_IMMUTABLE, 0, 0},
      {"no-transform", 0, NS_CC_NO_TRANSFORM, 0, 0},
      {"must-understand", 0, NS_CC_MUST_UNDERSTAND, 0, 0},
      {"stale-while-revalidate=30", 0, NS_CC_SWR, 0, 30},
      {"stale-while-revalidate", 0, 0, 0, 0},
      {"stale-if-error=40", 0, NS_CC_SIE, 0, 40},
      {"stale-if-error=40, stale-if-error=20", 0, NS_CC_SIE, 0, 20},
      {"max-stale", 1, NS_CC_MAX_STALE | NS_CC_MAX_STALE_ANY, 0, 0},
      {"max-stale=10", 1, NS_CC_MAX_STALE, 0, 10},
      {"max-stale=bad", 1, 0, 0, 0},
      {"max-stale", 0, 0, 0, 0}, /* request-only directives ignored in responses */
      {"min-fresh=5, min-fresh=9", 1, NS_CC_MIN_FRESH, 0, 9},
      {"only-if-cached", 1, NS_CC_ONLY_IF_CACHED, 0, 0},
      {"only-if-cached", 0, 0, 0, 0},
      {"foo=\"a,b\", bar, public", 0, NS_CC_PUBLIC, 0, 0}, /* extensions ignored */
      {" , ,,public,", 0, NS_CC_PUBLIC, 0, 0},
      {"=, \"x\", public", 0, NS_CC_PUBLIC, 0, 0},
      {"max-age=\"6\\0\"", 0, NS_CC_MAX_AGE_INVALID, 0, 0},
      {"", 0, 0, 0, 0},
  };
  size_t i;
  (void)state;
  for (i = 0; i < NS_ARRAY_LEN(k); i++) {
    ns_cache_control cc;
    int64_t other;
    ns_cache_control_init(&cc);
    ns_cache_control_parse(&cc, k[i].v, strlen(k[i].v), k[i].req);
    other = (cc.flags & NS_CC_SWR) ? cc.swr_s
            : (cc.flags & NS_CC_SIE) ? cc.sie_s
            : (cc.flags & NS_CC_MIN_FRESH) ? cc.min_fresh_s
            : (cc.flags & NS_CC_MAX_STALE) ? cc.max_stale_s
                                           : 0;
    if (cc.flags != k[i].flags || ((cc.flags & NS_CC_MAX_AGE) && cc.max_age_s != k[i].max_age) ||
        other != k[i].other)
      fail_msg("row %zu \"%s\": flags %#x max-age %lld other %lld", i, k[i].v, cc.flags,
               (long long)cc.max_age_s, (long long)other);
  }
}

static void test_cache_control_headers(void **state) {
  ns_headers h;
  ns_cache_control cc;
  (void)state;
  /* several lines combine; duplicates across lines count as duplicates */
  hdrs(&h, "Cache-Control: max-age=10\nCache-Control: no-transform\ncache-control: max-age=20");
  ns_cache_control_from_headers(&cc, &h, 0);
  assert_true(cc.flags & NS_CC_NO_TRANSFORM);
  assert_true(cc.flags & NS_CC_MAX_AGE_INVALID);
  ns_headers_free(&h);
  /* Pragma: no-cache counts only in a request without Cache-Control (§5.4) */
  hdrs(&h, "Pragma: no-cache");
  ns_cache_control_from_headers(&cc, &h, 1);
  assert_true(cc.flags & NS_CC_NO_CACHE);
  assert_true(cc.flags & NS_CC_PRAGMA_NO_CACHE);
  ns_cache_control_from_headers(&cc, &h, 0);
  assert_false(cc.flags & NS_CC_NO_CACHE);
  ns_headers_free(&h);
  hdrs(&h, "Pragma: no-cache\nCache-Control: max-age=5");
  ns_cache_control_from_headers(&cc, &h, 1);
  assert_false(cc.flags & NS_CC_NO_CACHE);
  ns_headers_free(&h);
  hdrs(&h, "Pragma: x, no-cache=1");
  ns_cache_control_from_headers(&cc, &h, 1);
  assert_false(cc.flags & NS_CC_NO_CACHE);
  ns_headers_free(&h);
  ns_cache_control_from_headers(&cc, NULL, 1);
  assert_int_equal(cc.flags, 0);
}

/* ================================================================ storable */

static void test_storable(void **state) {
  static const struct {
    const char *method;
    int status;
    const char *req, *resp;
    int storable;
  } k[] = {
      {"GET", 200, NULL, NULL, 1},                         /* heuristically cacheable */
      {"GET", 203, NULL, NULL, 1},
      {"GET", 204, NULL, NULL, 1},
      {"GET", 300, NULL, NULL, 1},
      {"GET", 301, NULL, NULL, 1},                         /* permanent redirects */
      {"GET", 308, NULL, NULL, 1},
      {"GET", 404, NULL, NULL, 1},                         /* 404/410 */
      {"GET", 405, NULL, NULL, 1},
      {"GET", 410, NULL, NULL, 1},
      {"GET", 414, NULL, NULL, 1},
      {"GET", 501, NULL, NULL, 1},
      {"GET", 302, NULL, NULL, 0},                         /* needs explicit freshness */
      {"GET", 302, NULL, "Cache-Control: max-age=60", 1},
      {"GET", 307, NULL, "Expires: {T+60}", 1},
      {"GET", 303, NULL, "Cache-Control: public", 1},
      {"GET", 500, NULL, "Cache-Control: private", 1},     /* private: ok here */
      {"GET", 500, NULL, NULL, 0},
      {"GET", 503, NULL, "Cache-Control: s-maxage=60", 0}, /* shared-only */
      {"GET", 302, NULL, "Cache-Control: max-age=x", 1},   /* stored, but stale */
      {"GET", 206, NULL, "Cache-Control: max-age=60", 0},  /* no Content-Range */
      {"GET", 206, NULL, "Cache-Control: max-age=60\nContent-Range: bytes 0-4/10", 1},
      {"GET", 206, NULL, "Content-Range: bytes 0-4/10", 1}, /* heuristically cacheable */
      {"GET", 206, NULL, "Content-Range: bytes 0-4/*", 0},  /* length unknown */
      {"GET", 206, NULL, "Content-Range: bytes 5-4/10", 0},
      {"GET", 206, NULL, "Content-Range: bytes 0-10/10", 0},
      {"GET", 206, NULL, "Content-Range: bytes 0-4/10\nContent-Range: bytes 0-4/10", 0},
      {"GET", 206, NULL, "Content-Range: bytes 0-4/10\nContent-Encoding: gzip", 0},
      {"GET", 206, NULL, "Content-Range: bytes 0-4/10\nContent-Encoding: identity", 1},
      {"GET", 304, NULL, "Cache-Control: max-age=60", 0},
      {"GET", 100, NULL, NULL, 0},
      {"GET", 200, NULL, "Cache-Control: no-store", 0},
      {"GET", 200, NULL, "Cache-Control: max-age=60, NO-STORE", 0},
      {"GET", 200, "Cache-Control: no-store", NULL, 0},
      {"GET", 200, NULL, "Cache-Control: no-cache", 1},    /* stored, revalidated */
      {"GET", 200, NULL, "Vary: *", 0},
      {"GET", 200, NULL, "Vary: Accept, *", 0},
      {"GET", 200, NULL, "Vary: Accept", 1},
      {"GET", 200, "Authorization: Bearer x", NULL, 1},    /* private cache: §3.5 n/a */
      {"GET", 200, NULL, "Cache-Control: must-understand, no-store", 1}, /* §5.2.2.3 */
      {"GET", 299, NULL, "Cache-Control: must-understand, no-store, max-age=9", 0},
      {"GET", 599, NULL, "Cache-Control: must-understand, max-age=5", 0},
      {"POST", 200, NULL, "Cache-Control: max-age=60", 0},
      {"HEAD", 200, NULL, "Cache-Control: max-age=60", 0},
      {"get", 200, NULL, NULL, 0},                         /* methods are case-sensitive */
  };
  size_t i;
  (void)state;
  for (i = 0; i < NS_ARRAY_LEN(k); i++) {
    ns_headers rq, rs;
    ns_cache_request req;
    const char *why;
    int got;
    hdrs(&rq, k[i].req);
    hdrs(&rs, k[i].resp);
    req.method = k[i].method;
    req.url = "https://example.com/";
    req.headers = &rq;
    got = ns_cache_storable(&req, k[i].status, &rs, &why);
    if (got != k[i].storable)
      fail_msg("row %zu (%s %d %s): storable %d, %s", i, k[i].method, k[i].status,
               k[i].resp ? k[i].resp : "", got, why);
    assert_non_null(why);
    ns_headers_free(&rq);
    ns_headers_free(&rs);
  }
}

static void test_prepare_for_storage(void **state) {
  ns_headers h;
  char d[NS_HTTP_DATE_LEN];
  (void)state;
  hdrs(&h, "Connection: close, X-Hop\nX-Hop: 1\nKeep-Alive: timeout=5\n"
           "Transfer-Encoding: chunked\nSet-Cookie: a=1\nset-cookie2: b\nTE: trailers\n"
           "Upgrade: h2c\nProxy-Connection: keep-alive\nTrailer: X\nContent-Type: text/html\n"
           "ETag: \"1\"");
  assert_int_equal(ns_cache_prepare_for_storage(&h, MS(T0) + 999), NETSTASH_OK);
  assert_int_equal(ns_headers_len(&h), 3);
  assert_string_equal(h.f[0].name, "Content-Type");
  assert_string_equal(h.f[1].name, "ETag");
  ns_http_date_format(T0, d); /* Date added from the response time (§6.6.1) */
  assert_string_equal(ns_headers_get(&h, "Date"), d);
  ns_headers_free(&h);
  hdrs(&h, "Date: {T-5}");
  assert_int_equal(ns_cache_prepare_for_storage(&h, MS(T0)), NETSTASH_OK);
  ns_http_date_format(T0 - 5, d); /* kept */
  assert_string_equal(ns_headers_get(&h, "Date"), d);
  assert_int_equal(ns_headers_len(&h), 1);
  ns_headers_free(&h);
  /* the fields a qualified no-cache lists are not stored (§5.2.2.4) */
  hdrs(&h, "Date: {T-5}\nCache-Control: max-age=60, no-cache=\"X-A, x-b\"\nX-A: 1\nX-B: 2\n"
           "X-C: 3\nX-A: 4");
  assert_int_equal(ns_cache_prepare_for_storage(&h, MS(T0)), NETSTASH_OK);
  assert_int_equal(ns_headers_len(&h), 3);
  assert_null(ns_headers_get(&h, "X-A"));
  assert_null(ns_headers_get(&h, "X-B"));
  assert_string_equal(ns_headers_get(&h, "X-C"), "3");
  ns_headers_free(&h);
  /* ... but never those the cache rests on (a merge stays idempotent) */
  hdrs(&h, "Date: {T-5}\nCache-Control: max-age=60, no-cache=\"Cache-Control, Content-Encoding, "
           "Vary, X-A\"\nContent-Encoding: gzip\nVary: Accept-Encoding\nX-A: 1");
  assert_int_equal(ns_cache_prepare_for_storage(&h, MS(T0)), NETSTASH_OK);
  assert_int_equal(ns_headers_len(&h), 4);
  assert_null(ns_headers_get(&h, "X-A"));
  assert_string_equal(ns_headers_get(&h, "Content-Encoding"), "gzip");
  assert_string_equal(ns_headers_get(&h, "Vary"), "Accept-Encoding");
  ns_headers_free(&h);
}

/* ================================================================ decisions */

typedef struct decide_case {
  const char *name;
  int status;
  const char *resp; /* stored response fields */
  const char *req;  /* new request fields */
  int64_t req_time, resp_time, now; /* ms relative to T0 */
  ns_cache_verdict verdict;
  int sie;            /* expected stale_if_error */
  const char *reason; /* expected prefix of the reason, or NULL */
} decide_case;

#define D_FRESH NS_CACHE_FRESH
#define D_SWR NS_CACHE_STALE_WHILE_REVALIDATE
#define D_REVAL NS_CACHE_REVALIDATE
#define D_MUST NS_CACHE_MUST_REVALIDATE
#define D_MISS NS_CACHE_MISS
#define D_504 NS_CACHE_GATEWAY_TIMEOUT

static const decide_case k_decide[] = {
    /* ---- freshness from max-age (§4.2.1) and the strict boundary (§4.2) */
    {"max-age fresh", 200, "Date: {T+0}\nCache-Control: max-age=600", NULL, 0, 0, MS(12), D_FRESH,
     0, "fresh: max-age=600, age 12s"},
    {"max-age 1ms before", 200, "Date: {T+0}\nCache-Control: max-age=600", NULL, 0, 0,
     MS(600) - 1, D_FRESH, 0, NULL},
    {"max-age at boundary", 200, "Date: {T+0}\nCache-Control: max-age=600", NULL, 0, 0, MS(600),
     D_REVAL, 0, "revalidate: stale"},
    {"max-age=0", 200, "Date: {T+0}\nCache-Control: max-age=0", NULL, 0, 0, 0, D_REVAL, 0, NULL},
    {"max-age beats Expires", 200, "Date: {T+0}\nCache-Control: max-age=10\nExpires: {T+1000}",
     NULL, 0, 0, MS(20), D_REVAL, 0, NULL},
    {"max-age beats past Expires", 200, "Date: {T+0}\nCache-Control: max-age=100\nExpires: {T-1}",
     NULL, 0, 0, MS(20), D_FRESH, 0, NULL},
    {"s-maxage ignored", 200, "Date: {T+0}\nCache-Control: s-maxage=0, max-age=60", NULL, 0, 0,
     MS(30), D_FRESH, 0, NULL},
    {"s-maxage alone gives nothing", 200, "Date: {T+0}\nCache-Control: s-maxage=600", NULL, 0,
     0, MS(30), D_REVAL, 0, NULL},
    {"invalid max-age: stale despite Expires", 200,
     "Date: {T+0}\nCache-Control: max-age=ten\nExpires: {T+1000}", NULL, 0, 0, MS(1), D_REVAL, 0,
     "revalidate: stale, invalid freshness"},
    {"conflicting max-age: stale", 200, "Date: {T+0}\nCache-Control: max-age=100, max-age=200",
     NULL, 0, 0, MS(1), D_REVAL, 0, NULL},
    /* ---- Expires − Date */
    {"Expires fresh", 200, "Date: {T+0}\nExpires: {T+100}", NULL, 0, 0, MS(99), D_FRESH, 0,
     "fresh: Expires (lifetime 100s)"},
    {"Expires boundary", 200, "Date: {T+0}\nExpires: {T+100}", NULL, 0, 0, MS(100), D_REVAL, 0,
     NULL},
    {"Expires relative to Date, not clock", 200, "Date: {T+1000}\nExpires: {T+1100}", NULL, 0,
     0, MS(150), D_REVAL, 0, "revalidate: stale, Expires (lifetime 100s), age 150s"},
    {"Expires without Date: response time", 200, "Expires: {T+100}", NULL, 0, 0, MS(99), D_FRESH,
     0, NULL},
    {"Expires in the past", 200, "Date: {T+0}\nExpires: {T-10}", NULL, 0, 0, 0, D_REVAL, 0, NULL},
    {"invalid Expires = expired (§5.3)", 200, "Date: {T+0}\nExpires: 0", NULL, 0, 0, 0, D_REVAL,
     0, "revalidate: stale, invalid freshness"},
    /* not an HTTP-date, read as the cookie-date algorithm reads one (RFC
     * 9110 §5.6.7's robustness, as Chromium): T0 + 100 s each */
    {"Expires without the comma", 200, "Date: {T+0}\nExpires: Tue 14 Nov 2023 22:15:00 GMT", NULL,
     0, 0, MS(99), D_FRESH, 0, "fresh: Expires (lifetime 100s)"},
    {"Expires with dashes, capitals, UTC", 200,
     "Date: {T+0}\nExpires: Tue, 14-NOV-2023 22:15:00 UTC", NULL, 0, 0, MS(100), D_REVAL, 0,
     "revalidate: stale, Expires (lifetime 100s)"},
    {"Expires with a two-digit year", 200, "Date: {T+0}\nExpires: Tue, 14 Nov 23 22:15:00 GMT",
     NULL, 0, 0, MS(99), D_FRESH, 0, "fresh: Expires (lifetime 100s)"},
    {"Expires -1 stays invalid", 200, "Date: {T+0}\nExpires: -1", NULL, 0, 0, 0, D_REVAL, 0,
     "revalidate: stale, invalid freshness"},
    {"Date read leniently", 200, "Date: Tue 14 Nov 2023 22:13:20 GMT\nExpires: {T+100}", NULL,
     0, 0, MS(99), D_FRESH, 0, "fresh: Expires (lifetime 100s)"},
    {"conflicting Expires lines", 200, "Date: {T+0}\nExpires: {T+100}\nExpires: {T+200}", NULL,
     0, 0, MS(1), D_REVAL, 0, NULL},
    {"identical Expires lines", 200, "Date: {T+0}\nExpires: {T+100}\nExpires: {T+100}", NULL, 0,
     0, MS(1), D_FRESH, 0, NULL},
    {"invalid Date: response time used", 200, "Date: yesterday\nExpires: {T+100}", NULL, 0, 0,
     MS(99), D_FRESH, 0, NULL},
    /* ---- heuristics (§4.2.2): 10% of Date − Last-Modified, capped at 7 days */
    {"heuristic 10%", 200, "Date: {T+0}\nLast-Modified: {T-1000}", NULL, 0, 0, MS(99), D_FRESH,
     0, "fresh: heuristic from Last-Modified (lifetime 100s)"},
    {"heuristic boundary", 200, "Date: {T+0}\nLast-Modified: {T-1000}", NULL, 0, 0, MS(100),
     D_REVAL, 0, NULL},
    {"heuristic cap", 200, "Date: {T+0}\nLast-Modified: {T-100000000}", NULL, 0, 0,
     MS(604800) - 1, D_FRESH, 0, NULL},
    {"heuristic cap boundary", 200, "Date: {T+0}\nLast-Modified: {T-100000000}", NULL, 0, 0,
     MS(604800), D_REVAL, 0, NULL},
    {"heuristic 404", 404, "Date: {T+0}\nLast-Modified: {T-1000}", NULL, 0, 0, MS(50), D_FRESH, 0,
     NULL},
    {"no heuristic for 302", 302, "Date: {T+0}\nLast-Modified: {T-1000}", NULL, 0, 0, MS(1),
     D_REVAL, 0, "revalidate: stale, no freshness information"},
    {"no heuristic for 500", 500, "Date: {T+0}\nLast-Modified: {T-1000}", NULL, 0, 0, MS(1),
     D_REVAL, 0, NULL},
    {"heuristic for private 302", 302, "Date: {T+0}\nLast-Modified: {T-1000}\n"
     "Cache-Control: private", NULL, 0, 0, MS(1), D_FRESH, 0, NULL},
    {"heuristic for public 500", 500, "Date: {T+0}\nLast-Modified: {T-1000}\n"
     "Cache-Control: public", NULL, 0, 0, MS(1), D_FRESH, 0, NULL},
    {"no heuristic with Expires", 200, "Date: {T+0}\nLast-Modified: {T-100000}\nExpires: {T+1}",
     NULL, 0, 0, MS(2), D_REVAL, 0, NULL},
    {"Last-Modified after Date", 200, "Date: {T+0}\nLast-Modified: {T+1000}", NULL, 0, 0, MS(1),
     D_REVAL, 0, NULL},
    {"nothing to go on", 200, "Date: {T+0}", NULL, 0, 0, 0, D_REVAL, 0,
     "revalidate: stale, no freshness information"},
    {"301 permanent", 301, "Date: {T+0}\nLocation: /x", NULL, 0, 0, MS(86400), D_FRESH, 0,
     "fresh: permanent-status heuristic"},
    {"308 permanent", 308, "Date: {T+0}", NULL, 0, 0, MS(604800) - 1, D_FRESH, 0, NULL},
    {"410 permanent", 410, "Date: {T+0}", NULL, 0, 0, MS(604800), D_REVAL, 0, NULL},
    {"301 explicit max-age=0 wins", 301, "Date: {T+0}\nCache-Control: max-age=0", NULL, 0, 0, 0,
     D_REVAL, 0, NULL},
    {"404 without Last-Modified", 404, "Date: {T+0}", NULL, 0, 0, MS(1), D_REVAL, 0, NULL},
    /* ---- age (§4.2.3) */
    {"Age header", 200, "Date: {T+0}\nAge: 100\nCache-Control: max-age=150", NULL, 0, 0,
     MS(49), D_FRESH, 0, "fresh: max-age=150, age 149s"},
    {"Age header boundary", 200, "Date: {T+0}\nAge: 100\nCache-Control: max-age=150", NULL, 0, 0,
     MS(50), D_REVAL, 0, NULL},
    {"response delay", 200, "Date: {T+0}\nCache-Control: max-age=30", NULL, -MS(10), 0, MS(19),
     D_FRESH, 0, "fresh: max-age=30, age 29s"},
    {"response delay boundary", 200, "Date: {T+0}\nCache-Control: max-age=30", NULL, -MS(10), 0,
     MS(20), D_REVAL, 0, NULL},
    {"apparent age", 200, "Date: {T-20}\nCache-Control: max-age=30", NULL, 0, 0, MS(9), D_FRESH,
     0, "fresh: max-age=30, age 29s"},
    {"apparent age boundary", 200, "Date: {T-20}\nCache-Control: max-age=30", NULL, 0, 0, MS(10),
     D_REVAL, 0, NULL},
    {"corrected: Age+delay beats apparent", 200,
     "Date: {T-5}\nAge: 10\nCache-Control: max-age=20", NULL, -MS(2), 0, MS(7), D_FRESH, 0,
     "fresh: max-age=20, age 19s"},
    {"corrected: apparent beats Age+delay", 200,
     "Date: {T-15}\nAge: 1\nCache-Control: max-age=20", NULL, -MS(2), 0, MS(4), D_FRESH, 0,
     "fresh: max-age=20, age 19s"},
    {"Date in the future: apparent age 0", 200, "Date: {T+50}\nCache-Control: max-age=20", NULL,
     0, 0, MS(19), D_FRESH, 0, NULL},
    {"invalid Age ignored", 200, "Date: {T+0}\nAge: old\nCache-Control: max-age=20", NULL, 0, 0,
     MS(19), D_FRESH, 0, NULL},
    {"huge Age", 200, "Date: {T+0}\nAge: 99999999999999\nCache-Control: max-age=20", NULL, 0, 0,
     0, D_REVAL, 0, NULL},
    {"clock went backwards", 200, "Date: {T+0}\nCache-Control: max-age=20", NULL, 0, 0, -MS(100),
     D_FRESH, 0, "fresh: max-age=20, age 0s"},
    /* ---- response directives */
    {"no-cache fresh", 200, "Date: {T+0}\nCache-Control: max-age=600, no-cache", NULL, 0, 0, 0,
     D_MUST, 0, "must-revalidate: response no-cache"},
    {"qualified no-cache", 200, "Date: {T+0}\nCache-Control: max-age=600, no-cache=\"X-A\"",
     NULL, 0, 0, 0, D_FRESH, 0, "fresh: max-age=600"},
    {"qualified and plain no-cache", 200,
     "Date: {T+0}\nCache-Control: max-age=600, no-cache=\"X-A\"\nCache-Control: no-cache",
     NULL, 0, 0, 0, D_MUST, 0, NULL},
    {"must-revalidate fresh", 200, "Date: {T+0}\nCache-Control: max-age=60, must-revalidate",
     NULL, 0, 0, MS(59), D_FRESH, 0, NULL},
    {"must-revalidate stale", 200,
     "Date: {T+0}\nCache-Control: max-age=60, must-revalidate, stale-if-error=600", NULL, 0, 0,
     MS(60), D_MUST, 0, "must-revalidate: stale"},
    {"must-revalidate beats SWR", 200,
     "Date: {T+0}\nCache-Control: max-age=60, must-revalidate, stale-while-revalidate=60", NULL,
     0, 0, MS(61), D_MUST, 0, NULL},
    {"proxy-revalidate ignored", 200, "Date: {T+0}\nCache-Control: max-age=60, proxy-revalidate",
     NULL, 0, 0, MS(61), D_REVAL, 0, NULL},
    {"private fresh", 200, "Date: {T+0}\nCache-Control: private, max-age=60", NULL, 0, 0, MS(30),
     D_FRESH, 0, NULL},
    /* ---- stale-while-revalidate (RFC 5861 §3): window age < lifetime + N */
    {"SWR at staleness 0", 200, "Date: {T+0}\nCache-Control: max-age=60, stale-while-revalidate=30",
     NULL, 0, 0, MS(60), D_SWR, 0, "stale-while-revalidate: stale by 0s, window 30s"},
    {"SWR last ms", 200, "Date: {T+0}\nCache-Control: max-age=60, stale-while-revalidate=30",
     NULL, 0, 0, MS(90) - 1, D_SWR, 0, NULL},
    {"SWR window end", 200, "Date: {T+0}\nCache-Control: max-age=60, stale-while-revalidate=30",
     NULL, 0, 0, MS(90), D_REVAL, 0, NULL},
    {"SWR fresh is fresh", 200,
     "Date: {T+0}\nCache-Control: max-age=60, stale-while-revalidate=30", NULL, 0, 0, MS(59),
     D_FRESH, 0, NULL},
    {"SWR not on reload", 200, "Date: {T+0}\nCache-Control: max-age=60, stale-while-revalidate=30",
     "Cache-Control: max-age=0", 0, 0, MS(61), D_REVAL, 0, NULL},
    {"SWR not with no-cache", 200,
     "Date: {T+0}\nCache-Control: max-age=60, stale-while-revalidate=30, no-cache", NULL, 0, 0,
     MS(61), D_MUST, 0, NULL},
    /* ---- stale-if-error (RFC 5861 §4) */
    {"SIE inside window", 200, "Date: {T+0}\nCache-Control: max-age=60, stale-if-error=30", NULL,
     0, 0, MS(90) - 1, D_REVAL, 1, NULL},
    {"SIE window end", 200, "Date: {T+0}\nCache-Control: max-age=60, stale-if-error=30", NULL, 0,
     0, MS(90), D_REVAL, 0, NULL},
    {"SIE from the request", 200, "Date: {T+0}\nCache-Control: max-age=60",
     "Cache-Control: stale-if-error=100", 0, 0, MS(159), D_REVAL, 1, NULL},
    {"SIE request window end", 200, "Date: {T+0}\nCache-Control: max-age=60",
     "Cache-Control: stale-if-error=100", 0, 0, MS(160), D_REVAL, 0, NULL},
    {"no SIE: no permission", 200, "Date: {T+0}\nCache-Control: max-age=60", NULL, 0, 0, MS(61),
     D_REVAL, 0, NULL},
    {"no SIE on reload of fresh", 200, "Date: {T+0}\nCache-Control: max-age=60, stale-if-error=99",
     "Cache-Control: max-age=0", 0, 0, MS(1), D_REVAL, 0, NULL},
    {"no SIE with no-cache", 200, "Date: {T+0}\nCache-Control: no-cache, stale-if-error=99", NULL,
     0, 0, MS(1), D_MUST, 0, NULL},
    /* ---- request directives (§5.2.1) */
    {"request no-cache", 200, "Date: {T+0}\nCache-Control: max-age=600", "Cache-Control: no-cache",
     0, 0, MS(1), D_MUST, 0, "must-revalidate: request no-cache"},
    {"request Pragma: no-cache", 200, "Date: {T+0}\nCache-Control: max-age=600",
     "Pragma: no-cache", 0, 0, MS(1), D_MUST, 0, "must-revalidate: request Pragma: no-cache"},
    {"Pragma ignored with Cache-Control", 200, "Date: {T+0}\nCache-Control: max-age=600",
     "Pragma: no-cache\nCache-Control: max-age=100", 0, 0, MS(1), D_FRESH, 0, NULL},
    {"request max-age=0 (reload)", 200, "Date: {T+0}\nCache-Control: max-age=600",
     "Cache-Control: max-age=0", 0, 0, 0, D_REVAL, 0, "revalidate: request max-age=0"},
    {"request max-age ok", 200, "Date: {T+0}\nCache-Control: max-age=600",
     "Cache-Control: max-age=10", 0, 0, MS(10), D_FRESH, 0, NULL},
    {"request max-age too old", 200, "Date: {T+0}\nCache-Control: max-age=600",
     "Cache-Control: max-age=10", 0, 0, MS(10) + 1, D_REVAL, 0, NULL},
    {"min-fresh satisfied", 200, "Date: {T+0}\nCache-Control: max-age=600",
     "Cache-Control: min-fresh=100", 0, 0, MS(500), D_FRESH, 0, NULL},
    {"min-fresh not satisfied", 200, "Date: {T+0}\nCache-Control: max-age=600",
     "Cache-Control: min-fresh=100", 0, 0, MS(500) + 1, D_REVAL, 0,
     "revalidate: request min-fresh=100"},
    {"max-stale=10 at 10s stale", 200, "Date: {T+0}\nCache-Control: max-age=60",
     "Cache-Control: max-stale=10", 0, 0, MS(70), D_FRESH, 0, "fresh: stale by 10s"},
    {"max-stale=10 at 10.001s", 200, "Date: {T+0}\nCache-Control: max-age=60",
     "Cache-Control: max-stale=10", 0, 0, MS(70) + 1, D_REVAL, 0, NULL},
    {"max-stale any", 200, "Date: {T+0}\nCache-Control: max-age=60", "Cache-Control: max-stale",
     0, 0, MS(1000000), D_FRESH, 0, NULL},
    {"max-stale vs must-revalidate", 200, "Date: {T+0}\nCache-Control: max-age=60, must-revalidate",
     "Cache-Control: max-stale", 0, 0, MS(61), D_MUST, 0, NULL},
    {"max-stale vs request max-age", 200, "Date: {T+0}\nCache-Control: max-age=60",
     "Cache-Control: max-stale, max-age=30", 0, 0, MS(61), D_REVAL, 0, NULL},
    /* ---- immutable (RFC 8246) */
    {"immutable on reload", 200, "Date: {T+0}\nCache-Control: max-age=600, immutable",
     "Cache-Control: max-age=0", 0, 0, MS(5), D_FRESH, 0, "fresh: immutable"},
    {"immutable on force reload", 200, "Date: {T+0}\nCache-Control: max-age=600, immutable",
     "Cache-Control: no-cache", 0, 0, MS(5), D_MUST, 0, NULL},
    {"immutable once stale", 200, "Date: {T+0}\nCache-Control: max-age=600, immutable",
     "Cache-Control: max-age=0", 0, 0, MS(600), D_REVAL, 0, NULL},
    /* ---- only-if-cached (§5.2.1.7) */
    {"only-if-cached fresh", 200, "Date: {T+0}\nCache-Control: max-age=60",
     "Cache-Control: only-if-cached", 0, 0, MS(1), D_FRESH, 0, NULL},
    {"only-if-cached stale", 200, "Date: {T+0}\nCache-Control: max-age=60",
     "Cache-Control: only-if-cached", 0, 0, MS(61), D_504, 0, "gateway-timeout: only-if-cached"},
    {"only-if-cached + max-stale", 200, "Date: {T+0}\nCache-Control: max-age=60",
     "Cache-Control: only-if-cached, max-stale", 0, 0, MS(61), D_FRESH, 0, NULL},
    {"only-if-cached SWR", 200, "Date: {T+0}\nCache-Control: max-age=60, stale-while-revalidate=9",
     "Cache-Control: only-if-cached", 0, 0, MS(61), D_SWR, 0, NULL},
    {"only-if-cached no-cache", 200, "Date: {T+0}\nCache-Control: no-cache",
     "Cache-Control: only-if-cached", 0, 0, MS(1), D_504, 0, NULL},
    /* ---- misses */
    {"request no-store bypasses", 200, "Date: {T+0}\nCache-Control: max-age=60",
     "Cache-Control: no-store", 0, 0, MS(1), D_MISS, 0, "miss: request no-store"},
    {"Vary mismatch", 200, "Date: {T+0}\nCache-Control: max-age=60\nVary: Accept-Language",
     "Accept-Language: fr", 0, 0, MS(1), D_MISS, 0, "miss: Vary mismatch"},
    {"Vary star", 200, "Date: {T+0}\nCache-Control: max-age=60\nVary: *", NULL, 0, 0, MS(1),
     D_MISS, 0, "miss: Vary: *"},
};

static void run_decide(const decide_case *c, const char *method) {
  ns_headers rs, rq;
  ns_cache_stored st;
  ns_cache_request req;
  ns_cache_decision d;
  hdrs(&rs, c->resp);
  hdrs(&rq, c->req);
  memset(&st, 0, sizeof(st));
  st.status = c->status;
  st.headers = &rs;
  st.vary_request = NULL;
  st.request_time_ms = MS(T0) + c->req_time;
  st.response_time_ms = MS(T0) + c->resp_time;
  req.method = method;
  req.url = "https://example.com/a";
  req.headers = &rq;
  ns_cache_decide(NULL, &req, &st, MS(T0) + c->now, &d);
  if (d.verdict != c->verdict || d.stale_if_error != c->sie ||
      (c->reason && strncmp(d.reason, c->reason, strlen(c->reason)) != 0))
    fail_msg("\"%s\": got %s sie=%d \"%s\", want %s sie=%d \"%s\"", c->name,
             ns_cache_verdict_name(d.verdict), d.stale_if_error, d.reason,
             ns_cache_verdict_name(c->verdict), c->sie, c->reason ? c->reason : "");
  assert_true(strlen(d.reason) > 0);
  ns_headers_free(&rs);
  ns_headers_free(&rq);
}

static void test_decide_table(void **state) {
  size_t i;
  (void)state;
  for (i = 0; i < NS_ARRAY_LEN(k_decide); i++) {
    run_decide(&k_decide[i], "GET");
    run_decide(&k_decide[i], "HEAD"); /* HEAD is answered like GET */
  }
}

static void test_decide_misc(void **state) {
  ns_headers rs, rq;
  ns_cache_stored st;
  ns_cache_request req;
  ns_cache_decision d;
  ns_cache_policy pol;
  ns_cache_fresh_source src;
  (void)state;
  hdrs(&rs, "Date: {T+0}\nCache-Control: max-age=60");
  hdrs(&rq, NULL);
  memset(&st, 0, sizeof(st));
  st.status = 200;
  st.headers = &rs;
  st.request_time_ms = st.response_time_ms = MS(T0);
  req.method = "POST";
  req.url = "https://example.com/";
  req.headers = &rq;
  ns_cache_decide(NULL, &req, &st, MS(T0), &d);
  assert_int_equal(d.verdict, NS_CACHE_MISS);
  req.method = "GET";
  ns_cache_decide(NULL, &req, NULL, MS(T0), &d);
  assert_int_equal(d.verdict, NS_CACHE_MISS);
  assert_string_equal(d.reason, "miss: nothing stored");
  req.headers = NULL; /* no request fields at all */
  ns_cache_decide(NULL, &req, &st, MS(T0) + 1000, &d);
  assert_int_equal(d.verdict, NS_CACHE_FRESH);
  assert_int_equal(d.lifetime_ms, 60000);
  assert_int_equal(d.age_ms, 1000);
  assert_int_equal(d.source, NS_CACHE_FRESH_MAX_AGE);
  assert_false(d.stale);
  ns_headers_free(&rs);
  /* policy knobs: heuristic percent and cap, permanent rule off */
  ns_cache_policy_init(&pol);
  pol.heuristic_percent = 50;
  pol.heuristic_max_s = 100;
  pol.permanent_heuristic_s = 0;
  hdrs(&rs, "Date: {T+0}\nLast-Modified: {T-150}");
  st.headers = &rs;
  assert_int_equal(ns_cache_freshness_lifetime_ms(&pol, &st, &src), 75000);
  assert_int_equal(src, NS_CACHE_FRESH_HEURISTIC);
  ns_headers_free(&rs);
  hdrs(&rs, "Date: {T+0}\nLast-Modified: {T-1000}");
  assert_int_equal(ns_cache_freshness_lifetime_ms(&pol, &st, &src), 100000);
  ns_headers_free(&rs);
  hdrs(&rs, "Date: {T+0}");
  st.status = 301;
  assert_int_equal(ns_cache_freshness_lifetime_ms(&pol, &st, &src), 0);
  assert_int_equal(src, NS_CACHE_FRESH_NONE);
  ns_headers_free(&rs);
  assert_string_equal(ns_cache_verdict_name(NS_CACHE_STALE_WHILE_REVALIDATE),
                      "stale-while-revalidate");
}

/* =============================================================== validators */

static void test_validators(void **state) {
  static const struct {
    const char *stored, *want_inm, *want_ims;
    int added;
  } k[] = {
      {"ETag: \"abc\"\nLast-Modified: {T-100}\nDate: {T+0}", "\"abc\"", "{T-100}", 2},
      {"ETag: W/\"weak\"\nDate: {T+0}", "W/\"weak\"", NULL, 1},
      {"Last-Modified: {T-100}\nDate: {T+0}", NULL, "{T-100}", 1},
      {"Date: {T+0}", NULL, "{T+0}", 1},          /* Date fallback */
      {"ETag: \"e\"\nDate: {T+0}", "\"e\"", NULL, 1}, /* no Date fallback with an ETag */
      /* an unquoted word is echoed as it came, as browsers do */
      {"ETag: junk\nLast-Modified: nope\nDate: bad", "junk", NULL, 1},
      {"ETag: a, b\nLast-Modified: nope\nDate: bad", NULL, NULL, 0}, /* not one word */
      {"ETag: \"x\nLast-Modified: nope\nDate: bad", NULL, NULL, 0},   /* a broken quote */
      {"", NULL, NULL, 0},
  };
  size_t i;
  (void)state;
  for (i = 0; i < NS_ARRAY_LEN(k); i++) {
    ns_headers rs, rq;
    ns_cache_stored st;
    char want[64];
    int added;
    hdrs(&rs, k[i].stored);
    hdrs(&rq, "If-None-Match: \"client\"\nAccept: */*");
    memset(&st, 0, sizeof(st));
    st.status = 200;
    st.headers = &rs;
    st.response_time_ms = MS(T0);
    assert_int_equal(ns_cache_add_validators(&st, &rq, &added), NETSTASH_OK);
    assert_int_equal(added, k[i].added);
    if (k[i].want_inm) {
      assert_string_equal(ns_headers_get(&rq, "If-None-Match"), k[i].want_inm);
      assert_int_equal(ns_headers_count(&rq, "If-None-Match"), 1);
    }
    if (k[i].want_ims) {
      expand(k[i].want_ims, want, sizeof(want));
      assert_string_equal(ns_headers_get(&rq, "If-Modified-Since"), want);
    } else {
      assert_null(ns_headers_get(&rq, "If-Modified-Since"));
    }
    ns_headers_free(&rs);
    ns_headers_free(&rq);
  }
}

static void test_304_matches(void **state) {
  static const struct {
    const char *stored, *r304;
    int match;
  } k[] = {
      {"ETag: \"a\"", "ETag: \"a\"", 1},
      {"ETag: \"a\"", "ETag: \"b\"", 0},
      {"ETag: W/\"a\"", "ETag: W/\"a\"", 1},  /* weak comparison */
      {"ETag: \"a\"", "ETag: W/\"a\"", 1},    /* weak 304 validator: weak comparison */
      {"ETag: W/\"a\"", "ETag: \"a\"", 0},    /* strong 304 validator needs a strong match */
      {"Last-Modified: {T-5}", "ETag: \"a\"", 0},
      {"ETag: \"a\"", "ETag: bogus", 0},
      {"ETag: abc", "ETag: abc", 1}, /* unquoted words, compared as they are */
      {"ETag: abc", "ETag: abd", 0},
      {"ETag: abc", "ETag: \"abc\"", 0},
      {"ETag: \"a\"\nLast-Modified: {T-5}", "Last-Modified: {T-5}", 1},
      {"Last-Modified: {T-5}", "Last-Modified: {T-6}", 0},
      {"ETag: \"a\"", "Date: {T+0}", 1},      /* no validator: the one we validated */
      {"", "", 1},
  };
  size_t i;
  (void)state;
  for (i = 0; i < NS_ARRAY_LEN(k); i++) {
    ns_headers rs, r3;
    ns_cache_stored st;
    hdrs(&rs, k[i].stored);
    hdrs(&r3, k[i].r304);
    memset(&st, 0, sizeof(st));
    st.headers = &rs;
    st.response_time_ms = MS(T0);
    if (ns_cache_304_matches(&st, &r3) != k[i].match)
      fail_msg("row %zu: stored \"%s\" 304 \"%s\"", i, k[i].stored, k[i].r304);
    ns_headers_free(&rs);
    ns_headers_free(&r3);
  }
}

static void test_merge_304(void **state) {
  ns_headers st, r3;
  ns_cache_stored s;
  ns_cache_decision d;
  ns_cache_request req;
  (void)state;
  hdrs(&st, "Date: {T-1000}\nCache-Control: max-age=60\nContent-Type: text/plain\n"
            "Content-Length: 100\nContent-Encoding: br\nETag: \"v1\"\nX-Multi: a\nX-Multi: b\n"
            "X-Keep: k\nContent-MD5: rL0Y20zC+Fzt72VPzMSk2A==\nContent-Digest: sha-256=:a:");
  hdrs(&r3, "Date: {T+0}\nCache-Control: max-age=600\nContent-Type: text/html\n"
            "Content-Length: 0\nContent-Encoding: gzip\nETag: \"v1\"\nX-Multi: c\n"
            "Connection: X-Hop\nX-Hop: 1\nKeep-Alive: 5\nSet-Cookie: s=1\nX-New: n\n"
            "Content-Range: bytes 0-1/2\nContent-MD5: N7UdGUp1E+RbVvZSTy1R8g==\n"
            "Content-Digest: sha-256=:b:");
  assert_int_equal(ns_cache_merge_304(&st, &r3), NETSTASH_OK);
  /* updated in place */
  assert_string_equal(st.f[1].name, "Cache-Control");
  assert_string_equal(st.f[1].value, "max-age=600");
  /* kept: the stored body's description and Content-Length (§3.2) */
  assert_string_equal(ns_headers_get(&st, "Content-Type"), "text/plain");
  assert_string_equal(ns_headers_get(&st, "Content-Length"), "100");
  assert_string_equal(ns_headers_get(&st, "Content-Encoding"), "br");
  assert_null(ns_headers_get(&st, "Content-Range"));
  /* digests of the stored bytes stay theirs (http-cache-tests'
   * 304-etag-update-response-Content-MD5) */
  assert_string_equal(ns_headers_get(&st, "Content-MD5"), "rL0Y20zC+Fzt72VPzMSk2A==");
  assert_string_equal(ns_headers_get(&st, "Content-Digest"), "sha-256=:a:");
  /* every stored line of a replaced name goes */
  assert_int_equal(ns_headers_count(&st, "X-Multi"), 1);
  assert_string_equal(ns_headers_get(&st, "X-Multi"), "c");
  assert_string_equal(ns_headers_get(&st, "X-Keep"), "k");
  assert_string_equal(ns_headers_get(&st, "X-New"), "n");
  /* hop-by-hop, Connection-nominated and Set-Cookie are not stored */
  assert_null(ns_headers_get(&st, "Connection"));
  assert_null(ns_headers_get(&st, "X-Hop"));
  assert_null(ns_headers_get(&st, "Keep-Alive"));
  assert_null(ns_headers_get(&st, "Set-Cookie"));
  /* the merged response is fresh again with the revalidation's times */
  memset(&s, 0, sizeof(s));
  s.status = 200;
  s.headers = &st;
  s.request_time_ms = s.response_time_ms = MS(T0);
  req.method = "GET";
  req.url = "https://example.com/";
  req.headers = NULL;
  ns_cache_decide(NULL, &req, &s, MS(T0) + MS(10), &d);
  assert_int_equal(d.verdict, NS_CACHE_FRESH);
  ns_headers_free(&st);
  ns_headers_free(&r3);
  /* a 304 whose Cache-Control lists fields in a qualified no-cache: they
   * go, stored before or carried by the 304 */
  hdrs(&st, "Date: {T-1000}\nCache-Control: max-age=60\nX-Keep: k\nX-Old: o");
  hdrs(&r3, "Date: {T+0}\nCache-Control: max-age=600, no-cache=\"X-Old, X-New\"\nX-New: n");
  assert_int_equal(ns_cache_merge_304(&st, &r3), NETSTASH_OK);
  assert_null(ns_headers_get(&st, "X-Old"));
  assert_null(ns_headers_get(&st, "X-New"));
  assert_string_equal(ns_headers_get(&st, "X-Keep"), "k");
  ns_headers_free(&st);
  ns_headers_free(&r3);
}

/* ===================================================================== Vary */

static void test_vary(void **state) {
  static const struct {
    const char *vary, *stored_req, *new_req;
    int match;
  } k[] = {
      {NULL, "Accept: a", "Accept: b", 1},                   /* no Vary */
      {"Vary: Accept", "Accept: text/html", "Accept: text/html", 1},
      {"Vary: Accept", "Accept: text/html", "accept: text/html", 1},  /* name case */
      {"Vary: accept", "Accept: text/html", "Accept: text/html", 1},
      {"Vary: Accept", "Accept: text/html", "Accept: text/plain", 0},
      {"Vary: Accept", "Accept: text/html", "Accept: TEXT/HTML", 0},  /* values exact */
      {"Vary: Accept", "Accept: a, b", "Accept: a,b", 1},    /* OWS around commas */
      {"Vary: Accept", "Accept: a, b", "Accept: a\nAccept: b", 1}, /* combined lines */
      {"Vary: Accept", "Accept: a, b", "Accept: b, a", 0},   /* order matters */
      {"Vary: Accept", "Accept: a,, b", "Accept: a, b", 1},  /* empty members */
      {"Vary: Accept", NULL, NULL, 1},                       /* absent in both */
      {"Vary: Accept", NULL, "Accept: a", 0},                /* absent in one */
      {"Vary: Accept", "Accept: a", NULL, 0},
      {"Vary: Accept", "Accept:", NULL, 0},                  /* empty is not absent */
      {"Vary: Accept, Accept-Language", "Accept: a\nAccept-Language: fr",
       "Accept-Language: fr\nAccept: a", 1},
      {"Vary: Accept, Accept-Language", "Accept: a\nAccept-Language: fr",
       "Accept: a\nAccept-Language: de", 0},
      {"Vary: Accept\nVary: Accept-Language", "Accept: a\nAccept-Language: fr",
       "Accept: a\nAccept-Language: de", 0},                 /* several Vary lines */
      {"Vary: *", NULL, NULL, 0},                            /* never matches */
      {"Vary: Accept, *", "Accept: a", "Accept: a", 0},
      {"Vary: , ,Accept", "Accept: a", "Accept: a", 1},
      {"Vary: X-A", "X-A: \"q,r\"", "X-A: \"q,r\"", 1},
      /* case-insensitive members: language ranges, codings, charsets */
      {"Vary: Accept-Language", "Accept-Language: en-US, de", "Accept-Language: EN-us, De", 1},
      {"Vary: Accept-Language", "Accept-Language: en, de", "Accept-Language: de, en", 0},
      {"Vary: Accept-Language", "Accept-Language: en", "Accept-Language: enx", 0},
      {"Vary: Accept-Encoding", "Accept-Encoding: GZIP, br", "Accept-Encoding: gzip, BR", 1},
      {"Vary: accept-charset", "Accept-Charset: UTF-8", "Accept-Charset: utf-8", 1},
  };
  size_t i;
  (void)state;
  for (i = 0; i < NS_ARRAY_LEN(k); i++) {
    ns_headers resp, sreq, nreq, snap;
    hdrs(&resp, k[i].vary);
    hdrs(&sreq, k[i].stored_req);
    hdrs(&nreq, k[i].new_req);
    if (ns_cache_vary_matches(&resp, &sreq, &nreq) != k[i].match)
      fail_msg("row %zu: %s | %s | %s", i, k[i].vary ? k[i].vary : "-",
               k[i].stored_req ? k[i].stored_req : "-", k[i].new_req ? k[i].new_req : "-");
    /* a snapshot taken from the stored request matches exactly like it */
    ns_headers_init(&snap, ns_mem_default());
    assert_int_equal(ns_cache_vary_snapshot(&resp, &sreq, &snap), NETSTASH_OK);
    assert_int_equal(ns_cache_vary_matches(&resp, &snap, &nreq), k[i].match);
    ns_headers_free(&snap);
    ns_headers_free(&resp);
    ns_headers_free(&sreq);
    ns_headers_free(&nreq);
  }
}

static void test_vary_snapshot(void **state) {
  ns_headers resp, req, snap;
  (void)state;
  hdrs(&resp, "Vary: Accept-Encoding, accept-encoding\nVary: X-Missing, Cookie");
  hdrs(&req, "Accept-Encoding: br\nUser-Agent: u\nCookie: a=1\nCookie: b=2\nAccept-Encoding: gzip");
  ns_headers_init(&snap, ns_mem_default());
  assert_int_equal(ns_cache_vary_snapshot(&resp, &req, &snap), NETSTASH_OK);
  assert_int_equal(ns_headers_len(&snap), 4); /* 2 Accept-Encoding + 2 Cookie */
  assert_null(ns_headers_get(&snap, "User-Agent"));
  assert_null(ns_headers_get(&snap, "X-Missing"));
  assert_int_equal(ns_headers_count(&snap, "Accept-Encoding"), 2);
  ns_headers_free(&snap);
  ns_headers_free(&resp);
  ns_headers_free(&req);
}

static void test_select_variant(void **state) {
  ns_headers r[4], q[4], req;
  ns_cache_stored s[4];
  const ns_cache_stored *v[4];
  size_t i, idx = 99;
  (void)state;
  /* 0: fr, older; 1: en; 2: fr, newer Date; 3: fr, same Date as 2, later */
  hdrs(&r[0], "Vary: Accept-Language\nDate: {T-100}");
  hdrs(&q[0], "Accept-Language: fr");
  hdrs(&r[1], "Vary: Accept-Language\nDate: {T+0}");
  hdrs(&q[1], "Accept-Language: en");
  hdrs(&r[2], "Vary: Accept-Language\nDate: {T-50}");
  hdrs(&q[2], "Accept-Language: fr");
  hdrs(&r[3], "Vary: Accept-Language\nDate: {T-50}");
  hdrs(&q[3], "Accept-Language: fr");
  for (i = 0; i < 4; i++) {
    memset(&s[i], 0, sizeof(s[i]));
    s[i].status = 200;
    s[i].headers = &r[i];
    s[i].vary_request = &q[i];
    s[i].response_time_ms = MS(T0) - (i == 3 ? 0 : 10000);
    v[i] = &s[i];
  }
  hdrs(&req, "Accept-Language: fr");
  assert_true(ns_cache_select_variant(v, 4, &req, &idx));
  assert_int_equal(idx, 3); /* newest Date, then newest response time */
  assert_true(ns_cache_select_variant(v, 3, &req, &idx));
  assert_int_equal(idx, 2);
  ns_headers_free(&req);
  hdrs(&req, "Accept-Language: en");
  assert_true(ns_cache_select_variant(v, 4, &req, &idx));
  assert_int_equal(idx, 1);
  ns_headers_free(&req);
  hdrs(&req, "Accept-Language: de");
  assert_false(ns_cache_select_variant(v, 4, &req, &idx));
  assert_false(ns_cache_select_variant(v, 0, &req, &idx));
  ns_headers_free(&req);
  for (i = 0; i < 4; i++) {
    ns_headers_free(&r[i]);
    ns_headers_free(&q[i]);
  }
}

/* ===================================================================== keys */

static void key_is(const ns_cache_policy *pol, const char *top, const char *url,
                   const char *want) {
  ns_buf b;
  ns_buf_init(&b, ns_mem_default(), 4096);
  assert_int_equal(ns_cache_key(pol, top, url, &b), NETSTASH_OK);
  if (strcmp(ns_buf_str(&b), want) != 0)
    fail_msg("key(%s, %s) = \"%s\", want \"%s\"", top ? top : "NULL", url, ns_buf_str(&b), want);
  ns_buf_free(&b);
}

static void test_keys(void **state) {
  ns_cache_policy pol;
  ns_buf b;
  static const struct {
    const char *url, *site;
  } sites[] = {
      {"https://www.example.co.uk/x", "https://example.co.uk"},
      {"https://a.b.example.com:8443/", "https://example.com"},
      {"http://example.com/", "http://example.com"},
      {"https://foo.github.io/", "https://foo.github.io"}, /* private suffix */
      {"https://localhost:3000/", "https://localhost"},
      {"https://127.0.0.1/", "https://127.0.0.1"},
      {"https://[::1]:8443/", "https://[::1]"},
      {"https://WWW.Example.COM/", "https://example.com"},
  };
  size_t i;
  (void)state;
  ns_cache_policy_init(&pol);
  ns_buf_init(&b, ns_mem_default(), 4096);
  for (i = 0; i < NS_ARRAY_LEN(sites); i++) {
    ns_buf_reset(&b);
    assert_int_equal(ns_cache_site(&pol, sites[i].url, &b), NETSTASH_OK);
    if (strcmp(ns_buf_str(&b), sites[i].site))
      fail_msg("site(%s) = %s", sites[i].url, ns_buf_str(&b));
  }
  ns_buf_reset(&b);
  assert_int_equal(ns_cache_site(&pol, "ftp://example.com/", &b), NETSTASH_E_BAD_URL);
  assert_int_equal(ns_cache_site(&pol, "not a url", &b), NETSTASH_E_BAD_URL);
  assert_int_equal(b.len, 0);
  ns_buf_free(&b);

  /* same URL, same-site and cross-site top-level pages */
  key_is(&pol, "https://www.example.com/page", "https://cdn.example.com/a.js?v=1#frag",
         "1 https://example.com https://cdn.example.com/a.js?v=1");
  key_is(&pol, "https://shop.example.com/", "https://cdn.example.com/a.js?v=1",
         "1 https://example.com https://cdn.example.com/a.js?v=1");
  key_is(&pol, "https://evil.test/", "https://cdn.example.com/a.js?v=1",
         "1 https://evil.test https://cdn.example.com/a.js?v=1");
  key_is(&pol, "http://www.example.com/", "https://cdn.example.com/a.js",
         "1 http://example.com https://cdn.example.com/a.js"); /* schemeful site */
  /* a top-level navigation keys on its own site */
  key_is(&pol, NULL, "https://www.example.com/", "1 https://example.com https://www.example.com/");
  /* normalisation: host case, default port, path, fragment */
  key_is(&pol, NULL, "HTTPS://WWW.EXAMPLE.COM:443", "1 https://example.com https://www.example.com/");
  key_is(&pol, NULL, "https://example.com:8443/a/../b", "1 https://example.com https://example.com:8443/b");
  /* partitioning off: one key for every top-level site */
  pol.partition = 0;
  key_is(&pol, "https://evil.test/", "https://cdn.example.com/a.js",
         "1 - https://cdn.example.com/a.js");
  key_is(&pol, "https://example.com/", "https://cdn.example.com/a.js",
         "1 - https://cdn.example.com/a.js");
  pol.partition = 1;
  /* the No-Vary-Search index key drops the query */
  ns_buf_init(&b, ns_mem_default(), 4096);
  assert_int_equal(ns_cache_nvs_index_key(&pol, NULL, "https://example.com/s?q=1#x", &b),
                   NETSTASH_OK);
  assert_string_equal(ns_buf_str(&b), "1n https://example.com https://example.com/s");
  ns_buf_reset(&b);
  assert_int_equal(ns_cache_key(&pol, "bad top", "https://example.com/", &b), NETSTASH_E_BAD_URL);
  assert_int_equal(b.len, 0); /* nothing appended on error */
  assert_int_equal(ns_cache_key(NULL, NULL, "https://example.com/", &b), NETSTASH_OK);
  ns_buf_free(&b);
}

/* Keys from the fast split of already-normalised URLs equal those from
 * curl_url, for URLs it takes and URLs it leaves to curl; the common forms do
 * take the fast path. */
static void test_key_fast_path_agrees(void **state) {
  const char *tops[] = {NULL, "https://www.example.com/", "https://127.1/"};
  ns_cache_policy pol;
  unsigned long n0;
  ns_buf k;
  (void)state;
  ns_cache_policy_init(&pol);
  ns_buf_init(&k, ns_mem_default(), 1 << 16);
  n0 = ns_cache_norm_fast_count();
  assert_int_equal(ns_cache_key(&pol, "https://www.example.com/", "https://cdn.example.com:8443/a/b.js?v=2",
                                &k), NETSTASH_OK);
  assert_int_equal(ns_cache_norm_fast_count() - n0, 2); /* the URL and the top-level site */
  assert_string_equal(ns_buf_str(&k), "1 https://example.com https://cdn.example.com:8443/a/b.js?v=2");
  ns_buf_reset(&k);
  n0 = ns_cache_norm_fast_count();
  assert_int_equal(ns_cache_key(&pol, NULL, "http://127.0.0.1:8080/c/big.bin", &k), NETSTASH_OK);
  assert_int_equal(ns_cache_norm_fast_count() - n0, 1);
  ns_buf_free(&k);
  for (size_t t = 0; t < sizeof(tops) / sizeof(tops[0]); t++) {
    for (size_t i = 0; i < sizeof(nst_url_corpus) / sizeof(nst_url_corpus[0]); i++) {
      ns_buf fast, slow;
      netstash_error ef, es;
      ns_buf_init(&fast, ns_mem_default(), 1 << 16);
      ns_buf_init(&slow, ns_mem_default(), 1 << 16);
      ns_url_fast_set(1);
      ef = ns_cache_key(&pol, tops[t], nst_url_corpus[i], &fast);
      ns_url_fast_set(0);
      es = ns_cache_key(&pol, tops[t], nst_url_corpus[i], &slow);
      ns_url_fast_set(1);
      if (ef != es || (ef == NETSTASH_OK && strcmp(ns_buf_str(&fast), ns_buf_str(&slow)) != 0))
        fail_msg("%s (top %s): fast %d \"%s\", curl_url %d \"%s\"", nst_url_corpus[i],
                 tops[t] ? tops[t] : "-", ef, ef ? "" : ns_buf_str(&fast), es,
                 es ? "" : ns_buf_str(&slow));
      ns_buf_free(&fast);
      ns_buf_free(&slow);
    }
  }
}

static void test_key_fit(void **state) {
  ns_buf k, a, b;
  char url[3000];
  size_t i;
  (void)state;
  ns_buf_init(&k, ns_mem_default(), 1 << 16);
  ns_buf_init(&a, ns_mem_default(), 1 << 16);
  ns_buf_init(&b, ns_mem_default(), 1 << 16);
  /* short keys pass unchanged */
  assert_int_equal(ns_cache_key_fit("1 - https://e.com/", 18, 500, &a), NETSTASH_OK);
  assert_string_equal(ns_buf_str(&a), "1 - https://e.com/");
  ns_buf_reset(&a);
  /* long keys: exactly max bytes, readable prefix, hash of the whole key */
  strcpy(url, "https://example.com/search?q=");
  for (i = strlen(url); i < sizeof(url) - 2; i++)
    url[i] = 'a' + (char)(i % 26);
  url[i] = 0;
  assert_int_equal(ns_cache_key(NULL, NULL, url, &k), NETSTASH_OK);
  assert_true(k.len > 500);
  assert_int_equal(ns_cache_key_fit(ns_buf_str(&k), k.len, 500, &a), NETSTASH_OK);
  assert_int_equal(a.len, 500);
  assert_memory_equal(a.data, k.data, 500 - NS_CACHE_KEY_HASH_SUFFIX);
  assert_int_equal(a.data[500 - NS_CACHE_KEY_HASH_SUFFIX], '#');
  assert_int_equal(ns_cache_key_fit(ns_buf_str(&k), k.len, 500, &b), NETSTASH_OK);
  assert_string_equal(ns_buf_str(&a), ns_buf_str(&b)); /* stable */
  ns_buf_reset(&b);
  k.data[k.len - 1] ^= 1; /* differs only at the end */
  assert_int_equal(ns_cache_key_fit(ns_buf_str(&k), k.len, 500, &b), NETSTASH_OK);
  assert_int_equal(b.len, 500);
  assert_string_not_equal(ns_buf_str(&a), ns_buf_str(&b));
  assert_int_equal(ns_cache_key_fit("x", 1, 64, &b), NETSTASH_E_INVALID_ARGUMENT);
  ns_buf_free(&k);
  ns_buf_free(&a);
  ns_buf_free(&b);
}

/* ============================================================= invalidation */

static void test_invalidation(void **state) {
  static const struct {
    const char *method;
    int status;
    const char *resp;
    size_t n;
    const char *urls[3];
  } k[] = {
      {"POST", 200, NULL, 1, {"https://example.com/cart"}},
      {"PUT", 204, NULL, 1, {"https://example.com/cart"}},
      {"DELETE", 200, NULL, 1, {"https://example.com/cart"}},
      {"PATCH", 200, NULL, 1, {"https://example.com/cart"}},
      {"PURGE", 200, NULL, 1, {"https://example.com/cart"}}, /* unknown = unsafe */
      {"POST", 303, "Location: /cart/view?x=1",
       2, {"https://example.com/cart", "https://example.com/cart/view?x=1"}},
      {"POST", 201, "Location: https://example.com/items/7\nContent-Location: items/7/raw",
       3, {"https://example.com/cart", "https://example.com/items/7", "https://example.com/items/7/raw"}},
      {"POST", 200, "Content-Location: https://other.example.com/cart",
       1, {"https://example.com/cart"}},      /* cross-origin: never */
      {"POST", 200, "Location: http://example.com/cart", 1, {"https://example.com/cart"}},
      {"POST", 200, "Location: https://example.com:444/x", 1, {"https://example.com/cart"}},
      {"POST", 200, "Location: /cart#frag", 1, {"https://example.com/cart"}}, /* deduplicated */
      {"POST", 200, "Location: ::::", 2, {"https://example.com/cart", "https://example.com/::::"}},
      {"POST", 200, "Location: http://[::1", 1, {"https://example.com/cart"}}, /* unusable */
      {"POST", 404, "Location: /x", 0, {NULL}},  /* error status */
      {"POST", 500, NULL, 0, {NULL}},
      {"POST", 101, NULL, 0, {NULL}},
      {"GET", 200, "Location: /x", 0, {NULL}},   /* safe methods */
      {"HEAD", 200, NULL, 0, {NULL}},
      {"OPTIONS", 200, NULL, 0, {NULL}},
      {"TRACE", 200, NULL, 0, {NULL}},
  };
  size_t i, j;
  ns_cache_policy pol;
  (void)state;
  ns_cache_policy_init(&pol);
  for (i = 0; i < NS_ARRAY_LEN(k); i++) {
    ns_headers rs;
    ns_cache_invalidation inv;
    hdrs(&rs, k[i].resp);
    assert_int_equal(ns_cache_invalidation_targets(ns_mem_default(), &pol, "https://top.test/",
                                                   k[i].method, "https://Example.com/cart",
                                                   k[i].status, &rs, &inv),
                     NETSTASH_OK);
    if (inv.n != k[i].n)
      fail_msg("row %zu (%s %d): %zu targets, want %zu", i, k[i].method, k[i].status, inv.n,
               k[i].n);
    for (j = 0; j < inv.n; j++) {
      char key[512];
      assert_string_equal(inv.url[j], k[i].urls[j]);
      snprintf(key, sizeof(key), "1 https://top.test %s", k[i].urls[j]);
      assert_string_equal(inv.key[j], key); /* the partition of the request */
    }
    ns_cache_invalidation_free(ns_mem_default(), &inv);
    ns_headers_free(&rs);
  }
}

static void test_invalidation_alloc_failures(void **state) {
  ns_headers rs;
  long n;
  (void)state;
  hdrs(&rs, "Location: /a\nContent-Location: /b");
  for (n = 0;; n++) {
    ns_cache_invalidation inv;
    netstash_error e;
    fail_at = n;
    nallocs = 0;
    live = 0;
    e = ns_cache_invalidation_targets(&fmem, NULL, NULL, "POST", "https://example.com/",
                                      200, &rs, &inv);
    assert_true(e == NETSTASH_OK || e == NETSTASH_E_NOMEM);
    if (e != NETSTASH_OK)
      assert_int_equal(inv.n, 0);
    else
      assert_int_equal(inv.n, 3);
    ns_cache_invalidation_free(&fmem, &inv);
    assert_int_equal(live, 0);
    if (e == NETSTASH_OK)
      break;
  }
  fail_at = -1;
  ns_headers_free(&rs);
}

/* =================================================================== ranges */

static void test_ranges(void **state) {
  static const struct {
    const char *req;
    int stored_status;
    uint64_t len;
    int status;
    uint64_t first, last;
    const char *content_range;
  } k[] = {
      {NULL, 200, 1000, 200, 0, 0, ""},
      {"Range: bytes=0-99", 200, 1000, 206, 0, 99, "bytes 0-99/1000"},
      {"Range: bytes=500-", 200, 1000, 206, 500, 999, "bytes 500-999/1000"},
      {"Range: bytes=900-5000", 200, 1000, 206, 900, 999, "bytes 900-999/1000"}, /* clamped */
      {"Range: bytes=999-999", 200, 1000, 206, 999, 999, "bytes 999-999/1000"},
      {"Range: bytes=-100", 200, 1000, 206, 900, 999, "bytes 900-999/1000"},   /* suffix */
      {"Range: bytes=-5000", 200, 1000, 206, 0, 999, "bytes 0-999/1000"},      /* longer */
      {"Range: BYTES = 0-0", 200, 1000, 200, 0, 0, ""},  /* no OWS around "=" */
      {"Range: Bytes=0-0", 200, 1000, 206, 0, 0, "bytes 0-0/1000"}, /* unit case */
      {"Range: bytes=1000-", 200, 1000, 416, 0, 0, "bytes */1000"},
      {"Range: bytes=1000-2000, 3000-", 200, 1000, 416, 0, 0, "bytes */1000"},
      {"Range: bytes=-0", 200, 1000, 416, 0, 0, "bytes */1000"},
      {"Range: bytes=0-", 200, 0, 416, 0, 0, "bytes */0"},
      {"Range: bytes=-10", 200, 0, 200, 0, 0, ""},        /* empty body: whole */
      {"Range: bytes=5-1", 200, 1000, 200, 0, 0, ""},     /* invalid: ignored */
      {"Range: bytes=a-b", 200, 1000, 200, 0, 0, ""},
      {"Range: bytes=", 200, 1000, 200, 0, 0, ""},
      {"Range: bytes=0-1;x", 200, 1000, 200, 0, 0, ""},
      {"Range: items=0-1", 200, 1000, 200, 0, 0, ""},     /* other unit */
      {"Range: bytes=0-99, 50-149", 200, 1000, 206, 0, 149, "bytes 0-149/1000"}, /* coalesced */
      {"Range: bytes=100-199, 0-99", 200, 1000, 206, 0, 199, "bytes 0-199/1000"}, /* adjacent */
      {"Range: bytes=0-9, 5000-6000", 200, 1000, 206, 0, 9, "bytes 0-9/1000"}, /* one satisfiable */
      {"Range: bytes=0-9, 20-29", 200, 1000, 200, 0, 0, ""}, /* multi: whole body */
      {"Range: bytes=0-9, -10", 200, 1000, 200, 0, 0, ""},
      {"Range: bytes=0-99999999999999999999999", 200, 1000, 206, 0, 999, "bytes 0-999/1000"},
      {"Range: bytes=99999999999999999999999-", 200, 1000, 416, 0, 0, "bytes */1000"},
      {"Range: bytes=0-1\nRange: bytes=2-3", 200, 1000, 200, 0, 0, ""},
      {"Range: bytes=0-99", 404, 1000, 200, 0, 0, ""},    /* only 200s are sliced */
      /* If-Range (RFC 9110 §13.1.5) */
      {"Range: bytes=0-9\nIf-Range: \"v1\"", 200, 1000, 206, 0, 9, "bytes 0-9/1000"},
      {"Range: bytes=0-9\nIf-Range: \"v2\"", 200, 1000, 200, 0, 0, ""},
      {"Range: bytes=0-9\nIf-Range: W/\"v1\"", 200, 1000, 200, 0, 0, ""}, /* weak never */
      {"Range: bytes=0-9\nIf-Range: {T-3600}", 200, 1000, 206, 0, 9, "bytes 0-9/1000"},
      {"Range: bytes=0-9\nIf-Range: {T-3599}", 200, 1000, 200, 0, 0, ""},
      {"Range: bytes=0-9\nIf-Range: garbage", 200, 1000, 200, 0, 0, ""},
      {"Range: bytes=5000-\nIf-Range: \"v2\"", 200, 1000, 200, 0, 0, ""}, /* no 416 then */
  };
  size_t i;
  ns_headers stored;
  (void)state;
  hdrs(&stored, "ETag: \"v1\"\nLast-Modified: {T-3600}\nDate: {T+0}");
  for (i = 0; i < NS_ARRAY_LEN(k); i++) {
    ns_headers rq;
    ns_cache_range r;
    hdrs(&rq, k[i].req);
    ns_cache_range_decide(&rq, k[i].stored_status, &stored, k[i].len, &r);
    if (r.status != k[i].status || strcmp(r.content_range, k[i].content_range) != 0 ||
        (r.status == 206 && (r.first != k[i].first || r.last != k[i].last)))
      fail_msg("row %zu \"%s\": %d %s (%s)", i, k[i].req ? k[i].req : "-", r.status,
               r.content_range, r.reason);
    assert_non_null(r.reason);
    ns_headers_free(&rq);
  }
  ns_headers_free(&stored);
  /* If-Range with a date against a weak Last-Modified (< 60 s before Date) */
  {
    ns_headers rq;
    ns_cache_range r;
    hdrs(&stored, "Last-Modified: {T-30}\nDate: {T+0}");
    hdrs(&rq, "Range: bytes=0-9\nIf-Range: {T-30}");
    ns_cache_range_decide(&rq, 200, &stored, 100, &r);
    assert_int_equal(r.status, 200);
    ns_headers_free(&stored);
    ns_headers_free(&rq);
    hdrs(&stored, "ETag: W/\"v1\"");
    hdrs(&rq, "Range: bytes=0-9\nIf-Range: \"v1\"");
    ns_cache_range_decide(&rq, 200, &stored, 100, &r);
    assert_int_equal(r.status, 200); /* stored weak ETag never matches */
    ns_headers_free(&stored);
    ns_headers_free(&rq);
  }
  /* too many ranges: ignored */
  {
    char big[2048] = "Range: bytes=0-0";
    ns_headers rq;
    ns_cache_range r;
    for (i = 0; i < 70; i++)
      strcat(big, ",0-0");
    hdrs(&rq, big);
    ns_cache_range_decide(&rq, 200, NULL, 100, &r);
    assert_int_equal(r.status, 200);
    ns_headers_free(&rq);
  }
}

/* A stored 206 (RFC 9111 §3.3): its piece, the ranges it answers, and the
 * decision for requests it cannot answer. */
static void test_partial_pieces(void **state) {
  static const struct {
    const char *field;
    int ok;
    uint64_t first, last, complete;
  } cr[] = {
      {"bytes 0-4/10", 1, 0, 4, 10},
      {"BYTES 9-9/10", 1, 9, 9, 10},
      {"bytes 0-4/10 ", 1, 0, 4, 10},
      {"bytes 0-4/*", 0, 0, 0, 0},
      {"bytes */10", 0, 0, 0, 0},
      {"bytes 4-0/10", 0, 0, 0, 0},
      {"bytes 0-10/10", 0, 0, 0, 0},
      {"bytes 0-4/10, 5-9/10", 0, 0, 0, 0},
      {"bytes 0-4", 0, 0, 0, 0},
      {"bytes  0-4/10", 0, 0, 0, 0},
      {"items 0-4/10", 0, 0, 0, 0},
      {"bytes 0-18446744073709551615/18446744073709551615", 0, 0, 0, 0},
      {"bytes -1-4/10", 0, 0, 0, 0},
  };
  static const struct {
    const char *req;
    int status;
    uint64_t first, last;
    const char *content_range;
  } k[] = {
      /* the piece holds 100-199 of 1000 */
      {"Range: bytes=100-199", 206, 100, 199, "bytes 100-199/1000"},
      {"Range: bytes=120-130", 206, 120, 130, "bytes 120-130/1000"},
      {"Range: bytes=150-199, 100-149", 206, 100, 199, "bytes 100-199/1000"},
      {"Range: bytes=99-150", 200, 0, 0, ""},  /* starts before it */
      {"Range: bytes=150-200", 200, 0, 0, ""}, /* ends after it */
      {"Range: bytes=100-", 200, 0, 0, ""},    /* to the end: 999 */
      {"Range: bytes=-10", 200, 0, 0, ""},     /* the last 10: 990-999 */
      {"Range: bytes=0-", 200, 0, 0, ""},
      {"Range: bytes=100-110, 150-160", 200, 0, 0, ""}, /* no multipart */
      {"Range: bytes=1000-", 416, 0, 0, "bytes */1000"}, /* past the length it gives */
      {"Range: bytes=100-199\nIf-Range: \"p1\"", 206, 100, 199, "bytes 100-199/1000"},
      {"Range: bytes=100-199\nIf-Range: \"p2\"", 200, 0, 0, ""},
      {"Range: bytes=a-b", 200, 0, 0, ""},
      {NULL, 200, 0, 0, ""},
  };
  ns_headers stored, rq, bad;
  ns_cache_range r;
  size_t i;
  (void)state;
  for (i = 0; i < NS_ARRAY_LEN(cr); i++) {
    char line[128];
    uint64_t a = 7, b = 7, n = 7;
    int ok;
    snprintf(line, sizeof(line), "Content-Range: %s", cr[i].field);
    hdrs(&stored, line);
    ok = ns_cache_piece(&stored, &a, &b, &n);
    if (ok != cr[i].ok || (ok && (a != cr[i].first || b != cr[i].last || n != cr[i].complete)))
      fail_msg("Content-Range \"%s\": %d %" PRIu64 "-%" PRIu64 "/%" PRIu64, cr[i].field, ok, a,
               b, n);
    ns_headers_free(&stored);
  }
  assert_int_equal(ns_cache_piece(NULL, NULL, NULL, NULL), 0);
  hdrs(&stored, "Content-Range: bytes 100-199/1000\nETag: \"p1\"");
  for (i = 0; i < NS_ARRAY_LEN(k); i++) {
    hdrs(&rq, k[i].req);
    ns_cache_range_decide(&rq, 206, &stored, 100, &r);
    if (r.status != k[i].status || strcmp(r.content_range, k[i].content_range) != 0 ||
        (r.status == 206 && (r.first != k[i].first || r.last != k[i].last || r.body_offset != 100)))
      fail_msg("row %zu \"%s\": %d %s (%s)", i, k[i].req ? k[i].req : "-", r.status,
               r.content_range, r.reason);
    ns_headers_free(&rq);
  }
  /* a body that is not the Content-Range's length answers nothing */
  hdrs(&rq, "Range: bytes=100-109");
  ns_cache_range_decide(&rq, 206, &stored, 99, &r);
  assert_int_equal(r.status, 200);
  hdrs(&bad, "Content-Range: bytes 100-199/*");
  ns_cache_range_decide(&rq, 206, &bad, 100, &r);
  assert_int_equal(r.status, 200);
  ns_headers_free(&bad);
  ns_headers_free(&rq);
  ns_headers_free(&stored);
  /* the validator pieces are joined under (RFC 9111 §3.4) */
  {
    static const struct {
      const char *stored, *resp;
      const char *if_range; /* NULL: none */
      int same;
    } v[] = {
        {"ETag: \"p1\"", "ETag: \"p1\"", "\"p1\"", 1},
        {"ETag: \"p1\"", "ETag: \"p2\"", "\"p1\"", 0},
        {"ETag: \"p1\"", "ETag: W/\"p1\"", "\"p1\"", 0},
        {"ETag: W/\"p1\"", "ETag: W/\"p1\"", NULL, 0},           /* weak: never */
        {"ETag: p1", "ETag: p1", NULL, 0},                        /* unquoted */
        {"ETag: \"p1\"", NULL, "\"p1\"", 0},
        {"Last-Modified: {T-3600}\nDate: {T+0}", "Last-Modified: {T-3600}\nDate: {T+0}",
         "{T-3600}", 1},
        {"Last-Modified: {T-3600}\nDate: {T+0}", "Last-Modified: {T-3599}\nDate: {T+0}",
         "{T-3600}", 0},
        {"Last-Modified: {T-30}\nDate: {T+0}", "Last-Modified: {T-30}\nDate: {T+0}", NULL, 0},
        {"Date: {T+0}", "Date: {T+0}", NULL, 0},
    };
    for (i = 0; i < NS_ARRAY_LEN(v); i++) {
      ns_headers a, b2, want;
      const char *got;
      hdrs(&a, v[i].stored);
      hdrs(&b2, v[i].resp);
      got = ns_cache_if_range(&a);
      if (v[i].if_range) {
        char line[96];
        snprintf(line, sizeof(line), "X: %s", v[i].if_range); /* {T..} expanded */
        hdrs(&want, line);
        if (!got || strcmp(got, ns_headers_get(&want, "X")) != 0)
          fail_msg("row %zu: If-Range %s", i, got ? got : "(none)");
        ns_headers_free(&want);
      } else if (got) {
        fail_msg("row %zu: If-Range %s, want none", i, got);
      }
      if (ns_cache_same_validator(&a, &b2) != v[i].same)
        fail_msg("row %zu: same validator %d", i, !v[i].same);
      ns_headers_free(&a);
      ns_headers_free(&b2);
    }
  }
  /* decisions: only a range request wholly within the piece is answered */
  {
    static const struct {
      const char *method, *req;
      ns_cache_verdict verdict;
    } d[] = {
        {"GET", "Range: bytes=0-4", NS_CACHE_FRESH},
        {"GET", "Range: bytes=2-3", NS_CACHE_FRESH},
        {"GET", "Range: bytes=20-", NS_CACHE_FRESH}, /* 416 from what it knows */
        {"GET", "Range: bytes=0-5", NS_CACHE_MISS},
        {"GET", NULL, NS_CACHE_MISS},
        {"HEAD", NULL, NS_CACHE_MISS},
        {"HEAD", "Range: bytes=0-4", NS_CACHE_MISS},
        {"GET", "Cache-Control: only-if-cached", NS_CACHE_GATEWAY_TIMEOUT},
        {"GET", "Range: bytes=0-4\nCache-Control: max-age=0", NS_CACHE_REVALIDATE},
    };
    ns_cache_stored st;
    ns_cache_request req;
    ns_cache_decision dec;
    hdrs(&stored, "Date: {T+0}\nCache-Control: max-age=60\nContent-Range: bytes 0-4/10");
    memset(&st, 0, sizeof(st));
    st.status = 206;
    st.headers = &stored;
    st.request_time_ms = st.response_time_ms = MS(T0);
    for (i = 0; i < NS_ARRAY_LEN(d); i++) {
      hdrs(&rq, d[i].req);
      req.method = d[i].method;
      req.url = "https://example.com/a";
      req.headers = &rq;
      ns_cache_decide(NULL, &req, &st, MS(T0) + 1000, &dec);
      if (dec.verdict != d[i].verdict)
        fail_msg("%s \"%s\": %s (%s)", d[i].method, d[i].req ? d[i].req : "-",
                 ns_cache_verdict_name(dec.verdict), dec.reason);
      if (dec.verdict == NS_CACHE_MISS)
        assert_non_null(strstr(dec.reason, "partial content (bytes 0-4/10)"));
      ns_headers_free(&rq);
    }
    ns_headers_free(&stored);
  }
}

/* =========================================================== No-Vary-Search */

static void nvs_of(const char *field, ns_cache_nvs *nvs) {
  ns_headers h;
  hdrs(&h, field);
  assert_int_equal(ns_cache_nvs_parse(ns_mem_default(), &h, nvs), NETSTASH_OK);
  ns_headers_free(&h);
}

static void test_nvs_parse(void **state) {
  static const struct {
    const char *field;
    int present, key_order, params_all;
    size_t n;
    const char *first;
  } k[] = {
      {NULL, 0, 0, 0, 0, NULL},
      {"No-Vary-Search: key-order", 1, 1, 0, 0, NULL},
      {"No-Vary-Search: key-order=?1", 1, 1, 0, 0, NULL},
      {"No-Vary-Search: key-order=?0", 1, 0, 0, 0, NULL},
      {"No-Vary-Search: params", 1, 0, 1, 0, NULL},
      {"No-Vary-Search: params=?0", 1, 0, 0, 0, NULL},
      {"No-Vary-Search: params=(\"a\" \"b\")", 1, 0, 0, 2, "a"},
      {"No-Vary-Search: params=(\"a+b%20c\")", 1, 0, 0, 1, "a b c"}, /* parse a key */
      {"No-Vary-Search: params, except=(\"q\"), key-order", 1, 1, 1, 1, "q"},
      {"No-Vary-Search: params=(\"utm_source\");x=1", 1, 0, 0, 1, "utm_source"},
      {"No-Vary-Search: params=(\"a\")\nNo-Vary-Search: key-order", 1, 1, 0, 1, "a"}, /* lines */
      {"No-Vary-Search: params=(\"a\"), params=(\"b\")", 1, 0, 0, 1, "b"}, /* last wins */
      {"No-Vary-Search: unknown=5, key-order", 1, 1, 0, 0, NULL},
      /* invalid: default variance */
      {"No-Vary-Search: key-order=1", 0, 0, 0, 0, NULL},
      {"No-Vary-Search: params=(a)", 0, 0, 0, 0, NULL},         /* tokens, not strings */
      {"No-Vary-Search: params=\"a\"", 0, 0, 0, 0, NULL},
      {"No-Vary-Search: except=(\"q\")", 0, 0, 0, 0, NULL},     /* except needs params */
      {"No-Vary-Search: params=(\"a\"), except=(\"q\")", 0, 0, 0, 0, NULL},
      {"No-Vary-Search: params, except=\"q\"", 0, 0, 0, 0, NULL},
      {"No-Vary-Search: Params", 0, 0, 0, 0, NULL},             /* keys are lowercase */
      {"No-Vary-Search: params,", 0, 0, 0, 0, NULL},
      {"No-Vary-Search: params=(\"a\"", 0, 0, 0, 0, NULL},
      {"No-Vary-Search: params=(\"\\x\")", 0, 0, 0, 0, NULL},
      {"No-Vary-Search: ", 0, 0, 0, 0, NULL},
  };
  size_t i;
  (void)state;
  for (i = 0; i < NS_ARRAY_LEN(k); i++) {
    ns_cache_nvs nvs;
    nvs_of(k[i].field, &nvs);
    if (nvs.present != k[i].present || nvs.key_order != k[i].key_order ||
        nvs.params_all != k[i].params_all || nvs.n != k[i].n ||
        (k[i].first && (nvs.names[0].len != strlen(k[i].first) ||
                        memcmp(nvs.names[0].p, k[i].first, nvs.names[0].len))))
      fail_msg("row %zu \"%s\": present %d key-order %d all %d n %zu", i,
               k[i].field ? k[i].field : "-", nvs.present, nvs.key_order, nvs.params_all, nvs.n);
    ns_cache_nvs_free(ns_mem_default(), &nvs);
  }
}

static void test_nvs_equivalence(void **state) {
  /* examples after draft-ietf-httpbis-no-vary-search §2 and §4 */
  static const struct {
    const char *field, *a, *b;
    int equal;
  } k[] = {
      {NULL, "https://e.com/s?a=1&b=2", "https://e.com/s?a=1&b=2", 1},
      {NULL, "https://e.com/s?a=1&b=2", "https://e.com/s?b=2&a=1", 0},
      {"No-Vary-Search: key-order", "https://e.com/s?a=1&b=2", "https://e.com/s?b=2&a=1", 1},
      {"No-Vary-Search: key-order", "https://e.com/s?a=1&a=2", "https://e.com/s?a=2&a=1", 0},
      {"No-Vary-Search: key-order", "https://e.com/s?a=1&b=2&a=3", "https://e.com/s?b=2&a=1&a=3", 1},
      {"No-Vary-Search: params=(\"a\")", "https://e.com/s?a=1&b=2", "https://e.com/s?b=2", 1},
      {"No-Vary-Search: params=(\"a\")", "https://e.com/s?a=1&b=2", "https://e.com/s?b=3", 0},
      {"No-Vary-Search: params=(\"utm_source\" \"utm_medium\")",
       "https://e.com/p?id=7&utm_source=x&utm_medium=y", "https://e.com/p?id=7", 1},
      {"No-Vary-Search: params", "https://e.com/s?a=1", "https://e.com/s?z=9&y=8", 1},
      {"No-Vary-Search: params", "https://e.com/s?a=1", "https://e.com/t?a=1", 0}, /* path */
      {"No-Vary-Search: params", "https://e.com/s?a=1", "https://f.com/s?a=1", 0},
      {"No-Vary-Search: params, except=(\"q\")", "https://e.com/s?q=cat&r=1",
       "https://e.com/s?r=2&q=cat", 1},
      {"No-Vary-Search: params, except=(\"q\")", "https://e.com/s?q=cat", "https://e.com/s?q=dog",
       0},
      {"No-Vary-Search: params, except=(\"q\")", "https://e.com/s?q=a&x=1&q=b",
       "https://e.com/s?q=b&q=a", 0},
      {"No-Vary-Search: params, except=(\"q\" \"p\"), key-order", "https://e.com/s?q=a&p=1",
       "https://e.com/s?p=1&x=0&q=a", 1},
      /* form decoding: + is a space, %XX a byte */
      {NULL, "https://e.com/s?a=b+c", "https://e.com/s?a=b%20c", 1},
      {"No-Vary-Search: params=(\"a b\")", "https://e.com/s?a+b=1&c=2", "https://e.com/s?c=2", 1},
      {"No-Vary-Search: params=(\"a\")", "https://e.com/s?%61=1", "https://e.com/s", 1},
      {NULL, "https://e.com/s?a=1&&b=2", "https://e.com/s?a=1&b=2", 1}, /* empty sequences */
      {NULL, "https://e.com/s?a", "https://e.com/s?a=", 1},
      {NULL, "https://e.com/s?a=%zz", "https://e.com/s?a=%25zz", 1},
      {NULL, "https://e.com/s?a=1#x", "https://e.com/s?a=1", 1},       /* fragment */
  };
  size_t i;
  (void)state;
  for (i = 0; i < NS_ARRAY_LEN(k); i++) {
    ns_cache_nvs nvs;
    int eq = -1;
    nvs_of(k[i].field, &nvs);
    assert_int_equal(ns_cache_nvs_equivalent(ns_mem_default(), &nvs, k[i].a, k[i].b, &eq),
                     NETSTASH_OK);
    if (eq != k[i].equal)
      fail_msg("row %zu %s: %s vs %s → %d", i, k[i].field ? k[i].field : "-", k[i].a, k[i].b, eq);
    assert_int_equal(ns_cache_nvs_equivalent(ns_mem_default(), &nvs, k[i].b, k[i].a, &eq),
                     NETSTASH_OK);
    assert_int_equal(eq, k[i].equal); /* symmetric */
    ns_cache_nvs_free(ns_mem_default(), &nvs);
  }
  /* the canonical form is usable as a hash key */
  {
    ns_cache_nvs nvs;
    ns_buf b;
    nvs_of("No-Vary-Search: key-order, params=(\"x\")", &nvs);
    ns_buf_init(&b, ns_mem_default(), 1000);
    assert_int_equal(ns_cache_nvs_canonical_query(ns_mem_default(), &nvs, "b=2&x=0&a=1 2&a=0",
                                                  17, &b),
                     NETSTASH_OK);
    assert_string_equal(ns_buf_str(&b), "a=1%202&a=0&b=2");
    ns_buf_free(&b);
    ns_cache_nvs_free(ns_mem_default(), &nvs);
  }
}

static void test_nvs_alloc_failures(void **state) {
  ns_headers h;
  long n;
  (void)state;
  hdrs(&h, "No-Vary-Search: params, except=(\"q\" \"r\"), key-order");
  for (n = 0;; n++) {
    ns_cache_nvs nvs;
    netstash_error e;
    int eq = 0;
    fail_at = n;
    nallocs = 0;
    live = 0;
    e = ns_cache_nvs_parse(&fmem, &h, &nvs);
    assert_true(e == NETSTASH_OK || e == NETSTASH_E_NOMEM);
    if (e == NETSTASH_OK) {
      netstash_error e2 = ns_cache_nvs_equivalent(&fmem, &nvs, "https://e.com/?r=1&q=2&z",
                                                  "https://e.com/?q=2&r=1", &eq);
      assert_true(e2 == NETSTASH_OK || e2 == NETSTASH_E_NOMEM);
      if (e2 != NETSTASH_OK)
        e = e2;
      else
        assert_true(eq);
    }
    ns_cache_nvs_free(&fmem, &nvs);
    assert_int_equal(live, 0);
    if (e == NETSTASH_OK)
      break;
  }
  fail_at = -1;
  ns_headers_free(&h);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_reader_tokens_lists),
      cmocka_unit_test(test_reader_quoted),
      cmocka_unit_test(test_delta_seconds),
      cmocka_unit_test(test_http_date),
      cmocka_unit_test(test_headers_basic),
      cmocka_unit_test(test_headers_blocks),
      cmocka_unit_test(test_headers_binary),
      cmocka_unit_test(test_headers_alloc_failures),
      cmocka_unit_test(test_cache_control_parse),
      cmocka_unit_test(test_cache_control_headers),
      cmocka_unit_test(test_storable),
      cmocka_unit_test(test_prepare_for_storage),
      cmocka_unit_test(test_decide_table),
      cmocka_unit_test(test_decide_misc),
      cmocka_unit_test(test_validators),
      cmocka_unit_test(test_304_matches),
      cmocka_unit_test(test_merge_304),
      cmocka_unit_test(test_vary),
      cmocka_unit_test(test_vary_snapshot),
      cmocka_unit_test(test_select_variant),
      cmocka_unit_test(test_keys),
      cmocka_unit_test(test_key_fit),
      cmocka_unit_test(test_key_fast_path_agrees),
      cmocka_unit_test(test_invalidation),
      cmocka_unit_test(test_invalidation_alloc_failures),
      cmocka_unit_test(test_ranges),
      cmocka_unit_test(test_partial_pieces),
      cmocka_unit_test(test_nvs_parse),
      cmocka_unit_test(test_nvs_equivalence),
      cmocka_unit_test(test_nvs_alloc_failures),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
