/*
 * netstash — the preload cache: warming signed manifests, serving them.
 *
 * Ops publish a preload manifest (manifests/schema/manifest.schema.json)
 * with a detached Ed25519 signature (MANIFEST.sig). A warm fetches the
 * manifest, verifies its signature against the keys pinned in the context's
 * options, downloads what the profile does not hold yet (bodies are
 * content-addressed: an incremental update fetches only changed bodies),
 * verifies every body against its integrity metadata on arrival and
 * publishes the new version atomically once every critical resource is
 * present. The version it replaces stays for rollback.
 * netstash_preload_lookup() then answers a URL from the active version of
 * the manifest covering it, with no network and no allocation.
 *
 * Rules (doc/DESIGN.md, "Preload"):
 *  - Publication: a version becomes active in one store transaction when all
 *    its critical resources are stored and verified. high and low resources
 *    still missing then (failed, over budget) are not served; a later warm of
 *    the same manifest fills them in without refetching anything else.
 *  - Versions: a manifest must be newer than the newest version of its id
 *    this profile ever accepted (downgrade protection, rollbacks included);
 *    the same version again (same bytes) resumes or completes it.
 *  - Overlapping scopes: a URL is looked up in every active manifest whose
 *    scope covers it, longest matching scope prefix first, then the most
 *    recently published; the first that lists the URL answers.
 *  - Expired manifests, killed manifests (rollout.kill_switch) and manifests
 *    whose rollout excludes this device serve nothing.
 *
 * Thread rule: any thread. Callbacks run on the context's loop thread.
 */
#ifndef NETSTASH_PRELOAD_H
#define NETSTASH_PRELOAD_H

#include "common.h"
#include "fetch.h" /* netstash_source */

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------------------------
 * Context options for the preload cache (netstash_options_*)
 * ------------------------------------------------------------------------ */

/* Pins a public key (PEM SubjectPublicKeyInfo file, as written by
 * `netstash manifest keygen` to KEYFILE.pub). Repeatable. The file is read
 * when a signature is checked. */
NETSTASH_EXTERN netstash_error netstash_options_add_trusted_key(netstash_options *opts,
                                                                const char *pubfile);
/* Accepts manifests without a signature (development only; default 0). A
 * manifest that has a .sig is still verified. */
NETSTASH_EXTERN netstash_error netstash_options_set_allow_unsigned(netstash_options *opts,
                                                                   int allow);
/* The versions a manifest's rollout ranges are compared with (e.g. "4.2.1").
 * Unset: a manifest that targets a version range does not apply. */
NETSTASH_EXTERN netstash_error netstash_options_set_app_version(netstash_options *opts,
                                                                const char *version);
NETSTASH_EXTERN netstash_error netstash_options_set_kernel_version(netstash_options *opts,
                                                                   const char *version);
/* Stable device identifier for percentage rollouts (hashed with the
 * manifest id into a bucket 0..99). Unset: a random id generated once and
 * kept in the profile. */
NETSTASH_EXTERN netstash_error netstash_options_set_device_id(netstash_options *opts,
                                                              const char *id);

/* ------------------------------------------------------------------------
 * Warming
 * ------------------------------------------------------------------------ */

typedef struct netstash_warm netstash_warm;

/* source: an https URL of a manifest (its signature at URL + ".sig"), the
 * path of a manifest file (signature at PATH.sig), or the path of an offline
 * bundle written by netstash_preload_pack (installed with no network). The
 * context needs a profile directory. */
NETSTASH_EXTERN netstash_error netstash_warm_new(netstash_ctx *ctx, const char *source,
                                                 netstash_warm **out);
/* Knobs, before netstash_warm_start. */
/* Concurrent resource fetches (default 16, 1..256). */
NETSTASH_EXTERN netstash_error netstash_warm_set_concurrency(netstash_warm *w, uint32_t n);
/* Byte budget for this warm (downloads), below the manifest's own. 0: none. */
NETSTASH_EXTERN netstash_error netstash_warm_set_max_bytes(netstash_warm *w, uint64_t bytes);
/* Attempts per resource after the first (default 2), with exponential
 * backoff from 200 ms. Integrity mismatches are not retried. */
