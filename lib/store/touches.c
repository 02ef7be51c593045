/*
 * touches.c — the store's ring of access notes, shared by every process
 * that maps DIR/store/touches. See touches.h.
 *
 * File layout (native byte order; the file never leaves the machine):
 *   0     "NSTOUCH1", u32 slots, u32 slot size
 *   64    head: the index the next note takes (atomic fetch-add)
 *   128   tail: the index the next writer takes from (under the write lock)
 *   4096  slots[SLOTS]: seq (index + 1 once written, 0 while written),
 *         ms, len | db << 16, the key in 8-byte words
 * head, tail and the slots are read and written as atomics only:
 * producers in other processes write them at any time. The dimensions are
 * written once, under the file's flock, before anyone maps it.
 */
#include "ns_setup.h"

#include <fcntl.h>
#include <stdatomic.h>
#include <stdio.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/map.h"
#include "store/touches.h"

#define MAGIC "NSTOUCH1"
#define SLOTS 1024u
#define HDR 4096u
#define KEY_WORDS ((NS_STORE_KEY_MAX + 7) / 8)
#define FILTER 2048u

typedef struct slot {
  _Atomic uint64_t seq;
  _Atomic uint64_t ms;
  _Atomic uint64_t meta; /* len | db << 16 */
  _Atomic uint64_t key[KEY_WORDS];
} slot;

typedef struct ring_hdr {
  char magic[8];
  uint32_t slots, slot_size;
  uint8_t pad1[48];
  _Atomic uint64_t head;
  uint8_t pad2[56];
  _Atomic uint64_t tail;
} ring_hdr;

_Static_assert(sizeof(ring_hdr) <= HDR, "touches header");
_Static_assert(sizeof(slot) % 8 == 0, "touches slot");
/* other processes share these atomics: they must be the CPU's own, not a
 * lock of this process's */
_Static_assert(ATOMIC_LONG_LOCK_FREE == 2 && ATOMIC_LLONG_LOCK_FREE == 2,
               "64-bit atomics must be lock-free");

struct ns_touches {
  const ns_mem *mem;
  void *map;
  size_t maplen;
  ring_hdr *h;
  slot *slots;
  int shared;
  uint32_t granule_ms;
  uint64_t salt;
  struct {
    _Atomic uint64_t tag, ms;
  } recent[FILTER]; /* this handle's latest note per hash slot */
};

static void header_init(ring_hdr *h) {
  memcpy(h->magic, MAGIC, 8);
  h->slots = SLOTS;
  h->slot_size = (uint32_t)sizeof(slot);
}

/* Under the file's flock: the file holds its blocks (a note written into a
 * hole of a full file system would be SIGBUS) and a valid header. */
static int prepare(int fd, size_t len) {
  ring_hdr h;
  struct stat sb;
  if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode))
    return 0;
  if (posix_fallocate(fd, 0, (off_t)len) != 0)
    return 0;
  if (pread(fd, &h, sizeof(h), 0) == (ssize_t)sizeof(h) && memcmp(h.magic, MAGIC, 8) == 0 &&
      h.slots == SLOTS && h.slot_size == sizeof(slot))
    return 1;
  /* new, or not ours (damaged, another version): notes are hints, start over */
  memset(&h, 0, sizeof(h));
  header_init(&h);
  return pwrite(fd, &h, sizeof(h), 0) == (ssize_t)sizeof(h);
}

static void *map_file(const char *store_dir, size_t len) {
  char path[4096];
  void *map = MAP_FAILED;
  int fd, ok = 0;
  if (snprintf(path, sizeof(path), "%s/touches", store_dir) >= (int)sizeof(path))
    return MAP_FAILED;
  fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
  if (fd < 0)
    return MAP_FAILED;
  if (flock(fd, LOCK_EX) == 0) { /* held for a few system calls by whoever prepares it */
    ok = prepare(fd, len);
    (void)flock(fd, LOCK_UN);
  }
  if (ok)
    map = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  close(fd);
  return map;
}

