/*
 * store.c — the LMDB store (see store.h for the API and the rules,
 * doc/internals/store.md for the reasoning and the measurements).
 */
#include "ns_setup.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

#include <lmdb.h>
#include <openssl/evp.h>
#include <brotli/encode.h>

#include "core/buf.h"
#include "core/map.h"
#include "store/store.h"
#include "store/touches.h"

/* ------------------------------------------------------------ layout */

enum {
  DBI_BODIES = 0,
  DBI_HTTP,
  DBI_PRELOAD,
  DBI_MANIFESTS,
  DBI_COOKIES,
  DBI_META,
  DBI_REFS,
  DBI_GCQ,
  DBI_LRU,
  DBI_N
};
static const char *const dbi_names[DBI_N] = {"bodies", "http", "preload", "manifests", "cookies",
                                             "meta",   "refs", "gcq",     "lru"};
static const int rec_dbi[NS_STORE_DB_COUNT_] = {DBI_HTTP, DBI_PRELOAD, DBI_MANIFESTS, DBI_COOKIES};

/* Body header, little-endian, NS_STORE_BODY_HDR bytes, followed in the same
 * value by chunk 0:
 *   0 u32 magic "NSB1"  4 u8 coding  5 u8 flags  6 u16 0  8 u32 nchunks
 *   12 u32 0  16 u64 stored_size  24 u64 decoded_size */
#define BODY_MAGIC 0x3142534eu
#define BODY_F_RECOMPRESSED 0x1u
#define FIRST_CAP (NS_STORE_CHUNK - NS_STORE_BODY_HDR)

/* Record header, REC_HDR bytes, followed by the caller's value:
 *   0 u8 version (1)  1 u8 flags  2 u16 0  4 u32 0  8 u64 atime_ms
 *   16 hash[32] (zero when there is no body) */
#define REC_HDR 48u
#define REC_VERSION 1u
#define REC_F_BODY 0x1u
#define REC_F_PINNED 0x2u
/* A record value's cap (cache heads, manifests: far below). */
#define REC_VALUE_MAX (16u << 20)

#define LRU_KEY_MAX (8 + 1 + NS_STORE_KEY_MAX)
#define TOUCH_SLOTS 256
#define WRITE_ATTEMPTS 24

/* Brotli recompression rule (measured: doc/internals/store.md). */
#define BR_QUALITY 5
#define BR_MIN_INPUT 1024u
#define BR_MIN_SAVING 512u

struct ns_store {
  const ns_mem *mem;
  ns_store_params p;
  char *dir; /* DIR/store */
  char *created_by;
  MDB_env *env;
  MDB_dbi dbi[DBI_N];
  unsigned psize;
  int lockfd;
  pthread_mutex_t wlock;    /* writers of this handle */
  pthread_rwlock_t maplock; /* shared: a txn is open; exclusive: remap */
  ns_touches *touches;      /* access notes of every process (NULL: read-only) */
  ns_touch *pending;        /* writer side: TOUCH_SLOTS taken from them */
  size_t npending;
  EVP_MD *sha;
  EVP_MD_CTX *md; /* writer side */
  ns_buf scratch; /* writer side */
  uint8_t gc_pos[NS_STORE_HASH_LEN];
  int gc_pos_valid;
  _Atomic uint64_t evicted, grown; /* written by writers, read by ns_store_stats */
};

struct ns_store_reader {
  ns_store *s;
  MDB_txn *txn;
  int active;
};

struct ns_store_txn {
  ns_store *s;
  MDB_txn *txn;
  int map_full;
  uint64_t start_ms;
  uint64_t bytes; /* value bytes written, sizes map growth */
};

/* ------------------------------------------------------------ helpers */

static void put_le32(uint8_t *p, uint32_t v) {
  for (int i = 0; i < 4; i++)
    p[i] = (uint8_t)(v >> (8 * i));
}
static void put_le64(uint8_t *p, uint64_t v) {
  for (int i = 0; i < 8; i++)
    p[i] = (uint8_t)(v >> (8 * i));
}
static uint32_t get_le32(const uint8_t *p) {
  uint32_t v = 0;
  for (int i = 3; i >= 0; i--)
    v = (v << 8) | p[i];
  return v;
}
static uint64_t get_le64(const uint8_t *p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; i--)
    v = (v << 8) | p[i];
  return v;
}
static void put_be64(uint8_t *p, uint64_t v) {
  for (int i = 0; i < 8; i++)
    p[i] = (uint8_t)(v >> (56 - 8 * i));
}
static uint64_t get_be64(const uint8_t *p) {
  uint64_t v = 0;
  for (int i = 0; i < 8; i++)
    v = (v << 8) | p[i];
  return v;
}

static uint64_t wall_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static struct timespec deadline_in(uint32_t ms) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  ts.tv_sec += ms / 1000;
  ts.tv_nsec += (long)(ms % 1000) * 1000000L;
  if (ts.tv_nsec >= 1000000000L) {
    ts.tv_sec++;
    ts.tv_nsec -= 1000000000L;
  }
  return ts;
}

static int past(const struct timespec *d) {
  struct timespec now;
  clock_gettime(CLOCK_REALTIME, &now);
  return now.tv_sec > d->tv_sec || (now.tv_sec == d->tv_sec && now.tv_nsec >= d->tv_nsec);
}


/* Every LMDB (and errno) return code, mapped. MDB_MAP_RESIZED and
 * MDB_MAP_FULL are also handled where they occur; MDB_KEYEXIST is never
 * requested (no NOOVERWRITE). */
static netstash_error map_rc(int rc) {
  switch (rc) {
  case MDB_SUCCESS:
    return NETSTASH_OK;
  case MDB_NOTFOUND:
    return NETSTASH_E_NOT_FOUND;
  case MDB_MAP_FULL:
  case ENOSPC:
  case EDQUOT:
    return NETSTASH_E_STORE_FULL;
  case MDB_CORRUPTED:
  case MDB_PAGE_NOTFOUND:
  case MDB_INVALID:
  case MDB_INCOMPATIBLE:
  case MDB_PANIC:
    return NETSTASH_E_STORE_CORRUPT;
  case MDB_VERSION_MISMATCH:
    return NETSTASH_E_STORE_VERSION;
  case MDB_READERS_FULL:
  case MDB_TLS_FULL:
  case MDB_BAD_RSLOT:
    return NETSTASH_E_STORE_BUSY;
  case MDB_TXN_FULL:
  case MDB_BAD_VALSIZE:
  case MDB_PAGE_FULL:
  case MDB_CURSOR_FULL:
    return NETSTASH_E_TOO_LARGE;
  case ENOMEM:
    return NETSTASH_E_NOMEM;
  case MDB_KEYEXIST:
  case MDB_DBS_FULL:
  case MDB_MAP_RESIZED:
  case MDB_BAD_TXN:
  case MDB_BAD_DBI:
  case EINVAL:
    return NETSTASH_E_INTERNAL;
  default:
    return NETSTASH_E_IO;
  }
}

static void mval(MDB_val *v, const void *p, size_t n) {
  v->mv_data = (void *)(uintptr_t)p;
  v->mv_size = n;
}

/* Map growth and remapping: no transaction of this process may be open. */
static netstash_error remap(ns_store *s, size_t size) {
  struct timespec d = deadline_in(s->p.write_wait_ms);
  int rc;
  if (pthread_rwlock_timedwrlock(&s->maplock, &d) != 0)
    return NETSTASH_E_STORE_BUSY;
  rc = mdb_env_set_mapsize(s->env, size);
  pthread_rwlock_unlock(&s->maplock);
  return map_rc(rc);
}

static uint64_t map_size(ns_store *s) {
  MDB_envinfo info;
  if (mdb_env_info(s->env, &info) != 0)
    return 0;
  return info.me_mapsize;
}

/* Live bytes: the pages of every database as this transaction sees them. */
static uint64_t used_bytes(ns_store *s, MDB_txn *txn) {
  uint64_t pages = 0;
  for (int i = 0; i < DBI_N; i++) {
    MDB_stat st;
    if (mdb_stat(txn, s->dbi[i], &st) == 0)
      pages += st.ms_branch_pages + st.ms_leaf_pages + st.ms_overflow_pages;
  }
  return pages * s->psize;
}

/* ------------------------------------------------------------ records */

typedef struct rec_hdr {
  uint32_t flags;
  uint64_t atime;
  uint8_t hash[NS_STORE_HASH_LEN];
} rec_hdr;

static netstash_error rec_parse(const MDB_val *v, rec_hdr *h) {
  const uint8_t *p = v->mv_data;
  if (v->mv_size < REC_HDR || p[0] != REC_VERSION)
    return NETSTASH_E_STORE_CORRUPT;
  h->flags = p[1];
  h->atime = get_le64(p + 8);
  memcpy(h->hash, p + 16, NS_STORE_HASH_LEN);
  return NETSTASH_OK;
}

static void rec_to_public(const MDB_val *v, const rec_hdr *h, ns_store_record *out) {
  out->value = (const uint8_t *)v->mv_data + REC_HDR;
  out->value_len = v->mv_size - REC_HDR;
  out->flags = (h->flags & REC_F_PINNED) ? NS_STORE_REC_PINNED : 0;
  out->has_body = (h->flags & REC_F_BODY) != 0;
  memcpy(out->body_hash, h->hash, NS_STORE_HASH_LEN);
  out->atime_ms = h->atime;
}

static int evictable(ns_store_db db, uint32_t rflags) {
  return (db == NS_STORE_HTTP || db == NS_STORE_PRELOAD) && !(rflags & REC_F_PINNED);
}

static size_t lru_key(uint8_t *out, uint64_t atime, ns_store_db db, const void *key,
                      size_t keylen) {
  put_be64(out, atime);
  out[8] = (uint8_t)db;
  memcpy(out + 9, key, keylen);
  return 9 + keylen;
}

static int valid_key(ns_store_db db, const void *key, size_t keylen) {
  return (unsigned)db < NS_STORE_DB_COUNT_ && key && keylen > 0 && keylen <= NS_STORE_KEY_MAX;
}

/* ------------------------------------------------------------ open */

void ns_store_params_init(ns_store_params *p) {
  memset(p, 0, sizeof(*p));
  p->mem = ns_mem_default();
  p->size_limit = 256ull << 20;
  p->map_size = 64ull << 20;
  p->map_size_max = 4ull << 30;
  p->max_body = 256ull << 20;
  p->write_wait_ms = 1000;
  p->gc_grace_ms = 60000;
  p->max_readers = 126;
  p->touch_granule_ms = 1000;
}

/* mkdir -p with mode 0700 for what it creates (a default profile such as
 * ~/.local/share/netstash may miss its parents on a fresh account). */
static netstash_error mkdir0700(const char *path, char *detail, size_t dlen) {
  if (mkdir(path, 0700) == 0 || errno == EEXIST)
    return NETSTASH_OK;
  if (errno == ENOENT) {
    char tmp[4096];
    size_t n = strlen(path);
    if (n < sizeof(tmp)) {
      memcpy(tmp, path, n + 1);
      for (char *q = tmp + 1; *q; q++) {
        if (*q != '/')
          continue;
        *q = '\0';
        if (mkdir(tmp, 0700) != 0 && errno != EEXIST)
          break;
        *q = '/';
      }
    }
  }
  if (mkdir(path, 0700) == 0 || errno == EEXIST)
    return NETSTASH_OK;
  ns_detailf(detail, dlen, "cannot create %s: %s", path, strerror(errno));
  return NETSTASH_E_IO;
}

static netstash_error wlock_acquire(ns_store *s);
static void wlock_release(ns_store *s);

