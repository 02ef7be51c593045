/*
 * httpcache.h — the HTTP cache of a context: RFC 9111 rules (cache.h) over
 * the profile's store (store.h). Internal; used by the transport on the
 * loop thread.
 *
 * Records in the store's `http` database:
 *   primary key (ns_cache_key)             → index: the variant ids, newest first
 *   primary key "\n" variant id (16 hex)   → variant: times, status, response
 *                                            head, Vary snapshot; references
 *                                            its body
 * The variant id is a hash of the Vary snapshot, so a new response for the
 * same request headers replaces its variant and different ones sit side by
 * side (at most NS_HC_MAX_VARIANTS per URL; Chromium keeps one).
 */
#ifndef NS_CACHE_HTTPCACHE_H
#define NS_CACHE_HTTPCACHE_H

#include "ns_setup.h"

#include "cache/cache.h"
#include "core/buf.h"
#include "core/headers.h"
#include "store/store.h"

#define NS_HC_MAX_VARIANTS 8

typedef struct ns_httpcache ns_httpcache;

typedef struct ns_hc_config {
  ns_store *store;        /* the profile's store (borrowed: outlives the cache) */
  uint64_t max_entry;     /* largest body stored */
  int partition;          /* double-keyed cache */
  int recompress;         /* identity text bodies stored as Brotli (the store's rule) */
} ns_hc_config;

/* A stored response, copied out of the store (the read transaction does not
 * stay open across network I/O). */
typedef struct ns_hc_entry {
  int found;
  ns_buf primary;         /* primary key (fitted to the store's limit) */
  char variant_id[17];
  int status;
  ns_headers headers;
  ns_coding coding; /* what headers' Content-Encoding names: identity, gzip, br (or unknown) */
  ns_headers vary;
  int64_t request_time_ms, response_time_ms;
  int has_body;
  uint8_t body_hash[NS_STORE_HASH_LEN];
  ns_cache_decision decision;
  /* ns_httpcache_peek's memo: the snapshot this entry was read in, whether
   * it is the newest variant under its key, the records' flags and access
   * times (for their access notes), a scratch key, and the URL and top-level site primary
   * was built from */
  uint64_t snapshot;
  int newest;
  uint32_t index_flags, variant_flags;
  uint64_t index_atime, variant_atime;
  ns_buf key2;
  ns_buf keyed;
  ns_cache_prepared prep; /* the decision's stored side, for a kept entry */
} ns_hc_entry;

netstash_error ns_httpcache_open(const ns_mem *mem, const ns_hc_config *cfg,
                                 ns_httpcache **out, char *detail, size_t detail_len);
void ns_httpcache_close(ns_httpcache *hc);
const ns_cache_policy *ns_httpcache_policy(const ns_httpcache *hc);
/* The profile's store (for other per-profile state: HSTS). */
ns_store *ns_httpcache_store_handle(ns_httpcache *hc);

/* Checks the format of every HTTP cache record of s (indexes, variants, No-
 * Vary-Search lists; other records of the database, HSTS and Alt-Svc, are
 * left alone): NETSTASH_E_STORE_CORRUPT with the first damaged key in detail,
 * so that damage a lookup would meet is found by netstash_store_verify.
 * mem: for decoding. Reads a snapshot of its own. */
netstash_error ns_httpcache_check(ns_store *s, const ns_mem *mem, char *detail,
                                  size_t detail_len);

void ns_hc_entry_init(ns_hc_entry *e, const ns_mem *mem);
void ns_hc_entry_free(ns_hc_entry *e);

/* Finds the variant for (top_level_url, url, request headers) and decides
 * (RFC 9111) at now_ms. e->found is 0 on a miss; e->decision is always set.
 * NETSTASH_E_AGAIN: an entry for the URL is queued or being committed (for
 * a URL with a query, any entry with a No-Vary-Search index): look again
 * once it is settled (ns_httpcache_commit, ns_httpcache_flush). Other
 * errors are storage errors (the caller goes to the network). */
netstash_error ns_httpcache_lookup(ns_httpcache *hc, const char *top_level_url,
                                   const char *url, const char *method,
                                   const ns_headers *req, int64_t now_ms, ns_hc_entry *e);

