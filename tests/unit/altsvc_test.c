/*
 * altsvc_test.c — lib/transport/altsvc.c: the Alt-Svc parser (RFC 7838 §3),
 * the origin's h3 alternative in a real store (round trip, expiry, clear,
 * origins told apart by port, lazy deletion), the record form, and the
 * broken-h3 table (exponential backoff, confirmation, eviction bound).
 */
#define _GNU_SOURCE 1
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <cmocka.h>

#include <ftw.h>
#include <sys/stat.h>

#include "ns_setup.h"
#include "store/store.h"
#include "transport/altsvc.h"

#define NOW INT64_C(1700000000000)
#define DAY_MS (INT64_C(86400) * 1000)

/* ------------------------------------------------------------ parser */

static int parse(const char *v, ns_altsvc *out, size_t cap, int *clear) {
  return ns_altsvc_parse(v, strlen(v), NOW, out, cap, clear);
}

/* Single alternatives: the RFC 7838 examples and their variations. */
static void test_parse_cases(void **state) {
  static const struct {
    const char *v;
    int n; /* expected return */
    const char *host;
    int port;
    int64_t ma_s; /* expected expiry - NOW, in s */
    int persist;
  } cases[] = {
      {"h3=\":443\"; ma=3600", 1, "", 443, 3600, 0},
      {"h3=\"alt.example.test:8443\"; ma=60; persist=1", 1, "alt.example.test", 8443, 60, 1},
      {"h3=\":443\"", 1, "", 443, 86400, 0},   /* default ma: 24 h */
      {"h3=\":443\"; ma=0", 1, "", 443, 0, 0}, /* stale at once */
      {"h3=\":443\";ma=10", 1, "", 443, 10, 0},
      {"  h3=\":443\" ;  ma=10 ; persist=1  ", 1, "", 443, 10, 1}, /* OWS around ';' */
      {"h3=\":443\"; MA=10; Persist=1", 1, "", 443, 10, 1},        /* names: any case */
      {"h3=\":443\"; ma=\"20\"", 1, "", 443, 20, 0},               /* quoted value */
      {"h3=\":443\"; persist=0", 1, "", 443, 86400, 0},            /* §3.1: not "1" */
      {"h3=\":443\"; persist=1; persist=2", 1, "", 443, 86400, 1},
      {"h3=\":443\"; ma=5; ma=7", 1, "", 443, 7, 0},               /* last ma wins */
      {"h3=\":443\"; foo=bar; v=\"1,2\"; ma=9", 1, "", 443, 9, 0}, /* unknown ignored */
      {"h3=\":443\"; flag", 1, "", 443, 86400, 0},                 /* bare name ignored */
      {"h3=\"ALT.Example.TEST:443\"", 1, "alt.example.test", 443, 86400, 0},
      {"h3=\"192.0.2.7:4433\"", 1, "192.0.2.7", 4433, 86400, 0},
      {"h3=\"[2001:DB8::1]:443\"", 1, "2001:db8::1", 443, 86400, 0},
      {"h3=\":00443\"", 1, "", 443, 86400, 0},
      {"h3=\":65535\"", 1, "", 65535, 86400, 0},
      {"h3=\":1\"", 1, "", 1, 86400, 0},
      /* quoted-string escapes (RFC 9110 §5.6.4) are undone */
      {"h3=\"\\a\\l\\t.example.test:8\\443\"", 1, "alt.example.test", 8443, 86400, 0},
      /* percent-encoded protocol-id (§3): "h%33" is "h3" */
      {"h%33=\":443\"", 1, "", 443, 86400, 0},
      {"%68%33=\":443\"; ma=1", 1, "", 443, 1, 0},
      /* valid but nothing kept */
      {"h2=\":443\"", 0, NULL, 0, 0, 0},
      {"h3-29=\":443\"; ma=60", 0, NULL, 0, 0, 0},
      {"h3%2D29=\":443\"", 0, NULL, 0, 0, 0},
      {"H3=\":443\"", 0, NULL, 0, 0, 0}, /* ALPN ids are case-sensitive */
      {"h3q=\":443\"", 0, NULL, 0, 0, 0},
      {"hq=\"[::1]:443\"", 0, NULL, 0, 0, 0},
      /* malformed: the whole field is ignored */
      {"", -1, NULL, 0, 0, 0},
      {"   ", -1, NULL, 0, 0, 0},
      {" , ,", -1, NULL, 0, 0, 0},
      {"h3", -1, NULL, 0, 0, 0},
      {"h3=", -1, NULL, 0, 0, 0},
      {"h3=:443", -1, NULL, 0, 0, 0},                 /* alt-authority must be quoted */
      {"h3=\"alt.example.test\"", -1, NULL, 0, 0, 0}, /* no port */
      {"h3=\"alt.example.test:\"", -1, NULL, 0, 0, 0},
      {"h3=\"\"", -1, NULL, 0, 0, 0},
      {"h3=\":0\"", -1, NULL, 0, 0, 0},
      {"h3=\":65536\"", -1, NULL, 0, 0, 0},
      {"h3=\":99999999999999999999999\"", -1, NULL, 0, 0, 0},
      {"h3=\":-1\"", -1, NULL, 0, 0, 0},
      {"h3=\": 443\"", -1, NULL, 0, 0, 0},
      {"h3=\":443x\"", -1, NULL, 0, 0, 0},
      {"h3=\":443", -1, NULL, 0, 0, 0},     /* unterminated quote */
      {"h3=\":443\" x", -1, NULL, 0, 0, 0}, /* garbage after the value */
      {"h3=\":443\"x", -1, NULL, 0, 0, 0},
      {"h3=\":443\"; ma=10 x", -1, NULL, 0, 0, 0},
      {"h3=\":443\" h2=\":443\"", -1, NULL, 0, 0, 0},
      {"h3 = \":443\"", -1, NULL, 0, 0, 0},
      {"h3=\":443\"; ma=-1", -1, NULL, 0, 0, 0},
      {"h3=\":443\"; ma=abc", -1, NULL, 0, 0, 0},
      {"h3=\":443\"; ma", -1, NULL, 0, 0, 0},
      {"h3=\":443\"; ma = 5", -1, NULL, 0, 0, 0}, /* RFC 9110 §5.6.6: no OWS at '=' */
      {"h3=\":443\";", -1, NULL, 0, 0, 0},
      {"h%3=\":443\"", -1, NULL, 0, 0, 0}, /* bad percent-encoding */
      {"h%zz3=\":443\"", -1, NULL, 0, 0, 0},
      {"h3=\"alt example:443\"", -1, NULL, 0, 0, 0}, /* bad host */
      {"h3=\"alt%2eexample:443\"", -1, NULL, 0, 0, 0},
      {"h3=\"a:b:443\"", -1, NULL, 0, 0, 0},
      {"h3=\"[]:443\"", -1, NULL, 0, 0, 0},
      {"h3=\"[::1]443\"", -1, NULL, 0, 0, 0},
      {"h3=\"[::1:443\"", -1, NULL, 0, 0, 0},
      {"h3=\"[not-v6]:443\"", -1, NULL, 0, 0, 0},
      {"h3=\"[192.0.2.1]:443\"", -1, NULL, 0, 0, 0}, /* IPv4 is not bracketed */
      {"h3=\"[fe80::1%25eth0]:443\"", -1, NULL, 0, 0, 0},
      {"h2=\":0\", h3=\":443\"", -1, NULL, 0, 0, 0}, /* one bad alt-value spoils all */
      {"CLEAR", -1, NULL, 0, 0, 0},
      {"clear, h3=\":443\"", -1, NULL, 0, 0, 0},
      {"clear; ma=1", -1, NULL, 0, 0, 0},
  };
  (void)state;
  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    ns_altsvc a[4];
    int clear = -7;
    int n;
    memset(a, 0x5a, sizeof(a));
    n = parse(cases[i].v, a, 4, &clear);
    if (n != cases[i].n)
      fail_msg("\"%s\": %d, expected %d", cases[i].v, n, cases[i].n);
    if (clear != 0)
      fail_msg("\"%s\": clear %d", cases[i].v, clear);
    if (n != 1)
      continue;
    if (strcmp(a[0].alpn, "h3") || strcmp(a[0].host, cases[i].host) || a[0].port != cases[i].port ||
        a[0].expires_ms != NOW + cases[i].ma_s * 1000 || a[0].persist != cases[i].persist)
      fail_msg("\"%s\": alpn \"%.16s\" host \"%.256s\" port %d ma %lld persist %d", cases[i].v,
               a[0].alpn, a[0].host, a[0].port, (long long)(a[0].expires_ms - NOW), a[0].persist);
  }
}