/* Creates the databases and the meta records of a new store. */
static netstash_error create_schema(ns_store *s, char *detail, size_t dlen) {
  MDB_txn *txn = NULL;
  netstash_error err;
  int rc;
  uint8_t v[8];
  MDB_val k, d;

  err = wlock_acquire(s);
  if (err != NETSTASH_OK) {
    ns_detailf(detail, dlen, "store %s is being written by another process", s->dir);
    return err;
  }
  rc = mdb_txn_begin(s->env, NULL, 0, &txn);
  if (rc != 0)
    goto fail;
  for (int i = 0; i < DBI_N; i++) {
    rc = mdb_dbi_open(txn, dbi_names[i], MDB_CREATE, &s->dbi[i]);
    if (rc != 0)
      goto fail;
  }
  mval(&k, "schema", 6);
  rc = mdb_get(txn, s->dbi[DBI_META], &k, &d);
  if (rc == MDB_NOTFOUND) { /* nobody created it in the meantime */
    put_le32(v, NS_STORE_SCHEMA_VERSION);
    mval(&d, v, 4);
    rc = mdb_put(txn, s->dbi[DBI_META], &k, &d, 0);
    if (rc != 0)
      goto fail;
    mval(&k, "created_by", 10);
    mval(&d, s->created_by, strlen(s->created_by));
    rc = mdb_put(txn, s->dbi[DBI_META], &k, &d, 0);
    if (rc != 0)
      goto fail;
    put_le64(v, wall_ms());
    mval(&k, "created_ms", 10);
    mval(&d, v, 8);
    rc = mdb_put(txn, s->dbi[DBI_META], &k, &d, 0);
  }
  if (rc != 0)
    goto fail;
  rc = mdb_txn_commit(txn);
  txn = NULL;
  if (rc != 0)
    goto fail;
  wlock_release(s);
  return NETSTASH_OK;
fail:
  if (txn)
    mdb_txn_abort(txn);
  wlock_release(s);
  ns_detailf(detail, dlen, "cannot initialise store %s: %s", s->dir, mdb_strerror(rc));
  return map_rc(rc);
}

/* Opens and checks the schema and every database in a read transaction. */
static netstash_error check_store(ns_store *s, int *fresh, char *detail, size_t dlen) {
  MDB_txn *txn = NULL;
  MDB_dbi main_dbi, meta;
  MDB_stat st;
  MDB_envinfo info;
  MDB_val k, d;
  netstash_error err = NETSTASH_OK;
  int rc;
  uint32_t schema;

  *fresh = 0;
  rc = mdb_txn_begin(s->env, NULL, MDB_RDONLY, &txn);
  if (rc != 0)
    goto lmdb_fail;
  rc = mdb_dbi_open(txn, NULL, 0, &main_dbi);
  if (rc == 0)
    rc = mdb_stat(txn, main_dbi, &st);
  if (rc != 0)
    goto lmdb_fail;
  rc = mdb_dbi_open(txn, "meta", 0, &meta);
  if (rc == MDB_NOTFOUND && st.ms_entries == 0) {
    *fresh = 1;
    goto done;
  }
  if (rc == MDB_NOTFOUND) {
    err = NETSTASH_E_STORE_CORRUPT;
    ns_detailf(detail, dlen,
               "%s is an LMDB environment but not a netstash store (no meta "
               "database): move it away",
               s->dir);
    goto done;
  }
  if (rc != 0)
    goto lmdb_fail;
  mval(&k, "schema", 6);
  rc = mdb_get(txn, meta, &k, &d);
  if (rc == MDB_NOTFOUND || (rc == 0 && d.mv_size != 4)) {
    err = NETSTASH_E_STORE_CORRUPT;
    ns_detailf(detail, dlen,
               "store %s has no valid schema record: move it away or run "
               "`netstash purge`",
               s->dir);
    goto done;
  }
  if (rc != 0)
    goto lmdb_fail;
  schema = get_le32(d.mv_data);
  if (schema > NS_STORE_SCHEMA_VERSION) {
    err = NETSTASH_E_STORE_VERSION;
    ns_detailf(detail, dlen,
               "store %s has schema version %u, newer than this netstash "
               "supports (%u): upgrade netstash, or move the directory away",
               s->dir, schema, NS_STORE_SCHEMA_VERSION);
    goto done;
  }
  if (schema == 0) {
    err = NETSTASH_E_STORE_CORRUPT;
    ns_detailf(detail, dlen, "store %s has schema version 0: move it away", s->dir);
    goto done;
  }
  /* Every database: open it, check its statistics against the file, and read
   * its first and last entries (walks root to leaf at both ends). */
  if (mdb_env_info(s->env, &info) != 0) {
    err = NETSTASH_E_INTERNAL;
    goto done;
  }
  for (int i = 0; i < DBI_N; i++) {
    MDB_cursor *c;
    rc = mdb_dbi_open(txn, dbi_names[i], 0, &s->dbi[i]);
    if (rc == MDB_NOTFOUND) {
      err = NETSTASH_E_STORE_CORRUPT;
      ns_detailf(detail, dlen,
                 "store %s lacks the '%s' database: move it away or run "
                 "`netstash purge`",
                 s->dir, dbi_names[i]);
      goto done;
    }
    if (rc != 0)
      goto lmdb_fail;
    rc = mdb_stat(txn, s->dbi[i], &st);
    if (rc != 0)
      goto lmdb_fail;
    if (st.ms_depth > 32 ||
        st.ms_branch_pages + st.ms_leaf_pages + st.ms_overflow_pages > info.me_last_pgno + 1) {
      err = NETSTASH_E_STORE_CORRUPT;
      ns_detailf(detail, dlen,
                 "store %s: database '%s' has impossible statistics: move "
                 "it away or run `netstash purge`",
                 s->dir, dbi_names[i]);
      goto done;
    }
    rc = mdb_cursor_open(txn, s->dbi[i], &c);
    if (rc != 0)
      goto lmdb_fail;
    rc = mdb_cursor_get(c, &k, &d, MDB_FIRST);
    if (rc == 0)
      rc = mdb_cursor_get(c, &k, &d, MDB_LAST);
    mdb_cursor_close(c);
    if (rc != 0 && rc != MDB_NOTFOUND)
      goto lmdb_fail;
  }
  rc = mdb_txn_commit(txn); /* keeps the dbi handles */
  txn = NULL;
  if (rc != 0)
    goto lmdb_fail;
  goto done;
lmdb_fail:
  err = map_rc(rc);
  if (err == NETSTASH_E_NOT_FOUND || err == NETSTASH_E_INTERNAL)
    err = NETSTASH_E_STORE_CORRUPT;
  ns_detailf(detail, dlen,
             "store %s is unreadable (%s): move it away or run `netstash "
             "purge`",
             s->dir, mdb_strerror(rc));
done:
  if (txn)
    mdb_txn_abort(txn);
  return err;
}

/* 1 when every page from first to last (inclusive) is in LMDB's free list:
 * pages nothing references, that LMDB writes before it reads them again. */
static int pages_free(ns_store *s, uint64_t first, uint64_t last) {
  MDB_txn *txn = NULL;
  MDB_cursor *c = NULL;
  MDB_val k, v;
  uint64_t n = last - first + 1, marked = 0;
  uint8_t *bits;
  int rc;
  if (last < first || n > ((uint64_t)1 << 24))
    return 0;
  bits = ns_calloc(s->mem, (size_t)(n + 7) / 8, 1);
  if (!bits)
    return 0;
  rc = mdb_txn_begin(s->env, NULL, MDB_RDONLY, &txn);
  if (rc == 0)
    rc = mdb_cursor_open(txn, 0, &c); /* dbi 0: the free list, by transaction */
  for (int op = MDB_FIRST; rc == 0; op = MDB_NEXT) {
    const size_t *ids;
    size_t cnt;
    if ((rc = mdb_cursor_get(c, &k, &v, (MDB_cursor_op)op)) != 0)
      break;
    ids = v.mv_data; /* a count, then that many page numbers */
    if (v.mv_size < sizeof(size_t) || (cnt = ids[0]) > v.mv_size / sizeof(size_t) - 1) {
      rc = MDB_CORRUPTED;
      break;
    }
    for (size_t i = 1; i <= cnt; i++) {
      uint64_t pg = ids[i];
      if (pg >= first && pg <= last && !(bits[(pg - first) / 8] & (1u << ((pg - first) % 8)))) {
        bits[(pg - first) / 8] |= (uint8_t)(1u << ((pg - first) % 8));
        marked++;
      }
    }
  }
  if (c)
    mdb_cursor_close(c);
  if (txn)
    mdb_txn_abort(txn);
  ns_free(s->mem, bits);
  return rc == MDB_NOTFOUND && marked == n;
}

/* LMDB counts pages a transaction allocated and freed again ("loose"
 * pages) in the meta page's last page number without writing them, so a
 * sound data file can end before the last pages it counts — free pages,
 * never read. Other readers would take such a file for a truncated one
 * (check_file): after each write it is extended (sparse) to cover them.
 * Under the write lock. */
static void cover_tail(ns_store *s) {
  MDB_envinfo info;
  struct stat sb;
  int fd;
  uint64_t need;
  if (mdb_env_info(s->env, &info) != 0 || mdb_env_get_fd(s->env, &fd) != 0 || fstat(fd, &sb) != 0)
    return;
  need = ((uint64_t)info.me_last_pgno + 1) * s->psize;
  if ((uint64_t)sb.st_size < need && ftruncate(fd, (off_t)need) != 0)
    return; /* the next writable open extends it */
}

/* Checks that the data file holds every page the meta page claims (reading
 * past its end through the map would be SIGBUS). A file that ends before
 * pages LMDB keeps as free only (cover_tail's case, left by an earlier
 * version or a crash between a commit and its extension) is extended when
 * the store is writable. */
static netstash_error check_file(ns_store *s, char *detail, size_t dlen) {
  MDB_envinfo info;
  MDB_stat st;
  struct stat sb;
  int fd;
  uint64_t need;
  if (mdb_env_info(s->env, &info) != 0 || mdb_env_stat(s->env, &st) != 0 ||
      mdb_env_get_fd(s->env, &fd) != 0 || fstat(fd, &sb) != 0) {
    ns_detailf(detail, dlen, "cannot inspect store %s", s->dir);
    return NETSTASH_E_IO;
  }
  s->psize = st.ms_psize;
  if (st.ms_psize < 512 || st.ms_psize > 65536 || (st.ms_psize & (st.ms_psize - 1)) != 0) {
    ns_detailf(detail, dlen,
               "store %s has an impossible page size (%u): move it away or "
               "run `netstash purge`",
               s->dir, st.ms_psize);
    return NETSTASH_E_STORE_CORRUPT;
  }
  need = ((uint64_t)info.me_last_pgno + 1) * st.ms_psize;
  if ((uint64_t)sb.st_size < need && need <= info.me_mapsize && !s->p.read_only &&
      wlock_acquire(s) == NETSTASH_OK) {
    /* under the write lock: no writer extends the file meanwhile */
    if (mdb_env_info(s->env, &info) == 0 && fstat(fd, &sb) == 0 &&
        (need = ((uint64_t)info.me_last_pgno + 1) * st.ms_psize) > (uint64_t)sb.st_size &&
        ftruncate(fd, (off_t)need) == 0) {
      /* the free list is read through the map: covered first */
      if (pages_free(s, (uint64_t)sb.st_size / st.ms_psize, info.me_last_pgno)) {
        sb.st_size = (off_t)need;
      } else {
        int undone = ftruncate(fd, sb.st_size); /* as found; refused below */
        NS_UNUSED(undone);
      }
    }
    wlock_release(s);
  }
  if ((uint64_t)sb.st_size < need || need > info.me_mapsize) {
    ns_detailf(detail, dlen,
               "store %s is truncated (data.mdb has %llu bytes, its pages "
               "need %llu): move it away or run `netstash purge`",
               s->dir, (unsigned long long)sb.st_size, (unsigned long long)need);
    return NETSTASH_E_STORE_CORRUPT;
  }
  return NETSTASH_OK;
}

