/*
 * storage_fault_test — the profile store under storage faults, through the
 * public API and the CLI (netstash issue 9, "Faults"):
 *
 *  - disk full: the profile on a 3 MiB tmpfs mounted in a private mount
 *    namespace (a forked child: unshare(CLONE_NEWNS) + mount(2); the tests
 *    run as root). HTTP cache writes until the disk is full: every fetch is
 *    still answered correctly, the ones that could not be stored say "not
 *    stored: store is full"; a preload install (offline bundle with a 4 MiB
 *    body) fails with NETSTASH_E_STORE_FULL and a detail; afterwards the
 *    store opens, every response reported stored is served from the cache,
 *    and netstash_store_verify passes.
 *  - read-only profile directory (a read-only bind mount in a private mount
 *    namespace; root ignores file modes): a context cannot open it for
 *    writing and says why (NETSTASH_E_IO, "read-only"); the read-only
 *    openers (netstash_store_verify, `netstash verify`) work. The public API
 *    has no read-only context, so hits are not served from such a profile.
 *  - corrupt LMDB pages: every page of a populated data.mdb damaged in turn
 *    (its header at the page boundary, then its middle), each case in a
 *    forked child: no crash; a damaged store either fails to open with
 *    NETSTASH_E_STORE_CORRUPT and a detail, or serves every entry correctly,
 *    or netstash_store_verify reports it (damage inside a body is only found
 *    by verify: LMDB has no page checksums and hits are not re-hashed); and
 *    `netstash verify` exits non-zero on it.
 *  - a store of a newer schema (the meta record rewritten with LMDB):
 *    NETSTASH_E_STORE_VERSION naming both versions, from the context, the
 *    verifier and the CLI; data.mdb is not modified; with the schema put
 *    back, the cached response is served again.
 */
#define _GNU_SOURCE 1
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <dlfcn.h>
#include <errno.h>
#include <execinfo.h>
#include <fcntl.h>
#include <ftw.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <lmdb.h>
#include <netstash/netstash.h>
#include <openssl/evp.h>

#include "cli_run.h"
#include "harness.h"

static nst_server caddy;
static char base[256], resolve[128], bundle_big[512], bundle_small[512];
static int seq;

/* In forked children: print and exit (cmocka's longjmp is the parent's). */
#define CK(cond, ...)                                                                             \
  do {                                                                                           \
    if (!(cond)) {                                                                               \
      fprintf(stderr, "storage_fault_test (child) line %d: ", __LINE__);                         \
      fprintf(stderr, __VA_ARGS__);                                                              \
      fprintf(stderr, "\n");                                                                     \
      _exit(90);                                                                                 \
    }                                                                                            \
  } while (0)

static char *read_all(const char *path, size_t *len) {
  FILE *f = fopen(path, "rb");
  char *b;
  long n;
  if (!f)
    return NULL;
  fseek(f, 0, SEEK_END);
  n = ftell(f);
  fseek(f, 0, SEEK_SET);
  b = malloc((size_t)n + 1);
  if (!b || fread(b, 1, (size_t)n, f) != (size_t)n) {
    fclose(f);
    free(b);
    return NULL;
  }
  b[n] = 0;
  fclose(f);
  *len = (size_t)n;
  return b;
}

static int write_all(const char *path, const void *d, size_t n) {
  FILE *f = fopen(path, "wb");
  int ok;
  if (!f)
    return -1;
  ok = fwrite(d, 1, n, f) == n;
  return (fclose(f) == 0 && ok) ? 0 : -1;
}

static const char *new_dir(const char *what) {
  static char p[4][512];
  char *d = p[seq % 4];
  snprintf(d, sizeof(p[0]), "%s/%s-%d", nst_workdir(), what, ++seq);
  return d;
}

