/*
 * hotbody_test — netd's hot-body table (netd/hotbody.c) on its own: a body
 * is copied on its second sighting into a sealed memfd holding exactly its
 * bytes, the copies stay within their budget (least recently sent evicted),
 * first sightings beyond the candidates' table push out the oldest, sizes
 * out of range are never kept, and a copy's descriptor stays readable after
 * its entry is evicted (what a socket holds lives on).
 */
#define _GNU_SOURCE 1
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "netd/netd.h"

static void key_of(uint8_t key[32], unsigned i) {
  memset(key, 0, 32);
  /* spread over the buckets as a SHA-256 would be */
  for (int b = 0; b < 32; b++)
    key[b] = (uint8_t)((i * 2654435761u) >> (b % 4 * 8)) ^ (uint8_t)b;
  memcpy(key + 28, &i, sizeof(i));
}

static void fill(unsigned char *buf, size_t n, unsigned seed) {
  for (size_t i = 0; i < n; i++)
    buf[i] = (unsigned char)(i * 7 + seed * 13 + (i >> 9));
}

/* The memfd holds exactly want (n bytes) and refuses writes. */
static void assert_copy(int fd, const unsigned char *want, size_t n) {
  unsigned char *got = malloc(n + 1);
  struct stat st;
  assert_non_null(got);
  assert_true(fd >= 0);
  assert_int_equal(fstat(fd, &st), 0);
  assert_int_equal((size_t)st.st_size, n);
  assert_int_equal(pread(fd, got, n + 1, 0), (ssize_t)n);
  assert_memory_equal(got, want, n);
  assert_true(pwrite(fd, "x", 1, 0) < 0); /* sealed */
  assert_int_equal(fcntl(fd, F_GET_SEALS) & F_SEAL_WRITE, F_SEAL_WRITE);
  free(got);
}

static void test_second_sighting_copies(void **state) {
  netd_metrics m;
  netd_hot *h;
  unsigned char *body = malloc(50000);
  uv_buf_t chunks[2];
  uint8_t key[32];
  int fd;
  (void)state;
  memset(&m, 0, sizeof(m));
  assert_non_null(body);
  fill(body, 50000, 1);
  /* two chunks, as the store hands them out */
  chunks[0] = uv_buf_init((char *)body, 30000);
  chunks[1] = uv_buf_init((char *)body + 30000, 20000);
  assert_null(netd_hot_new(0, &m)); /* a budget of 0: none */
  assert_non_null(h = netd_hot_new(1 << 20, &m));
  key_of(key, 1);
  assert_int_equal(netd_hot_fd(h, key, chunks, 2, 50000), -1); /* first: noted */
  assert_int_equal(atomic_load(&m.hot_bodies), 0);
  fd = netd_hot_fd(h, key, chunks, 2, 50000); /* second: copied */
  assert_copy(fd, body, 50000);
  assert_int_equal(atomic_load(&m.hot_bodies), 1);
  assert_int_equal(atomic_load(&m.hot_body_bytes), 50000);
  assert_int_equal(netd_hot_fd(h, key, chunks, 2, 50000), fd); /* kept */
  /* the same key with another size is not trusted */
  key_of(key, 2);
  assert_int_equal(netd_hot_fd(h, key, chunks, 2, 50000), -1);
  assert_int_equal(netd_hot_fd(h, key, chunks, 1, 30000), -1);
  /* out of the range: never */
  key_of(key, 3);
  for (int i = 0; i < 3; i++) {
    assert_int_equal(netd_hot_fd(h, key, chunks, 1, NETD_HOT_MIN - 1), -1);
    assert_int_equal(netd_hot_fd(h, key, chunks, 2, NETD_HOT_MAX + 1), -1);
  }
  netd_hot_free(h);
  assert_int_equal(atomic_load(&m.hot_bodies), 0);
  free(body);
}

/* 3 bodies of 40 KB in a 100 KB budget: the least recently sent goes; its
 * descriptor, duplicated as a socket would hold its pages, still reads the
 * same bytes. */
