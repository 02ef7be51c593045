/*
 * altsvc.c — Alt-Svc (RFC 7838) parsing, persistence of an origin's h3
 * alternative in the store, and the broken-h3 table. See altsvc.h.
 */
#include "ns_setup.h"

#include <limits.h>
#include <stdio.h>

#include "core/reader.h"
#include "core/url.h"
#include "store/store.h"
#include "transport/altsvc.h"

#define ALTSVC_PREFIX "altsvc "
#define ALTSVC_REC_VERSION 1
#define ALTSVC_F_PERSIST 1u
/* "altsvc " "[" host "]" ":" port NUL */
#define ALTSVC_KEY_CAP (sizeof(ALTSVC_PREFIX) + 1 + 255 + 1 + 1 + 5 + 1)
/* An ALPN protocol name is 1 to 255 bytes (RFC 7301 §3.1). */
#define ALPN_MAX 255
/* Unescaped alt-authority: "[" host "]" ":" port. */
#define AUTH_MAX (1 + 255 + 1 + 1 + 5)

static int64_t add_sat(int64_t a, int64_t b) {
  int64_t r;
  if (__builtin_add_overflow(a, b, &r))
    return b > 0 ? INT64_MAX : INT64_MIN;
  return r;
}

static int hexval(int c) {
  if (ns_is_digit(c))
    return c - '0';
  if (c >= 'a' && c <= 'f')
    return c - 'a' + 10;
  if (c >= 'A' && c <= 'F')
    return c - 'A' + 10;
  return -1;
}

/* A host byte we keep: the unreserved set of a reg-name (RFC 3986 §2.3,
 * §3.2.2). Percent-encoding and sub-delims have no place in a DNS name. */
static int is_host_char(int c) {
  return ns_is_alpha(c) || ns_is_digit(c) || c == '-' || c == '.' || c == '_' || c == '~';
}

/* protocol-id (RFC 7838 §3): a token holding a percent-encoded ALPN protocol
 * name. The first cap - 1 decoded bytes go to out (NUL-terminated), the full
 * decoded length to *len. 0 for a '%' not followed by two hex digits or a
 * name longer than ALPN_MAX. */
static int decode_protocol_id(ns_span tok, char *out, size_t cap, size_t *len) {
  size_t i, n = 0;
  for (i = 0; i < tok.len; i++) {
    int c = (unsigned char)tok.p[i];
    if (c == '%') {
      int hi, lo;
      if (tok.len - i < 3 || (hi = hexval((unsigned char)tok.p[i + 1])) < 0 ||
          (lo = hexval((unsigned char)tok.p[i + 2])) < 0)
        return 0;
      c = hi * 16 + lo;
      i += 2;
    }
    if (n == ALPN_MAX)
      return 0;
    if (n + 1 < cap)
      out[n] = (char)c;
    n++;
  }
  out[NS_MIN(n, cap - 1)] = 0;
  *len = n;
  return n > 0;
}

/* alt-authority = quoted-string containing [ uri-host ] ":" port
 * (RFC 7838 §3). raw is the quoted-string's content with its escapes in place
 * (already checked by ns_reader_quoted). host (256 bytes) receives the host
 * in lower case, an IPv6 literal without its brackets, "" when absent. */
static int parse_authority(ns_span raw, char *host, int *port) {
  char a[AUTH_MAX];
  size_t n = 0, i, hl, colon;
  ns_reader r;
  uint64_t v;

  for (i = 0; i < raw.len; i++) {
    char c = raw.p[i];
    if (c == '\\' && i + 1 < raw.len)
      c = raw.p[++i]; /* quoted-pair */
    if (n == sizeof(a))
      return 0;
    a[n++] = c;
  }
  if (n > 0 && a[0] == '[') {
    /* IP-literal (RFC 3986 §3.2.2): IPv6 only; IPvFuture and zone IDs are
     * refused */
    int v6 = 0;
    for (hl = 0; 1 + hl < n && a[1 + hl] != ']'; hl++)
      if (!(hexval((unsigned char)a[1 + hl]) >= 0 || a[1 + hl] == ':' || a[1 + hl] == '.'))
        return 0;
    colon = 1 + hl + 1;
    if (hl == 0 || hl > 255 || colon >= n || a[colon] != ':')
      return 0;
    memcpy(host, a + 1, hl);
    host[hl] = 0;
    if (!ns_host_is_ip(host, &v6) || !v6)
      return 0;
  } else {
    /* reg-name or IPv4address, possibly empty */
    for (hl = 0; hl < n && a[hl] != ':'; hl++)
      if (!is_host_char((unsigned char)a[hl]))
        return 0;
    colon = hl;
    if (colon >= n || hl > 255)
      return 0;
    memcpy(host, a, hl);
    host[hl] = 0;
  }
  for (i = 0; i < hl; i++)
    host[i] = ns_ascii_lower(host[i]);
  /* port = *DIGIT, here 1..65535 */
  ns_reader_init(&r, a + colon + 1, n - colon - 1);
  if (!ns_reader_uint(&r, 65536, &v, NULL) || !ns_reader_eof(&r) || v == 0 || v > 65535)
    return 0;
  *port = (int)v;
  return 1;
}

