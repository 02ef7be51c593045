/*
 * persist.c — cookie jars in the profile's LMDB store, and the Netscape
 * cookies.txt format (curl's).
 *
 * Store layout (database NS_STORE_COOKIES):
 *   key    <jar name> 0x00 <identity>
 *          identity = <partition> 0x00 ('h' | 'd') <domain> 0x00 <path> 0x00 <name>
 *          ('h' host-only, 'd' domain cookie). A key longer than
 *          NS_STORE_KEY_MAX becomes <jar name> 0x00 0x01 SHA-256(identity).
 *   value  byte 0 version (1); byte 1 flags (1 host-only, 2 secure, 4 HttpOnly,
 *          8 persistent, 16 set from a secure origin, 32 partitioned);
 *          byte 2 SameSite; then big-endian i64 creation, last access,
 *          expiry (ms) and u64 seq; then partition, domain, path, name, value
 *          each as a big-endian u32 length and the bytes.
 * Writes are batched per jar in a "dirty" map (key -> cookie or tombstone)
 * and written in one transaction by ns_cookie_jar_flush: a kill -9 leaves
 * the store at the previous or the next flush, never between.
 */
#include "ns_setup.h"

#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>

#include "cookie/jar_int.h"
#include "core/reader.h"
#include "store/store.h"

#define REC_V1 1
#define F_HOST_ONLY 1u
#define F_SECURE 2u
#define F_HTTP_ONLY 4u
#define F_PERSISTENT 8u
#define F_SOURCE_SECURE 16u
#define F_PARTITIONED 32u
#define REC_FIXED 35u

static char tombstone;
#define TOMB ((void *)&tombstone)

/* ------------------------------------------------------------ keys */

static netstash_error identity(const ns_cookie *c, ns_buf *out) {
  netstash_error rv;
  if ((c->partition && (rv = ns_buf_append(out, c->partition, c->partition_len)) != NETSTASH_OK) ||
      (rv = ns_buf_append(out, "\0", 1)) != NETSTASH_OK ||
      (rv = ns_buf_append(out, c->host_only ? "h" : "d", 1)) != NETSTASH_OK ||
      (rv = ns_buf_append(out, c->domain, c->domain_len)) != NETSTASH_OK ||
      (rv = ns_buf_append(out, "\0", 1)) != NETSTASH_OK ||
      (rv = ns_buf_append(out, c->path, c->path_len)) != NETSTASH_OK ||
      (rv = ns_buf_append(out, "\0", 1)) != NETSTASH_OK ||
      (rv = ns_buf_append(out, c->name, c->name_len)) != NETSTASH_OK)
    return rv;
  return NETSTASH_OK;
}

/* The store key of c in jar->keybuf. */
static netstash_error make_key(ns_cookie_jar *jar, const ns_cookie *c) {
  ns_buf *k = &jar->keybuf;
  netstash_error rv;
  size_t start;
  ns_buf_reset(k);
  if ((rv = ns_buf_append(k, jar->name, jar->name_len)) != NETSTASH_OK ||
      (rv = ns_buf_append(k, "\0", 1)) != NETSTASH_OK)
    return rv;
  start = k->len;
  if ((rv = identity(c, k)) != NETSTASH_OK)
    return rv;
  if (k->len > NS_STORE_KEY_MAX) {
    uint8_t h[32];
    unsigned hl = 0;
    if (!EVP_Digest(k->data + start, k->len - start, h, &hl, EVP_sha256(), NULL) || hl != 32)
      return NETSTASH_E_NOMEM;
    k->len = start;
    if ((rv = ns_buf_append(k, "\x01", 1)) != NETSTASH_OK ||
        (rv = ns_buf_append(k, h, 32)) != NETSTASH_OK)
      return rv;
  }
  return NETSTASH_OK;
}

void ns_cookie_mark_dirty_lost_(ns_cookie_jar *jar) { jar->dirty_lost = 1; }

void ns_cookie_mark_dirty_(ns_cookie_jar *jar, const ns_cookie *c, int removed) {
  void *v;
  if (!jar->persistent)
    return;
  v = removed || !(c->persistent || (jar->flags & NS_COOKIE_JAR_PERSIST_SESSION))
          ? TOMB
          : (void *)(uintptr_t)c;
  if (make_key(jar, c) != NETSTASH_OK ||
      ns_map_put(&jar->dirty, jar->keybuf.data, jar->keybuf.len, v, NULL) != NETSTASH_OK)
    jar->dirty_lost = 1;
}

