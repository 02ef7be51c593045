/*
 * jar.c — cookie jars: storage model (RFC 6265bis §5.7), retrieval (§5.8.3),
 * SameSite, CHIPS partitions, limits and eviction, listeners and policy.
 * Persistence and cookies.txt live in persist.c (jar_int.h joins them).
 */
#include "ns_setup.h"

#include <libpsl.h>
#include <stdlib.h>

#include "cookie/jar_int.h"
#include "core/headers.h"
#include "core/reader.h"

/* ------------------------------------------------------------ statuses */

const char *ns_cookie_status_text(ns_cookie_status s) {
  static const char *const k[] = {
#define NS_COOKIE_X(n, t) t,
      NS_COOKIE_STATUS_MAP(NS_COOKIE_X)
#undef NS_COOKIE_X
  };
  return (unsigned)s < NS_ARRAY_LEN(k) ? k[s] : "unknown";
}

/* ------------------------------------------------------------ URLs */

int ns_cookie_url_secure(const ns_url *u) {
  size_t hl;
  if (!u || !u->host)
    return 0;
  if (u->scheme && ns_ascii_casecmp(u->scheme, "https") == 0)
    return 1;
  hl = strlen(u->host);
  if (ns_ascii_casecmp(u->host, "localhost") == 0 ||
      (hl > 10 && ns_ascii_casecmp(u->host + hl - 10, ".localhost") == 0))
    return 1;
  if (u->host_is_ip && !u->ipv6 && strncmp(u->host, "127.", 4) == 0)
    return 1;
  return u->host_is_ip && u->ipv6 && strcmp(u->host, "::1") == 0;
}

/* The path of a normalised absolute URL (curl's form): after the authority,
 * up to '?' or '#'. "/" when empty. */
ns_span ns_cookie_url_path(const ns_url *u) {
  ns_reader r;
  int c;
  size_t start;
  ns_reader_init(&r, u->url, u->url ? strlen(u->url) : 0);
  while (!ns_reader_eof(&r) && !ns_reader_skip_lit_ci(&r, "://"))
    ns_reader_skip_char(&r, ns_reader_peek(&r));
  while ((c = ns_reader_peek(&r)) >= 0 && c != '/' && c != '?' && c != '#')
    ns_reader_skip_char(&r, c);
  start = r.pos;
  while ((c = ns_reader_peek(&r)) >= 0 && c != '?' && c != '#')
    ns_reader_skip_char(&r, c);
  if (r.pos == start)
    return ns_span_make("/", 1);
  return ns_span_make(r.p + start, r.pos - start);
}

/* Lower-cased host into buf (NS_COOKIE_HOST_MAX + 1 bytes): length, or 0
 * when absent or too long. */
size_t ns_cookie_canon_host(const ns_url *u, char *buf) {
  size_t i, n;
  if (!u || !u->host)
    return 0;
  n = strlen(u->host);
  if (n == 0 || n > NS_COOKIE_HOST_MAX)
    return 0;
  for (i = 0; i < n; i++)
    buf[i] = ns_ascii_lower(u->host[i]);
  buf[n] = 0;
  return n;
}

/* ------------------------------------------------------------ sites (PSL) */

/* values are offsets, not allocations */
static void site_cache_clear(ns_cookie_jars *jars) {
  ns_map_free(&jars->site_cache);
  ns_map_init(&jars->site_cache, jars->mem);
}

int ns_cookie_jars_is_public_suffix(ns_cookie_jars *jars, const char *domain) {
  if (jars->psl)
    return psl_is_public_suffix2(jars->psl, domain, PSL_TYPE_ANY) != 0;
  return strchr(domain, '.') == NULL; /* no list: minimal rule */
}

/* The registrable domain (eTLD+1) of a lower-case host: a pointer into host
 * (cached), or host itself when it has none (a public suffix, an IP).
 * *len receives its length. Never fails (a failed cache insert only costs
 * another libpsl call next time). */
const char *ns_cookie_reg_domain(ns_cookie_jars *jars, const char *host, size_t hl,
                                 int is_ip, size_t *len) {
  void *v;
  const char *rd;
  size_t off;
  *len = hl;
  if (is_ip)
    return host;
  if (ns_map_find(&jars->site_cache, host, hl, &v)) {
    off = (size_t)(uintptr_t)v - 1;
    *len = hl - off;
    return host + off;
  }
  if (jars->psl) {
    rd = psl_registrable_domain(jars->psl, host);
  } else {
    /* minimal rule: the last two labels */
    const char *p = host + hl, *dot = NULL;
    int dots = 0;
    while (p > host && dots < 2) {
      p--;
      if (*p == '.') {
        dots++;
        dot = p;
      }
    }
    rd = dots < 2 ? (dots == 1 ? host : NULL) : dot + 1;
  }
  off = rd ? (size_t)(rd - host) : 0;
  if (off > hl)
    off = 0;
  if (ns_map_len(&jars->site_cache) >= NS_COOKIE_SITE_CACHE_MAX)
    site_cache_clear(jars);
  /* the value is the offset + 1 (never NULL) */
  (void)ns_map_put(&jars->site_cache, host, hl, (void *)(uintptr_t)(off + 1), NULL);
  *len = hl - off;
  return host + off;
}

static int same_site_url(ns_cookie_jars *jars, const ns_url *a, const ns_url *b) {
  char ha[NS_COOKIE_HOST_MAX + 1], hb[NS_COOKIE_HOST_MAX + 1];
  size_t la, lb, ra, rb;
  const char *pa, *pb;
  if (!a || !b || !a->scheme || !b->scheme || ns_ascii_casecmp(a->scheme, b->scheme) != 0)
    return 0; /* schemeful same-site */
  la = ns_cookie_canon_host(a, ha);
  lb = ns_cookie_canon_host(b, hb);
  if (!la || !lb)
    return 0;
  pa = ns_cookie_reg_domain(jars, ha, la, a->host_is_ip, &ra);
  pb = ns_cookie_reg_domain(jars, hb, lb, b->host_is_ip, &rb);
  return ra == rb && memcmp(pa, pb, ra) == 0;
}