/* Several alternatives: only exact "h3" kept, in the server's order, at
 * most cap; h2 and draft versions first are skipped. */
static void test_parse_list(void **state) {
  const char *v = "h2=\":443\"; ma=86400, h3-29=\":443\"; ma=60,"
                  "h3=\"alt1.example.test:8443\"; ma=3600; persist=1, "
                  "quic=\":443\"; v=\"46,43\", h3=\":443\"";
  ns_altsvc a[4];
  int clear = -1;
  (void)state;
  assert_int_equal(parse(v, a, 4, &clear), 2);
  assert_int_equal(clear, 0);
  assert_string_equal(a[0].host, "alt1.example.test");
  assert_int_equal(a[0].port, 8443);
  assert_true(a[0].expires_ms == NOW + 3600 * 1000);
  assert_int_equal(a[0].persist, 1);
  assert_string_equal(a[1].host, "");
  assert_int_equal(a[1].port, 443);
  assert_true(a[1].expires_ms == NOW + DAY_MS);
  assert_int_equal(a[1].persist, 0);
  /* cap bounds the output, the return value counts what was kept */
  memset(a, 0, sizeof(a));
  assert_int_equal(parse(v, a, 1, NULL), 1);
  assert_string_equal(a[0].host, "alt1.example.test");
  assert_int_equal(a[1].port, 0); /* untouched */
  /* cap 0 and no output: validation only */
  assert_int_equal(parse(v, NULL, 0, NULL), 0);
  assert_int_equal(parse("h3=\":0\"", NULL, 0, NULL), -1);
  /* empty list elements are skipped (RFC 9110 §5.6.1) */
  assert_int_equal(parse(", h3=\":443\",, h3=\":444\" ,", a, 4, NULL), 2);
  assert_int_equal(a[1].port, 444);
  /* a comma inside a quoted unknown parameter is not a separator */
  assert_int_equal(parse("h3=\":443\"; x=\",h3=:1\", h3=\":445\"", a, 4, NULL), 2);
  assert_int_equal(a[1].port, 445);
}