static netstash_error ctx_open(netstash_ctx **ctx, const char *prof, char *detail, size_t dlen) {
  netstash_options *o;
  netstash_error rv;
  *ctx = NULL;
  if (netstash_options_new(&o) != NETSTASH_OK)
    return NETSTASH_E_NOMEM;
  netstash_options_set_profile_dir(o, prof);
  netstash_options_set_ca_file(o, nst_cert("ca.pem"));
  netstash_options_set_allow_unsigned(o, 1);
  netstash_options_set_http3(o, 0);
  netstash_options_set_cache_max_bytes(o, 1ull << 30); /* only the disk limits */
  rv = netstash_ctx_new(ctx, o, detail, dlen);
  netstash_options_del(o);
  return rv;
}

/* A site file's content (site-relative path). */
static char *site_file(const char *name, size_t *len) {
  char p[1024];
  snprintf(p, sizeof(p), "%s/%s", nst_site(), name);
  return read_all(p, len);
}

typedef struct answer {
  netstash_error err;
  int status;
  netstash_source src;
  char reason[256];
  int body_ok; /* body equals the site file */
} answer;

static answer fetch(netstash_ctx *ctx, const char *name, netstash_cache_mode mode) {
  answer a;
  netstash_request *r = NULL;
  netstash_fetch *f = NULL;
  char url[600];
  memset(&a, 0, sizeof(a));
  snprintf(url, sizeof(url), "%s%s", base, name);
  if (netstash_request_new(&r, url) != NETSTASH_OK) {
    a.err = NETSTASH_E_NOMEM;
    return a;
  }
  netstash_request_add_resolve(r, resolve);
  netstash_request_set_collect_body(r, 8u << 20);
  netstash_request_set_cache_mode(r, mode);
  a.err = netstash_fetch_start(ctx, r, NULL, NULL, &f);
  if (a.err == NETSTASH_OK)
    a.err = netstash_fetch_wait(f, 30000);
  if (a.err == NETSTASH_OK) {
    const uint8_t *d;
    size_t n, wl = 0;
    char *want = site_file(name, &wl);
    a.status = netstash_fetch_status(f);
    a.src = netstash_fetch_source(f);
    snprintf(a.reason, sizeof(a.reason), "%s", netstash_fetch_cache_reason(f));
    a.body_ok = want && netstash_fetch_body(f, &d, &n) == NETSTASH_OK && n == wl &&
                memcmp(d, want, n) == 0;
    free(want);
  }
  netstash_fetch_del(f);
  netstash_request_del(r);
  return a;
}

/* The cache reason lists its parts separated by "; "; "stored" is one of
 * them when the response went into the cache ("miss: nothing stored" and
 * "not stored: ..." are not). */
static int reason_stored(const char *reason) {
  for (const char *p = reason; p;) {
    const char *e = strstr(p, "; ");
    size_t n = e ? (size_t)(e - p) : strlen(p);
    if (n == 6 && strncmp(p, "stored", 6) == 0)
      return 1;
    p = e ? e + 2 : NULL;
  }
  return 0;
}
static int is_stored(const char *reason) { return reason_stored(reason); }

/* Runs fn in a forked child; returns its wait status. */
static int in_child(int (*fn)(void *), void *arg) {
  pid_t pid;
  int st = 0;
  fflush(NULL);
  pid = fork();
  assert_true(pid >= 0);
  if (pid == 0) {
    /* cmocka's handlers would longjmp into the parent's test flow */
    static const int sigs[] = {SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT};
    for (size_t i = 0; i < sizeof(sigs) / sizeof(sigs[0]); i++)
      signal(sigs[i], SIG_DFL);
    int rc = fn(arg);
    fflush(NULL);
    _exit(rc);
  }
  assert_int_equal(waitpid(pid, &st, 0), pid);
  return st;
}

static void expect_child_ok(int st, const char *what) {
  if (WIFSIGNALED(st))
    fail_msg("%s: child killed by signal %d", what, WTERMSIG(st));
  if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
    fail_msg("%s: child exit %d", what, WEXITSTATUS(st));
}