int ns_cookie_jars_cross_site(ns_cookie_jars *jars, const ns_cookie_request *req) {
  if (!req->site_for_cookies || !same_site_url(jars, req->url, req->site_for_cookies))
    return 1;
  return req->initiator && !same_site_url(jars, req->url, req->initiator);
}

netstash_error ns_cookie_jars_site(ns_cookie_jars *jars, const ns_url *u, ns_buf *out) {
  char h[NS_COOKIE_HOST_MAX + 1];
  size_t hl = ns_cookie_canon_host(u, h), rl;
  const char *rd;
  netstash_error rv;
  if (!hl || !u->scheme)
    return NETSTASH_E_INVALID_ARGUMENT;
  rd = ns_cookie_reg_domain(jars, h, hl, u->host_is_ip, &rl);
  if ((rv = ns_buf_append_str(out, u->scheme)) != NETSTASH_OK ||
      (rv = ns_buf_append(out, "://", 3)) != NETSTASH_OK ||
      (u->ipv6 && (rv = ns_buf_append(out, "[", 1)) != NETSTASH_OK) ||
      (rv = ns_buf_append(out, rd, rl)) != NETSTASH_OK ||
      (u->ipv6 && (rv = ns_buf_append(out, "]", 1)) != NETSTASH_OK))
    return rv;
  return NETSTASH_OK;
}

/* ------------------------------------------------------------ jars */

netstash_error ns_cookie_jars_new(const ns_mem *mem, struct ns_store *store,
                                  ns_cookie_jars **out) {
  ns_cookie_jars *j;
  *out = NULL;
  if (!mem)
    mem = ns_mem_default();
  j = ns_calloc(mem, 1, sizeof(*j));
  if (!j)
    return NETSTASH_E_NOMEM;
  j->mem = mem;
  j->store = store;
  ns_map_init(&j->jars, mem);
  ns_map_init(&j->site_cache, mem);
  /* Debian's publicsuffix data (or a newer libpsl DAFSA), else built in */
  j->psl = psl_latest(NULL);
  if (!j->psl)
    j->psl = (psl_ctx_t *)psl_builtin();
  *out = j;
  return NETSTASH_OK;
}

void ns_cookie_jars_del(ns_cookie_jars *jars) {
  size_t it = 0;
  void *v;
  if (!jars)
    return;
  while (ns_map_next(&jars->jars, &it, NULL, NULL, &v))
    ns_cookie_jar_free_(v);
  ns_map_free(&jars->jars);
  site_cache_clear(jars);
  ns_map_free(&jars->site_cache);
  psl_free(jars->psl); /* a no-op for the built-in list */
  ns_free(jars->mem, jars);
}

netstash_error ns_cookie_jars_load_psl(ns_cookie_jars *jars, const char *path) {
  psl_ctx_t *p;
  if (!path)
    return NETSTASH_E_INVALID_ARGUMENT;
  p = psl_load_file(path);
  if (!p || psl_suffix_count(p) == 0) {
    psl_free(p);
    return NETSTASH_E_IO;
  }
  psl_free(jars->psl);
  jars->psl = p;
  site_cache_clear(jars);
  return NETSTASH_OK;
}

ns_cookie_jar *ns_cookie_jars_get(ns_cookie_jars *jars, const char *name) {
  return name ? ns_map_get(&jars->jars, name, strlen(name)) : NULL;
}

netstash_error ns_cookie_jars_open(ns_cookie_jars *jars, const char *name, unsigned flags,
                                   int64_t now_ms, ns_cookie_jar **out) {
  ns_cookie_jar *jar;
  size_t nl;
  netstash_error rv;
  *out = NULL;
  if (!name || (nl = strlen(name)) == 0 || nl > NS_COOKIE_JAR_NAME_MAX)
    return NETSTASH_E_INVALID_ARGUMENT;
  if ((jar = ns_map_get(&jars->jars, name, nl)) != NULL) {
    *out = jar;
    return NETSTASH_OK;
  }
  jar = ns_calloc(jars->mem, 1, sizeof(*jar));
  if (!jar)
    return NETSTASH_E_NOMEM;
  jar->jars = jars;
  jar->mem = jars->mem;
  memcpy(jar->name, name, nl);
  jar->name_len = nl;
  jar->flags = flags;
  jar->persistent = jars->store && !(flags & NS_COOKIE_JAR_MEMORY);
  jar->auto_flush = 1;
  jar->next_seq = 1;
  jar->limits.per_domain_max = NS_COOKIE_PER_DOMAIN_MAX;
  jar->limits.per_domain_purge_to = NS_COOKIE_PER_DOMAIN_PURGE;
  jar->limits.total_max = NS_COOKIE_TOTAL_MAX;
  jar->limits.total_purge_to = NS_COOKIE_TOTAL_PURGE;
  ns_map_init(&jar->buckets, jar->mem);
  ns_map_init(&jar->groups, jar->mem);
  ns_map_init(&jar->dirty, jar->mem);
  ns_list_init(&jar->all);
  ns_buf_init(&jar->keybuf, jar->mem, 8192);
  if (jar->persistent && (rv = ns_cookie_jar_load_(jar, now_ms)) != NETSTASH_OK)
    goto fail;
  if ((rv = ns_map_put(&jars->jars, name, nl, jar, NULL)) != NETSTASH_OK)
    goto fail;
  *out = jar;
  return NETSTASH_OK;
fail:
  ns_cookie_jar_free_(jar);
  return rv;
}

