/*
 * jar.h — the cookie engine: named jars, storage model, Cookie header,
 * script view, limits and eviction, persistence, policy hook, listeners.
 * Internal API (the public netstash_cookie_* calls and the fetch engine sit
 * on top of it). RFC 6265bis (draft-ietf-httpbis-rfc6265bis) sections are
 * cited next to the behaviour; CHIPS is draft-cutler-httpbis-partitioned-cookies.
 *
 * Objects
 *   ns_cookie_jars  one per context: the public suffix list, the store (may
 *                   be NULL), and a map name -> jar.
 *   ns_cookie_jar   one cookie store. Persistent jars live in the store's
 *                   NS_STORE_COOKIES database under "<jar name>\0<cookie key>"
 *                   and are loaded when opened; memory jars
 *                   (NS_COOKIE_JAR_MEMORY, private browsing) never touch it.
 *
 * Time: every call that needs the time takes now_ms (wall clock, ms since
 * the epoch); nothing here reads a clock or does network I/O. Store I/O
 * happens only in ns_cookie_jars_open (load) and ns_cookie_jar_flush (also
 * run by every mutating call while auto-flush is on, the default).
 *
 * Thread rule: not thread-safe. A jars object and its jars belong to one
 * thread at a time (the context's loop thread). Listener and policy
 * callbacks run synchronously inside the call that triggered them and must
 * not call back into the same jar.
 *
 * Memory: everything through the ns_mem given to ns_cookie_jars_new (libpsl
 * allocates its list through malloc). Out of memory: NETSTASH_E_NOMEM, the
 * jar unchanged by the failed call.
 */
#ifndef NS_COOKIE_JAR_H
#define NS_COOKIE_JAR_H

#include "ns_setup.h"

#include "cookie/parse.h"
#include "core/buf.h"
#include "core/list.h"
#include "core/url.h"

struct ns_store;
typedef struct ns_cookie_jars ns_cookie_jars;
typedef struct ns_cookie_jar ns_cookie_jar;

/* ------------------------------------------------------------ cookies */

/* A stored cookie (§5.7). The strings are NUL-terminated and live in the
 * same allocation; a pointer handed to a callback is valid until it
 * returns. Fields after `persistent` are the jar's. */
typedef struct ns_cookie {
  char *name, *value, *domain, *path;
  char *partition; /* CHIPS partition key: the top-level site, e.g.
                      "https://example.com"; NULL when unpartitioned */
  size_t name_len, value_len, domain_len, path_len, partition_len;
  int64_t creation_ms, last_access_ms;
  int64_t expiry_ms; /* NS_COOKIE_EXPIRY_SESSION for a session cookie */
  uint64_t seq;      /* jar-wide creation order (ties of creation_ms) */
  uint8_t host_only, secure, http_only, persistent;
  uint8_t same_site; /* ns_cookie_samesite */
  /* ---- jar-private */
  uint8_t source_secure;      /* set from a secure origin */
  int64_t stored_access_ms;   /* last_access_ms as last written to the store */
  ns_list bucket_link, group_link, all_link;
  struct ns_cookie_bucket *bucket;
  struct ns_cookie_group *group;
} ns_cookie;

/* ------------------------------------------------------------ requests */

/* The context of one request, as the fetch engine knows it. URLs are parsed
 * with ns_url_parse (http/https); they are borrowed for the call only.
 *   url                the request URL (required)
 *   site_for_cookies   Fetch's "site for cookies": for a top-level
 *                      navigation the URL itself, for a subresource or
 *                      frame the top-level document's URL when every
 *                      ancestor is same-site; NULL is the null site: every
 *                      request is cross-site
 *   initiator          the origin that started the request (NULL: the
 *                      browser itself, e.g. the address bar)
 *   top_level_site     the top-level document's URL or site, the CHIPS
 *                      partition key; NULL: the request's own site (a
 *                      top-level request)
 *   method             NULL: "GET"
 *   top_level_navigation  nonzero for a main-frame navigation */
typedef struct ns_cookie_request {
  const ns_url *url;
  const ns_url *site_for_cookies;
  const ns_url *initiator;
  const ns_url *top_level_site;
  const char *method;
  int top_level_navigation;
} ns_cookie_request;

/* Why a Set-Cookie line was not stored (like Chromium's inclusion status);
 * NS_COOKIE_STORED and NS_COOKIE_DELETED are successes. */