/* A private mount namespace for this (child) process. */
static void private_mounts(void) {
  CK(unshare(CLONE_NEWNS) == 0, "unshare(CLONE_NEWNS): %s", strerror(errno));
  CK(mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) == 0, "make / private: %s",
     strerror(errno));
}

/* The profile's store files, hashed (to prove "not modified"). */
static void hash_file(const char *path, unsigned char out[32]) {
  size_t n = 0;
  char *b = read_all(path, &n);
  unsigned dl = 0;
  assert_non_null(b);
  EVP_Digest(b, n, out, &dl, EVP_sha256(), NULL);
  free(b);
}

/* ------------------------------------------------------------ disk full */

static int disk_full_child(void *arg) {
  const char *mnt = arg;
  char prof[600], detail[512], name[64];
  netstash_ctx *ctx = NULL;
  netstash_warm *w = NULL;
  netstash_error rv;
  int stored[200], nstored = 0, full_at = -1, full_reason = 0;
  private_mounts();
  CK(mkdir(mnt, 0700) == 0 || errno == EEXIST, "mkdir %s", mnt);
  CK(mount("tmpfs", mnt, "tmpfs", 0, "size=3m,mode=0700") == 0, "mount tmpfs: %s",
     strerror(errno));
  snprintf(prof, sizeof(prof), "%s/prof", mnt);
  rv = ctx_open(&ctx, prof, detail, sizeof(detail));
  CK(rv == NETSTASH_OK, "ctx on the tmpfs: %s %s", netstash_error_name(rv), detail);
  /* cache writes (20,000-byte bodies) until the disk is full, and a few
   * more: every answer is still right */
  for (int i = 0; i < 200; i++) {
    answer a;
    snprintf(name, sizeof(name), "r/%d.bin", i);
    a = fetch(ctx, name, NETSTASH_CACHE_DEFAULT);
    CK(a.err == NETSTASH_OK && a.status == 200 && a.body_ok, "%s on a full disk: %s, status %d",
       name, netstash_error_name(a.err), a.status);
    stored[i] = is_stored(a.reason);
    if (stored[i])
      nstored++;
    if (!stored[i] && full_at < 0) {
      full_at = i;
      full_reason = strstr(a.reason, "not stored: store is full") != NULL;
      CK(full_reason, "%s: reason \"%s\", want \"not stored: store is full\"", name, a.reason);
    }
    if (full_at >= 0 && i >= full_at + 5)
      break;
  }
  CK(full_at > 10, "full after %d entries", full_at);
  printf("[ disk  ] 3 MiB tmpfs: %d responses stored, the disk full at response %d\n", nstored,
         full_at);
  /* a preload install that cannot fit */
  CK(netstash_warm_new(ctx, bundle_big, &w) == NETSTASH_OK, "warm_new");
  CK(netstash_warm_start(w) == NETSTASH_OK, "warm_start");
  rv = netstash_warm_wait(w, 60000);
  CK(rv == NETSTASH_E_STORE_FULL, "install on a full disk: %s (%s)", netstash_error_name(rv),
     netstash_warm_error_detail(w));
  CK(netstash_warm_error_detail(w)[0], "install on a full disk: no detail");
  printf("[ disk  ] install: %s: %s\n", netstash_error_name(rv), netstash_warm_error_detail(w));
  netstash_warm_del(w);
  netstash_ctx_del(ctx);
  /* the store opens again; nothing committed is lost */
  rv = ctx_open(&ctx, prof, detail, sizeof(detail));
  CK(rv == NETSTASH_OK, "reopen after the disk filled: %s %s", netstash_error_name(rv), detail);
  for (int i = 0; i < 200 && i <= full_at + 5; i++) {
    answer a;
    if (!stored[i])
      continue;
    snprintf(name, sizeof(name), "r/%d.bin", i);
    a = fetch(ctx, name, NETSTASH_CACHE_ONLY_IF_CACHED);
    CK(a.err == NETSTASH_OK && a.src == NETSTASH_SOURCE_CACHE && a.body_ok,
       "%s reported stored, now %s source %d", name, netstash_error_name(a.err), (int)a.src);
  }
  /* a small install still fits in what LMDB reuses, or fails cleanly */
  CK(netstash_warm_new(ctx, bundle_small, &w) == NETSTASH_OK, "warm_new");
  CK(netstash_warm_start(w) == NETSTASH_OK, "warm_start");
  rv = netstash_warm_wait(w, 60000);
  CK(rv == NETSTASH_OK || rv == NETSTASH_E_STORE_FULL, "small install: %s (%s)",
     netstash_error_name(rv), netstash_warm_error_detail(w));
  netstash_warm_del(w);
  netstash_ctx_del(ctx);
  rv = netstash_store_verify(prof, detail, sizeof(detail));
  CK(rv == NETSTASH_OK, "verify after the disk filled: %s %s", netstash_error_name(rv), detail);
  return 0;
}

