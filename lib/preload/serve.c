/*
 * serve.c — netstash_preload_lookup and the hit accessors: a URL answered
 * from the store's memory map with no allocation (install.c does the
 * lookup; this file owns the reader and the head's field offsets).
 */
#include "core/headers.h"
#include "ns_setup.h"

#include <string.h>
#include <time.h>

#include "core/ctx.h"
#include "core/url.h"
#include "preload/install.h"
#include "store/store.h"

#define HIT_MAX_FIELDS 64
#define HIT_MAX_ID 128

struct netstash_preload_hit {
  netstash_ctx *ctx;
  ns_store_reader *r;
  int open; /* read transaction open */
  int valid;
  int body_loaded; /* h.body fetched (lazily: a head-only answer needs no body) */
  ns_pl_hit h;
  char id[HIT_MAX_ID];
  size_t nf;
  struct {
    const char *name, *value;
    uint32_t name_len, value_len;
  } f[HIT_MAX_FIELDS];
};

netstash_error netstash_preload_hit_new(netstash_ctx *ctx, netstash_preload_hit **out) {
  netstash_preload_hit *hit;
  netstash_error e;
  if (!out)
    return NETSTASH_E_INVALID_ARGUMENT;
  *out = NULL;
  if (!ctx)
    return NETSTASH_E_INVALID_ARGUMENT;
  if (!ctx->store)
    return NETSTASH_E_ILLEGAL_STATE;
  hit = ns_calloc(&ctx->mem, 1, sizeof(*hit));
  if (!hit)
    return NETSTASH_E_NOMEM;
  hit->ctx = ctx;
  if ((e = ns_store_reader_new(ctx->store, &hit->r)) != NETSTASH_OK) {
    ns_free(&ctx->mem, hit);
    return e;
  }
  *out = hit;
  return NETSTASH_OK;
}

void netstash_preload_hit_release(netstash_preload_hit *hit) {
  if (!hit)
    return;
  if (hit->open)
    ns_store_read_end(hit->r);
  hit->open = 0;
  hit->valid = 0;
}

void netstash_preload_hit_del(netstash_preload_hit *hit) {
  if (!hit)
    return;
  netstash_preload_hit_release(hit);
  ns_store_reader_del(hit->r);
  ns_free(&hit->ctx->mem, hit);
}

/* Already in the form manifests are normalised to (curl_url output with a
 * canonical authority)? Then it can be looked up as it is. */
static int canonical(const char *u, size_t n) {
  size_t i = 8;
  if (n < 9 || memcmp(u, "https://", 8) != 0)
    return 0;
  for (; i < n && u[i] != '/'; i++)
    if (!((u[i] >= 'a' && u[i] <= 'z') || (u[i] >= '0' && u[i] <= '9') || u[i] == '.' ||
          u[i] == '-' || u[i] == ':'))
      return 0;
  if (i == n || (i >= 4 && !memcmp(u + i - 4, ":443", 4)))
    return 0;
  for (; i < n; i++) {
    unsigned char c = (unsigned char)u[i];
    if (c <= 0x20 || c >= 0x7f || c == '#' || c == '\\' || c == '%')
      return 0;
    if (c == '.' && u[i - 1] == '/' &&
        (i + 1 == n || u[i + 1] == '/' || u[i + 1] == '?' ||
         (u[i + 1] == '.' && (i + 2 == n || u[i + 2] == '/' || u[i + 2] == '?'))))
      return 0;
  }
  return 1;
}

/* Field offsets of the stored head (format of ns_headers_encode). */
static netstash_error index_head(netstash_preload_hit *hit) {
  ns_headers_walk w;
  const char *name, *value;
  size_t nl, vl;
  hit->nf = 0;
  if (!ns_headers_walk_begin(&w, hit->h.entry.head, hit->h.entry.head_len))
    return NETSTASH_E_STORE_CORRUPT;
  while (ns_headers_walk_next(&w, &name, &nl, &value, &vl)) {
    if (hit->nf < HIT_MAX_FIELDS) {
      hit->f[hit->nf].name = name;
      hit->f[hit->nf].name_len = (uint32_t)nl;
      hit->f[hit->nf].value = value;
      hit->f[hit->nf].value_len = (uint32_t)vl;
      hit->nf++;
    }
  }
  return w.bad ? NETSTASH_E_STORE_CORRUPT : NETSTASH_OK;
}