#define NS_COOKIE_STATUS_MAP(X)                                                \
  X(STORED, "stored")                                                          \
  X(DELETED, "stored already expired: deleted the cookie it replaces")       \
  X(REJ_SYNTAX, "control character, empty, or name+value over 4096 bytes")    \
  X(REJ_DOMAIN, "Domain does not domain-match the request host")              \
  X(REJ_PUBLIC_SUFFIX, "Domain is a public suffix")                           \
  X(REJ_SECURE_ORIGIN, "Secure cookie from a non-secure origin")              \
  X(REJ_HTTP_ONLY, "HttpOnly cookie from the script API")                     \
  X(REJ_OVERWRITE_HTTP_ONLY, "script may not overwrite an HttpOnly cookie")   \
  X(REJ_OVERWRITE_SECURE, "non-secure origin may not shadow a Secure cookie") \
  X(REJ_SAMESITE_NONE_INSECURE, "SameSite=None without Secure")               \
  X(REJ_SAMESITE_CONTEXT, "SameSite cookie set from a cross-site context")    \
  X(REJ_PREFIX_SECURE, "__Secure- prefix rules not met")                      \
  X(REJ_PREFIX_HOST, "__Host- prefix rules not met")                          \
  X(REJ_PARTITIONED_INSECURE, "Partitioned without Secure")                   \
  X(REJ_POLICY, "blocked by the policy hook")                                 \
  X(REJ_BAD_URL, "request URL unusable for cookies (host too long)")

typedef enum ns_cookie_status {
#define NS_COOKIE_X(n, t) NS_COOKIE_##n,
  NS_COOKIE_STATUS_MAP(NS_COOKIE_X)
#undef NS_COOKIE_X
  NS_COOKIE_STATUS_COUNT_
} ns_cookie_status;
const char *ns_cookie_status_text(ns_cookie_status s);

/* ------------------------------------------------------------ callbacks */

typedef enum ns_cookie_change {
  NS_COOKIE_ADDED = 0,       /* inserted (also the new one of an overwrite) */
  NS_COOKIE_OVERWRITTEN = 1, /* replaced by a cookie with the same key */
  NS_COOKIE_REMOVED = 2,     /* deleted by a call or by an expired Set-Cookie */
  NS_COOKIE_EXPIRED = 3,     /* found expired (sweep or lookup) */
  NS_COOKIE_EVICTED = 4      /* over a limit */
} ns_cookie_change;

/* Called after the change. c is valid until the callback returns. Not called
 * while a jar is loaded from the store, cleared by ns_cookie_jars_del, or
 * imported with notifications off. */
typedef void (*ns_cookie_listener_fn)(ns_cookie_jar *jar, const ns_cookie *c,
                                      ns_cookie_change change, void *user_data);

typedef enum ns_cookie_op {
  NS_COOKIE_OP_SET = 0,        /* from a Set-Cookie response header */
  NS_COOKIE_OP_SEND = 1,       /* into a Cookie request header */
  NS_COOKIE_OP_SCRIPT_SET = 2, /* document.cookie = ... */
  NS_COOKIE_OP_SCRIPT_GET = 3  /* document.cookie */
} ns_cookie_op;

typedef enum ns_cookie_verdict { NS_COOKIE_ALLOW = 0, NS_COOKIE_BLOCK = 1 } ns_cookie_verdict;

/* The embedder's policy, asked per cookie. For SET/SCRIPT_SET c is the
 * candidate after the RFC's parsing and domain/path resolution and before
 * the storage checks (which still apply after it: the hook cannot weaken
 * them); the hook may *modify* it by changing expiry_ms/persistent (e.g.
 * make it a session cookie), secure, http_only or same_site — nothing else.
 * For SEND/SCRIPT_GET c must not be changed. ns_cookie_jars_cross_site()
 * tells a third-party context apart. req is NULL for cookies.txt imports
 * (op SET). */
typedef ns_cookie_verdict (*ns_cookie_policy_fn)(ns_cookie_jar *jar, ns_cookie_op op,
                                                 const ns_cookie_request *req, ns_cookie *c,
                                                 void *user_data);

/* ------------------------------------------------------------ limits */