static void test_disk_full(void **state) {
  (void)state;
  expect_child_ok(in_child(disk_full_child, (void *)new_dir("tmpfs")), "disk full");
}

/* ------------------------------------------------------------ fixtures */

/* A profile with responses r/0..r/(n-1).bin in the HTTP cache and the small
 * bundle installed. */
static void populate(const char *prof, int n) {
  netstash_ctx *ctx;
  netstash_warm *w;
  char detail[256], name[64];
  assert_int_equal(ctx_open(&ctx, prof, detail, sizeof(detail)), NETSTASH_OK);
  for (int i = 0; i < n; i++) {
    answer a;
    snprintf(name, sizeof(name), "r/%d.bin", i);
    a = fetch(ctx, name, NETSTASH_CACHE_DEFAULT);
    assert_int_equal(a.err, NETSTASH_OK);
    if (!is_stored(a.reason))
      fail_msg("%s not stored: %s", name, a.reason);
  }
  assert_int_equal(netstash_warm_new(ctx, bundle_small, &w), NETSTASH_OK);
  assert_int_equal(netstash_warm_start(w), NETSTASH_OK);
  assert_int_equal(netstash_warm_wait(w, 60000), NETSTASH_OK);
  netstash_warm_del(w);
  netstash_ctx_del(ctx);
}

/* ------------------------------------------------------------ read-only */

static int read_only_child(void *arg) {
  const char *prof = arg;
  char detail[512], args[1200], *out = NULL, *err = NULL;
  netstash_ctx *ctx = NULL;
  netstash_error rv;
  int code;
  private_mounts();
  CK(mount(prof, prof, NULL, MS_BIND, NULL) == 0, "bind %s: %s", prof, strerror(errno));
  CK(mount(NULL, prof, NULL, MS_REMOUNT | MS_BIND | MS_RDONLY, NULL) == 0, "remount ro: %s",
     strerror(errno));
  rv = ctx_open(&ctx, prof, detail, sizeof(detail));
  CK(rv == NETSTASH_E_IO && ctx == NULL, "context on a read-only profile: %s (%s)",
     netstash_error_name(rv), detail);
  CK(strstr(detail, "read-only") && strstr(detail, prof), "detail \"%s\"", detail);
  printf("[ ro    ] ctx_new: %s: %s\n", netstash_error_name(rv), detail);
  /* read-only openers work */
  rv = netstash_store_verify(prof, detail, sizeof(detail));
  CK(rv == NETSTASH_OK, "verify on a read-only profile: %s %s", netstash_error_name(rv), detail);
  snprintf(args, sizeof(args), "verify --profile '%s'", prof);
  code = cli_run(args, &out, &err);
  printf("[ ro    ] netstash verify: exit %d: %s%s", code, out ? out : "", err ? err : "");
  /* the store part is read-only; the preload re-hash may unlink bodies, so
   * it needs a context, which says the profile is read-only */
  CK(code == 0 || (err && strstr(err, "read-only")),
     "netstash verify on a read-only profile: exit %d", code);
  free(out);
  free(err);
  return 0;
}