netstash_error ns_cookie_jars_remove(ns_cookie_jars *jars, const char *name, int wipe) {
  ns_cookie_jar *jar = ns_cookie_jars_get(jars, name);
  netstash_error rv = NETSTASH_OK;
  if (!jar)
    return NETSTASH_E_NOT_FOUND;
  if (wipe) {
    ns_cookie_listener_fn fn = jar->listener;
    int af = jar->auto_flush;
    jar->listener = NULL;
    jar->auto_flush = 0;
    rv = ns_cookie_jar_delete(jar, NULL, NULL, NULL);
    jar->listener = fn;
    jar->auto_flush = af;
  }
  if (rv == NETSTASH_OK && jar->persistent)
    rv = ns_cookie_jar_flush(jar);
  if (rv != NETSTASH_OK)
    return rv;
  ns_map_remove(&jars->jars, name, strlen(name), NULL);
  ns_cookie_jar_free_(jar);
  return NETSTASH_OK;
}

/* ------------------------------------------------------------ one jar */

void ns_cookie_jar_free_(ns_cookie_jar *jar) {
  ns_list *pos, *tmp;
  size_t it = 0;
  void *v;
  if (!jar)
    return;
  ns_list_foreach_safe(pos, tmp, &jar->all) {
    ns_cookie *c = ns_list_entry(pos, ns_cookie, all_link);
    ns_free(jar->mem, c);
  }
  while (ns_map_next(&jar->buckets, &it, NULL, NULL, &v))
    ns_free(jar->mem, v);
  it = 0;
  while (ns_map_next(&jar->groups, &it, NULL, NULL, &v))
    ns_free(jar->mem, v);
  ns_map_free(&jar->buckets);
  ns_map_free(&jar->groups);
  ns_map_free(&jar->dirty);
  ns_buf_free(&jar->keybuf);
  ns_free(jar->mem, jar->scratch);
  ns_free(jar->mem, jar);
}

const char *ns_cookie_jar_name(const ns_cookie_jar *jar) { return jar->name; }
size_t ns_cookie_jar_count(const ns_cookie_jar *jar) { return jar->count; }

void ns_cookie_jar_set_listener(ns_cookie_jar *jar, ns_cookie_listener_fn fn, void *ud) {
  jar->listener = fn;
  jar->listener_ud = ud;
}

void ns_cookie_jar_set_policy(ns_cookie_jar *jar, ns_cookie_policy_fn fn, void *ud) {
  jar->policy = fn;
  jar->policy_ud = ud;
}

netstash_error ns_cookie_jar_set_limits(ns_cookie_jar *jar, const ns_cookie_limits *l) {
  ns_cookie_limits n = jar->limits;
  if (l->per_domain_max)
    n.per_domain_max = l->per_domain_max;
  if (l->per_domain_purge_to)
    n.per_domain_purge_to = l->per_domain_purge_to;
  if (l->total_max)
    n.total_max = l->total_max;
  if (l->total_purge_to)
    n.total_purge_to = l->total_purge_to;
  if (n.per_domain_purge_to >= n.per_domain_max || n.total_purge_to >= n.total_max)
    return NETSTASH_E_INVALID_ARGUMENT;
  jar->limits = n;
  return NETSTASH_OK;
}

void ns_cookie_jar_set_auto_flush(ns_cookie_jar *jar, int on) { jar->auto_flush = on != 0; }

static void notify(ns_cookie_jar *jar, const ns_cookie *c, ns_cookie_change ch) {
  if (jar->listener)
    jar->listener(jar, c, ch, jar->listener_ud);
}

/* Room for n pointers in the scratch array. */
static netstash_error scratch_reserve(ns_cookie_jar *jar, size_t n) {
  ns_cookie **p;
  size_t cap, bytes;
  if (n <= jar->scratch_cap)
    return NETSTASH_OK;
  cap = jar->scratch_cap ? jar->scratch_cap : 64;
  while (cap < n)
    cap *= 2;
  if (!ns_mul_size(cap, sizeof(*p), &bytes))
    return NETSTASH_E_NOMEM;
  p = ns_realloc(jar->mem, jar->scratch, bytes);
  if (!p)
    return NETSTASH_E_NOMEM;
  jar->scratch = p;
  jar->scratch_cap = cap;
  return NETSTASH_OK;
}

/* The group key of a cookie domain: [partition "\n"] registrable domain. */
static netstash_error group_key(ns_cookie_jar *jar, const char *domain, size_t dl,
                                const char *partition, size_t pl, ns_buf *out) {
  const char *rd;
  size_t rl;
  netstash_error rv;
  int is_ip = ns_host_is_ip(domain, NULL);
  ns_buf_reset(out);
  rd = ns_cookie_reg_domain(jar->jars, domain, dl, is_ip, &rl);
  if (partition && ((rv = ns_buf_append(out, partition, pl)) != NETSTASH_OK ||
                    (rv = ns_buf_append(out, "\n", 1)) != NETSTASH_OK))
    return rv;
  return ns_buf_append(out, rd, rl);
}

/* Unlinks and frees c (no notification, no dirty mark). */
static void unlink_cookie(ns_cookie_jar *jar, ns_cookie *c) {
  ns_cookie_bucket *b = c->bucket;
  ns_cookie_group *g = c->group;
  ns_list_remove(&c->bucket_link);
  ns_list_remove(&c->group_link);
  ns_list_remove(&c->all_link);
  jar->count--;
  if (--b->n == 0) {
    ns_map_remove(&jar->buckets, c->domain, c->domain_len, NULL);
    ns_free(jar->mem, b);
  }
  if (--g->n == 0) {
    ns_map_remove(&jar->groups, g->key, g->key_len, NULL);
    ns_free(jar->mem, g);
  }
}

/* Removes c: notifies, marks the stored copy for deletion, frees it. */
void ns_cookie_jar_remove_(ns_cookie_jar *jar, ns_cookie *c, ns_cookie_change why) {
  unlink_cookie(jar, c);
  notify(jar, c, why);
  ns_cookie_mark_dirty_(jar, c, 1);
  ns_free(jar->mem, c);
}

