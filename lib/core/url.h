/*
 * url.h — URL handling through libcurl's URL API (curl_url), never by hand.
 */
#ifndef NS_CORE_URL_H
#define NS_CORE_URL_H

#include "ns_setup.h"

typedef struct ns_url {
  char *url;    /* normalised absolute URL */
  char *scheme; /* "http" or "https" */
  char *host;   /* IPv6 literals without brackets */
  int port;     /* explicit or the scheme's default */
  int host_is_ip;
  int ipv6;
} ns_url;

/* The parts of a URL already in the form curl_url prints, found without
 * parsing (no allocation): pointer and length each, port_len 0 when there is
 * no port, query NULL when there is no query. Only a conservative subset
 * qualifies, for which curl_url would print the URL unchanged and return
 * these very parts: "http" or "https", no userinfo, a lowercase DNS host
 * whose last label does not start with a digit or a canonical dotted-quad
 * IPv4 address (curl rewrites the other numeric forms), an optional port of
 * 1-65535 without leading zeros, a path starting with '/' without dot
 * segments, escapes or backslashes, an optional non-empty query of the same
 * characters (and '?'), no fragment. 1 when url qualifies, else 0 (then
 * curl_url decides). tests/unit/core_test and cache_test compare both. */
typedef struct ns_url_parts {
  const char *scheme, *host, *port, *path, *query;
  size_t scheme_len, host_len, port_len, path_len, query_len;
  unsigned port_num; /* 0 when absent */
} ns_url_parts;
int ns_url_split_canonical(const char *url, ns_url_parts *p);
/* Off (ns_url_split_canonical takes nothing, so ns_url_parse and the cache
 * keys go through curl_url) only for the tests and the fuzz harness that
 * compare both paths; default on. */
void ns_url_fast_set(int on);
int ns_url_fast_enabled(void);

/* Parses an absolute http(s) URL. NETSTASH_E_BAD_URL (detail, if not NULL,
 * gets curl's reason) or NETSTASH_E_NOMEM. */
netstash_error ns_url_parse(const ns_mem *mem, const char *url, ns_url *out,
                            char *detail, size_t detail_len);
/* Resolves ref (e.g. a Location value, possibly relative) against base. */
netstash_error ns_url_resolve(const ns_mem *mem, const char *base, const char *ref,
                              ns_url *out, char *detail, size_t detail_len);
void ns_url_free(const ns_mem *mem, ns_url *u);
/* A copy of a parsed URL (no parsing: three string copies).
 * NETSTASH_E_NOMEM; *out zeroed on failure. */
netstash_error ns_url_copy(const ns_mem *mem, const ns_url *from, ns_url *out);

/* Nonzero when host (no brackets) is an IPv4 or IPv6 literal. */
int ns_host_is_ip(const char *host, int *is_v6);

/* Canonical form of a normalised https URL's authority, in place: host in
 * lower case (RFC 3986 §6.2.2.1), the default port dropped (§6.2.3), so
 * that URLs compare as strings (preload manifests and lookups). -1 when
 * there is userinfo. */
int ns_url_canonical_authority(char *url);

/* ASCII-only helpers (no locale). */
static inline char ns_ascii_lower(char c) {
  return (c >= 'A' && c <= 'Z') ? (char)(c + 32) : c;
}
int ns_ascii_casecmp_n(const char *a, const char *b, size_t n);
int ns_ascii_casecmp(const char *a, const char *b);

#endif
