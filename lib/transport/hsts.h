/*
 * hsts.h — HTTP Strict Transport Security persisted in the profile's store.
 *
 * libcurl's HSTS engine (shared by the context's fetches through a CURLSH)
 * does the upgrades and parses the header itself. Persistence is ours: an
 * STS header on an https response is parsed here too (RFC 6797 §6.1) and
 * written to the store at once (a pinned record "hsts <host>" in the http
 * database: crash-safe, shared by every process of the profile, never a
 * plain file rewritten by several processes); a new context feeds the stored
 * entries to libcurl's engine through CURLOPT_HSTSREADFUNCTION on its first
 * transfer. Internal.
 */
#ifndef NS_TRANSPORT_HSTS_H
#define NS_TRANSPORT_HSTS_H

#include "ns_setup.h"

/* RFC 6797 §6.1 Strict-Transport-Security value: returns 1 and the
 * directives when valid (max-age required, no duplicate directives,
 * unknown directives ignored), 0 when the header must be ignored (§8.1). */
int ns_sts_parse(const char *value, size_t len, int64_t *max_age_s, int *include_subdomains);

struct ns_httpcache;
struct ns_store;

typedef struct ns_hsts_entry {
  char host[256];
  int64_t expires_ms; /* wall clock */
  int include_subdomains;
} ns_hsts_entry;

/* Records (or, for max-age=0, deletes) host's policy. */
netstash_error ns_hsts_save(struct ns_store *store, const char *host, int64_t now_ms,
                            int64_t max_age_s, int include_subdomains);
/* Loads the unexpired entries (at most max) into out; *n receives the count. */
netstash_error ns_hsts_load(struct ns_store *store, const ns_mem *mem, int64_t now_ms,
                            ns_hsts_entry *out, size_t max, size_t *n);

#endif
