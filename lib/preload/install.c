/*
 * install.c — preload versions in the profile store: the schema of
 * install.h, staging with batched commits, atomic publication, lookup.
 */
#include "ns_setup.h"

#include "preload/install.h"

#include <openssl/evp.h>
#include <openssl/rand.h>
#include <string.h>
#include <time.h>

#include "core/headers.h"

/* ------------------------------------------------------------ bytes */

static void le32(uint8_t *p, uint32_t v) {
  for (int i = 0; i < 4; i++)
    p[i] = (uint8_t)(v >> (8 * i));
}
static void le64(uint8_t *p, uint64_t v) {
  for (int i = 0; i < 8; i++)
    p[i] = (uint8_t)(v >> (8 * i));
}
static uint32_t get_le32(const uint8_t *p) {
  uint32_t v = 0;
  for (int i = 3; i >= 0; i--)
    v = (v << 8) | p[i];
  return v;
}
static uint64_t get_le64(const uint8_t *p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; i--)
    v = (v << 8) | p[i];
  return v;
}
static void be64(uint8_t *p, uint64_t v) {
  for (int i = 0; i < 8; i++)
    p[i] = (uint8_t)(v >> (56 - 8 * i));
}

static netstash_error put_u16str(ns_buf *b, const char *s, size_t len) {
  uint8_t l[2];
  if (len > 0xffff)
    return NETSTASH_E_TOO_LARGE;
  l[0] = (uint8_t)len;
  l[1] = (uint8_t)(len >> 8);
  netstash_error e = ns_buf_append(b, l, 2);
  return e ? e : ns_buf_append(b, s, len);
}

static int get_u16str(const uint8_t **p, const uint8_t *end, const char **s, size_t *len) {
  size_t l;
  if (end - *p < 2)
    return -1;
  l = (size_t)(*p)[0] | ((size_t)(*p)[1] << 8);
  if ((size_t)(end - *p - 2) < l)
    return -1;
  *s = (const char *)*p + 2;
  *len = l;
  *p += 2 + l;
  return 0;
}

static int64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ------------------------------------------------------------ state */

/* u32 format | u32 flags | u64 active | u64 previous | u64 staged | u64 max |
 * i64 expires_s | i64 published_ms | 17 key id | u32 n_scope | u32 len |
 * scopes | u32 n_ignore | u32 len | ignores */
#define STATE_FIXED (4 + 4 + 8 * 6 + (NS_KEY_ID_LEN + 1))

/* Two ignore lists are the same list (same names, same order). */
static int same_list(const ns_manifest_resource *a, const ns_manifest_resource *b) {
  if (a->n_query_ignore != b->n_query_ignore)
    return 0;
  for (size_t i = 0; i < a->n_query_ignore; i++)
    if (strcmp(a->query_ignore[i], b->query_ignore[i]) != 0)
      return 0;
  return 1;
}

netstash_error ns_pl_state_encode(const ns_pl_state *st, const ns_manifest *m, ns_buf *out) {
  uint8_t fixed[STATE_FIXED], n4[4];
  netstash_error e;
  size_t at, i, j, count;
  memset(fixed, 0, sizeof(fixed));
  le32(fixed, NS_PL_STATE_FORMAT);
  le32(fixed + 4, st->flags);
  le64(fixed + 8, st->active);
  le64(fixed + 16, st->previous);
  le64(fixed + 24, st->staged);
  le64(fixed + 32, st->max_version);
  le64(fixed + 40, (uint64_t)(m ? m->expires_s : 0));
  le64(fixed + 48, (uint64_t)st->published_ms);
  memcpy(fixed + 56, st->key_id, strnlen(st->key_id, NS_KEY_ID_LEN));
  if ((e = ns_buf_append(out, fixed, sizeof(fixed))) != NETSTASH_OK)
    return e;
  /* scopes */
  le32(n4, m ? (uint32_t)m->n_scope : 0);
  if ((e = ns_buf_append(out, n4, 4)) || (e = ns_buf_append(out, n4, 4)))
    return e;
  at = out->len - 4;
  for (i = 0; m && i < m->n_scope; i++)
    if ((e = put_u16str(out, m->scope[i], strlen(m->scope[i]))) != NETSTASH_OK)
      return e;
  le32(out->data + at, (uint32_t)(out->len - at - 4));
  /* distinct ignore lists */
  if ((e = ns_buf_append(out, n4, 4)) || (e = ns_buf_append(out, n4, 4)))
    return e;
  at = out->len - 4;
  count = 0;
  for (i = 0; m && i < m->n_resources; i++) {
    const ns_manifest_resource *r = &m->resources[i];
    if (!r->n_query_ignore)
      continue;
    for (j = 0; j < i; j++)
      if (m->resources[j].n_query_ignore && same_list(&m->resources[j], r))
        break;
    if (j < i)
      continue;
    uint8_t n2[2] = {(uint8_t)r->n_query_ignore, (uint8_t)(r->n_query_ignore >> 8)};
    if ((e = ns_buf_append(out, n2, 2)) != NETSTASH_OK)
      return e;
    for (j = 0; j < r->n_query_ignore; j++)
      if ((e = put_u16str(out, r->query_ignore[j], strlen(r->query_ignore[j]))) != NETSTASH_OK)
        return e;
    count++;
  }
  le32(out->data + at, (uint32_t)(out->len - at - 4));
  le32(out->data + at - 4, (uint32_t)count);
  return NETSTASH_OK;
}

netstash_error ns_pl_state_decode(const uint8_t *v, size_t len, ns_pl_state *st) {
  const uint8_t *p = v, *end = v + len;
  uint32_t l;
  memset(st, 0, sizeof(*st));
  if (len < STATE_FIXED + 16 || get_le32(v) != NS_PL_STATE_FORMAT)
    return NETSTASH_E_STORE_CORRUPT;
  st->flags = get_le32(v + 4);
  st->active = get_le64(v + 8);
  st->previous = get_le64(v + 16);
  st->staged = get_le64(v + 24);
  st->max_version = get_le64(v + 32);
  st->expires_s = (int64_t)get_le64(v + 40);
  st->published_ms = (int64_t)get_le64(v + 48);
  memcpy(st->key_id, v + 56, NS_KEY_ID_LEN);
  st->key_id[NS_KEY_ID_LEN] = '\0';
  p = v + STATE_FIXED;
  st->n_scope = get_le32(p);
  l = get_le32(p + 4);
  p += 8;
  if ((size_t)(end - p) < l)
    return NETSTASH_E_STORE_CORRUPT;
  st->scopes = p;
  st->scopes_len = l;
  p += l;
  if (end - p < 8)
    return NETSTASH_E_STORE_CORRUPT;
  st->n_ignore = get_le32(p);
  l = get_le32(p + 4);
  p += 8;
  if ((size_t)(end - p) != l)
    return NETSTASH_E_STORE_CORRUPT;
  st->ignores = p;
  st->ignores_len = l;
  return NETSTASH_OK;
}

int ns_pl_state_scope(const ns_pl_state *st, size_t *iter, const char **s, size_t *len) {
  const uint8_t *p = st->scopes + *iter, *end = st->scopes + st->scopes_len;
  if (p >= end || get_u16str(&p, end, s, len) != 0)
    return 0;
  *iter = (size_t)(p - st->scopes);
  return 1;
}

