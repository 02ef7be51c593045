/*
 * netstash — the profile store and its HTTP cache, as tools see them.
 *
 * The HTTP cache itself is used through fetches (netstash_request_set_cache_mode,
 * netstash_fetch_source, netstash_fetch_cache_reason) of a context that has a
 * profile directory (netstash_options_set_profile_dir).
 */
#ifndef NETSTASH_CACHE_H
#define NETSTASH_CACHE_H

#include "common.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Walks the store of profile_dir: every record's body exists, is complete and
 * its SHA-256 matches its key; reference counts agree. Returns NETSTASH_OK,
 * NETSTASH_E_STORE_CORRUPT (detail names the first problem),
 * NETSTASH_E_NOT_FOUND (no store there), NETSTASH_E_STORE_VERSION. Opens the
 * store read-only; safe while other processes use it. Any thread. */
NETSTASH_EXTERN netstash_error netstash_store_verify(const char *profile_dir, char *detail,
                                                     size_t detail_len);

/* Deletes the store of profile_dir (HTTP cache and everything else it
 * holds), without reading it: the remedy for a corrupt store. Refuses with
 * NETSTASH_E_STORE_BUSY while a process writes to it. Processes still reading
 * keep their snapshot until they reopen. NETSTASH_E_NOT_FOUND when there is
 * no store. Any thread. */
NETSTASH_EXTERN netstash_error netstash_store_purge(const char *profile_dir, char *detail,
                                                    size_t detail_len);

/* The HTTP cache of ctx's profile, as JSON text (free with netstash_free):
 * {"count", "entries": [{"url", "site", "status", "size", "coding",
 * "stored", "age", "lifetime", "fresh", "decision", "last_used", "vary",
 * "range"}]}, one entry per stored response (a URL with several Vary variants
 * has several): "site" is the top-level site the entry is partitioned under
 * ("-": unpartitioned), "size" the bytes of content, "coding" the body's as
 * stored (identity, gzip, br, zstd), "stored" when the response arrived and
 * "last_used" the last access written back (ms since the epoch; 0: none),
 * "age" and "lifetime" seconds, "fresh" and "decision" what a plain GET would
 * get now, "vary" the request fields the entry was stored under, "range" the
 * bytes a stored piece (a 206) holds. Entries whose URL starts with
 * url_prefix (NULL: all), in key order. One snapshot, its own read
 * transaction: safe while the loop thread (or netd) writes. Any thread. */
NETSTASH_EXTERN netstash_error netstash_cache_list(netstash_ctx *ctx, const char *url_prefix,
                                                   char **json);

/* Removes every stored response for url — each partition, each variant —
 * from ctx's profile; *removed (may be NULL) gets the number of partitions
 * that held one (a URL longer than the store's keys, kept under a shortened
 * key, is found all the same). NETSTASH_E_NOT_FOUND when none did. A
 * response being stored at that moment may still land. Any thread. */
NETSTASH_EXTERN netstash_error netstash_cache_remove(netstash_ctx *ctx, const char *url,
                                                     unsigned *removed);

#ifdef __cplusplus
}
#endif
#endif /* NETSTASH_CACHE_H */
