/*
 * store.h — the profile's LMDB store: schema, records, content-addressed
 * bodies, size limit with LRU eviction, incremental GC. Internal API.
 * Design notes: doc/internals/store.md.
 *
 * Layout. One LMDB environment per profile directory, in DIR/store/
 * (data.mdb, lock.mdb, write.lock, touches — the access notes of every
 * process, touches.h; directories created 0700, files 0600), with named
 * sub-databases:
 *   bodies     SHA-256 -> body header + first chunk; SHA-256||be32(i) -> chunk i
 *   http, preload, manifests, cookies
 *              caller key -> record (48-byte header + opaque value)
 *   meta       "schema" (u32), "created_by", "created_ms"
 *   refs       SHA-256 -> u64 number of records referencing the body
 *   gcq        SHA-256 -> u64 ms: bodies with no reference, waiting for GC
 *   lru        be64(atime ms)||db||key -> empty: eviction order
 *
 * Bodies are content-addressed by the SHA-256 of the *decoded* body (the
 * bytes after undoing the stored Content-Encoding), whatever coding they are
 * stored with, so a body's key is its integrity value: the preload warmer
 * compares it with a manifest's sha256 integrity directly, and the same file
 * fetched gzip from one origin and identity from another is stored once.
 *
 * Concurrency. LMDB's rule, made explicit:
 *  - Readers: any number, in any number of processes, never block and never
 *    block the writer. Each ns_store_reader is one reusable read transaction
 *    (MDB_NOTLS: not tied to a thread); use one reader from one thread at a
 *    time. A read sees the snapshot taken at ns_store_read_begin.
 *  - Writer: one at a time across all processes. ns_store_write and the
 *    wrappers below serialise writers of this handle with a mutex and writers
 *    of other handles/processes with an flock on DIR/store/write.lock, and
 *    *wait at most params.write_wait_ms* (default 1000 ms) for it; after that
 *    they fail with NETSTASH_E_STORE_BUSY, so a stuck or stopped writer
 *    process never hangs the caller's loop thread for good (LMDB's own write
 *    lock would block without bound). 0 means "fail at once if busy".
 *  - Map growth (mdb_env_set_mapsize) needs every read transaction of this
 *    process to be ended; the handle holds a read/write lock for that: a read
 *    transaction holds it shared, growth takes it exclusive (with the same
 *    bound). Do not call a write function on a thread that holds an open read
 *    transaction of the same store: growth would wait for it and then fall
 *    back to eviction or NETSTASH_E_STORE_FULL.
 *  - Never use a store across fork(): open it again in the child.
 *
 * Errors (in addition to those listed per function): every LMDB return code
 * is mapped — MDB_NOTFOUND: NETSTASH_E_NOT_FOUND; MDB_CORRUPTED,
 * MDB_PAGE_NOTFOUND, MDB_INVALID, MDB_INCOMPATIBLE: NETSTASH_E_STORE_CORRUPT;
 * MDB_VERSION_MISMATCH: NETSTASH_E_STORE_VERSION; MDB_MAP_FULL (after growth
 * and eviction failed), ENOSPC, and EIO from a commit when the file system
 * has (almost) no space left (LMDB reports a short write as EIO):
 * NETSTASH_E_STORE_FULL; MDB_READERS_FULL:
 * NETSTASH_E_STORE_BUSY; MDB_TXN_FULL, MDB_BAD_VALSIZE: NETSTASH_E_TOO_LARGE;
 * ENOMEM: NETSTASH_E_NOMEM; other errno values: NETSTASH_E_IO.
 *
 * Memory: the store's own state goes through params.mem. LMDB, OpenSSL and
 * libbrotli allocate through their own allocators except where they accept a
 * hook (brotli's encoder does: it uses params.mem).
 */
#ifndef NS_STORE_STORE_H
#define NS_STORE_STORE_H

#include "ns_setup.h"

#include "transport/decode.h"

#define NS_STORE_SCHEMA_VERSION 1u
#define NS_STORE_HASH_LEN 32
/* Longest record key (LMDB's key limit is 511; the lru index adds 9 bytes).
 * Callers hash longer keys themselves. */
#define NS_STORE_KEY_MAX 500
/* Bytes per body chunk: 16 pages of 4096 minus LMDB's 16-byte page header,
 * so a full chunk fills its overflow pages exactly. The first chunk shares
 * its value with the 32-byte body header. */
