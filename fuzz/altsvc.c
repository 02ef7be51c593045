/*
 * fuzz/altsvc.c — lib/transport/altsvc.c under libFuzzer: the Alt-Svc
 * parser, the store record codec and the broken-h3 table.
 *
 * Input layout:
 *   byte 0     bits 0-2: cap (0..7) for the parser's output; bits 3-7: now
 *              offset (seconds)
 *   bytes 1..  an Alt-Svc field value; the same bytes are also decoded as a
 *              store record and, two bytes per step, drive the broken table
 *              (op = byte & 3: mark, confirm, check, advance time; the next
 *              byte picks one of 512 host names, so eviction is reached)
 *
 * Checked beyond "no crash, no leak, no UB":
 *  - parse returns -1..cap; "clear" only with 0; every entry is "h3", a host
 *    in lower case of host characters (or an IPv6 literal), port 1..65535,
 *    expiry within [now, now + NS_ALTSVC_MA_MAX_S], persist 0 or 1;
 *  - a smaller cap yields a prefix of a larger cap's output, and validity
 *    does not depend on cap;
 *  - the entries, written back as an Alt-Svc value, parse to the same
 *    entries; encoded as a record, they decode to the same entries;
 *  - a record the decoder accepts re-encodes to exactly its bytes;
 *  - the broken table: marked means broken at that instant, confirmed means
 *    not broken, never more than NS_ALTSVC_BROKEN_MAX endpoints.
 */
#include "ns_setup.h"

#include <stdio.h>
#include <stdlib.h>

#include "transport/altsvc.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                                                \
  do {                                                                                             \
    if (!(cond))                                                                                   \
      abort();                                                                                     \
  } while (0)

#define T0 INT64_C(1700000000000)
#define CAP_MAX 8

static int same(const ns_altsvc *a, const ns_altsvc *b) {
  return strcmp(a->alpn, b->alpn) == 0 && strcmp(a->host, b->host) == 0 && a->port == b->port &&
         a->expires_ms == b->expires_ms && a->persist == b->persist;
}

