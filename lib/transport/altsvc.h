/*
 * altsvc.h — HTTP Alternative Services (RFC 7838) for HTTP/3. Internal.
 *
 * Three pieces, all used by the transport on its loop thread:
 *  - ns_altsvc_parse: an Alt-Svc field value (RFC 7838 §3) to the "h3"
 *    alternatives it offers, in order of preference. Pure: no clock, no I/O,
 *    no allocation.
 *  - ns_altsvc_save / ns_altsvc_lookup: the alternative of an https origin,
 *    persisted in the profile's store exactly like HSTS (hsts.h): a pinned
 *    record "altsvc <host>:<port>" in the http database (host in lower case,
 *    an IPv6 literal in brackets), crash-safe and shared by every process of
 *    the profile. A new Alt-Svc value replaces the origin's record as a whole
 *    (RFC 7838 §3: it "invalidates and replaces all cached alternative
 *    services for that origin").
 *  - ns_altsvc_broken: an in-memory table of h3 endpoints that failed, with
 *    exponential backoff, after Chromium's BrokenAlternativeServices (5 min
 *    doubled per failure, capped at 48 h; a success resets it). Bounded
 *    (NS_ALTSVC_BROKEN_MAX endpoints, the least recently marked evicted);
 *    allocated once, nothing allocated afterwards.
 *
 * Record value (version 1): byte 0 version; byte 1 number of entries (1 to
 * NS_ALTSVC_STORE_MAX); then per entry: u8 ALPN length, ALPN, u8 host length,
 * host (lower case, no brackets, "" for the origin's host), big-endian u16
 * port, u8 flags (1: persist), big-endian i64 expiry (wall clock, ms).
 */
#ifndef NS_TRANSPORT_ALTSVC_H
#define NS_TRANSPORT_ALTSVC_H

#include "ns_setup.h"

struct ns_store;

/* ma when the alt-value has none (RFC 7838 §3.1: 24 hours). */
#define NS_ALTSVC_MA_DEFAULT_S INT64_C(86400)
/* Larger ma values are clamped to this (400 days, as hsts.c caps max-age). */
#define NS_ALTSVC_MA_MAX_S (INT64_C(400) * 86400)
/* Alternatives kept per origin in the store (the first one is used; the
 * second is a fallback when the first expires sooner). */
#define NS_ALTSVC_STORE_MAX 2
/* Largest record value ns_altsvc_encode_ writes. */
#define NS_ALTSVC_REC_MAX (2 + NS_ALTSVC_STORE_MAX * (1 + 15 + 1 + 255 + 2 + 1 + 8))

typedef struct ns_altsvc {
  char alpn[16];      /* "h3": the only protocol kept */
  char host[256];     /* alternative host, lower case, an IPv6 literal without
                         brackets; "" = the origin's host */
  int port;           /* 1..65535 */
  int64_t expires_ms; /* wall clock: now + ma (default 86400 s) */
  int persist;        /* persist=1 (RFC 7838 §3.1): survives network changes */
} ns_altsvc;

/* Parses an Alt-Svc field value (RFC 7838 §3):
 *
 *   Alt-Svc = clear / 1#alt-value
 *   alt-value = protocol-id "=" alt-authority *( OWS ";" OWS parameter )
 *
 * protocol-id is a percent-decoded token ("h%33" is "h3"); alt-authority a
 * quoted-string (escapes undone) holding [uri-host] ":" port, port 1..65535;
 * parameters "ma" (delta-seconds, default 24 h, clamped to
 * NS_ALTSVC_MA_MAX_S) and "persist" (only the value 1 counts, §3.1); other
 * parameters are ignored. Only exact "h3" alternatives are kept ("h2",
 * "h3-29", ... are checked and dropped), at most cap of them (out may be NULL
 * when cap is 0), in the order given (the server's preference).
 *
 * Returns the number kept (0 is valid: e.g. only h2 offered) and *clear 0;
 * for the value "clear" (case-sensitive, §3) returns 0 and *clear 1; returns
 * -1 when the value is malformed — empty, bad percent-encoding, a missing or
 * invalid port or host, an unterminated quoted-string, a bad "ma", anything
 * but ',' after an alt-value — and the whole field must then be ignored (do
 * not call ns_altsvc_save). clear may be NULL. Pure function: no allocation,
 * no clock (now_ms is the reception time, wall clock). */
int ns_altsvc_parse(const char *value, size_t len, int64_t now_ms, ns_altsvc *out, size_t cap,
                    int *clear);