ns_touches *ns_touches_open(const ns_mem *mem, const char *store_dir, uint32_t granule_ms) {
  ns_touches *t = ns_calloc(mem, 1, sizeof(*t));
  if (!t)
    return NULL;
  t->mem = mem;
  t->granule_ms = granule_ms;
  t->maplen = HDR + (size_t)SLOTS * sizeof(slot);
  {
    ns_map seed; /* its random seed only */
    ns_map_init(&seed, mem);
    t->salt = seed.seed[0] ^ seed.seed[1];
  }
  t->map = map_file(store_dir, t->maplen);
  t->shared = t->map != MAP_FAILED;
  if (!t->shared) {
    t->map = mmap(NULL, t->maplen, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (t->map == MAP_FAILED) {
      ns_free(mem, t);
      return NULL;
    }
    header_init(t->map);
  }
  t->h = t->map;
  t->slots = (slot *)((uint8_t *)t->map + HDR);
  return t;
}

void ns_touches_close(ns_touches *t) {
  if (!t)
    return;
  munmap(t->map, t->maplen);
  ns_free(t->mem, t);
}

int ns_touches_shared(const ns_touches *t) {
  return t && t->shared;
}

/* The filter's tag of (db, key): a multiply-xorshift over 8-byte words,
 * seeded per handle — a few nanoseconds for a URL, where SipHash took
 * forty. Collisions only cost a note or delay one by a granule. */
static uint64_t tag_of(const ns_touches *t, unsigned db, const uint8_t *key, size_t keylen) {
  const uint64_t m = UINT64_C(0x9e3779b97f4a7c15);
  uint64_t h = t->salt ^ ((uint64_t)db << 56) ^ keylen, w;
  size_t i = 0;
  for (; i + 8 <= keylen; i += 8) {
    memcpy(&w, key + i, 8);
    h = (h ^ w) * m;
    h ^= h >> 29;
  }
  if (i < keylen) {
    w = 0;
    memcpy(&w, key + i, keylen - i);
    h = (h ^ w) * m;
    h ^= h >> 29;
  }
  h *= m;
  return (h ^ (h >> 32)) | 1;
}

/* 1 when this handle noted key less than a granule ago. */
static int recent(ns_touches *t, unsigned db, const void *key, size_t keylen, uint64_t now) {
  uint64_t tag = tag_of(t, db, key, keylen);
  unsigned i = (unsigned)(tag % FILTER);
  /* two threads racing on one entry at worst note a key twice, or once
   * late by up to a granule */
  if (atomic_load_explicit(&t->recent[i].tag, memory_order_relaxed) == tag &&
      now < atomic_load_explicit(&t->recent[i].ms, memory_order_relaxed) + t->granule_ms)
    return 1;
  atomic_store_explicit(&t->recent[i].ms, now, memory_order_relaxed);
  atomic_store_explicit(&t->recent[i].tag, tag, memory_order_relaxed);
  return 0;
}

void ns_touches_note(ns_touches *t, unsigned db, const void *key, size_t keylen, uint64_t now_ms) {
  uint64_t i;
  slot *s;
  if (!t || keylen == 0 || keylen > NS_STORE_KEY_MAX || db > 0xff)
    return;
  if (t->granule_ms && recent(t, db, key, keylen, now_ms))
    return;
  i = atomic_fetch_add_explicit(&t->h->head, 1, memory_order_relaxed);
  s = &t->slots[i % SLOTS];
  /* seqlock writer: invalid first, the fields, then the index */
  atomic_store_explicit(&s->seq, 0, memory_order_relaxed);
  atomic_thread_fence(memory_order_release);
  atomic_store_explicit(&s->ms, now_ms, memory_order_relaxed);
  atomic_store_explicit(&s->meta, (uint64_t)keylen | (uint64_t)db << 16, memory_order_relaxed);
  for (size_t off = 0; off < keylen; off += 8) {
    uint64_t w = 0;
    memcpy(&w, (const uint8_t *)key + off, keylen - off < 8 ? keylen - off : 8);
    atomic_store_explicit(&s->key[off / 8], w, memory_order_relaxed);
  }
  atomic_store_explicit(&s->seq, i + 1, memory_order_release);
}

/* Reads slot i into *out: 1 when it holds the note of index i, whole. */
static int read_slot(ns_touches *t, uint64_t i, ns_touch *out) {
  slot *s = &t->slots[i % SLOTS];
  uint64_t words[KEY_WORDS], meta, ms, seq = atomic_load_explicit(&s->seq, memory_order_acquire);
  size_t len;
  if (seq != i + 1)
    return 0; /* overwritten, being written, or its writer died half way */
  ms = atomic_load_explicit(&s->ms, memory_order_relaxed);
  meta = atomic_load_explicit(&s->meta, memory_order_relaxed);
  len = (size_t)(meta & 0xffff);
  if (len == 0 || len > NS_STORE_KEY_MAX || (meta >> 16) > 0xff)
    return 0;
  for (size_t w = 0; w < (len + 7) / 8; w++)
    words[w] = atomic_load_explicit(&s->key[w], memory_order_relaxed);
  atomic_thread_fence(memory_order_acquire);
  if (atomic_load_explicit(&s->seq, memory_order_relaxed) != seq)
    return 0; /* rewritten while read */
  out->ms = ms;
  out->len = (uint16_t)len;
  out->db = (uint8_t)(meta >> 16);
  memcpy(out->key, words, len);
  return 1;
}

size_t ns_touches_take(ns_touches *t, ns_touch *out, size_t max) {
  uint64_t head, tail;
  size_t n = 0;
  if (!t)
    return 0;
  head = atomic_load_explicit(&t->h->head, memory_order_acquire);
  tail = atomic_load_explicit(&t->h->tail, memory_order_relaxed);
  if (head - tail > SLOTS) /* behind by more than the ring (or a damaged tail) */
    tail = head > SLOTS ? head - SLOTS : 0;
  while (tail != head && n < max) {
    if (read_slot(t, tail, &out[n]))
      n++;
    tail++;
  }
  atomic_store_explicit(&t->h->tail, tail, memory_order_relaxed);
  return n;
}
