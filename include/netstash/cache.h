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

#ifdef __cplusplus
}
#endif
#endif /* NETSTASH_CACHE_H */
