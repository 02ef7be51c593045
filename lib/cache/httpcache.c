/*
 * httpcache.c — RFC 9111 cache rules (cache.c) over the profile's store.
 * See httpcache.h for the record layout.
 */
#include "ns_setup.h"

#include <pthread.h>
#include <signal.h>
#include <stdio.h>

#include <openssl/evp.h>

#include "cache/httpcache.h"
#include "core/ctx.h" /* ns_now_us */
#include "core/list.h"
#include "transport/decode.h"

#define REC_VERSION 1
#define REC_INDEX 1
#define REC_VARIANT 2
#define REC_NVS 3 /* No-Vary-Search index: stored URLs, "\n"-separated */
#define NVS_MAX_URLS 16

/* A store waiting for ns_httpcache_flush. */
typedef struct pend_store {
  ns_list node;
  ns_buf primary, value, nvs_key;
  int has_nvs;
  char id[17];
  uint8_t *body; /* a copy (hc->mem) */
  size_t body_len;
  ns_coding coding;
  char *content_type; /* NULL: none */
  char *url;
  netstash_error *result; /* the commit's outcome, NULL: nobody asks (loop thread) */
  netstash_error rv;      /* the commit's outcome, written by whoever commits */
} pend_store;

/* The writer thread's state (guarded by w_lock). */
enum { W_IDLE, W_BUSY, W_DONE };

/* Queued bodies above this are committed at once, not at the end of the
 * loop turn. */
#define PENDING_BYTES_MAX ((uint64_t)8 << 20)

/* The bounds of one batch on the writer thread. Under load the queue grows
 * while a batch commits; LMDB keeps the dirty page buffers of its largest
 * transaction for reuse until the store closes, and the first entry of a
 * batch waits for all of it. (netd filled with 100k entries at 12k
 * misses/s: heap 7.4-7.7 MB with these bounds, 8.3 MB without.) */
#define BATCH_MAX 64
#define BATCH_BYTES_MAX ((uint64_t)4 << 20)
/* Between two batches handed to the writer, at least this long while the
 * queue is short of a full batch (ns_httpcache_commit). */
#define COMMIT_GAP_US 5000u

struct ns_httpcache {
  const ns_mem *mem;
  ns_store *store;
  ns_store_reader *reader;
  ns_cache_policy policy;
  uint64_t max_entry;
  int recompress; /* ns_hc_config.recompress */
  int deferred;
  ns_list pending; /* pend_store */
  size_t npending;
  uint64_t pending_bytes;
  /* The writer thread (ns_httpcache_set_writer): inflight is the batch it
   * commits. The loop thread changes the list only while the writer is not
   * W_BUSY; while it is, both only read the entries (the loop may clear an
   * entry's result: a field the writer does not read). */
  int has_writer;
  pthread_t writer;
  pthread_mutex_t w_lock;
  pthread_cond_t w_cond;
  int w_state, w_stop;
  uint32_t commit_gap_us;   /* COMMIT_GAP_US, or a test's (ns_httpcache_set_commit_gap) */
  uint64_t last_handoff_us; /* monotonic time the last batch went to the writer */
  ns_list inflight;
  size_t ninflight;
  void (*notify)(void *ud);
  void *notify_ud;
};

/* ------------------------------------------------------------ encoding */

static netstash_error put_u64(ns_buf *b, uint64_t v) {
  uint8_t x[8];
  for (int i = 0; i < 8; i++)
    x[i] = (uint8_t)(v >> (56 - 8 * i));
  return ns_buf_append(b, x, 8);
}

static int get_u64(const uint8_t **p, const uint8_t *end, uint64_t *v) {
  if (end - *p < 8)
    return 0;
  *v = 0;
  for (int i = 0; i < 8; i++)
    *v = (*v << 8) | (*p)[i];
  *p += 8;
  return 1;
}

static netstash_error put_blob(ns_buf *b, const ns_buf *blob) {
  netstash_error rv = put_u64(b, blob->len);
  return rv != NETSTASH_OK ? rv : ns_buf_append(b, blob->data ? blob->data : (uint8_t *)"", blob->len);
}

static int get_blob(const uint8_t **p, const uint8_t *end, const uint8_t **data, size_t *len) {
  uint64_t n;
  if (!get_u64(p, end, &n) || n > (uint64_t)(end - *p))
    return 0;
  *data = *p;
  *len = (size_t)n;
  *p += n;
  return 1;
}

/* variant: version, kind, req_time, resp_time, status, head blob, vary blob */
static netstash_error encode_variant(const ns_mem *mem, int status, const ns_headers *head,
                                     const ns_headers *vary, int64_t req_ms, int64_t resp_ms,
                                     ns_buf *out) {
  ns_buf h, v;
  netstash_error rv;
  uint8_t hdr[2] = {REC_VERSION, REC_VARIANT};
  ns_buf_init(&h, mem, 16u << 20);
  ns_buf_init(&v, mem, 1u << 20);
  if ((rv = ns_headers_encode(head, &h)) == NETSTASH_OK &&
      (rv = ns_headers_encode(vary, &v)) == NETSTASH_OK &&
      (rv = ns_buf_append(out, hdr, 2)) == NETSTASH_OK &&
      (rv = put_u64(out, (uint64_t)req_ms)) == NETSTASH_OK &&
      (rv = put_u64(out, (uint64_t)resp_ms)) == NETSTASH_OK &&
      (rv = put_u64(out, (uint64_t)status)) == NETSTASH_OK &&
      (rv = put_blob(out, &h)) == NETSTASH_OK)
    rv = put_blob(out, &v);
  ns_buf_free(&h);
  ns_buf_free(&v);
  return rv;
}

/* The coding a stored head names (its Content-Encoding): NS_CODING_IDENTITY,
 * _GZIP or _BR, NS_CODING_UNKNOWN for a coding nobody here decodes (its body
 * kept opaque, as identity) or anything else. */
static ns_coding head_coding(const ns_headers *head) {
  const char *ce = ns_headers_get(head, "content-encoding");
  ns_coding c[NS_DECODE_MAX_LAYERS];
  int n;
  if (!ce)
    return NS_CODING_IDENTITY;
  n = ns_coding_parse(ce, strlen(ce), c);
  return n == 0 ? NS_CODING_IDENTITY : n == 1 ? c[0] : NS_CODING_UNKNOWN;
}

static netstash_error decode_variant(const uint8_t *p, size_t len, ns_hc_entry *e) {
  const uint8_t *end = p + len, *hb, *vb;
  size_t hl, vl;
  uint64_t rq, rs, st;
  netstash_error rv;
  if (len < 2 || p[0] != REC_VERSION || p[1] != REC_VARIANT)
    return NETSTASH_E_STORE_CORRUPT;
  p += 2;
  if (!get_u64(&p, end, &rq) || !get_u64(&p, end, &rs) || !get_u64(&p, end, &st) ||
      !get_blob(&p, end, &hb, &hl) || !get_blob(&p, end, &vb, &vl) || st < 100 || st > 999)
    return NETSTASH_E_STORE_CORRUPT;
  ns_headers_free(&e->headers);
  ns_headers_free(&e->vary);
  if ((rv = ns_headers_decode(&e->headers, hb, hl, NULL)) != NETSTASH_OK ||
      (rv = ns_headers_decode(&e->vary, vb, vl, NULL)) != NETSTASH_OK)
    return rv == NETSTASH_E_NOMEM ? rv : NETSTASH_E_STORE_CORRUPT;
  e->request_time_ms = (int64_t)rq;
  e->response_time_ms = (int64_t)rs;
  e->status = (int)st;
  e->coding = head_coding(&e->headers);
  return NETSTASH_OK;
}

typedef struct check_ctx {
  const ns_mem *mem;
  netstash_error rv;
  char *detail;
  size_t dlen;
} check_ctx;