int ns_pl_state_ignore(const ns_pl_state *st, size_t *iter, const uint8_t **list, size_t *n) {
  const uint8_t *p = st->ignores + *iter, *end = st->ignores + st->ignores_len;
  size_t k;
  if (end - p < 2)
    return 0;
  *n = (size_t)p[0] | ((size_t)p[1] << 8);
  *list = p + 2;
  p += 2;
  for (k = 0; k < *n; k++) {
    const char *s;
    size_t l;
    if (get_u16str(&p, end, &s, &l) != 0)
      return 0;
  }
  *iter = (size_t)(p - st->ignores);
  return 1;
}

int ns_pl_ignore_name(const uint8_t **list, const char **name, size_t *len) {
  /* the list was bounds-checked by ns_pl_state_ignore */
  const uint8_t *p = *list;
  *len = (size_t)p[0] | ((size_t)p[1] << 8);
  *name = (const char *)p + 2;
  *list = p + 2 + *len;
  return 1;
}

/* ------------------------------------------------------------ entries */

/* u32 format | u16 status | u8 priority | u8 0 | u64 size | u16 url | head */
netstash_error ns_pl_entry_encode(const ns_manifest_resource *r, ns_buf *out) {
  uint8_t fixed[16];
  ns_headers h;
  netstash_error e;
  char len[24];
  int has_etag = 0;
  memset(fixed, 0, sizeof(fixed));
  le32(fixed, NS_PL_ENTRY_FORMAT);
  fixed[4] = 200;
  fixed[5] = 0;
  fixed[6] = (uint8_t)r->priority;
  le64(fixed + 8, r->size);
  if ((e = ns_buf_append(out, fixed, sizeof(fixed))) ||
      (e = put_u16str(out, r->url, strlen(r->url))))
    return e;
  ns_headers_init(&h, out->mem);
  snprintf(len, sizeof(len), "%llu", (unsigned long long)r->size);
  e = ns_headers_add_str(&h, "content-type",
                         r->content_type ? r->content_type : "application/octet-stream");
  if (!e)
    e = ns_headers_add_str(&h, "content-length", len);
  for (size_t i = 0; !e && i < r->n_headers; i++) {
    /* the manifest's own framing headers would contradict the body */
    if (!strcasecmp(r->headers[i].name, "content-length") ||
        !strcasecmp(r->headers[i].name, "content-encoding") ||
        !strcasecmp(r->headers[i].name, "transfer-encoding") ||
        !strcasecmp(r->headers[i].name, "content-type"))
      continue;
    if (!strcasecmp(r->headers[i].name, "etag"))
      has_etag = 1;
    e = ns_headers_add_str(&h, r->headers[i].name, r->headers[i].value);
  }
  if (!e && !has_etag && r->n_hashes) {
    /* A strong validator for every preloaded answer, so that a browser's
     * own cache can revalidate it (If-None-Match → 304, no body): the
     * integrity itself, which names exactly these bytes. */
    char etag[2 + 7 + 88 + 1];
    int n;
    etag[0] = '"';
    n = snprintf(etag + 1, 8, "sha%d-", r->hashes[0].alg * 8);
    n = 1 + n + EVP_EncodeBlock((unsigned char *)etag + 1 + n, r->hashes[0].digest,
                                (int)r->hashes[0].alg);
    etag[n] = '"';
    etag[n + 1] = 0;
    e = ns_headers_add_str(&h, "etag", etag);
  }
  if (!e)
    e = ns_headers_encode(&h, out);
  ns_headers_free(&h);
  return e;
}

netstash_error ns_pl_entry_decode(const uint8_t *v, size_t len, ns_pl_entry *out) {
  const uint8_t *p = v + 16, *end = v + len;
  memset(out, 0, sizeof(*out));
  if (len < 18 || get_le32(v) != NS_PL_ENTRY_FORMAT)
    return NETSTASH_E_STORE_CORRUPT;
  out->status = v[4] | (v[5] << 8);
  out->priority = v[6];
  out->size = get_le64(v + 8);
  if (get_u16str(&p, end, &out->url, &out->url_len) != 0 || p >= end)
    return NETSTASH_E_STORE_CORRUPT;
  out->head = p;
  out->head_len = (size_t)(end - p);
  return NETSTASH_OK;
}

/* ------------------------------------------------------------ keys */

netstash_error ns_pl_key_state(ns_buf *k, const char *id) {
  ns_buf_reset(k);
  netstash_error e = ns_buf_append(k, "S", 1);
  return e ? e : ns_buf_append_str(k, id);
}

netstash_error ns_pl_key_version(ns_buf *k, char tag, const char *id, uint64_t v) {
  uint8_t b[9] = {0};
  netstash_error e;
  ns_buf_reset(k);
  be64(b + 1, v);
  if ((e = ns_buf_append(k, &tag, 1)) || (e = ns_buf_append_str(k, id)))
    return e;
  return ns_buf_append(k, b, 9);
}

netstash_error ns_pl_key_entry_prefix(ns_buf *k, const char *id, uint64_t v) {
  return ns_pl_key_version(k, 'R', id, v);
}

/* Builds an entry key into out (NS_STORE_KEY_MAX + 1 bytes). Returns its
 * length, 0 when id is too long to make any key. No allocation. */
static size_t entry_key(uint8_t *out, const char *id, size_t id_len, uint64_t v, const char *url,
                        size_t url_len) {
  size_t n = 1 + id_len + 9;
  if (n + 65 > NS_STORE_KEY_MAX)
    return 0;
  out[0] = 'R';
  memcpy(out + 1, id, id_len);
  out[1 + id_len] = 0;
  be64(out + 2 + id_len, v);
  if (n + url_len <= NS_STORE_KEY_MAX) {
    memcpy(out + n, url, url_len);
    return n + url_len;
  }
  uint8_t d[32];
  unsigned dl = 0;
  static const char hx[] = "0123456789abcdef";
  EVP_Digest(url, url_len, d, &dl, EVP_sha256(), NULL);
  out[n] = '#';
  for (int i = 0; i < 32; i++) {
    out[n + 1 + 2 * i] = (uint8_t)hx[d[i] >> 4];
    out[n + 2 + 2 * i] = (uint8_t)hx[d[i] & 15];
  }
  return n + 65;
}

netstash_error ns_pl_key_entry(ns_buf *k, const char *id, uint64_t v, const char *url,
                               size_t url_len) {
  uint8_t key[NS_STORE_KEY_MAX + 1];
  size_t n = entry_key(key, id, strlen(id), v, url, url_len);
  ns_buf_reset(k);
  return n ? ns_buf_append(k, key, n) : NETSTASH_E_INVALID_ARGUMENT;
}

/* Query stripping into a caller buffer (no allocation). Names come from an
 * encoded list (enc != NULL, n names) or an array. Returns the length, or 0
 * when out is too small. */