static void test_parse_clear(void **state) {
  ns_altsvc a[1];
  int clear = 0;
  (void)state;
  assert_int_equal(parse("clear", a, 1, &clear), 0);
  assert_int_equal(clear, 1);
  clear = 0;
  assert_int_equal(parse(" \tclear  ", a, 1, &clear), 0);
  assert_int_equal(clear, 1);
  clear = 7;
  assert_int_equal(parse("clearx", a, 1, &clear), -1);
  assert_int_equal(clear, 0);
  /* clear may be NULL */
  assert_int_equal(parse("clear", a, 1, NULL), 0);
}

/* ma: clamped to NS_ALTSVC_MA_MAX_S, expiry computed without overflow. */
static void test_parse_ma_limits(void **state) {
  ns_altsvc a[1];
  const char *huge = "h3=\":443\"; ma=999999999999999999999999999999";
  (void)state;
  assert_int_equal(parse(huge, a, 1, NULL), 1);
  assert_true(a[0].expires_ms == NOW + NS_ALTSVC_MA_MAX_S * 1000);
  assert_int_equal(parse("h3=\":443\"; ma=2147483647", a, 1, NULL), 1);
  assert_true(a[0].expires_ms == NOW + NS_ALTSVC_MA_MAX_S * 1000);
  assert_int_equal(parse("h3=\":443\"; ma=34560000", a, 1, NULL), 1); /* exactly 400 days */
  assert_true(a[0].expires_ms == NOW + NS_ALTSVC_MA_MAX_S * 1000);
  assert_int_equal(parse("h3=\":443\"; ma=34559999", a, 1, NULL), 1);
  assert_true(a[0].expires_ms == NOW + (NS_ALTSVC_MA_MAX_S - 1) * 1000);
  /* a clock near the end of time saturates instead of wrapping */
  assert_int_equal(ns_altsvc_parse(huge, strlen(huge), INT64_MAX - 5, a, 1, NULL), 1);
  assert_true(a[0].expires_ms == INT64_MAX);
  assert_int_equal(ns_altsvc_parse("h3=\":443\"", 9, INT64_MIN, a, 1, NULL), 1);
  assert_true(a[0].expires_ms == INT64_MIN + DAY_MS);
}

/* Lengths: the value is not NUL-terminated; limits on host and ALPN. */
static void test_parse_bounds(void **state) {
  ns_altsvc a[1];
  char v[1024];
  char host[300];
  (void)state;
  /* only len bytes are read */
  assert_int_equal(ns_altsvc_parse("h3=\":443\"garbage", 9, NOW, a, 1, NULL), 1);
  assert_int_equal(ns_altsvc_parse("h3=\":443\"", 8, NOW, a, 1, NULL), -1);
  assert_int_equal(ns_altsvc_parse(NULL, 0, NOW, a, 1, NULL), -1);
  /* a 255-byte host fits, 256 is refused */
  memset(host, 'a', 255);
  host[255] = 0;
  snprintf(v, sizeof(v), "h3=\"%s:443\"", host);
  assert_int_equal(parse(v, a, 1, NULL), 1);
  assert_int_equal(strlen(a[0].host), 255);
  memset(host, 'a', 256);
  host[256] = 0;
  snprintf(v, sizeof(v), "h3=\"%s:443\"", host);
  assert_int_equal(parse(v, a, 1, NULL), -1);
  /* an ALPN id of 255 bytes is valid (and dropped), 256 is not (RFC 7301) */
  memset(host, 'x', 255);
  host[255] = 0;
  snprintf(v, sizeof(v), "%s=\":443\", h3=\":1\"", host);
  assert_int_equal(parse(v, a, 1, NULL), 1);
  assert_int_equal(a[0].port, 1);
  snprintf(v, sizeof(v), "x%s=\":443\", h3=\":1\"", host);
  assert_int_equal(parse(v, a, 1, NULL), -1);
}

/* ------------------------------------------------------------ store */

static char tmpdir[256];
static char dir[300];

static int rm_cb(const char *p, const struct stat *sb, int flag, struct FTW *f) {
  (void)sb;
  (void)flag;
  (void)f;
  return remove(p);
}

static ns_store *open_store(void) {
  ns_store_params p;
  ns_store *s = NULL;
  char detail[256];
  netstash_error err;
  ns_store_params_init(&p);
  p.dir = dir;
  p.created_by = "altsvc_test";
  err = ns_store_open(&p, &s, detail, sizeof(detail));
  if (err != NETSTASH_OK)
    fail_msg("open: %s: %s", netstash_error_name(err), detail);
  return s;
}

static int setup(void **state) {
  const char *t = getenv("TMPDIR");
  snprintf(tmpdir, sizeof(tmpdir), "%s/nst-altsvc-XXXXXX", t ? t : "/tmp");
  if (!mkdtemp(tmpdir))
    return -1;
  snprintf(dir, sizeof(dir), "%s/profile", tmpdir);
  *state = open_store();
  return *state ? 0 : -1;
}