/* ns_httpcache_lookup for a GET from any thread, inside reader's open read
 * transaction (the caller's: the body stays valid while it is open): no
 * No-Vary-Search fallback, and responses still queued for the group commit
 * are not seen (the synchronous fast paths: a miss there means "start a
 * job"). e found in the same snapshot by the previous peek, for the same
 * key, and its variant the newest and matching req again, is kept as it is
 * (not read and decoded again; the accesses noted all the same). */
netstash_error ns_httpcache_peek(ns_httpcache *hc, ns_store_reader *reader, const char *top,
                                 const char *url, const ns_headers *req, int64_t now_ms,
                                 ns_hc_entry *e);

/* Whether a raw answer from e (a relay) can carry the stored body as it is
 * kept: *as_stored 1 when the store keeps it in the coding e's head names —
 * not so when the store recompressed it, or when two responses with the same
 * decoded content came in different codings (the body is kept once, keyed
 * by its decoded SHA-256, in the coding of the first stored: a Vary:
 * Accept-Encoding resource's identity and gzip variants share it). Then the
 * answer must be the decoded body, *decoded_size bytes, without the head's
 * Content-Encoding and Content-Length. NETSTASH_E_NOT_FOUND when the body
 * went away. */
netstash_error ns_httpcache_body_form(ns_httpcache *hc, const ns_hc_entry *e, int *as_stored,
                                      uint64_t *decoded_size);

/* Streams the entry's body to sink, at most max_out bytes: decoded, or with
 * raw as it is kept — only when it is kept in the coding e's head names
 * (ns_httpcache_body_form said so; if the body changed since, this fails
 * with NETSTASH_E_NOT_FOUND rather than send bytes the head does not
 * describe). NETSTASH_E_NOT_FOUND when the body went away (evicted between
 * lookup and serve). */
netstash_error ns_httpcache_serve_body(ns_httpcache *hc, const ns_hc_entry *e, int raw,
                                       uint64_t max_out, ns_decoder_sink sink, void *ud);

/* Decoded size of the entry's body (0 without one). */
netstash_error ns_httpcache_body_size(ns_httpcache *hc, const ns_hc_entry *e, uint64_t *size);

/* Stores a response when RFC 9111 allows it (*stored tells). body is the
 * body as received (coding: from Content-Encoding). When the cache defers
 * (below) and *stored is set, commit_result (may be NULL) receives the
 * commit's outcome when it is settled (ns_httpcache_flush or
 * ns_httpcache_commit). */
netstash_error ns_httpcache_store(ns_httpcache *hc, const char *top_level_url, const char *url,
                                  const char *method, const ns_headers *req, int status,
                                  const ns_headers *resp, const uint8_t *body, size_t len,
                                  int64_t request_time_ms, int64_t response_time_ms,
                                  int *stored, const char **why_not,
                                  netstash_error *commit_result);
/* The same, the body in a buffer the cache may take over when it queues the
 * response (deferred, below) and the buffer comes from its allocator: body
 * is left empty then, and must not be read for the stored bytes after. */
netstash_error ns_httpcache_store_buf(ns_httpcache *hc, const char *top_level_url, const char *url,
                                      const char *method, const ns_headers *req, int status,
                                      const ns_headers *resp, ns_buf *body, int64_t request_time_ms,
                                      int64_t response_time_ms, int *stored, const char **why_not,
                                      netstash_error *commit_result);