static size_t strip_into(char *out, size_t cap, const char *url, size_t url_len,
                         const uint8_t *enc, const char *const *names, size_t n) {
  const char *q = memchr(url, '?', url_len), *end = url + url_len, *p;
  size_t o;
  int first = 1;
  if (!q)
    q = end;
  o = (size_t)(q - url);
  if (o >= cap)
    return 0;
  memcpy(out, url, o);
  for (p = q < end ? q + 1 : end; p < end;) {
    const char *amp = memchr(p, '&', (size_t)(end - p)), *pe = amp ? amp : end;
    const char *eq = memchr(p, '=', (size_t)(pe - p));
    size_t nl = (size_t)((eq ? eq : pe) - p), k;
    int drop = 0;
    const uint8_t *l = enc;
    for (k = 0; k < n && !drop; k++) {
      const char *nm;
      size_t len;
      if (enc)
        ns_pl_ignore_name(&l, &nm, &len);
      else {
        nm = names[k];
        len = strlen(nm);
      }
      drop = len == nl && memcmp(nm, p, nl) == 0;
    }
    if (!drop && pe > p) {
      if (o + 1 + (size_t)(pe - p) >= cap)
        return 0;
      out[o++] = first ? '?' : '&';
      memcpy(out + o, p, (size_t)(pe - p));
      o += (size_t)(pe - p);
      first = 0;
    }
    p = amp ? amp + 1 : end;
  }
  out[o] = '\0';
  return o;
}

netstash_error ns_pl_strip_query(ns_buf *out, const char *url, size_t url_len,
                                 const char *const *names, size_t n_names) {
  netstash_error e;
  ns_buf_reset(out);
  if ((e = ns_buf_append(out, url, url_len + 1)) != NETSTASH_OK)
    return e;
  out->len = strip_into((char *)out->data, url_len + 1, url, url_len, NULL, names, n_names);
  out->data[out->len] = '\0';
  return NETSTASH_OK;
}

/* ------------------------------------------------------------ states */

netstash_error ns_pl_txn_state(ns_store_txn *t, const char *id, ns_pl_state *st) {
  uint8_t key[NS_STORE_KEY_MAX + 1];
  size_t n = strlen(id);
  ns_store_record rec;
  netstash_error e;
  if (n + 1 > NS_STORE_KEY_MAX)
    return NETSTASH_E_INVALID_ARGUMENT;
  key[0] = 'S';
  memcpy(key + 1, id, n);
  if ((e = ns_store_txn_get(t, NS_STORE_MANIFESTS, key, n + 1, &rec)) != NETSTASH_OK)
    return e;
  return ns_pl_state_decode(rec.value, rec.value_len, st);
}

typedef struct reindex_ctx {
  ns_buf *idx;
  netstash_error err;
  uint32_t n;
} reindex_ctx;

static int reindex_cb(const uint8_t *key, size_t keylen, const ns_store_record *rec, void *ud) {
  reindex_ctx *c = ud;
  uint8_t l4[4];
  if ((c->err = put_u16str(c->idx, (const char *)key + 1, keylen - 1)) != NETSTASH_OK)
    return 1;
  le32(l4, (uint32_t)rec->value_len);
  if ((c->err = ns_buf_append(c->idx, l4, 4)) ||
      (c->err = ns_buf_append(c->idx, rec->value, rec->value_len)))
    return 1;
  c->n++;
  return 0;
}

static netstash_error reindex(ns_store_txn *t, const ns_mem *mem) {
  ns_buf idx;
  reindex_ctx c = {&idx, NETSTASH_OK, 0};
  netstash_error e;
  ns_buf_init(&idx, mem, SIZE_MAX);
  e = ns_buf_append(&idx, "\1\0\0\0\0\0\0\0", 8);
  if (!e)
    e = ns_store_txn_iterate(t, NS_STORE_MANIFESTS, "S", 1, reindex_cb, &c);
  if (!e)
    e = c.err;
  if (!e) {
    le32(idx.data + 4, c.n);
    e = ns_store_txn_put(t, NS_STORE_MANIFESTS, "I", 1, idx.data, idx.len, NULL, 0);
  }
  ns_buf_free(&idx);
  return e;
}

netstash_error ns_pl_txn_put_state(ns_store_txn *t, const ns_mem *mem, const char *id,
                                   const ns_pl_state *st, const ns_manifest *m) {
  ns_buf k, v;
  netstash_error e;
  ns_buf_init(&k, mem, NS_STORE_KEY_MAX);
  ns_buf_init(&v, mem, SIZE_MAX);
  e = ns_pl_key_state(&k, id);
  if (!e)
    e = ns_pl_state_encode(st, m, &v);
  if (!e)
    e = ns_store_txn_put(t, NS_STORE_MANIFESTS, k.data, k.len, v.data, v.len, NULL, 0);
  ns_buf_free(&k);
  ns_buf_free(&v);
  return e ? e : reindex(t, mem);
}

netstash_error ns_pl_txn_del_state(ns_store_txn *t, const ns_mem *mem, const char *id) {
  ns_buf k;
  netstash_error e;
  ns_buf_init(&k, mem, NS_STORE_KEY_MAX);
  e = ns_pl_key_state(&k, id);
  if (!e)
    e = ns_store_txn_del(t, NS_STORE_MANIFESTS, k.data, k.len);
  ns_buf_free(&k);
  return e ? e : reindex(t, mem);
}

typedef struct keylist {
  ns_buf keys; /* u16-length-prefixed keys */
  netstash_error err;
} keylist;

static int collect_cb(const uint8_t *key, size_t keylen, const ns_store_record *rec, void *ud) {
  keylist *l = ud;
  (void)rec;
  l->err = put_u16str(&l->keys, (const char *)key, keylen);
  return l->err != NETSTASH_OK;
}

netstash_error ns_pl_txn_drop_version(ns_store_txn *t, const ns_mem *mem, const char *id,
                                      uint64_t v) {
  keylist l;
  ns_buf k;
  netstash_error e;
  ns_buf_init(&l.keys, mem, SIZE_MAX);
  ns_buf_init(&k, mem, NS_STORE_KEY_MAX);
  l.err = NETSTASH_OK;
  e = ns_pl_key_entry_prefix(&k, id, v);
  if (!e)
    e = ns_store_txn_iterate(t, NS_STORE_PRELOAD, k.data, k.len, collect_cb, &l);
  if (!e)
    e = l.err;
  for (const uint8_t *p = l.keys.data, *end = p + l.keys.len; !e && p < end;) {
    const char *key;
    size_t kl;
    if (get_u16str(&p, end, &key, &kl) != 0)
      break;
    e = ns_store_txn_del(t, NS_STORE_PRELOAD, key, kl);
  }
  for (int tag = 0; !e && tag < 2; tag++) {
    e = ns_pl_key_version(&k, tag ? 'G' : 'M', id, v);
    if (!e) {
      e = ns_store_txn_del(t, NS_STORE_MANIFESTS, k.data, k.len);
      if (e == NETSTASH_E_NOT_FOUND)
        e = NETSTASH_OK;
    }
  }
  ns_buf_free(&l.keys);
  ns_buf_free(&k);
  return e;
}

netstash_error ns_pl_txn_manifest(ns_store_txn *t, const ns_mem *mem, const char *id,
                                  uint64_t v, ns_manifest **out) {
  ns_buf k;
  ns_store_record rec;
  ns_manifest_check chk = {0, 0, 0};
  netstash_error e;
  *out = NULL;
  ns_buf_init(&k, mem, NS_STORE_KEY_MAX);
  e = ns_pl_key_version(&k, 'M', id, v);
  if (!e)
    e = ns_store_txn_get(t, NS_STORE_MANIFESTS, k.data, k.len, &rec);
  if (!e) {
    e = ns_manifest_parse(mem, rec.value, rec.value_len, &chk, out, NULL);
    if (e != NETSTASH_OK && e != NETSTASH_E_NOMEM)
      e = NETSTASH_E_STORE_CORRUPT;
  }
  ns_buf_free(&k);
  return e;
}

