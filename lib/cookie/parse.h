/*
 * parse.h — Set-Cookie parsing, the cookie date algorithm and the matching
 * primitives of RFC 6265bis. Internal; pure functions (no I/O, no clock:
 * `now` is a parameter), reading through the bounds-checked ns_reader.
 *
 * Section numbers refer to draft-ietf-httpbis-rfc6265bis (the browser
 * algorithm), not to RFC 6265's server grammar.
 */
#ifndef NS_COOKIE_PARSE_H
#define NS_COOKIE_PARSE_H

#include "ns_setup.h"

#include "core/reader.h"

/* §5.6 step 5 / §5.7 step 4: name and value together. */
#define NS_COOKIE_MAX_NAME_VALUE 4096
/* §5.6 (cookie-av step 6): a longer attribute value is ignored. */
#define NS_COOKIE_MAX_ATTR_VALUE 1024
/* §5.6.1 / §5.6.2: the cookie-age-limit, 400 days. */
#define NS_COOKIE_MAX_AGE_MS ((int64_t)400 * 86400 * 1000)
/* expiry of a session cookie ("the latest representable date", §5.7). */
#define NS_COOKIE_EXPIRY_SESSION INT64_MAX
/* expiry of a cookie deleted by Max-Age<=0 ("the earliest representable"). */
#define NS_COOKIE_EXPIRY_EARLIEST INT64_MIN

/* The same-site-flag (§5.6.7). UNSET is the RFC's "Default": enforced as Lax
 * (Lax-by-default, as Chromium). */
typedef enum ns_cookie_samesite {
  NS_COOKIE_SS_UNSET = 0,
  NS_COOKIE_SS_NONE = 1,
  NS_COOKIE_SS_LAX = 2,
  NS_COOKIE_SS_STRICT = 3
} ns_cookie_samesite;

/* One parsed Set-Cookie line. Spans borrow from the line. */
typedef struct ns_cookie_parsed {
  ns_span name, value;
  int persistent;    /* Max-Age or a valid Expires was present */
  int64_t expiry_ms; /* when persistent; EXPIRY_EARLIEST for Max-Age<=0 */
  int has_domain;
  ns_span domain;    /* leading dot removed, not yet lower-cased, not empty */
  int has_path;      /* a Path attribute was present */
  ns_span path;      /* its value when valid (starts with '/'); len 0:
                        the attribute was invalid, default-path applies */
  int secure, http_only, partitioned;
  ns_cookie_samesite same_site;
} ns_cookie_parsed;

/* §5.6: parses a set-cookie-string received at now_ms. Returns 1, or 0 when
 * the whole line must be ignored: a control character (%x00-08 / %x0A-1F /
 * %x7F, step 1), empty name and value, name+value longer than 4096 bytes.
 * Attributes: the last occurrence wins (Max-Age wins over Expires whatever
 * the order, §5.7 step 6); unknown ones and values over 1024 bytes are
 * skipped; expiry is capped at now + 400 days. */
int ns_cookie_parse(const char *line, size_t len, int64_t now_ms, ns_cookie_parsed *out);

/* §5.1.1 cookie-date (the lenient algorithm, not HTTP-date): returns 1 and
 * seconds since the epoch, or 0. Two-digit years: 70-99 → 19xx, 0-69 → 20xx;
 * years before 1601 and invalid dates (Feb 30) fail. */
int ns_cookie_date_parse(const char *s, size_t len, int64_t *out_s);

/* §5.1.4 default-path of a request path (span into path, or "/"). */
ns_span ns_cookie_default_path(ns_span request_path);
/* §5.1.4 path-match. */
int ns_cookie_path_match(ns_span request_path, const char *cookie_path, size_t cookie_path_len);
/* §5.1.3 domain-match of a canonical (lower-case) host against a canonical
 * cookie domain. host_is_ip: only identity matches. */
int ns_cookie_domain_match(const char *host, size_t host_len, int host_is_ip,
                           const char *domain, size_t domain_len);

/* §5.6 step 1 / §5.7 step 3: the control characters a cookie may not hold. */
static inline int ns_cookie_ctl(int c) {
  return (c >= 0x00 && c <= 0x08) || (c >= 0x0a && c <= 0x1f) || c == 0x7f;
}

#endif /* NS_COOKIE_PARSE_H */
