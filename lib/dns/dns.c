/*
 * dns.c — c-ares on the context's libuv loop, a TTL cache bounded by LRU,
 * coalescing of concurrent lookups, and netstash_dns_prefetch().
 *
 * Event wiring (after curl's asyn-ares.c and c-ares' own event-thread docs):
 * c-ares reports each socket it wants watched through the sock-state
 * callback; we keep one uv_poll_t per socket and call ares_process_fd() when
 * libuv says it is readable or writable. One uv_timer_t is re-armed from
 * ares_timeout() after every call into c-ares, and on expiry calls
 * ares_process_fd(ARES_SOCKET_BAD, ARES_SOCKET_BAD) so c-ares handles
 * retries and timeouts. Nothing blocks; no thread besides the loop thread.
 *
 * Objects:
 *   lookup        one c-ares query in flight per lower-cased host name, with
 *                 a list of waiters (ns_dns_query). Concurrent resolves of an
 *                 uncached name join the lookup in flight (coalescing).
 *   ns_dns_query  a waiter: the caller's callback. Cancel unlinks and frees
 *                 it at once; the lookup keeps running and still fills the
 *                 cache when it completes (c-ares 1.18 cannot cancel a single
 *                 query).
 *   cache_entry   an immutable answer (or a negative answer), refcounted: the
 *                 cache holds one reference, a delivery in progress another,
 *                 so an eviction triggered from inside a callback cannot free
 *                 the addresses the callback is reading.
 *
 * Cache policy:
 *   - key: the host name lower-cased (ASCII; DNS names compare
 *     case-insensitively, RFC 4343). "a.test" and "a.test." are different
 *     keys, as they can differ once search domains apply.
 *   - lifetime: the smallest TTL of the answer's addresses and CNAMEs
 *     (RFC 2181 §5.2: the RRset's TTL; §8: values with the top bit set count
 *     as 0), capped at MAX_TTL_S. Expiry uses the monotonic clock, read once
 *     per public entry point and passed down as "now".
 *   - TTL 0 answers are delivered but never cached (the owner asked for it).
 *   - at most cfg.dns_cache_size entries (0 disables the cache, negative
 *     entries included); a full cache evicts the least recently used entry.
 *     Expired entries are dropped when found; they also age out of the LRU
 *     tail first, as nothing touches them.
 *   - negative answers: NXDOMAIN and NODATA (c-ares ENOTFOUND/ENODATA) are
 *     cached for NEG_TTL_S = 5 s. RFC 2308 would take the SOA minimum, which
 *     ares_getaddrinfo does not expose; a short fixed time absorbs bursts
 *     (a page with dozens of subresources on a mistyped host) while a name
 *     that starts to exist is seen within seconds. Timeouts and server
 *     failures are never cached: they are transient and a retry may work.
 *
 * Answers keep IPv4 first, then IPv6, each in c-ares' order (RFC 6724 sort),
 * duplicates removed, at most MAX_ADDRS_PER_FAMILY of each family.
 */
#include "ns_setup.h"

#include "core/buf.h"

#include <arpa/inet.h>
#include <limits.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <sys/socket.h>

#include <ares.h>

#include "core/ctx.h"
#include "core/list.h"
#include "core/log.h"
#include "core/map.h"
#include "dns/dns.h"

#define MOD "dns"
/* Longest host accepted: 253 characters of name plus an optional final dot
 * (RFC 1035 §2.3.4: 255 octets on the wire). */
#define HOST_MAX 254
#define NEG_TTL_S 5
#define MAX_TTL_S 86400
#define MAX_ADDRS_PER_FAMILY 32
#define DETAIL_MAX 384
#define US_PER_S UINT64_C(1000000)

typedef struct dns_poll {
  uv_poll_t handle;
  struct ns_dns *dns;
  ares_socket_t fd;
  ns_list node; /* in dns->polls while open */
} dns_poll;

typedef struct cache_entry {
  ns_list lru;   /* in dns->lru while cached (most recent first) */
  unsigned refs;
  int cached;
  int status;    /* ARES_SUCCESS, or ENOTFOUND/ENODATA for a negative entry */
  uint32_t ttl_s;
  uint64_t expires_us;
  size_t naddrs;
  const char **addrs; /* naddrs strings, in the same allocation */
  const char *key;    /* in the same allocation, NUL-terminated */
  size_t keylen;
} cache_entry;