/* ------------------------------------------------------------ SRI */

static const EVP_MD *sri_md(ns_sri_alg a) {
  return a == NS_SRI_SHA512 ? EVP_sha512() : a == NS_SRI_SHA384 ? EVP_sha384() : EVP_sha256();
}

static ns_sri_alg strongest(const ns_manifest_resource *r) {
  ns_sri_alg a = NS_SRI_SHA256;
  for (size_t i = 0; i < r->n_hashes; i++)
    if (r->hashes[i].alg > a)
      a = r->hashes[i].alg;
  return a;
}

netstash_error ns_sri_check(const ns_manifest_resource *r, const uint8_t *body, size_t len,
                            uint8_t sha256_out[32]) {
  uint8_t d[64], d256[32];
  unsigned dl = 0;
  ns_sri_alg a = strongest(r);
  int ok = 0;
  if (!EVP_Digest(body, len, d, &dl, sri_md(a), NULL))
    return NETSTASH_E_INTERNAL;
  for (size_t i = 0; i < r->n_hashes && !ok; i++)
    ok = r->hashes[i].alg == a && !memcmp(r->hashes[i].digest, d, (size_t)a);
  if (!ok)
    return NETSTASH_E_INTEGRITY;
  if (sha256_out) {
    if (a == NS_SRI_SHA256)
      memcpy(sha256_out, d, 32);
    else if (!EVP_Digest(body, len, d256, &dl, EVP_sha256(), NULL))
      return NETSTASH_E_INTERNAL;
    else
      memcpy(sha256_out, d256, 32);
  }
  return NETSTASH_OK;
}

/* The digest of r's strongest algorithm that the store can look up:
 * for sha256 the body key itself, else the "H" alias key. */
static size_t alias_key(const ns_manifest_resource *r, size_t which, uint8_t *key) {
  ns_sri_alg a = strongest(r);
  size_t seen = 0;
  for (size_t i = 0; i < r->n_hashes; i++) {
    if (r->hashes[i].alg != a)
      continue;
    if (seen++ != which)
      continue;
    key[0] = 'H';
    key[1] = (uint8_t)a;
    memcpy(key + 2, r->hashes[i].digest, (size_t)a);
    return 2 + (size_t)a;
  }
  return 0;
}

/* ------------------------------------------------------------ installing */

typedef struct queued {
  size_t i;
  uint8_t *data; /* owned, allocated with the installer's allocator */
  size_t len;
  uint8_t sha[32];
} queued;

struct ns_pl_batch {
  queued *q;
  size_t nq, qcap, qbytes;
  int holding; /* also writes the entries of bodies already held (sync flush) */
};

struct ns_pl_install {
  const ns_mem *mem;
  ns_store *s;
  const ns_manifest *m;
  const uint8_t *mbytes, *sig;
  size_t mlen, sig_len;
  char key_id[NS_KEY_ID_LEN + 1];
  const ns_pl_device *dev;
  ns_pl_plan plan;
  uint64_t v;
  uint8_t *held;      /* per resource: 0 needed, 1 held (entry written), 2 body held, entry due */
  uint8_t (*sha)[32]; /* per resource, valid when held */
  size_t missing;
  ns_pl_batch cur;  /* verified bodies waiting for a commit */
  size_t committing; /* bodies in a batch being committed elsewhere */
  int auto_flush;
  char *detail;
  size_t dlen;
  netstash_error result; /* begin's verdict for CONTROL plans */
  const ns_pl_source *src;
  void (*recycle)(void *ud, uint8_t *data);
  void *recycle_ud;
};

ns_pl_plan ns_pl_install_plan(const ns_pl_install *in) {
  return in->plan;
}
int ns_pl_install_needed(const ns_pl_install *in, size_t i) {
  return i < in->m->n_resources && in->held[i] == 0;
}
size_t ns_pl_install_missing(const ns_pl_install *in) {
  return in->missing;
}
size_t ns_pl_install_queued(const ns_pl_install *in) {
  return in->cur.nq;
}
size_t ns_pl_install_queued_bytes(const ns_pl_install *in) {
  return in->cur.qbytes;
}
int ns_pl_install_held(const ns_pl_install *in, size_t i) {
  return i < in->m->n_resources && in->held[i] != 0;
}
void ns_pl_install_set_auto_flush(ns_pl_install *in, int on) {
  in->auto_flush = on;
}
void ns_pl_install_set_recycle(ns_pl_install *in, void (*fn)(void *ud, uint8_t *data), void *ud) {
  in->recycle = fn;
  in->recycle_ud = ud;
}

static netstash_error device_id(ns_store_txn *t, const ns_pl_device *dev, char *out, size_t cap) {
  ns_store_record rec;
  netstash_error e;
  if (dev && dev->device_id) {
    snprintf(out, cap, "%s", dev->device_id);
    return NETSTASH_OK;
  }
  e = ns_store_txn_get(t, NS_STORE_MANIFESTS, "D", 1, &rec);
  if (e == NETSTASH_OK && rec.value_len > 0 && rec.value_len < cap) {
    memcpy(out, rec.value, rec.value_len);
    out[rec.value_len] = '\0';
    return NETSTASH_OK;
  }
  if (e != NETSTASH_OK && e != NETSTASH_E_NOT_FOUND)
    return e;
  uint8_t r[16];
  static const char hx[] = "0123456789abcdef";
  if (RAND_bytes(r, sizeof(r)) != 1 || cap < 33)
    return NETSTASH_E_INTERNAL;
  for (int i = 0; i < 16; i++) {
    out[2 * i] = hx[r[i] >> 4];
    out[2 * i + 1] = hx[r[i] & 15];
  }
  out[32] = '\0';
  return ns_store_txn_put(t, NS_STORE_MANIFESTS, "D", 1, out, 32, NULL, 0);
}

static netstash_error put_version_records(ns_store_txn *t, ns_pl_install *in) {
  ns_buf k;
  netstash_error e;
  ns_buf_init(&k, in->mem, NS_STORE_KEY_MAX);
  e = ns_pl_key_version(&k, 'M', in->m->id, in->v);
  if (!e)
    e = ns_store_txn_put(t, NS_STORE_MANIFESTS, k.data, k.len, in->mbytes, in->mlen, NULL, 0);
  if (!e)
    e = ns_pl_key_version(&k, 'G', in->m->id, in->v);
  if (!e)
    e = ns_store_txn_put(t, NS_STORE_MANIFESTS, k.data, k.len, in->sig ? in->sig : (const uint8_t *)"",
                         in->sig ? in->sig_len : 0, NULL, 0);
  ns_buf_free(&k);
  return e;
}

