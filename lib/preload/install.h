/*
 * install.h — preload versions in the profile store: schema, staging,
 * atomic publication, lookup. Internal. Rules: include/netstash/preload.h.
 *
 * Schema (values little-endian unless noted; be64 = big-endian u64 so that
 * keys sort by version):
 *
 *  manifests db (NS_STORE_MANIFESTS, never evicted)
 *    "S" id                 state of manifest id            (ns_pl_state)
 *    "M" id \0 be64(V)      the manifest bytes of version V (as signed)
 *    "G" id \0 be64(V)      its .sig bytes ("" when unsigned)
 *    "H" alg digest         32-byte SHA-256 of the body whose sha384/sha512
 *                           digest this is (alg = 48 or 64): lets a
 *                           resource without a sha256 find its stored body
 *    "D"                    this profile's random device id (rollout bucket)
 *    "V" url                validators of a manifest URL, for a conditional
 *                           fetch: etag \0 last-modified \0 id \0 version
 *    "I"                    the serving index: every "S" value, prefixed by
 *                           its id (u16 length + id + u32 length + value),
 *                           rewritten with every state change, so that a
 *                           lookup is two mdb_get calls and no cursor (a
 *                           cursor allocates)
 *
 *  preload db (NS_STORE_PRELOAD, records pinned: never evicted)
 *    "R" id \0 be64(V) K    one resource of version V (ns_pl_entry), body
 *                           referenced by its SHA-256; K = the normalised
 *                           URL with the resource's ignored query
 *                           parameters removed, or "#" + 64 hex of its
 *                           SHA-256 when the key would exceed the limit.
 *
 * Versions kept per id: active, previous, and staged (being warmed). A
 * version is visible only through state.active, so writing a version's
 * records while warming publishes nothing; publication rewrites the state
 * record (one transaction) and deletes versions no longer kept.
 */
#ifndef NS_PRELOAD_INSTALL_H
#define NS_PRELOAD_INSTALL_H

#include "ns_setup.h"

#include "core/buf.h"
#include "preload/manifest.h"
#include "preload/sign.h"
#include "store/store.h"

#define NS_PL_STATE_FORMAT 1u
#define NS_PL_ENTRY_FORMAT 1u

/* state flags */
#define NS_PL_KILLED 0x1u         /* rollout.kill_switch in the newest manifest */
#define NS_PL_NOT_TARGETED 0x2u   /* the newest manifest's rollout excludes us */
#define NS_PL_PINNED_MISSING 0x4u /* rollout.pinned_version not held */

typedef struct ns_pl_state {
  uint32_t flags;
  uint64_t active;      /* 0: none */
  uint64_t previous;    /* 0: none */
  uint64_t staged;      /* version being warmed, 0: none */
  uint64_t max_version; /* newest version ever accepted (downgrade floor) */
  int64_t expires_s;    /* of the active version (0: none active) */
  int64_t published_ms; /* when active was published */
  char key_id[NS_KEY_ID_LEN + 1]; /* signer of the active version, "" unsigned */
  /* Active version's scope prefixes and query-ignore lists, encoded; walk
   * them with ns_pl_state_scope / ns_pl_state_ignore. Point into the
   * decoded value. */
  const uint8_t *scopes;
  size_t scopes_len;
  uint32_t n_scope;
  const uint8_t *ignores;
  size_t ignores_len;
  uint32_t n_ignore; /* distinct ignore lists */
} ns_pl_state;

/* Encodes st; scope, expiry and ignore lists are taken from m (the active
 * version's manifest; NULL: none). */
netstash_error ns_pl_state_encode(const ns_pl_state *st, const ns_manifest *m, ns_buf *out);
/* Decodes a state value (pointers into v). NETSTASH_E_STORE_CORRUPT. */
netstash_error ns_pl_state_decode(const uint8_t *v, size_t len, ns_pl_state *out);
/* Scope prefix number *iter (start at 0): 1 and the prefix, 0 at the end. */
int ns_pl_state_scope(const ns_pl_state *st, size_t *iter, const char **p, size_t *len);
/* Ignore list number *iter: 1 and (list, n) where list is the encoded
 * names (walk with ns_pl_ignore_name), 0 at the end. */