/* ------------------------------------------------------------ records */

static netstash_error put_u64(ns_buf *b, uint64_t v) {
  uint8_t x[8];
  int i;
  for (i = 0; i < 8; i++)
    x[i] = (uint8_t)(v >> (56 - 8 * i));
  return ns_buf_append(b, x, 8);
}

static netstash_error put_str(ns_buf *b, const char *s, size_t n) {
  uint8_t x[4] = {(uint8_t)(n >> 24), (uint8_t)(n >> 16), (uint8_t)(n >> 8), (uint8_t)n};
  netstash_error rv = ns_buf_append(b, x, 4);
  return rv == NETSTASH_OK && n ? ns_buf_append(b, s, n) : rv;
}

netstash_error ns_cookie_encode_(const ns_cookie *c, ns_buf *out) {
  uint8_t h[3];
  netstash_error rv;
  h[0] = REC_V1;
  h[1] = (uint8_t)((c->host_only ? F_HOST_ONLY : 0) | (c->secure ? F_SECURE : 0) |
                   (c->http_only ? F_HTTP_ONLY : 0) | (c->persistent ? F_PERSISTENT : 0) |
                   (c->source_secure ? F_SOURCE_SECURE : 0) |
                   (c->partition ? F_PARTITIONED : 0));
  h[2] = c->same_site;
  if ((rv = ns_buf_append(out, h, 3)) != NETSTASH_OK ||
      (rv = put_u64(out, (uint64_t)c->creation_ms)) != NETSTASH_OK ||
      (rv = put_u64(out, (uint64_t)c->last_access_ms)) != NETSTASH_OK ||
      (rv = put_u64(out, (uint64_t)c->expiry_ms)) != NETSTASH_OK ||
      (rv = put_u64(out, c->seq)) != NETSTASH_OK ||
      (rv = put_str(out, c->partition, c->partition_len)) != NETSTASH_OK ||
      (rv = put_str(out, c->domain, c->domain_len)) != NETSTASH_OK ||
      (rv = put_str(out, c->path, c->path_len)) != NETSTASH_OK ||
      (rv = put_str(out, c->name, c->name_len)) != NETSTASH_OK ||
      (rv = put_str(out, c->value, c->value_len)) != NETSTASH_OK)
    return rv;
  return NETSTASH_OK;
}

/* n raw bytes through the reader (bounds-checked). */
static int take(ns_reader *r, size_t n, const char **p) {
  if (ns_reader_left(r) < n)
    return 0;
  *p = r->p + r->pos;
  r->pos += n;
  return 1;
}

static int get_u64(ns_reader *r, uint64_t *v) {
  const char *p;
  int i;
  if (!take(r, 8, &p))
    return 0;
  *v = 0;
  for (i = 0; i < 8; i++)
    *v = (*v << 8) | (uint8_t)p[i];
  return 1;
}

static int get_str(ns_reader *r, size_t max, ns_span *s) {
  const char *p;
  size_t n;
  if (!take(r, 4, &p))
    return 0;
  n = ((size_t)(uint8_t)p[0] << 24) | ((size_t)(uint8_t)p[1] << 16) |
      ((size_t)(uint8_t)p[2] << 8) | (uint8_t)p[3];
  if (n > max || !take(r, n, &p))
    return 0;
  *s = ns_span_make(p, n);
  return 1;
}

static int clean(ns_span s) {
  size_t i;
  for (i = 0; i < s.len; i++)
    if (ns_cookie_ctl((unsigned char)s.p[i]))
      return 0;
  return 1;
}