/* The state decision, in one write transaction. */
/* "V" url -> etag \0 last-modified \0 id \0 version */
static netstash_error put_source(ns_store_txn *t, const ns_pl_install *in) {
  const ns_pl_source *src = in->src;
  ns_buf k, v;
  char ver[24];
  netstash_error e;
  if (!src || !src->url || 1 + strlen(src->url) > NS_STORE_KEY_MAX)
    return NETSTASH_OK;
  ns_buf_init(&k, in->mem, NS_STORE_KEY_MAX);
  ns_buf_init(&v, in->mem, 4096);
  snprintf(ver, sizeof(ver), "%llu", (unsigned long long)in->m->version);
  if ((e = ns_buf_append(&k, "V", 1)) || (e = ns_buf_append_str(&k, src->url)) ||
      (e = ns_buf_append(&v, src->etag ? src->etag : "", src->etag ? strlen(src->etag) + 1 : 1)) ||
      (e = ns_buf_append(&v, src->last_modified ? src->last_modified : "",
                         src->last_modified ? strlen(src->last_modified) + 1 : 1)) ||
      (e = ns_buf_append(&v, in->m->id, strlen(in->m->id) + 1)) ||
      (e = ns_buf_append_str(&v, ver)))
    goto out;
  e = ns_store_txn_put(t, NS_STORE_MANIFESTS, k.data, k.len, v.data, v.len, NULL, 0);
out:
  ns_buf_free(&k);
  ns_buf_free(&v);
  return e == NETSTASH_E_TOO_LARGE ? NETSTASH_OK : e; /* giant validators: not kept */
}

static netstash_error begin_fn(ns_store_txn *t, void *ud) {
  ns_pl_install *in = ud;
  const ns_manifest *m = in->m;
  ns_pl_state st;
  ns_manifest *active_m = NULL;
  netstash_error e;
  char dev[80];
  int fresh = 0;

  in->result = NETSTASH_OK;
  if ((e = put_source(t, in)) != NETSTASH_OK)
    return e;
  e = ns_pl_txn_state(t, m->id, &st);
  if (e == NETSTASH_E_NOT_FOUND) {
    memset(&st, 0, sizeof(st));
    fresh = 1;
  } else if (e != NETSTASH_OK) {
    return e;
  }

  if (!fresh && m->version <= st.max_version) {
    ns_buf k;
    ns_store_record rec;
    int same = 0;
    if (m->version < st.max_version) {
      ns_detailf(in->detail, in->dlen,
                 "version: %llu is older than version %llu already accepted for \"%s\"",
                 (unsigned long long)m->version, (unsigned long long)st.max_version, m->id);
      return NETSTASH_E_DOWNGRADE;
    }
    ns_buf_init(&k, in->mem, NS_STORE_KEY_MAX);
    e = ns_pl_key_version(&k, 'M', m->id, m->version);
    if (!e && ns_store_txn_get(t, NS_STORE_MANIFESTS, k.data, k.len, &rec) == NETSTASH_OK)
      same = rec.value_len == in->mlen && !memcmp(rec.value, in->mbytes, in->mlen);
    ns_buf_free(&k);
    if (e)
      return e;
    if (st.active == m->version && same) {
      in->plan = NS_PL_PLAN_FILL;
      return NETSTASH_OK;
    }
    if (st.staged == m->version && same) {
      in->plan = NS_PL_PLAN_RESUME;
      return NETSTASH_OK;
    }
    if (same && st.previous == m->version) {
      in->plan = NS_PL_PLAN_CONTROL;
      ns_detailf(in->detail, in->dlen, "version %llu of \"%s\" was rolled back: not re-activated",
                 (unsigned long long)m->version, m->id);
      return NETSTASH_OK;
    }
    ns_detailf(in->detail, in->dlen,
               "version: %llu of \"%s\" was already accepted with different content",
               (unsigned long long)m->version, m->id);
    return NETSTASH_E_DOWNGRADE;
  }

  /* a newer manifest */
  st.max_version = m->version;
  if (st.active) {
    e = ns_pl_txn_manifest(t, in->mem, m->id, st.active, &active_m);
    if (e != NETSTASH_OK)
      return e;
  }
  if ((e = device_id(t, in->dev, dev, sizeof(dev))) != NETSTASH_OK)
    goto out;
  if (m->rollout.kill_switch) {
    in->plan = NS_PL_PLAN_CONTROL;
    st.flags = NS_PL_KILLED;
    ns_detailf(in->detail, in->dlen, "rollout.kill_switch: \"%s\" stops serving", m->id);
  } else if (!ns_rollout_applies(&m->rollout, m->id, in->dev, dev, in->detail, in->dlen)) {
    in->plan = NS_PL_PLAN_CONTROL;
    st.flags = NS_PL_NOT_TARGETED;
    in->result = NETSTASH_E_NOT_TARGETED;
  } else if (m->rollout.pinned_version) {
    uint64_t p = m->rollout.pinned_version;
    in->plan = NS_PL_PLAN_CONTROL;
    st.flags = 0;
    if (p == st.previous && p != st.active) {
      ns_manifest *pm = NULL;
      if ((e = ns_pl_txn_manifest(t, in->mem, m->id, p, &pm)) != NETSTASH_OK)
        goto out;
      st.previous = st.active;
      st.active = p;
      st.published_ms = now_ms();
      ns_manifest_del(active_m);
      active_m = pm;
    } else if (p != st.active) {
      st.flags = NS_PL_PINNED_MISSING;
      ns_detailf(in->detail, in->dlen,
                 "rollout.pinned_version %llu is not held: \"%s\" stops serving",
                 (unsigned long long)p, m->id);
    }
  } else {
    in->plan = NS_PL_PLAN_INSTALL;
    if (st.staged && st.staged != m->version &&
        (e = ns_pl_txn_drop_version(t, in->mem, m->id, st.staged)) != NETSTASH_OK)
      goto out;
    st.staged = m->version;
    if ((e = put_version_records(t, in)) != NETSTASH_OK)
      goto out;
  }
  if (in->plan == NS_PL_PLAN_CONTROL && st.staged) {
    if ((e = ns_pl_txn_drop_version(t, in->mem, m->id, st.staged)) != NETSTASH_OK)
      goto out;
    st.staged = 0;
  }
  e = ns_pl_txn_put_state(t, in->mem, m->id, &st, active_m);
out:
  ns_manifest_del(active_m);
  return e;
}

/* A body kept as the bytes it holds: identity, not recompressed. */
static int kept_as_identity(const ns_store_body *b) {
  return b->coding == NS_CODING_IDENTITY && !b->recompressed;
}

/* Which resources are held: an entry of this version with its body, or a
 * body known by sha256 / alias. */
static netstash_error scan_held(ns_pl_install *in) {
  ns_store_reader *r = NULL;
  netstash_error e = ns_store_reader_new(in->s, &r);
  uint8_t key[NS_STORE_KEY_MAX + 1], ak[2 + 64];
  if (e)
    return e;
  if ((e = ns_store_read_begin(r)) != NETSTASH_OK) {
    ns_store_reader_del(r);
    return e;
  }
  in->missing = 0;
  for (size_t i = 0; i < in->m->n_resources && !e; i++) {
    const ns_manifest_resource *res = &in->m->resources[i];
    ns_store_record rec;
    ns_store_body b;
    char surl[8192];
    size_t ul = strip_into(surl, sizeof(surl), res->url, strlen(res->url), NULL,
                           res->query_ignore, res->n_query_ignore);
    size_t kl = ul ? entry_key(key, in->m->id, strlen(in->m->id), in->v, surl, ul) : 0;
    in->held[i] = 0;
    /* held: a body kept as identity (preload hits hand its bytes out as
     * they are); one the HTTP cache keeps coded (the same content arrived
     * gzip or br first) is fetched and rewritten as identity */
    if (kl && ns_store_get(r, NS_STORE_PRELOAD, key, kl, &rec) == NETSTASH_OK && rec.has_body &&
        ns_store_body_get(r, rec.body_hash, &b) == NETSTASH_OK && kept_as_identity(&b)) {
      in->held[i] = 1;
      memcpy(in->sha[i], rec.body_hash, 32);
      continue;
    }
    /* a body already stored under one of the strongest digests */
    for (size_t w = 0;; w++) {
      size_t al = alias_key(res, w, ak);
      const uint8_t *h256 = NULL;
      if (!al)
        break;
      if (ak[1] == NS_SRI_SHA256)
        h256 = ak + 2;
      else if (ns_store_get(r, NS_STORE_MANIFESTS, ak, al, &rec) == NETSTASH_OK &&
               rec.value_len == 32)
        h256 = rec.value;
      if (h256 && ns_store_body_get(r, h256, &b) == NETSTASH_OK && b.decoded_size == res->size &&
          kept_as_identity(&b)) {
        in->held[i] = 2;
        memcpy(in->sha[i], h256, 32);
        break;
      }
    }
    if (!in->held[i])
      in->missing++;
  }
  ns_store_read_end(r);
  ns_store_reader_del(r);
  return e;
}

