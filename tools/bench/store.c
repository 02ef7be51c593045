/*
 * tools/bench/store.c — random cache hits against the LMDB store, next to
 * the physical floor, in one run.
 *
 *   tools/bench/store [ENTRIES [BODY_BYTES [LOOKUPS]]]   (10000 20480 200000)
 *
 * floor:    raw LMDB: mdb_txn_renew + mdb_get of the body + memcpy of it into
 *           a buffer + mdb_txn_reset (one database, key -> body bytes).
 * hit+copy: netstash: ns_store_read_begin + ns_store_get_with_body (record
 *           lookup in `http`, body header lookup in `bodies`, access noted
 *           for LRU) + memcpy of every chunk of the view + ns_store_read_end.
 * hit view: the same without the copy (reads the first and last byte).
 * Both sides first read every body once (page cache and page tables warm),
 * then each lookup is timed alone (clock_gettime around it); p50/p99 in ns, the
 * ratio to the floor, and the peak RSS after each phase. Keys are drawn
 * uniformly at random (the same sequence for every phase). Bodies are
 * random bytes (incompressible: stored identity, as images are).
 */
#include "ns_setup.h"

#include <errno.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>

#include <lmdb.h>

#include "store/store.h"

__attribute__((noreturn)) static void die(const char *msg) {
  fprintf(stderr, "bench/store: %s\n", msg);
  exit(1);
}

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static uint32_t rs = 88172645u;
static uint32_t rnd(void) {
  rs ^= rs << 13;
  rs ^= rs >> 17;
  rs ^= rs << 5;
  return rs;
}

static int cmp_u64(const void *a, const void *b) {
  uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
  return x < y ? -1 : x > y;
}

static long rss_kb(void) {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return ru.ru_maxrss;
}

typedef struct result {
  uint64_t p50, p99, mean;
} result;

static result summarize(uint64_t *t, size_t n) {
  result r;
  uint64_t sum = 0;
  for (size_t i = 0; i < n; i++)
    sum += t[i];
  qsort(t, n, sizeof(*t), cmp_u64);
  r.p50 = t[n / 2];
  r.p99 = t[n * 99 / 100];
  r.mean = sum / n;
  return r;
}

static int rm_cb(const char *p, const struct stat *sb, int f, struct FTW *w) {
  (void)sb;
  (void)f;
  (void)w;
  return remove(p);
}

static void key_of(char *k, size_t n, unsigned i) {
  snprintf(k, n, "GET https://bench.test/asset/%06u.js", i);
}