typedef struct lookup {
  struct ns_dns *dns;
  ns_list waiters; /* ns_dns_query */
  int starting;    /* inside ares_getaddrinfo (it may complete right there) */
  int done;        /* completed while starting */
  size_t keylen;
  char key[HOST_MAX + 1];
} lookup;

struct ns_dns_query {
  ns_list node; /* in lk->waiters */
  lookup *lk;   /* NULL once its callback is being delivered */
  ns_dns_cb cb;
  void *user_data;
};

struct ns_dns {
  netstash_ctx *ctx;
  const ns_mem *mem;
  ares_channel channel; /* NULL after shutdown */
  uv_timer_t timer;
  int timer_ok;
  int shut;
  /* A socket could not be watched (sock_state_cb cannot report it): every
   * lookup is failed with watch_err from the next rearm_timer, instead of
   * hanging until its timeout. canceling marks the ares_cancel doing it. */
  netstash_error watch_err;
  int canceling;
  int in_ares; /* depth of calls into c-ares (its callbacks may re-enter) */
  ns_list polls;  /* dns_poll */
  ns_map lookups; /* key -> lookup *, in flight */
  ns_map cache;   /* key -> cache_entry * */
  ns_list lru;    /* cache_entry */
  size_t cache_max;
};

/* ---------------------------------------------------------------- errors */

static netstash_error map_status(int status) {
  switch (status) {
  case ARES_SUCCESS:
    return NETSTASH_OK;
  case ARES_ENOTFOUND:
  case ARES_ENODATA:
    return NETSTASH_E_DNS_NOT_FOUND;
  case ARES_ETIMEOUT:
    return NETSTASH_E_DNS_TIMEOUT;
  case ARES_ECANCELLED:
  case ARES_EDESTRUCTION:
    return NETSTASH_E_CANCELED;
  case ARES_ENOMEM:
    return NETSTASH_E_NOMEM;
  default:
    /* ECONNREFUSED included: c-ares reports a REFUSED or SERVFAIL answer
     * from every server as "could not contact DNS servers". */
    return NETSTASH_E_DNS_FAILED;
  }
}

static void format_detail(char *buf, const char *key, int status, int cached) {
  snprintf(buf, DETAIL_MAX, "could not resolve %s: %s%s", key,
           ares_strerror(status), cached ? " (cached)" : "");
}

/* ---------------------------------------------------------------- cache */

static void entry_unref(ns_dns *dns, cache_entry *e) {
  if (e && --e->refs == 0)
    ns_free(dns->mem, e);
}

/* One allocation: the struct, the pointer array, the key, the strings. */
static cache_entry *entry_new(ns_dns *dns, const char *key, size_t keylen,
                              char (*addrs)[INET6_ADDRSTRLEN], size_t naddrs) {
  size_t size = sizeof(cache_entry), ptrs, i;
  cache_entry *e;
  char *p;

  if (!ns_mul_size(naddrs, sizeof(char *), &ptrs) || !ns_add_size(size, ptrs, &size) ||
      !ns_add_size(size, keylen + 1, &size))
    return NULL;
  for (i = 0; i < naddrs; i++) {
    if (!ns_add_size(size, strlen(addrs[i]) + 1, &size))
      return NULL;
  }
  e = ns_calloc(dns->mem, 1, size);
  if (!e)
    return NULL;
  ns_list_init(&e->lru);
  e->refs = 1;
  e->addrs = (const char **)(void *)(e + 1);
  p = (char *)(void *)(e->addrs + naddrs);
  memcpy(p, key, keylen);
  p[keylen] = '\0';
  e->key = p;
  e->keylen = keylen;
  p += keylen + 1;
  for (i = 0; i < naddrs; i++) {
    size_t n = strlen(addrs[i]) + 1;
    memcpy(p, addrs[i], n);
    e->addrs[i] = p;
    p += n;
  }
  e->naddrs = naddrs;
  return e;
}

static void cache_remove(ns_dns *dns, cache_entry *e) {
  ns_map_remove(&dns->cache, e->key, e->keylen, NULL);
  ns_list_remove(&e->lru);
  e->cached = 0;
  entry_unref(dns, e);
}

/* A live entry for key (moved to the LRU head), or NULL. */
static cache_entry *cache_get(ns_dns *dns, const char *key, size_t keylen,
                              uint64_t now_us) {
  cache_entry *e = ns_map_get(&dns->cache, key, keylen);
  if (!e)
    return NULL;
  if (now_us >= e->expires_us) {
    cache_remove(dns, e);
    return NULL;
  }
  ns_list_remove(&e->lru);
  ns_list_insert_head(&dns->lru, &e->lru);
  return e;
}