netstash_error ns_pl_install_begin(ns_store *s, const ns_mem *mem, const uint8_t *mbytes,
                                   size_t mlen, const uint8_t *sig, size_t sig_len,
                                   const char *key_id, const ns_manifest *m,
                                   const ns_pl_device *dev, ns_pl_install **out, char *detail,
                                   size_t dlen) {
  return ns_pl_install_begin_ex(s, mem, mbytes, mlen, sig, sig_len, key_id, m, dev, NULL, out,
                                detail, dlen);
}

netstash_error ns_pl_install_begin_ex(ns_store *s, const ns_mem *mem, const uint8_t *mbytes,
                                      size_t mlen, const uint8_t *sig, size_t sig_len,
                                      const char *key_id, const ns_manifest *m,
                                      const ns_pl_device *dev, const ns_pl_source *src,
                                      ns_pl_install **out, char *detail, size_t dlen) {
  ns_pl_install *in;
  netstash_error e;
  *out = NULL;
  if (!s || !m || !mbytes)
    return NETSTASH_E_INVALID_ARGUMENT;
  if (1 + strlen(m->id) + 9 + 65 > NS_STORE_KEY_MAX)
    return NETSTASH_E_INVALID_ARGUMENT;
  in = ns_calloc(mem, 1, sizeof(*in));
  if (!in)
    return NETSTASH_E_NOMEM;
  in->mem = mem;
  in->s = s;
  in->m = m;
  in->mbytes = mbytes;
  in->mlen = mlen;
  in->sig = sig;
  in->sig_len = sig_len;
  snprintf(in->key_id, sizeof(in->key_id), "%s", key_id ? key_id : "");
  in->dev = dev;
  in->v = m->version;
  in->detail = detail;
  in->dlen = dlen;
  in->src = src;
  in->auto_flush = 1;
  in->held = ns_calloc(mem, m->n_resources + 1, 1);
  in->sha = ns_calloc(mem, m->n_resources + 1, 32);
  if (!in->held || !in->sha) {
    ns_pl_install_free(in);
    return NETSTASH_E_NOMEM;
  }
  e = ns_store_write(s, begin_fn, in);
  if (e == NETSTASH_OK && in->plan != NS_PL_PLAN_CONTROL)
    e = scan_held(in);
  if (e == NETSTASH_OK && in->plan != NS_PL_PLAN_CONTROL)
    e = ns_pl_install_flush(in); /* entries for bodies already held */
  if (e == NETSTASH_OK)
    e = in->result;
  if (e != NETSTASH_OK && !(e == NETSTASH_E_NOT_TARGETED && in->plan == NS_PL_PLAN_CONTROL)) {
    ns_pl_install_free(in);
    return e;
  }
  *out = in;
  return e;
}

/* Queues a verified body (ownership of data taken). */
static netstash_error enqueue(ns_pl_install *in, size_t i, uint8_t *data, size_t len,
                              const uint8_t sha[32]) {
  ns_pl_batch *b = &in->cur;
  if (b->nq == b->qcap) {
    size_t nc = b->qcap ? b->qcap * 2 : 16;
    queued *nq = ns_realloc(in->mem, b->q, nc * sizeof(*nq));
    if (!nq) {
      ns_free(in->mem, data);
      return NETSTASH_E_NOMEM;
    }
    b->q = nq;
    b->qcap = nc;
  }
  b->q[b->nq].i = i;
  b->q[b->nq].data = data;
  b->q[b->nq].len = len;
  memcpy(b->q[b->nq].sha, sha, 32);
  b->nq++;
  b->qbytes += len;
  if (in->auto_flush && (b->qbytes >= NS_PL_BATCH_BYTES || b->nq >= NS_PL_BATCH_BODIES))
    return ns_pl_install_flush(in);
  return NETSTASH_OK;
}

static int queued_already(const ns_pl_install *in, size_t i) {
  for (size_t k = 0; k < in->cur.nq; k++)
    if (in->cur.q[k].i == i)
      return 1;
  return 0;
}

netstash_error ns_pl_install_body(ns_pl_install *in, size_t i, const uint8_t *body, size_t len) {
  uint8_t sha[32], *copy;
  netstash_error e;
  if (!in || i >= in->m->n_resources || (len && !body))
    return NETSTASH_E_INVALID_ARGUMENT;
  if (in->held[i] || queued_already(in, i))
    return NETSTASH_OK;
  if ((e = ns_sri_check(&in->m->resources[i], body, len, sha)) != NETSTASH_OK)
    return e;
  if (!(copy = ns_malloc(in->mem, len ? len : 1)))
    return NETSTASH_E_NOMEM;
  memcpy(copy, body, len);
  return enqueue(in, i, copy, len, sha);
}

netstash_error ns_pl_install_body_take(ns_pl_install *in, size_t i, uint8_t *body, size_t len) {
  uint8_t sha[32];
  netstash_error e;
  if (!in || i >= in->m->n_resources || !body) {
    if (in)
      ns_free(in->mem, body);
    return NETSTASH_E_INVALID_ARGUMENT;
  }
  if (in->held[i] || queued_already(in, i)) {
    ns_free(in->mem, body);
    return NETSTASH_OK;
  }
  if ((e = ns_sri_check(&in->m->resources[i], body, len, sha)) != NETSTASH_OK) {
    ns_free(in->mem, body);
    return e;
  }
  return enqueue(in, i, body, len, sha);
}

static netstash_error put_entry(ns_store_txn *t, ns_pl_install *in, size_t i, const uint8_t *sha,
                                ns_buf *val) {
  const ns_manifest_resource *res = &in->m->resources[i];
  uint8_t key[NS_STORE_KEY_MAX + 1];
  char surl[8192];
  size_t ul = strip_into(surl, sizeof(surl), res->url, strlen(res->url), NULL, res->query_ignore,
                         res->n_query_ignore);
  size_t kl = ul ? entry_key(key, in->m->id, strlen(in->m->id), in->v, surl, ul) : 0;
  netstash_error e;
  if (!kl)
    return NETSTASH_E_TOO_LARGE;
  ns_buf_reset(val);
  if ((e = ns_pl_entry_encode(res, val)) != NETSTASH_OK)
    return e;
  return ns_store_txn_put(t, NS_STORE_PRELOAD, key, kl, val->data, val->len, sha,
                          NS_STORE_REC_PINNED);
}

typedef struct flush_job {
  ns_pl_install *in;
  const ns_pl_batch *b;
} flush_job;