static void test_read_only(void **state) {
  const char *prof = new_dir("ro");
  netstash_ctx *ctx;
  char detail[256];
  (void)state;
  populate(prof, 3);
  expect_child_ok(in_child(read_only_child, (void *)prof), "read-only profile");
  /* the profile itself is untouched and writable again outside */
  assert_int_equal(ctx_open(&ctx, prof, detail, sizeof(detail)), NETSTASH_OK);
  answer a = fetch(ctx, "r/1.bin", NETSTASH_CACHE_ONLY_IF_CACHED);
  assert_int_equal(a.err, NETSTASH_OK);
  assert_true(a.body_ok);
  netstash_ctx_del(ctx);
}

/* ------------------------------------------------------------ newer schema */

static void set_schema(const char *prof, uint32_t v) {
  MDB_env *env;
  MDB_txn *txn;
  MDB_dbi dbi;
  MDB_val k = {6, (void *)"schema"}, d;
  unsigned char le[4] = {(unsigned char)v, (unsigned char)(v >> 8), (unsigned char)(v >> 16),
                         (unsigned char)(v >> 24)};
  char dir[600];
  snprintf(dir, sizeof(dir), "%s/store", prof);
  assert_int_equal(mdb_env_create(&env), 0);
  assert_int_equal(mdb_env_set_maxdbs(env, 16), 0);
  assert_int_equal(mdb_env_set_mapsize(env, 64u << 20), 0);
  assert_int_equal(mdb_env_open(env, dir, 0, 0600), 0);
  assert_int_equal(mdb_txn_begin(env, NULL, 0, &txn), 0);
  assert_int_equal(mdb_dbi_open(txn, "meta", 0, &dbi), 0);
  d.mv_size = 4;
  d.mv_data = le;
  assert_int_equal(mdb_put(txn, dbi, &k, &d, 0), 0);
  assert_int_equal(mdb_txn_commit(txn), 0);
  mdb_env_close(env);
}

static void test_newer_schema(void **state) {
  const char *prof = new_dir("schema");
  char detail[512], path[700], args[1200], *out = NULL, *err = NULL;
  unsigned char h0[32], h1[32];
  netstash_ctx *ctx = NULL;
  (void)state;
  populate(prof, 2);
  set_schema(prof, 7);
  snprintf(path, sizeof(path), "%s/store/data.mdb", prof);
  hash_file(path, h0);
  assert_int_equal(ctx_open(&ctx, prof, detail, sizeof(detail)), NETSTASH_E_STORE_VERSION);
  assert_null(ctx);
  printf("[ schema] ctx_new: %s\n", detail);
  assert_non_null(strstr(detail, "schema version 7"));
  assert_non_null(strstr(detail, "supports (1)"));
  assert_int_equal(netstash_store_verify(prof, detail, sizeof(detail)), NETSTASH_E_STORE_VERSION);
  assert_non_null(strstr(detail, "schema version 7"));
  snprintf(args, sizeof(args), "verify --profile '%s'", prof);
  int code = cli_run(args, &out, &err);
  printf("[ schema] netstash verify: exit %d: %s", code, err ? err : "");
  assert_int_not_equal(code, 0);
  assert_non_null(err);
  assert_non_null(strstr(err, "schema version 7"));
  free(out);
  free(err);
  /* the store was not modified by any of them */
  hash_file(path, h1);
  assert_memory_equal(h0, h1, 32);
  /* back to this build's schema: everything is there */
  set_schema(prof, 1);
  assert_int_equal(ctx_open(&ctx, prof, detail, sizeof(detail)), NETSTASH_OK);
  answer a = fetch(ctx, "r/1.bin", NETSTASH_CACHE_ONLY_IF_CACHED);
  assert_int_equal(a.err, NETSTASH_OK);
  assert_true(a.body_ok);
  netstash_ctx_del(ctx);
}

/* ------------------------------------------------------------ corrupt pages */

#define CORRUPT_ENTRIES 12
enum { C_CLEAN = 0, C_OPEN_REFUSED = 1, C_VERIFY_FOUND = 2, C_SERVED_WRONG = 3 };