/* Persists the h3 alternatives of the origin https://host:port (host without
 * brackets, any case): the first NS_ALTSVC_STORE_MAX entries of alts whose
 * alpn is "h3", replacing the origin's earlier record; when n is 0, none is
 * "h3", or clear is set, the record is deleted (absent is fine). The record
 * is pinned (never evicted). Errors: NETSTASH_E_INVALID_ARGUMENT (host empty,
 * longer than 255 or with spaces or control characters, port outside
 * 1..65535, an entry with a bad port or host), the errors of ns_store_put and
 * ns_store_del (NETSTASH_E_STORE_BUSY, NETSTASH_E_STORE_FULL, ...). A store
 * write: call it from a thread that holds no read transaction of store. */
netstash_error ns_altsvc_save(struct ns_store *store, const char *host, int port,
                              const ns_altsvc *alts, size_t n, int clear);

/* The first unexpired (expires_ms > now_ms) h3 alternative stored for
 * https://host:port: NETSTASH_OK and *out filled, or NETSTASH_E_NOT_FOUND
 * when there is none (no record, all entries expired, or a record of another
 * version or damaged). A record whose entries have all expired is deleted
 * (in a write transaction that checks it again; failures are ignored, e.g.
 * on a read-only store). Other errors: NETSTASH_E_INVALID_ARGUMENT, those of
 * the store's readers (NETSTASH_E_NOMEM, NETSTASH_E_STORE_BUSY, ...). */
netstash_error ns_altsvc_lookup(struct ns_store *store, const char *host, int port, int64_t now_ms,
                                ns_altsvc *out);

/* The record form (exposed for tests and the fuzzer). encode: the first
 * min(n, NS_ALTSVC_STORE_MAX) entries into buf (cap bytes, at least
 * NS_ALTSVC_REC_MAX is always enough); returns the length, or 0 when n is 0
 * or an entry is invalid (ALPN empty or longer than 15, host longer than
 * 255, port outside 1..65535) or cap too small. decode: at most cap entries
 * into out; returns the number of entries in the record or -1 when it is
 * malformed or of another version. */
size_t ns_altsvc_encode_(const ns_altsvc *alts, size_t n, uint8_t *buf, size_t cap);
int ns_altsvc_decode_(const uint8_t *p, size_t len, ns_altsvc *out, size_t cap);

/* ------------------------------------------------------------ broken h3 */

/* Endpoints remembered; when full, the least recently marked is evicted. */
#define NS_ALTSVC_BROKEN_MAX 256
/* First broken period (Chromium: 5 minutes), doubled per further failure. */
#define NS_ALTSVC_BROKEN_BASE_MS (INT64_C(5) * 60 * 1000)
/* Longest broken period (Chromium: 48 hours). */
#define NS_ALTSVC_BROKEN_CAP_MS (INT64_C(48) * 3600 * 1000)

/* Owned by the transport; not thread-safe (use it from one thread, the
 * loop's). host:port is whatever key the caller uses consistently for mark,
 * check and confirm (the transport uses the origin; Chromium keys
 * BrokenAlternativeServices by the alternative endpoint); hosts are compared
 * case-insensitively. */
typedef struct ns_altsvc_broken ns_altsvc_broken;

/* Allocates an empty table through mem (copied). NETSTASH_E_NOMEM,
 * NETSTASH_E_INVALID_ARGUMENT (out or mem NULL). */
netstash_error ns_altsvc_broken_new(const ns_mem *mem, ns_altsvc_broken **out);
/* NULL accepted. */
void ns_altsvc_broken_del(ns_altsvc_broken *b);
/* The first broken period (default NS_ALTSVC_BROKEN_BASE_MS); values <= 0
 * restore the default, larger ones than NS_ALTSVC_BROKEN_CAP_MS are clamped.
 * Applies to later marks. For tests. */
void ns_altsvc_broken_set_base(ns_altsvc_broken *b, int64_t base_ms);
/* Marks host:port's h3 as broken from now_ms: the n-th failure since the
 * last confirmation makes it broken until now_ms + base << (n - 1), at most
 * NS_ALTSVC_BROKEN_CAP_MS. A host longer than 255 bytes is not remembered. */
void ns_altsvc_mark_broken(ns_altsvc_broken *b, const char *host, int port, int64_t now_ms);
/* 1 when host:port's h3 is broken at now_ms, else 0. Allocates nothing. */
int ns_altsvc_is_broken(const ns_altsvc_broken *b, const char *host, int port, int64_t now_ms);
/* A request succeeded over host:port's h3: it is forgotten (not broken, and
 * the failure count starts again from zero). */
void ns_altsvc_confirm(ns_altsvc_broken *b, const char *host, int port);
/* Endpoints remembered (broken now or failed before and not confirmed). */
size_t ns_altsvc_broken_count(const ns_altsvc_broken *b);

#endif /* NS_TRANSPORT_ALTSVC_H */