NETSTASH_EXTERN netstash_error netstash_warm_set_retries(netstash_warm *w, uint32_t n);
/* Per-resource timeout (default 60000 ms). */
NETSTASH_EXTERN netstash_error netstash_warm_set_timeout_ms(netstash_warm *w, uint32_t ms);
/* "HOST:PORT:ADDR" pins for every request of the warm (curl --resolve). */
NETSTASH_EXTERN netstash_error netstash_warm_add_resolve(netstash_warm *w, const char *entry);
/* Host signal: the current network is metered. A manifest whose budget
 * asks for an unmetered network is then not warmed (NETSTASH_E_DEFERRED). */
NETSTASH_EXTERN netstash_error netstash_warm_set_metered(netstash_warm *w, int metered);

typedef enum netstash_warm_event {
  NETSTASH_WARM_EV_MANIFEST = 1,      /* manifest fetched, signature and rules checked */
  NETSTASH_WARM_EV_RESOURCE_DONE = 2, /* url verified and stored */
  NETSTASH_WARM_EV_RESOURCE_PRESENT = 3, /* url's body already held: no fetch */
  NETSTASH_WARM_EV_RESOURCE_FAILED = 4,  /* url failed for good (err says why) */
  NETSTASH_WARM_EV_RETRY = 5,            /* url failed, will be retried */
  NETSTASH_WARM_EV_PROGRESS = 6,         /* at most every 100 ms while bytes arrive */
  NETSTASH_WARM_EV_PUBLISHED = 7,        /* the version is active */
  NETSTASH_WARM_EV_DONE = 8              /* terminal: err is the result */
} netstash_warm_event;

/* Event callback (loop thread). url is NULL for events not about one
 * resource. Counters are read with netstash_warm_counter() meanwhile. */
typedef void (*netstash_warm_event_cb)(netstash_warm *w, netstash_warm_event ev,
                                       const char *url, netstash_error err, void *user_data);
NETSTASH_EXTERN netstash_error netstash_warm_set_event_cb(netstash_warm *w,
                                                          netstash_warm_event_cb cb,
                                                          void *user_data);

NETSTASH_EXTERN netstash_error netstash_warm_start(netstash_warm *w);
/* Pause: no new fetch starts, running ones are cancelled and requeued (their
 * bytes are refetched). Resume restarts the queue. Cancel ends the warm with
 * NETSTASH_E_CANCELED: nothing is published, verified bodies stay for the
 * next warm. All three: any thread, idempotent. */
NETSTASH_EXTERN netstash_error netstash_warm_pause(netstash_warm *w);
NETSTASH_EXTERN netstash_error netstash_warm_resume(netstash_warm *w);
NETSTASH_EXTERN netstash_error netstash_warm_cancel(netstash_warm *w);
/* Waits for the end (timeout_ms 0: forever); returns the result, or
 * NETSTASH_E_WAIT_TIMEOUT, or NETSTASH_E_WOULD_DEADLOCK on the loop thread.
 * Results: NETSTASH_OK (published, or nothing new to do), the manifest's
 * errors (NETSTASH_E_MANIFEST_INVALID, _SIGNATURE, _MANIFEST_EXPIRED,
 * _DOWNGRADE, _TOO_LARGE), NETSTASH_E_NOT_TARGETED, NETSTASH_E_DEFERRED,
 * NETSTASH_E_INCOMPLETE (a critical resource failed: nothing published),
 * NETSTASH_E_CANCELED, network errors fetching the manifest, store errors. */
NETSTASH_EXTERN netstash_error netstash_warm_wait(netstash_warm *w, uint32_t timeout_ms);
/* Cancels if running, then frees. */
NETSTASH_EXTERN void netstash_warm_del(netstash_warm *w);

/* Results and progress; valid any time (strings owned by w). */
NETSTASH_EXTERN netstash_error netstash_warm_result(const netstash_warm *w);
NETSTASH_EXTERN const char *netstash_warm_error_detail(const netstash_warm *w);
NETSTASH_EXTERN const char *netstash_warm_manifest_id(const netstash_warm *w);
NETSTASH_EXTERN uint64_t netstash_warm_manifest_version(const netstash_warm *w);
/* Signer's key id, "" when unsigned. */
NETSTASH_EXTERN const char *netstash_warm_key_id(const netstash_warm *w);