/* Group commits. Once deferred is set, ns_httpcache_store prepares the
 * entry (RFC 9111 checks, keys, the encoded head, a copy of the body or the
 * buffer ns_httpcache_store_buf takes) and
 * queues it, and *stored means "queued"; ns_httpcache_flush commits every
 * queued entry in one store transaction — one fsync for many responses —
 * retrying them one by one if that fails as a whole (a full disk, one body
 * too large), and writes each entry's outcome to its commit_result. 304
 * updates, invalidations and close flush first, and a lookup of what is
 * queued says so (NETSTASH_E_AGAIN), so the cache reads its own writes. The
 * transport completes a fetch only once its entry is committed (group
 * commit: "stored" stays true, a completed fetch is durable). ns_httpcache_disown forgets a
 * commit_result (its fetch ended first). ns_httpcache_pending: entries queued, not yet handed to a
 * writer (a batch it has ends in its notify). Loop thread only (as every call of this module with a
 * live fetch).
 *
 * ns_httpcache_set_writer starts a thread of the cache's own that commits
 * (and sets deferred): ns_httpcache_commit hands the queue to it when it is
 * idle and returns at once — the loop goes on serving while the store
 * writes and syncs, and what is queued meanwhile is the next batch. When a
 * batch is committed the writer calls notify (on its thread, under its lock:
 * notify may only post to the loop); the next ns_httpcache_commit writes
 * that batch's commit_results and hands over the next (at most 64 entries
 * or 4 MiB of bodies per batch). Returns the settled batch's first failure.
 * Without a writer ns_httpcache_commit is ns_httpcache_flush.
 * ns_httpcache_flush waits for the writer's batch first. */
void ns_httpcache_set_deferred(ns_httpcache *hc, int deferred);
netstash_error ns_httpcache_set_writer(ns_httpcache *hc, void (*notify)(void *ud), void *ud);
netstash_error ns_httpcache_commit(ns_httpcache *hc, uint32_t *retry_ms);
/* A writer's batches go at least 5 ms apart while the queue is short of a
 * full batch: ns_httpcache_commit then leaves the queue and says in
 * *retry_ms (may be NULL; 0: nothing held back) when to call it again. A
 * quiet cache (no batch in the last 5 ms) commits at once. Tests set the
 * gap (0: none). */
void ns_httpcache_set_commit_gap(ns_httpcache *hc, uint32_t us);
netstash_error ns_httpcache_flush(ns_httpcache *hc);
size_t ns_httpcache_pending(const ns_httpcache *hc);
void ns_httpcache_disown(ns_httpcache *hc, const netstash_error *commit_result);

/* A 304 for e: merges its fields into e->headers, stores the updated
 * variant with the new times. */
netstash_error ns_httpcache_update_304(ns_httpcache *hc, ns_hc_entry *e,
                                       const ns_headers *resp304, int64_t request_time_ms,
                                       int64_t response_time_ms);

/* One stored response as ns_httpcache_walk sees it: the partition ("-"
 * when unpartitioned, else the top-level site) and URL of its key (shortened
 * URLs end in a hash: ns_cache_key_fit), the decoded entry (headers, Vary
 * snapshot, times, status) and its body as stored. */
typedef struct ns_hc_walked {
  ns_span site, url;
  const ns_hc_entry *e;
  uint64_t size;    /* bytes of content (decoded) */
  ns_coding coding; /* as stored */
  int64_t atime_ms; /* last access written back (0: none) */
} ns_hc_walked;
typedef int (*ns_hc_walk_fn)(const ns_hc_walked *w, void *ud);

/* Calls fn for every stored response of the store (any thread: its own
 * reader, one snapshot) whose URL starts with url_prefix (NULL: all). fn
 * returns nonzero to stop. NETSTASH_E_STORE_CORRUPT for a damaged record. */
netstash_error ns_httpcache_walk(struct ns_store *s, const ns_mem *mem, const char *url_prefix,
                                 ns_hc_walk_fn fn, void *ud);

/* Removes the stored responses of url in every partition (each of its
 * variants); *removed: how many keys (partitions) held some. Any thread.
 * pol: the cache's policy (the key's URL form). */
netstash_error ns_httpcache_remove_url(struct ns_store *s, const ns_mem *mem,
                                       const ns_cache_policy *pol, const char *url,
                                       unsigned *removed);

/* Removes every stored response for e's key (all its variants). */
netstash_error ns_httpcache_forget(ns_httpcache *hc, const ns_hc_entry *e);

/* RFC 9111 §4.4 invalidation after an unsafe method's non-error response.
 * on_key (may be NULL) is then called with each key removed (as stored:
 * fitted), so the caller can match entries it is about to store. */
typedef void (*ns_hc_key_fn)(const uint8_t *key, size_t len, void *ud);
netstash_error ns_httpcache_invalidate(ns_httpcache *hc, const char *top_level_url,
                                       const char *method, const char *url, int status,
                                       const ns_headers *resp, ns_hc_key_fn on_key, void *ud);

#endif