static int teardown(void **state) {
  ns_store_close(*state);
  nftw(tmpdir, rm_cb, 16, FTW_DEPTH | FTW_PHYS);
  return 0;
}

/* The raw record under key, or NETSTASH_E_NOT_FOUND. */
static netstash_error raw_get(ns_store *s, const char *key, uint8_t *v, size_t cap, size_t *len,
                              uint32_t *flags) {
  ns_store_reader *r = NULL;
  ns_store_record rec;
  netstash_error rv;
  assert_int_equal(ns_store_reader_new(s, &r), NETSTASH_OK);
  assert_int_equal(ns_store_read_begin(r), NETSTASH_OK);
  rv = ns_store_get(r, NS_STORE_HTTP, key, strlen(key), &rec);
  if (rv == NETSTASH_OK) {
    assert_true(rec.value_len <= cap);
    memcpy(v, rec.value, rec.value_len);
    *len = rec.value_len;
    *flags = rec.flags;
  }
  ns_store_read_end(r);
  ns_store_reader_del(r);
  return rv;
}

static void test_save_lookup(void **state) {
  ns_store *s = *state;
  ns_altsvc a[4], got;
  uint8_t v[NS_ALTSVC_REC_MAX];
  size_t len;
  uint32_t flags;
  const char *hdr = "h3=\"alt.example.test:8443\"; ma=60; persist=1";

  assert_int_equal(parse(hdr, a, 4, NULL), 1);
  assert_int_equal(ns_altsvc_lookup(s, "www.example.test", 443, NOW, &got), NETSTASH_E_NOT_FOUND);
  assert_int_equal(ns_altsvc_save(s, "www.example.test", 443, a, 1, 0), NETSTASH_OK);
  memset(&got, 0, sizeof(got));
  assert_int_equal(ns_altsvc_lookup(s, "www.example.test", 443, NOW + 1000, &got), NETSTASH_OK);
  assert_string_equal(got.alpn, "h3");
  assert_string_equal(got.host, "alt.example.test");
  assert_int_equal(got.port, 8443);
  assert_true(got.expires_ms == NOW + 60000);
  assert_int_equal(got.persist, 1);
  /* pinned, in the http database, under the documented key */
  assert_int_equal(raw_get(s, "altsvc www.example.test:443", v, sizeof(v), &len, &flags),
                   NETSTASH_OK);
  assert_true(flags & NS_STORE_REC_PINNED);
  assert_int_equal(v[0], 1);
  /* host compared case-insensitively: stored in lower case */
  assert_int_equal(ns_altsvc_lookup(s, "WWW.Example.TEST", 443, NOW, &got), NETSTASH_OK);
  assert_int_equal(ns_altsvc_save(s, "Other.Example.TEST", 443, a, 1, 0), NETSTASH_OK);
  assert_int_equal(raw_get(s, "altsvc other.example.test:443", v, sizeof(v), &len, &flags),
                   NETSTASH_OK);
  assert_int_equal(ns_altsvc_lookup(s, "other.example.test", 443, NOW, &got), NETSTASH_OK);

  /* survives closing and reopening the store */
  ns_store_close(s);
  *state = s = open_store();
  memset(&got, 0, sizeof(got));
  assert_int_equal(ns_altsvc_lookup(s, "www.example.test", 443, NOW, &got), NETSTASH_OK);
  assert_string_equal(got.host, "alt.example.test");

  /* a new value replaces the old one as a whole (RFC 7838 §3) */
  assert_int_equal(parse("h3=\":443\"; ma=3600", a, 4, NULL), 1);
  assert_int_equal(ns_altsvc_save(s, "www.example.test", 443, a, 1, 0), NETSTASH_OK);
  assert_int_equal(ns_altsvc_lookup(s, "www.example.test", 443, NOW, &got), NETSTASH_OK);
  assert_string_equal(got.host, "");
  assert_int_equal(got.port, 443);
  assert_int_equal(got.persist, 0);

  /* IPv6 origins: key bracketed */
  assert_int_equal(ns_altsvc_save(s, "2001:DB8::1", 443, a, 1, 0), NETSTASH_OK);
  assert_int_equal(raw_get(s, "altsvc [2001:db8::1]:443", v, sizeof(v), &len, &flags), NETSTASH_OK);
  assert_int_equal(ns_altsvc_lookup(s, "2001:db8::1", 443, NOW, &got), NETSTASH_OK);
}