static void cache_insert(ns_dns *dns, cache_entry *e, uint64_t now_us) {
  cache_entry *old;

  if (dns->cache_max == 0 || dns->shut || e->ttl_s == 0)
    return;
  e->expires_us = now_us + (uint64_t)e->ttl_s * US_PER_S;
  old = ns_map_get(&dns->cache, e->key, e->keylen);
  if (old)
    cache_remove(dns, old);
  while (ns_map_len(&dns->cache) >= dns->cache_max && !ns_list_empty(&dns->lru)) {
    cache_entry *victim = ns_list_entry(dns->lru.prev, cache_entry, lru);
    NS_TRACE(dns->ctx, MOD, "cache full, evicting %s", victim->key);
    cache_remove(dns, victim);
  }
  if (ns_map_put(&dns->cache, e->key, e->keylen, e, NULL) != NETSTASH_OK) {
    NS_DEBUG(dns->ctx, MOD, "out of memory caching %s; not cached", e->key);
    return;
  }
  e->refs++;
  e->cached = 1;
  ns_list_insert_head(&dns->lru, &e->lru);
}

static void cache_clear(ns_dns *dns) {
  while (!ns_list_empty(&dns->lru))
    cache_remove(dns, ns_list_entry(dns->lru.next, cache_entry, lru));
}

/* ---------------------------------------------------------------- delivery */

static void call_entry(ns_dns_cb cb, void *user_data, const cache_entry *e,
                       int from_cache, uint64_t now_us) {
  char detail[DETAIL_MAX];
  ns_dns_result res;

  if (e->status != ARES_SUCCESS) {
    format_detail(detail, e->key, e->status, from_cache);
    cb(user_data, map_status(e->status), NULL, detail);
    return;
  }
  res.naddrs = e->naddrs;
  res.addrs = e->addrs;
  res.ttl_s = e->ttl_s;
  res.from_cache = from_cache;
  if (from_cache) {
    uint64_t left = e->expires_us > now_us ? e->expires_us - now_us : 0;
    res.ttl_s = (uint32_t)NS_MIN((left + US_PER_S - 1) / US_PER_S, (uint64_t)e->ttl_s);
  }
  cb(user_data, NETSTASH_OK, &res, "");
}

/* Calls every waiter of lk once, then frees it. Waiters are popped one at a
 * time, so a callback may cancel (unlink) a later waiter of the same lookup.
 * e is NULL when err/detail describe the outcome. */
static void deliver(lookup *lk, const cache_entry *e, netstash_error err,
                    const char *detail, uint64_t now_us) {
  ns_dns *dns = lk->dns;
  while (!ns_list_empty(&lk->waiters)) {
    ns_dns_query *q = ns_list_entry(lk->waiters.next, ns_dns_query, node);
    ns_list_remove(&q->node);
    q->lk = NULL; /* ns_dns_cancel(q) from its own callback is a no-op */
    if (e)
      call_entry(q->cb, q->user_data, e, 0, now_us);
    else
      q->cb(q->user_data, err, NULL, detail);
    ns_free(dns->mem, q);
  }
}

/* ---------------------------------------------------------------- answers */

static uint32_t clamp_ttl(int ttl) {
  if (ttl <= 0)
    return 0;
  return (uint32_t)NS_MIN(ttl, MAX_TTL_S);
}