int ns_altsvc_parse(const char *value, size_t len, int64_t now_ms, ns_altsvc *out, size_t cap,
                    int *clear) {
  ns_reader r;
  size_t n = 0, seen = 0;

  if (clear)
    *clear = 0;
  if (!out)
    cap = 0;
  ns_reader_init(&r, value, len);
  /* clear = %s"clear" (RFC 7838 §3): case-sensitive, alone */
  if (ns_span_eq(ns_span_trim(ns_span_make(r.p, r.len)), ns_span_make("clear", 5))) {
    if (clear)
      *clear = 1;
    return 0;
  }
  while (ns_reader_list_next(&r)) {
    ns_span id, raw, pname, pval;
    char alpn[sizeof(out->alpn)], host[sizeof(out->host)];
    size_t alpn_len;
    int port, persist = 0, has_value, quoted, rc;
    int64_t ma_s = NS_ALTSVC_MA_DEFAULT_S;

    seen++;
    /* alternative = protocol-id "=" alt-authority */
    if (!ns_reader_token(&r, &id) || !decode_protocol_id(id, alpn, sizeof(alpn), &alpn_len) ||
        !ns_reader_skip_char(&r, '=') || ns_reader_quoted(&r, &raw, NULL) != NETSTASH_OK ||
        !parse_authority(raw, host, &port))
      return -1;
    /* *( OWS ";" OWS parameter ) */
    while ((rc = ns_reader_param(&r, &pname, &pval, &has_value, &quoted)) == 1) {
      if (ns_span_eq_ci(pname, "ma")) {
        /* ma = delta-seconds (RFC 7838 §3.1) */
        int64_t s;
        if (!has_value || !ns_delta_seconds_parse(pval, &s))
          return -1;
        ma_s = NS_MIN(s, NS_ALTSVC_MA_MAX_S);
      } else if (ns_span_eq_ci(pname, "persist")) {
        /* §3.1: values other than "1" MUST be ignored */
        if (has_value && pval.len == 1 && pval.p[0] == '1')
          persist = 1;
      } /* unknown parameters are ignored (§3) */
    }
    if (rc < 0)
      return -1;
    ns_reader_skip_ows(&r);
    if (!ns_reader_eof(&r) && ns_reader_peek(&r) != ',')
      return -1;
    if (alpn_len == 2 && memcmp(alpn, "h3", 2) == 0 && n < cap && n < INT_MAX) {
      ns_altsvc *a = &out[n++];
      memset(a, 0, sizeof(*a));
      memcpy(a->alpn, "h3", 3);
      memcpy(a->host, host, strlen(host) + 1);
      a->port = port;
      a->expires_ms = add_sat(now_ms, ma_s * 1000);
      a->persist = persist;
    }
  }
  return seen ? (int)n : -1;
}

/* ------------------------------------------------------------ records */

static int printable(int c) {
  return c > 0x20 && c < 0x7f;
}

static int is_h3(const ns_altsvc *a) {
  return strncmp(a->alpn, "h3", sizeof(a->alpn)) == 0;
}

