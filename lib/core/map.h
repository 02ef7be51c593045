/*
 * map.h — a hash map from byte-string keys to void * values. Internal.
 *
 * Open addressing with linear probing and tombstones, a power-of-two table
 * kept at most 3/4 full (live entries plus tombstones). Keys are copied in
 * (any bytes, any length, NUL allowed); values are borrowed pointers the map
 * never dereferences or frees. Every allocation goes through the ns_mem given
 * to ns_map_init; sizes are overflow-checked.
 *
 * Hashing is SipHash-1-3 keyed with 128 random bits per map (getrandom), so an
 * attacker who chooses keys (host names, cookie names, URLs) cannot force
 * collisions without knowing the seed. After c-ares' and Python's choice of a
 * keyed hash for attacker-fed tables.
 *
 * Not thread-safe: a map belongs to whoever owns the struct (usually the
 * loop thread).
 *
 *   ns_map m;
 *   ns_map_init(&m, mem);
 *   if (ns_map_put(&m, "a", 1, value, NULL) != NETSTASH_OK) ...;
 *   v = ns_map_get(&m, "a", 1);
 *   for (size_t it = 0; ns_map_next(&m, &it, &key, &keylen, &v);) ...;
 *   ns_map_free(&m);   values are the caller's to free first
 */
#ifndef NS_CORE_MAP_H
#define NS_CORE_MAP_H

#include "ns_setup.h"

typedef struct ns_map_slot ns_map_slot; /* opaque, defined in map.c */

typedef struct ns_map {
  const ns_mem *mem;
  ns_map_slot *slots; /* NULL until the first put */
  size_t cap;         /* slots, a power of two (0 before the first put) */
  size_t len;         /* live entries */
  size_t used;        /* live entries + tombstones */
  uint64_t seed[2];   /* SipHash key */
} ns_map;

/* Empty map; allocates nothing. mem must outlive the map. Never fails (the
 * seed falls back to clock and address bits if getrandom is unavailable). */
void ns_map_init(ns_map *m, const ns_mem *mem);
/* Frees the table and the key copies, not the values. The map may be
 * initialised again afterwards. NULL accepted. */
void ns_map_free(ns_map *m);

static inline size_t ns_map_len(const ns_map *m) { return m->len; }

/* The value stored under key, or NULL when absent (store no NULL values if
 * you need to tell them apart; or use ns_map_find). */
void *ns_map_get(const ns_map *m, const void *key, size_t keylen);
/* 1 and *value (if not NULL) set when key is present, else 0. */
int ns_map_find(const ns_map *m, const void *key, size_t keylen, void **value);

/* Inserts or replaces. When the key was present its value is replaced and the
 * previous one stored in *old (if old is not NULL; NULL is stored there for a
 * new key). Errors: NETSTASH_E_NOMEM (the map is unchanged),
 * NETSTASH_E_TOO_LARGE (the table would exceed SIZE_MAX bytes). May move
 * entries: an iteration in progress must restart. */
netstash_error ns_map_put(ns_map *m, const void *key, size_t keylen, void *value,
                          void **old);

/* Removes key. Returns 1 and the removed value in *value (if not NULL), or 0
 * when absent. Never allocates or moves other entries, so removing the entry
 * ns_map_next just returned is safe during an iteration. */
int ns_map_remove(ns_map *m, const void *key, size_t keylen, void **value);

/* Iteration in table order (unspecified, stable while no put happens):
 * start with *iter = 0; each call returning 1 fills the non-NULL out
 * parameters with the next entry. key points into the map and stays valid
 * until that entry is removed or the map is freed. Returns 0 at the end. */
int ns_map_next(const ns_map *m, size_t *iter, const void **key, size_t *keylen,
                void **value);

/* The keyed hash used by the map (exposed for tests and for callers that
 * want a stable per-map hash, e.g. sharding). */
uint64_t ns_map_hash(const ns_map *m, const void *key, size_t keylen);

#endif /* NS_CORE_MAP_H */