ns_cookie *ns_cookie_decode_(const ns_mem *mem, const uint8_t *data, size_t len, int *nomem) {
  ns_reader r;
  const char *h;
  uint64_t cr, la, ex, seq;
  ns_span part, dom, path, name, value;
  ns_cookie *c;
  unsigned fl;
  *nomem = 0;
  ns_reader_init(&r, data, len);
  if (!take(&r, 3, &h) || h[0] != REC_V1 || (uint8_t)h[2] > NS_COOKIE_SS_STRICT ||
      !get_u64(&r, &cr) || !get_u64(&r, &la) || !get_u64(&r, &ex) || !get_u64(&r, &seq) ||
      !get_str(&r, 1024, &part) || !get_str(&r, NS_COOKIE_HOST_MAX, &dom) ||
      !get_str(&r, NS_COOKIE_MAX_ATTR_VALUE, &path) ||
      !get_str(&r, NS_COOKIE_MAX_NAME_VALUE, &name) ||
      !get_str(&r, NS_COOKIE_MAX_NAME_VALUE, &value) || !ns_reader_eof(&r))
    return NULL;
  fl = (uint8_t)h[1];
  if (name.len + value.len > NS_COOKIE_MAX_NAME_VALUE || (name.len == 0 && value.len == 0) ||
      dom.len == 0 || path.len == 0 || path.p[0] != '/' || !clean(name) || !clean(value) ||
      !clean(dom) || !clean(path) || !clean(part) || memchr(dom.p, 0, dom.len) ||
      ((fl & F_PARTITIONED) != 0) != (part.len != 0))
    return NULL;
  c = ns_cookie_new_(mem, name, value, dom.p, dom.len, path, part.len ? part.p : NULL,
                     part.len);
  if (!c) {
    *nomem = 1;
    return NULL;
  }
  c->host_only = (fl & F_HOST_ONLY) != 0;
  c->secure = (fl & F_SECURE) != 0;
  c->http_only = (fl & F_HTTP_ONLY) != 0;
  c->persistent = (fl & F_PERSISTENT) != 0;
  c->source_secure = (fl & F_SOURCE_SECURE) != 0;
  c->same_site = (uint8_t)h[2];
  c->creation_ms = (int64_t)cr;
  c->last_access_ms = c->stored_access_ms = (int64_t)la;
  c->expiry_ms = (int64_t)ex;
  c->seq = seq;
  return c;
}

/* ------------------------------------------------------------ load */

typedef struct load_ctx {
  ns_cookie_jar *jar;
  int64_t now_ms;
  netstash_error rv;
} load_ctx;

static int load_one(const uint8_t *key, size_t keylen, const ns_store_record *rec, void *ud) {
  load_ctx *lc = ud;
  ns_cookie_jar *jar = lc->jar;
  int nomem;
  ns_cookie *c = ns_cookie_decode_(jar->mem, rec->value, rec->value_len, &nomem);
  netstash_error rv;
  int drop = 0;
  if (nomem) {
    lc->rv = NETSTASH_E_NOMEM;
    return 1;
  }
  if (!c || c->expiry_ms <= lc->now_ms)
    drop = 1; /* damaged or expired: deleted at the next flush */
  else if (make_key(jar, c) != NETSTASH_OK || jar->keybuf.len != keylen ||
           memcmp(jar->keybuf.data, key, keylen) != 0)
    drop = 1; /* not under its own key: rewritten below */
  if (drop && ns_map_put(&jar->dirty, key, keylen, TOMB, NULL) != NETSTASH_OK)
    goto nomem;
  if (!c || c->expiry_ms <= lc->now_ms) {
    ns_free(jar->mem, c);
    return 0;
  }
  rv = ns_cookie_jar_attach_loaded_(jar, c);
  if (rv == NETSTASH_E_INVALID_ARGUMENT) {
    ns_free(jar->mem, c); /* a duplicate identity: the first one stays */
    return 0;
  }
  if (rv != NETSTASH_OK) {
    ns_free(jar->mem, c);
    lc->rv = rv;
    return 1;
  }
  if (drop)
    ns_cookie_mark_dirty_(jar, c, 0);
  return 0;
nomem:
  ns_free(jar->mem, c);
  lc->rv = NETSTASH_E_NOMEM;
  return 1;
}