static cache_entry *entry_from_addrinfo(ns_dns *dns, const lookup *lk,
                                        const struct ares_addrinfo *ai) {
  static const int families[2] = {AF_INET, AF_INET6};
  char addrs[2 * MAX_ADDRS_PER_FAMILY][INET6_ADDRSTRLEN];
  size_t n = 0;
  uint32_t ttl = MAX_TTL_S;
  const struct ares_addrinfo_node *node;
  const struct ares_addrinfo_cname *cn;
  cache_entry *e;

  for (size_t f = 0; f < NS_ARRAY_LEN(families); f++) {
    size_t in_family = 0;
    for (node = ai->nodes; node && in_family < MAX_ADDRS_PER_FAMILY; node = node->ai_next) {
      const void *src;
      size_t j;
      if (node->ai_family != families[f] || !node->ai_addr)
        continue;
      if (families[f] == AF_INET)
        src = &((const struct sockaddr_in *)(const void *)node->ai_addr)->sin_addr;
      else
        src = &((const struct sockaddr_in6 *)(const void *)node->ai_addr)->sin6_addr;
      if (!inet_ntop(families[f], src, addrs[n], INET6_ADDRSTRLEN))
        continue;
      for (j = 0; j < n && strcmp(addrs[j], addrs[n]) != 0; j++)
        ;
      if (j < n)
        continue; /* duplicate */
      ttl = NS_MIN(ttl, clamp_ttl(node->ai_ttl));
      n++;
      in_family++;
    }
  }
  for (cn = ai->cnames; cn; cn = cn->next)
    ttl = NS_MIN(ttl, clamp_ttl(cn->ttl));
  if (n == 0)
    return NULL;
  e = entry_new(dns, lk->key, lk->keylen, addrs, n);
  if (e) {
    e->status = ARES_SUCCESS;
    e->ttl_s = ttl;
  }
  return e;
}

/* The ares_addrinfo_callback of every lookup. */
static void on_addrinfo(void *arg, int status, int timeouts,
                        struct ares_addrinfo *ai) {
  lookup *lk = arg;
  ns_dns *dns = lk->dns;
  uint64_t now_us = ns_now_us();
  cache_entry *e = NULL;
  char detail[DETAIL_MAX];
  netstash_error err;

  NS_UNUSED(timeouts);
  /* Out of the in-flight table first: a callback resolving the same name
   * again must start afresh (or hit the cache), not join a finished lookup. */
  ns_map_remove(&dns->lookups, lk->key, lk->keylen, NULL);

  if (status == ARES_SUCCESS && ai) {
    e = entry_from_addrinfo(dns, lk, ai);
    if (!e && ai->nodes)
      status = ARES_ENOMEM;
    else if (!e)
      status = ARES_ENODATA;
  }
  if (ai)
    ares_freeaddrinfo(ai);
  if (!e && (status == ARES_ENOTFOUND || status == ARES_ENODATA)) {
    e = entry_new(dns, lk->key, lk->keylen, NULL, 0);
    if (e) {
      e->status = status;
      e->ttl_s = NEG_TTL_S;
    }
  }

  err = map_status(status);
  if (e)
    NS_DEBUG(dns->ctx, MOD, "%s: %s, %zu address(es), ttl %u s", lk->key,
             ares_strerror(status), e->naddrs, (unsigned)e->ttl_s);
  else
    NS_DEBUG(dns->ctx, MOD, "%s: %s", lk->key, ares_strerror(status));
  if (e)
    cache_insert(dns, e, now_us);
  if (status == ARES_ECANCELLED && dns->canceling) {
    err = dns->watch_err;
    snprintf(detail, sizeof(detail), "could not resolve %s: %s", lk->key,
             err == NETSTASH_E_NOMEM ? "out of memory watching the DNS socket"
                                     : "cannot watch the DNS socket");
  } else if (status == ARES_ENOMEM) {
    snprintf(detail, sizeof(detail), "out of memory resolving %s", lk->key);
  } else {
    format_detail(detail, lk->key, status, 0);
  }
  deliver(lk, e, err, detail, now_us);
  entry_unref(dns, e);

  if (lk->starting)
    lk->done = 1; /* ns_dns_resolve frees it */
  else
    ns_free(dns->mem, lk);
}

/* ---------------------------------------------------------------- events */

static void on_timer(uv_timer_t *t);

static void rearm_timer(ns_dns *dns) {
  struct timeval tv, *tvp;
  uint64_t ms;

  if (!dns->channel || !dns->timer_ok)
    return;
  if (dns->watch_err != NETSTASH_OK && !dns->canceling && dns->in_ares == 0) {
    /* Outside every c-ares call, where ares_cancel is allowed. */
    NS_WARN(dns->ctx, MOD, "failing DNS lookups: %s", netstash_strerror(dns->watch_err));
    dns->canceling = 1;
    dns->in_ares++;
    ares_cancel(dns->channel);
    dns->in_ares--;
    dns->canceling = 0;
    dns->watch_err = NETSTASH_OK;
  }
  tvp = ares_timeout(dns->channel, NULL, &tv);
  if (!tvp) {
    uv_timer_stop(&dns->timer);
    return;
  }
  /* Round up: a timer that fires a hair early finds nothing to do and would
   * spin at 0 ms until c-ares' clock catches up. */
  ms = (uint64_t)tvp->tv_sec * 1000u + ((uint64_t)tvp->tv_usec + 999u) / 1000u;
  uv_timer_start(&dns->timer, on_timer, ms, 0);
}