typedef enum netstash_warm_counter_id {
  NETSTASH_WARM_RESOURCES = 0,      /* resources in the manifest */
  NETSTASH_WARM_RESOURCES_DONE = 1, /* fetched and verified by this warm */
  NETSTASH_WARM_RESOURCES_PRESENT = 2, /* already held (no request) */
  NETSTASH_WARM_RESOURCES_FAILED = 3,
  NETSTASH_WARM_BYTES_TOTAL = 4,    /* sum of manifest sizes */
  NETSTASH_WARM_BYTES_NEEDED = 5,   /* of which not held at the start */
  NETSTASH_WARM_BYTES_DONE = 6,     /* body bytes received (incl. failed) */
  NETSTASH_WARM_REQUESTS = 7,       /* HTTP requests made (manifest included) */
  NETSTASH_WARM_ETA_MS = 8,         /* estimate from the recent rate, 0 unknown */
  NETSTASH_WARM_ELAPSED_MS = 9,
  NETSTASH_WARM_PUBLISHED = 10      /* 1 when this warm published a version */
} netstash_warm_counter_id;
NETSTASH_EXTERN uint64_t netstash_warm_counter(const netstash_warm *w,
                                               netstash_warm_counter_id which);

/* ------------------------------------------------------------------------
 * Serving
 * ------------------------------------------------------------------------ */

/* A reusable answer slot: a lookup fills it without allocating; what it
 * points to (head and body, in the store's memory map) stays valid until the
 * next lookup with the same hit, netstash_preload_hit_release() or _del().
 * One hit is used by one thread at a time.
 * On a remote-mode context (netstash_options_set_remote) a lookup asks netd
 * instead, synchronously, from the calling thread, on a unix-socket
 * connection of the hit's own (opened at its first lookup, opened again
 * after netd restarted): one round trip, no loop thread, no HTTP/2. The
 * answer is copied into the hit's buffer, which grows to the largest answer
 * (the only allocations); the body is then one chunk. Further errors there:
 * NETSTASH_E_CONNECT_REFUSED (netd not running), NETSTASH_E_TIMEOUT (no
 * answer within 2 s), NETSTASH_E_TOO_LARGE (a body over 16 MiB: start a job,
 * which streams it), NETSTASH_E_SEND / _RECV / _PROTOCOL. */
typedef struct netstash_preload_hit netstash_preload_hit;
NETSTASH_EXTERN netstash_error netstash_preload_hit_new(netstash_ctx *ctx,
                                                        netstash_preload_hit **out);
NETSTASH_EXTERN void netstash_preload_hit_release(netstash_preload_hit *hit);
NETSTASH_EXTERN void netstash_preload_hit_del(netstash_preload_hit *hit);

/* Looks url up (absolute; normalised like the manifests). NETSTASH_OK: hit
 * filled. NETSTASH_E_NOT_FOUND: no active manifest serves it.
 * NETSTASH_E_BAD_URL, NETSTASH_E_ILLEGAL_STATE (context without profile),
 * store errors. */
NETSTASH_EXTERN netstash_error netstash_preload_lookup(netstash_preload_hit *hit,
                                                       const char *url);

NETSTASH_EXTERN int netstash_preload_hit_status(const netstash_preload_hit *hit);
/* Where the hit's answer comes from: NETSTASH_SOURCE_PRELOAD, or
 * NETSTASH_SOURCE_CACHE after netstash_intercept_cached (interceptor.h);
 * NETSTASH_SOURCE_NONE without an answer. */
NETSTASH_EXTERN netstash_source netstash_preload_hit_source(const netstash_preload_hit *hit);
NETSTASH_EXTERN size_t netstash_preload_hit_header_count(const netstash_preload_hit *hit);
/* Header i: name and value, not NUL-terminated. */
NETSTASH_EXTERN netstash_error netstash_preload_hit_header_at(const netstash_preload_hit *hit,
                                                              size_t i, const char **name,
                                                              size_t *name_len,
                                                              const char **value,
                                                              size_t *value_len);