netstash_error ns_cookie_jar_load_(ns_cookie_jar *jar, int64_t now_ms) {
  ns_store_reader *r = NULL;
  load_ctx lc = {jar, now_ms, NETSTASH_OK};
  netstash_error rv;
  char prefix[NS_COOKIE_JAR_NAME_MAX + 1];
  memcpy(prefix, jar->name, jar->name_len);
  prefix[jar->name_len] = 0;
  if ((rv = ns_store_reader_new(jar->jars->store, &r)) != NETSTASH_OK)
    return rv;
  if ((rv = ns_store_read_begin(r)) == NETSTASH_OK) {
    rv = ns_store_iterate(r, NS_STORE_COOKIES, prefix, jar->name_len + 1, load_one, &lc);
    ns_store_read_end(r);
  }
  ns_store_reader_del(r);
  return rv != NETSTASH_OK ? rv : lc.rv;
}

/* ------------------------------------------------------------ flush */

typedef struct flush_ctx {
  ns_cookie_jar *jar;
  ns_buf val;
} flush_ctx;

static netstash_error flush_fn(ns_store_txn *t, void *ud) {
  flush_ctx *fc = ud;
  size_t it = 0, kl;
  const void *k;
  void *v;
  netstash_error rv;
  while (ns_map_next(&fc->jar->dirty, &it, &k, &kl, &v)) {
    if (v == TOMB) {
      rv = ns_store_txn_del(t, NS_STORE_COOKIES, k, kl);
      if (rv == NETSTASH_E_NOT_FOUND)
        rv = NETSTASH_OK;
    } else {
      ns_buf_reset(&fc->val);
      rv = ns_cookie_encode_(v, &fc->val);
      if (rv == NETSTASH_OK)
        rv = ns_store_txn_put(t, NS_STORE_COOKIES, k, kl, fc->val.data, fc->val.len, NULL, 0);
    }
    if (rv != NETSTASH_OK)
      return rv;
  }
  return NETSTASH_OK;
}

typedef struct keys_ctx {
  ns_cookie_jar *jar;
  netstash_error rv;
} keys_ctx;

static int tomb_one(const uint8_t *key, size_t keylen, const ns_store_record *rec, void *ud) {
  keys_ctx *kc = ud;
  (void)rec;
  kc->rv = ns_map_put(&kc->jar->dirty, key, keylen, TOMB, NULL);
  return kc->rv != NETSTASH_OK;
}

/* After a lost change: every stored record of the jar deleted, every
 * cookie in memory written. */
static netstash_error rebuild_dirty(ns_cookie_jar *jar) {
  ns_store_reader *r = NULL;
  keys_ctx kc = {jar, NETSTASH_OK};
  netstash_error rv;
  ns_list *pos;
  char prefix[NS_COOKIE_JAR_NAME_MAX + 1];
  memcpy(prefix, jar->name, jar->name_len);
  prefix[jar->name_len] = 0;
  if ((rv = ns_store_reader_new(jar->jars->store, &r)) != NETSTASH_OK)
    return rv;
  if ((rv = ns_store_read_begin(r)) == NETSTASH_OK) {
    rv = ns_store_iterate(r, NS_STORE_COOKIES, prefix, jar->name_len + 1, tomb_one, &kc);
    ns_store_read_end(r);
  }
  ns_store_reader_del(r);
  if (rv == NETSTASH_OK)
    rv = kc.rv;
  if (rv != NETSTASH_OK)
    return rv;
  jar->dirty_lost = 0;
  for (pos = jar->all.next; pos != &jar->all; pos = pos->next)
    ns_cookie_mark_dirty_(jar, ns_list_entry(pos, ns_cookie, all_link), 0);
  return jar->dirty_lost ? NETSTASH_E_NOMEM : NETSTASH_OK;
}

netstash_error ns_cookie_jar_flush(ns_cookie_jar *jar) {
  flush_ctx fc;
  netstash_error rv;
  size_t it = 0, kl;
  const void *k;
  void *v;
  if (!jar->persistent)
    return NETSTASH_OK;
  if (jar->dirty_lost && (rv = rebuild_dirty(jar)) != NETSTASH_OK)
    return rv;
  if (ns_map_len(&jar->dirty) == 0)
    return NETSTASH_OK;
  fc.jar = jar;
  ns_buf_init(&fc.val, jar->mem, 64 * 1024);
  rv = ns_store_write(jar->jars->store, flush_fn, &fc);
  ns_buf_free(&fc.val);
  if (rv != NETSTASH_OK)
    return rv; /* kept: the next flush tries again */
  while (ns_map_next(&jar->dirty, &it, &k, &kl, &v)) {
    if (v != TOMB)
      ((ns_cookie *)v)->stored_access_ms = ((ns_cookie *)v)->last_access_ms;
    ns_map_remove(&jar->dirty, k, kl, NULL);
  }
  return NETSTASH_OK;
}