/* Finds or creates the bucket and group for c (nothing linked yet). */
static netstash_error attach_prepare(ns_cookie_jar *jar, ns_cookie *c) {
  ns_cookie_bucket *b;
  ns_cookie_group *g;
  netstash_error rv;
  ns_buf key;
  b = ns_map_get(&jar->buckets, c->domain, c->domain_len);
  if (!b) {
    b = ns_calloc(jar->mem, 1, sizeof(*b));
    if (!b)
      return NETSTASH_E_NOMEM;
    ns_list_init(&b->cookies);
    if ((rv = ns_map_put(&jar->buckets, c->domain, c->domain_len, b, NULL)) != NETSTASH_OK) {
      ns_free(jar->mem, b);
      return rv;
    }
  }
  c->bucket = b;
  ns_buf_init(&key, jar->mem, 2048);
  rv = group_key(jar, c->domain, c->domain_len, c->partition, c->partition_len, &key);
  if (rv != NETSTASH_OK)
    goto done;
  g = ns_map_get(&jar->groups, key.data, key.len);
  if (!g) {
    size_t sz;
    if (!ns_add_size(sizeof(*g), key.len + 1, &sz)) {
      rv = NETSTASH_E_NOMEM;
      goto done;
    }
    g = ns_calloc(jar->mem, 1, sz);
    if (!g) {
      rv = NETSTASH_E_NOMEM;
      goto done;
    }
    ns_list_init(&g->cookies);
    g->key_len = key.len;
    memcpy(g->key, key.data, key.len);
    if ((rv = ns_map_put(&jar->groups, g->key, g->key_len, g, NULL)) != NETSTASH_OK) {
      ns_free(jar->mem, g);
      goto done;
    }
  }
  c->group = g;
  rv = NETSTASH_OK;
done:
  ns_buf_free(&key);
  if (rv != NETSTASH_OK && b->n == 0) {
    ns_map_remove(&jar->buckets, c->domain, c->domain_len, NULL);
    ns_free(jar->mem, b);
    c->bucket = NULL;
  }
  return rv;
}

static void attach(ns_cookie_jar *jar, ns_cookie *c) {
  ns_list_insert_tail(&c->bucket->cookies, &c->bucket_link);
  c->bucket->n++;
  ns_list_insert_tail(&c->group->cookies, &c->group_link);
  c->group->n++;
  ns_list_insert_tail(&jar->all, &c->all_link);
  jar->count++;
}

/* The cookie with c's key in its bucket (§5.7 step 22: same name, domain,
 * host-only-flag, path; and partition). */
static ns_cookie *find_same(ns_cookie_bucket *b, const ns_cookie *c) {
  ns_list *pos;
  if (!b)
    return NULL;
  for (pos = b->cookies.next; pos != &b->cookies; pos = pos->next) {
    ns_cookie *o = ns_list_entry(pos, ns_cookie, bucket_link);
    if (o->host_only == c->host_only && o->name_len == c->name_len &&
        o->path_len == c->path_len && o->partition_len == c->partition_len &&
        memcmp(o->name, c->name, c->name_len) == 0 &&
        memcmp(o->path, c->path, c->path_len) == 0 &&
        (!c->partition_len || memcmp(o->partition, c->partition, c->partition_len) == 0) &&
        (o->partition == NULL) == (c->partition == NULL))
      return o;
  }
  return NULL;
}

/* §5.7 step 15, "leave secure cookies alone": a Secure cookie with the same
 * name whose domain domain-matches c's (or vice versa) and whose path c's
 * path path-matches. They share c's group (same registrable domain). */
static int shadows_secure(ns_cookie_jar *jar, const ns_cookie *c) {
  ns_list *pos;
  if (!c->group)
    return 0;
  (void)jar;
  for (pos = c->group->cookies.next; pos != &c->group->cookies; pos = pos->next) {
    ns_cookie *o = ns_list_entry(pos, ns_cookie, group_link);
    if (!o->secure || o->name_len != c->name_len || memcmp(o->name, c->name, c->name_len))
      continue;
    if (!ns_cookie_domain_match(o->domain, o->domain_len, 0, c->domain, c->domain_len) &&
        !ns_cookie_domain_match(c->domain, c->domain_len, 0, o->domain, o->domain_len))
      continue;
    if (ns_cookie_path_match(ns_span_make(c->path, c->path_len), o->path, o->path_len))
      return 1;
  }
  return 0;
}

/* Eviction order: non-secure before secure, then least recently accessed,
 * then oldest. */
static int evict_cmp(const void *a, const void *b) {
  const ns_cookie *x = *(ns_cookie *const *)a, *y = *(ns_cookie *const *)b;
  if (x->secure != y->secure)
    return x->secure ? 1 : -1;
  if (x->last_access_ms != y->last_access_ms)
    return x->last_access_ms < y->last_access_ms ? -1 : 1;
  return x->seq < y->seq ? -1 : x->seq > y->seq;
}

/* Purges a list (group or all) down to `to` entries: expired first, then in
 * evict_cmp order. The scratch array holds jar->count pointers already. */
static void purge(ns_cookie_jar *jar, ns_list *head, size_t link_off, size_t *n, size_t to,
                  int64_t now_ms) {
  ns_list *pos, *tmp;
  size_t k = 0, i;
  for (pos = head->next, tmp = pos->next; pos != head && *n > to; pos = tmp, tmp = pos->next) {
    ns_cookie *c = (ns_cookie *)(void *)((char *)pos - link_off);
    if (c->expiry_ms <= now_ms)
      ns_cookie_jar_remove_(jar, c, NS_COOKIE_EXPIRED);
  }
  if (*n <= to)
    return;
  for (pos = head->next; pos != head && k < jar->scratch_cap; pos = pos->next)
    jar->scratch[k++] = (ns_cookie *)(void *)((char *)pos - link_off);
  qsort(jar->scratch, k, sizeof(*jar->scratch), evict_cmp);
  for (i = 0; i < k && *n > to; i++)
    ns_cookie_jar_remove_(jar, jar->scratch[i], NS_COOKIE_EVICTED);
}

