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