/* ------------------------------------------------------------ cookies.txt */

static ns_span next_field(ns_reader *r, int *more) {
  size_t start = r->pos;
  int c;
  ns_span f;
  while ((c = ns_reader_peek(r)) >= 0 && c != '\t')
    ns_reader_skip_char(r, c);
  f = ns_span_make(r->p + start, r->pos - start);
  *more = ns_reader_skip_char(r, '\t');
  return f;
}

/* One line (without its end of line): 1 imported, 0 skipped, or an error. */
static netstash_error import_line(ns_cookie_jar *jar, ns_span line, int64_t now_ms,
                                  int *imported) {
  ns_reader r;
  ns_span f[7], dom;
  int more = 1, http_only = 0, nf = 0, i;
  char d[NS_COOKIE_HOST_MAX + 1];
  uint64_t exp_s = 0;
  ns_cookie *c;
  ns_cookie_status st;
  size_t k;
  *imported = 0;
  ns_reader_init(&r, line.p, line.len);
  if (ns_reader_skip_lit_ci(&r, "#HttpOnly_"))
    http_only = 1;
  else if (ns_reader_peek(&r) == '#' || ns_reader_eof(&r))
    return NETSTASH_OK; /* comment or blank */
  while (more && nf < 6)
    f[nf++] = next_field(&r, &more);
  if (more)
    f[nf++] = ns_reader_rest(&r); /* the value: the rest, tabs included */
  else if (nf == 6)
    f[nf++] = ns_span_make(line.p + line.len, 0); /* "blank contents", as curl */
  if (nf != 7)
    return NETSTASH_OK;
  dom = f[0];
  if (dom.len && dom.p[0] == '.') {
    dom.p++;
    dom.len--;
  }
  if (dom.len == 0 || dom.len > NS_COOKIE_HOST_MAX || f[2].len == 0 || f[2].p[0] != '/' ||
      f[2].len > NS_COOKIE_MAX_ATTR_VALUE)
    return NETSTASH_OK;
  for (k = 0; k < dom.len; k++)
    d[k] = ns_ascii_lower(dom.p[k]);
  d[dom.len] = 0;
  {
    ns_reader er;
    ns_reader_init(&er, f[4].p, f[4].len);
    if (!ns_reader_uint(&er, (uint64_t)INT64_MAX / 1000, &exp_s, NULL) || !ns_reader_eof(&er))
      return NETSTASH_OK;
  }
  for (i = 0; i < 7; i++)
    for (k = 0; k < f[i].len; k++)
      if (ns_cookie_ctl((unsigned char)f[i].p[k]))
        return NETSTASH_OK;
  if (f[5].len + f[6].len > NS_COOKIE_MAX_NAME_VALUE || (f[5].len == 0 && f[6].len == 0))
    return NETSTASH_OK;
  if (exp_s && (int64_t)exp_s * 1000 <= now_ms)
    return NETSTASH_OK; /* expired */
  c = ns_cookie_new_(jar->mem, f[5], f[6], d, dom.len, f[2], NULL, 0);
  if (!c)
    return NETSTASH_E_NOMEM;
  c->host_only = !ns_span_eq_ci(f[1], "TRUE");
  c->secure = ns_span_eq_ci(f[3], "TRUE");
  c->source_secure = c->secure;
  c->http_only = (uint8_t)http_only;
  c->same_site = NS_COOKIE_SS_UNSET;
  c->persistent = exp_s != 0;
  c->expiry_ms = exp_s ? (int64_t)exp_s * 1000 : NS_COOKIE_EXPIRY_SESSION;
  if (c->persistent && c->expiry_ms - now_ms > NS_COOKIE_MAX_AGE_MS)
    c->expiry_ms = now_ms + NS_COOKIE_MAX_AGE_MS; /* §5.6.1 cap */
  c->creation_ms = c->last_access_ms = now_ms;
  if ((!c->host_only && !ns_host_is_ip(d, NULL) &&
       ns_cookie_jars_is_public_suffix(jar->jars, d)) ||
      ns_cookie_check_prefixes_(c, 1) != NS_COOKIE_STORED) {
    ns_free(jar->mem, c);
    return NETSTASH_OK;
  }
  if (jar->policy && jar->policy(jar, NS_COOKIE_OP_SET, NULL, c, jar->policy_ud) != NS_COOKIE_ALLOW) {
    ns_free(jar->mem, c);
    return NETSTASH_OK;
  }
  {
    netstash_error rv = ns_cookie_jar_insert_(jar, c, 0, now_ms, &st);
    if (rv != NETSTASH_OK)
      return rv;
  }
  *imported = st == NS_COOKIE_STORED;
  return NETSTASH_OK;
}