static int check_one(const uint8_t *key, size_t keylen, const ns_store_record *rec, void *ud) {
  check_ctx *c = ud;
  const uint8_t *v = rec->value;
  size_t n = rec->value_len;
  int ok;
  if (keylen < 2 || key[0] != '1' || (key[1] != ' ' && key[1] != 'n'))
    return 0; /* not a cache record (hsts, altsvc) */
  ok = n >= 2 && v[0] == REC_VERSION;
  if (ok && v[1] == REC_INDEX) {
    ok = (n - 2) % 16 == 0;
  } else if (ok && v[1] == REC_VARIANT) {
    ns_hc_entry e;
    ns_hc_entry_init(&e, c->mem);
    c->rv = decode_variant(v, n, &e);
    ns_hc_entry_free(&e);
    if (c->rv == NETSTASH_E_NOMEM)
      return 1;
    ok = c->rv == NETSTASH_OK;
  } else if (ok) {
    ok = v[1] == REC_NVS;
  }
  if (!ok) {
    c->rv = NETSTASH_E_STORE_CORRUPT;
    ns_detailf(c->detail, c->dlen,
               "HTTP cache record \"%.*s\" is damaged: run `netstash purge` (or move the "
               "profile's store away)",
               (int)NS_MIN(keylen, (size_t)80), (const char *)key);
    return 1;
  }
  return 0;
}

netstash_error ns_httpcache_check(ns_store *s, const ns_mem *mem, char *detail, size_t dlen) {
  ns_store_reader *r = NULL;
  check_ctx c = {mem, NETSTASH_OK, detail, dlen};
  netstash_error rv = ns_store_reader_new(s, &r);
  if (rv == NETSTASH_OK)
    rv = ns_store_read_begin(r);
  if (rv == NETSTASH_OK) {
    rv = ns_store_iterate(r, NS_STORE_HTTP, NULL, 0, check_one, &c);
    ns_store_read_end(r);
  }
  ns_store_reader_del(r);
  return rv != NETSTASH_OK ? rv : c.rv;
}

/* The variant id: 16 hex digits of SHA-256 over the Vary snapshot. */
static netstash_error variant_id(const ns_mem *mem, const ns_headers *vary, char out[17]) {
  ns_buf b;
  uint8_t md[32];
  unsigned mdlen = 0;
  netstash_error rv;
  ns_buf_init(&b, mem, 1u << 20);
  rv = ns_headers_encode(vary, &b);
  if (rv == NETSTASH_OK &&
      !EVP_Digest(b.data ? b.data : (uint8_t *)"", b.len, md, &mdlen, EVP_sha256(), NULL))
    rv = NETSTASH_E_INTERNAL;
  ns_buf_free(&b);
  if (rv == NETSTASH_OK)
    for (int i = 0; i < 8; i++)
      snprintf(out + 2 * i, 3, "%02x", md[i]);
  return rv;
}

typedef netstash_error (*key_fn)(const ns_cache_policy *pol, const char *top_level_url,
                                 const char *url, ns_buf *out);

/* A cache key made by fn, fitted to the store's key limit (17 bytes left for
 * "\n" + a variant id). */
static netstash_error fitted_key(ns_httpcache *hc, key_fn fn, const char *top, const char *url,
                                 ns_buf *out) {
  ns_buf raw;
  size_t len0 = out->len;
  /* most keys fit as they are: built in place, no scratch buffer */
  netstash_error rv = fn(&hc->policy, top, url, out);
  if (rv == NETSTASH_OK && out->len - len0 <= NS_STORE_KEY_MAX - 17)
    return NETSTASH_OK;
  if (rv != NETSTASH_OK && rv != NETSTASH_E_TOO_LARGE)
    return rv;
  out->len = len0;
  if (out->data)
    out->data[len0] = 0;
  ns_buf_init(&raw, hc->mem, 64 * 1024);
  rv = fn(&hc->policy, top, url, &raw);
  if (rv == NETSTASH_OK)
    rv = ns_cache_key_fit(ns_buf_str(&raw), raw.len, NS_STORE_KEY_MAX - 17, out);
  ns_buf_free(&raw);
  return rv;
}

static netstash_error primary_key(ns_httpcache *hc, const char *top, const char *url, ns_buf *out) {
  return fitted_key(hc, ns_cache_key, top, url, out);
}

static netstash_error variant_key(const ns_buf *primary, const char *id, ns_buf *out) {
  netstash_error rv = ns_buf_append(out, primary->data, primary->len);
  if (rv == NETSTASH_OK)
    rv = ns_buf_append(out, "\n", 1);
  return rv != NETSTASH_OK ? rv : ns_buf_append(out, id, 16);
}

/* ------------------------------------------------------------ lifecycle */

netstash_error ns_httpcache_open(const ns_mem *mem, const ns_hc_config *cfg,
                                 ns_httpcache **out, char *detail, size_t detail_len) {
  ns_httpcache *hc;
  netstash_error rv;
  (void)detail;
  (void)detail_len;
  *out = NULL;
  hc = ns_calloc(mem, 1, sizeof(*hc));
  if (!hc)
    return NETSTASH_E_NOMEM;
  hc->mem = mem;
  ns_list_init(&hc->pending);
  ns_list_init(&hc->inflight);
  ns_cache_policy_init(&hc->policy);
  hc->policy.partition = cfg->partition;
  hc->max_entry = cfg->max_entry ? cfg->max_entry : (32u << 20);
  hc->recompress = cfg->recompress;
  hc->commit_gap_us = COMMIT_GAP_US;
  hc->store = cfg->store;
  rv = ns_store_reader_new(hc->store, &hc->reader);
  if (rv != NETSTASH_OK) {
    ns_httpcache_close(hc);
    return rv;
  }
  *out = hc;
  return NETSTASH_OK;
}

void ns_httpcache_close(ns_httpcache *hc) {
  if (!hc)
    return;
  (void)ns_httpcache_flush(hc);
  if (hc->has_writer) {
    pthread_mutex_lock(&hc->w_lock);
    hc->w_stop = 1;
    pthread_cond_broadcast(&hc->w_cond);
    pthread_mutex_unlock(&hc->w_lock);
    pthread_join(hc->writer, NULL);
    pthread_mutex_destroy(&hc->w_lock);
    pthread_cond_destroy(&hc->w_cond);
  }
  ns_store_reader_del(hc->reader);
  if (hc->store)
    ns_store_flush_access(hc->store);
  ns_free(hc->mem, hc);
}

const ns_cache_policy *ns_httpcache_policy(const ns_httpcache *hc) { return &hc->policy; }

ns_store *ns_httpcache_store_handle(ns_httpcache *hc) { return hc->store; }

void ns_hc_entry_init(ns_hc_entry *e, const ns_mem *mem) {
  memset(e, 0, sizeof(*e));
  ns_buf_init(&e->primary, mem, NS_STORE_KEY_MAX);
  ns_buf_init(&e->key2, mem, NS_STORE_KEY_MAX);
  ns_buf_init(&e->keyed, mem, SIZE_MAX);
  ns_headers_init(&e->headers, mem);
  ns_headers_init(&e->vary, mem);
}

void ns_hc_entry_free(ns_hc_entry *e) {
  ns_buf_free(&e->primary);
  ns_buf_free(&e->key2);
  ns_buf_free(&e->keyed);
  ns_headers_free(&e->headers);
  ns_headers_free(&e->vary);
}

/* ------------------------------------------------------------ lookup */

/* Inside a read transaction: the newest variant under primary whose Vary
 * snapshot matches req, decoded into e. Returns NETSTASH_OK with e->found. */