#define NS_STORE_CHUNK 65520u
#define NS_STORE_BODY_HDR 32u

typedef struct ns_store ns_store;
typedef struct ns_store_reader ns_store_reader;
typedef struct ns_store_txn ns_store_txn;

/* Record databases (the others are internal). */
typedef enum ns_store_db {
  NS_STORE_HTTP = 0,
  NS_STORE_PRELOAD = 1,
  NS_STORE_MANIFESTS = 2,
  NS_STORE_COOKIES = 3,
  NS_STORE_DB_COUNT_ = 4
} ns_store_db;

/* Record flags. A record is evictable when it lives in NS_STORE_HTTP or
 * NS_STORE_PRELOAD and is not pinned; manifests and cookies never are. */
#define NS_STORE_REC_PINNED 0x1u

/* ns_store_body_put flags. */
#define NS_STORE_BODY_NO_RECOMPRESS 0x1u /* store exactly the coding given */
/* out_hash already holds the SHA-256 of an identity body, computed by the
 * caller (who just verified it): the store trusts it and does not hash
 * again. Only for bodies whose hash the caller computed itself. */
#define NS_STORE_BODY_HASH_GIVEN 0x2u

typedef struct ns_store_params {
  const ns_mem *mem;      /* default ns_mem_default(); must outlive the store */
  const char *dir;        /* profile directory (required); copied */
  const char *created_by; /* recorded in meta on creation; copied */
  uint64_t size_limit;    /* soft: eviction target, bytes (256 MiB) */
  uint64_t map_size;      /* initial map size, bytes (64 MiB) */
  uint64_t map_size_max;  /* hard maximum: STORE_FULL beyond (4 GiB) */
  uint64_t max_body;      /* largest decoded and stored body (256 MiB) */
  uint32_t write_wait_ms; /* bound on waiting for the write lock (1000) */
  uint32_t gc_grace_ms;   /* age before an unreferenced new body may be
                             collected (60000; see ns_store_gc_step) */
  uint32_t max_readers;   /* LMDB reader slots, all processes (126) */
  uint32_t touch_granule_ms; /* a noted access moves a record's atime (and
                                LRU place) only once it is older by more
                                than this (1000): a hot record is rewritten
                                at most once a second, not at every write */
  int read_only;          /* open with MDB_RDONLY: no writes, no creation */
  unsigned lmdb_flags;    /* extra mdb_env_open flags (tests: 0) */
} ns_store_params;

/* Fills p with the defaults above (dir and created_by NULL). */
void ns_store_params_init(ns_store_params *p);

/* Opens (creating unless read_only) DIR/store/ and checks it:
 *  - NETSTASH_E_STORE_VERSION: the schema is newer than this build's (the
 *    detail names both versions), or LMDB's own format differs;
 *  - NETSTASH_E_STORE_CORRUPT: not an LMDB file, meta pages inconsistent,
 *    data file shorter than its last page, a named database unreadable or of
 *    the wrong kind, schema record missing. The detail says what to do.
 *  - NETSTASH_E_NOT_FOUND (read_only and no store), NETSTASH_E_IO (cannot
 *    create or open the directory or files), NETSTASH_E_STORE_BUSY,
 *    NETSTASH_E_NOMEM, NETSTASH_E_INVALID_ARGUMENT.
 * Residual risk: LMDB does not checksum pages. The checks above (and a read
 * of every named database's root) catch truncation, garbage files and
 * damaged metadata; a B-tree page damaged in its middle can still make a
 * later read fail with STORE_CORRUPT or, for some damage, crash the process
 * inside LMDB. ns_store_verify walks everything.
 * detail (may be NULL) receives a one-line reason on error. *out is NULL on
 * error. Thread rule: any thread; the handle may then be shared by threads. */
netstash_error ns_store_open(const ns_store_params *p, ns_store **out, char *detail,
                             size_t detail_len);
/* Closes the environment. Every reader must be deleted first and no write may
 * be running. NULL is accepted. */
void ns_store_close(ns_store *s);

/* ------------------------------------------------------------ reading */

/* A reusable read transaction. Creating one allocates; begin/end and every
 * lookup in between allocate nothing. Errors: NETSTASH_E_NOMEM,
 * NETSTASH_E_STORE_BUSY (reader slots exhausted), NETSTASH_E_IO. */