static void test_expiry(void **state) {
  ns_store *s = *state;
  ns_altsvc a[2], got;
  uint8_t v[NS_ALTSVC_REC_MAX];
  size_t len;
  uint32_t flags;

  assert_int_equal(parse("h3=\":443\"; ma=60", a, 2, NULL), 1);
  assert_int_equal(ns_altsvc_save(s, "a.example.test", 443, a, 1, 0), NETSTASH_OK);
  assert_int_equal(ns_altsvc_lookup(s, "a.example.test", 443, NOW + 59999, &got), NETSTASH_OK);
  /* expires_ms is the first instant it is no longer valid */
  assert_int_equal(ns_altsvc_lookup(s, "a.example.test", 443, NOW + 60000, &got),
                   NETSTASH_E_NOT_FOUND);
  /* ... and the expired record was deleted */
  assert_int_equal(raw_get(s, "altsvc a.example.test:443", v, sizeof(v), &len, &flags),
                   NETSTASH_E_NOT_FOUND);

  /* ma=0: stale at once */
  assert_int_equal(parse("h3=\":443\"; ma=0", a, 2, NULL), 1);
  assert_int_equal(ns_altsvc_save(s, "b.example.test", 443, a, 1, 0), NETSTASH_OK);
  assert_int_equal(ns_altsvc_lookup(s, "b.example.test", 443, NOW, &got), NETSTASH_E_NOT_FOUND);

  /* two alternatives: the second serves when the first expired */
  assert_int_equal(parse("h3=\"x.example.test:443\"; ma=10, h3=\":443\"; ma=100", a, 2, NULL), 2);
  assert_int_equal(ns_altsvc_save(s, "c.example.test", 443, a, 2, 0), NETSTASH_OK);
  assert_int_equal(ns_altsvc_lookup(s, "c.example.test", 443, NOW + 5000, &got), NETSTASH_OK);
  assert_string_equal(got.host, "x.example.test");
  assert_int_equal(ns_altsvc_lookup(s, "c.example.test", 443, NOW + 50000, &got), NETSTASH_OK);
  assert_string_equal(got.host, "");
  assert_int_equal(raw_get(s, "altsvc c.example.test:443", v, sizeof(v), &len, &flags),
                   NETSTASH_OK); /* one still live: kept */
  assert_int_equal(ns_altsvc_lookup(s, "c.example.test", 443, NOW + 100000, &got),
                   NETSTASH_E_NOT_FOUND);
}

static void test_clear_and_ports(void **state) {
  ns_store *s = *state;
  ns_altsvc a[2], got;
  int clear = 0;
  uint8_t v[NS_ALTSVC_REC_MAX];
  size_t len;
  uint32_t flags;

  assert_int_equal(parse("h3=\":443\"", a, 2, NULL), 1);
  assert_int_equal(ns_altsvc_save(s, "example.test", 443, a, 1, 0), NETSTASH_OK);
  assert_int_equal(parse("h3=\":9443\"", a, 2, NULL), 1);
  assert_int_equal(ns_altsvc_save(s, "example.test", 8443, a, 1, 0), NETSTASH_OK);
  /* different ports, different origins */
  assert_int_equal(ns_altsvc_lookup(s, "example.test", 443, NOW, &got), NETSTASH_OK);
  assert_int_equal(got.port, 443);
  assert_int_equal(ns_altsvc_lookup(s, "example.test", 8443, NOW, &got), NETSTASH_OK);
  assert_int_equal(got.port, 9443);
  assert_int_equal(ns_altsvc_lookup(s, "example.test", 80, NOW, &got), NETSTASH_E_NOT_FOUND);

  /* "clear" deletes only its origin */
  assert_int_equal(parse("clear", a, 2, &clear), 0);
  assert_int_equal(clear, 1);
  assert_int_equal(ns_altsvc_save(s, "example.test", 443, a, 0, clear), NETSTASH_OK);
  assert_int_equal(ns_altsvc_lookup(s, "example.test", 443, NOW, &got), NETSTASH_E_NOT_FOUND);
  assert_int_equal(raw_get(s, "altsvc example.test:443", v, sizeof(v), &len, &flags),
                   NETSTASH_E_NOT_FOUND);
  assert_int_equal(ns_altsvc_lookup(s, "example.test", 8443, NOW, &got), NETSTASH_OK);
  /* clearing what is not there is fine */
  assert_int_equal(ns_altsvc_save(s, "example.test", 443, NULL, 0, 1), NETSTASH_OK);
  /* clear wins over entries given with it */
  assert_int_equal(parse("h3=\":443\"", a, 2, NULL), 1);
  assert_int_equal(ns_altsvc_save(s, "example.test", 8443, a, 1, 1), NETSTASH_OK);
  assert_int_equal(ns_altsvc_lookup(s, "example.test", 8443, NOW, &got), NETSTASH_E_NOT_FOUND);

  /* a value offering no h3 (n == 0) replaces the earlier alternative */
  assert_int_equal(ns_altsvc_save(s, "example.test", 443, a, 1, 0), NETSTASH_OK);
  assert_int_equal(parse("h2=\":443\"", a, 2, NULL), 0);
  assert_int_equal(ns_altsvc_save(s, "example.test", 443, a, 0, 0), NETSTASH_OK);
  assert_int_equal(ns_altsvc_lookup(s, "example.test", 443, NOW, &got), NETSTASH_E_NOT_FOUND);
  /* non-h3 entries handed to save are not stored */
  memset(a, 0, sizeof(a));
  memcpy(a[0].alpn, "h2", 3);
  a[0].port = 443;
  a[0].expires_ms = NOW + 1000;
  assert_int_equal(ns_altsvc_save(s, "example.test", 443, a, 1, 0), NETSTASH_OK);
  assert_int_equal(raw_get(s, "altsvc example.test:443", v, sizeof(v), &len, &flags),
                   NETSTASH_E_NOT_FOUND);
  assert_int_equal(ns_altsvc_lookup(s, "example.test", 443, NOW, &got), NETSTASH_E_NOT_FOUND);
  /* h3 entries after others are the ones stored */
  a[1] = a[0];
  memcpy(a[1].alpn, "h3", 3);
  a[1].port = 4433;
  assert_int_equal(ns_altsvc_save(s, "example.test", 443, a, 2, 0), NETSTASH_OK);
  assert_int_equal(ns_altsvc_lookup(s, "example.test", 443, NOW, &got), NETSTASH_OK);
  assert_int_equal(got.port, 4433);
}