static void test_budget_and_eviction(void **state) {
  netd_metrics m;
  netd_hot *h;
  unsigned char *b[3];
  uv_buf_t c[3];
  uint8_t key[3][32];
  int fd[3], held;
  (void)state;
  memset(&m, 0, sizeof(m));
  assert_non_null(h = netd_hot_new(100000, &m));
  for (unsigned i = 0; i < 3; i++) {
    assert_non_null(b[i] = malloc(40000));
    fill(b[i], 40000, i + 10);
    c[i] = uv_buf_init((char *)b[i], 40000);
    key_of(key[i], 100 + i);
  }
  for (int i = 0; i < 2; i++) {
    assert_int_equal(netd_hot_fd(h, key[i], &c[i], 1, 40000), -1);
    fd[i] = netd_hot_fd(h, key[i], &c[i], 1, 40000);
    assert_copy(fd[i], b[i], 40000);
  }
  held = dup(fd[0]);
  assert_true(held >= 0);
  /* 0 sent again: 1 is now the least recently sent */
  assert_int_equal(netd_hot_fd(h, key[0], &c[0], 1, 40000), fd[0]);
  assert_int_equal(netd_hot_fd(h, key[2], &c[2], 1, 40000), -1);
  fd[2] = netd_hot_fd(h, key[2], &c[2], 1, 40000);
  assert_copy(fd[2], b[2], 40000);
  assert_int_equal(atomic_load(&m.hot_bodies), 2);
  assert_int_equal(atomic_load(&m.hot_body_bytes), 80000);
  assert_int_equal(netd_hot_fd(h, key[0], &c[0], 1, 40000), fd[0]); /* still kept */
  /* 1 was evicted whole: seen anew, copied on its next sighting */
  assert_int_equal(netd_hot_fd(h, key[1], &c[1], 1, 40000), -1);
  fd[1] = netd_hot_fd(h, key[1], &c[1], 1, 40000);
  assert_copy(fd[1], b[1], 40000);
  netd_hot_free(h);               /* closes every copy... */
  assert_copy(held, b[0], 40000); /* ...but what a socket holds lives on */
  close(held);
  for (int i = 0; i < 3; i++)
    free(b[i]);
}

/* Many first sightings: the candidates' table keeps the newest 1024; a key
 * pushed out is a first sighting again. Thousands of keys in a budget for
 * few copies never run out of entries. */
static void test_many_keys(void **state) {
  netd_metrics m;
  netd_hot *h;
  unsigned char *body = malloc(NETD_HOT_MIN);
  uv_buf_t c;
  uint8_t key[32];
  int kept = 0;
  (void)state;
  memset(&m, 0, sizeof(m));
  assert_non_null(body);
  fill(body, NETD_HOT_MIN, 5);
  c = uv_buf_init((char *)body, NETD_HOT_MIN);
  assert_non_null(h = netd_hot_new(4 * NETD_HOT_MIN, &m));
  key_of(key, 0);
  assert_int_equal(netd_hot_fd(h, key, &c, 1, NETD_HOT_MIN), -1);
  for (unsigned i = 1; i <= 1024; i++) { /* key 0 is pushed out by the 1024th */
    key_of(key, i);
    assert_int_equal(netd_hot_fd(h, key, &c, 1, NETD_HOT_MIN), -1);
  }
  key_of(key, 0);
  assert_int_equal(netd_hot_fd(h, key, &c, 1, NETD_HOT_MIN), -1); /* forgotten */
  key_of(key, 1024);
  assert_true(netd_hot_fd(h, key, &c, 1, NETD_HOT_MIN) >= 0); /* remembered */
  /* every key twice, 5000 of them, through a budget of 4 copies */
  for (unsigned i = 2000; i < 7000; i++) {
    key_of(key, i);
    assert_int_equal(netd_hot_fd(h, key, &c, 1, NETD_HOT_MIN), -1);
    if (netd_hot_fd(h, key, &c, 1, NETD_HOT_MIN) >= 0)
      kept++;
    assert_true(atomic_load(&m.hot_bodies) <= 4);
    assert_true(atomic_load(&m.hot_body_bytes) <= 4 * NETD_HOT_MIN);
  }
  assert_int_equal(kept, 5000);
  netd_hot_free(h);
  free(body);
}

/* Each copy holds a descriptor: at most a quarter of the process's limit,
 * whatever the budget. */
static void test_descriptor_bound(void **state) {
  netd_metrics m;
  netd_hot *h;
  struct rlimit was, rl;
  unsigned char *body = malloc(NETD_HOT_MIN);
  uv_buf_t c;
  uint8_t key[32];
  (void)state;
  memset(&m, 0, sizeof(m));
  assert_non_null(body);
  fill(body, NETD_HOT_MIN, 9);
  c = uv_buf_init((char *)body, NETD_HOT_MIN);
  assert_int_equal(getrlimit(RLIMIT_NOFILE, &was), 0);
  rl = was;
  rl.rlim_cur = 128;
  assert_int_equal(setrlimit(RLIMIT_NOFILE, &rl), 0);
  h = netd_hot_new(16u << 20, &m); /* room for 1024 copies by size */
  assert_int_equal(setrlimit(RLIMIT_NOFILE, &was), 0);
  assert_non_null(h);
  for (unsigned i = 0; i < 100; i++) {
    key_of(key, 50000 + i);
    assert_int_equal(netd_hot_fd(h, key, &c, 1, NETD_HOT_MIN), -1);
    assert_true(netd_hot_fd(h, key, &c, 1, NETD_HOT_MIN) >= 0);
  }
  assert_int_equal(atomic_load(&m.hot_bodies), 32);
  netd_hot_free(h);
  free(body);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_second_sighting_copies),
      cmocka_unit_test(test_budget_and_eviction),
      cmocka_unit_test(test_many_keys),
      cmocka_unit_test(test_descriptor_bound),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
