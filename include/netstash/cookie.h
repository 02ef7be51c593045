/*
 * netstash — cookie jars (RFC 6265bis) for the embedder and tools.
 *
 * Fetches use the jars on their own (netstash_request_set_cookie_jar,
 * netstash_request_set_cookies, netstash_request_set_site_for_cookies). This
 * header is the rest: the script view (document.cookie), listing, deleting,
 * import/export of curl's cookies.txt, a change listener and a policy hook.
 *
 * Thread rule: every function may be called from any thread; the jars of a
 * context are guarded by one lock, taken by these calls and by fetches on the
 * loop thread. Listener and policy callbacks run under that lock, on the
 * thread that changed or read the jar: they must not call netstash_cookie*
 * functions. A jar is created on first use; it is persistent in the profile
 * store when the context has a profile, unless opened private.
 */
#ifndef NETSTASH_COOKIE_H
#define NETSTASH_COOKIE_H

#include "common.h"

#ifdef __cplusplus
extern "C" {
#endif

/* A cookie, valid during the callback that hands it out. */
typedef struct netstash_cookie netstash_cookie;

NETSTASH_EXTERN const char *netstash_cookie_name(const netstash_cookie *c);
NETSTASH_EXTERN const char *netstash_cookie_value(const netstash_cookie *c);
NETSTASH_EXTERN const char *netstash_cookie_domain(const netstash_cookie *c);
NETSTASH_EXTERN const char *netstash_cookie_path(const netstash_cookie *c);
/* CHIPS partition (top-level site), NULL when unpartitioned. */
NETSTASH_EXTERN const char *netstash_cookie_partition(const netstash_cookie *c);
/* Expiry in ms since the epoch; -1 for a session cookie. */
NETSTASH_EXTERN int64_t netstash_cookie_expires_ms(const netstash_cookie *c);

#define NETSTASH_COOKIE_SECURE (1u << 0)
#define NETSTASH_COOKIE_HTTP_ONLY (1u << 1)
#define NETSTASH_COOKIE_HOST_ONLY (1u << 2)
#define NETSTASH_COOKIE_PERSISTENT (1u << 3)
NETSTASH_EXTERN uint32_t netstash_cookie_flags(const netstash_cookie *c);

typedef enum netstash_same_site {
  NETSTASH_SAME_SITE_UNSET = 0, /* enforced as Lax */
  NETSTASH_SAME_SITE_NONE = 1,
  NETSTASH_SAME_SITE_LAX = 2,
  NETSTASH_SAME_SITE_STRICT = 3
} netstash_same_site;
NETSTASH_EXTERN netstash_same_site netstash_cookie_same_site(const netstash_cookie *c);

/* Opens (creates) a jar. private_jar != 0: never persisted (private
 * browsing). An already open jar is returned as it is. jar: 1..64 bytes. */
NETSTASH_EXTERN netstash_error netstash_cookie_jar_open(netstash_ctx *ctx, const char *jar,
                                                        int private_jar);

/* Replaces the public suffix list of the context's jars with the file at
 * path (the publicsuffix.org .dat text, or libpsl's DAFSA form). Default:
 * Debian's publicsuffix data, else libpsl's built-in list. NETSTASH_E_IO when
 * the file cannot be loaded (the old list stays). */
NETSTASH_EXTERN netstash_error netstash_cookie_load_public_suffixes(netstash_ctx *ctx,
                                                                    const char *path);
/* Removes expired cookies of a jar now (they are also dropped when met);
 * *n (may be NULL) receives the count. */
NETSTASH_EXTERN netstash_error netstash_cookie_sweep(netstash_ctx *ctx, const char *jar,
                                                     size_t *n);

/* document.cookie for a document at url, whose top-level site is
 * top_level_url (NULL: the document is top-level): HttpOnly cookies
 * excluded. *out is NUL-terminated; free it with netstash_free. */
NETSTASH_EXTERN netstash_error netstash_cookie_script_get(netstash_ctx *ctx, const char *jar,
                                                          const char *url,
                                                          const char *top_level_url, char **out);
/* document.cookie = str. *stored (may be NULL) is 1 when the cookie was
 * stored (a rejected cookie is not an error, as in browsers). */
NETSTASH_EXTERN netstash_error netstash_cookie_script_set(netstash_ctx *ctx, const char *jar,
                                                          const char *url,
                                                          const char *top_level_url,
                                                          const char *str, int *stored);

/* Calls fn for every cookie of the jar (unspecified order). */
typedef void (*netstash_cookie_visit_cb)(const netstash_cookie *c, void *user_data);
NETSTASH_EXTERN netstash_error netstash_cookie_list(netstash_ctx *ctx, const char *jar,
                                                    netstash_cookie_visit_cb fn, void *user_data);

/* Deletes the cookies of domain (and its subdomains; NULL: any) named name
 * (NULL: any). *n (may be NULL) receives the count. */
NETSTASH_EXTERN netstash_error netstash_cookie_delete(netstash_ctx *ctx, const char *jar,
                                                      const char *domain, const char *name,
                                                      size_t *n);

/* Netscape cookies.txt, as curl reads and writes it. Import applies the
 * rules that need no request (syntax, sizes, public suffixes, prefixes,
 * limits); *imported / *skipped may be NULL. Export: *text (free with
 * netstash_free), partitioned cookies skipped (no representation). */
NETSTASH_EXTERN netstash_error netstash_cookie_import(netstash_ctx *ctx, const char *jar,
                                                      const char *text, size_t len,
                                                      size_t *imported, size_t *skipped);
NETSTASH_EXTERN netstash_error netstash_cookie_export(netstash_ctx *ctx, const char *jar,
                                                      char **text, size_t *len);

typedef enum netstash_cookie_change {
  NETSTASH_COOKIE_ADDED = 0,
  NETSTASH_COOKIE_OVERWRITTEN = 1,
  NETSTASH_COOKIE_REMOVED = 2,
  NETSTASH_COOKIE_EXPIRED = 3,
  NETSTASH_COOKIE_EVICTED = 4
} netstash_cookie_change;
typedef void (*netstash_cookie_listener_cb)(const char *jar, const netstash_cookie *c,
                                            netstash_cookie_change change, void *user_data);
/* One listener per jar (NULL removes it). */
NETSTASH_EXTERN netstash_error netstash_cookie_set_listener(netstash_ctx *ctx, const char *jar,
                                                            netstash_cookie_listener_cb cb,
                                                            void *user_data);

typedef enum netstash_cookie_op {
  NETSTASH_COOKIE_OP_SET = 0,        /* from a Set-Cookie response header */
  NETSTASH_COOKIE_OP_SEND = 1,       /* into a Cookie request header */
  NETSTASH_COOKIE_OP_SCRIPT_SET = 2,
  NETSTASH_COOKIE_OP_SCRIPT_GET = 3
} netstash_cookie_op;
/* The embedder's policy, asked per cookie: return nonzero to block it.
 * url is the request's (NULL for cookies.txt imports); cross_site is 1 for a
 * third-party context (e.g. to block third-party cookies). For the SET and
 * SCRIPT_SET ops the candidate may be modified with netstash_cookie_modify_*
 * before it is stored (the RFC's storage checks still apply afterwards, so a
 * policy cannot weaken them); for SEND and SCRIPT_GET those calls fail. */
typedef int (*netstash_cookie_policy_cb)(const char *jar, netstash_cookie_op op,
                                         netstash_cookie *c, const char *url, int cross_site,
                                         void *user_data);
/* Inside a policy callback (SET/SCRIPT_SET): expiry in ms since the epoch,
 * or -1 to make it a session cookie. */
NETSTASH_EXTERN netstash_error netstash_cookie_modify_expiry(netstash_cookie *c,
                                                             int64_t expires_ms);
/* Sets and clears NETSTASH_COOKIE_SECURE / NETSTASH_COOKIE_HTTP_ONLY. */
NETSTASH_EXTERN netstash_error netstash_cookie_modify_flags(netstash_cookie *c, uint32_t set,
                                                            uint32_t clear);
NETSTASH_EXTERN netstash_error netstash_cookie_modify_same_site(netstash_cookie *c,
                                                                netstash_same_site s);
NETSTASH_EXTERN netstash_error netstash_cookie_set_policy(netstash_ctx *ctx, const char *jar,
                                                          netstash_cookie_policy_cb cb,
                                                          void *user_data);

#ifdef __cplusplus
}
#endif
#endif /* NETSTASH_COOKIE_H */