/* Chromium's numbers (net/cookies/cookie_monster.h): 180 per registrable
 * domain purged to 150, 3300 per jar purged to 3000. Partitioned cookies
 * count per (partition, registrable domain). Eviction order: expired, then
 * non-secure least recently accessed, then secure least recently accessed. */
typedef struct ns_cookie_limits {
  size_t per_domain_max, per_domain_purge_to;
  size_t total_max, total_purge_to;
} ns_cookie_limits;
#define NS_COOKIE_PER_DOMAIN_MAX 180
#define NS_COOKIE_PER_DOMAIN_PURGE 150
#define NS_COOKIE_TOTAL_MAX 3300
#define NS_COOKIE_TOTAL_PURGE 3000

/* ------------------------------------------------------------ jars */

/* mem (NULL: ns_mem_default()) and store (NULL: memory only) must outlive
 * the object. Loads the public suffix list: psl_latest(NULL) (Debian's
 * publicsuffix data), else libpsl's built-in list, else a minimal rule (a
 * domain without a dot is a public suffix). */
netstash_error ns_cookie_jars_new(const ns_mem *mem, struct ns_store *store,
                                  ns_cookie_jars **out);
/* Frees every jar (without flushing: call ns_cookie_jar_flush first if auto-
 * flush is off). NULL accepted. */
void ns_cookie_jars_del(ns_cookie_jars *jars);
/* Replaces the public suffix list with the file at path (the publicsuffix.org
 * .dat text form or libpsl's DAFSA). NETSTASH_E_IO when it cannot be loaded
 * (the old list stays). */
netstash_error ns_cookie_jars_load_psl(ns_cookie_jars *jars, const char *path);

#define NS_COOKIE_JAR_MEMORY 0x1u          /* never persisted (private) */
#define NS_COOKIE_JAR_PERSIST_SESSION 0x2u /* also store session cookies */
#define NS_COOKIE_JAR_NAME_MAX 64

/* The jar called name (1..64 bytes, no NUL), created if absent; a persistent
 * jar is loaded from the store when created (expired and damaged records are
 * skipped; *out valid until ns_cookie_jars_remove or _del). Opening an
 * existing jar returns it (flags ignored). Errors: NETSTASH_E_INVALID_ARGUMENT,
 * NETSTASH_E_NOMEM, the store's read errors. */
netstash_error ns_cookie_jars_open(ns_cookie_jars *jars, const char *name, unsigned flags,
                                   int64_t now_ms, ns_cookie_jar **out);
/* The open jar called name, or NULL. */
ns_cookie_jar *ns_cookie_jars_get(ns_cookie_jars *jars, const char *name);
/* Closes the jar (flushing it); wipe also deletes its stored records. */
netstash_error ns_cookie_jars_remove(ns_cookie_jars *jars, const char *name, int wipe);

/* 1 when req is cross-site: its URL is not same-site (scheme and registrable
 * domain) with site_for_cookies, or the initiator is cross-site. */
int ns_cookie_jars_cross_site(ns_cookie_jars *jars, const ns_cookie_request *req);
/* The site of a URL ("https://example.co.uk"): appended to out. */
netstash_error ns_cookie_jars_site(ns_cookie_jars *jars, const ns_url *u, ns_buf *out);
/* 1 when domain (lower-case) is a public suffix under the current list. */
int ns_cookie_jars_is_public_suffix(ns_cookie_jars *jars, const char *domain);

/* ------------------------------------------------------------ one jar */

const char *ns_cookie_jar_name(const ns_cookie_jar *jar);
size_t ns_cookie_jar_count(const ns_cookie_jar *jar);
void ns_cookie_jar_set_listener(ns_cookie_jar *jar, ns_cookie_listener_fn fn, void *user_data);
void ns_cookie_jar_set_policy(ns_cookie_jar *jar, ns_cookie_policy_fn fn, void *user_data);
/* Zero fields keep their value; purge_to must be below max (else
 * NETSTASH_E_INVALID_ARGUMENT). Applies from the next insertion. */
netstash_error ns_cookie_jar_set_limits(ns_cookie_jar *jar, const ns_cookie_limits *l);
/* Auto-flush (default on): every mutating call ends with a flush, so a
 * stored cookie is on disk when the call returns. Off: call
 * ns_cookie_jar_flush yourself (e.g. after each response, or on a timer). */
void ns_cookie_jar_set_auto_flush(ns_cookie_jar *jar, int on);