netstash_error ns_store_reader_new(ns_store *s, ns_store_reader **out);
/* Ends the transaction if open. NULL accepted. */
void ns_store_reader_del(ns_store_reader *r);
/* Takes a snapshot. Every pointer obtained through the reader stays valid
 * until ns_store_read_end. Follows a map grown by another process.
 * NETSTASH_E_ILLEGAL_STATE if already begun; NETSTASH_E_STORE_BUSY when map
 * growth in this process did not finish within write_wait_ms. */
netstash_error ns_store_read_begin(ns_store_reader *r);
/* Releases the snapshot (mdb_txn_reset: the handle stays reusable). No-op if
 * not begun. */
void ns_store_read_end(ns_store_reader *r);
/* The begun snapshot's identity (the last transaction committed before it;
 * 0 when not begun): two snapshots with the same identity see the same
 * records. Pointers into the map do not carry over from one to the other
 * (the map may have moved): only what was copied out of it does. */
uint64_t ns_store_reader_snapshot(const ns_store_reader *r);

/* A record as stored. value points into the map (zero copy): valid until
 * ns_store_read_end, or for a record read in a write transaction, until that
 * transaction ends. */
typedef struct ns_store_record {
  const uint8_t *value;
  size_t value_len;
  uint32_t flags; /* NS_STORE_REC_* */
  int has_body;
  uint8_t body_hash[NS_STORE_HASH_LEN]; /* when has_body */
  uint64_t atime_ms;                    /* last access written back */
} ns_store_record;

/* A body view: chunk 0 is given directly, the others through
 * ns_store_body_chunk. Every pointer points into the map. Valid until the
 * transaction it came from ends. */
typedef struct ns_store_body {
  uint8_t hash[NS_STORE_HASH_LEN]; /* SHA-256 of the decoded body */
  ns_coding coding;                /* stored coding: identity, gzip or br */
  int recompressed;                /* stored as br by the store itself */
  uint64_t stored_size;            /* bytes in the chunks */
  uint64_t decoded_size;           /* bytes after decoding */
  uint32_t nchunks;                /* 0 for an empty body */
  const uint8_t *first;            /* chunk 0 */
  size_t first_len;
  void *txn_;                    /* internal: the MDB_txn */
  const struct ns_store *store_; /* internal */
} ns_store_body;

/* Looks key up in db. NETSTASH_E_NOT_FOUND when absent. A hit on an evictable
 * record notes the access in a fixed in-memory ring (no write, no
 * allocation); the next write of this handle (or ns_store_flush_access)
 * writes access times back in one batch. Errors: NETSTASH_E_ILLEGAL_STATE
 * (not begun), NETSTASH_E_INVALID_ARGUMENT, NETSTASH_E_STORE_CORRUPT. */
netstash_error ns_store_get(ns_store_reader *r, ns_store_db db, const void *key, size_t keylen,
                            ns_store_record *out);
/* Notes an access to a record found earlier in an identical snapshot
 * (rec_flags, rec_atime_ms: its flags and atime_ms as read; 0 for an
 * unknown time), as ns_store_get would have: for a caller that kept what it
 * decoded instead of reading the record again. */
void ns_store_touch(ns_store_reader *r, ns_store_db db, const void *key, size_t keylen,
                    uint32_t rec_flags, uint64_t rec_atime_ms);
/* The body stored under hash. NETSTASH_E_NOT_FOUND when absent;
 * NETSTASH_E_STORE_CORRUPT when its header is malformed. */
netstash_error ns_store_body_get(ns_store_reader *r, const uint8_t *hash, ns_store_body *out);
/* A cache hit in one call: ns_store_get then, when the record references a
 * body, ns_store_body_get (body->nchunks == 0 and body->first == NULL when it
 * references none). */
netstash_error ns_store_get_with_body(ns_store_reader *r, ns_store_db db, const void *key,
                                      size_t keylen, ns_store_record *rec, ns_store_body *body);
/* Chunk i (< nchunks) of a body view, zero copy, same lifetime as the view.
 * NETSTASH_E_STORE_CORRUPT when the chunk is missing or of the wrong size. */
netstash_error ns_store_body_chunk(const ns_store_body *b, uint32_t i, const uint8_t **data,
                                   size_t *len);