/* A crashing child tells a crash inside LMDB (exit C_LMDB_CRASH: LMDB does
 * not check pages, see below) from one anywhere else (the signal again);
 * NST_PAGES_VERBOSE prints the stack. The frame that faulted is the first
 * one after the signal trampoline in libc. */
#define C_LMDB_CRASH 42
static void crash_trace(int sig) {
  void *bt[32];
  int n = backtrace(bt, 32), at = -1;
  Dl_info info;
  if (getenv("NST_PAGES_VERBOSE"))
    backtrace_symbols_fd(bt, n, 2);
  for (int i = 1; i < n && at < 0; i++)
    if (dladdr(bt[i], &info) && info.dli_fname && strstr(info.dli_fname, "libc.so"))
      at = i + 1;
  if (at > 0 && at < n && dladdr(bt[at], &info) && info.dli_fname &&
      strstr(info.dli_fname, "liblmdb"))
    _exit(C_LMDB_CRASH);
  signal(sig, SIG_DFL);
  raise(sig);
}

/* Child: what a damaged store does. Exit codes: C_* above; 90 a failed
 * check (wrong error, a wrong answer that verify does not report). */
static int corrupt_child(void *arg) {
  const char *prof = arg;
  char detail[512], name[64];
  netstash_ctx *ctx = NULL;
  netstash_error v, rv;
  int wrong = 0, unreadable = 0;
  signal(SIGBUS, crash_trace);
  signal(SIGSEGV, crash_trace);
  v = netstash_store_verify(prof, detail, sizeof(detail));
  CK(v == NETSTASH_OK || v == NETSTASH_E_STORE_CORRUPT || v == NETSTASH_E_STORE_VERSION,
     "verify: %s (%s)", netstash_error_name(v), detail);
  CK(v == NETSTASH_OK || detail[0], "verify: %s without a detail", netstash_error_name(v));
  rv = ctx_open(&ctx, prof, detail, sizeof(detail));
  if (rv != NETSTASH_OK) {
    CK(rv == NETSTASH_E_STORE_CORRUPT || rv == NETSTASH_E_STORE_VERSION,
       "open a damaged store: %s (%s)", netstash_error_name(rv), detail);
    CK(strstr(detail, "move it away") || strstr(detail, "purge"), "detail \"%s\"", detail);
    CK(v != NETSTASH_OK, "open refused (%s) but verify passed", detail);
    return C_OPEN_REFUSED;
  }
  for (int i = 0; i < CORRUPT_ENTRIES; i++) {
    answer a;
    snprintf(name, sizeof(name), "r/%d.bin", i);
    a = fetch(ctx, name, NETSTASH_CACHE_ONLY_IF_CACHED);
    if (a.err == NETSTASH_OK && !a.body_ok)
      wrong++;
    else if (a.err != NETSTASH_OK) {
      CK(a.err == NETSTASH_E_STORE_CORRUPT || a.err == NETSTASH_E_NOT_CACHED,
         "read %s: %s", name, netstash_error_name(a.err));
      if (getenv("NST_PAGES_VERBOSE"))
        fprintf(stderr, "read %s: %s\n", name, netstash_error_name(a.err));
      unreadable++;
    }
  }
  {
    netstash_preload_hit *h = NULL;
    char url[600];
    snprintf(url, sizeof(url), "%shello.txt", base);
    if (netstash_preload_hit_new(ctx, &h) == NETSTASH_OK) {
      rv = netstash_preload_lookup(h, url);
      if (rv == NETSTASH_OK) {
        const uint8_t *d;
        size_t n;
        if (netstash_preload_hit_chunk_count(h) != 1 ||
            netstash_preload_hit_chunk(h, 0, &d, &n) != NETSTASH_OK || n != 16 ||
            memcmp(d, "hello, netstash\n", 16) != 0)
          wrong++;
      } else {
        CK(rv == NETSTASH_E_STORE_CORRUPT || rv == NETSTASH_E_NOT_FOUND, "preload lookup: %s",
           netstash_error_name(rv));
        unreadable++;
      }
      netstash_preload_hit_del(h);
    }
  }
  netstash_ctx_del(ctx);
  /* a wrong or missing answer must be found by verify */
  CK(!(wrong || unreadable) || v != NETSTASH_OK,
     "%d wrong and %d unreadable answers, verify passed", wrong, unreadable);
  if (wrong)
    return C_SERVED_WRONG;
  return v == NETSTASH_OK ? C_CLEAN : C_VERIFY_FOUND;
}