static void test_bad_arguments(void **state) {
  ns_store *s = *state;
  ns_altsvc a[1], got;
  char longhost[300];
  assert_int_equal(parse("h3=\":443\"", a, 1, NULL), 1);
  assert_int_equal(ns_altsvc_save(s, "", 443, a, 1, 0), NETSTASH_E_INVALID_ARGUMENT);
  assert_int_equal(ns_altsvc_save(s, NULL, 443, a, 1, 0), NETSTASH_E_INVALID_ARGUMENT);
  assert_int_equal(ns_altsvc_save(s, "a b", 443, a, 1, 0), NETSTASH_E_INVALID_ARGUMENT);
  assert_int_equal(ns_altsvc_save(s, "[::1]", 443, a, 1, 0), NETSTASH_E_INVALID_ARGUMENT);
  assert_int_equal(ns_altsvc_save(s, "x.test", 0, a, 1, 0), NETSTASH_E_INVALID_ARGUMENT);
  assert_int_equal(ns_altsvc_save(s, "x.test", 65536, a, 1, 0), NETSTASH_E_INVALID_ARGUMENT);
  assert_int_equal(ns_altsvc_save(s, "x.test", 443, NULL, 1, 0), NETSTASH_E_INVALID_ARGUMENT);
  memset(longhost, 'a', 256);
  longhost[256] = 0;
  assert_int_equal(ns_altsvc_save(s, longhost, 443, a, 1, 0), NETSTASH_E_INVALID_ARGUMENT);
  longhost[255] = 0;
  assert_int_equal(ns_altsvc_save(s, longhost, 443, a, 1, 0), NETSTASH_OK);
  assert_int_equal(ns_altsvc_lookup(s, longhost, 443, NOW, &got), NETSTASH_OK);
  /* an invalid entry */
  a[0].port = 70000;
  assert_int_equal(ns_altsvc_save(s, "x.test", 443, a, 1, 0), NETSTASH_E_INVALID_ARGUMENT);
  assert_int_equal(ns_altsvc_lookup(s, "x.test", 443, NOW, &got), NETSTASH_E_NOT_FOUND);
  assert_int_equal(ns_altsvc_lookup(s, "x.test", -1, NOW, &got), NETSTASH_E_INVALID_ARGUMENT);
  assert_int_equal(ns_altsvc_lookup(s, "x.test", 443, NOW, NULL), NETSTASH_E_INVALID_ARGUMENT);
}

/* A record that is not ours (damaged, another version) reads as none and is
 * left alone. */
static void test_foreign_record(void **state) {
  ns_store *s = *state;
  ns_altsvc got;
  uint8_t v[NS_ALTSVC_REC_MAX];
  size_t len;
  uint32_t flags;
  static const uint8_t v2[] = {2, 1, 2, 'h', '3', 0, 1, 0xbb, 0, 0x7f, 0, 0, 0, 0, 0, 0, 0};
  assert_int_equal(ns_store_put(s, NS_STORE_HTTP, "altsvc v2.test:443", 18, v2, sizeof(v2), NULL,
                                NS_STORE_REC_PINNED),
                   NETSTASH_OK);
  assert_int_equal(ns_altsvc_lookup(s, "v2.test", 443, NOW, &got), NETSTASH_E_NOT_FOUND);
  assert_int_equal(raw_get(s, "altsvc v2.test:443", v, sizeof(v), &len, &flags), NETSTASH_OK);
  assert_int_equal(len, sizeof(v2));
}

/* ------------------------------------------------------------ record form */

static void test_record_codec(void **state) {
  ns_altsvc a[3], b[3];
  uint8_t v[NS_ALTSVC_REC_MAX], w[NS_ALTSVC_REC_MAX];
  size_t len, len2, i;
  (void)state;
  assert_int_equal(parse("h3=\"ALT.example.test:8443\"; ma=60; persist=1, h3=\":443\", "
                         "h3=\":444\"",
                         a, 3, NULL),
                   3);
  len = ns_altsvc_encode_(a, 3, v, sizeof(v));
  assert_true(len > 0);
  assert_int_equal(v[0], 1);
  assert_int_equal(v[1], NS_ALTSVC_STORE_MAX); /* at most two stored */
  memset(b, 0, sizeof(b));
  assert_int_equal(ns_altsvc_decode_(v, len, b, 3), NS_ALTSVC_STORE_MAX);
  for (i = 0; i < NS_ALTSVC_STORE_MAX; i++) {
    assert_string_equal(a[i].alpn, b[i].alpn);
    assert_string_equal(a[i].host, b[i].host);
    assert_int_equal(a[i].port, b[i].port);
    assert_true(a[i].expires_ms == b[i].expires_ms);
    assert_int_equal(a[i].persist, b[i].persist);
  }
  /* re-encoding gives the same bytes */
  len2 = ns_altsvc_encode_(b, 2, w, sizeof(w));
  assert_int_equal(len2, len);
  assert_memory_equal(v, w, len);
  /* a smaller cap fills fewer but still reports the count */
  assert_int_equal(ns_altsvc_decode_(v, len, b, 1), 2);
  /* every truncation and trailing byte is refused */
  for (i = 0; i < len; i++)
    assert_int_equal(ns_altsvc_decode_(v, i, b, 3), -1);
  v[len] = 0;
  assert_int_equal(ns_altsvc_decode_(v, len + 1, b, 3), -1);
  /* too small a buffer, invalid entries */
  assert_int_equal(ns_altsvc_encode_(a, 1, v, 10), 0);
  assert_int_equal(ns_altsvc_encode_(a, 0, v, sizeof(v)), 0);
  b[0] = a[0];
  b[0].port = 0;
  assert_int_equal(ns_altsvc_encode_(b, 1, v, sizeof(v)), 0);
  b[0] = a[0];
  b[0].alpn[0] = 0;
  assert_int_equal(ns_altsvc_encode_(b, 1, v, sizeof(v)), 0);
  b[0] = a[0];
  memset(b[0].host, 'a', sizeof(b[0].host)); /* no NUL */
  assert_int_equal(ns_altsvc_encode_(b, 1, v, sizeof(v)), 0);
}