typedef struct ns_store_iov {
  const uint8_t *base;
  size_t len;
} ns_store_iov;
/* Fills iov[0..max-1] with the body's chunks; *n receives nchunks.
 * NETSTASH_E_TOO_LARGE (iov filled up to max) when max < nchunks. */
netstash_error ns_store_body_iov(const ns_store_body *b, ns_store_iov *iov, size_t max, size_t *n);
/* Streams the decoded body to sink: identity bodies pass their chunks
 * through (zero copy), br/gzip bodies are decoded (ns_decoder, allocating
 * through mem) with at most max_out decoded bytes. Errors: those of
 * ns_decoder_write/finish, NETSTASH_E_STORE_CORRUPT. */
netstash_error ns_store_body_decode(const ns_store_body *b, const ns_mem *mem, uint64_t max_out,
                                    ns_decoder_sink sink, void *user_data);
/* Decodes the body into dst (cap bytes); *len receives decoded_size.
 * NETSTASH_E_TOO_LARGE when cap < decoded_size (nothing useful in dst). */
netstash_error ns_store_body_copy(const ns_store_body *b, const ns_mem *mem, uint8_t *dst,
                                  size_t cap, size_t *len);

/* Calls cb for each record of db whose key starts with prefix (prefix_len 0:
 * all), in key order, inside the reader's transaction. cb returns nonzero to
 * stop (ns_store_iterate then returns NETSTASH_OK). No access is noted. */
typedef int (*ns_store_iter_cb)(const uint8_t *key, size_t keylen, const ns_store_record *rec,
                                void *user_data);
netstash_error ns_store_iterate(ns_store_reader *r, ns_store_db db, const void *prefix,
                                size_t prefix_len, ns_store_iter_cb cb, void *user_data);

/* ------------------------------------------------------------ writing */

/* One write transaction, run by ns_store_write: fn performs its puts and
 * deletes through the ns_store_txn_* calls and returns NETSTASH_OK to commit
 * or an error to abort (that error is returned). When the map fills up
 * (MDB_MAP_FULL), the store aborts, grows the map (doubling, up to
 * map_size_max) or, at the maximum, evicts, and calls fn again: fn must be
 * replayable (no side effects outside the transaction that a second run would
 * repeat wrongly). After the transaction's own changes, records are evicted
 * when the store is above size_limit (down to 90 % of it; records written in
 * this transaction are kept). Errors: NETSTASH_E_STORE_BUSY (write lock not
 * obtained within write_wait_ms), NETSTASH_E_STORE_FULL (map at its maximum
 * and nothing left to evict: the store stays usable), NETSTASH_E_ILLEGAL_STATE
 * (read-only store), fn's error. */
typedef netstash_error (*ns_store_write_fn)(ns_store_txn *t, void *user_data);
netstash_error ns_store_write(ns_store *s, ns_store_write_fn fn, void *user_data);

/* Stores a body and returns its hash in out_hash (32 bytes). data is the body
 * as received with coding (identity, gzip or br; deflate and unknown:
 * NETSTASH_E_UNSUPPORTED); gzip/br bodies are decoded once to hash them
 * (NETSTASH_E_DECODE when corrupt, NETSTASH_E_TOO_LARGE above max_body) and
 * stored as they came. Identity bodies of a text type (content_type: text/...,
 * JavaScript, JSON, XML, SVG, wasm, uncompressed fonts; NULL for unknown) of
 * at least 1 KiB are stored Brotli-compressed (quality 5) when that saves at
 * least 10 % and 512 bytes, unless flags has NS_STORE_BODY_NO_RECOMPRESS.
 * A body already stored is not written again — unless it is kept coded
 * (gzip, br, or recompressed) and this one is identity with
 * NS_STORE_BODY_NO_RECOMPRESS: then it is rewritten as identity, its
 * references kept (the same content; a hit hands identity bytes out as they
 * are kept, and a head naming another coding is served decoded:
 * ns_httpcache_body_form). A new body has no reference
 * yet: a record must reference it (ns_store_txn_put with its hash) within
 * gc_grace_ms or GC may remove it. */
netstash_error ns_store_txn_body_put(ns_store_txn *t, const uint8_t *data, size_t len,
                                     ns_coding coding, const char *content_type, unsigned flags,
                                     uint8_t *out_hash);