/* After inserting c: the per-domain then the global limit. The group
 * struct may be freed by the purge only if it empties, which cannot happen
 * while purge_to > 0; the group pointer is re-read through a cookie count. */
static void enforce_limits(ns_cookie_jar *jar, ns_cookie_group *g, int64_t now_ms) {
  if (g->n > jar->limits.per_domain_max) {
    size_t to = jar->limits.per_domain_purge_to;
    /* g->n is updated by unlink_cookie as cookies go */
    purge(jar, &g->cookies, offsetof(ns_cookie, group_link), &g->n, to, now_ms);
  }
  if (jar->count > jar->limits.total_max)
    purge(jar, &jar->all, offsetof(ns_cookie, all_link), &jar->count,
          jar->limits.total_purge_to, now_ms);
}

/* Inserts a fully validated candidate (§5.7 steps 22-24): replaces the
 * cookie with its key (keeping the old creation time), or, when already
 * expired, only deletes that one. Takes ownership of c in every case. */
netstash_error ns_cookie_jar_insert_(ns_cookie_jar *jar, ns_cookie *c, int script,
                                     int64_t now_ms, ns_cookie_status *status) {
  ns_cookie *old;
  netstash_error rv;
  ns_cookie_bucket *b = ns_map_get(&jar->buckets, c->domain, c->domain_len);
  old = find_same(b, c);
  if (old && script && old->http_only) {
    *status = NS_COOKIE_REJ_OVERWRITE_HTTP_ONLY; /* step 22.2 */
    ns_free(jar->mem, c);
    return NETSTASH_OK;
  }
  if (c->expiry_ms <= now_ms) {
    /* inserted then removed as expired (step 24): a deletion */
    if (old)
      ns_cookie_jar_remove_(jar, old, NS_COOKIE_REMOVED);
    *status = NS_COOKIE_DELETED;
    ns_free(jar->mem, c);
    return NETSTASH_OK;
  }
  if ((rv = scratch_reserve(jar, jar->count + 1)) != NETSTASH_OK ||
      (rv = attach_prepare(jar, c)) != NETSTASH_OK) {
    ns_free(jar->mem, c);
    return rv;
  }
  if (old) {
    c->creation_ms = old->creation_ms; /* step 22.3 */
    c->seq = old->seq;
  } else {
    c->seq = jar->next_seq++;
  }
  /* attach first: old's bucket and group stay non-empty while it goes */
  attach(jar, c);
  if (old) {
    unlink_cookie(jar, old);
    notify(jar, old, NS_COOKIE_OVERWRITTEN);
    ns_free(jar->mem, old);
  }
  ns_cookie_mark_dirty_(jar, c, 0);
  notify(jar, c, NS_COOKIE_ADDED);
  *status = NS_COOKIE_STORED;
  enforce_limits(jar, c->group, now_ms);
  return NETSTASH_OK;
}

/* Allocates a cookie holding copies of the strings. */
ns_cookie *ns_cookie_new_(const ns_mem *mem, ns_span name, ns_span value, const char *domain,
                          size_t dl, ns_span path, const char *partition, size_t pl) {
  size_t sz = sizeof(ns_cookie), parts[5] = {name.len, value.len, dl, path.len, pl};
  ns_cookie *c;
  char *p;
  int i;
  for (i = 0; i < 5; i++)
    if (!ns_add_size(sz, parts[i] + 1, &sz))
      return NULL;
  c = ns_calloc(mem, 1, sz);
  if (!c)
    return NULL;
  p = (char *)(c + 1);
  c->name = p;
  memcpy(p, name.p, name.len);
  p += name.len + 1;
  c->value = p;
  memcpy(p, value.p, value.len);
  p += value.len + 1;
  c->domain = p;
  memcpy(p, domain, dl);
  p += dl + 1;
  c->path = p;
  memcpy(p, path.p, path.len);
  p += path.len + 1;
  if (partition) {
    c->partition = p;
    memcpy(p, partition, pl);
  }
  c->name_len = name.len;
  c->value_len = value.len;
  c->domain_len = dl;
  c->path_len = path.len;
  c->partition_len = partition ? pl : 0;
  ns_list_init(&c->bucket_link);
  ns_list_init(&c->group_link);
  ns_list_init(&c->all_link);
  return c;
}

static int has_prefix_ci(const char *s, size_t len, const char *pfx) {
  size_t n = strlen(pfx);
  return len >= n && ns_ascii_casecmp_n(s, pfx, n) == 0;
}

/* §5.7 steps 19-21: the cookie prefixes (§4.1.3), case-insensitive. */
ns_cookie_status ns_cookie_check_prefixes_(const ns_cookie *c, int path_attr_present) {
  if (has_prefix_ci(c->name, c->name_len, "__Secure-") && !c->secure)
    return NS_COOKIE_REJ_PREFIX_SECURE;
  if (has_prefix_ci(c->name, c->name_len, "__Host-") &&
      (!c->secure || !c->host_only || !path_attr_present || c->path_len != 1 ||
       c->path[0] != '/'))
    return NS_COOKIE_REJ_PREFIX_HOST;
  if (c->name_len == 0) {
    if (has_prefix_ci(c->value, c->value_len, "__Secure-"))
      return NS_COOKIE_REJ_PREFIX_SECURE;
    if (has_prefix_ci(c->value, c->value_len, "__Host-"))
      return NS_COOKIE_REJ_PREFIX_HOST;
  }
  return NS_COOKIE_STORED;
}