static netstash_error lookup_norm(netstash_preload_hit *hit, const char *url, size_t n) {
  netstash_error e;
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  if (!hit->open) {
    if ((e = ns_store_read_begin(hit->r)) != NETSTASH_OK)
      return e;
    hit->open = 1;
  }
  hit->body_loaded = 0;
  e = ns_pl_lookup_ex(hit->r, url, n, (int64_t)ts.tv_sec, 0, &hit->h);
  if (e == NETSTASH_OK)
    e = index_head(hit);
  if (e != NETSTASH_OK) {
    netstash_preload_hit_release(hit);
    return e;
  }
  size_t il = hit->h.id_len < sizeof(hit->id) - 1 ? hit->h.id_len : sizeof(hit->id) - 1;
  memcpy(hit->id, hit->h.id, il);
  hit->id[il] = '\0';
  hit->valid = 1;
  return NETSTASH_OK;
}

netstash_error netstash_preload_lookup(netstash_preload_hit *hit, const char *url) {
  size_t n;
  ns_url u;
  netstash_error e;
  if (!hit || !url)
    return NETSTASH_E_INVALID_ARGUMENT;
  /* a new snapshot per lookup: what was published since is seen */
  netstash_preload_hit_release(hit);
  n = strlen(url);
  if (canonical(url, n))
    return lookup_norm(hit, url, n);
  e = ns_url_parse(&hit->ctx->mem, url, &u, NULL, 0);
  if (e != NETSTASH_OK)
    return e == NETSTASH_E_NOMEM ? e : NETSTASH_E_BAD_URL;
  if (strcmp(u.scheme, "https") != 0 || ns_url_canonical_authority(u.url) != 0) {
    ns_url_free(&hit->ctx->mem, &u);
    return NETSTASH_E_NOT_FOUND;
  }
  char *hash = strchr(u.url, '#');
  if (hash)
    *hash = '\0';
  e = lookup_norm(hit, u.url, strlen(u.url));
  ns_url_free(&hit->ctx->mem, &u);
  return e;
}

int netstash_preload_hit_status(const netstash_preload_hit *hit) {
  return hit && hit->valid ? hit->h.entry.status : 0;
}

size_t netstash_preload_hit_header_count(const netstash_preload_hit *hit) {
  return hit && hit->valid ? hit->nf : 0;
}

netstash_error netstash_preload_hit_header_at(const netstash_preload_hit *hit, size_t i,
                                              const char **name, size_t *name_len,
                                              const char **value, size_t *value_len) {
  if (!hit || !name || !name_len || !value || !value_len)
    return NETSTASH_E_INVALID_ARGUMENT;
  if (!hit->valid)
    return NETSTASH_E_ILLEGAL_STATE;
  if (i >= hit->nf)
    return NETSTASH_E_NOT_FOUND;
  *name = hit->f[i].name;
  *name_len = hit->f[i].name_len;
  *value = hit->f[i].value;
  *value_len = hit->f[i].value_len;
  return NETSTASH_OK;
}

/* The body view, fetched on first use (one store read, no allocation). The
 * hit is used by one thread at a time: the lazy fill is not shared. */
static int body_of(const netstash_preload_hit *chit) {
  netstash_preload_hit *hit = (netstash_preload_hit *)chit;
  if (!hit || !hit->valid)
    return 0;
  if (!hit->body_loaded) {
    if (ns_store_body_get(hit->r, hit->h.body_hash, &hit->h.body) != NETSTASH_OK)
      return 0;
    hit->body_loaded = 1;
  }
  return 1;
}

uint64_t netstash_preload_hit_body_size(const netstash_preload_hit *hit) {
  return hit && hit->valid ? hit->h.entry.size : 0; /* verified equal to the body's */
}

uint32_t netstash_preload_hit_chunk_count(const netstash_preload_hit *hit) {
  return body_of(hit) ? hit->h.body.nchunks : 0;
}

netstash_error netstash_preload_hit_chunk(const netstash_preload_hit *hit, uint32_t i,
                                          const uint8_t **data, size_t *len) {
  if (!hit || !data || !len)
    return NETSTASH_E_INVALID_ARGUMENT;
  if (!hit->valid)
    return NETSTASH_E_ILLEGAL_STATE;
  if (!body_of(hit))
    return NETSTASH_E_STORE_CORRUPT;
  if (i >= hit->h.body.nchunks)
    return NETSTASH_E_NOT_FOUND;
  if (hit->h.body.coding != NS_CODING_IDENTITY)
    return NETSTASH_E_STORE_CORRUPT; /* the warmer stores identity bodies only */
  return ns_store_body_chunk(&hit->h.body, i, data, len);
}

const char *netstash_preload_hit_manifest_id(const netstash_preload_hit *hit) {
  return hit && hit->valid ? hit->id : NULL;
}

uint64_t netstash_preload_hit_manifest_version(const netstash_preload_hit *hit) {
  return hit && hit->valid ? hit->h.version : 0;
}

/* Internal: the hit's store view, for the transport's preload route. */
const ns_pl_hit *ns_preload_hit_view(const netstash_preload_hit *hit);
const ns_pl_hit *ns_preload_hit_view(const netstash_preload_hit *hit) {
  return hit && hit->valid ? &hit->h : NULL;
}