netstash_error ns_store_open(const ns_store_params *p, ns_store **out, char *detail, size_t dlen) {
  ns_store *s = NULL;
  netstash_error err;
  int rc, fresh = 0, locks = 0;
  size_t n;
  char *path = NULL;
  struct stat sb;
  unsigned flags;

  if (detail && dlen)
    detail[0] = '\0';
  if (!out)
    return NETSTASH_E_INVALID_ARGUMENT;
  *out = NULL;
  if (!p || !p->dir || !p->dir[0] || !p->mem || p->map_size_max < p->map_size || p->map_size == 0) {
    ns_detailf(detail, dlen, "store: invalid parameters");
    return NETSTASH_E_INVALID_ARGUMENT;
  }
  s = ns_calloc(p->mem, 1, sizeof(*s));
  if (!s)
    return NETSTASH_E_NOMEM;
  s->mem = p->mem;
  s->p = *p;
  s->lockfd = -1;
  ns_buf_init(&s->scratch, s->mem, REC_VALUE_MAX + REC_HDR);
  err = NETSTASH_E_NOMEM;
  n = strlen(p->dir);
  s->dir = ns_malloc(s->mem, n + sizeof("/store/write.lock"));
  s->created_by = ns_strdup(s->mem, p->created_by ? p->created_by : "netstash");
  path = ns_malloc(s->mem, n + sizeof("/store/write.lock"));
  s->pending = ns_calloc(s->mem, TOUCH_SLOTS, sizeof(ns_touch));
  if (!s->dir || !s->created_by || !path || !s->pending)
    goto fail;
  s->p.dir = NULL;
  s->p.created_by = NULL;
  if (pthread_mutex_init(&s->wlock, NULL) != 0)
    goto fail;
  if (pthread_rwlock_init(&s->maplock, NULL) != 0) {
    pthread_mutex_destroy(&s->wlock);
    goto fail;
  }
  locks = 1;
  s->sha = EVP_MD_fetch(NULL, "SHA256", NULL);
  s->md = EVP_MD_CTX_new();
  if (!s->sha || !s->md)
    goto fail;

  memcpy(s->dir, p->dir, n);
  memcpy(s->dir + n, "/store", sizeof("/store"));
  if (!p->read_only) {
    err = mkdir0700(p->dir, detail, dlen);
    if (err == NETSTASH_OK)
      err = mkdir0700(s->dir, detail, dlen);
    if (err != NETSTASH_OK)
      goto fail;
  }
  memcpy(path, s->dir, n + 6);
  memcpy(path + n + 6, "/data.mdb", sizeof("/data.mdb"));
  if (stat(path, &sb) != 0) {
    if (p->read_only) {
      err = NETSTASH_E_NOT_FOUND;
      ns_detailf(detail, dlen, "no store in %s", p->dir);
      goto fail;
    }
  } else if (sb.st_size == 0) {
    err = NETSTASH_E_STORE_CORRUPT;
    ns_detailf(detail, dlen,
               "store %s is empty (data.mdb has 0 bytes): move it away or "
               "run `netstash purge`",
               s->dir);
    goto fail;
  }
  if (!p->read_only) {
    memcpy(path + n + 6, "/write.lock", sizeof("/write.lock"));
    s->lockfd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (s->lockfd < 0) {
      err = NETSTASH_E_IO;
      if (errno == EROFS || errno == EACCES || errno == EPERM)
        ns_detailf(detail, dlen,
                   "profile %s is read-only (cannot open %s: %s): a context needs a writable "
                   "profile directory",
                   p->dir, path, strerror(errno));
      else
        ns_detailf(detail, dlen, "cannot open %s: %s", path, strerror(errno));
      goto fail;
    }
  }

  rc = mdb_env_create(&s->env);
  if (rc == 0)
    rc = mdb_env_set_maxdbs(s->env, DBI_N + 2);
  if (rc == 0)
    rc = mdb_env_set_mapsize(s->env, (size_t)p->map_size);
  if (rc == 0 && p->max_readers)
    rc = mdb_env_set_maxreaders(s->env, p->max_readers);
  if (rc != 0) {
    err = map_rc(rc);
    ns_detailf(detail, dlen, "cannot create the LMDB environment: %s", mdb_strerror(rc));
    goto fail;
  }
  flags = MDB_NOTLS | p->lmdb_flags | (p->read_only ? MDB_RDONLY : 0);
  rc = mdb_env_open(s->env, s->dir, flags, 0600);
  if (rc != 0) {
    err = map_rc(rc);
    if (rc == MDB_INVALID)
      ns_detailf(detail, dlen,
                 "store %s is corrupt or not an LMDB file (bad meta pages): "
                 "move it away or run `netstash purge`",
                 s->dir);
    else if (rc == MDB_VERSION_MISMATCH)
      ns_detailf(detail, dlen,
                 "store %s was written by an incompatible LMDB format "
                 "version: move it away",
                 s->dir);
    else if (rc == ENOENT) {
      err = NETSTASH_E_NOT_FOUND;
      ns_detailf(detail, dlen, "no store in %s", p->dir);
    } else {
      if (err == NETSTASH_E_INTERNAL)
        err = NETSTASH_E_IO;
      ns_detailf(detail, dlen, "cannot open store %s: %s", s->dir, mdb_strerror(rc));
    }
    goto fail;
  }
  if (mdb_env_get_maxkeysize(s->env) < LRU_KEY_MAX) {
    err = NETSTASH_E_UNSUPPORTED;
    ns_detailf(detail, dlen, "LMDB build with a key limit below %d", LRU_KEY_MAX);
    goto fail;
  }
  {
    int dead = 0; /* reader slots of killed processes pin old pages */
    rc = mdb_reader_check(s->env, &dead);
    if (rc != 0) {
      err = map_rc(rc);
      ns_detailf(detail, dlen, "cannot check the reader table of %s: %s", s->dir, mdb_strerror(rc));
      goto fail;
    }
  }
  err = check_file(s, detail, dlen);
  if (err != NETSTASH_OK)
    goto fail;
  err = check_store(s, &fresh, detail, dlen);
  if (err != NETSTASH_OK)
    goto fail;
  if (fresh) {
    if (p->read_only) {
      err = NETSTASH_E_NOT_FOUND;
      ns_detailf(detail, dlen, "store %s is not initialised", s->dir);
      goto fail;
    }
    err = create_schema(s, detail, dlen);
    if (err == NETSTASH_OK)
      err = check_store(s, &fresh, detail, dlen);
    if (err != NETSTASH_OK)
      goto fail;
  }
  if (!p->read_only) {
    s->touches = ns_touches_open(s->mem, s->dir, p->touch_granule_ms);
    if (!s->touches) {
      err = NETSTASH_E_NOMEM;
      goto fail;
    }
  }
  ns_free(s->mem, path);
  *out = s;
  return NETSTASH_OK;

fail:
  ns_free(p->mem, path);
  if (s->env)
    mdb_env_close(s->env);
  if (s->lockfd >= 0)
    close(s->lockfd);
  EVP_MD_CTX_free(s->md);
  EVP_MD_free(s->sha);
  if (locks) {
    pthread_rwlock_destroy(&s->maplock);
    pthread_mutex_destroy(&s->wlock);
  }
  ns_buf_free(&s->scratch);
  ns_touches_close(s->touches);
  ns_free(s->mem, s->pending);
  ns_free(s->mem, s->created_by);
  ns_free(s->mem, s->dir);
  ns_free(p->mem, s);
  return err;
}

void ns_store_close(ns_store *s) {
  const ns_mem *m;
  if (!s)
    return;
  m = s->mem;
  mdb_env_close(s->env);
  if (s->lockfd >= 0)
    close(s->lockfd);
  EVP_MD_CTX_free(s->md);
  EVP_MD_free(s->sha);
  pthread_rwlock_destroy(&s->maplock);
  pthread_mutex_destroy(&s->wlock);
  ns_buf_free(&s->scratch);
  ns_touches_close(s->touches);
  ns_free(m, s->pending);
  ns_free(m, s->created_by);
  ns_free(m, s->dir);
  ns_free(m, s);
}

/* ------------------------------------------------------------ reading */

netstash_error ns_store_reader_new(ns_store *s, ns_store_reader **out) {
  ns_store_reader *r;
  int rc;
  if (!s || !out)
    return NETSTASH_E_INVALID_ARGUMENT;
  *out = NULL;
  r = ns_calloc(s->mem, 1, sizeof(*r));
  if (!r)
    return NETSTASH_E_NOMEM;
  r->s = s;
  pthread_rwlock_rdlock(&s->maplock);
  rc = mdb_txn_begin(s->env, NULL, MDB_RDONLY, &r->txn);
  if (rc == 0)
    mdb_txn_reset(r->txn);
  pthread_rwlock_unlock(&s->maplock);
  if (rc == MDB_MAP_RESIZED) {
    netstash_error err = remap(s, 0);
    if (err != NETSTASH_OK) {
      ns_free(s->mem, r);
      return err;
    }
    pthread_rwlock_rdlock(&s->maplock);
    rc = mdb_txn_begin(s->env, NULL, MDB_RDONLY, &r->txn);
    if (rc == 0)
      mdb_txn_reset(r->txn);
    pthread_rwlock_unlock(&s->maplock);
  }
  if (rc != 0) {
    ns_free(s->mem, r);
    return map_rc(rc);
  }
  *out = r;
  return NETSTASH_OK;
}

void ns_store_reader_del(ns_store_reader *r) {
  if (!r)
    return;
  ns_store_read_end(r);
  mdb_txn_abort(r->txn);
  ns_free(r->s->mem, r);
}

netstash_error ns_store_read_begin(ns_store_reader *r) {
  int rc;
  if (!r)
    return NETSTASH_E_INVALID_ARGUMENT;
  if (r->active)
    return NETSTASH_E_ILLEGAL_STATE;
  for (int tries = 0;; tries++) {
    pthread_rwlock_rdlock(&r->s->maplock);
    rc = mdb_txn_renew(r->txn);
    if (rc == 0) {
      r->active = 1;
      return NETSTASH_OK;
    }
    mdb_txn_reset(r->txn);
    pthread_rwlock_unlock(&r->s->maplock);
    if (rc != MDB_MAP_RESIZED || tries == 3)
      return map_rc(rc);
    /* Another process grew the map: follow it. */
    netstash_error err = remap(r->s, 0);
    if (err != NETSTASH_OK)
      return err;
  }
}

void ns_store_read_end(ns_store_reader *r) {
  if (!r || !r->active)
    return;
  mdb_txn_reset(r->txn);
  r->active = 0;
  pthread_rwlock_unlock(&r->s->maplock);
}

/* Notes an access to an evictable record (its access time atime, as read)
 * for the next write of any process (touches.h: no allocation, no lock) —
 * unless that write would drop the note: a record whose time is less than
 * a granule old (apply_touches; the record's time can only have moved on
 * since this snapshot), the usual case for a hot record while writes come.
 * The coarse clock (a few ms, the kernel's tick) is a third of what the
 * precise one costs on a hit, and access times only matter to the second
 * (touch_granule_ms). */