static netstash_error find_variant_in(ns_httpcache *hc, ns_store_reader *reader,
                                      const ns_buf *primary, const ns_headers *req,
                                      ns_hc_entry *e) {
  ns_store_record rec;
  netstash_error rv;
  ns_buf vk;
  size_t i, n = 0;
  char ids[NS_HC_MAX_VARIANTS][17];
  rv = ns_store_get(reader, NS_STORE_HTTP, primary->data, primary->len, &rec);
  if (rv == NETSTASH_E_NOT_FOUND)
    return NETSTASH_OK;
  if (rv != NETSTASH_OK)
    return rv;
  if (rec.value_len < 2 || rec.value[0] != REC_VERSION || rec.value[1] != REC_INDEX ||
      (rec.value_len - 2) % 16 != 0)
    return NETSTASH_E_STORE_CORRUPT;
  e->index_flags = rec.flags;
  e->index_atime = rec.atime_ms;
  n = NS_MIN((rec.value_len - 2) / 16, (size_t)NS_HC_MAX_VARIANTS);
  for (i = 0; i < n; i++) {
    memcpy(ids[i], rec.value + 2 + 16 * i, 16);
    ids[i][16] = 0;
  }
  /* newest first: the first variant whose Vary snapshot matches wins */
  ns_buf_init(&vk, hc->mem, NS_STORE_KEY_MAX);
  for (i = 0; rv == NETSTASH_OK && i < n && !e->found; i++) {
    ns_buf_reset(&vk);
    if ((rv = variant_key(primary, ids[i], &vk)) != NETSTASH_OK)
      break;
    rv = ns_store_get(reader, NS_STORE_HTTP, vk.data, vk.len, &rec);
    if (rv == NETSTASH_E_NOT_FOUND) {
      rv = NETSTASH_OK;
      continue; /* evicted */
    }
    /* a variant that is there but does not decode is damage, not a miss:
     * STORE_CORRUPT (or NOMEM), which the caller reports */
    if (rv != NETSTASH_OK || (rv = decode_variant(rec.value, rec.value_len, e)) != NETSTASH_OK)
      break;
    if (!ns_cache_vary_matches(&e->headers, &e->vary, req))
      continue;
    e->found = 1;
    e->newest = i == 0;
    e->variant_flags = rec.flags;
    e->variant_atime = rec.atime_ms;
    memcpy(e->variant_id, ids[i], 17);
    e->has_body = rec.has_body;
    if (rec.has_body)
      memcpy(e->body_hash, rec.body_hash, NS_STORE_HASH_LEN);
  }
  ns_buf_free(&vk);
  return rv;
}

static netstash_error find_variant(ns_httpcache *hc, const ns_buf *primary, const ns_headers *req,
                                   ns_hc_entry *e) {
  return find_variant_in(hc, hc->reader, primary, req, e);
}

static netstash_error nvs_index_key(ns_httpcache *hc, const char *top, const char *url,
                                    ns_buf *out) {
  return fitted_key(hc, ns_cache_nvs_index_key, top, url, out);
}

/* No-Vary-Search (draft-ietf-httpbis-no-vary-search): a stored response for a
 * URL that differs only in query parameters the response said do not matter.
 * The NVS index lists the URLs stored under the query-less key. */
static netstash_error find_nvs(ns_httpcache *hc, const char *top, const char *url,
                               const ns_headers *req, ns_hc_entry *e) {
  ns_store_record rec;
  ns_buf key, prim;
  netstash_error rv;
  char *list = NULL;
  ns_buf_init(&key, hc->mem, NS_STORE_KEY_MAX);
  ns_buf_init(&prim, hc->mem, NS_STORE_KEY_MAX);
  rv = nvs_index_key(hc, top, url, &key);
  if (rv == NETSTASH_OK)
    rv = ns_store_get(hc->reader, NS_STORE_HTTP, key.data, key.len, &rec);
  if (rv == NETSTASH_OK && (rec.value_len < 2 || rec.value[1] != REC_NVS))
    rv = NETSTASH_E_STORE_CORRUPT;
  if (rv == NETSTASH_OK && !(list = ns_strndup(hc->mem, (const char *)rec.value + 2,
                                               rec.value_len - 2)))
    rv = NETSTASH_E_NOMEM;
  for (char *u = list, *nl; rv == NETSTASH_OK && u && *u && !e->found; u = nl) {
    ns_cache_nvs nvs;
    int equal = 0;
    nl = strchr(u, '\n');
    if (nl)
      *nl++ = 0;
    ns_buf_reset(&prim);
    if (primary_key(hc, top, u, &prim) != NETSTASH_OK ||
        (rv = find_variant(hc, &prim, req, e)) != NETSTASH_OK || !e->found)
      continue;
    memset(&nvs, 0, sizeof(nvs));
    e->found = 0;
    if ((rv = ns_cache_nvs_parse(hc->mem, &e->headers, &nvs)) == NETSTASH_OK && nvs.present &&
        ns_cache_nvs_equivalent(hc->mem, &nvs, url, u, &equal) == NETSTASH_OK && equal) {
      e->found = 1;
      ns_buf_reset(&e->primary);
      rv = ns_buf_append(&e->primary, prim.data, prim.len);
    }
    ns_cache_nvs_free(hc->mem, &nvs);
  }
  ns_free(hc->mem, list);
  ns_buf_free(&key);
  ns_buf_free(&prim);
  return rv == NETSTASH_E_NOT_FOUND ? NETSTASH_OK : rv;
}

/* The RFC 9111 decision on what the lookup found in e (nothing: a miss);
 * prep: e->prep may be used (peek's kept entries; peek invalidates it
 * whenever it decodes the entry again). */
static void decide_entry(ns_httpcache *hc, const ns_cache_request *creq, int64_t now_ms,
                         ns_hc_entry *e, int prep) {
  ns_cache_stored st = {e->status,          &e->headers,         &e->vary,
                        e->request_time_ms, e->response_time_ms, prep ? &e->prep : NULL};
  ns_cache_decide(&hc->policy, creq, e->found ? &st : NULL, now_ms, &e->decision);
}

/* Is an entry for primary (or, nvs set, any with a No-Vary-Search index)
 * queued or being committed? */
static int queued(const ns_httpcache *hc, const ns_buf *primary, int nvs) {
  const ns_list *lists[2] = {&hc->pending, &hc->inflight};
  for (int i = 0; i < 2; i++)
    for (const ns_list *pos = lists[i]->next; pos != lists[i]; pos = pos->next) {
      const pend_store *p = ns_list_entry(pos, pend_store, node);
      if ((nvs && p->has_nvs) || (p->primary.len == primary->len &&
                                  memcmp(p->primary.data, primary->data, primary->len) == 0))
        return 1;
    }
  return 0;
}

netstash_error ns_httpcache_lookup(ns_httpcache *hc, const char *top, const char *url,
                                   const char *method, const ns_headers *req, int64_t now_ms,
                                   ns_hc_entry *e) {
  netstash_error rv;
  ns_cache_request creq = {method, url, req};

  e->found = 0;
  ns_buf_reset(&e->primary);
  rv = primary_key(hc, top, url, &e->primary);
  if (rv != NETSTASH_OK)
    return rv;
  /* its entry is being stored: the caller looks again once it is settled
   * (the cache reads its own writes, the loop does not wait for the writer) */
  if (queued(hc, &e->primary, strchr(url, '?') != NULL))
    return NETSTASH_E_AGAIN;
  rv = ns_store_read_begin(hc->reader);
  if (rv != NETSTASH_OK)
    return rv;
  rv = find_variant(hc, &e->primary, req, e);
  if (rv == NETSTASH_OK && !e->found && strchr(url, '?'))
    rv = find_nvs(hc, top, url, req, e);
  ns_store_read_end(hc->reader);
  if (rv != NETSTASH_OK)
    return rv;
  decide_entry(hc, &creq, now_ms, e, 0);
  return NETSTASH_OK;
}

/* Is e->primary the key of (top, url)? e->keyed holds the pair it was
 * built from ("url\n+top", or "url\n-" without a top-level site): the key
 * is a function of them alone. */
static int keyed_for(const ns_hc_entry *e, const char *top, const char *url) {
  size_t ul = strlen(url), tl = top ? strlen(top) : 0;
  const uint8_t *k = e->keyed.data;
  return e->keyed.len == ul + 2 + tl && memcmp(k, url, ul) == 0 && k[ul] == '\n' &&
         k[ul + 1] == (top ? '+' : '-') && (!tl || memcmp(k + ul + 2, top, tl) == 0);
}