size_t ns_altsvc_encode_(const ns_altsvc *alts, size_t n, uint8_t *buf, size_t cap) {
  size_t len = 2, i, k;
  if (!alts || n == 0 || !buf)
    return 0;
  n = NS_MIN(n, (size_t)NS_ALTSVC_STORE_MAX);
  if (cap < len)
    return 0;
  buf[0] = ALTSVC_REC_VERSION;
  buf[1] = (uint8_t)n;
  for (i = 0; i < n; i++) {
    const ns_altsvc *a = &alts[i];
    size_t al = strnlen(a->alpn, sizeof(a->alpn)), hl = strnlen(a->host, sizeof(a->host));
    uint64_t exp = (uint64_t)a->expires_ms;
    if (al == 0 || al == sizeof(a->alpn) || hl == sizeof(a->host) || a->port < 1 ||
        a->port > 65535 || cap - len < 1 + al + 1 + hl + 2 + 1 + 8)
      return 0;
    buf[len++] = (uint8_t)al;
    for (k = 0; k < al; k++) {
      if (!printable((unsigned char)a->alpn[k]))
        return 0;
      buf[len++] = (uint8_t)a->alpn[k];
    }
    buf[len++] = (uint8_t)hl;
    for (k = 0; k < hl; k++) {
      if (!printable((unsigned char)a->host[k]))
        return 0;
      buf[len++] = (uint8_t)ns_ascii_lower(a->host[k]);
    }
    buf[len++] = (uint8_t)(a->port >> 8);
    buf[len++] = (uint8_t)a->port;
    buf[len++] = a->persist ? ALTSVC_F_PERSIST : 0;
    for (k = 0; k < 8; k++)
      buf[len++] = (uint8_t)(exp >> (56 - 8 * k));
  }
  return len;
}

/* n raw bytes through the reader (bounds-checked). */
static int take(ns_reader *r, size_t n, const uint8_t **p) {
  if (ns_reader_left(r) < n)
    return 0;
  *p = (const uint8_t *)r->p + r->pos;
  r->pos += n;
  return 1;
}

/* A length-prefixed printable string of at most max bytes into out. */
static int take_str(ns_reader *r, size_t min, size_t max, char *out) {
  const uint8_t *l, *s;
  size_t i;
  if (!take(r, 1, &l) || *l < min || *l > max || !take(r, *l, &s))
    return 0;
  for (i = 0; i < *l; i++) {
    /* hosts are written in lower case: anything else is not our writing */
    if (!printable(s[i]) || (s[i] >= 'A' && s[i] <= 'Z'))
      return 0;
    out[i] = (char)s[i];
  }
  out[*l] = 0;
  return 1;
}

int ns_altsvc_decode_(const uint8_t *p, size_t len, ns_altsvc *out, size_t cap) {
  ns_reader r;
  const uint8_t *h, *f;
  size_t count, i, k;
  ns_altsvc a;

  ns_reader_init(&r, p, len);
  if (!take(&r, 2, &h) || h[0] != ALTSVC_REC_VERSION || h[1] == 0 || h[1] > NS_ALTSVC_STORE_MAX)
    return -1;
  count = h[1];
  for (i = 0; i < count; i++) {
    uint64_t exp = 0;
    memset(&a, 0, sizeof(a));
    if (!take_str(&r, 1, sizeof(a.alpn) - 1, a.alpn) ||
        !take_str(&r, 0, sizeof(a.host) - 1, a.host) || !take(&r, 2 + 1 + 8, &f))
      return -1;
    a.port = (f[0] << 8) | f[1];
    if (a.port == 0 || f[2] > ALTSVC_F_PERSIST)
      return -1;
    a.persist = f[2] == ALTSVC_F_PERSIST;
    for (k = 0; k < 8; k++)
      exp = (exp << 8) | f[3 + k];
    a.expires_ms = (int64_t)exp;
    if (i < cap)
      out[i] = a;
  }
  return ns_reader_eof(&r) ? (int)count : -1;
}

/* "altsvc <host>:<port>", host in lower case, an IPv6 literal bracketed. */
static int make_key(const char *host, int port, char *key, size_t cap, size_t *keylen) {
  size_t hl, i;
  int v6, n;
  if (!host || port < 1 || port > 65535)
    return 0;
  hl = strnlen(host, 256);
  if (hl == 0 || hl > 255)
    return 0;
  for (i = 0; i < hl; i++)
    if (!printable((unsigned char)host[i]) || host[i] == '[' || host[i] == ']')
      return 0;
  v6 = memchr(host, ':', hl) != NULL;
  n = snprintf(key, cap, ALTSVC_PREFIX "%s%s%s:%d", v6 ? "[" : "", host, v6 ? "]" : "", port);
  if (n <= 0 || (size_t)n >= cap)
    return 0;
  for (i = sizeof(ALTSVC_PREFIX) - 1; i < (size_t)n; i++)
    key[i] = ns_ascii_lower(key[i]);
  *keylen = (size_t)n;
  return 1;
}