static void test_corrupt_pages(void **state) {
  const char *prof = new_dir("corrupt");
  char path[700], args[1200];
  size_t len = 0, pages;
  char *pristine;
  int counts[4] = {0, 0, 0, 0}, crashes = 0, lmdb_crashes = 0, cli_checked = 0;
  (void)state;
  populate(prof, CORRUPT_ENTRIES);
  snprintf(path, sizeof(path), "%s/store/data.mdb", prof);
  pristine = read_all(path, &len);
  assert_non_null(pristine);
  pages = len / 4096;
  assert_true(pages > 20);
  srand(9);
  const char *only = getenv("NST_PAGE"); /* "P,W": one case, for debugging */
  for (int where = 0; where < 2; where++) {
    for (size_t p = 0; p < pages; p++) {
      if (only && (strtoul(only, NULL, 10) != p || atoi(strchr(only, ',') + 1) != where))
        continue;
      char *b = malloc(len);
      size_t off = p * 4096 + (where ? 2048 : 0);
      int st;
      memcpy(b, pristine, len);
      for (int k = 0; k < 32; k++)
        b[off + (size_t)k] = (char)(rand() & 0xff);
      assert_int_equal(write_all(path, b, len), 0);
      free(b);
      st = in_child(corrupt_child, (void *)prof);
      if (WIFSIGNALED(st)) {
        crashes++;
        fprintf(stderr, "[ pages ] page %zu %s: crash (signal %d)\n", p,
                where ? "middle" : "header", WTERMSIG(st));
        continue;
      }
      if (WIFEXITED(st) && WEXITSTATUS(st) == C_LMDB_CRASH) {
        lmdb_crashes++;
        fprintf(stderr, "[ pages ] page %zu %s: crash inside LMDB\n", p, where ? "middle" : "header");
        continue;
      }
      if (!WIFEXITED(st) || WEXITSTATUS(st) > C_SERVED_WRONG)
        fail_msg("page %zu (%s): child exit %d", p, where ? "middle" : "header",
                 WEXITSTATUS(st));
      counts[WEXITSTATUS(st)]++;
      /* the CLI's verdict on a few of the damaged stores */
      if (WEXITSTATUS(st) != C_CLEAN && cli_checked < 6) {
        char *out = NULL, *err = NULL;
        cli_checked++;
        snprintf(args, sizeof(args), "verify --profile '%s'", prof);
        int code = cli_run(args, &out, &err);
        if (code == 0)
          fail_msg("page %zu: netstash verify exits 0 on a damaged store: %s", p, out);
        if (!err || !(strstr(err, "corrupt") || strstr(err, "damaged") || strstr(err, "unreadable") ||
                      strstr(err, "move it away")))
          fail_msg("page %zu: netstash verify says \"%s\"", p, err ? err : "");
        free(out);
        free(err);
      }
    }
  }
  assert_int_equal(write_all(path, pristine, len), 0);
  free(pristine);
  printf("[ pages ] %zu pages x 2 places: %d clean (free or unused bytes), %d refused at open, "
         "%d found by verify (%d of them served a wrong body: no page checksums), %d crashes "
         "inside LMDB, %d elsewhere\n",
         pages, counts[C_CLEAN], counts[C_OPEN_REFUSED], counts[C_VERIFY_FOUND] +
         counts[C_SERVED_WRONG], counts[C_SERVED_WRONG], lmdb_crashes, crashes);
  assert_int_equal(crashes, 0);
  /* Residual risk, documented (DESIGN.md, store.h): LMDB does not check a
   * page's header, so a damaged one can make it read past the end of the
   * file (SIGBUS) while walking the tree. Bounded here so that a change
   * that makes it common fails. */
  assert_true(lmdb_crashes * 50 <= (int)(2 * pages));
}