netstash_error ns_httpcache_peek(ns_httpcache *hc, ns_store_reader *reader, const char *top,
                                 const char *url, const ns_headers *req, int64_t now_ms,
                                 ns_hc_entry *e) {
  netstash_error rv;
  ns_cache_request creq = {"GET", url, req};
  uint64_t snap = ns_store_reader_snapshot(reader);
  int same_key = keyed_for(e, top, url);
  if (!same_key) {
    ns_buf_reset(&e->key2);
    if ((rv = primary_key(hc, top, url, &e->key2)) != NETSTASH_OK) {
      e->found = 0;
      ns_buf_reset(&e->keyed);
      return rv;
    }
    same_key =
        e->key2.len == e->primary.len && memcmp(e->key2.data, e->primary.data, e->primary.len) == 0;
  }
  if (e->found && e->newest && snap && e->snapshot == snap && same_key &&
      ns_cache_vary_matches(&e->headers, &e->vary, req)) {
    /* the snapshot the entry was decoded in, its key, and its variant (the
     * newest) matches this request too: find_variant_in would decode the
     * same records again. Their accesses are noted as a read would. */
    ns_store_touch(reader, NS_STORE_HTTP, e->primary.data, e->primary.len, e->index_flags,
                   e->index_atime);
    ns_buf_reset(&e->key2);
    if (variant_key(&e->primary, e->variant_id, &e->key2) == NETSTASH_OK)
      ns_store_touch(reader, NS_STORE_HTTP, e->key2.data, e->key2.len, e->variant_flags,
                     e->variant_atime);
  } else {
    if (!same_key) { /* key2 is the new key */
      ns_buf t = e->primary;
      e->primary = e->key2;
      e->key2 = t;
    }
    ns_buf_reset(&e->keyed);
    if (ns_buf_append_str(&e->keyed, url) != NETSTASH_OK ||
        ns_buf_append_str(&e->keyed, top ? "\n+" : "\n-") != NETSTASH_OK ||
        (top && ns_buf_append_str(&e->keyed, top) != NETSTASH_OK))
      ns_buf_reset(&e->keyed); /* not kept: built again next time */
    e->found = 0;
    e->prep.valid = 0; /* decoded again below */
    if ((rv = find_variant_in(hc, reader, &e->primary, req, e)) != NETSTASH_OK)
      return rv;
    e->snapshot = snap;
  }
  decide_entry(hc, &creq, now_ms, e, 1);
  return NETSTASH_OK;
}

/* The body b kept as e's head says (not recompressed, the same coding; a
 * coding the cache does not know is kept as identity: opaque bytes). */
static int kept_as_head_says(const ns_store_body *b, const ns_hc_entry *e) {
  return !b->recompressed &&
         b->coding == (e->coding == NS_CODING_UNKNOWN ? NS_CODING_IDENTITY : e->coding);
}

netstash_error ns_httpcache_body_form(ns_httpcache *hc, const ns_hc_entry *e, int *as_stored,
                                      uint64_t *decoded_size) {
  ns_store_body b;
  netstash_error rv;
  *as_stored = 1;
  *decoded_size = 0;
  if (!e->has_body)
    return NETSTASH_OK;
  rv = ns_store_read_begin(hc->reader);
  if (rv != NETSTASH_OK)
    return rv;
  rv = ns_store_body_get(hc->reader, e->body_hash, &b);
  if (rv == NETSTASH_OK) {
    *as_stored = kept_as_head_says(&b, e);
    *decoded_size = b.decoded_size;
  }
  ns_store_read_end(hc->reader);
  return rv;
}

netstash_error ns_httpcache_serve_body(ns_httpcache *hc, const ns_hc_entry *e, int raw,
                                       uint64_t max_out, ns_decoder_sink sink, void *ud) {
  ns_store_body b;
  netstash_error rv;
  if (!e->has_body)
    return NETSTASH_OK;
  rv = ns_store_read_begin(hc->reader);
  if (rv != NETSTASH_OK)
    return rv;
  rv = ns_store_body_get(hc->reader, e->body_hash, &b);
  if (rv == NETSTASH_OK && raw && !kept_as_head_says(&b, e))
    rv = NETSTASH_E_NOT_FOUND; /* replaced since ns_httpcache_body_form: not what the head says */
  if (rv == NETSTASH_OK) {
    if (raw) {
      /* as received: the chunks themselves */
      uint64_t sent = 0;
      for (uint32_t i = 0; rv == NETSTASH_OK && i < b.nchunks; i++) {
        const uint8_t *d;
        size_t l;
        rv = ns_store_body_chunk(&b, i, &d, &l);
        if (rv == NETSTASH_OK && l > max_out - sent)
          rv = NETSTASH_E_TOO_LARGE;
        if (rv == NETSTASH_OK) {
          sent += l;
          rv = sink(d, l, ud);
        }
      }
    } else {
      rv = ns_store_body_decode(&b, hc->mem, max_out, sink, ud);
    }
  }
  ns_store_read_end(hc->reader);
  return rv;
}

netstash_error ns_httpcache_body_size(ns_httpcache *hc, const ns_hc_entry *e, uint64_t *size) {
  int as_stored;
  return ns_httpcache_body_form(hc, e, &as_stored, size);
}

/* ------------------------------------------------------------ writes */

typedef struct store_job {
  ns_httpcache *hc;
  const ns_buf *nvs_key; /* NULL: the response has no No-Vary-Search */
  const char *url;
  const ns_buf *primary;
  const char *id;
  const ns_buf *value;
  const uint8_t *body;
  size_t body_len;
  ns_coding coding;
  const char *content_type;
  int has_body;
  int body_known; /* body_hash given: reference an existing body */
  uint8_t hash[NS_STORE_HASH_LEN];
} store_job;

/* Index: the new id first, then the others (deduplicated, capped); ids that
 * fall off the end lose their variant record. */
static netstash_error update_index(ns_store_txn *t, const ns_buf *primary, const char *id,
                                   const ns_mem *mem) {
  ns_store_record rec;
  uint8_t val[2 + 16 * NS_HC_MAX_VARIANTS];
  size_t n = 0, len = 2, i;
  netstash_error rv;
  char old[NS_HC_MAX_VARIANTS + 1][17];
  val[0] = REC_VERSION;
  val[1] = REC_INDEX;
  memcpy(val + 2, id, 16);
  len += 16;
  rv = ns_store_txn_get(t, NS_STORE_HTTP, primary->data, primary->len, &rec);
  if (rv == NETSTASH_OK && rec.value_len >= 2 && rec.value[1] == REC_INDEX) {
    n = NS_MIN((rec.value_len - 2) / 16, (size_t)NS_HC_MAX_VARIANTS);
    for (i = 0; i < n; i++) {
      memcpy(old[i], rec.value + 2 + 16 * i, 16);
      old[i][16] = 0;
    }
  }
  for (i = 0; i < n; i++) {
    if (memcmp(old[i], id, 16) == 0)
      continue;
    if (len + 16 <= sizeof(val)) {
      memcpy(val + len, old[i], 16);
      len += 16;
    } else {
      ns_buf vk;
      ns_buf_init(&vk, mem, NS_STORE_KEY_MAX);
      if (variant_key(primary, old[i], &vk) == NETSTASH_OK)
        ns_store_txn_del(t, NS_STORE_HTTP, vk.data, vk.len);
      ns_buf_free(&vk);
    }
  }
  return ns_store_txn_put(t, NS_STORE_HTTP, primary->data, primary->len, val, len, NULL, 0);
}

/* The NVS index: this URL first, then the others (deduplicated, capped). */
static netstash_error update_nvs_index(ns_store_txn *t, const ns_buf *key, const char *url,
                                       const ns_mem *mem) {
  ns_store_record rec;
  ns_buf v;
  netstash_error rv;
  size_t ul = strlen(url), count = 1;
  uint8_t hdr[2] = {REC_VERSION, REC_NVS};
  ns_buf_init(&v, mem, 256 * 1024);
  rv = ns_buf_append(&v, hdr, 2);
  if (rv == NETSTASH_OK)
    rv = ns_buf_append(&v, url, ul);
  if (rv == NETSTASH_OK &&
      ns_store_txn_get(t, NS_STORE_HTTP, key->data, key->len, &rec) == NETSTASH_OK &&
      rec.value_len >= 2 && rec.value[1] == REC_NVS) {
    const char *p = (const char *)rec.value + 2, *end = (const char *)rec.value + rec.value_len;
    while (rv == NETSTASH_OK && p < end && count < NVS_MAX_URLS) {
      const char *nl = memchr(p, '\n', (size_t)(end - p));
      size_t l = nl ? (size_t)(nl - p) : (size_t)(end - p);
      if (l && !(l == ul && memcmp(p, url, ul) == 0)) {
        rv = ns_buf_append(&v, "\n", 1);
        if (rv == NETSTASH_OK)
          rv = ns_buf_append(&v, p, l);
        count++;
      }
      p += l + 1;
    }
  }
  if (rv == NETSTASH_OK)
    rv = ns_store_txn_put(t, NS_STORE_HTTP, key->data, key->len, v.data, v.len, NULL, 0);
  ns_buf_free(&v);
  return rv;
}

