/*
 * map.c — see map.h. Open addressing, linear probing, tombstones.
 */
#include "ns_setup.h"

#include <errno.h>
#include <sys/random.h>
#include <time.h>

#include "core/map.h"

struct ns_map_slot {
  uint64_t hash;
  uint8_t *key; /* NULL: empty; TOMBSTONE: removed; else a copy (owned) */
  size_t keylen;
  void *value;
};

static uint8_t tombstone_mark;
#define TOMBSTONE (&tombstone_mark)
#define MIN_CAP 16

/* ---------------------------------------------------------------- hashing */

#define ROTL64(x, b) (uint64_t)(((x) << (b)) | ((x) >> (64 - (b))))
#define SIPROUND                                                               \
  do {                                                                         \
    v0 += v1;                                                                  \
    v1 = ROTL64(v1, 13);                                                       \
    v1 ^= v0;                                                                  \
    v0 = ROTL64(v0, 32);                                                       \
    v2 += v3;                                                                  \
    v3 = ROTL64(v3, 16);                                                       \
    v3 ^= v2;                                                                  \
    v0 += v3;                                                                  \
    v3 = ROTL64(v3, 21);                                                       \
    v3 ^= v0;                                                                  \
    v2 += v1;                                                                  \
    v1 = ROTL64(v1, 17);                                                       \
    v1 ^= v2;                                                                  \
    v2 = ROTL64(v2, 32);                                                       \
  } while (0)

static uint64_t load_le64(const uint8_t *p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; i--)
    v = (v << 8) | p[i];
  return v;
}

/* SipHash-1-3 (one compression round, three finalisation rounds: the variant
 * Python and Rust use for hash tables). */
static uint64_t siphash13(const uint64_t k[2], const uint8_t *in, size_t len) {
  uint64_t v0 = UINT64_C(0x736f6d6570736575) ^ k[0];
  uint64_t v1 = UINT64_C(0x646f72616e646f6d) ^ k[1];
  uint64_t v2 = UINT64_C(0x6c7967656e657261) ^ k[0];
  uint64_t v3 = UINT64_C(0x7465646279746573) ^ k[1];
  uint64_t b = (uint64_t)len << 56;
  size_t i, full = len - (len % 8);

  for (i = 0; i < full; i += 8) {
    uint64_t m = load_le64(in + i);
    v3 ^= m;
    SIPROUND;
    v0 ^= m;
  }
  for (size_t j = 0; i + j < len; j++)
    b |= (uint64_t)in[i + j] << (8 * j);
  v3 ^= b;
  SIPROUND;
  v0 ^= b;
  v2 ^= 0xff;
  SIPROUND;
  SIPROUND;
  SIPROUND;
  return v0 ^ v1 ^ v2 ^ v3;
}