/* ------------------------------------------------------------ broken h3 */

static void test_broken_backoff(void **state) {
  ns_altsvc_broken *b = NULL;
  const int64_t base = 1000;
  int64_t t = NOW;
  (void)state;
  assert_int_equal(ns_altsvc_broken_new(ns_mem_default(), &b), NETSTASH_OK);
  assert_false(ns_altsvc_is_broken(b, "h.example.test", 443, t));

  /* default base: 5 minutes */
  ns_altsvc_mark_broken(b, "h.example.test", 443, t);
  assert_true(ns_altsvc_is_broken(b, "h.example.test", 443, t));
  assert_true(ns_altsvc_is_broken(b, "H.EXAMPLE.test", 443, t + 5 * 60 * 1000 - 1));
  assert_false(ns_altsvc_is_broken(b, "h.example.test", 443, t + 5 * 60 * 1000));
  assert_false(ns_altsvc_is_broken(b, "h.example.test", 8443, t)); /* another port */
  assert_false(ns_altsvc_is_broken(b, "g.example.test", 443, t));
  ns_altsvc_confirm(b, "h.example.test", 443);

  /* base << (n - 1): 1 s, 2 s, 4 s, 8 s */
  ns_altsvc_broken_set_base(b, base);
  for (int n = 1; n <= 4; n++) {
    int64_t d = base << (n - 1);
    ns_altsvc_mark_broken(b, "H.example.test", 443, t);
    assert_true(ns_altsvc_is_broken(b, "h.example.test", 443, t + d - 1));
    assert_false(ns_altsvc_is_broken(b, "h.example.test", 443, t + d));
    t += d;
  }
  /* a failure while still broken does not count again */
  ns_altsvc_mark_broken(b, "h.example.test", 443, t);      /* 5th: 16 s */
  ns_altsvc_mark_broken(b, "h.example.test", 443, t + 10); /* same outage */
  assert_false(ns_altsvc_is_broken(b, "h.example.test", 443, t + 16 * base));
  t += 16 * base;
  /* a success resets the count */
  ns_altsvc_confirm(b, "h.example.test", 443);
  assert_false(ns_altsvc_is_broken(b, "h.example.test", 443, t));
  assert_int_equal(ns_altsvc_broken_count(b), 0);
  ns_altsvc_mark_broken(b, "h.example.test", 443, t);
  assert_true(ns_altsvc_is_broken(b, "h.example.test", 443, t + base - 1));
  assert_false(ns_altsvc_is_broken(b, "h.example.test", 443, t + base));
  ns_altsvc_confirm(b, "h.example.test", 443);

  /* capped at 48 h, however many failures */
  ns_altsvc_broken_set_base(b, 0); /* back to 5 min */
  for (int n = 1; n <= 100; n++) {
    ns_altsvc_mark_broken(b, "h.example.test", 443, t);
    if (n == 10) { /* 5 min << 9 = 42.7 h: not capped yet */
      assert_true(ns_altsvc_is_broken(b, "h.example.test", 443, t + (INT64_C(300000) << 9) - 1));
      assert_false(ns_altsvc_is_broken(b, "h.example.test", 443, t + (INT64_C(300000) << 9)));
    }
    if (n >= 11) {
      assert_true(ns_altsvc_is_broken(b, "h.example.test", 443, t + NS_ALTSVC_BROKEN_CAP_MS - 1));
      assert_false(ns_altsvc_is_broken(b, "h.example.test", 443, t + NS_ALTSVC_BROKEN_CAP_MS));
    }
    t += NS_ALTSVC_BROKEN_CAP_MS;
  }
  /* the end of time saturates */
  ns_altsvc_mark_broken(b, "end.test", 443, INT64_MAX - 10);
  assert_true(ns_altsvc_is_broken(b, "end.test", 443, INT64_MAX - 1));
  /* base clamped to the cap */
  ns_altsvc_broken_set_base(b, INT64_MAX);
  ns_altsvc_mark_broken(b, "c.test", 443, t);
  assert_false(ns_altsvc_is_broken(b, "c.test", 443, t + NS_ALTSVC_BROKEN_CAP_MS));
  /* confirming an unknown endpoint, NULL arguments */
  ns_altsvc_confirm(b, "unknown.test", 443);
  ns_altsvc_mark_broken(b, NULL, 443, t);
  assert_false(ns_altsvc_is_broken(b, NULL, 443, t));
  assert_false(ns_altsvc_is_broken(NULL, "c.test", 443, t));
  ns_altsvc_broken_del(b);
  ns_altsvc_broken_del(NULL);
}