static netstash_error store_fn(ns_store_txn *t, void *ud) {
  store_job *j = ud;
  ns_buf vk;
  netstash_error rv = NETSTASH_OK;
  if (j->has_body && !j->body_known) {
    /* a coding this cache cannot decode (NS_CODING_UNKNOWN): the bytes as
     * sent are the content, kept as they are (never recompressed: a
     * relayed answer hands them out under the head's Content-Encoding) */
    int opaque = j->coding == NS_CODING_UNKNOWN;
    rv = ns_store_txn_body_put(
        t, j->body, j->body_len, opaque ? NS_CODING_IDENTITY : j->coding, j->content_type,
        j->hc->recompress && !opaque ? 0 : NS_STORE_BODY_NO_RECOMPRESS, j->hash);
  }
  if (rv != NETSTASH_OK)
    return rv;
  ns_buf_init(&vk, j->hc->mem, NS_STORE_KEY_MAX);
  rv = variant_key(j->primary, j->id, &vk);
  if (rv == NETSTASH_OK)
    rv = ns_store_txn_put(t, NS_STORE_HTTP, vk.data, vk.len, j->value->data, j->value->len,
                          j->has_body ? j->hash : NULL, 0);
  ns_buf_free(&vk);
  if (rv == NETSTASH_OK)
    rv = update_index(t, j->primary, j->id, j->hc->mem);
  if (rv == NETSTASH_OK && j->nvs_key)
    rv = update_nvs_index(t, j->nvs_key, j->url, j->hc->mem);
  return rv;
}

/* ------------------------------------------------------------ group commits */

static void pend_free(ns_httpcache *hc, pend_store *p) {
  ns_buf_free(&p->primary);
  ns_buf_free(&p->value);
  ns_buf_free(&p->nvs_key);
  ns_free(hc->mem, p->body);
  ns_free(hc->mem, p->content_type);
  ns_free(hc->mem, p->url);
  ns_free(hc->mem, p);
}

static netstash_error buf_copy(ns_buf *to, const ns_buf *from) {
  return ns_buf_append(to, from->data, from->len);
}

static int same_allocator(const ns_mem *a, const ns_mem *b) {
  return a->malloc == b->malloc && a->free == b->free && a->realloc == b->realloc &&
         a->user_data == b->user_data;
}

/* Moves a prepared entry into the queue (copies of everything but the body
 * in take: the body's buffer, taken over rather than copied when it comes
 * from the cache's own allocator — left empty then —, or NULL). */
static netstash_error queue_store(ns_httpcache *hc, const ns_buf *primary, const ns_buf *value,
                                  const ns_buf *nvs_key, const char *id, const uint8_t *body,
                                  size_t len, ns_buf *take, ns_coding coding, const char *ctype,
                                  const char *url, netstash_error *result) {
  pend_store *p = ns_calloc(hc->mem, 1, sizeof(*p));
  netstash_error rv;
  if (!p)
    return NETSTASH_E_NOMEM;
  ns_buf_init(&p->primary, hc->mem, NS_STORE_KEY_MAX);
  ns_buf_init(&p->value, hc->mem, 32u << 20);
  ns_buf_init(&p->nvs_key, hc->mem, NS_STORE_KEY_MAX);
  snprintf(p->id, sizeof(p->id), "%s", id);
  p->has_nvs = nvs_key != NULL;
  p->coding = coding;
  p->body_len = len;
  if ((rv = buf_copy(&p->primary, primary)) != NETSTASH_OK ||
      (rv = buf_copy(&p->value, value)) != NETSTASH_OK ||
      (nvs_key && (rv = buf_copy(&p->nvs_key, nvs_key)) != NETSTASH_OK)) {
    pend_free(hc, p);
    return rv;
  }
  p->url = ns_strdup(hc->mem, url);
  p->content_type = ctype ? ns_strdup(hc->mem, ctype) : NULL;
  if (!p->url || (ctype && !p->content_type)) {
    pend_free(hc, p);
    return NETSTASH_E_NOMEM;
  }
  if (take && take->data && same_allocator(take->mem, hc->mem)) {
    p->body = take->data; /* a miss's body: not copied again */
    take->data = NULL;
    take->len = take->cap = 0;
  } else {
    p->body = ns_malloc(hc->mem, len);
    if (!p->body) {
      pend_free(hc, p);
      return NETSTASH_E_NOMEM;
    }
    if (len)
      memcpy(p->body, body, len);
  }
  p->result = result;
  ns_list_insert_tail(&hc->pending, &p->node);
  hc->npending++;
  hc->pending_bytes += len;
  return NETSTASH_OK;
}

static void job_of(ns_httpcache *hc, pend_store *p, store_job *j) {
  memset(j, 0, sizeof(*j));
  j->hc = hc;
  j->primary = &p->primary;
  j->id = p->id;
  j->value = &p->value;
  j->body = p->body;
  j->body_len = p->body_len;
  j->coding = p->coding;
  j->content_type = p->content_type;
  j->has_body = 1;
  j->nvs_key = p->has_nvs ? &p->nvs_key : NULL;
  j->url = p->url;
}

typedef struct batch {
  ns_httpcache *hc;
  ns_list *list;
} batch;

static netstash_error batch_fn(ns_store_txn *t, void *ud) {
  batch *bt = ud;
  ns_list *pos;
  for (pos = bt->list->next; pos != bt->list; pos = pos->next) {
    store_job j;
    netstash_error rv;
    job_of(bt->hc, ns_list_entry(pos, pend_store, node), &j);
    if ((rv = store_fn(t, &j)) != NETSTASH_OK)
      return rv;
  }
  return NETSTASH_OK;
}

/* Commits the n entries of list in one transaction and writes each one's
 * outcome to its rv; the first failure, or NETSTASH_OK. Any thread (the
 * entries are only read). */
static netstash_error commit_list(ns_httpcache *hc, ns_list *list, size_t n) {
  batch bt = {hc, list};
  ns_list *pos;
  netstash_error rv = ns_store_write(hc->store, batch_fn, &bt);
  if (rv != NETSTASH_OK && n > 1) {
    /* one entry (too large for what is left of the disk, say) must not
     * cost the others their place: each in its own transaction */
    rv = NETSTASH_OK;
    for (pos = list->next; pos != list; pos = pos->next) {
      pend_store *p = ns_list_entry(pos, pend_store, node);
      store_job j;
      job_of(hc, p, &j);
      if ((p->rv = ns_store_write(hc->store, store_fn, &j)) != NETSTASH_OK)
        rv = p->rv;
    }
    return rv;
  }
  for (pos = list->next; pos != list; pos = pos->next)
    ns_list_entry(pos, pend_store, node)->rv = rv;
  return rv;
}

/* Loop thread: hands each committed entry's outcome to its commit_result and
 * frees the list's entries; the first failure, or NETSTASH_OK. */
static netstash_error settle(ns_httpcache *hc, ns_list *list) {
  netstash_error rv = NETSTASH_OK;
  while (!ns_list_empty(list)) {
    pend_store *p = ns_list_entry(list->next, pend_store, node);
    if (p->result)
      *p->result = p->rv;
    if (rv == NETSTASH_OK)
      rv = p->rv;
    ns_list_remove(&p->node);
    pend_free(hc, p);
  }
  return rv;
}