static void touch_note(ns_store *s, ns_store_db db, const void *key, size_t keylen,
                       uint64_t atime) {
  struct timespec ts;
  uint64_t now;
  clock_gettime(CLOCK_REALTIME_COARSE, &ts);
  now = (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
  if (now <= atime + s->p.touch_granule_ms)
    return;
  ns_touches_note(s->touches, (unsigned)db, key, keylen, now);
}

static netstash_error get_in(ns_store *s, MDB_txn *txn, ns_store_db db, const void *key,
                             size_t keylen, ns_store_record *out, rec_hdr *hp) {
  MDB_val k, v;
  rec_hdr h;
  netstash_error err;
  int rc;
  if (!valid_key(db, key, keylen) || !out)
    return NETSTASH_E_INVALID_ARGUMENT;
  mval(&k, key, keylen);
  rc = mdb_get(txn, s->dbi[rec_dbi[db]], &k, &v);
  if (rc != 0)
    return map_rc(rc);
  err = rec_parse(&v, &h);
  if (err != NETSTASH_OK)
    return err;
  rec_to_public(&v, &h, out);
  if (hp)
    *hp = h;
  return NETSTASH_OK;
}

uint64_t ns_store_reader_snapshot(const ns_store_reader *r) {
  return r && r->active ? (uint64_t)mdb_txn_id(r->txn) : 0;
}

void ns_store_touch(ns_store_reader *r, ns_store_db db, const void *key, size_t keylen,
                    uint32_t rec_flags, uint64_t rec_atime_ms) {
  uint32_t f = (rec_flags & NS_STORE_REC_PINNED) ? REC_F_PINNED : 0;
  if (r && r->active && valid_key(db, key, keylen) && evictable(db, f) && !r->s->p.read_only)
    touch_note(r->s, db, key, keylen, rec_atime_ms);
}

netstash_error ns_store_get(ns_store_reader *r, ns_store_db db, const void *key, size_t keylen,
                            ns_store_record *out) {
  rec_hdr h;
  netstash_error err;
  if (!r)
    return NETSTASH_E_INVALID_ARGUMENT;
  if (!r->active)
    return NETSTASH_E_ILLEGAL_STATE;
  err = get_in(r->s, r->txn, db, key, keylen, out, &h);
  if (err == NETSTASH_OK && evictable(db, h.flags) && !r->s->p.read_only)
    touch_note(r->s, db, key, keylen, h.atime);
  return err;
}

static netstash_error body_get_in(const ns_store *s, MDB_txn *txn, const uint8_t *hash,
                                  ns_store_body *out) {
  MDB_val k, v;
  const uint8_t *p;
  uint64_t stored, nch, first;
  int rc;
  mval(&k, hash, NS_STORE_HASH_LEN);
  rc = mdb_get(txn, s->dbi[DBI_BODIES], &k, &v);
  if (rc != 0)
    return map_rc(rc);
  p = v.mv_data;
  if (v.mv_size < NS_STORE_BODY_HDR || get_le32(p) != BODY_MAGIC)
    return NETSTASH_E_STORE_CORRUPT;
  stored = get_le64(p + 16);
  nch = get_le32(p + 8);
  first = stored < FIRST_CAP ? stored : FIRST_CAP;
  if (p[4] != NS_CODING_IDENTITY && p[4] != NS_CODING_GZIP && p[4] != NS_CODING_BR &&
      p[4] != NS_CODING_ZSTD)
    return NETSTASH_E_STORE_CORRUPT;
  if (v.mv_size != NS_STORE_BODY_HDR + first ||
      nch != (stored == 0 ? 0 : 1 + (stored - first + NS_STORE_CHUNK - 1) / NS_STORE_CHUNK))
    return NETSTASH_E_STORE_CORRUPT;
  memcpy(out->hash, hash, NS_STORE_HASH_LEN);
  out->coding = (ns_coding)p[4];
  out->recompressed = (p[5] & BODY_F_RECOMPRESSED) != 0;
  out->stored_size = stored;
  out->decoded_size = get_le64(p + 24);
  out->nchunks = (uint32_t)nch;
  out->first = nch ? p + NS_STORE_BODY_HDR : NULL;
  out->first_len = (size_t)first;
  out->txn_ = txn;
  out->store_ = s;
  return NETSTASH_OK;
}

netstash_error ns_store_body_get(ns_store_reader *r, const uint8_t *hash, ns_store_body *out) {
  if (!r || !hash || !out)
    return NETSTASH_E_INVALID_ARGUMENT;
  if (!r->active)
    return NETSTASH_E_ILLEGAL_STATE;
  return body_get_in(r->s, r->txn, hash, out);
}

netstash_error ns_store_get_with_body(ns_store_reader *r, ns_store_db db, const void *key,
                                      size_t keylen, ns_store_record *rec, ns_store_body *body) {
  netstash_error err;
  if (!body)
    return NETSTASH_E_INVALID_ARGUMENT;
  err = ns_store_get(r, db, key, keylen, rec);
  if (err != NETSTASH_OK)
    return err;
  if (!rec->has_body) {
    memset(body, 0, sizeof(*body));
    return NETSTASH_OK;
  }
  err = body_get_in(r->s, r->txn, rec->body_hash, body);
  /* A record whose body is gone is a broken invariant, not a miss. */
  return err == NETSTASH_E_NOT_FOUND ? NETSTASH_E_STORE_CORRUPT : err;
}

netstash_error ns_store_body_chunk(const ns_store_body *b, uint32_t i, const uint8_t **data,
                                   size_t *len) {
  uint8_t key[NS_STORE_HASH_LEN + 4];
  MDB_val k, v;
  uint64_t off, want;
  int rc;
  if (!b || !data || !len || i >= b->nchunks)
    return NETSTASH_E_INVALID_ARGUMENT;
  if (i == 0) {
    *data = b->first;
    *len = b->first_len;
    return NETSTASH_OK;
  }
  off = FIRST_CAP + (uint64_t)(i - 1) * NS_STORE_CHUNK;
  want = b->stored_size - off < NS_STORE_CHUNK ? b->stored_size - off : NS_STORE_CHUNK;
  memcpy(key, b->hash, NS_STORE_HASH_LEN);
  key[32] = (uint8_t)(i >> 24);
  key[33] = (uint8_t)(i >> 16);
  key[34] = (uint8_t)(i >> 8);
  key[35] = (uint8_t)i;
  mval(&k, key, sizeof(key));
  rc = mdb_get((MDB_txn *)b->txn_, b->store_->dbi[DBI_BODIES], &k, &v);
  if (rc != 0 || v.mv_size != want)
    return rc == 0 || rc == MDB_NOTFOUND ? NETSTASH_E_STORE_CORRUPT : map_rc(rc);
  *data = v.mv_data;
  *len = v.mv_size;
  return NETSTASH_OK;
}

netstash_error ns_store_body_iov(const ns_store_body *b, ns_store_iov *iov, size_t max, size_t *n) {
  netstash_error err;
  if (!b || !n || (max && !iov))
    return NETSTASH_E_INVALID_ARGUMENT;
  *n = b->nchunks;
  for (uint32_t i = 0; i < b->nchunks && i < max; i++) {
    err = ns_store_body_chunk(b, i, &iov[i].base, &iov[i].len);
    if (err != NETSTASH_OK)
      return err;
  }
  return max < b->nchunks ? NETSTASH_E_TOO_LARGE : NETSTASH_OK;
}

netstash_error ns_store_body_decode(const ns_store_body *b, const ns_mem *mem, uint64_t max_out,
                                    ns_decoder_sink sink, void *ud) {
  ns_decoder *d = NULL;
  netstash_error err = NETSTASH_OK;
  const uint8_t *p;
  size_t len;
  if (!b || !sink)
    return NETSTASH_E_INVALID_ARGUMENT;
  if (!mem)
    mem = b->store_ ? b->store_->mem : ns_mem_default();
  if (b->coding == NS_CODING_IDENTITY) {
    if (b->stored_size > max_out)
      return NETSTASH_E_TOO_LARGE;
  } else {
    err = ns_decoder_new(mem, &b->coding, 1, max_out, &d);
    if (err != NETSTASH_OK)
      return err;
  }
  for (uint32_t i = 0; i < b->nchunks && err == NETSTASH_OK; i++) {
    err = ns_store_body_chunk(b, i, &p, &len);
    if (err != NETSTASH_OK)
      break;
    err = d ? ns_decoder_write(d, p, len, sink, ud) : sink(p, len, ud);
  }
  if (err == NETSTASH_OK && d)
    err = ns_decoder_finish(d, sink, ud);
  ns_decoder_del(d);
  return err;
}

typedef struct copy_ctx {
  uint8_t *dst;
  size_t cap, len;
} copy_ctx;

static netstash_error copy_sink(const uint8_t *data, size_t len, void *ud) {
  copy_ctx *c = ud;
  if (len > c->cap - c->len)
    return NETSTASH_E_TOO_LARGE;
  memcpy(c->dst + c->len, data, len);
  c->len += len;
  return NETSTASH_OK;
}

netstash_error ns_store_body_copy(const ns_store_body *b, const ns_mem *mem, uint8_t *dst,
                                  size_t cap, size_t *len) {
  copy_ctx c = {dst, cap, 0};
  netstash_error err;
  if (!b || !len || (cap && !dst))
    return NETSTASH_E_INVALID_ARGUMENT;
  *len = (size_t)b->decoded_size;
  if (b->decoded_size > cap)
    return NETSTASH_E_TOO_LARGE;
  err = ns_store_body_decode(b, mem, cap, copy_sink, &c);
  if (err == NETSTASH_OK && c.len != b->decoded_size)
    err = NETSTASH_E_STORE_CORRUPT;
  return err;
}

static netstash_error iterate_txn(MDB_txn *txn, MDB_dbi dbi, const void *prefix, size_t plen,
                                  ns_store_iter_cb cb, void *ud) {
  MDB_cursor *c;
  MDB_val k, v;
  int rc, op;
  netstash_error err = NETSTASH_OK;
  rc = mdb_cursor_open(txn, dbi, &c);
  if (rc != 0)
    return map_rc(rc);
  mval(&k, prefix, plen);
  op = plen ? MDB_SET_RANGE : MDB_FIRST;
  for (;;) {
    ns_store_record rec;
    rec_hdr h;
    rc = mdb_cursor_get(c, &k, &v, (MDB_cursor_op)op);
    op = MDB_NEXT;
    if (rc == MDB_NOTFOUND)
      break;
    if (rc != 0) {
      err = map_rc(rc);
      break;
    }
    if (plen && (k.mv_size < plen || memcmp(k.mv_data, prefix, plen) != 0))
      break;
    err = rec_parse(&v, &h);
    if (err != NETSTASH_OK)
      break;
    rec_to_public(&v, &h, &rec);
    if (cb(k.mv_data, k.mv_size, &rec, ud))
      break;
  }
  mdb_cursor_close(c);
  return err;
}

netstash_error ns_store_iterate(ns_store_reader *r, ns_store_db db, const void *prefix, size_t plen,
                                ns_store_iter_cb cb, void *ud) {
  if (!r || !cb || (unsigned)db >= NS_STORE_DB_COUNT_ || (plen && !prefix))
    return NETSTASH_E_INVALID_ARGUMENT;
  if (!r->active)
    return NETSTASH_E_ILLEGAL_STATE;
  return iterate_txn(r->txn, r->s->dbi[rec_dbi[db]], prefix, plen, cb, ud);
}

netstash_error ns_store_txn_iterate(ns_store_txn *t, ns_store_db db, const void *prefix,
                                    size_t plen, ns_store_iter_cb cb, void *ud) {
  if (!t || !cb || (unsigned)db >= NS_STORE_DB_COUNT_ || (plen && !prefix))
    return NETSTASH_E_INVALID_ARGUMENT;
  return iterate_txn(t->txn, t->s->dbi[rec_dbi[db]], prefix, plen, cb, ud);
}

/* ------------------------------------------------------------ write lock */

static netstash_error wlock_acquire(ns_store *s) {
  struct timespec d = deadline_in(s->p.write_wait_ms);
  long sleep_ns = 500000;
  if (pthread_mutex_timedlock(&s->wlock, &d) != 0)
    return NETSTASH_E_STORE_BUSY;
  for (;;) {
    if (flock(s->lockfd, LOCK_EX | LOCK_NB) == 0)
      return NETSTASH_OK;
    if (errno != EWOULDBLOCK && errno != EINTR) {
      pthread_mutex_unlock(&s->wlock);
      return NETSTASH_E_IO;
    }
    if (past(&d)) {
      pthread_mutex_unlock(&s->wlock);
      return NETSTASH_E_STORE_BUSY;
    }
    struct timespec ts = {0, sleep_ns};
    nanosleep(&ts, NULL);
    if (sleep_ns < 8000000)
      sleep_ns *= 2;
  }
}

static void wlock_release(ns_store *s) {
  flock(s->lockfd, LOCK_UN);
  pthread_mutex_unlock(&s->wlock);
}

/* ------------------------------------------------------------ writing */

/* Records the failure kind; MAP_FULL makes ns_store_write retry. */
/* The file system of the store has (almost) no space left: what made a
 * commit's write come up short. */
static int disk_full(ns_store *s) {
  struct statvfs v;
  int fd;
  if (mdb_env_get_fd(s->env, &fd) != 0 || fstatvfs(fd, &v) != 0)
    return 0;
  return (uint64_t)v.f_bavail * v.f_frsize < 256u * 1024;
}

static netstash_error txn_rc(ns_store_txn *t, int rc) {
  if (rc == MDB_MAP_FULL)
    t->map_full = 1;
  return map_rc(rc);
}

static netstash_error tput(ns_store_txn *t, int dbi, const void *key, size_t klen, const void *val,
                           size_t vlen) {
  MDB_val k, v;
  mval(&k, key, klen);
  mval(&v, val, vlen);
  t->bytes += klen + vlen;
  return txn_rc(t, mdb_put(t->txn, t->s->dbi[dbi], &k, &v, 0));
}

/* Deletes key; absent is fine. */
static netstash_error tdel(ns_store_txn *t, int dbi, const void *key, size_t klen) {
  MDB_val k;
  int rc;
  mval(&k, key, klen);
  rc = mdb_del(t->txn, t->s->dbi[dbi], &k, NULL);
  return rc == MDB_NOTFOUND ? NETSTASH_OK : txn_rc(t, rc);
}

static netstash_error refs_get(ns_store_txn *t, const uint8_t *hash, uint64_t *n) {
  MDB_val k, v;
  int rc;
  mval(&k, hash, NS_STORE_HASH_LEN);
  rc = mdb_get(t->txn, t->s->dbi[DBI_REFS], &k, &v);
  *n = 0;
  if (rc == MDB_NOTFOUND)
    return NETSTASH_OK;
  if (rc != 0)
    return txn_rc(t, rc);
  if (v.mv_size != 8)
    return NETSTASH_E_STORE_CORRUPT;
  *n = get_le64(v.mv_data);
  return NETSTASH_OK;
}

static netstash_error gcq_put(ns_store_txn *t, const uint8_t *hash, uint64_t ms) {
  uint8_t v[8];
  put_le64(v, ms);
  return tput(t, DBI_GCQ, hash, NS_STORE_HASH_LEN, v, 8);
}

static netstash_error incref(ns_store_txn *t, const uint8_t *hash) {
  uint64_t n;
  uint8_t v[8];
  netstash_error err = refs_get(t, hash, &n);
  if (err != NETSTASH_OK)
    return err;
  put_le64(v, n + 1);
  err = tput(t, DBI_REFS, hash, NS_STORE_HASH_LEN, v, 8);
  if (err == NETSTASH_OK && n == 0)
    err = tdel(t, DBI_GCQ, hash, NS_STORE_HASH_LEN);
  return err;
}

/* Deletes a body's nchunks chunks: the others first, the header (which
 * holds the first) last. Its references and GC entry stay. */
static netstash_error body_chunks_delete(ns_store_txn *t, const uint8_t *hash, uint32_t nchunks) {
  uint8_t key[NS_STORE_HASH_LEN + 4];
  netstash_error err;
  memcpy(key, hash, NS_STORE_HASH_LEN);
  for (uint32_t i = 1; i < nchunks; i++) {
    key[32] = (uint8_t)(i >> 24);
    key[33] = (uint8_t)(i >> 16);
    key[34] = (uint8_t)(i >> 8);
    key[35] = (uint8_t)i;
    err = tdel(t, DBI_BODIES, key, sizeof(key));
    if (err != NETSTASH_OK)
      return err;
  }
  return tdel(t, DBI_BODIES, hash, NS_STORE_HASH_LEN);
}

/* Deletes a body: chunks first, header last (all in this transaction). */
static netstash_error body_delete(ns_store_txn *t, const uint8_t *hash, size_t *items) {
  ns_store_body b;
  netstash_error err = body_get_in(t->s, t->txn, hash, &b);
  if (err == NETSTASH_E_NOT_FOUND)
    return NETSTASH_OK;
  if (err != NETSTASH_OK)
    return err;
  if (items)
    *items += b.nchunks ? b.nchunks : 1;
  err = body_chunks_delete(t, hash, b.nchunks);
  if (err == NETSTASH_OK)
    err = tdel(t, DBI_REFS, hash, NS_STORE_HASH_LEN);
  if (err == NETSTASH_OK)
    err = tdel(t, DBI_GCQ, hash, NS_STORE_HASH_LEN);
  return err;
}

/* Drops one reference; at zero the body is deleted now (eviction needs the
 * space) or queued for GC with no grace. */
static netstash_error decref(ns_store_txn *t, const uint8_t *hash, int now) {
  uint64_t n;
  uint8_t v[8];
  netstash_error err = refs_get(t, hash, &n);
  if (err != NETSTASH_OK)
    return err;
  if (n > 1) {
    put_le64(v, n - 1);
    return tput(t, DBI_REFS, hash, NS_STORE_HASH_LEN, v, 8);
  }
  err = tdel(t, DBI_REFS, hash, NS_STORE_HASH_LEN);
  if (err != NETSTASH_OK)
    return err;
  return now ? body_delete(t, hash, NULL) : gcq_put(t, hash, 0);
}

static netstash_error lru_set(ns_store_txn *t, uint64_t atime, ns_store_db db, const void *key,
                              size_t keylen, int add) {
  uint8_t k[LRU_KEY_MAX];
  size_t n = lru_key(k, atime, db, key, keylen);
  return add ? tput(t, DBI_LRU, k, n, "", 0) : tdel(t, DBI_LRU, k, n);
}

/* Writes a record (header fields + value) with MDB_RESERVE: one copy. */
static netstash_error rec_write(ns_store_txn *t, ns_store_db db, const void *key, size_t keylen,
                                const rec_hdr *h, const void *value, size_t len) {
  MDB_val k, v;
  uint8_t *p;
  int rc;
  mval(&k, key, keylen);
  v.mv_data = NULL;
  v.mv_size = REC_HDR + len;
  t->bytes += keylen + v.mv_size;
  rc = mdb_put(t->txn, t->s->dbi[rec_dbi[db]], &k, &v, MDB_RESERVE);
  if (rc != 0)
    return txn_rc(t, rc);
  p = v.mv_data;
  memset(p, 0, REC_HDR);
  p[0] = REC_VERSION;
  p[1] = (uint8_t)h->flags;
  put_le64(p + 8, h->atime);
  memcpy(p + 16, h->hash, NS_STORE_HASH_LEN);
  if (len)
    memcpy(p + REC_HDR, value, len);
  return NETSTASH_OK;
}

netstash_error ns_store_txn_get(ns_store_txn *t, ns_store_db db, const void *key, size_t keylen,
                                ns_store_record *out) {
  if (!t)
    return NETSTASH_E_INVALID_ARGUMENT;
  return get_in(t->s, t->txn, db, key, keylen, out, NULL);
}

netstash_error ns_store_txn_put(ns_store_txn *t, ns_store_db db, const void *key, size_t keylen,
                                const void *value, size_t len, const uint8_t *body_hash,
                                uint32_t flags) {
  ns_store_record old;
  rec_hdr oh, h;
  netstash_error err;
  int had;
  if (!t || !valid_key(db, key, keylen) || (len && !value))
    return NETSTASH_E_INVALID_ARGUMENT;
  if (len > REC_VALUE_MAX)
    return NETSTASH_E_TOO_LARGE;
  err = get_in(t->s, t->txn, db, key, keylen, &old, &oh);
  if (err != NETSTASH_OK && err != NETSTASH_E_NOT_FOUND)
    return err;
  had = err == NETSTASH_OK;
  memset(&h, 0, sizeof(h));
  h.atime = t->start_ms;
  h.flags = (flags & NS_STORE_REC_PINNED) ? REC_F_PINNED : 0;
  if (body_hash) {
    MDB_val k, v;
    int rc;
    mval(&k, body_hash, NS_STORE_HASH_LEN);
    rc = mdb_get(t->txn, t->s->dbi[DBI_BODIES], &k, &v);
    if (rc != 0)
      return txn_rc(t, rc);
    h.flags |= REC_F_BODY;
    memcpy(h.hash, body_hash, NS_STORE_HASH_LEN);
    err = incref(t, body_hash);
    if (err != NETSTASH_OK)
      return err;
  }
  if (had) {
    if ((oh.flags & REC_F_BODY) && (err = decref(t, oh.hash, 0)) != NETSTASH_OK)
      return err;
    if (evictable(db, oh.flags) && (err = lru_set(t, oh.atime, db, key, keylen, 0)) != NETSTASH_OK)
      return err;
  }
  err = rec_write(t, db, key, keylen, &h, value, len);
  if (err == NETSTASH_OK && evictable(db, h.flags))
    err = lru_set(t, h.atime, db, key, keylen, 1);
  return err;
}

/* Deletes a record; now: delete its body at once if unreferenced. */
static netstash_error rec_delete(ns_store_txn *t, ns_store_db db, const void *key, size_t keylen,
                                 int now) {
  ns_store_record old;
  rec_hdr oh;
  MDB_val k;
  netstash_error err = get_in(t->s, t->txn, db, key, keylen, &old, &oh);
  int rc;
  if (err != NETSTASH_OK)
    return err;
  mval(&k, key, keylen);
  rc = mdb_del(t->txn, t->s->dbi[rec_dbi[db]], &k, NULL);
  if (rc != 0)
    return txn_rc(t, rc);
  if (evictable(db, oh.flags) && (err = lru_set(t, oh.atime, db, key, keylen, 0)) != NETSTASH_OK)
    return err;
  if (oh.flags & REC_F_BODY)
    err = decref(t, oh.hash, now);
  return err;
}

netstash_error ns_store_txn_del(ns_store_txn *t, ns_store_db db, const void *key, size_t keylen) {
  if (!t || !valid_key(db, key, keylen))
    return NETSTASH_E_INVALID_ARGUMENT;
  return rec_delete(t, db, key, keylen, 0);
}

/* Rewrites a record's header (flags, atime) keeping its value: the value is
 * copied out first, the old pages may move under mdb_put. */
static netstash_error rec_rewrite(ns_store_txn *t, ns_store_db db, const void *key, size_t keylen,
                                  const ns_store_record *old, const rec_hdr *oh, const rec_hdr *h) {
  netstash_error err;
  ns_buf_reset(&t->s->scratch);
  err = ns_buf_append(&t->s->scratch, old->value, old->value_len);
  if (err != NETSTASH_OK)
    return err;
  if (evictable(db, oh->flags) && (err = lru_set(t, oh->atime, db, key, keylen, 0)) != NETSTASH_OK)
    return err;
  err = rec_write(t, db, key, keylen, h, t->s->scratch.data, t->s->scratch.len);
  if (err == NETSTASH_OK && evictable(db, h->flags))
    err = lru_set(t, h->atime, db, key, keylen, 1);
  return err;
}

netstash_error ns_store_txn_pin(ns_store_txn *t, ns_store_db db, const void *key, size_t keylen,
                                int pinned) {
  ns_store_record old;
  rec_hdr oh, h;
  netstash_error err;
  if (!t || !valid_key(db, key, keylen))
    return NETSTASH_E_INVALID_ARGUMENT;
  err = get_in(t->s, t->txn, db, key, keylen, &old, &oh);
  if (err != NETSTASH_OK)
    return err;
  h = oh;
  h.flags = pinned ? (oh.flags | REC_F_PINNED) : (oh.flags & ~REC_F_PINNED);
  if (h.flags == oh.flags)
    return NETSTASH_OK;
  return rec_rewrite(t, db, key, keylen, &old, &oh, &h);
}

/* Applies noted accesses: a record's atime moves forward, its lru entry
 * with it, when it moves by more than touch_granule_ms. Touches of records
 * gone or pinned since are dropped. */
static netstash_error apply_touches(ns_store_txn *t) {
  ns_store *s = t->s;
  netstash_error err = NETSTASH_OK;
  if (s->npending < TOUCH_SLOTS) /* under the write lock: this process's and others' */
    s->npending += ns_touches_take(s->touches, s->pending + s->npending, TOUCH_SLOTS - s->npending);
  for (size_t i = 0; i < s->npending && err == NETSTASH_OK; i++) {
    const ns_touch *tc = &s->pending[i];
    ns_store_record old;
    rec_hdr oh, h;
    if (!valid_key((ns_store_db)tc->db, tc->key, tc->len))
      continue; /* (notes come from other processes too: one damaged on disk) */
    err = get_in(s, t->txn, (ns_store_db)tc->db, tc->key, tc->len, &old, &oh);
    if (err == NETSTASH_E_NOT_FOUND) {
      err = NETSTASH_OK;
      continue;
    }
    if (err != NETSTASH_OK || !evictable((ns_store_db)tc->db, oh.flags) ||
        tc->ms <= oh.atime + s->p.touch_granule_ms)
      continue; /* (each rewrite dirties the record's page and two LRU pages: in
                 * netd's 1 KB 90/10 mix, every commit rewrote each hot entry) */
    h = oh;
    h.atime = tc->ms;
    err = rec_rewrite(t, (ns_store_db)tc->db, tc->key, tc->len, &old, &oh, &h);
  }
  return err;
}

/* Deletes queued garbage (bodies unreferenced and past their grace) until
 * used <= target, examining at most EVICT_GC_MAX queue entries: the space
 * held by unreferenced bodies is reclaimed before any live record is
 * evicted. Without it, a profile whose GC queue is never stepped (no netd,
 * no `netstash gc`: e.g. a warm's replaced versions) made every write over
 * the size limit evict live cache entries, the ones written a moment ago
 * included, while the garbage stayed (found by tests/stress/killnine). */
#define EVICT_GC_MAX 256
#define EVICT_STEP_MAX 128 /* records evicted by one write over the size limit */

/* The GC queue entry at cursor c (k, v): its body is deleted when nothing
 * references it and its grace is over (a referenced one just leaves the
 * queue); *rc is the cursor's next position. */
static netstash_error gcq_step(ns_store_txn *t, MDB_cursor *c, MDB_val *k, MDB_val *v, int *rc) {
  uint8_t hash[NS_STORE_HASH_LEN];
  uint64_t ms, refs;
  netstash_error err;
  if (k->mv_size != NS_STORE_HASH_LEN || v->mv_size != 8)
    return NETSTASH_E_STORE_CORRUPT;
  memcpy(hash, k->mv_data, NS_STORE_HASH_LEN);
  ms = get_le64(v->mv_data);
  /* in its grace period, or queued by this very transaction */
  if (ms != 0 && (ms + t->s->p.gc_grace_ms > t->start_ms || ms >= t->start_ms)) {
    *rc = mdb_cursor_get(c, k, v, MDB_NEXT);
    return NETSTASH_OK;
  }
  err = refs_get(t, hash, &refs);
  if (err == NETSTASH_OK && refs == 0)
    err = body_delete(t, hash, NULL); /* also drops the gcq entry */
  else if (err == NETSTASH_OK)
    err = tdel(t, DBI_GCQ, hash, NS_STORE_HASH_LEN);
  if (err != NETSTASH_OK)
    return err;
  /* the cursor's entry is gone: find the next one from the hash */
  mval(k, hash, NS_STORE_HASH_LEN);
  *rc = mdb_cursor_get(c, k, v, MDB_SET_RANGE);
  return NETSTASH_OK;
}

static netstash_error collect_in(ns_store_txn *t, uint64_t target) {
  ns_store *s = t->s;
  MDB_cursor *c;
  MDB_val k, v;
  netstash_error err = NETSTASH_OK;
  size_t examined = 0;
  int rc = mdb_cursor_open(t->txn, s->dbi[DBI_GCQ], &c);
  if (rc != 0)
    return txn_rc(t, rc);
  rc = mdb_cursor_get(c, &k, &v, MDB_FIRST);
  while (rc == 0 && err == NETSTASH_OK && examined++ < EVICT_GC_MAX &&
         used_bytes(s, t->txn) > target)
    err = gcq_step(t, c, &k, &v, &rc);
  if (err == NETSTASH_OK && rc != 0 && rc != MDB_NOTFOUND)
    err = txn_rc(t, rc);
  mdb_cursor_close(c);
  return err;
}

/* Evicts from the cold end of the lru index until used <= target, after
 * collecting queued garbage, at most max records (0: no bound). Entries with
 * atime >= keep_since (written by this transaction) are kept. */
static netstash_error evict_in(ns_store_txn *t, uint64_t target, uint64_t keep_since,
                               size_t max, size_t *count) {
  ns_store *s = t->s;
  netstash_error err = collect_in(t, target);
  while (err == NETSTASH_OK && used_bytes(s, t->txn) > target && (!max || *count < max)) {
    MDB_cursor *c;
    MDB_val k, v;
    uint8_t key[LRU_KEY_MAX];
    size_t klen;
    int rc = mdb_cursor_open(t->txn, s->dbi[DBI_LRU], &c);
    if (rc != 0)
      return txn_rc(t, rc);
    rc = mdb_cursor_get(c, &k, &v, MDB_FIRST);
    if (rc == 0 && (k.mv_size < 10 || k.mv_size > LRU_KEY_MAX))
      rc = MDB_CORRUPTED;
    if (rc == 0) {
      klen = k.mv_size;
      memcpy(key, k.mv_data, klen);
    }
    mdb_cursor_close(c);
    if (rc == MDB_NOTFOUND)
      break; /* nothing evictable left */
    if (rc != 0)
      return txn_rc(t, rc);
    if (get_be64(key) >= keep_since || key[8] >= NS_STORE_DB_COUNT_)
      break;
    err = rec_delete(t, (ns_store_db)key[8], key + 9, klen - 9, 1);
    if (err == NETSTASH_E_NOT_FOUND) /* stale index entry */
      err = tdel(t, DBI_LRU, key, klen);
    if (err != NETSTASH_OK)
      return err;
    (*count)++;
  }
  return err;
}

static netstash_error begin_write(ns_store *s, MDB_txn **txn) {
  for (int tries = 0;; tries++) {
    int rc;
    pthread_rwlock_rdlock(&s->maplock);
    rc = mdb_txn_begin(s->env, NULL, 0, txn);
    if (rc == 0)
      return NETSTASH_OK; /* maplock held until the txn ends */
    pthread_rwlock_unlock(&s->maplock);
    if (rc != MDB_MAP_RESIZED || tries == 3)
      return map_rc(rc);
    netstash_error err = remap(s, 0);
    if (err != NETSTASH_OK)
      return err;
  }
}

static netstash_error write_once(ns_store *s, ns_store_write_fn fn, void *ud, ns_store_txn *t) {
  netstash_error err;
  int rc;
  memset(t, 0, sizeof(*t));
  t->s = s;
  t->start_ms = wall_ms();
  err = begin_write(s, &t->txn);
  if (err != NETSTASH_OK)
    return err;
  err = apply_touches(t);
  if (err == NETSTASH_OK)
    err = fn(t, ud);
  if (err == NETSTASH_OK && !t->map_full && s->p.size_limit &&
      used_bytes(s, t->txn) > s->p.size_limit) {
    size_t n = 0;
    /* bounded per write: one transaction evicting the whole 10 % hysteresis
     * (25 MiB of small records at the default limit) dirtied ~30,000 pages;
     * LMDB keeps a transaction's dirty page buffers for reuse until the
     * environment closes, so netd's heap stayed 110 MiB larger for good, and
     * its loop stood still for up to 0.8 s (tests/stress/netd_load soak).
     * Later writes carry on until the store is under the limit. */
    err = evict_in(t, s->p.size_limit / 10 * 9, t->start_ms, EVICT_STEP_MAX, &n);
    s->evicted += n;
  }
  if (err == NETSTASH_OK && !t->map_full) {
    rc = mdb_txn_commit(t->txn);
    if (rc == EIO && disk_full(s))
      rc = ENOSPC; /* LMDB reports a short write (the disk filled) as EIO */
    err = txn_rc(t, rc);
    if (rc == 0)
      s->npending = 0;
  } else {
    mdb_txn_abort(t->txn);
  }
  pthread_rwlock_unlock(&s->maplock);
  return err;
}

typedef struct evict_req {
  uint64_t target;
  size_t n;
} evict_req;

static netstash_error evict_fn(ns_store_txn *t, void *ud) {
  evict_req *e = ud;
  e->n = 0;
  return evict_in(t, e->target, UINT64_MAX, 0, &e->n);
}

static netstash_error tick_fn(ns_store_txn *t, void *ud) {
  uint8_t v[8];
  (void)ud;
  put_le64(v, t->start_ms);
  return tput(t, DBI_META, "last_full_ms", 12, v, 8);
}

/* At the maximum map size: frees room for a retry by eviction, in a
 * transaction of its own. When nothing is evictable, one small commit
 * ("tick") is tried once: LMDB reuses the pages freed by transaction N only
 * from transaction N+2, so the pages a just-committed delete or GC step freed
 * become usable after it. Returns NETSTASH_E_STORE_FULL when neither helps. */
static netstash_error make_room(ns_store *s, int *ticked) {
  ns_store_txn t;
  evict_req e;
  MDB_txn *txn;
  uint64_t used, step = map_size(s) / 8;
  netstash_error err = begin_write(s, &txn);
  if (err != NETSTASH_OK)
    return err;
  used = used_bytes(s, txn);
  mdb_txn_abort(txn);
  pthread_rwlock_unlock(&s->maplock);
  if (step < (1u << 20))
    step = 1u << 20;
  e.target = used > step ? used - step : 0;
  err = write_once(s, evict_fn, &e, &t);
  s->evicted += e.n;
  if (err == NETSTASH_OK && e.n == 0) {
    if (*ticked)
      return NETSTASH_E_STORE_FULL;
    *ticked = 1;
    err = write_once(s, tick_fn, NULL, &t);
  }
  if (err == NETSTASH_OK || t.map_full)
    return err == NETSTASH_OK ? NETSTASH_OK : NETSTASH_E_STORE_FULL;
  return err;
}

/* Grows the map for a transaction that wrote `bytes`: at least doubling. */
static netstash_error grow(ns_store *s, uint64_t bytes) {
  uint64_t cur = map_size(s), want = cur * 2;
  uint64_t alt = cur + 2 * bytes + (1u << 20);
  netstash_error err;
  if (alt > want)
    want = alt;
  want = (want + 0xffff) & ~(uint64_t)0xffff;
  if (want > s->p.map_size_max)
    want = s->p.map_size_max;
  if (want <= cur)
    return NETSTASH_E_STORE_FULL;
  err = remap(s, (size_t)want);
  if (err == NETSTASH_OK)
    s->grown++;
  return err;
}

netstash_error ns_store_write(ns_store *s, ns_store_write_fn fn, void *ud) {
  netstash_error err;
  ns_store_txn t;
  int ticked = 0;
  if (!s || !fn)
    return NETSTASH_E_INVALID_ARGUMENT;
  if (s->p.read_only)
    return NETSTASH_E_ILLEGAL_STATE;
  err = wlock_acquire(s);
  if (err != NETSTASH_OK)
    return err;
  for (int attempt = 0;; attempt++) {
    err = write_once(s, fn, ud, &t);
    if (!t.map_full)
      break;
    if (attempt == WRITE_ATTEMPTS) {
      err = NETSTASH_E_STORE_FULL;
      break;
    }
    /* MDB_MAP_FULL: grow; at the maximum (or if the remap cannot get every
     * read transaction of this process out of the way), evict. */
    err = map_size(s) < s->p.map_size_max ? grow(s, t.bytes) : NETSTASH_E_STORE_FULL;
    if (err != NETSTASH_OK)
      err = make_room(s, &ticked);
    if (err != NETSTASH_OK)
      break;
  }
  cover_tail(s);
  wlock_release(s);
  return err;
}

/* ------------------------------------------------------------ bodies */

static netstash_error hash_sink(const uint8_t *data, size_t len, void *ud) {
  return EVP_DigestUpdate(ud, data, len) ? NETSTASH_OK : NETSTASH_E_INTERNAL;
}

/* SHA-256 of the decoded body; *decoded receives its size. */
static netstash_error hash_body(ns_store *s, const uint8_t *data, size_t len, ns_coding coding,
                                uint8_t *out, uint64_t *decoded) {
  netstash_error err = NETSTASH_OK;
  ns_decoder *d = NULL;
  if (!EVP_DigestInit_ex(s->md, s->sha, NULL))
    return NETSTASH_E_INTERNAL;
  if (coding == NS_CODING_IDENTITY) {
    if (len > s->p.max_body)
      return NETSTASH_E_TOO_LARGE;
    err = hash_sink(data, len, s->md);
    *decoded = len;
  } else {
    err = ns_decoder_new(s->mem, &coding, 1, s->p.max_body, &d);
    if (err == NETSTASH_OK)
      err = ns_decoder_write(d, data, len, hash_sink, s->md);
    if (err == NETSTASH_OK)
      err = ns_decoder_finish(d, hash_sink, s->md);
    if (err == NETSTASH_E_TRUNCATED)
      err = NETSTASH_E_DECODE;
    if (d)
      *decoded = ns_decoder_total_out(d);
    ns_decoder_del(d);
  }
  if (err == NETSTASH_OK && !EVP_DigestFinal_ex(s->md, out, NULL))
    err = NETSTASH_E_INTERNAL;
  return err;
}

/* libbrotlienc 1.0.9 calls exit() when its allocator returns NULL. So the
 * encoder's memory comes from the store's allocator when it can, and from
 * the process heap when the store's allocator refuses (a quota, a failmalloc
 * test): a refusal never ends the process. Only a real out-of-memory of the
 * process heap still would, inside brotli (fixed upstream in 1.1.0). A
 * 16-byte prefix records where each block came from. */
#define BR_PREFIX 16
static void *br_alloc(void *opaque, size_t n) {
  size_t total;
  uint8_t *p;
  if (!ns_add_size(n, BR_PREFIX, &total))
    return NULL;
  p = ns_malloc(opaque, total);
  if (p) {
    p[0] = 1;
  } else {
    p = malloc(total);
    if (!p)
      return NULL;
    p[0] = 2;
  }
  return p + BR_PREFIX;
}
static void br_free(void *opaque, void *q) {
  uint8_t *p;
  if (!q)
    return;
  p = (uint8_t *)q - BR_PREFIX;
  if (p[0] == 1)
    ns_free(opaque, p);
  else
    free(p);
}

/* Brotli at BR_QUALITY into at most cap bytes. *out is NULL (not an error)
 * when the result does not fit: compression does not pay. */
static netstash_error brotli_try(ns_store *s, const uint8_t *in, size_t len, size_t cap,
                                 uint8_t **out, size_t *out_len) {
  void *opaque = (void *)(uintptr_t)s->mem;
  BrotliEncoderState *enc = BrotliEncoderCreateInstance(br_alloc, br_free, opaque);
  uint8_t *buf = NULL, *next_out;
  const uint8_t *next_in = in;
  size_t avail_in = len, avail_out = cap;
  netstash_error err = NETSTASH_OK;
  uint32_t lgwin = 16;
  *out = NULL;
  if (!enc)
    return NETSTASH_E_NOMEM;
  while (lgwin < 22 && ((size_t)1 << lgwin) < len)
    lgwin++;
  buf = ns_malloc(s->mem, cap);
  if (!buf) {
    err = NETSTASH_E_NOMEM;
    goto done;
  }
  next_out = buf;
  BrotliEncoderSetParameter(enc, BROTLI_PARAM_QUALITY, BR_QUALITY);
  BrotliEncoderSetParameter(enc, BROTLI_PARAM_LGWIN, lgwin);
  BrotliEncoderSetParameter(enc, BROTLI_PARAM_MODE, BROTLI_MODE_TEXT);
  BrotliEncoderSetParameter(enc, BROTLI_PARAM_SIZE_HINT,
                            len > UINT32_MAX ? UINT32_MAX : (uint32_t)len);
  while (!BrotliEncoderIsFinished(enc)) {
    if (!BrotliEncoderCompressStream(enc, BROTLI_OPERATION_FINISH, &avail_in, &next_in, &avail_out,
                                     &next_out, NULL)) {
      err = NETSTASH_E_NOMEM; /* the encoder fails only on allocation */
      goto done;
    }
    if (avail_out == 0 && !BrotliEncoderIsFinished(enc))
      goto done; /* does not pay: stop early */
  }
  *out = buf;
  *out_len = cap - avail_out;
  buf = NULL;
done:
  ns_free(s->mem, buf);
  BrotliEncoderDestroyInstance(enc);
  return err;
}

int ns_store_is_text_type(const char *ct) {
  static const char *const exact[] = {"application/javascript",
                                      "application/x-javascript",
                                      "application/ecmascript",
                                      "application/json",
                                      "application/xml",
                                      "application/wasm",
                                      "application/x-font-ttf",
                                      "application/vnd.ms-fontobject",
                                      "image/svg+xml",
                                      "image/x-icon",
                                      "image/bmp",
                                      "font/ttf",
                                      "font/otf",
                                      "font/collection"};
  char t[80];
  size_t n = 0;
  if (!ct)
    return 0;
  while (*ct == ' ' || *ct == '\t')
    ct++;
  while (ct[n] && ct[n] != ';' && ct[n] != ' ' && ct[n] != '\t') {
    char c = ct[n];
    if (n + 1 >= sizeof(t))
      return 0;
    t[n++] = (c >= 'A' && c <= 'Z') ? (char)(c - 'A' + 'a') : c;
  }
  t[n] = '\0';
  if (n > 5 && memcmp(t, "text/", 5) == 0)
    return 1;
  for (size_t i = 0; i < NS_ARRAY_LEN(exact); i++)
    if (strcmp(t, exact[i]) == 0)
      return 1;
  return (n > 5 && strcmp(t + n - 5, "+json") == 0) || (n > 4 && strcmp(t + n - 4, "+xml") == 0);
}

netstash_error ns_store_txn_body_put(ns_store_txn *t, const uint8_t *data, size_t len,
                                     ns_coding coding, const char *content_type, unsigned flags,
                                     uint8_t *out_hash) {
  ns_store *s;
  uint8_t hash[NS_STORE_HASH_LEN], key[NS_STORE_HASH_LEN + 4];
  uint8_t *br = NULL;
  const uint8_t *src;
  size_t srclen, br_len = 0, first, off;
  uint64_t decoded = 0, refs;
  uint32_t nch;
  netstash_error err;
  MDB_val k, v;
  int rc, recompressed = 0;

  if (!t || !out_hash || (len && !data))
    return NETSTASH_E_INVALID_ARGUMENT;
  if (coding != NS_CODING_IDENTITY && coding != NS_CODING_GZIP && coding != NS_CODING_BR &&
      coding != NS_CODING_ZSTD)
    return NETSTASH_E_UNSUPPORTED;
  s = t->s;
  if (len > s->p.max_body)
    return NETSTASH_E_TOO_LARGE;
  if ((flags & NS_STORE_BODY_HASH_GIVEN) && coding == NS_CODING_IDENTITY) {
    memcpy(hash, out_hash, NS_STORE_HASH_LEN); /* the caller hashed it already */
    decoded = len;
  } else {
    err = hash_body(s, data, len, coding, hash, &decoded);
    if (err != NETSTASH_OK)
      return err;
  }
  memcpy(out_hash, hash, NS_STORE_HASH_LEN);

  mval(&k, hash, NS_STORE_HASH_LEN);
  rc = mdb_get(t->txn, s->dbi[DBI_BODIES], &k, &v);
  if (rc == 0) { /* deduplicated; an unreferenced copy gets a fresh grace */
    ns_store_body old;
    err = refs_get(t, hash, &refs);
    if (err != NETSTASH_OK)
      return err;
    if (coding != NS_CODING_IDENTITY || !(flags & NS_STORE_BODY_NO_RECOMPRESS) ||
        (err = body_get_in(s, t->txn, hash, &old)) != NETSTASH_OK ||
        (old.coding == NS_CODING_IDENTITY && !old.recompressed))
      return err == NETSTASH_OK && refs == 0 ? gcq_put(t, hash, t->start_ms) : err;
    /* kept coded, given identity: rewritten as identity, references kept */
    err = body_chunks_delete(t, hash, old.nchunks);
    if (err != NETSTASH_OK)
      return err;
  } else if (rc != MDB_NOTFOUND) {
    return txn_rc(t, rc);
  } else {
    refs = 0;
  }

  src = data;
  srclen = len;
  if (coding == NS_CODING_IDENTITY && !(flags & NS_STORE_BODY_NO_RECOMPRESS) &&
      len >= BR_MIN_INPUT && ns_store_is_text_type(content_type)) {
    size_t saving = len / 10 > BR_MIN_SAVING ? len / 10 : BR_MIN_SAVING;
    err = brotli_try(s, data, len, len - saving, &br, &br_len);
    if (err != NETSTASH_OK)
      return err;
    if (br) {
      src = br;
      srclen = br_len;
      coding = NS_CODING_BR;
      recompressed = 1;
    }
  }

  first = srclen < FIRST_CAP ? srclen : FIRST_CAP;
  nch = srclen == 0 ? 0 : (uint32_t)(1 + (srclen - first + NS_STORE_CHUNK - 1) / NS_STORE_CHUNK);
  v.mv_data = NULL;
  v.mv_size = NS_STORE_BODY_HDR + first;
  t->bytes += v.mv_size;
  rc = mdb_put(t->txn, s->dbi[DBI_BODIES], &k, &v, MDB_RESERVE);
  if (rc != 0) {
    err = txn_rc(t, rc);
    goto done;
  }
  {
    uint8_t *p = v.mv_data;
    memset(p, 0, NS_STORE_BODY_HDR);
    put_le32(p, BODY_MAGIC);
    p[4] = (uint8_t)coding;
    p[5] = recompressed ? BODY_F_RECOMPRESSED : 0;
    put_le32(p + 8, nch);
    put_le64(p + 16, srclen);
    put_le64(p + 24, decoded);
    if (first)
      memcpy(p + NS_STORE_BODY_HDR, src, first);
  }
  memcpy(key, hash, NS_STORE_HASH_LEN);
  off = first;
  for (uint32_t i = 1; i < nch; i++) {
    size_t n = srclen - off < NS_STORE_CHUNK ? srclen - off : NS_STORE_CHUNK;
    key[32] = (uint8_t)(i >> 24);
    key[33] = (uint8_t)(i >> 16);
    key[34] = (uint8_t)(i >> 8);
    key[35] = (uint8_t)i;
    err = tput(t, DBI_BODIES, key, sizeof(key), src + off, n);
    if (err != NETSTASH_OK)
      goto done;
    off += n;
  }
  if (refs == 0)
    err = gcq_put(t, hash, t->start_ms);
done:
  ns_free(s->mem, br);
  return err;
}

/* ------------------------------------------------------------ wrappers */

typedef struct op {
  int kind;
  ns_store_db db;
  const void *key;
  size_t keylen;
  const void *value;
  size_t len;
  const uint8_t *hash;
  uint32_t flags;
  ns_coding coding;
  const char *ctype;
  uint8_t *out_hash;
} op;

enum { OP_PUT, OP_DEL, OP_PIN, OP_BODY, OP_NONE };

static netstash_error op_fn(ns_store_txn *t, void *ud) {
  const op *o = ud;
  switch (o->kind) {
  case OP_PUT:
    return ns_store_txn_put(t, o->db, o->key, o->keylen, o->value, o->len, o->hash, o->flags);
  case OP_DEL:
    return ns_store_txn_del(t, o->db, o->key, o->keylen);
  case OP_PIN:
    return ns_store_txn_pin(t, o->db, o->key, o->keylen, (int)o->flags);
  case OP_BODY:
    return ns_store_txn_body_put(t, o->value, o->len, o->coding, o->ctype, o->flags, o->out_hash);
  default:
    return NETSTASH_OK;
  }
}

netstash_error ns_store_body_put(ns_store *s, const uint8_t *data, size_t len, ns_coding coding,
                                 const char *content_type, unsigned flags, uint8_t *out_hash) {
  op o = {.kind = OP_BODY,
          .value = data,
          .len = len,
          .coding = coding,
          .ctype = content_type,
          .flags = flags,
          .out_hash = out_hash};
  return ns_store_write(s, op_fn, &o);
}

netstash_error ns_store_put(ns_store *s, ns_store_db db, const void *key, size_t keylen,
                            const void *value, size_t len, const uint8_t *body_hash,
                            uint32_t flags) {
  op o = {.kind = OP_PUT,
          .db = db,
          .key = key,
          .keylen = keylen,
          .value = value,
          .len = len,
          .hash = body_hash,
          .flags = flags};
  return ns_store_write(s, op_fn, &o);
}

netstash_error ns_store_del(ns_store *s, ns_store_db db, const void *key, size_t keylen) {
  op o = {.kind = OP_DEL, .db = db, .key = key, .keylen = keylen};
  return ns_store_write(s, op_fn, &o);
}

netstash_error ns_store_pin(ns_store *s, ns_store_db db, const void *key, size_t keylen,
                            int pinned) {
  op o = {.kind = OP_PIN, .db = db, .key = key, .keylen = keylen, .flags = (uint32_t)(pinned != 0)};
  return ns_store_write(s, op_fn, &o);
}

netstash_error ns_store_flush_access(ns_store *s) {
  op o = {.kind = OP_NONE};
  return ns_store_write(s, op_fn, &o);
}

/* ------------------------------------------------------------ GC, size */

typedef struct gc_req {
  size_t max;
  int more;
  int pos_valid;
  uint8_t pos[NS_STORE_HASH_LEN];
} gc_req;

static netstash_error gc_fn(ns_store_txn *t, void *ud) {
  gc_req *g = ud;
  ns_store *s = t->s;
  MDB_cursor *c;
  MDB_val k, v;
  netstash_error err = NETSTASH_OK;
  size_t examined = 0;
  int rc;

  g->more = 0;
  g->pos_valid = 0;
  rc = mdb_cursor_open(t->txn, s->dbi[DBI_GCQ], &c);
  if (rc != 0)
    return txn_rc(t, rc);
  if (s->gc_pos_valid) {
    mval(&k, s->gc_pos, NS_STORE_HASH_LEN);
    rc = mdb_cursor_get(c, &k, &v, MDB_SET_RANGE);
  } else {
    rc = mdb_cursor_get(c, &k, &v, MDB_FIRST);
  }
  while (rc == 0) {
    if (examined == g->max) {
      g->more = 1;
      g->pos_valid = 1;
      memcpy(g->pos, k.mv_data, NS_STORE_HASH_LEN);
      break;
    }
    examined++;
    if ((err = gcq_step(t, c, &k, &v, &rc)) != NETSTASH_OK)
      break;
  }
  if (err == NETSTASH_OK && rc != 0 && rc != MDB_NOTFOUND)
    err = txn_rc(t, rc);
  mdb_cursor_close(c);
  return err;
}

netstash_error ns_store_gc_step(ns_store *s, size_t max_items, int *more) {
  gc_req g;
  netstash_error err;
  if (more)
    *more = 0;
  if (!s || max_items == 0)
    return NETSTASH_E_INVALID_ARGUMENT;
  memset(&g, 0, sizeof(g));
  g.max = max_items;
  err = ns_store_write(s, gc_fn, &g);
  if (err != NETSTASH_OK)
    return err;
  /* only after the commit: a replayed transaction starts from the same
   * position */
  s->gc_pos_valid = g.pos_valid;
  memcpy(s->gc_pos, g.pos, NS_STORE_HASH_LEN);
  if (more)
    *more = g.more;
  return NETSTASH_OK;
}

netstash_error ns_store_evict(ns_store *s, uint64_t target, size_t *evicted) {
  evict_req e;
  netstash_error err;
  if (!s)
    return NETSTASH_E_INVALID_ARGUMENT;
  e.target = target ? target : s->p.size_limit / 10 * 9;
  e.n = 0;
  err = ns_store_write(s, evict_fn, &e);
  if (err == NETSTASH_OK)
    s->evicted += e.n;
  if (evicted)
    *evicted = err == NETSTASH_OK ? e.n : 0;
  return err;
}

netstash_error ns_store_get_stats(ns_store *s, ns_store_stats *st) {
  ns_store_reader *r;
  netstash_error err;
  MDB_stat ms;
  if (!s || !st)
    return NETSTASH_E_INVALID_ARGUMENT;
  memset(st, 0, sizeof(*st));
  err = ns_store_reader_new(s, &r);
  if (err != NETSTASH_OK)
    return err;
  err = ns_store_read_begin(r);
  if (err == NETSTASH_OK) {
    st->used_bytes = used_bytes(s, r->txn);
    for (int i = 0; i < NS_STORE_DB_COUNT_; i++)
      if (mdb_stat(r->txn, s->dbi[rec_dbi[i]], &ms) == 0)
        st->records[i] = ms.ms_entries;
    if (mdb_stat(r->txn, s->dbi[DBI_REFS], &ms) == 0)
      st->bodies = ms.ms_entries;
    if (mdb_stat(r->txn, s->dbi[DBI_GCQ], &ms) == 0) {
      st->gc_queued = ms.ms_entries;
      st->bodies += ms.ms_entries; /* every body is referenced or queued */
    }
    ns_store_read_end(r);
  }
  ns_store_reader_del(r);
  st->map_size = map_size(s);
  st->evicted = s->evicted;
  st->map_grown = s->grown;
  st->size_limit = s->p.size_limit;
  return err;
}

/* ------------------------------------------------------------ verify */

static netstash_error verify_bodies(ns_store *s, MDB_txn *txn, ns_map *refs, char *detail,
                                    size_t dlen) {
  MDB_cursor *c;
  MDB_val k, v;
  EVP_MD_CTX *md = EVP_MD_CTX_new();
  netstash_error err = NETSTASH_OK;
  uint8_t cur[NS_STORE_HASH_LEN];
  uint32_t cur_n = 0;
  int rc, have = 0;
  if (!md)
    return NETSTASH_E_NOMEM;
  rc = mdb_cursor_open(txn, s->dbi[DBI_BODIES], &c);
  if (rc != 0) {
    EVP_MD_CTX_free(md);
    return map_rc(rc);
  }
  for (rc = mdb_cursor_get(c, &k, &v, MDB_FIRST); rc == 0;
       rc = mdb_cursor_get(c, &k, &v, MDB_NEXT)) {
    if (k.mv_size == NS_STORE_HASH_LEN) {
      ns_store_body b;
      uint8_t got[NS_STORE_HASH_LEN];
      memcpy(cur, k.mv_data, NS_STORE_HASH_LEN);
      err = body_get_in(s, txn, cur, &b);
      if (err == NETSTASH_OK && !EVP_DigestInit_ex(md, s->sha, NULL))
        err = NETSTASH_E_INTERNAL;
      if (err == NETSTASH_OK)
        err = ns_store_body_decode(&b, s->mem, b.decoded_size, hash_sink, md);
      if (err == NETSTASH_OK && !EVP_DigestFinal_ex(md, got, NULL))
        err = NETSTASH_E_INTERNAL;
      if (err == NETSTASH_OK && memcmp(got, cur, NS_STORE_HASH_LEN) != 0)
        err = NETSTASH_E_STORE_CORRUPT;
      if (err != NETSTASH_OK) {
        ns_detailf(detail, dlen, "body %02x%02x%02x%02x... is damaged (%s)", cur[0], cur[1], cur[2],
                   cur[3], netstash_error_name(err));
        err = NETSTASH_E_STORE_CORRUPT;
        break;
      }
      cur_n = b.nchunks;
      have = 1;
      /* counted referenced here: the ref map's entry is checked below */
      ns_map_remove(refs, cur, NS_STORE_HASH_LEN, NULL);
    } else if (k.mv_size == NS_STORE_HASH_LEN + 4) {
      const uint8_t *p = k.mv_data;
      uint32_t i =
          ((uint32_t)p[32] << 24) | ((uint32_t)p[33] << 16) | ((uint32_t)p[34] << 8) | p[35];
      if (!have || memcmp(p, cur, NS_STORE_HASH_LEN) != 0 || i == 0 || i >= cur_n) {
        ns_detailf(detail, dlen, "orphan body chunk %02x%02x%02x%02x.../%u", p[0], p[1], p[2], p[3],
                   i);
        err = NETSTASH_E_STORE_CORRUPT;
        break;
      }
    } else {
      ns_detailf(detail, dlen, "malformed key in the bodies database");
      err = NETSTASH_E_STORE_CORRUPT;
      break;
    }
  }
  if (err == NETSTASH_OK && rc != MDB_NOTFOUND) {
    err = map_rc(rc);
    ns_detailf(detail, dlen, "bodies database unreadable: %s", mdb_strerror(rc));
  }
  mdb_cursor_close(c);
  EVP_MD_CTX_free(md);
  return err;
}

netstash_error ns_store_verify(ns_store *s, char *detail, size_t dlen) {
  ns_store_reader *r = NULL;
  ns_map counts;
  netstash_error err;
  MDB_cursor *c = NULL;
  MDB_val k, v;
  int rc;
  if (detail && dlen)
    detail[0] = '\0';
  if (!s)
    return NETSTASH_E_INVALID_ARGUMENT;
  ns_map_init(&counts, s->mem);
  err = ns_store_reader_new(s, &r);
  if (err == NETSTASH_OK)
    err = ns_store_read_begin(r);
  if (err != NETSTASH_OK)
    goto done;
  /* 1. records: count references per body */
  for (int db = 0; db < NS_STORE_DB_COUNT_ && err == NETSTASH_OK; db++) {
    rc = mdb_cursor_open(r->txn, s->dbi[rec_dbi[db]], &c);
    if (rc != 0) {
      err = map_rc(rc);
      break;
    }
    for (rc = mdb_cursor_get(c, &k, &v, MDB_FIRST); rc == 0;
         rc = mdb_cursor_get(c, &k, &v, MDB_NEXT)) {
      rec_hdr h;
      void *n = NULL;
      err = rec_parse(&v, &h);
      if (err != NETSTASH_OK) {
        ns_detailf(detail, dlen, "malformed record in '%s'", dbi_names[rec_dbi[db]]);
        break;
      }
      if (!(h.flags & REC_F_BODY))
        continue;
      ns_map_find(&counts, h.hash, NS_STORE_HASH_LEN, &n);
      err = ns_map_put(&counts, h.hash, NS_STORE_HASH_LEN, (void *)((uintptr_t)n + 1), NULL);
      if (err != NETSTASH_OK)
        break;
    }
    if (err == NETSTASH_OK && rc != MDB_NOTFOUND)
      err = map_rc(rc);
    mdb_cursor_close(c);
  }
  if (err != NETSTASH_OK)
    goto done;
  /* 2. refs database equals the counts */
  rc = mdb_cursor_open(r->txn, s->dbi[DBI_REFS], &c);
  if (rc != 0) {
    err = map_rc(rc);
    goto done;
  }
  for (rc = mdb_cursor_get(c, &k, &v, MDB_FIRST); rc == 0;
       rc = mdb_cursor_get(c, &k, &v, MDB_NEXT)) {
    void *n = NULL;
    if (k.mv_size != NS_STORE_HASH_LEN || v.mv_size != 8 ||
        !ns_map_find(&counts, k.mv_data, NS_STORE_HASH_LEN, &n) ||
        (uint64_t)(uintptr_t)n != get_le64(v.mv_data)) {
      ns_detailf(detail, dlen, "reference count mismatch");
      err = NETSTASH_E_STORE_CORRUPT;
      break;
    }
  }
  if (err == NETSTASH_OK && rc != MDB_NOTFOUND)
    err = map_rc(rc);
  mdb_cursor_close(c);
  if (err == NETSTASH_OK && ns_map_len(&counts) != 0) {
    MDB_stat st;
    if (mdb_stat(r->txn, s->dbi[DBI_REFS], &st) != 0 || st.ms_entries != ns_map_len(&counts)) {
      ns_detailf(detail, dlen, "referenced bodies missing from refs");
      err = NETSTASH_E_STORE_CORRUPT;
    }
  }
  /* 3. bodies: complete, hash matches, every referenced body present */
  if (err == NETSTASH_OK)
    err = verify_bodies(s, r->txn, &counts, detail, dlen);
  if (err == NETSTASH_OK && ns_map_len(&counts) != 0) {
    ns_detailf(detail, dlen, "%zu referenced bodies are missing", ns_map_len(&counts));
    err = NETSTASH_E_STORE_CORRUPT;
  }
done:
  if (err != NETSTASH_OK && detail && dlen && !detail[0])
    ns_detailf(detail, dlen, "verify failed: %s", netstash_error_name(err));
  ns_store_reader_del(r);
  ns_map_free(&counts);
  return err;
}