static void test_broken_bound(void **state) {
  ns_altsvc_broken *b = NULL;
  char host[64];
  char longhost[300];
  (void)state;
  assert_int_equal(ns_altsvc_broken_new(ns_mem_default(), &b), NETSTASH_OK);
  for (int i = 0; i < NS_ALTSVC_BROKEN_MAX + 50; i++) {
    snprintf(host, sizeof(host), "h%d.example.test", i);
    ns_altsvc_mark_broken(b, host, 443, NOW + i);
    assert_true(ns_altsvc_broken_count(b) <= NS_ALTSVC_BROKEN_MAX);
  }
  assert_int_equal(ns_altsvc_broken_count(b), NS_ALTSVC_BROKEN_MAX);
  /* the 50 least recently marked were evicted, the rest kept */
  for (int i = 0; i < NS_ALTSVC_BROKEN_MAX + 50; i++) {
    snprintf(host, sizeof(host), "h%d.example.test", i);
    if (ns_altsvc_is_broken(b, host, 443, NOW + 1000) != (i >= 50))
      fail_msg("%s: broken %d", host, !(i >= 50));
  }
  /* re-marking moves an endpoint to the back of the eviction order:
   * h50 is re-marked (once its period is over), then one new endpoint
   * evicts h51, the least recent, not h50 */
  ns_altsvc_mark_broken(b, "h50.example.test", 443, NOW + 10 * 60 * 1000);
  ns_altsvc_mark_broken(b, "new.example.test", 443, NOW + 10 * 60 * 1000);
  assert_true(ns_altsvc_is_broken(b, "h50.example.test", 443, NOW + 10 * 60 * 1000));
  assert_false(ns_altsvc_is_broken(b, "h51.example.test", 443, NOW + 1000));
  assert_true(ns_altsvc_is_broken(b, "h52.example.test", 443, NOW + 1000));
  /* a host too long to keep is not remembered */
  memset(longhost, 'a', 256);
  longhost[256] = 0;
  ns_altsvc_mark_broken(b, longhost, 443, NOW);
  assert_false(ns_altsvc_is_broken(b, longhost, 443, NOW));
  assert_int_equal(ns_altsvc_broken_count(b), NS_ALTSVC_BROKEN_MAX);
  ns_altsvc_broken_del(b);
}

/* Allocation through the given allocator; failure reported. */
static int fail_alloc;
static void *t_malloc(size_t n, void *ud) {
  (void)ud;
  return fail_alloc ? NULL : malloc(n);
}
static void t_free(void *p, void *ud) {
  (void)ud;
  free(p);
}
static void *t_calloc(size_t a, size_t n, void *ud) {
  (void)ud;
  return fail_alloc ? NULL : calloc(a, n);
}
static void *t_realloc(void *p, size_t n, void *ud) {
  (void)ud;
  return fail_alloc ? NULL : realloc(p, n);
}

static void test_broken_alloc(void **state) {
  ns_mem m = {NULL, t_malloc, t_free, t_calloc, t_realloc};
  ns_altsvc_broken *b = (void *)1;
  (void)state;
  fail_alloc = 1;
  assert_int_equal(ns_altsvc_broken_new(&m, &b), NETSTASH_E_NOMEM);
  assert_null(b);
  fail_alloc = 0;
  assert_int_equal(ns_altsvc_broken_new(&m, &b), NETSTASH_OK);
  assert_non_null(b);
  ns_altsvc_mark_broken(b, "a.test", 443, NOW);
  assert_true(ns_altsvc_is_broken(b, "a.test", 443, NOW));
  ns_altsvc_broken_del(b);
  assert_int_equal(ns_altsvc_broken_new(NULL, &b), NETSTASH_E_INVALID_ARGUMENT);
  assert_null(b);
  assert_int_equal(ns_altsvc_broken_new(&m, NULL), NETSTASH_E_INVALID_ARGUMENT);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_parse_cases),
      cmocka_unit_test(test_parse_list),
      cmocka_unit_test(test_parse_clear),
      cmocka_unit_test(test_parse_ma_limits),
      cmocka_unit_test(test_parse_bounds),
      cmocka_unit_test_setup_teardown(test_save_lookup, setup, teardown),
      cmocka_unit_test_setup_teardown(test_expiry, setup, teardown),
      cmocka_unit_test_setup_teardown(test_clear_and_ports, setup, teardown),
      cmocka_unit_test_setup_teardown(test_bad_arguments, setup, teardown),
      cmocka_unit_test_setup_teardown(test_foreign_record, setup, teardown),
      cmocka_unit_test(test_record_codec),
      cmocka_unit_test(test_broken_backoff),
      cmocka_unit_test(test_broken_bound),
      cmocka_unit_test(test_broken_alloc),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