static void on_timer(uv_timer_t *t) {
  ns_dns *dns = t->data;
  if (!dns->channel)
    return;
  dns->in_ares++;
  ares_process_fd(dns->channel, ARES_SOCKET_BAD, ARES_SOCKET_BAD);
  dns->in_ares--;
  rearm_timer(dns);
}

static void on_poll(uv_poll_t *h, int status, int events) {
  dns_poll *p = h->data;
  ns_dns *dns = p->dns; /* p may be closed from inside ares_process_fd */
  ares_socket_t rfd = ARES_SOCKET_BAD, wfd = ARES_SOCKET_BAD;

  if (!dns->channel)
    return;
  if (status < 0) {
    /* Let c-ares meet the error on its own read/write and fail over. */
    rfd = wfd = p->fd;
  } else {
    if (events & (UV_READABLE | UV_DISCONNECT))
      rfd = p->fd;
    if (events & UV_WRITABLE)
      wfd = p->fd;
  }
  dns->in_ares++;
  ares_process_fd(dns->channel, rfd, wfd);
  dns->in_ares--;
  rearm_timer(dns);
}

static void on_poll_closed(uv_handle_t *h) {
  dns_poll *p = h->data;
  ns_free(p->dns->mem, p);
}

static void poll_close(dns_poll *p) {
  ns_list_remove(&p->node);
  uv_poll_stop(&p->handle);
  uv_close((uv_handle_t *)&p->handle, on_poll_closed);
}

static dns_poll *poll_find(ns_dns *dns, ares_socket_t fd) {
  ns_list *pos, *tmp;
  ns_list_foreach_safe(pos, tmp, &dns->polls) {
    dns_poll *p = ns_list_entry(pos, dns_poll, node);
    if (p->fd == fd)
      return p;
  }
  return NULL;
}

/* c-ares: start/stop watching fd. Called before c-ares closes a socket, so
 * the poll handle is stopped while the descriptor is still valid. */
static void sock_state_cb(void *data, ares_socket_t fd, int readable,
                          int writable) {
  ns_dns *dns = data;
  dns_poll *p = poll_find(dns, fd);
  int events = (readable ? UV_READABLE : 0) | (writable ? UV_WRITABLE : 0);

  if (!events) {
    if (p)
      poll_close(p);
    return;
  }
  if (!p) {
    p = ns_calloc(dns->mem, 1, sizeof(*p));
    if (!p) {
      /* Unwatched, the lookups could only time out: fail them instead, once
       * c-ares has returned (see rearm_timer). */
      NS_WARN(dns->ctx, MOD, "out of memory watching DNS socket %d", (int)fd);
      dns->watch_err = NETSTASH_E_NOMEM;
      return;
    }
    if (uv_poll_init_socket(&dns->ctx->loop, &p->handle, fd) != 0) {
      NS_WARN(dns->ctx, MOD, "cannot watch DNS socket %d", (int)fd);
      ns_free(dns->mem, p);
      if (dns->watch_err == NETSTASH_OK)
        dns->watch_err = NETSTASH_E_DNS_FAILED;
      return;
    }
    p->handle.data = p;
    p->dns = dns;
    p->fd = fd;
    ns_list_insert_tail(&dns->polls, &p->node);
  }
  if (uv_poll_start(&p->handle, events, on_poll) != 0) {
    NS_WARN(dns->ctx, MOD, "cannot poll DNS socket %d", (int)fd);
    if (dns->watch_err == NETSTASH_OK)
      dns->watch_err = NETSTASH_E_DNS_FAILED;
  }
}

/* ---------------------------------------------------------------- lifecycle */