NETSTASH_EXTERN uint64_t netstash_preload_hit_body_size(const netstash_preload_hit *hit);
/* The body as chunks (zero copy; decoded bytes as the manifest's hash
 * covers them). */
NETSTASH_EXTERN uint32_t netstash_preload_hit_chunk_count(const netstash_preload_hit *hit);
NETSTASH_EXTERN netstash_error netstash_preload_hit_chunk(const netstash_preload_hit *hit,
                                                          uint32_t i, const uint8_t **data,
                                                          size_t *len);
NETSTASH_EXTERN const char *netstash_preload_hit_manifest_id(const netstash_preload_hit *hit);
NETSTASH_EXTERN uint64_t netstash_preload_hit_manifest_version(const netstash_preload_hit *hit);

/* ------------------------------------------------------------------------
 * Administration (the `netstash ls|show|verify|rollback|purge|stats` CLI)
 * ------------------------------------------------------------------------ */

/* A JSON description (free with netstash_free). id NULL: every installed
 * manifest, {"manifests": [...]}; else that one (NETSTASH_E_NOT_FOUND).
 * Fields per manifest: id, state ("active", "expired", "killed",
 * "not_targeted", "pinned_missing", "incomplete" — nothing published yet),
 * version (active, 0: none), previous (0: none), max_version, staged (a
 * version being warmed, 0: none), expires, published (RFC 3339), scope,
 * key_id, resources, resources_present, bytes. With resources != 0 each
 * manifest also lists "entries": [{url, size, priority, present, integrity}]. */
NETSTASH_EXTERN netstash_error netstash_preload_describe(netstash_ctx *ctx, const char *id,
                                                         int resources, char **json);
/* Which manifest (id, version) would answer url, as JSON {"url", "id",
 * "version", "size", "status", "headers": {...}, "sha256"}; NETSTASH_E_NOT_FOUND. */
NETSTASH_EXTERN netstash_error netstash_preload_show(netstash_ctx *ctx, const char *url,
                                                     char **json);
/* Makes the previous version of id active again (and the active one the
 * previous: a second rollback undoes the first). NETSTASH_E_NOT_FOUND (no
 * such id or no previous version). */
NETSTASH_EXTERN netstash_error netstash_preload_rollback(netstash_ctx *ctx, const char *id);
/* Removes manifest id (NULL: every manifest) and its records; bodies no
 * longer referenced are collected. NETSTASH_E_NOT_FOUND. */
NETSTASH_EXTERN netstash_error netstash_preload_purge(netstash_ctx *ctx, const char *id);
/* Re-hashes every body of every installed version against its manifest's
 * integrity. *json (may be NULL): {"checked", "bytes", "corrupt": [{"id",
 * "version", "url", "reason"}]}. NETSTASH_E_INTEGRITY when a body is wrong
 * (it is then unlinked from its version, so it is never served),
 * NETSTASH_E_STORE_CORRUPT when the store itself is damaged. */
NETSTASH_EXTERN netstash_error netstash_preload_verify(netstash_ctx *ctx, char **json);
/* Collects unreferenced bodies now (all of them, in bounded steps).
 * *collected (may be NULL) receives the count. */
NETSTASH_EXTERN netstash_error netstash_preload_gc(netstash_ctx *ctx, uint64_t *collected);
/* Store and preload figures as JSON: {"manifests", "active", "resources",
 * "bytes", "store": {"used_bytes", "limit_bytes" (the size above which a
 * write evicts: netstash_options_set_cache_max_bytes), "evicted" (records this
 * context's writes evicted since it opened the store), "map_size",
 * "bodies", "gc_queued", "records": {"http", "preload", "manifests",
 * "cookies"}}}. */
NETSTASH_EXTERN netstash_error netstash_preload_stats(netstash_ctx *ctx, char **json);
/* Writes an offline bundle of the active version of id: a tar archive with
 * manifest.json, manifest.json.sig and bodies/<sha256 hex> (decoded
 * bodies), to path (replaced atomically). */
NETSTASH_EXTERN netstash_error netstash_preload_pack(netstash_ctx *ctx, const char *id,
                                                     const char *path);

#ifdef __cplusplus
}
#endif

#endif /* NETSTASH_PRELOAD_H */