/* The partition key of a request: the site of its top-level document. */
static netstash_error partition_key(ns_cookie_jars *jars, const ns_cookie_request *req,
                                    ns_buf *out) {
  return ns_cookie_jars_site(jars, req->top_level_site ? req->top_level_site : req->url, out);
}

/* §5.7, for a Set-Cookie line (script 0) or a document.cookie write. */
static netstash_error set_common(ns_cookie_jar *jar, const ns_cookie_request *req,
                                 const char *line, size_t len, int64_t now_ms, int script,
                                 ns_cookie_status *status) {
  ns_cookie_parsed pc;
  char host[NS_COOKIE_HOST_MAX + 1], dom[NS_COOKIE_HOST_MAX + 1];
  const char *domain;
  size_t hl, dl = 0, i;
  int host_only = 1, secure_origin;
  ns_span path;
  ns_cookie *c = NULL;
  ns_buf part;
  netstash_error rv = NETSTASH_OK;
  ns_cookie_status st = NS_COOKIE_STORED;

  ns_buf_init(&part, jar->mem, 1024);
  if (!req || !req->url) {
    rv = NETSTASH_E_INVALID_ARGUMENT;
    goto done;
  }
  hl = ns_cookie_canon_host(req->url, host);
  if (!hl) {
    st = NS_COOKIE_REJ_BAD_URL;
    goto done;
  }
  if (!ns_cookie_parse(line, len, now_ms, &pc)) {
    st = NS_COOKIE_REJ_SYNTAX; /* §5.6 steps 1, 5; §5.7 steps 2-4 */
    goto done;
  }
  secure_origin = ns_cookie_url_secure(req->url);
  domain = host;
  dl = hl;
  /* §5.7 steps 7-9: Domain */
  if (pc.has_domain && pc.domain.len) {
    if (pc.domain.len > NS_COOKIE_HOST_MAX) {
      st = NS_COOKIE_REJ_DOMAIN;
      goto done;
    }
    for (i = 0; i < pc.domain.len; i++)
      dom[i] = ns_ascii_lower(pc.domain.p[i]);
    dom[pc.domain.len] = 0;
    dl = pc.domain.len;
    if (req->url->host_is_ip) {
      /* an IP host: only the host itself, and then host-only (as Chromium) */
      if (dl != hl || memcmp(dom, host, hl) != 0) {
        st = NS_COOKIE_REJ_DOMAIN;
        goto done;
      }
      dl = hl;
    } else if (ns_cookie_jars_is_public_suffix(jar->jars, dom)) {
      /* step 8: a public suffix is only accepted as the host itself */
      if (dl != hl || memcmp(dom, host, hl) != 0) {
        st = NS_COOKIE_REJ_PUBLIC_SUFFIX;
        goto done;
      }
      dl = hl;
    } else if (!ns_cookie_domain_match(host, hl, 0, dom, dl)) {
      st = NS_COOKIE_REJ_DOMAIN;
      goto done;
    } else {
      host_only = 0;
      domain = dom;
    }
  }
  /* step 10: Path, else default-path (§5.1.4) */
  path = pc.has_path && pc.path.len ? pc.path
                                    : ns_cookie_default_path(ns_cookie_url_path(req->url));
  if (pc.partitioned && (rv = partition_key(jar->jars, req, &part)) != NETSTASH_OK)
    goto done;
  c = ns_cookie_new_(jar->mem, pc.name, pc.value, domain, dl, path,
                     pc.partitioned ? (const char *)part.data : NULL, part.len);
  if (!c) {
    rv = NETSTASH_E_NOMEM;
    goto done;
  }
  c->host_only = (uint8_t)host_only;
  c->secure = (uint8_t)pc.secure;
  c->http_only = (uint8_t)pc.http_only;
  c->same_site = (uint8_t)pc.same_site;
  c->persistent = (uint8_t)pc.persistent;
  c->expiry_ms = pc.expiry_ms;
  c->creation_ms = c->last_access_ms = now_ms; /* step 5 */
  c->source_secure = (uint8_t)secure_origin;

  /* step 1: the embedder's policy (may modify; the checks below still hold) */
  if (jar->policy &&
      jar->policy(jar, script ? NS_COOKIE_OP_SCRIPT_SET : NS_COOKIE_OP_SET, req, c,
                  jar->policy_ud) != NS_COOKIE_ALLOW) {
    st = NS_COOKIE_REJ_POLICY;
    goto done;
  }
  if (!c->persistent)
    c->expiry_ms = NS_COOKIE_EXPIRY_SESSION;
  if (c->secure && !secure_origin) {
    st = NS_COOKIE_REJ_SECURE_ORIGIN; /* step 12 */
    goto done;
  }
  if (script && c->http_only) {
    st = NS_COOKIE_REJ_HTTP_ONLY; /* step 14 */
    goto done;
  }
  if (!c->secure && !secure_origin) {
    /* step 15: look in the group c would join */
    ns_buf key;
    ns_cookie_group *g;
    ns_buf_init(&key, jar->mem, 2048);
    rv = group_key(jar, c->domain, c->domain_len, c->partition, c->partition_len, &key);
    g = rv == NETSTASH_OK ? ns_map_get(&jar->groups, key.data, key.len) : NULL;
    ns_buf_free(&key);
    if (rv != NETSTASH_OK)
      goto done;
    c->group = g;
    if (shadows_secure(jar, c)) {
      st = NS_COOKIE_REJ_OVERWRITE_SECURE;
      goto done;
    }
    c->group = NULL;
  }
  if (c->same_site != NS_COOKIE_SS_NONE) {
    /* step 17: a same-site request, or a top-level navigation; for
     * document.cookie, a same-site document */
    int cross = ns_cookie_jars_cross_site(jar->jars, req);
    if (cross && (script || !req->top_level_navigation)) {
      st = NS_COOKIE_REJ_SAMESITE_CONTEXT;
      goto done;
    }
  } else if (!c->secure) {
    st = NS_COOKIE_REJ_SAMESITE_NONE_INSECURE; /* step 18 */
    goto done;
  }
  if (c->partition && !c->secure) {
    st = NS_COOKIE_REJ_PARTITIONED_INSECURE; /* CHIPS */
    goto done;
  }
  if ((st = ns_cookie_check_prefixes_(c, pc.has_path)) != NS_COOKIE_STORED)
    goto done;
  rv = ns_cookie_jar_insert_(jar, c, script, now_ms, &st);
  c = NULL; /* owned by the jar now */
  if (rv == NETSTASH_OK && jar->auto_flush)
    rv = ns_cookie_jar_flush(jar);
done:
  ns_free(jar->mem, c);
  ns_buf_free(&part);
  if (status)
    *status = st;
  return rv;
}

