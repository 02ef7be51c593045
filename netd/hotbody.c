/*
 * hotbody.c — the gateway's hot bodies: a stored body it answers again and
 * again, copied once into a sealed memfd so that its answers can be sent
 * with sendfile(2) instead of a writev from the store's map.
 *
 * Why (doc/DESIGN.md, "Hot bodies sent with sendfile"): a writev copies the
 * body into the socket's buffer on netd's core, and the client then reads
 * lines another core has just written; sendfile hands the socket references
 * to pages nobody writes, so netd copies nothing and the client reads clean
 * pages. Measured on loopback with tools/bench/floor-http: from 16 to 96 KiB
 * the client takes 9–27 % more answers per second and the server spends up
 * to 17 % less CPU per answer at the same offered load; from 128 KiB on,
 * sendfile from shmem costs the server twice a writev's CPU on this kernel —
 * so only bodies of NETD_HOT_MIN..NETD_HOT_MAX bytes are kept.
 *
 * Why not sendfile from the store's own file: LMDB reuses a freed page in
 * place, and a socket keeps referring to the page-cache pages it was given
 * until its client has read them — a later transaction could change bytes
 * already "sent". A memfd's pages are written once, then sealed (no write,
 * no resize); closing the memfd leaves pages still queued in sockets alive
 * and unchanged (the kernel counts their references), so an eviction never
 * touches an answer on its way.
 *
 * The key is the store's content address (SHA-256) of the bytes: the same
 * key always names the same bytes (its bucket is a salted hash of it, so an
 * origin choosing bodies cannot pile them into one chain). A body is copied the second time it is
 * answered (a first sighting is noted in a table of candidates), so bodies
 * read once cost a table entry, not a copy. Copies are bounded by
 * max_bytes (config hot_body_bytes), least recently sent evicted first.
 * Entries come from a pool allocated with the table (candidates, plus as
 * many copies as fit at the smallest size, at most MAX_FILES and a quarter
 * of the descriptor limit): an answer allocates no memory. Loop thread
 * only.
 */
#define _GNU_SOURCE 1
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/resource.h>
#include <unistd.h>

#include "core/list.h"
#include "netd/netd.h"

#define KEY_LEN 32
#define CANDIDATES 1024      /* first sightings remembered */
#define MAX_FILES (1u << 16) /* copies kept, whatever the budget */

typedef struct hot_entry {
  ns_list lru;             /* in files or candidates (most recent first), or free */
  struct hot_entry *chain; /* hash bucket */
  uint8_t key[KEY_LEN];
  int fd; /* the sealed memfd; -1: a candidate (seen once) */
  uint64_t size;
} hot_entry;

struct netd_hot {
  uint64_t max_bytes, bytes;
  size_t nfiles, ncand, max_files;
  hot_entry **buckets;
  size_t nbuckets; /* a power of two */
  unsigned shift;  /* 64 - log2(nbuckets) */
  uint64_t salt;   /* random: an origin choosing bodies cannot aim at a bucket */
  hot_entry *pool; /* CANDIDATES + max_files entries */
  ns_list files, cands, free;
  netd_metrics *m;
};

static size_t bucket_of(const netd_hot *h, const uint8_t *key) {
  uint64_t v;
  memcpy(&v, key, sizeof(v));
  return (size_t)(((v ^ h->salt) * 0x9E3779B97F4A7C15ull) >> h->shift);
}

static hot_entry *find(const netd_hot *h, const uint8_t *key) {
  hot_entry *e = h->buckets[bucket_of(h, key)];
  while (e && memcmp(e->key, key, KEY_LEN) != 0)
    e = e->chain;
  return e;
}

static void unlink_entry(netd_hot *h, hot_entry *e) {
  hot_entry **pp = &h->buckets[bucket_of(h, e->key)];
  while (*pp != e)
    pp = &(*pp)->chain;
  *pp = e->chain;
  ns_list_remove(&e->lru);
  if (e->fd >= 0) {
    close(e->fd); /* pages still in sockets stay alive, unchanged */
    h->bytes -= e->size;
    h->nfiles--;
  } else {
    h->ncand--;
  }
  ns_list_insert_head(&h->free, &e->lru);
}

static void publish(netd_hot *h) {
  if (!h->m)
    return;
  atomic_store_explicit(&h->m->hot_bodies, h->nfiles, memory_order_relaxed);
  atomic_store_explicit(&h->m->hot_body_bytes, h->bytes, memory_order_relaxed);
}