static void check_entry(const ns_altsvc *a, int64_t now) {
  size_t hl = strnlen(a->host, sizeof(a->host)), i;
  int v6 = memchr(a->host, ':', hl) != NULL;
  CHECK(strcmp(a->alpn, "h3") == 0);
  CHECK(hl < sizeof(a->host));
  for (i = 0; i < hl; i++) {
    char c = a->host[i];
    int ok = (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '.' || c == '_' ||
             c == '~' || (v6 && c == ':');
    CHECK(ok);
  }
  CHECK(a->port >= 1 && a->port <= 65535);
  CHECK(a->expires_ms >= now && a->expires_ms <= now + NS_ALTSVC_MA_MAX_S * 1000);
  CHECK(a->persist == 0 || a->persist == 1);
}

/* The entries written back as an Alt-Svc value. */
static size_t unparse(const ns_altsvc *a, int n, int64_t now, char *out, size_t cap) {
  size_t len = 0;
  int i, w;
  for (i = 0; i < n; i++) {
    int v6 = strchr(a[i].host, ':') != NULL;
    w = snprintf(out + len, cap - len, "%s%s=\"%s%s%s:%d\"; ma=%lld%s", i ? ", " : "", a[i].alpn,
                 v6 ? "[" : "", a[i].host, v6 ? "]" : "", a[i].port,
                 (long long)((a[i].expires_ms - now) / 1000), a[i].persist ? "; persist=1" : "");
    CHECK(w > 0 && (size_t)w < cap - len);
    len += (size_t)w;
  }
  return len;
}

static void fuzz_parse(const char *v, size_t len, size_t cap, int64_t now) {
  ns_altsvc a[CAP_MAX], full[CAP_MAX], again[CAP_MAX], dec[CAP_MAX];
  uint8_t rec[NS_ALTSVC_REC_MAX];
  char text[CAP_MAX * 320];
  int n, nfull, n0, clear = -1, clear2 = -1, i;
  size_t rl, tl;

  n = ns_altsvc_parse(v, len, now, cap ? a : NULL, cap, &clear);
  CHECK(n >= -1 && n <= (int)cap);
  CHECK(clear == 0 || clear == 1);
  if (clear)
    CHECK(n == 0);
  nfull = ns_altsvc_parse(v, len, now, full, CAP_MAX, &clear2);
  CHECK(clear2 == clear);
  CHECK((n < 0) == (nfull < 0));
  n0 = ns_altsvc_parse(v, len, now, NULL, 0, NULL);
  CHECK((n0 < 0) == (n < 0) && n0 <= 0);
  if (n <= 0)
    return;
  CHECK(n == NS_MIN(nfull, (int)cap));
  for (i = 0; i < n; i++) {
    check_entry(&a[i], now);
    CHECK(same(&a[i], &full[i]));
  }
  /* written back as a field value: the same entries */
  tl = unparse(a, n, now, text, sizeof(text));
  CHECK(ns_altsvc_parse(text, tl, now, again, CAP_MAX, NULL) == n);
  for (i = 0; i < n; i++)
    CHECK(same(&a[i], &again[i]));
  /* as a record: the same entries, at most NS_ALTSVC_STORE_MAX */
  rl = ns_altsvc_encode_(a, (size_t)n, rec, sizeof(rec));
  CHECK(rl > 0 && rl <= sizeof(rec));
  CHECK(ns_altsvc_decode_(rec, rl, dec, CAP_MAX) == NS_MIN(n, NS_ALTSVC_STORE_MAX));
  for (i = 0; i < NS_MIN(n, NS_ALTSVC_STORE_MAX); i++)
    CHECK(same(&a[i], &dec[i]));
}

static void fuzz_record(const uint8_t *p, size_t len) {
  ns_altsvc dec[NS_ALTSVC_STORE_MAX];
  uint8_t rec[NS_ALTSVC_REC_MAX];
  int n = ns_altsvc_decode_(p, len, dec, NS_ALTSVC_STORE_MAX);
  size_t rl;
  CHECK(n >= -1 && n <= NS_ALTSVC_STORE_MAX);
  if (n <= 0)
    return;
  rl = ns_altsvc_encode_(dec, (size_t)n, rec, sizeof(rec));
  CHECK(rl == len && memcmp(rec, p, len) == 0);
}

static void fuzz_broken(const uint8_t *p, size_t len) {
  ns_altsvc_broken *b = NULL;
  int64_t now = T0;
  size_t i;
  char host[32];
  if (ns_altsvc_broken_new(ns_mem_default(), &b) != NETSTASH_OK)
    abort();
  if (len && (p[0] & 0x80))
    ns_altsvc_broken_set_base(b, (int64_t)(p[0] & 0x7f) * 7);
  for (i = 0; i + 1 < len; i += 2) {
    int port = 443 + (p[i + 1] & 1);
    snprintf(host, sizeof(host), "%sh%u.test", (p[i] & 4) ? "W" : "w",
             p[i + 1] | ((p[i] & 8) << 5));
    switch (p[i] & 3) {
    case 0:
      ns_altsvc_mark_broken(b, host, port, now);
      CHECK(ns_altsvc_is_broken(b, host, port, now));
      break;
    case 1:
      ns_altsvc_confirm(b, host, port);
      CHECK(!ns_altsvc_is_broken(b, host, port, now));
      break;
    case 2:
      (void)ns_altsvc_is_broken(b, host, port, now);
      break;
    default:
      now += (int64_t)(p[i] >> 2) * 60000 * (p[i + 1] + 1);
      break;
    }
    CHECK(ns_altsvc_broken_count(b) <= NS_ALTSVC_BROKEN_MAX);
  }
  ns_altsvc_broken_del(b);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  int64_t now;
  if (size < 1)
    return 0;
  now = T0 + (int64_t)(data[0] >> 3) * 1000;
  fuzz_parse((const char *)data + 1, size - 1, data[0] & 7, now);
  fuzz_record(data + 1, size - 1);
  fuzz_broken(data + 1, size - 1);
  return 0;
}