int ns_pl_state_ignore(const ns_pl_state *st, size_t *iter, const uint8_t **list, size_t *n);
int ns_pl_ignore_name(const uint8_t **list, const char **name, size_t *len);

typedef struct ns_pl_entry {
  int status;   /* 200 */
  int priority; /* ns_manifest_priority */
  uint64_t size;
  const char *url; /* normalised URL as in the manifest (not NUL-terminated) */
  size_t url_len;
  const uint8_t *head; /* response headers, ns_headers_encode form */
  size_t head_len;
} ns_pl_entry;

/* The head served for resource r: Content-Type, Content-Length (decoded
 * size) and r's headers. */
netstash_error ns_pl_entry_encode(const ns_manifest_resource *r, ns_buf *out);
netstash_error ns_pl_entry_decode(const uint8_t *v, size_t len, ns_pl_entry *out);

/* Keys. */
netstash_error ns_pl_key_state(ns_buf *k, const char *id);
/* tag 'M' or 'G'. */
netstash_error ns_pl_key_version(ns_buf *k, char tag, const char *id, uint64_t v);
/* "R" id \0 be64(v) — the prefix of every entry of a version. */
netstash_error ns_pl_key_entry_prefix(ns_buf *k, const char *id, uint64_t v);
/* The entry key of (already stripped) url in version v. */
netstash_error ns_pl_key_entry(ns_buf *k, const char *id, uint64_t v, const char *url,
                               size_t url_len);
/* url with the names of list (from ns_pl_state_ignore, or a resource's
 * query_ignore) removed from its query; a query left empty drops the '?'. */
netstash_error ns_pl_strip_query(ns_buf *out, const char *url, size_t url_len,
                                 const char *const *names, size_t n_names);

/* Writes the state of id (scope etc. from m, the manifest of st->active;
 * NULL: none) and rebuilds the "I" index. Every state change goes through
 * this (or ns_pl_txn_del_state). */
netstash_error ns_pl_txn_put_state(ns_store_txn *t, const ns_mem *mem, const char *id,
                                   const ns_pl_state *st, const ns_manifest *m);
/* Deletes the state of id (NETSTASH_E_NOT_FOUND) and rebuilds the index. */
netstash_error ns_pl_txn_del_state(ns_store_txn *t, const ns_mem *mem, const char *id);
/* Parses the stored manifest of (id, v) in t (no expiry/version checks). */
netstash_error ns_pl_txn_manifest(ns_store_txn *t, const ns_mem *mem, const char *id,
                                  uint64_t v, ns_manifest **out);
/* Reads the state of id in a write transaction (NETSTASH_E_NOT_FOUND). The
 * pointers in *st live until the transaction ends. */
netstash_error ns_pl_txn_state(ns_store_txn *t, const char *id, ns_pl_state *st);
/* Deletes every record of version v of id (entries, manifest, sig). */
netstash_error ns_pl_txn_drop_version(ns_store_txn *t, const ns_mem *mem, const char *id,
                                      uint64_t v);

/* ------------------------------------------------------------ SRI */

/* Checks body against r's integrity: per SRI, only the strongest algorithm
 * listed counts, and any of its digests may match. sha256_out (may be NULL)
 * receives the body's SHA-256. NETSTASH_OK or NETSTASH_E_INTEGRITY. */
netstash_error ns_sri_check(const ns_manifest_resource *r, const uint8_t *body, size_t len,
                            uint8_t sha256_out[32]);

/* ------------------------------------------------------------ installing */