netstash_error ns_dns_new(netstash_ctx *ctx, ns_dns **out, char *detail,
                          size_t detail_len) {
  struct ares_options opts;
  int optmask = ARES_OPT_SOCK_STATE_CB | ARES_OPT_LOOKUPS;
  int st;
  ns_dns *dns;
  netstash_error rv;

  if (!ctx || !out)
    return NETSTASH_E_INVALID_ARGUMENT;
  *out = NULL;
  dns = ns_calloc(&ctx->mem, 1, sizeof(*dns));
  if (!dns)
    return NETSTASH_E_NOMEM;
  dns->ctx = ctx;
  dns->mem = &ctx->mem;
  dns->cache_max = ctx->cfg.dns_cache_size;
  ns_list_init(&dns->polls);
  ns_list_init(&dns->lru);
  ns_map_init(&dns->lookups, dns->mem);
  ns_map_init(&dns->cache, dns->mem);

  memset(&opts, 0, sizeof(opts));
  opts.sock_state_cb = sock_state_cb;
  opts.sock_state_cb_data = dns;
  opts.lookups = (char *)"fb"; /* /etc/hosts first (localhost), then DNS */
  if (ctx->cfg.dns_timeout_ms) {
    opts.timeout = (int)NS_MIN(ctx->cfg.dns_timeout_ms, (uint32_t)INT_MAX);
    optmask |= ARES_OPT_TIMEOUTMS;
  }
  if (ctx->cfg.dns_tries) {
    opts.tries = (int)NS_MIN(ctx->cfg.dns_tries, (uint32_t)INT_MAX);
    optmask |= ARES_OPT_TRIES;
  }
  st = ares_init_options(&dns->channel, &opts, optmask);
  if (st != ARES_SUCCESS) {
    dns->channel = NULL;
    rv = st == ARES_ENOMEM ? NETSTASH_E_NOMEM : NETSTASH_E_INTERNAL;
    ns_detailf(detail, detail_len, "c-ares initialisation failed: %s",
               ares_strerror(st));
    goto fail;
  }
  if (ctx->cfg.dns_servers) {
    st = ares_set_servers_ports_csv(dns->channel, ctx->cfg.dns_servers);
    if (st != ARES_SUCCESS) {
      rv = st == ARES_ENOMEM ? NETSTASH_E_NOMEM : NETSTASH_E_INVALID_ARGUMENT;
      ns_detailf(detail, detail_len, "invalid DNS server list \"%s\": %s",
                 ctx->cfg.dns_servers, ares_strerror(st));
      goto fail;
    }
  }
  /* Last, so a failure above has no libuv handle to close. */
  if (uv_timer_init(&ctx->loop, &dns->timer) != 0) {
    rv = NETSTASH_E_INTERNAL;
    ns_detailf(detail, detail_len, "uv_timer_init failed");
    goto fail;
  }
  dns->timer.data = dns;
  dns->timer_ok = 1;
  *out = dns;
  return NETSTASH_OK;

fail:
  if (dns->channel)
    ares_destroy(dns->channel);
  ns_map_free(&dns->cache);
  ns_map_free(&dns->lookups);
  ns_free(&ctx->mem, dns);
  return rv;
}

void ns_dns_shutdown(ns_dns *dns) {
  if (!dns || dns->shut)
    return;
  dns->shut = 1; /* from here ns_dns_resolve refuses and nothing is cached */
  if (dns->channel) {
    /* ares_cancel ends every lookup with ARES_ECANCELLED (waiters get
     * NETSTASH_E_CANCELED); ares_destroy then has no query left and closes
     * the sockets, telling sock_state_cb, which closes the polls. */
    ares_cancel(dns->channel);
    ares_destroy(dns->channel);
    dns->channel = NULL;
  }
  while (!ns_list_empty(&dns->polls))
    poll_close(ns_list_entry(dns->polls.next, dns_poll, node));
  if (dns->timer_ok) {
    uv_timer_stop(&dns->timer);
    uv_close((uv_handle_t *)&dns->timer, NULL); /* embedded: freed in _del */
    dns->timer_ok = 0;
  }
}

void ns_dns_del(ns_dns *dns) {
  if (!dns)
    return;
  if (dns->channel) {
    /* Shutdown was skipped: no loop to close handles on, but still end
     * every lookup so no memory is left behind. */
    dns->shut = 1;
    ares_cancel(dns->channel);
    ares_destroy(dns->channel);
    dns->channel = NULL;
  }
  cache_clear(dns);
  ns_map_free(&dns->cache);
  ns_map_free(&dns->lookups);
  ns_free(dns->mem, dns);
}

/* ---------------------------------------------------------------- resolve */

/* 1: host is an IP literal, normalised into buf. 0: a name. -1: brackets
 * around something that is not an IPv6 address. */