static netstash_error flush_fn(ns_store_txn *t, void *ud) {
  flush_job *j = ud;
  ns_pl_install *in = j->in;
  ns_buf val;
  netstash_error e = NETSTASH_OK;
  uint8_t ak[2 + 64];
  ns_buf_init(&val, in->mem, SIZE_MAX);
  for (size_t k = 0; k < j->b->nq && !e; k++) {
    const queued *q = &j->b->q[k];
    const ns_manifest_resource *res = &in->m->resources[q->i];
    uint8_t h[32];
    memcpy(h, q->sha, 32); /* verified on arrival: the store need not hash again */
    e = ns_store_txn_body_put(t, q->data, q->len, NS_CODING_IDENTITY, res->content_type,
                              NS_STORE_BODY_NO_RECOMPRESS | NS_STORE_BODY_HASH_GIVEN, h);
    if (!e && strongest(res) != NS_SRI_SHA256) {
      /* remember the verified digests so the next manifest finds the body */
      for (size_t w = 0; !e; w++) {
        size_t al = alias_key(res, w, ak);
        if (!al)
          break;
        uint8_t d[64];
        unsigned dl = 0;
        EVP_Digest(q->data, q->len, d, &dl, sri_md((ns_sri_alg)ak[1]), NULL);
        if (!memcmp(d, ak + 2, (size_t)ak[1]))
          e = ns_store_txn_put(t, NS_STORE_MANIFESTS, ak, al, h, 32, NULL, 0);
      }
    }
    if (!e)
      e = put_entry(t, in, q->i, h, &val);
  }
  for (size_t i = 0; j->b->holding && i < in->m->n_resources && !e; i++)
    if (in->held[i] == 2)
      e = put_entry(t, in, i, in->sha[i], &val);
  ns_buf_free(&val);
  return e;
}

ns_pl_batch *ns_pl_install_take_batch(ns_pl_install *in) {
  ns_pl_batch *b;
  if (!in->cur.nq || !(b = ns_malloc(in->mem, sizeof(*b))))
    return NULL;
  *b = in->cur;
  b->holding = 0;
  memset(&in->cur, 0, sizeof(in->cur));
  in->committing += b->nq;
  return b;
}

netstash_error ns_pl_batch_commit(ns_pl_install *in, const ns_pl_batch *b) {
  flush_job j = {in, b};
  return ns_store_write(in->s, flush_fn, &j);
}

void ns_pl_install_batch_done(ns_pl_install *in, ns_pl_batch *b, netstash_error err) {
  for (size_t k = 0; k < b->nq; k++) {
    queued *q = &b->q[k];
    if (err == NETSTASH_OK) {
      if (!in->held[q->i] && in->missing)
        in->missing--;
      in->held[q->i] = 1;
      memcpy(in->sha[q->i], q->sha, 32);
    }
    if (in->recycle)
      in->recycle(in->recycle_ud, q->data);
    else
      ns_free(in->mem, q->data);
  }
  if (b != &in->cur) {
    in->committing -= b->nq;
    ns_free(in->mem, b->q);
    ns_free(in->mem, b);
  } else {
    ns_free(in->mem, b->q);
    memset(b, 0, sizeof(*b));
  }
}

netstash_error ns_pl_install_flush(ns_pl_install *in) {
  netstash_error e = NETSTASH_OK;
  int due = in->cur.nq > 0;
  for (size_t i = 0; i < in->m->n_resources && !due; i++)
    due = in->held[i] == 2;
  if (!due)
    return NETSTASH_OK;
  in->cur.holding = 1;
  e = ns_pl_batch_commit(in, &in->cur);
  if (e != NETSTASH_OK) {
    in->cur.holding = 0;
    return e; /* the batch stays queued */
  }
  ns_pl_install_batch_done(in, &in->cur, NETSTASH_OK);
  for (size_t i = 0; i < in->m->n_resources; i++)
    if (in->held[i] == 2)
      in->held[i] = 1;
  return NETSTASH_OK;
}

static netstash_error publish_fn(ns_store_txn *t, void *ud) {
  ns_pl_install *in = ud;
  ns_pl_state st;
  netstash_error e = ns_pl_txn_state(t, in->m->id, &st);
  if (e != NETSTASH_OK)
    return e == NETSTASH_E_NOT_FOUND ? NETSTASH_E_ILLEGAL_STATE : e;
  if (st.staged != in->v) {
    ns_detailf(in->detail, in->dlen, "version %llu of \"%s\" is no longer staged",
               (unsigned long long)in->v, in->m->id);
    return NETSTASH_E_DOWNGRADE;
  }
  if (st.previous && st.previous != in->v &&
      (e = ns_pl_txn_drop_version(t, in->mem, in->m->id, st.previous)) != NETSTASH_OK)
    return e;
  st.previous = st.active != in->v ? st.active : 0;
  st.active = in->v;
  st.staged = 0;
  st.flags = 0;
  st.published_ms = now_ms();
  snprintf(st.key_id, sizeof(st.key_id), "%s", in->key_id);
  return ns_pl_txn_put_state(t, in->mem, in->m->id, &st, in->m);
}

netstash_error ns_pl_install_publish(ns_pl_install *in) {
  netstash_error e;
  if (in->plan == NS_PL_PLAN_CONTROL)
    return NETSTASH_OK;
  if ((e = ns_pl_install_flush(in)) != NETSTASH_OK)
    return e;
  if (in->plan == NS_PL_PLAN_FILL)
    return NETSTASH_OK;
  for (size_t i = 0; i < in->m->n_resources; i++)
    if (!in->held[i] && in->m->resources[i].priority == NS_MANIFEST_PRIO_CRITICAL) {
      ns_detailf(in->detail, in->dlen,
                 "critical resource %s is missing: version %llu not published "
                 "(%zu resources missing; warm again to complete it)",
                 in->m->resources[i].url, (unsigned long long)in->v, in->missing);
      return NETSTASH_E_INCOMPLETE;
    }
  return ns_store_write(in->s, publish_fn, in);
}

void ns_pl_install_free(ns_pl_install *in) {
  if (!in)
    return;
  for (size_t k = 0; k < in->cur.nq; k++)
    ns_free(in->mem, in->cur.q[k].data);
  ns_free(in->mem, in->cur.q);
  ns_free(in->mem, in->held);
  ns_free(in->mem, in->sha);
  ns_free(in->mem, in);
}

/* ------------------------------------------------------------ lookup */

/* Length of the longest scope of st covering url (path-segment boundary),
 * 0 when none does. */
static size_t covering(const ns_pl_state *st, const char *url, size_t url_len) {
  size_t it = 0, best = 0, l;
  const char *s;
  while (ns_pl_state_scope(st, &it, &s, &l)) {
    if (l == 0 || l > url_len || memcmp(s, url, l) != 0)
      continue;
    if (s[l - 1] == '/' || l == url_len || url[l] == '/' || url[l] == '?')
      if (l > best)
        best = l;
  }
  return best;
}

#define LOOKUP_MAX_CANDIDATES 32

typedef struct cand {
  size_t scope_len;
  int64_t published_ms;
  const char *id;
  size_t id_len;
  ns_pl_state st;
} cand;