int main(int argc, char **argv) {
  unsigned entries = argc > 1 ? (unsigned)atoi(argv[1]) : 10000;
  size_t body = argc > 2 ? (size_t)atol(argv[2]) : 20480;
  size_t lookups = argc > 3 ? (size_t)atol(argv[3]) : 200000;
  char tmp[] = "/tmp/nst-bench-store-XXXXXX", path[300], key[64];
  uint8_t *data = malloc(body), *dst = malloc(body + 65536);
  unsigned *seq = malloc(lookups * sizeof(unsigned));
  uint64_t *t = malloc(lookups * sizeof(uint64_t));
  uint8_t head[300];
  result floor_r = {0}, hit_r = {0}, view_r = {0};
  long rss_floor, rss_store;
  volatile uint8_t sink = 0;

  if (!data || !dst || !seq || !t || entries == 0 || lookups == 0)
    die("bad arguments or out of memory");
  if (!mkdtemp(tmp))
    die("mkdtemp");
  for (size_t i = 0; i < lookups; i++)
    seq[i] = rnd() % entries;
  memset(head, 'h', sizeof(head));

  /* ---------------------------------------------------------- floor */
  {
    MDB_env *env;
    MDB_txn *txn;
    MDB_dbi dbi;
    snprintf(path, sizeof(path), "%s/raw", tmp);
    if (mkdir(path, 0700) != 0 || mdb_env_create(&env) != 0 ||
        mdb_env_set_mapsize(env, (size_t)entries * (body + 8192) + (64u << 20)) ||
        mdb_env_open(env, path, MDB_NOTLS, 0600) != 0)
      die("raw LMDB open");
    for (unsigned i = 0; i < entries;) {
      if (mdb_txn_begin(env, NULL, 0, &txn) != 0 || mdb_dbi_open(txn, NULL, 0, &dbi) != 0)
        die("raw txn");
      for (unsigned j = 0; j < 500 && i < entries; j++, i++) {
        MDB_val k, v;
        for (size_t b = 0; b < body; b++)
          data[b] = (uint8_t)rnd();
        key_of(key, sizeof(key), i);
        k.mv_data = key;
        k.mv_size = strlen(key);
        v.mv_data = data;
        v.mv_size = body;
        if (mdb_put(txn, dbi, &k, &v, 0) != 0)
          die("raw put");
      }
      if (mdb_txn_commit(txn) != 0)
        die("raw commit");
    }
    if (mdb_txn_begin(env, NULL, MDB_RDONLY, &txn) != 0)
      die("raw read txn");
    mdb_txn_reset(txn);
    /* warm-up: every body read once (page cache and page tables) */
    for (unsigned i = 0; i < entries; i++) {
      MDB_val k, v;
      key_of(key, sizeof(key), i);
      k.mv_data = key;
      k.mv_size = strlen(key);
      if (mdb_txn_renew(txn) != 0 || mdb_get(txn, dbi, &k, &v) != 0)
        die("raw get");
      memcpy(dst, v.mv_data, v.mv_size);
      mdb_txn_reset(txn);
    }
    for (size_t i = 0; i < lookups; i++) {
      MDB_val k, v;
      uint64_t t0;
      key_of(key, sizeof(key), seq[i]);
      k.mv_data = key;
      k.mv_size = strlen(key);
      t0 = now_ns();
      if (mdb_txn_renew(txn) != 0 || mdb_get(txn, dbi, &k, &v) != 0)
        die("raw get");
      memcpy(dst, v.mv_data, v.mv_size);
      mdb_txn_reset(txn);
      t[i] = now_ns() - t0;
      sink ^= dst[body - 1];
    }
    mdb_txn_abort(txn);
    mdb_env_close(env);
    floor_r = summarize(t, lookups);
    rss_floor = rss_kb();
  }

  /* ---------------------------------------------------------- netstash */
  {
    ns_store_params p;
    ns_store *s;
    ns_store_reader *r;
    char detail[256];
    snprintf(path, sizeof(path), "%s/profile", tmp);
    ns_store_params_init(&p);
    p.dir = path;
    p.created_by = "bench/store";
    p.size_limit = 0; /* no eviction during the benchmark */
    p.map_size = (uint64_t)entries * (body + 8192) * 2 + (64u << 20);
    p.map_size_max = p.map_size * 2;
    if (ns_store_open(&p, &s, detail, sizeof(detail)) != NETSTASH_OK)
      die(detail);
    for (unsigned i = 0; i < entries; i++) {
      uint8_t h[32];
      for (size_t b = 0; b < body; b++)
        data[b] = (uint8_t)rnd();
      key_of(key, sizeof(key), i);
      if (ns_store_body_put(s, data, body, NS_CODING_IDENTITY, "image/png", 0, h) != NETSTASH_OK ||
          ns_store_put(s, NS_STORE_HTTP, key, strlen(key), head, sizeof(head), h, 0) != NETSTASH_OK)
        die("store put");
    }
    if (ns_store_reader_new(s, &r) != NETSTASH_OK)
      die("reader");
    for (int pass = 0; pass < 3; pass++) {
      size_t n = pass == 0 ? entries : lookups;
      for (size_t i = 0; i < n; i++) {
        ns_store_record rec;
        ns_store_body b;
        uint64_t t0;
        key_of(key, sizeof(key), pass == 0 ? (unsigned)i : seq[i]);
        t0 = now_ns();
        if (ns_store_read_begin(r) != NETSTASH_OK ||
            ns_store_get_with_body(r, NS_STORE_HTTP, key, strlen(key), &rec, &b) != NETSTASH_OK)
          die("store get");
        if (pass < 2) { /* 0: warm-up, every body once */
          size_t off = 0;
          for (uint32_t c = 0; c < b.nchunks; c++) {
            const uint8_t *d;
            size_t l;
            if (ns_store_body_chunk(&b, c, &d, &l) != NETSTASH_OK)
              die("chunk");
            memcpy(dst + off, d, l);
            off += l;
          }
        } else {
          sink ^= b.first[0] ^ b.first[b.first_len - 1];
        }
        ns_store_read_end(r);
        t[i] = now_ns() - t0;
        sink ^= dst[body - 1];
      }
      if (pass == 1)
        hit_r = summarize(t, lookups);
      else if (pass == 2)
        view_r = summarize(t, lookups);
    }
    ns_store_reader_del(r);
    ns_store_close(s);
    rss_store = rss_kb();
  }

  printf("store hits: %u entries x %zu bytes, %zu random lookups\n", entries, body, lookups);
  printf("%-32s %8s %8s %8s %8s\n", "", "p50 ns", "p99 ns", "mean ns", "p50 x");
  printf("%-32s %8llu %8llu %8llu %8.2f\n", "floor: mdb_get + memcpy",
         (unsigned long long)floor_r.p50, (unsigned long long)floor_r.p99,
         (unsigned long long)floor_r.mean, 1.0);
  printf("%-32s %8llu %8llu %8llu %8.2f\n", "netstash hit + memcpy", (unsigned long long)hit_r.p50,
         (unsigned long long)hit_r.p99, (unsigned long long)hit_r.mean,
         (double)hit_r.p50 / (double)floor_r.p50);
  printf("%-32s %8llu %8llu %8llu %8.2f\n", "netstash hit, view only",
         (unsigned long long)view_r.p50, (unsigned long long)view_r.p99,
         (unsigned long long)view_r.mean, (double)view_r.p50 / (double)floor_r.p50);
  printf("p99 ratio (hit + memcpy / floor): %.2f\n", (double)hit_r.p99 / (double)floor_r.p99);
  printf("peak RSS: %ld KiB after the floor, %ld KiB after netstash (map "
         "pages of the file count as RSS)\n",
         rss_floor, rss_store);
  nftw(tmp, rm_cb, 16, FTW_DEPTH | FTW_PHYS);
  free(data);
  free(dst);
  free(seq);
  free(t);
  (void)sink; /* volatile: the copies are not optimised away */
  return 0;
}