static uint64_t splitmix64(uint64_t *s) {
  uint64_t z = (*s += UINT64_C(0x9e3779b97f4a7c15));
  z = (z ^ (z >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
  z = (z ^ (z >> 27)) * UINT64_C(0x94d049bb133111eb);
  return z ^ (z >> 31);
}

static void seed_init(ns_map *m) {
  uint8_t rnd[16];
  size_t got = 0;

  /* GRND_NONBLOCK: never wait for the entropy pool at early boot; the
   * fallback below is weaker but keeps the map working. */
  while (got < sizeof(rnd)) {
    ssize_t n = getrandom(rnd + got, sizeof(rnd) - got, GRND_NONBLOCK);
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0)
      break;
    got += (size_t)n;
  }
  if (got == sizeof(rnd)) {
    m->seed[0] = load_le64(rnd);
    m->seed[1] = load_le64(rnd + 8);
  } else {
    struct timespec ts;
    uint64_t s;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    s = ((uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec) ^
        (uint64_t)(uintptr_t)m;
    m->seed[0] = splitmix64(&s);
    m->seed[1] = splitmix64(&s);
  }
}

uint64_t ns_map_hash(const ns_map *m, const void *key, size_t keylen) {
  return siphash13(m->seed, key, keylen);
}

/* ---------------------------------------------------------------- table */

void ns_map_init(ns_map *m, const ns_mem *mem) {
  memset(m, 0, sizeof(*m));
  m->mem = mem;
  seed_init(m);
}

void ns_map_free(ns_map *m) {
  if (!m)
    return;
  for (size_t i = 0; i < m->cap; i++) {
    if (m->slots[i].key && m->slots[i].key != TOMBSTONE)
      ns_free(m->mem, m->slots[i].key);
  }
  ns_free(m->mem, m->slots);
  m->slots = NULL;
  m->cap = m->len = m->used = 0;
}

static int slot_live(const ns_map_slot *s) {
  return s->key && s->key != TOMBSTONE;
}

/* Index of the live slot holding key, or SIZE_MAX. */
static size_t find_slot(const ns_map *m, uint64_t h, const void *key,
                        size_t keylen) {
  size_t mask, i;

  if (m->cap == 0)
    return SIZE_MAX;
  mask = m->cap - 1;
  /* The table always keeps an empty slot (load <= 3/4), so this ends. */
  for (i = (size_t)h & mask;; i = (i + 1) & mask) {
    const ns_map_slot *s = &m->slots[i];
    if (!s->key)
      return SIZE_MAX;
    if (s->key != TOMBSTONE && s->hash == h && s->keylen == keylen &&
        (keylen == 0 || memcmp(s->key, key, keylen) == 0))
      return i;
  }
}

/* First empty or tombstone slot on h's probe path. */
static size_t free_slot(const ns_map_slot *slots, size_t cap, uint64_t h) {
  size_t mask = cap - 1, i;
  for (i = (size_t)h & mask; slot_live(&slots[i]); i = (i + 1) & mask)
    ;
  return i;
}

/* Reallocates to the smallest power of two >= MIN_CAP that holds want
 * entries at most half full, dropping every tombstone. Half, not the 3/4
 * limit, so at least cap/4 inserts separate two rehashes (no rehash per
 * insert when removes and inserts alternate near the limit). */
static netstash_error rehash(ns_map *m, size_t want) {
  size_t cap = MIN_CAP, bytes;
  ns_map_slot *slots;

  while (cap / 2 < want) {
    if (cap > SIZE_MAX / 2)
      return NETSTASH_E_TOO_LARGE;
    cap *= 2;
  }
  if (!ns_mul_size(cap, sizeof(*slots), &bytes))
    return NETSTASH_E_TOO_LARGE;
  slots = ns_calloc(m->mem, cap, sizeof(*slots));
  if (!slots)
    return NETSTASH_E_NOMEM;
  for (size_t i = 0; i < m->cap; i++) {
    if (slot_live(&m->slots[i]))
      slots[free_slot(slots, cap, m->slots[i].hash)] = m->slots[i];
  }
  ns_free(m->mem, m->slots);
  m->slots = slots;
  m->cap = cap;
  m->used = m->len;
  return NETSTASH_OK;
}

int ns_map_find(const ns_map *m, const void *key, size_t keylen, void **value) {
  size_t i;
  if (m->len == 0)
    return 0;
  i = find_slot(m, ns_map_hash(m, key, keylen), key, keylen);
  if (i == SIZE_MAX)
    return 0;
  if (value)
    *value = m->slots[i].value;
  return 1;
}

void *ns_map_get(const ns_map *m, const void *key, size_t keylen) {
  void *v = NULL;
  ns_map_find(m, key, keylen, &v);
  return v;
}

netstash_error ns_map_put(ns_map *m, const void *key, size_t keylen, void *value,
                          void **old) {
  uint64_t h = ns_map_hash(m, key, keylen);
  size_t i = find_slot(m, h, key, keylen), want;
  uint8_t *copy;
  netstash_error rv;

  if (old)
    *old = NULL;
  if (i != SIZE_MAX) {
    if (old)
      *old = m->slots[i].value;
    m->slots[i].value = value;
    return NETSTASH_OK;
  }

  copy = ns_malloc(m->mem, keylen); /* ns_malloc turns 0 into 1 byte */
  if (!copy)
    return NETSTASH_E_NOMEM;
  if (keylen)
    memcpy(copy, key, keylen);

  /* Keep at most 3/4 of the slots non-empty, counting tombstones. When
   * tombstones fill the table the rehash may keep the same size. */
  if (m->cap == 0 || m->used + 1 > m->cap - m->cap / 4) {
    if (!ns_add_size(m->len, 1, &want)) {
      ns_free(m->mem, copy);
      return NETSTASH_E_TOO_LARGE;
    }
    rv = rehash(m, want);
    if (rv != NETSTASH_OK) {
      ns_free(m->mem, copy);
      return rv;
    }
  }

  i = free_slot(m->slots, m->cap, h);
  if (!m->slots[i].key)
    m->used++;
  m->slots[i].hash = h;
  m->slots[i].key = copy;
  m->slots[i].keylen = keylen;
  m->slots[i].value = value;
  m->len++;
  return NETSTASH_OK;
}

int ns_map_remove(ns_map *m, const void *key, size_t keylen, void **value) {
  size_t i;
  if (m->len == 0)
    return 0;
  i = find_slot(m, ns_map_hash(m, key, keylen), key, keylen);
  if (i == SIZE_MAX)
    return 0;
  if (value)
    *value = m->slots[i].value;
  ns_free(m->mem, m->slots[i].key);
  m->slots[i].key = TOMBSTONE;
  m->slots[i].value = NULL;
  m->len--;
  return 1;
}

int ns_map_next(const ns_map *m, size_t *iter, const void **key, size_t *keylen,
                void **value) {
  for (size_t i = *iter; i < m->cap; i++) {
    const ns_map_slot *s = &m->slots[i];
    if (!slot_live(s))
      continue;
    if (key)
      *key = s->key;
    if (keylen)
      *keylen = s->keylen;
    if (value)
      *value = s->value;
    *iter = i + 1;
    return 1;
  }
  *iter = m->cap;
  return 0;
}