typedef struct ns_pl_device {
  const char *app_version;    /* NULL: unknown */
  const char *kernel_version; /* NULL: unknown */
  const char *device_id;      /* NULL: the profile's "D" record */
} ns_pl_device;

typedef enum ns_pl_plan {
  NS_PL_PLAN_INSTALL = 0, /* new version: warm it */
  NS_PL_PLAN_RESUME = 1,  /* the staged version again: warm what is missing */
  NS_PL_PLAN_FILL = 2,    /* the active version again: fill missing non-critical */
  NS_PL_PLAN_CONTROL = 3  /* kill switch / not targeted / pin: state only, no bodies */
} ns_pl_plan;

typedef struct ns_pl_install ns_pl_install;

/* Starts installing manifest m (parsed from mbytes, whose signature sig was
 * verified by the caller: key_id "" when unsigned) into store s. Checks the
 * version against the state (NETSTASH_E_DOWNGRADE: older than max_version,
 * or equal with different bytes), evaluates the rollout for dev, records the
 * manifest and sig as the staged version and works out which resources are
 * already held (by sha256, or through the "H" alias of their strongest
 * digest, or staged by an interrupted warm). NETSTASH_E_NOT_TARGETED
 * and kill switches are recorded in the state (the id stops serving) and
 * returned as NETSTASH_E_NOT_TARGETED / NETSTASH_OK with plan CONTROL. */
netstash_error ns_pl_install_begin(ns_store *s, const ns_mem *mem, const uint8_t *mbytes,
                                   size_t mlen, const uint8_t *sig, size_t sig_len,
                                   const char *key_id, const ns_manifest *m,
                                   const ns_pl_device *dev, ns_pl_install **out, char *detail,
                                   size_t detail_len);
/* Where the manifest came from (a URL) and its validators: recorded in the
 * install's first transaction, for the next conditional fetch. */
typedef struct ns_pl_source {
  const char *url;
  const char *etag;          /* NULL: none */
  const char *last_modified; /* NULL: none */
} ns_pl_source;
netstash_error ns_pl_install_begin_ex(ns_store *s, const ns_mem *mem, const uint8_t *mbytes,
                                      size_t mlen, const uint8_t *sig, size_t sig_len,
                                      const char *key_id, const ns_manifest *m,
                                      const ns_pl_device *dev, const ns_pl_source *src,
                                      ns_pl_install **out, char *detail, size_t detail_len);
/* The validators recorded for url, and the manifest and signature bytes of
 * the version they belong to (each malloc'd with mem; *sig may be empty).
 * NETSTASH_E_NOT_FOUND when nothing usable is recorded. */
netstash_error ns_pl_source_get(ns_store *s, const ns_mem *mem, const char *url, char **etag,
                                char **last_modified, uint8_t **mbytes, size_t *mlen,
                                uint8_t **sig, size_t *sig_len);

ns_pl_plan ns_pl_install_plan(const ns_pl_install *in);
/* 1 when resource i still needs a body. */
int ns_pl_install_needed(const ns_pl_install *in, size_t i);
/* Verifies body (decoded bytes) against resource i's integrity
 * (NETSTASH_E_INTEGRITY: nothing kept) and queues it; queued bodies are
 * committed by ns_pl_install_flush, which this call runs itself when 4 MiB
 * or 64 bodies are queued. The data is copied. */
netstash_error ns_pl_install_body(ns_pl_install *in, size_t i, const uint8_t *body, size_t len);
/* Commits queued bodies and their entries of the staged version (one
 * transaction). */
netstash_error ns_pl_install_flush(ns_pl_install *in);
/* Flushes, then publishes the staged version if every critical resource is
 * held (NETSTASH_E_INCOMPLETE otherwise, detail names the first missing);
 * the active version becomes the previous, the older previous is dropped.
 * FILL and CONTROL plans just flush. */