static void *writer_main(void *arg) {
  ns_httpcache *hc = arg;
  pthread_mutex_lock(&hc->w_lock);
  for (;;) {
    while (hc->w_state != W_BUSY && !hc->w_stop)
      pthread_cond_wait(&hc->w_cond, &hc->w_lock);
    if (hc->w_state != W_BUSY)
      break; /* stopping, nothing handed over */
    pthread_mutex_unlock(&hc->w_lock);
    (void)commit_list(hc, &hc->inflight, hc->ninflight);
    pthread_mutex_lock(&hc->w_lock);
    hc->w_state = W_DONE;
    /* under the lock: once a waiter sees W_DONE, notify has returned */
    if (hc->notify)
      hc->notify(hc->notify_ud);
    pthread_cond_broadcast(&hc->w_cond);
  }
  pthread_mutex_unlock(&hc->w_lock);
  return NULL;
}

netstash_error ns_httpcache_set_writer(ns_httpcache *hc, void (*notify)(void *ud), void *ud) {
  sigset_t all, old;
  int rc;
  if (!hc || hc->has_writer)
    return NETSTASH_E_INVALID_ARGUMENT;
  if (pthread_mutex_init(&hc->w_lock, NULL) != 0)
    return NETSTASH_E_INTERNAL;
  if (pthread_cond_init(&hc->w_cond, NULL) != 0) {
    pthread_mutex_destroy(&hc->w_lock);
    return NETSTASH_E_INTERNAL;
  }
  hc->notify = notify;
  hc->notify_ud = ud;
  hc->w_state = W_IDLE;
  /* the process's signals go to the embedder's threads; faults stay ours */
  sigfillset(&all);
  sigdelset(&all, SIGSEGV);
  sigdelset(&all, SIGBUS);
  sigdelset(&all, SIGFPE);
  sigdelset(&all, SIGILL);
  sigdelset(&all, SIGABRT);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  rc = pthread_create(&hc->writer, NULL, writer_main, hc);
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  if (rc != 0) {
    pthread_mutex_destroy(&hc->w_lock);
    pthread_cond_destroy(&hc->w_cond);
    return NETSTASH_E_INTERNAL;
  }
  hc->has_writer = 1;
  hc->deferred = 1;
  return NETSTASH_OK;
}

/* Loop thread: waits for the writer's batch, if any, and settles it. */
static netstash_error drain(ns_httpcache *hc) {
  int done;
  if (!hc->has_writer)
    return NETSTASH_OK;
  pthread_mutex_lock(&hc->w_lock);
  while (hc->w_state == W_BUSY)
    pthread_cond_wait(&hc->w_cond, &hc->w_lock);
  done = hc->w_state == W_DONE;
  hc->w_state = W_IDLE;
  pthread_mutex_unlock(&hc->w_lock);
  hc->ninflight = 0;
  return done ? settle(hc, &hc->inflight) : NETSTASH_OK;
}

void ns_httpcache_set_deferred(ns_httpcache *hc, int deferred) {
  if (hc)
    hc->deferred = deferred != 0;
}

size_t ns_httpcache_pending(const ns_httpcache *hc) {
  return hc ? hc->npending : 0;
}

void ns_httpcache_disown(ns_httpcache *hc, const netstash_error *result) {
  ns_list *lists[2], *pos;
  if (!hc || !result)
    return;
  lists[0] = &hc->pending;
  lists[1] = &hc->inflight;
  for (int i = 0; i < 2; i++)
    for (pos = lists[i]->next; pos != lists[i]; pos = pos->next) {
      pend_store *p = ns_list_entry(pos, pend_store, node);
      if (p->result == result)
        p->result = NULL;
    }
}

netstash_error ns_httpcache_flush(ns_httpcache *hc) {
  netstash_error rv, r0;
  if (!hc)
    return NETSTASH_OK;
  r0 = drain(hc);
  if (!hc->npending)
    return r0;
  (void)commit_list(hc, &hc->pending, hc->npending);
  rv = settle(hc, &hc->pending);
  hc->npending = 0;
  hc->pending_bytes = 0;
  return r0 != NETSTASH_OK ? r0 : rv;
}

void ns_httpcache_set_commit_gap(ns_httpcache *hc, uint32_t us) {
  if (hc)
    hc->commit_gap_us = us;
}

netstash_error ns_httpcache_commit(ns_httpcache *hc, uint32_t *retry_ms) {
  netstash_error rv = NETSTASH_OK;
  int state;
  if (retry_ms)
    *retry_ms = 0;
  if (!hc)
    return NETSTASH_OK;
  if (!hc->has_writer)
    return ns_httpcache_flush(hc);
  pthread_mutex_lock(&hc->w_lock);
  state = hc->w_state;
  pthread_mutex_unlock(&hc->w_lock);
  if (state == W_BUSY)
    return NETSTASH_OK; /* the next batch goes when this one is done */
  if (state == W_DONE)
    rv = drain(hc);
  if (hc->npending) {
    /* the queue, up to a batch's bounds, becomes the writer's batch — but
     * not sooner than commit_gap_us after the last one unless it is a full
     * batch: under load batches grow (a commit and an fsync cost the writer
     * about as much as the entries they write), and a quiet cache commits
     * at once */
    uint64_t bytes = 0, now = ns_now_us();
    if (hc->commit_gap_us && hc->npending < BATCH_MAX && hc->pending_bytes < BATCH_BYTES_MAX &&
        now - hc->last_handoff_us < hc->commit_gap_us) {
      if (retry_ms)
        *retry_ms = (uint32_t)((hc->commit_gap_us - (now - hc->last_handoff_us) + 999) / 1000);
      return rv;
    }
    hc->last_handoff_us = now;
    while (!ns_list_empty(&hc->pending) && hc->ninflight < BATCH_MAX &&
           (bytes < BATCH_BYTES_MAX || !hc->ninflight)) {
      pend_store *p = ns_list_entry(hc->pending.next, pend_store, node);
      ns_list_remove(&p->node);
      ns_list_insert_tail(&hc->inflight, &p->node);
      hc->ninflight++;
      hc->npending--;
      hc->pending_bytes -= p->body_len;
      bytes += p->body_len;
    }
    pthread_mutex_lock(&hc->w_lock);
    hc->w_state = W_BUSY;
    pthread_cond_broadcast(&hc->w_cond);
    pthread_mutex_unlock(&hc->w_lock);
  }
  return rv;
}

