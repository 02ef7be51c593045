/*
 * tools/bench/preload.c — netstash_preload_lookup() next to its floor, and
 * the allocations a hit makes (the brief: a hit allocates nothing it does not
 * hand out).
 *
 *   tools/bench/preload [RESOURCES [BODY_BYTES [LOOKUPS]]]   (2000 20480 200000)
 *
 * Setup: a profile with 8 manifests (one of RESOURCES resources under
 * https://bench.test/app/, seven small ones with other scopes, one of them
 * overlapping), installed and published with the internal installer.
 * raw:    LMDB alone: mdb_txn_renew + mdb_get of the entry's key (known in
 *         advance) + mdb_txn_reset — the physical floor of a head lookup.
 * floor:  ns_store_read_begin + ns_store_get_with_body of the entry's key,
 *         known in advance + read_end: what any lookup must at least do.
 * hit:    netstash_preload_lookup(url) (URL form check, serving index, scope
 *         match, entry, body view, header offsets) + reading the first and
 *         last byte of the body through netstash_preload_hit_chunk.
 * miss:   a URL in scope that no manifest lists; and one outside every scope.
 * Allocations are counted by interposing malloc/calloc/realloc in this
 * program (every library's calls land here). p50/p99 in ns, ratio to the
 * floor, peak RSS.
 */
#include "ns_setup.h"

#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <time.h>

#include <netstash/netstash.h>
#include <openssl/evp.h>

#include <lmdb.h>

#include "preload/install.h"
#include "preload/manifest.h"
#include "store/store.h"

#include "benchutil.h"

__attribute__((noreturn)) static void die(const char *msg) {
  fprintf(stderr, "bench/preload: %s\n", msg);
  exit(1);
}

static uint32_t rs = 2463534242u;
static uint32_t rnd(void) {
  rs ^= rs << 13;
  rs ^= rs >> 17;
  rs ^= rs << 5;
  return rs;
}

/* sha256-<base64> of data */
static void sri256(const uint8_t *data, size_t len, char *out, size_t cap) {
  unsigned char d[32], enc[64];
  unsigned dl = 0;
  EVP_Digest(data, len, d, &dl, EVP_sha256(), NULL);
  EVP_EncodeBlock(enc, d, 32);
  snprintf(out, cap, "sha256-%s", enc);
}

static void install(ns_store *s, const char *id, const char *scope, size_t n, size_t body_len,
                    unsigned seed) {
  ns_buf j;
  uint8_t *body = malloc(body_len);
  char integ[128];
  ns_manifest *m = NULL;
  ns_manifest_check chk = {0, 0, 0};
  ns_pl_install *in = NULL;
  char det[256] = "";
  ns_pl_device dev = {NULL, NULL, "bench"};
  ns_buf_init(&j, ns_mem_default(), SIZE_MAX);
  if (!body)
    die("out of memory");
  ns_buf_printf(&j,
                "{\"id\": \"%s\", \"version\": 1, \"scope\": [\"%s\"], \"entry_pages\": "
                "[\"%s0.js\"], \"expires\": \"2099-01-01T00:00:00Z\", \"resources\": [",
                id, scope, scope);
  for (size_t i = 0; i < n; i++) {
    for (size_t k = 0; k < body_len; k++)
      body[k] = (uint8_t)(seed * 7 + i * 13 + k * 31 + (k >> 7));
    sri256(body, body_len, integ, sizeof(integ));
    ns_buf_printf(&j,
                  "%s{\"url\": \"%s%zu.js\", \"integrity\": \"%s\", \"size\": %zu, "
                  "\"content_type\": \"text/javascript\", \"headers\": {\"cache-control\": "
                  "\"max-age=3600\"}, \"priority\": \"%s\"}",
                  i ? "," : "", scope, i, integ, body_len, i == 0 ? "critical" : "high");
  }
  ns_buf_append_str(&j, "]}");
  if (ns_manifest_parse(ns_mem_default(), j.data, j.len, &chk, &m, NULL) != NETSTASH_OK)
    die("manifest rejected");
  if (ns_pl_install_begin(s, ns_mem_default(), j.data, j.len, NULL, 0, "", m, &dev, &in, det,
                          sizeof(det)) != NETSTASH_OK)
    die(det);
  for (size_t i = 0; i < n; i++) {
    for (size_t k = 0; k < body_len; k++)
      body[k] = (uint8_t)(seed * 7 + i * 13 + k * 31 + (k >> 7));
    if (ns_pl_install_body(in, i, body, body_len) != NETSTASH_OK)
      die("install_body");
  }
  if (ns_pl_install_publish(in) != NETSTASH_OK)
    die(det[0] ? det : "publish");
  ns_pl_install_free(in);
  ns_manifest_del(m);
  ns_buf_free(&j);
  free(body);
}