/* Stores one Set-Cookie value received in response to req (§5.7).
 * *status (may be NULL) says what happened; a rejected cookie is not an
 * error. Errors: NETSTASH_E_NOMEM; the store's errors from the auto-flush
 * (the change is then kept in memory and written by the next flush). */
netstash_error ns_cookie_jar_set(ns_cookie_jar *jar, const ns_cookie_request *req,
                                 const char *line, size_t len, int64_t now_ms,
                                 ns_cookie_status *status);
/* Every "Set-Cookie" field of a response head (ns_headers) in order, one
 * flush at the end; *stored (may be NULL) counts the stored ones. */
struct ns_headers;
netstash_error ns_cookie_jar_set_from_headers(ns_cookie_jar *jar, const ns_cookie_request *req,
                                              const struct ns_headers *h, int64_t now_ms,
                                              size_t *stored);

/* Appends the Cookie header value for req (§5.8.3), e.g. "a=1; b=2", to out;
 * nothing when no cookie applies. Updates the last-access time of the cookies
 * sent; expired cookies met on the way are removed. Errors: NETSTASH_E_NOMEM,
 * NETSTASH_E_TOO_LARGE (out's cap; out is then restored). */
netstash_error ns_cookie_jar_header(ns_cookie_jar *jar, const ns_cookie_request *req,
                                    int64_t now_ms, ns_buf *out);

/* document.cookie (the "non-HTTP" API of §5.7/§5.8): get excludes HttpOnly
 * cookies; set parses like Set-Cookie but may neither create nor overwrite
 * an HttpOnly cookie. req describes the document (url, its site for cookies,
 * its top-level site). */
netstash_error ns_cookie_jar_script_get(ns_cookie_jar *jar, const ns_cookie_request *req,
                                        int64_t now_ms, ns_buf *out);
netstash_error ns_cookie_jar_script_set(ns_cookie_jar *jar, const ns_cookie_request *req,
                                        const char *str, size_t len, int64_t now_ms,
                                        ns_cookie_status *status);

/* Deletes cookies: domain NULL or a domain (lower-case, no leading dot) that
 * selects cookies whose domain is it or a subdomain of it; name NULL or an
 * exact name. Both NULL: all. *n (may be NULL) gets the count. Listeners see
 * NS_COOKIE_REMOVED. */
netstash_error ns_cookie_jar_delete(ns_cookie_jar *jar, const char *domain, const char *name,
                                    size_t *n);
/* Removes expired cookies (NS_COOKIE_EXPIRED); *n (may be NULL) the count. */
netstash_error ns_cookie_jar_sweep(ns_cookie_jar *jar, int64_t now_ms, size_t *n);
/* Writes pending changes in one store transaction (no-op for memory jars). */
netstash_error ns_cookie_jar_flush(ns_cookie_jar *jar);

/* Calls fn for every cookie (unspecified order); fn returns nonzero to stop.
 * fn must not change the jar. */
void ns_cookie_jar_foreach(ns_cookie_jar *jar, int (*fn)(const ns_cookie *c, void *ud), void *ud);

/* Netscape cookies.txt as curl reads and writes it: tab-separated
 * domain, include-subdomains, path, secure, expires (s, 0 = session), name,
 * value; "#HttpOnly_" before the domain marks HttpOnly; '#' lines otherwise
 * comments. Import trusts the file (no request context) but applies the
 * cookie rules that do not need one: syntax and size limits, public suffixes,
 * prefixes, limits; expired lines are skipped. Export writes every
 * unexpired unpartitioned cookie (partitioned ones have no representation;
 * *skipped counts them). */
netstash_error ns_cookie_jar_import_netscape(ns_cookie_jar *jar, const char *text, size_t len,
                                             int64_t now_ms, size_t *imported, size_t *skipped);
netstash_error ns_cookie_jar_export_netscape(ns_cookie_jar *jar, int64_t now_ms, ns_buf *out,
                                             size_t *skipped);

/* Nonzero when u is a secure context for cookies: https, or a loopback host
 * (localhost, *.localhost, 127.0.0.0/8, ::1) as browsers treat them. */
int ns_cookie_url_secure(const ns_url *u);

/* Frees the embedder hooks of a context (lib/cookie/api.c). */
struct netstash_ctx;
void ns_cookie_hooks_free(struct netstash_ctx *ctx);

#endif /* NS_COOKIE_JAR_H */