netstash_error ns_altsvc_save(ns_store *store, const char *host, int port, const ns_altsvc *alts,
                              size_t n, int clear) {
  char key[ALTSVC_KEY_CAP];
  ns_altsvc keep[NS_ALTSVC_STORE_MAX];
  uint8_t v[NS_ALTSVC_REC_MAX];
  size_t keylen, nk = 0, vlen, i;
  netstash_error rv;

  if (!store || !make_key(host, port, key, sizeof(key), &keylen) || (n > 0 && !alts))
    return NETSTASH_E_INVALID_ARGUMENT;
  for (i = 0; !clear && i < n && nk < NS_ALTSVC_STORE_MAX; i++)
    if (is_h3(&alts[i]))
      keep[nk++] = alts[i];
  if (nk == 0) {
    /* "clear", or no h3 offered: the origin has no alternative (§3) */
    rv = ns_store_del(store, NS_STORE_HTTP, key, keylen);
    return rv == NETSTASH_E_NOT_FOUND ? NETSTASH_OK : rv;
  }
  vlen = ns_altsvc_encode_(keep, nk, v, sizeof(v));
  if (vlen == 0)
    return NETSTASH_E_INVALID_ARGUMENT;
  return ns_store_put(store, NS_STORE_HTTP, key, keylen, v, vlen, NULL, NS_STORE_REC_PINNED);
}

/* The first unexpired h3 entry of a record: its index, or -1. n is what
 * ns_altsvc_decode_ returned. */
static int first_live(const ns_altsvc *alts, int n, int64_t now_ms) {
  int i;
  for (i = 0; i < n && i < NS_ALTSVC_STORE_MAX; i++)
    if (is_h3(&alts[i]) && alts[i].expires_ms > now_ms)
      return i;
  return -1;
}

typedef struct expire_ctx {
  const char *key;
  size_t keylen;
  int64_t now_ms;
} expire_ctx;

/* Deletes the record if it is still ours and all expired (another process
 * may have written a fresh one since our read). Replayable. */
static netstash_error delete_expired(ns_store_txn *t, void *ud) {
  expire_ctx *ec = ud;
  ns_store_record rec;
  ns_altsvc alts[NS_ALTSVC_STORE_MAX];
  int n;
  netstash_error rv = ns_store_txn_get(t, NS_STORE_HTTP, ec->key, ec->keylen, &rec);
  if (rv != NETSTASH_OK)
    return rv == NETSTASH_E_NOT_FOUND ? NETSTASH_OK : rv;
  n = ns_altsvc_decode_(rec.value, rec.value_len, alts, NS_ALTSVC_STORE_MAX);
  if (n <= 0 || first_live(alts, n, ec->now_ms) >= 0)
    return NETSTASH_OK;
  return ns_store_txn_del(t, NS_STORE_HTTP, ec->key, ec->keylen);
}

netstash_error ns_altsvc_lookup(ns_store *store, const char *host, int port, int64_t now_ms,
                                ns_altsvc *out) {
  char key[ALTSVC_KEY_CAP];
  ns_altsvc alts[NS_ALTSVC_STORE_MAX];
  ns_store_reader *r = NULL;
  ns_store_record rec;
  size_t keylen;
  int n = -1, i;
  netstash_error rv;

  if (!store || !out || !make_key(host, port, key, sizeof(key), &keylen))
    return NETSTASH_E_INVALID_ARGUMENT;
  rv = ns_store_reader_new(store, &r);
  if (rv != NETSTASH_OK)
    goto done;
  rv = ns_store_read_begin(r);
  if (rv != NETSTASH_OK)
    goto done;
  rv = ns_store_get(r, NS_STORE_HTTP, key, keylen, &rec);
  if (rv == NETSTASH_OK)
    n = ns_altsvc_decode_(rec.value, rec.value_len, alts, NS_ALTSVC_STORE_MAX);
  ns_store_read_end(r);
  /* no read transaction may be open during the write below (store.h) */
  ns_store_reader_del(r);
  r = NULL;
  if (rv != NETSTASH_OK)
    goto done;
  i = first_live(alts, n, now_ms);
  if (i >= 0) {
    *out = alts[i];
    goto done;
  }
  rv = NETSTASH_E_NOT_FOUND;
  if (n > 0) {
    /* all expired: delete lazily; a failure only postpones it */
    expire_ctx ec = {key, keylen, now_ms};
    (void)ns_store_write(store, delete_expired, &ec);
  }
done:
  ns_store_reader_del(r);
  return rv;
}

/* ------------------------------------------------------------ broken h3 */