static netstash_error store_response(ns_httpcache *hc, const char *top, const char *url,
                                     const char *method, const ns_headers *req, int status,
                                     const ns_headers *resp, const uint8_t *body, size_t len,
                                     ns_buf *take, int64_t req_ms, int64_t resp_ms, int *stored,
                                     const char **why_not, netstash_error *commit_result) {
  ns_cache_request creq = {method, url, req};
  ns_headers head, vary;
  ns_buf primary, value, nvs_key;
  ns_cache_nvs nvs;
  store_job j;
  char id[17];
  const char *ce;
  ns_coding codings[NS_DECODE_MAX_LAYERS];
  int nc = 0;
  netstash_error rv;

  *stored = 0;
  if (!ns_cache_storable(&creq, status, resp, why_not))
    return NETSTASH_OK;
  if (len > hc->max_entry) {
    if (why_not)
      *why_not = "body larger than the cache's entry limit";
    return NETSTASH_OK;
  }
  if (status == 206) {
    uint64_t a, b;
    if (!ns_cache_piece(resp, &a, &b, NULL) || b - a + 1 != len) {
      if (why_not)
        *why_not = "partial content whose body is not its Content-Range's length";
      return NETSTASH_OK;
    }
  }
  ce = ns_headers_get(resp, "content-encoding");
  if (ce) {
    nc = ns_coding_parse(ce, strlen(ce), codings);
    if (nc < 0) {
      /* a coding nobody here decodes: the fetch handed the body over as
       * sent (as Chromium does), and so does the cache — kept opaque */
      nc = 1;
      codings[0] = NS_CODING_UNKNOWN;
    } else if (nc > 1 || (nc == 1 && codings[0] == NS_CODING_DEFLATE)) {
      if (why_not)
        *why_not = "content coding not stored (layered codings and deflate are not)";
      return NETSTASH_OK;
    }
  }
  ns_headers_init(&head, hc->mem);
  ns_headers_init(&vary, hc->mem);
  ns_buf_init(&primary, hc->mem, NS_STORE_KEY_MAX);
  ns_buf_init(&value, hc->mem, 32u << 20);
  ns_buf_init(&nvs_key, hc->mem, NS_STORE_KEY_MAX);
  memset(&nvs, 0, sizeof(nvs));
  if ((rv = ns_cache_nvs_parse(hc->mem, resp, &nvs)) == NETSTASH_OK && nvs.present)
    rv = nvs_index_key(hc, top, url, &nvs_key);
  if (rv == NETSTASH_OK && (rv = ns_headers_copy(&head, resp)) == NETSTASH_OK &&
      (rv = ns_cache_prepare_for_storage(&head, resp_ms)) == NETSTASH_OK &&
      (rv = ns_cache_vary_snapshot(resp, req, &vary)) == NETSTASH_OK &&
      (rv = variant_id(hc->mem, &vary, id)) == NETSTASH_OK &&
      (rv = primary_key(hc, top, url, &primary)) == NETSTASH_OK &&
      (rv = encode_variant(hc->mem, status, &head, &vary, req_ms, resp_ms, &value)) ==
          NETSTASH_OK) {
    if (hc->deferred) {
      rv = queue_store(hc, &primary, &value, nvs.present ? &nvs_key : NULL, id, body, len, take,
                       nc == 1 ? codings[0] : NS_CODING_IDENTITY,
                       ns_headers_get(resp, "content-type"), url, commit_result);
      if (rv == NETSTASH_OK)
        *stored = 1;
      if (rv == NETSTASH_OK && hc->pending_bytes > PENDING_BYTES_MAX)
        rv = ns_httpcache_flush(hc);
    } else {
      memset(&j, 0, sizeof(j));
      j.hc = hc;
      j.primary = &primary;
      j.id = id;
      j.value = &value;
      j.body = body;
      j.body_len = len;
      j.coding = nc == 1 ? codings[0] : NS_CODING_IDENTITY;
      j.content_type = ns_headers_get(resp, "content-type");
      j.has_body = 1;
      j.nvs_key = nvs.present ? &nvs_key : NULL;
      j.url = url;
      rv = ns_store_write(hc->store, store_fn, &j);
      if (rv == NETSTASH_OK)
        *stored = 1;
      if (commit_result)
        *commit_result = rv;
    }
  }
  ns_headers_free(&head);
  ns_headers_free(&vary);
  ns_buf_free(&primary);
  ns_buf_free(&value);
  ns_buf_free(&nvs_key);
  ns_cache_nvs_free(hc->mem, &nvs);
  return rv;
}

netstash_error ns_httpcache_store(ns_httpcache *hc, const char *top, const char *url,
                                  const char *method, const ns_headers *req, int status,
                                  const ns_headers *resp, const uint8_t *body, size_t len,
                                  int64_t req_ms, int64_t resp_ms, int *stored,
                                  const char **why_not, netstash_error *commit_result) {
  return store_response(hc, top, url, method, req, status, resp, body, len, NULL, req_ms, resp_ms,
                        stored, why_not, commit_result);
}

netstash_error ns_httpcache_store_buf(ns_httpcache *hc, const char *top, const char *url,
                                      const char *method, const ns_headers *req, int status,
                                      const ns_headers *resp, ns_buf *body, int64_t req_ms,
                                      int64_t resp_ms, int *stored, const char **why_not,
                                      netstash_error *commit_result) {
  return store_response(hc, top, url, method, req, status, resp,
                        body->data ? body->data : (const uint8_t *)"", body->len, body, req_ms,
                        resp_ms, stored, why_not, commit_result);
}

netstash_error ns_httpcache_update_304(ns_httpcache *hc, ns_hc_entry *e,
                                       const ns_headers *resp304, int64_t req_ms,
                                       int64_t resp_ms) {
  ns_buf value;
  store_job j;
  netstash_error rv;
  (void)ns_httpcache_flush(hc); /* in order with what is queued */
  rv = ns_cache_merge_304(&e->headers, resp304);
  if (rv != NETSTASH_OK)
    return rv;
  e->coding = head_coding(&e->headers);
  e->request_time_ms = req_ms;
  e->response_time_ms = resp_ms;
  ns_buf_init(&value, hc->mem, 32u << 20);
  rv = encode_variant(hc->mem, e->status, &e->headers, &e->vary, req_ms, resp_ms, &value);
  if (rv == NETSTASH_OK) {
    memset(&j, 0, sizeof(j));
    j.hc = hc;
    j.primary = &e->primary;
    j.id = e->variant_id;
    j.value = &value;
    j.has_body = e->has_body;
    j.body_known = 1;
    memcpy(j.hash, e->body_hash, NS_STORE_HASH_LEN);
    rv = ns_store_write(hc->store, store_fn, &j);
  }
  ns_buf_free(&value);
  return rv;
}

typedef struct inval_job {
  const ns_mem *mem;
  ns_buf keys[NS_CACHE_MAX_INVALIDATE];
  size_t n;
} inval_job;

static netstash_error inval_fn(ns_store_txn *t, void *ud) {
  inval_job *j = ud;
  for (size_t k = 0; k < j->n; k++) {
    ns_store_record rec;
    if (ns_store_txn_get(t, NS_STORE_HTTP, j->keys[k].data, j->keys[k].len, &rec) != NETSTASH_OK)
      continue;
    if (rec.value_len >= 2 && rec.value[1] == REC_INDEX) {
      size_t n = NS_MIN((rec.value_len - 2) / 16, (size_t)NS_HC_MAX_VARIANTS);
      char ids[NS_HC_MAX_VARIANTS][17];
      for (size_t i = 0; i < n; i++) {
        memcpy(ids[i], rec.value + 2 + 16 * i, 16);
        ids[i][16] = 0;
      }
      for (size_t i = 0; i < n; i++) {
        ns_buf vk;
        ns_buf_init(&vk, j->mem, NS_STORE_KEY_MAX);
        if (variant_key(&j->keys[k], ids[i], &vk) == NETSTASH_OK)
          ns_store_txn_del(t, NS_STORE_HTTP, vk.data, vk.len);
        ns_buf_free(&vk);
      }
    }
    ns_store_txn_del(t, NS_STORE_HTTP, j->keys[k].data, j->keys[k].len);
  }
  return NETSTASH_OK;
}

netstash_error ns_httpcache_forget(ns_httpcache *hc, const ns_hc_entry *e) {
  inval_job j;
  netstash_error rv;
  (void)ns_httpcache_flush(hc); /* in order with what is queued */
  memset(&j, 0, sizeof(j));
  j.mem = hc->mem;
  j.n = 1;
  ns_buf_init(&j.keys[0], hc->mem, NS_STORE_KEY_MAX);
  rv = ns_buf_append(&j.keys[0], e->primary.data, e->primary.len);
  if (rv == NETSTASH_OK)
    rv = ns_store_write(hc->store, inval_fn, &j);
  ns_buf_free(&j.keys[0]);
  return rv;
}

netstash_error ns_httpcache_invalidate(ns_httpcache *hc, const char *top, const char *method,
                                       const char *url, int status, const ns_headers *resp,
                                       ns_hc_key_fn on_key, void *ud) {
  ns_cache_invalidation inv;
  inval_job j;
  netstash_error rv;
  size_t k;
  (void)ns_httpcache_flush(hc); /* in order with what is queued */
  memset(&inv, 0, sizeof(inv));
  rv = ns_cache_invalidation_targets(hc->mem, &hc->policy, top, method, url, status, resp, &inv);
  if (rv != NETSTASH_OK || inv.n == 0) {
    ns_cache_invalidation_free(hc->mem, &inv);
    return rv;
  }
  memset(&j, 0, sizeof(j));
  j.mem = hc->mem;
  for (k = 0; k < inv.n && rv == NETSTASH_OK; k++) {
    ns_buf_init(&j.keys[k], hc->mem, NS_STORE_KEY_MAX);
    j.n++;
    rv = ns_cache_key_fit(inv.key[k], strlen(inv.key[k]), NS_STORE_KEY_MAX - 17, &j.keys[k]);
  }
  if (rv == NETSTASH_OK)
    rv = ns_store_write(hc->store, inval_fn, &j);
  for (k = 0; k < j.n; k++) {
    if (rv == NETSTASH_OK && on_key)
      on_key(j.keys[k].data, j.keys[k].len, ud);
    ns_buf_free(&j.keys[k]);
  }
  ns_cache_invalidation_free(hc->mem, &inv);
  return rv;
}