static int parse_literal(const char *host, size_t len, char *buf) {
  char inner[HOST_MAX + 1];
  unsigned char bin[sizeof(struct in6_addr)];

  if (host[0] == '[') {
    if (len < 3 || host[len - 1] != ']')
      return -1;
    memcpy(inner, host + 1, len - 2);
    inner[len - 2] = '\0';
    if (inet_pton(AF_INET6, inner, bin) != 1)
      return -1;
    return inet_ntop(AF_INET6, bin, buf, INET6_ADDRSTRLEN) ? 1 : -1;
  }
  if (inet_pton(AF_INET, host, bin) == 1)
    return inet_ntop(AF_INET, bin, buf, INET6_ADDRSTRLEN) ? 1 : -1;
  if (inet_pton(AF_INET6, host, bin) == 1)
    return inet_ntop(AF_INET6, bin, buf, INET6_ADDRSTRLEN) ? 1 : -1;
  return 0;
}

netstash_error ns_dns_resolve(ns_dns *dns, const char *host, ns_dns_cb cb,
                              void *user_data, ns_dns_query **out) {
  char key[HOST_MAX + 1];
  char lit[INET6_ADDRSTRLEN];
  size_t len, i;
  uint64_t now_us;
  cache_entry *e;
  lookup *lk;
  ns_dns_query *q;
  struct ares_addrinfo_hints hints;

  if (out)
    *out = NULL;
  if (!dns || !host || !cb || !out)
    return NETSTASH_E_INVALID_ARGUMENT;
  if (dns->shut || !dns->channel)
    return NETSTASH_E_SHUTDOWN;
  len = strnlen(host, HOST_MAX + 1);
  if (len == 0 || len > HOST_MAX)
    return NETSTASH_E_INVALID_ARGUMENT;

  switch (parse_literal(host, len, lit)) {
  case 1: {
    const char *addrs[1] = {lit};
    ns_dns_result res = {1, addrs, 0, 0};
    cb(user_data, NETSTASH_OK, &res, "");
    return NETSTASH_OK;
  }
  case -1:
    return NETSTASH_E_INVALID_ARGUMENT;
  default:
    break;
  }

  /* ASCII lower-case, no locale (STYLE.md). Spaces and controls never form
   * a host name and would only confuse logs and the cache. */
  for (i = 0; i < len; i++) {
    unsigned char c = (unsigned char)host[i];
    if (c <= 0x20 || c == 0x7f)
      return NETSTASH_E_INVALID_ARGUMENT;
    key[i] = (char)(c >= 'A' && c <= 'Z' ? c + ('a' - 'A') : c);
  }
  key[len] = '\0';

  now_us = ns_now_us();
  e = cache_get(dns, key, len, now_us);
  if (e) {
    ns_stat_add(dns->ctx, NETSTASH_STAT_DNS_CACHE_HITS, 1);
    NS_TRACE(dns->ctx, MOD, "%s: from cache", key);
    e->refs++; /* the callback may evict it */
    call_entry(cb, user_data, e, 1, now_us);
    entry_unref(dns, e);
    return NETSTASH_OK;
  }

  q = ns_calloc(dns->mem, 1, sizeof(*q));
  if (!q)
    return NETSTASH_E_NOMEM;
  q->cb = cb;
  q->user_data = user_data;

  lk = ns_map_get(&dns->lookups, key, len);
  if (lk) {
    NS_TRACE(dns->ctx, MOD, "%s: joins the lookup in flight", key);
    q->lk = lk;
    ns_list_insert_tail(&lk->waiters, &q->node);
    *out = q;
    return NETSTASH_OK;
  }

  lk = ns_calloc(dns->mem, 1, sizeof(*lk));
  if (!lk) {
    ns_free(dns->mem, q);
    return NETSTASH_E_NOMEM;
  }
  lk->dns = dns;
  ns_list_init(&lk->waiters);
  memcpy(lk->key, key, len + 1);
  lk->keylen = len;
  if (ns_map_put(&dns->lookups, key, len, lk, NULL) != NETSTASH_OK) {
    ns_free(dns->mem, lk);
    ns_free(dns->mem, q);
    return NETSTASH_E_NOMEM;
  }
  q->lk = lk;
  ns_list_insert_tail(&lk->waiters, &q->node);

  memset(&hints, 0, sizeof(hints));
  hints.ai_family = AF_UNSPEC;
  ns_stat_add(dns->ctx, NETSTASH_STAT_DNS_QUERIES, 1);
  NS_DEBUG(dns->ctx, MOD, "%s: querying", key);
  lk->starting = 1;
  dns->in_ares++;
  ares_getaddrinfo(dns->channel, lk->key, NULL, &hints, on_addrinfo, lk);
  dns->in_ares--;
  rearm_timer(dns); /* may fail the lookup at once (unwatchable socket) */
  lk->starting = 0;
  if (lk->done) {
    /* Answered inside the call (hosts file, or an immediate failure): the
     * callback has run and q is gone; like a cache hit. */
    ns_free(dns->mem, lk);
  } else {
    *out = q;
  }
  return NETSTASH_OK;
}