netd_hot *netd_hot_new(uint64_t max_bytes, netd_metrics *m) {
  netd_hot *h;
  size_t n;
  if (!max_bytes)
    return NULL;
  h = calloc(1, sizeof(*h));
  if (!h)
    return NULL;
  h->max_files =
      max_bytes / NETD_HOT_MIN < MAX_FILES ? (size_t)(max_bytes / NETD_HOT_MIN) : MAX_FILES;
  {
    /* a copy holds a descriptor: at most a quarter of what the process may
     * open, the rest is its connections' */
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY &&
        rl.rlim_cur / 4 < h->max_files)
      h->max_files = (size_t)(rl.rlim_cur / 4);
  }
  if (!h->max_files)
    h->max_files = 1; /* a budget below 16 KiB holds none (size check), but stays consistent */
  n = CANDIDATES + h->max_files;
  /* buckets: at most 4 entries per bucket on average */
  h->nbuckets = 256;
  h->shift = 56;
  while (h->nbuckets * 4 < n) {
    h->nbuckets *= 2;
    h->shift--;
  }
  if (getrandom(&h->salt, sizeof(h->salt), GRND_NONBLOCK) != (ssize_t)sizeof(h->salt))
    h->salt = (uint64_t)(uintptr_t)h ^ (uint64_t)getpid() << 32; /* not secret, still spread */
  h->buckets = calloc(h->nbuckets, sizeof(*h->buckets));
  h->pool = calloc(n, sizeof(*h->pool));
  if (!h->buckets || !h->pool) {
    free(h->buckets);
    free(h->pool);
    free(h);
    return NULL;
  }
  h->max_bytes = max_bytes;
  h->m = m;
  ns_list_init(&h->files);
  ns_list_init(&h->cands);
  ns_list_init(&h->free);
  for (size_t i = 0; i < n; i++)
    ns_list_insert_tail(&h->free, &h->pool[i].lru);
  return h;
}

void netd_hot_free(netd_hot *h) {
  if (!h)
    return;
  while (!ns_list_empty(&h->files))
    unlink_entry(h, ns_list_entry(h->files.next, hot_entry, lru));
  while (!ns_list_empty(&h->cands))
    unlink_entry(h, ns_list_entry(h->cands.next, hot_entry, lru));
  publish(h);
  free(h->buckets);
  free(h->pool);
  free(h);
}

/* A sealed memfd holding the size bytes of chunks, or -1. */
static int copy_body(const uv_buf_t *chunks, unsigned n, uint64_t size) {
  int fd = memfd_create("netd-hot-body", MFD_CLOEXEC | MFD_ALLOW_SEALING);
  uint64_t off = 0;
  if (fd < 0)
    return -1;
  for (unsigned i = 0; i < n; i++) {
    for (size_t k = 0; k < chunks[i].len;) {
      ssize_t w = pwrite(fd, chunks[i].base + k, chunks[i].len - k, (off_t)off);
      if (w < 0 && errno == EINTR)
        continue;
      if (w <= 0)
        goto fail;
      k += (size_t)w;
      off += (uint64_t)w;
    }
  }
  if (off == size &&
      fcntl(fd, F_ADD_SEALS, F_SEAL_WRITE | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) == 0)
    return fd;
fail:
  close(fd);
  return -1;
}

int netd_hot_fd(netd_hot *h, const uint8_t *key, const uv_buf_t *chunks, unsigned n,
                uint64_t size) {
  hot_entry *e;
  if (!h || size < NETD_HOT_MIN || size > NETD_HOT_MAX || size > h->max_bytes)
    return -1;
  e = find(h, key);
  if (e && e->fd >= 0) { /* kept: the most recently sent now */
    ns_list_remove(&e->lru);
    ns_list_insert_head(&h->files, &e->lru);
    return e->fd;
  }
  if (!e) { /* a first sighting: remembered, not copied */
    if (h->ncand >= CANDIDATES)
      unlink_entry(h, ns_list_entry(h->cands.prev, hot_entry, lru));
    e = ns_list_entry(h->free.next, hot_entry, lru); /* one is free now */
    ns_list_remove(&e->lru);
    memcpy(e->key, key, KEY_LEN);
    e->fd = -1;
    e->size = size;
    e->chain = h->buckets[bucket_of(h, key)];
    h->buckets[bucket_of(h, key)] = e;
    ns_list_insert_head(&h->cands, &e->lru);
    h->ncand++;
    return -1;
  }
  /* the second: copied, room made from the least recently sent */
  if (e->size != size)
    return -1; /* cannot be for one content address; not trusted */
  while ((h->bytes + size > h->max_bytes || h->nfiles >= h->max_files) && !ns_list_empty(&h->files))
    unlink_entry(h, ns_list_entry(h->files.prev, hot_entry, lru));
  e->fd = copy_body(chunks, n, size);
  if (e->fd < 0) {
    unlink_entry(h, e); /* counted as a candidate still */
    publish(h);
    return -1;
  }
  h->ncand--;
  h->nfiles++;
  h->bytes += size;
  ns_list_remove(&e->lru);
  ns_list_insert_head(&h->files, &e->lru);
  publish(h);
  return e->fd;
}
