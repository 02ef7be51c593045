/*
 * jar_int.h — what jar.c (the storage model) and persist.c (the store and
 * cookies.txt) share. Private to lib/cookie.
 */
#ifndef NS_COOKIE_JAR_INT_H
#define NS_COOKIE_JAR_INT_H

#include "ns_setup.h"

#include "cookie/jar.h"
#include "core/map.h"

#define NS_COOKIE_HOST_MAX 253
/* registrable domains cached per jars object (cleared when full) */
#define NS_COOKIE_SITE_CACHE_MAX 4096
/* a last-access time is written back to the store once it is this much
 * newer than the stored one (Chromium's kLastAccessThreshold, 60 s) */
#define NS_COOKIE_ACCESS_WRITE_MS 60000

struct psl_ctx_st;

struct ns_cookie_jars {
  const ns_mem *mem;
  struct ns_store *store;
  struct psl_ctx_st *psl;
  ns_map jars;       /* name -> ns_cookie_jar * */
  ns_map site_cache; /* host -> offset of its registrable domain + 1 */
};

/* cookies with one domain (host-only and domain cookies, every partition) */
typedef struct ns_cookie_bucket {
  ns_list cookies;
  size_t n;
} ns_cookie_bucket;

/* cookies counted together for the per-domain limit: one registrable domain
 * (within one partition) */
typedef struct ns_cookie_group {
  ns_list cookies;
  size_t n;
  size_t key_len;
  char key[]; /* [partition "\n"] registrable domain */
} ns_cookie_group;

struct ns_cookie_jar {
  ns_cookie_jars *jars;
  const ns_mem *mem;
  char name[NS_COOKIE_JAR_NAME_MAX + 1];
  size_t name_len;
  unsigned flags;
  int persistent; /* has a store and is not a memory jar */
  int auto_flush;
  int dirty_lost; /* a change could not be recorded: rewrite all */
  ns_map buckets; /* domain -> bucket */
  ns_map groups;  /* group key -> group */
  ns_list all;
  size_t count;
  uint64_t next_seq;
  ns_cookie_limits limits;
  ns_cookie_listener_fn listener;
  void *listener_ud;
  ns_cookie_policy_fn policy;
  void *policy_ud;
  ns_map dirty;   /* store key -> ns_cookie * to write, or the tombstone */
  ns_buf keybuf;
  ns_cookie **scratch;
  size_t scratch_cap;
};

/* jar.c */
ns_span ns_cookie_url_path(const ns_url *u);
size_t ns_cookie_canon_host(const ns_url *u, char *buf);
const char *ns_cookie_reg_domain(ns_cookie_jars *jars, const char *host, size_t hl, int is_ip,
                                 size_t *len);
ns_cookie *ns_cookie_new_(const ns_mem *mem, ns_span name, ns_span value, const char *domain,
                          size_t dl, ns_span path, const char *partition, size_t pl);
netstash_error ns_cookie_jar_insert_(ns_cookie_jar *jar, ns_cookie *c, int script,
                                     int64_t now_ms, ns_cookie_status *status);
void ns_cookie_jar_remove_(ns_cookie_jar *jar, ns_cookie *c, ns_cookie_change why);
ns_cookie_status ns_cookie_check_prefixes_(const ns_cookie *c, int path_attr_present);
netstash_error ns_cookie_jar_attach_loaded_(ns_cookie_jar *jar, ns_cookie *c);
void ns_cookie_jar_free_(ns_cookie_jar *jar);

/* persist.c */
netstash_error ns_cookie_jar_load_(ns_cookie_jar *jar, int64_t now_ms);
/* Records that c's stored copy must be written (removed 0) or deleted
 * (removed 1) at the next flush. Never fails: without memory the jar is
 * rewritten whole at the next flush. */
void ns_cookie_mark_dirty_(ns_cookie_jar *jar, const ns_cookie *c, int removed);
void ns_cookie_mark_dirty_lost_(ns_cookie_jar *jar);
/* The record form of a cookie (exposed for tests and the fuzzer). */
netstash_error ns_cookie_encode_(const ns_cookie *c, ns_buf *out);
/* NULL when the record is malformed (or no memory: *nomem set). */
ns_cookie *ns_cookie_decode_(const ns_mem *mem, const uint8_t *p, size_t len, int *nomem);

#endif /* NS_COOKIE_JAR_INT_H */