netstash_error ns_cookie_jar_set(ns_cookie_jar *jar, const ns_cookie_request *req,
                                 const char *line, size_t len, int64_t now_ms,
                                 ns_cookie_status *status) {
  return set_common(jar, req, line, len, now_ms, 0, status);
}

netstash_error ns_cookie_jar_script_set(ns_cookie_jar *jar, const ns_cookie_request *req,
                                        const char *str, size_t len, int64_t now_ms,
                                        ns_cookie_status *status) {
  return set_common(jar, req, str, len, now_ms, 1, status);
}

netstash_error ns_cookie_jar_set_from_headers(ns_cookie_jar *jar, const ns_cookie_request *req,
                                              const struct ns_headers *h, int64_t now_ms,
                                              size_t *stored) {
  size_t it = 0, n = 0;
  const ns_header_field *f;
  int af = jar->auto_flush;
  netstash_error rv = NETSTASH_OK;
  jar->auto_flush = 0;
  while ((f = ns_headers_next(h, &it, "set-cookie")) != NULL) {
    ns_cookie_status st;
    rv = set_common(jar, req, f->value, f->value_len, now_ms, 0, &st);
    if (rv != NETSTASH_OK)
      break;
    n += st == NS_COOKIE_STORED;
  }
  jar->auto_flush = af;
  if (rv == NETSTASH_OK && af)
    rv = ns_cookie_jar_flush(jar);
  if (stored)
    *stored = n;
  return rv;
}

/* ------------------------------------------------------------ retrieval */

/* §5.8.3 step 2: longer paths first, then earlier creation. */
static int order_cmp(const ns_cookie *x, const ns_cookie *y) {
  if (x->path_len != y->path_len)
    return x->path_len > y->path_len ? -1 : 1;
  if (x->creation_ms != y->creation_ms)
    return x->creation_ms < y->creation_ms ? -1 : 1;
  return x->seq < y->seq ? -1 : x->seq > y->seq;
}

static int order_qcmp(const void *a, const void *b) {
  return order_cmp(*(ns_cookie *const *)a, *(ns_cookie *const *)b);
}

static int safe_method(const char *m) {
  /* RFC 9110 §9.2.1 */
  return !m || !strcmp(m, "GET") || !strcmp(m, "HEAD") || !strcmp(m, "OPTIONS") ||
         !strcmp(m, "TRACE");
}

enum { CTX_UNKNOWN = 0, CTX_CROSS, CTX_LAX, CTX_STRICT };