static int entry_at(ns_store_reader *r, const cand *c, const char *url, size_t ul, int with_body,
                    ns_pl_hit *out) {
  uint8_t key[NS_STORE_KEY_MAX + 1];
  ns_store_record rec;
  size_t kl = entry_key(key, c->id, c->id_len, c->st.active, url, ul);
  if (!kl || ns_store_get(r, NS_STORE_PRELOAD, key, kl, &rec) != NETSTASH_OK || !rec.has_body)
    return 0;
  if (with_body && ns_store_body_get(r, rec.body_hash, &out->body) != NETSTASH_OK)
    return 0;
  memcpy(out->body_hash, rec.body_hash, 32);
  if (ns_pl_entry_decode(rec.value, rec.value_len, &out->entry) != NETSTASH_OK)
    return 0;
  out->id = c->id;
  out->id_len = c->id_len;
  out->version = c->st.active;
  return 1;
}

netstash_error ns_pl_lookup(ns_store_reader *r, const char *url, size_t url_len, int64_t now_s,
                            ns_pl_hit *out) {
  return ns_pl_lookup_ex(r, url, url_len, now_s, 1, out);
}

netstash_error ns_pl_lookup_ex(ns_store_reader *r, const char *url, size_t url_len, int64_t now_s,
                               int with_body, ns_pl_hit *out) {
  ns_store_record rec;
  cand c[LOOKUP_MAX_CANDIDATES];
  size_t nc = 0;
  netstash_error e = ns_store_get(r, NS_STORE_MANIFESTS, "I", 1, &rec);
  const uint8_t *p, *end;
  if (e != NETSTASH_OK)
    return e;
  if (rec.value_len < 8 || get_le32(rec.value) != 1)
    return NETSTASH_E_STORE_CORRUPT;
  p = rec.value + 8;
  end = rec.value + rec.value_len;
  while (p < end) {
    cand x;
    uint32_t vl;
    if (get_u16str(&p, end, &x.id, &x.id_len) != 0 || end - p < 4)
      return NETSTASH_E_STORE_CORRUPT;
    vl = get_le32(p);
    p += 4;
    if ((size_t)(end - p) < vl || vl < STATE_FIXED + 16)
      return NETSTASH_E_STORE_CORRUPT;
    {
      /* cheap checks on the fixed part before decoding the rest */
      int64_t exp = (int64_t)get_le64(p + 40);
      if (!get_le64(p + 8) || get_le32(p + 4) || (exp && exp <= now_s)) {
        p += vl;
        continue;
      }
    }
    if (ns_pl_state_decode(p, vl, &x.st) != NETSTASH_OK)
      return NETSTASH_E_STORE_CORRUPT;
    p += vl;
    x.scope_len = covering(&x.st, url, url_len);
    x.published_ms = x.st.published_ms;
    if (!x.scope_len)
      continue;
    /* insertion in order: longest scope, then newest */
    size_t at = nc < LOOKUP_MAX_CANDIDATES ? nc : LOOKUP_MAX_CANDIDATES - 1;
    while (at > 0 && (c[at - 1].scope_len < x.scope_len ||
                      (c[at - 1].scope_len == x.scope_len && c[at - 1].published_ms < x.published_ms))) {
      if (at < LOOKUP_MAX_CANDIDATES)
        c[at] = c[at - 1];
      at--;
    }
    if (at < LOOKUP_MAX_CANDIDATES) {
      c[at] = x;
      if (nc < LOOKUP_MAX_CANDIDATES)
        nc++;
    }
  }
  for (size_t i = 0; i < nc; i++) {
    size_t it = 0, n;
    const uint8_t *list;
    if (entry_at(r, &c[i], url, url_len, with_body, out))
      return NETSTASH_OK;
    if (!memchr(url, '?', url_len))
      continue;
    while (ns_pl_state_ignore(&c[i].st, &it, &list, &n)) {
      char s[8192];
      size_t sl = strip_into(s, sizeof(s), url, url_len, list, NULL, n);
      if (sl && sl != url_len && entry_at(r, &c[i], s, sl, with_body, out))
        return NETSTASH_OK;
    }
  }
  return NETSTASH_E_NOT_FOUND;
}

/* ------------------------------------------------------------ sources */

static uint8_t *dup_bytes(const ns_mem *mem, const void *p, size_t n) {
  uint8_t *d = ns_malloc(mem, n + 1);
  if (d) {
    memcpy(d, p, n);
    d[n] = 0;
  }
  return d;
}

netstash_error ns_pl_source_get(ns_store *s, const ns_mem *mem, const char *url, char **etag,
                                char **last_modified, uint8_t **mbytes, size_t *mlen,
                                uint8_t **sig, size_t *sig_len) {
  ns_store_reader *r = NULL;
  ns_store_record rec;
  ns_buf k;
  netstash_error e;
  *etag = *last_modified = NULL;
  *mbytes = *sig = NULL;
  *mlen = *sig_len = 0;
  if (1 + strlen(url) > NS_STORE_KEY_MAX)
    return NETSTASH_E_NOT_FOUND;
  if ((e = ns_store_reader_new(s, &r)) != NETSTASH_OK)
    return e;
  ns_buf_init(&k, mem, NS_STORE_KEY_MAX);
  if ((e = ns_store_read_begin(r)) != NETSTASH_OK)
    goto out_reader;
  if ((e = ns_buf_append(&k, "V", 1)) || (e = ns_buf_append_str(&k, url)) ||
      (e = ns_store_get(r, NS_STORE_MANIFESTS, k.data, k.len, &rec)))
    goto out;
  {
    /* etag \0 last-modified \0 id \0 version */
    const char *p = (const char *)rec.value, *end = p + rec.value_len, *f[4];
    int nf = 0;
    for (const char *q = p; q < end && nf < 4; nf++) {
      f[nf] = q;
      q = memchr(q, 0, (size_t)(end - q));
      q = q ? q + 1 : end;
    }
    if (nf != 4) {
      e = NETSTASH_E_NOT_FOUND;
      goto out;
    }
    char ver[24], id[256];
    snprintf(id, sizeof(id), "%s", f[2]);
    snprintf(ver, sizeof(ver), "%.*s", (int)(end - f[3]), f[3]);
    uint64_t v = strtoull(ver, NULL, 10);
    *etag = f[0][0] ? (char *)dup_bytes(mem, f[0], strlen(f[0])) : NULL;
    *last_modified = f[1][0] ? (char *)dup_bytes(mem, f[1], strlen(f[1])) : NULL;
    if ((e = ns_pl_key_version(&k, 'M', id, v)) ||
        (e = ns_store_get(r, NS_STORE_MANIFESTS, k.data, k.len, &rec)))
      goto out;
    *mbytes = dup_bytes(mem, rec.value, rec.value_len);
    *mlen = rec.value_len;
    if ((e = ns_pl_key_version(&k, 'G', id, v)) ||
        (e = ns_store_get(r, NS_STORE_MANIFESTS, k.data, k.len, &rec)))
      goto out;
    *sig = dup_bytes(mem, rec.value, rec.value_len);
    *sig_len = rec.value_len;
    if (!*mbytes || !*sig)
      e = NETSTASH_E_NOMEM;
  }
out:
  ns_store_read_end(r);
out_reader:
  ns_store_reader_del(r);
  ns_buf_free(&k);
  if (e != NETSTASH_OK) {
    ns_free(mem, *etag);
    ns_free(mem, *last_modified);
    ns_free(mem, *mbytes);
    ns_free(mem, *sig);
    *etag = *last_modified = NULL;
    *mbytes = *sig = NULL;
  }
  return e;
}