typedef struct broken_entry {
  char host[256]; /* lower case */
  int port;
  unsigned failures; /* since the last confirmation, >= 1 */
  int64_t until_ms;  /* broken before this time */
  uint64_t seq;      /* last mark: the smallest is evicted first */
} broken_entry;

struct ns_altsvc_broken {
  ns_mem mem;
  int64_t base_ms;
  uint64_t seq;
  size_t n;
  broken_entry e[NS_ALTSVC_BROKEN_MAX];
};

netstash_error ns_altsvc_broken_new(const ns_mem *mem, ns_altsvc_broken **out) {
  ns_altsvc_broken *b;
  if (!out)
    return NETSTASH_E_INVALID_ARGUMENT;
  *out = NULL;
  if (!mem)
    return NETSTASH_E_INVALID_ARGUMENT;
  b = ns_calloc(mem, 1, sizeof(*b));
  if (!b)
    return NETSTASH_E_NOMEM;
  b->mem = *mem;
  b->base_ms = NS_ALTSVC_BROKEN_BASE_MS;
  *out = b;
  return NETSTASH_OK;
}

void ns_altsvc_broken_del(ns_altsvc_broken *b) {
  ns_mem mem;
  if (!b)
    return;
  mem = b->mem;
  ns_free(&mem, b);
}

void ns_altsvc_broken_set_base(ns_altsvc_broken *b, int64_t base_ms) {
  if (!b)
    return;
  if (base_ms <= 0)
    base_ms = NS_ALTSVC_BROKEN_BASE_MS;
  b->base_ms = NS_MIN(base_ms, NS_ALTSVC_BROKEN_CAP_MS);
}

/* The entry of host:port, or NS_ALTSVC_BROKEN_MAX. */
static size_t find(const ns_altsvc_broken *b, const char *host, int port) {
  size_t i;
  if (!b || !host)
    return NS_ALTSVC_BROKEN_MAX;
  for (i = 0; i < b->n; i++)
    if (b->e[i].port == port && ns_ascii_casecmp(b->e[i].host, host) == 0)
      return i;
  return NS_ALTSVC_BROKEN_MAX;
}

void ns_altsvc_mark_broken(ns_altsvc_broken *b, const char *host, int port, int64_t now_ms) {
  size_t i, hl, k;
  broken_entry *e;
  int64_t d;

  if (!b || !host || (hl = strnlen(host, 256)) > 255)
    return;
  i = find(b, host, port);
  if (i == NS_ALTSVC_BROKEN_MAX) {
    if (b->n < NS_ALTSVC_BROKEN_MAX) {
      i = b->n++;
    } else {
      /* full: reuse the least recently marked */
      i = 0;
      for (k = 1; k < b->n; k++)
        if (b->e[k].seq < b->e[i].seq)
          i = k;
    }
    e = &b->e[i];
    for (k = 0; k < hl; k++)
      e->host[k] = ns_ascii_lower(host[k]);
    e->host[hl] = 0;
    e->port = port;
    e->failures = 0;
    e->until_ms = INT64_MIN;
  }
  e = &b->e[i];
  /* Several attempts failing in the same outage (e.g. parallel requests)
   * count once: while broken, a new failure changes nothing. */
  if (e->failures > 0 && now_ms < e->until_ms)
    return;
  if (e->failures < 64)
    e->failures++;
  /* base << (failures - 1), capped (Chromium: 5 min doubling up to 48 h) */
  d = b->base_ms;
  for (k = 1; k < e->failures && d < NS_ALTSVC_BROKEN_CAP_MS; k++)
    d *= 2; /* d <= CAP before doubling: no overflow */
  e->until_ms = add_sat(now_ms, NS_MIN(d, NS_ALTSVC_BROKEN_CAP_MS));
  e->seq = ++b->seq;
}

int ns_altsvc_is_broken(const ns_altsvc_broken *b, const char *host, int port, int64_t now_ms) {
  size_t i = find(b, host, port);
  return i != NS_ALTSVC_BROKEN_MAX && now_ms < b->e[i].until_ms;
}

void ns_altsvc_confirm(ns_altsvc_broken *b, const char *host, int port) {
  size_t i = find(b, host, port);
  if (i == NS_ALTSVC_BROKEN_MAX)
    return;
  if (i != b->n - 1)
    b->e[i] = b->e[b->n - 1];
  b->n--;
}

size_t ns_altsvc_broken_count(const ns_altsvc_broken *b) {
  return b ? b->n : 0;
}