typedef struct phase {
  const char *name;
  uint64_t *t;
  unsigned long allocs;
  long rss_kb;
} phase;

static void report(phase *p, size_t n, uint64_t floor_p50) {
  qsort(p->t, n, sizeof(uint64_t), cmp_u64);
  uint64_t p50 = p->t[n / 2], p99 = p->t[n * 99 / 100];
  printf("%-22s p50 %7llu ns  p99 %7llu ns  %5.2fx floor  allocs/lookup %.3f  peak RSS %ld MB\n",
         p->name, (unsigned long long)p50, (unsigned long long)p99,
         floor_p50 ? (double)p50 / (double)floor_p50 : 1.0, (double)p->allocs / (double)n,
         p->rss_kb / 1024);
}

int main(int argc, char **argv) {
  size_t nres = argc > 1 ? strtoul(argv[1], NULL, 10) : 2000;
  size_t body_len = argc > 2 ? strtoul(argv[2], NULL, 10) : 20480;
  size_t lookups = argc > 3 ? strtoul(argv[3], NULL, 10) : 200000;
  char dir[] = "/tmp/netstash-bench-preload.XXXXXX", det[256];
  ns_store_params sp;
  ns_store *s = NULL;
  if (!nres || !lookups || !mkdtemp(dir))
    die("usage: preload [RESOURCES [BODY_BYTES [LOOKUPS]]]");
  ns_store_params_init(&sp);
  sp.dir = dir;
  sp.map_size = (uint64_t)nres * (body_len + 4096) * 2 + (64u << 20);
  sp.size_limit = sp.map_size;
  if (ns_store_open(&sp, &s, det, sizeof(det)) != NETSTASH_OK)
    die(det);
  install(s, "app", "https://bench.test/app/", nres, body_len, 1);
  install(s, "app-lib", "https://bench.test/app/lib/", 20, 2000, 2); /* overlaps */
  for (int k = 0; k < 6; k++) {
    char id[16], sc[64];
    snprintf(id, sizeof(id), "other%d", k);
    snprintf(sc, sizeof(sc), "https://o%d.bench.test/", k);
    install(s, id, sc, 20, 2000, 3 + (unsigned)k);
  }

  /* floor: the entry keys, known in advance */
  ns_store_reader *r;
  ns_buf *keys = calloc(nres, sizeof(ns_buf));
  uint64_t *t = calloc(lookups, sizeof(uint64_t));
  uint32_t *pick = calloc(lookups, sizeof(uint32_t));
  char (*urls)[64] = calloc(nres, 64);
  if (!keys || !t || !pick || !urls || ns_store_reader_new(s, &r) != NETSTASH_OK)
    die("setup");
  for (size_t i = 0; i < nres; i++) {
    snprintf(urls[i], 64, "https://bench.test/app/%zu.js", i);
    ns_buf_init(&keys[i], ns_mem_default(), NS_STORE_KEY_MAX);
    ns_pl_key_entry(&keys[i], "app", 1, urls[i], strlen(urls[i]));
  }
  for (size_t k = 0; k < lookups; k++)
    pick[k] = rnd() % (uint32_t)nres;
  volatile unsigned sink = 0;
  /* warm the page cache and page tables */
  ns_store_read_begin(r);
  for (size_t i = 0; i < nres; i++) {
    ns_store_record rec;
    ns_store_body b;
    if (ns_store_get_with_body(r, NS_STORE_PRELOAD, keys[i].data, keys[i].len, &rec, &b))
      die("entry missing");
    sink += b.first[0] + b.first[b.first_len - 1];
  }
  ns_store_read_end(r);

  phase fl = {"floor (known key)", t, 0, 0};
  unsigned long a0 = n_alloc;
  for (size_t k = 0; k < lookups; k++) {
    ns_store_record rec;
    ns_store_body b;
    uint64_t t0 = now_ns();
    ns_store_read_begin(r);
    ns_store_get_with_body(r, NS_STORE_PRELOAD, keys[pick[k]].data, keys[pick[k]].len, &rec, &b);
    sink += b.first[0] + b.first[b.first_len - 1];
    ns_store_read_end(r);
    t[k] = now_ns() - t0;
  }
  fl.allocs = n_alloc - a0;
  fl.rss_kb = peak_rss_kb();
  qsort(t, lookups, sizeof(uint64_t), cmp_u64);
  uint64_t floor_p50 = t[lookups / 2], raw_p50 = 0;
  report(&fl, lookups, floor_p50);
  ns_store_reader_del(r);
  ns_store_close(s);

  /* raw LMDB: one mdb_get of the entry record (its key known) per lookup */
  {
    MDB_env *env;
    MDB_txn *txn;
    MDB_dbi dbi;
    char sdir[512];
    snprintf(sdir, sizeof(sdir), "%s/store", dir);
    if (mdb_env_create(&env) || mdb_env_set_maxdbs(env, 16) ||
        mdb_env_open(env, sdir, MDB_RDONLY | MDB_NOTLS, 0600) ||
        mdb_txn_begin(env, NULL, MDB_RDONLY, &txn) || mdb_dbi_open(txn, "preload", 0, &dbi) ||
        mdb_txn_commit(txn) || mdb_txn_begin(env, NULL, MDB_RDONLY, &txn))
      die("raw LMDB open");
    mdb_txn_reset(txn);
    size_t found = 0;
    phase raw = {"raw mdb_get (head)", t, 0, 0};
    a0 = n_alloc;
    for (size_t k = 0; k < lookups; k++) {
      MDB_val key = {keys[pick[k]].len, keys[pick[k]].data}, val;
      uint64_t t0 = now_ns();
      mdb_txn_renew(txn);
      if (mdb_get(txn, dbi, &key, &val) == 0) {
        sink += ((const uint8_t *)val.mv_data)[0];
        found++;
      }
      mdb_txn_reset(txn);
      t[k] = now_ns() - t0;
    }
    raw.allocs = n_alloc - a0;
    if (found != lookups)
      die("raw mdb_get missed");
    raw.rss_kb = peak_rss_kb();
    report(&raw, lookups, floor_p50);
    qsort(t, lookups, sizeof(uint64_t), cmp_u64);
    raw_p50 = t[lookups / 2];
    mdb_txn_abort(txn);
    mdb_env_close(env);
  }

  /* the public lookup through a context on the same profile */
  netstash_options *o;
  netstash_ctx *ctx;
  netstash_preload_hit *h;
  if (netstash_options_new(&o) || netstash_options_set_profile_dir(o, dir) ||
      netstash_ctx_new(&ctx, o, det, sizeof(det)) || netstash_preload_hit_new(ctx, &h))
    die("context");
  netstash_options_del(o);
  phase hit = {"hit (lookup + view)", t, 0, 0};
  a0 = n_alloc;
  for (size_t k = 0; k < lookups; k++) {
    const uint8_t *d;
    size_t len;
    uint64_t t0 = now_ns();
    if (netstash_preload_lookup(h, urls[pick[k]]) != NETSTASH_OK)
      die("hit missed");
    uint32_t nc = netstash_preload_hit_chunk_count(h);
    netstash_preload_hit_chunk(h, 0, &d, &len);
    sink += d[0];
    netstash_preload_hit_chunk(h, nc - 1, &d, &len);
    sink += d[len - 1];
    t[k] = now_ns() - t0;
  }
  hit.allocs = n_alloc - a0;
  hit.rss_kb = peak_rss_kb();
  report(&hit, lookups, floor_p50);
  printf("%-22s %.2fx raw mdb_get p50\n", "  hit vs raw", (double)t[lookups / 2] / (double)raw_p50);

  phase miss = {"miss (in scope)", t, 0, 0};
  a0 = n_alloc;
  for (size_t k = 0; k < lookups; k++) {
    char u[80];
    snprintf(u, sizeof(u), "https://bench.test/app/x%u.js", pick[k]);
    uint64_t t0 = now_ns();
    if (netstash_preload_lookup(h, u) != NETSTASH_E_NOT_FOUND)
      die("miss hit");
    t[k] = now_ns() - t0;
  }
  miss.allocs = n_alloc - a0;
  miss.rss_kb = peak_rss_kb();
  report(&miss, lookups, floor_p50);

  phase out = {"miss (no scope)", t, 0, 0};
  a0 = n_alloc;
  for (size_t k = 0; k < lookups; k++) {
    uint64_t t0 = now_ns();
    if (netstash_preload_lookup(h, "https://elsewhere.test/a.js") != NETSTASH_E_NOT_FOUND)
      die("miss hit");
    t[k] = now_ns() - t0;
  }
  out.allocs = n_alloc - a0;
  out.rss_kb = peak_rss_kb();
  report(&out, lookups, floor_p50);
  printf("(%zu resources of %zu bytes in the big manifest, 8 manifests, %zu lookups; sink %u)\n",
         nres, body_len, lookups, sink);

  netstash_preload_hit_del(h);
  netstash_ctx_del(ctx);
  for (size_t i = 0; i < nres; i++)
    ns_buf_free(&keys[i]);
  free(keys);
  free(t);
  free(pick);
  free(urls);
  bench_rmtree(dir);
  return 0;
}