netstash_error ns_cookie_jar_import_netscape(ns_cookie_jar *jar, const char *text, size_t len,
                                             int64_t now_ms, size_t *imported, size_t *skipped) {
  ns_reader r;
  size_t ni = 0, ns = 0;
  netstash_error rv = NETSTASH_OK;
  ns_reader_init(&r, text, len);
  while (!ns_reader_eof(&r)) {
    size_t start = r.pos;
    ns_span line;
    int c, ok;
    while ((c = ns_reader_peek(&r)) >= 0 && c != '\n')
      ns_reader_skip_char(&r, c);
    line = ns_span_make(r.p + start, r.pos - start);
    ns_reader_skip_char(&r, '\n');
    if (line.len && line.p[line.len - 1] == '\r')
      line.len--;
    rv = import_line(jar, line, now_ms, &ok);
    if (rv != NETSTASH_OK)
      break;
    if (ok)
      ni++;
    else if (line.len && (line.p[0] != '#' || (line.len > 10 && line.p[1] == 'H')))
      ns++;
  }
  if (imported)
    *imported = ni;
  if (skipped)
    *skipped = ns;
  if (rv == NETSTASH_OK && ni && jar->auto_flush)
    rv = ns_cookie_jar_flush(jar);
  return rv;
}

static int seq_cmp(const void *a, const void *b) {
  const ns_cookie *x = *(ns_cookie *const *)a, *y = *(ns_cookie *const *)b;
  return x->seq < y->seq ? -1 : x->seq > y->seq;
}

netstash_error ns_cookie_jar_export_netscape(ns_cookie_jar *jar, int64_t now_ms, ns_buf *out,
                                             size_t *skipped) {
  ns_list *pos;
  ns_cookie **v = NULL;
  size_t n = 0, i, sk = 0, bytes;
  netstash_error rv;
  if (!ns_mul_size(jar->count ? jar->count : 1, sizeof(*v), &bytes))
    return NETSTASH_E_NOMEM;
  v = ns_malloc(jar->mem, bytes);
  if (!v)
    return NETSTASH_E_NOMEM;
  for (pos = jar->all.next; pos != &jar->all; pos = pos->next) {
    ns_cookie *c = ns_list_entry(pos, ns_cookie, all_link);
    if (c->expiry_ms <= now_ms)
      continue;
    if (c->partition) {
      sk++;
      continue;
    }
    v[n++] = c;
  }
  qsort(v, n, sizeof(*v), seq_cmp); /* creation order survives a round trip */
  rv = ns_buf_append_str(out, "# Netscape HTTP Cookie File\n"
                              "# https://curl.se/docs/http-cookies.html\n"
                              "# This file was generated by netstash. Edit at your own risk.\n\n");
  for (i = 0; i < n && rv == NETSTASH_OK; i++) {
    const ns_cookie *c = v[i];
    long long exp = c->persistent ? (long long)(c->expiry_ms / 1000) : 0;
    if (c->persistent && exp == 0)
      exp = 1;
    rv = ns_buf_printf(out, "%s%s%.*s\t%s\t%.*s\t%s\t%lld\t%.*s\t%.*s\n",
                       c->http_only ? "#HttpOnly_" : "", c->host_only ? "" : ".",
                       (int)c->domain_len, c->domain, c->host_only ? "FALSE" : "TRUE",
                       (int)c->path_len, c->path, c->secure ? "TRUE" : "FALSE", exp,
                       (int)c->name_len, c->name, (int)c->value_len, c->value);
  }
  ns_free(jar->mem, v);
  if (skipped)
    *skipped = sk;
  return rv;
}