/* ------------------------------------------------------------ tools */

typedef struct walk_ctx {
  const ns_mem *mem;
  const char *prefix;
  size_t prefix_len;
  ns_store_reader *r;
  ns_hc_walk_fn fn;
  void *ud;
  netstash_error rv;
} walk_ctx;

/* "1 SITE URL" (a primary key), then "\n" and the variant id */
static int split_key(const uint8_t *key, size_t keylen, ns_span *site, ns_span *url) {
  const char *k = (const char *)key, *sp, *nl;
  if (keylen < 4 || k[0] != '1' || k[1] != ' ')
    return 0;
  sp = memchr(k + 2, ' ', keylen - 2);
  if (!sp)
    return 0;
  nl = memchr(sp + 1, '\n', keylen - (size_t)(sp + 1 - k));
  *site = ns_span_make(k + 2, (size_t)(sp - (k + 2)));
  *url = ns_span_make(sp + 1, nl ? (size_t)(nl - (sp + 1)) : keylen - (size_t)(sp + 1 - k));
  return 1;
}

static int walk_one(const uint8_t *key, size_t keylen, const ns_store_record *rec, void *ud) {
  walk_ctx *c = ud;
  ns_hc_walked w;
  ns_hc_entry e;
  int stop;
  if (!memchr(key, '\n', keylen) || !split_key(key, keylen, &w.site, &w.url))
    return 0; /* an index record, or not an HTTP cache record */
  if (c->prefix_len &&
      (w.url.len < c->prefix_len || memcmp(w.url.p, c->prefix, c->prefix_len) != 0))
    return 0;
  ns_hc_entry_init(&e, c->mem);
  c->rv = decode_variant(rec->value, rec->value_len, &e);
  w.e = &e;
  w.size = 0;
  w.coding = NS_CODING_IDENTITY;
  w.atime_ms = (int64_t)rec->atime_ms;
  if (c->rv == NETSTASH_OK && rec->has_body) {
    ns_store_body b;
    e.has_body = 1;
    memcpy(e.body_hash, rec->body_hash, NS_STORE_HASH_LEN);
    c->rv = ns_store_body_get(c->r, rec->body_hash, &b);
    if (c->rv == NETSTASH_OK) {
      w.size = b.decoded_size;
      w.coding = b.coding;
    }
  }
  stop = c->rv != NETSTASH_OK || c->fn(&w, c->ud);
  ns_hc_entry_free(&e);
  return stop;
}

netstash_error ns_httpcache_walk(struct ns_store *s, const ns_mem *mem, const char *url_prefix,
                                 ns_hc_walk_fn fn, void *ud) {
  walk_ctx c = {mem, url_prefix, url_prefix ? strlen(url_prefix) : 0, NULL, fn, ud, NETSTASH_OK};
  netstash_error rv = ns_store_reader_new(s, &c.r);
  if (rv != NETSTASH_OK)
    return rv;
  if ((rv = ns_store_read_begin(c.r)) == NETSTASH_OK) {
    rv = ns_store_iterate(c.r, NS_STORE_HTTP, "1 ", 2, walk_one, &c);
    ns_store_read_end(c.r);
  }
  ns_store_reader_del(c.r);
  return rv != NETSTASH_OK ? rv : c.rv;
}

typedef struct remove_ctx {
  ns_span url;
  inval_job *j;
  ns_buf full, fit; /* scratch: a shortened key's full form, and it fitted */
  netstash_error rv;
} remove_ctx;

/* Is key (of site) url's key shortened to fit (ns_cache_key_fit: cut, then
 * "#" and the full key's SHA-256)? */
static int fitted_for(remove_ctx *c, const uint8_t *key, size_t keylen, ns_span site) {
  const size_t max = NS_STORE_KEY_MAX - 17;
  if (keylen != max || key[max - NS_CACHE_KEY_HASH_SUFFIX] != '#')
    return 0;
  ns_buf_reset(&c->full);
  ns_buf_reset(&c->fit);
  return ns_buf_append(&c->full, "1 ", 2) == NETSTASH_OK &&
         ns_buf_append(&c->full, site.p, site.len) == NETSTASH_OK &&
         ns_buf_append(&c->full, " ", 1) == NETSTASH_OK &&
         ns_buf_append(&c->full, c->url.p, c->url.len) == NETSTASH_OK &&
         ns_cache_key_fit((const char *)c->full.data, c->full.len, max, &c->fit) == NETSTASH_OK &&
         c->fit.len == keylen && memcmp(c->fit.data, key, keylen) == 0;
}

static int remove_one(const uint8_t *key, size_t keylen, const ns_store_record *rec, void *ud) {
  remove_ctx *c = ud;
  ns_span site, url;
  (void)rec;
  if (memchr(key, '\n', keylen) || !split_key(key, keylen, &site, &url) ||
      !(ns_span_eq(url, c->url) || fitted_for(c, key, keylen, site)))
    return 0;
  if (c->j->n == NS_CACHE_MAX_INVALIDATE) {
    c->rv = NETSTASH_E_TOO_LARGE; /* that many partitions: the caller goes again */
    return 1;
  }
  ns_buf_init(&c->j->keys[c->j->n], c->j->mem, NS_STORE_KEY_MAX);
  c->rv = ns_buf_append(&c->j->keys[c->j->n++], key, keylen);
  return c->rv != NETSTASH_OK;
}

netstash_error ns_httpcache_remove_url(struct ns_store *s, const ns_mem *mem,
                                       const ns_cache_policy *pol, const char *url,
                                       unsigned *removed) {
  ns_cache_policy flat = *pol;
  inval_job j;
  remove_ctx c;
  ns_store_reader *r = NULL;
  ns_buf key;
  netstash_error rv;
  unsigned total = 0;
  if (removed)
    *removed = 0;
  /* the URL as keys hold it: "1 - URL" without partitions */
  flat.partition = 0;
  ns_buf_init(&key, mem, 64 * 1024);
  if ((rv = ns_cache_key(&flat, NULL, url, &key)) != NETSTASH_OK) {
    ns_buf_free(&key);
    return rv;
  }
  if ((rv = ns_store_reader_new(s, &r)) != NETSTASH_OK) {
    ns_buf_free(&key);
    return rv;
  }
  ns_buf_init(&c.full, mem, 64 * 1024);
  ns_buf_init(&c.fit, mem, NS_STORE_KEY_MAX);
  do {
    memset(&j, 0, sizeof(j));
    j.mem = mem;
    c.url = ns_span_make((const char *)key.data + 4, key.len - 4);
    c.j = &j;
    c.rv = NETSTASH_OK;
    if ((rv = ns_store_read_begin(r)) == NETSTASH_OK) {
      rv = ns_store_iterate(r, NS_STORE_HTTP, "1 ", 2, remove_one, &c);
      ns_store_read_end(r);
    }
    if (rv == NETSTASH_OK && j.n > 0 && (c.rv == NETSTASH_OK || c.rv == NETSTASH_E_TOO_LARGE))
      rv = ns_store_write(s, inval_fn, &j);
    total += (unsigned)j.n;
    for (size_t k = 0; k < j.n; k++)
      ns_buf_free(&j.keys[k]);
  } while (rv == NETSTASH_OK && c.rv == NETSTASH_E_TOO_LARGE);
  if (rv == NETSTASH_OK && c.rv != NETSTASH_OK)
    rv = c.rv;
  ns_store_reader_del(r);
  ns_buf_free(&key);
  ns_buf_free(&c.full);
  ns_buf_free(&c.fit);
  if (removed)
    *removed = total;
  return rv == NETSTASH_OK && total == 0 ? NETSTASH_E_NOT_FOUND : rv;
}