static netstash_error get_common(ns_cookie_jar *jar, const ns_cookie_request *req,
                                 int64_t now_ms, int script, ns_buf *out) {
  char host[NS_COOKIE_HOST_MAX + 1];
  size_t hl, n = 0, len0 = out->len, i, off;
  int is_ip, secure, ctx = CTX_UNKNOWN, part_state = 0;
  ns_span rpath;
  ns_buf part;
  netstash_error rv = NETSTASH_OK;
  ns_cookie_op op = script ? NS_COOKIE_OP_SCRIPT_GET : NS_COOKIE_OP_SEND;

  if (!req || !req->url)
    return NETSTASH_E_INVALID_ARGUMENT;
  hl = ns_cookie_canon_host(req->url, host);
  if (!hl || jar->count == 0)
    return NETSTASH_OK;
  is_ip = req->url->host_is_ip;
  secure = ns_cookie_url_secure(req->url);
  rpath = ns_cookie_url_path(req->url);
  ns_buf_init(&part, jar->mem, 1024);

  /* every suffix of the host at a label boundary is a candidate domain
   * (§5.1.3); an IP only matches itself */
  for (off = 0; off < hl;) {
    ns_cookie_bucket *b = ns_map_get(&jar->buckets, host + off, hl - off);
    if (b) {
      ns_list *pos, *tmp;
      ns_list_foreach_safe(pos, tmp, &b->cookies) {
        ns_cookie *c = ns_list_entry(pos, ns_cookie, bucket_link);
        if (c->expiry_ms <= now_ms) {
          if (b->n == 1) {
            ns_cookie_jar_remove_(jar, c, NS_COOKIE_EXPIRED); /* frees b */
            break;
          }
          ns_cookie_jar_remove_(jar, c, NS_COOKIE_EXPIRED);
          continue;
        }
        if (c->host_only && off != 0)
          continue;
        if (!ns_cookie_path_match(rpath, c->path, c->path_len))
          continue;
        if (c->secure && !secure)
          continue;
        if (script && c->http_only)
          continue;
        if (c->partition) {
          if (part_state == 0) {
            part_state = partition_key(jar->jars, req, &part) == NETSTASH_OK ? 1 : 2;
          }
          if (part_state != 1 || part.len != c->partition_len ||
              memcmp(part.data, c->partition, part.len) != 0)
            continue;
        }
        if (c->same_site != NS_COOKIE_SS_NONE) {
          /* §5.8.3 step 1 (SameSite): Strict needs a same-site request;
           * Lax and Default also accept a cross-site top-level navigation
           * with a safe method */
          if (ctx == CTX_UNKNOWN) {
            if (!ns_cookie_jars_cross_site(jar->jars, req))
              ctx = CTX_STRICT;
            else if (!script && req->top_level_navigation && safe_method(req->method))
              ctx = CTX_LAX;
            else
              ctx = CTX_CROSS;
          }
          if (ctx == CTX_CROSS || (ctx == CTX_LAX && c->same_site == NS_COOKIE_SS_STRICT))
            continue;
        }
        if (jar->policy && jar->policy(jar, op, req, c, jar->policy_ud) != NS_COOKIE_ALLOW)
          continue;
        if (n == jar->scratch_cap && (rv = scratch_reserve(jar, n + 1)) != NETSTASH_OK)
          goto done;
        jar->scratch[n++] = c;
      }
    }
    if (is_ip)
      break;
    while (off < hl && host[off] != '.')
      off++;
    off++;
  }
  if (n == 0)
    goto done;
  /* order: insertion sort for the usual handful, qsort beyond */
  if (n <= 32) {
    for (i = 1; i < n; i++) {
      ns_cookie *x = jar->scratch[i];
      size_t j = i;
      while (j > 0 && order_cmp(x, jar->scratch[j - 1]) < 0) {
        jar->scratch[j] = jar->scratch[j - 1];
        j--;
      }
      jar->scratch[j] = x;
    }
  } else {
    qsort(jar->scratch, n, sizeof(*jar->scratch), order_qcmp);
  }
  /* §5.8.3 step 4: name=value pairs joined by "; " (a nameless cookie:
   * the value alone) */
  for (i = 0; i < n; i++) {
    ns_cookie *c = jar->scratch[i];
    if ((i && (rv = ns_buf_append(out, "; ", 2)) != NETSTASH_OK) ||
        (c->name_len && ((rv = ns_buf_append(out, c->name, c->name_len)) != NETSTASH_OK ||
                         (rv = ns_buf_append(out, "=", 1)) != NETSTASH_OK)) ||
        (c->value_len && (rv = ns_buf_append(out, c->value, c->value_len)) != NETSTASH_OK)) {
      out->len = len0;
      if (out->data)
        out->data[len0] = 0;
      goto done;
    }
  }
  /* step 3: last-access-time */
  for (i = 0; i < n; i++) {
    ns_cookie *c = jar->scratch[i];
    c->last_access_ms = now_ms;
    if (jar->persistent && now_ms - c->stored_access_ms > NS_COOKIE_ACCESS_WRITE_MS)
      ns_cookie_mark_dirty_(jar, c, 0);
  }
done:
  ns_buf_free(&part);
  return rv;
}

netstash_error ns_cookie_jar_header(ns_cookie_jar *jar, const ns_cookie_request *req,
                                    int64_t now_ms, ns_buf *out) {
  return get_common(jar, req, now_ms, 0, out);
}

netstash_error ns_cookie_jar_script_get(ns_cookie_jar *jar, const ns_cookie_request *req,
                                        int64_t now_ms, ns_buf *out) {
  return get_common(jar, req, now_ms, 1, out);
}

/* ------------------------------------------------------------ deletion */

netstash_error ns_cookie_jar_delete(ns_cookie_jar *jar, const char *domain, const char *name,
                                    size_t *n) {
  ns_list *pos, *tmp;
  size_t k = 0, dl = domain ? strlen(domain) : 0, nl = name ? strlen(name) : 0;
  ns_list_foreach_safe(pos, tmp, &jar->all) {
    ns_cookie *c = ns_list_entry(pos, ns_cookie, all_link);
    if (domain && !ns_cookie_domain_match(c->domain, c->domain_len, 0, domain, dl))
      continue;
    if (name && (c->name_len != nl || memcmp(c->name, name, nl) != 0))
      continue;
    ns_cookie_jar_remove_(jar, c, NS_COOKIE_REMOVED);
    k++;
  }
  if (n)
    *n = k;
  return k && jar->auto_flush ? ns_cookie_jar_flush(jar) : NETSTASH_OK;
}

netstash_error ns_cookie_jar_sweep(ns_cookie_jar *jar, int64_t now_ms, size_t *n) {
  ns_list *pos, *tmp;
  size_t k = 0;
  ns_list_foreach_safe(pos, tmp, &jar->all) {
    ns_cookie *c = ns_list_entry(pos, ns_cookie, all_link);
    if (c->expiry_ms <= now_ms) {
      ns_cookie_jar_remove_(jar, c, NS_COOKIE_EXPIRED);
      k++;
    }
  }
  if (n)
    *n = k;
  return k && jar->auto_flush ? ns_cookie_jar_flush(jar) : NETSTASH_OK;
}

void ns_cookie_jar_foreach(ns_cookie_jar *jar, int (*fn)(const ns_cookie *c, void *ud),
                           void *ud) {
  ns_list *pos;
  for (pos = jar->all.next; pos != &jar->all; pos = pos->next)
    if (fn(ns_list_entry(pos, ns_cookie, all_link), ud))
      return;
}

/* A cookie read from the store: linked without notification or dirty mark. */
netstash_error ns_cookie_jar_attach_loaded_(ns_cookie_jar *jar, ns_cookie *c) {
  netstash_error rv;
  if (find_same(ns_map_get(&jar->buckets, c->domain, c->domain_len), c))
    return NETSTASH_E_INVALID_ARGUMENT; /* a duplicate: the caller drops it */
  if ((rv = scratch_reserve(jar, jar->count + 1)) != NETSTASH_OK ||
      (rv = attach_prepare(jar, c)) != NETSTASH_OK)
    return rv;
  attach(jar, c);
  if (c->seq >= jar->next_seq)
    jar->next_seq = c->seq + 1;
  return NETSTASH_OK;
}