netstash_error ns_pl_install_publish(ns_pl_install *in);
size_t ns_pl_install_missing(const ns_pl_install *in); /* resources still needed */
size_t ns_pl_install_queued(const ns_pl_install *in);  /* verified, not committed yet */
size_t ns_pl_install_queued_bytes(const ns_pl_install *in);
/* 1 when resource i's body is committed (or was held before). */
int ns_pl_install_held(const ns_pl_install *in, size_t i);

/* Batches: commits can run on another thread while the caller verifies
 * more bodies. With auto flush off (the warmer), ns_pl_install_body[_take]
 * only queue; the caller takes the queued batch (NULL when empty), commits
 * it (any thread; the installer is not touched except read-only) and hands
 * it back on its own thread (marks the bodies held on success, frees it).
 * At most one batch should be committing at a time. */
#define NS_PL_BATCH_BYTES ((size_t)1 << 20)
#define NS_PL_BATCH_BODIES 32
typedef struct ns_pl_batch ns_pl_batch;
void ns_pl_install_set_auto_flush(ns_pl_install *in, int on);
/* Committed (or dropped) bodies go to fn instead of being freed (a buffer
 * pool: fresh buffers cost page faults). */
void ns_pl_install_set_recycle(ns_pl_install *in, void (*fn)(void *ud, uint8_t *data), void *ud);
ns_pl_batch *ns_pl_install_take_batch(ns_pl_install *in);
netstash_error ns_pl_batch_commit(ns_pl_install *in, const ns_pl_batch *b);
void ns_pl_install_batch_done(ns_pl_install *in, ns_pl_batch *b, netstash_error err);
/* ns_pl_install_body taking ownership of body (allocated with the
 * installer's allocator), freed on every outcome. */
netstash_error ns_pl_install_body_take(ns_pl_install *in, size_t i, uint8_t *body, size_t len);
void ns_pl_install_free(ns_pl_install *in);

/* ------------------------------------------------------------ serving */

typedef struct ns_pl_hit {
  ns_pl_entry entry;
  ns_store_body body;    /* filled when looked up with the body */
  uint8_t body_hash[32]; /* the entry's body (always) */
  const char *id; /* points into the state key (not NUL-terminated) */
  size_t id_len;
  uint64_t version;
} ns_pl_hit;

/* Looks url (normalised) up in reader r's open read transaction, at time
 * now_s. NETSTASH_E_NOT_FOUND on a miss. Allocation-free. */
netstash_error ns_pl_lookup(ns_store_reader *r, const char *url, size_t url_len, int64_t now_s,
                            ns_pl_hit *out);
/* The same; with_body 0 leaves out->body unset (one get fewer: a head-only
 * answer; load it later with ns_store_body_get(r, out->body_hash, ...)). */
netstash_error ns_pl_lookup_ex(ns_store_reader *r, const char *url, size_t url_len, int64_t now_s,
                               int with_body, ns_pl_hit *out);

/* ------------------------------------------------------------ rollout */

/* Nonzero when version (e.g. "4.2.1") satisfies range: space-separated
 * comparators (>=, >, <=, <, =, or none for =) over dotted numeric
 * versions, missing components 0 (">=4.2 <5"). 0 for a NULL version. */
int ns_rollout_version_in(const char *range, const char *version);
/* Stable bucket 0..99 for (device_id, manifest_id): first 4 bytes of
 * SHA-256(device_id "\n" manifest_id), big-endian, mod 100; -1 when
 * hashing fails (ns_rollout_applies then excludes the device). */
int ns_rollout_bucket(const char *device_id, const char *manifest_id);
/* Nonzero when the rollout includes this device; why (may be NULL) says
 * which rule excluded it. Kill switch and pinned version are not evaluated
 * here. */
int ns_rollout_applies(const ns_manifest_rollout *r, const char *manifest_id,
                       const ns_pl_device *dev, const char *device_id, char *why,
                       size_t why_len);

#endif /* NS_PRELOAD_INSTALL_H */