/* ------------------------------------------------------------ setup */

/* An unsigned manifest over files of the site, warmed from caddy into a
 * scratch profile and packed into an offline bundle at out. */
static int make_bundle(const char *id, const char **names, int n, char *out, size_t outlen) {
  char mpath[1024], detail[256];
  netstash_ctx *ctx = NULL;
  netstash_warm *w = NULL;
  FILE *m;
  int rc = -1;
  snprintf(mpath, sizeof(mpath), "%s/%s.json", nst_workdir(), id);
  m = fopen(mpath, "w");
  if (!m)
    return -1;
  fprintf(m,
          "{\"id\": \"%s\", \"version\": 1, \"scope\": [\"%s\"], \"entry_pages\": "
          "[\"%s%s\"], \"expires\": \"2099-01-01T00:00:00Z\", \"resources\": [",
          id, base, base, names[0]);
  for (int i = 0; i < n; i++) {
    unsigned char d[32], enc[64];
    unsigned dl = 0;
    size_t len = 0;
    char *b = site_file(names[i], &len);
    if (!b) {
      fclose(m);
      return -1;
    }
    EVP_Digest(b, len, d, &dl, EVP_sha256(), NULL);
    EVP_EncodeBlock(enc, d, 32);
    fprintf(m,
            "%s{\"url\": \"%s%s\", \"integrity\": \"sha256-%s\", \"size\": %zu, "
            "\"content_type\": \"application/octet-stream\", \"priority\": \"critical\"}",
            i ? "," : "", base, names[i], enc, len);
    free(b);
  }
  fprintf(m, "]}\n");
  fclose(m);
  if (ctx_open(&ctx, new_dir("pack"), detail, sizeof(detail)) != NETSTASH_OK)
    goto done;
  if (netstash_warm_new(ctx, mpath, &w) != NETSTASH_OK)
    goto done;
  netstash_warm_add_resolve(w, resolve);
  if (netstash_warm_start(w) != NETSTASH_OK || netstash_warm_wait(w, 60000) != NETSTASH_OK) {
    fprintf(stderr, "warm %s: %s\n", id, netstash_warm_error_detail(w));
    goto done;
  }
  snprintf(out, outlen, "%s/%s.tar", nst_workdir(), id);
  if (netstash_preload_pack(ctx, id, out) != NETSTASH_OK)
    goto done;
  rc = 0;
done:
  netstash_warm_del(w);
  netstash_ctx_del(ctx);
  return rc;
}

static int setup(void **state) {
  const char *big[2] = {"hello.txt", "big.bin"}, *small[1] = {"hello.txt"};
  (void)state;
  if (geteuid() != 0) {
    fprintf(stderr, "storage_fault_test: needs root (mount namespaces, tmpfs)\n");
    return -1;
  }
  if (!nst_certs() || !nst_site() || nst_caddy_start("h2", &caddy) ||
      cli_run_setup("storage_fault"))
    return -1;
  snprintf(base, sizeof(base), "https://example.test:%d/", caddy.port);
  snprintf(resolve, sizeof(resolve), "example.test:%d:127.0.0.1", caddy.port);
  if (make_bundle("big", big, 2, bundle_big, sizeof(bundle_big)) ||
      make_bundle("small", small, 1, bundle_small, sizeof(bundle_small)))
    return -1;
  return 0;
}

static int teardown(void **state) {
  (void)state;
  nst_cleanup();
  return 0;
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_disk_full),
      cmocka_unit_test(test_read_only),
      cmocka_unit_test(test_newer_schema),
      cmocka_unit_test(test_corrupt_pages),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