/* Inserts or replaces a record: value is copied; body_hash (NULL: none) must
 * name a stored body (NETSTASH_E_NOT_FOUND otherwise) and becomes a reference
 * GC honours. flags: NS_STORE_REC_PINNED. Errors: NETSTASH_E_INVALID_ARGUMENT
 * (key empty or longer than NS_STORE_KEY_MAX), NETSTASH_E_TOO_LARGE. */
netstash_error ns_store_txn_put(ns_store_txn *t, ns_store_db db, const void *key, size_t keylen,
                                const void *value, size_t len, const uint8_t *body_hash,
                                uint32_t flags);
/* Deletes a record (NETSTASH_E_NOT_FOUND when absent); its body, if no
 * longer referenced, is queued for GC (no grace). */
netstash_error ns_store_txn_del(ns_store_txn *t, ns_store_db db, const void *key, size_t keylen);
/* Sets or clears NS_STORE_REC_PINNED on a record (NETSTASH_E_NOT_FOUND). A
 * pinned record is never evicted. */
netstash_error ns_store_txn_pin(ns_store_txn *t, ns_store_db db, const void *key, size_t keylen,
                                int pinned);
/* Reads inside the write transaction (sees its own changes); the record's
 * value is valid until the transaction ends. No access is noted. */
netstash_error ns_store_txn_get(ns_store_txn *t, ns_store_db db, const void *key, size_t keylen,
                                ns_store_record *out);

/* ns_store_iterate inside a write transaction (sees its own changes). cb
 * must not change db: collect keys, then delete after the walk. */
netstash_error ns_store_txn_iterate(ns_store_txn *t, ns_store_db db, const void *prefix,
                                    size_t prefix_len, ns_store_iter_cb cb, void *user_data);

/* One-transaction wrappers of the above. */
netstash_error ns_store_body_put(ns_store *s, const uint8_t *data, size_t len, ns_coding coding,
                                 const char *content_type, unsigned flags, uint8_t *out_hash);
netstash_error ns_store_put(ns_store *s, ns_store_db db, const void *key, size_t keylen,
                            const void *value, size_t len, const uint8_t *body_hash,
                            uint32_t flags);
netstash_error ns_store_del(ns_store *s, ns_store_db db, const void *key, size_t keylen);
netstash_error ns_store_pin(ns_store *s, ns_store_db db, const void *key, size_t keylen,
                            int pinned);

/* Writes noted accesses back (also done by every ns_store_write). */
netstash_error ns_store_flush_access(ns_store *s);

/* ------------------------------------------------------------ GC, size */

/* One bounded GC step: examines at most max_items queued bodies and deletes
 * those still unreferenced (a body's chunks are deleted together, so one step
 * deletes at most max_items bodies). Queued bodies never referenced are kept
 * until gc_grace_ms after they were stored. *more (may be NULL) is set when
 * eligible work remains. One write transaction per step. */
netstash_error ns_store_gc_step(ns_store *s, size_t max_items, int *more);

/* Evicts least recently used evictable records until the store is at most
 * target bytes (0: 90 % of size_limit); bodies they alone referenced are
 * deleted at once. *evicted (may be NULL) receives the record count. */
netstash_error ns_store_evict(ns_store *s, uint64_t target, size_t *evicted);

typedef struct ns_store_stats {
  uint64_t used_bytes; /* live pages of all databases x page size */
  uint64_t map_size;   /* current map size */
  uint64_t records[NS_STORE_DB_COUNT_];
  uint64_t bodies; /* body headers */
  uint64_t gc_queued;
  uint64_t evicted;   /* records evicted by this handle */
  uint64_t size_limit; /* above it a write evicts, down to 90 % (params.size_limit) */
  uint64_t map_grown; /* map growths by this handle */
} ns_store_stats;
netstash_error ns_store_get_stats(ns_store *s, ns_store_stats *st);

/* Walks the whole store: every record's body exists and is complete, every
 * body's chunks are present and of the right size and its decoded SHA-256
 * equals its key, reference counts match. NETSTASH_E_STORE_CORRUPT with a
 * detail naming the first problem. Reads a snapshot (a reader of its own). */
netstash_error ns_store_verify(ns_store *s, char *detail, size_t detail_len);

/* Nonzero when content_type (a Content-Type value, parameters allowed) is a
 * text type the store recompresses. */
int ns_store_is_text_type(const char *content_type);

#endif /* NS_STORE_STORE_H */
