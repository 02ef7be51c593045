/*
 * benchutil.h — shared bits of the in-process benchmarks in tools/bench:
 * an allocation counter interposed on malloc/calloc/realloc (every library
 * of the process allocates through it), a monotonic clock, sorting, peak
 * RSS and tree removal. Include once per program (it defines malloc).
 */
#ifndef NS_BENCHUTIL_H
#define NS_BENCHUTIL_H

#include <ftw.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <time.h>

extern void *__libc_malloc(size_t);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
/* allocations made by the whole process so far */
static volatile unsigned long n_alloc;
void *malloc(size_t n) {
  n_alloc++;
  return __libc_malloc(n);
}
void *calloc(size_t a, size_t b) {
  n_alloc++;
  return __libc_calloc(a, b);
}
void *realloc(void *p, size_t n) {
  n_alloc++;
  return __libc_realloc(p, n);
}

static inline uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static inline int cmp_u64(const void *a, const void *b) {
  uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
  return x < y ? -1 : x > y;
}

/* peak resident set size, KiB */
static inline long peak_rss_kb(void) {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return ru.ru_maxrss;
}

static inline int bench_rm_cb(const char *p, const struct stat *sb, int flag, struct FTW *f) {
  (void)sb;
  (void)flag;
  (void)f;
  return remove(p);
}

/* rm -rf dir */
static inline void bench_rmtree(const char *dir) {
  nftw(dir, bench_rm_cb, 16, FTW_DEPTH | FTW_PHYS);
}

#endif