void ns_dns_cancel(ns_dns_query *q) {
  if (!q || !q->lk)
    return; /* NULL, or being delivered right now */
  ns_list_remove(&q->node);
  ns_free(q->lk->dns->mem, q);
}

/* ---------------------------------------------------------------- prefetch */

typedef struct prefetch {
  ns_task task;
  const ns_mem *mem;
  netstash_dns_prefetch_cb cb;
  void *user_data;
  size_t n;
  size_t pending; /* outstanding lookups, plus one while starting them */
  size_t resolved;
  netstash_error err; /* first failure */
  char **hosts;
} prefetch;

static void prefetch_free(prefetch *pf) {
  const ns_mem *mem = pf->mem;
  for (size_t i = 0; i < pf->n; i++)
    ns_free(mem, pf->hosts[i]);
  ns_free(mem, pf->hosts);
  ns_free(mem, pf);
}

static void prefetch_release(prefetch *pf) {
  if (--pf->pending > 0)
    return;
  if (pf->cb)
    pf->cb(pf->err, pf->resolved, pf->user_data);
  prefetch_free(pf);
}

static void prefetch_done(void *user_data, netstash_error err,
                          const ns_dns_result *res, const char *detail) {
  prefetch *pf = user_data;
  NS_UNUSED(res);
  NS_UNUSED(detail);
  if (err == NETSTASH_OK)
    pf->resolved++;
  else if (pf->err == NETSTASH_OK)
    pf->err = err;
  prefetch_release(pf);
}

static void prefetch_run(netstash_ctx *ctx, ns_task *task) {
  prefetch *pf = NS_CONTAINER_OF(task, prefetch, task);

  pf->pending = 1; /* held until every lookup is started */
  for (size_t i = 0; i < pf->n; i++) {
    ns_dns_query *q;
    netstash_error rv;
    pf->pending++;
    rv = ns_dns_resolve(ctx->dns, pf->hosts[i], prefetch_done, pf, &q);
    if (rv != NETSTASH_OK) {
      NS_DEBUG(ctx, MOD, "prefetch of %s: %s", pf->hosts[i], netstash_strerror(rv));
      if (pf->err == NETSTASH_OK)
        pf->err = rv;
      pf->pending--;
    }
  }
  prefetch_release(pf);
}

netstash_error netstash_dns_prefetch(netstash_ctx *ctx, const char *const *hosts,
                                     size_t n, netstash_dns_prefetch_cb cb,
                                     void *user_data) {
  prefetch *pf;
  netstash_error rv;
  size_t bytes;

  if (!ctx || (n && !hosts))
    return NETSTASH_E_INVALID_ARGUMENT;
  for (size_t i = 0; i < n; i++) {
    if (!hosts[i])
      return NETSTASH_E_INVALID_ARGUMENT;
  }
  pf = ns_calloc(&ctx->mem, 1, sizeof(*pf));
  if (!pf)
    return NETSTASH_E_NOMEM;
  pf->mem = &ctx->mem;
  pf->cb = cb;
  pf->user_data = user_data;
  pf->task.run = prefetch_run;
  if (!ns_mul_size(n, sizeof(char *), &bytes) ||
      !(pf->hosts = ns_calloc(&ctx->mem, 1, bytes))) {
    ns_free(&ctx->mem, pf);
    return NETSTASH_E_NOMEM;
  }
  for (pf->n = 0; pf->n < n; pf->n++) {
    pf->hosts[pf->n] = ns_strdup(&ctx->mem, hosts[pf->n]);
    if (!pf->hosts[pf->n]) {
      prefetch_free(pf);
      return NETSTASH_E_NOMEM;
    }
  }
  rv = ns_ctx_post(ctx, &pf->task);
  if (rv != NETSTASH_OK)
    prefetch_free(pf);
  return rv;
}
