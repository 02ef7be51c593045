/*
 * map_test.c — lib/core/map: insert/get/replace/remove, growth, many keys,
 * iteration (with removal), tombstone churn, allocation failures, seeding.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>

#include "ns_setup.h"
#include "core/map.h"

/* ---- a counting allocator that can fail the Nth allocation */
typedef struct {
  long live;     /* allocations not yet freed */
  long fail_at;  /* fail the allocation with this index (0-based), -1: never */
  long count;
} test_alloc;

static void *t_malloc(size_t n, void *ud) {
  test_alloc *a = ud;
  void *p;
  if (a->fail_at >= 0 && a->count++ == a->fail_at)
    return NULL;
  p = malloc(n);
  if (p)
    a->live++;
  return p;
}
static void *t_calloc(size_t n, size_t s, void *ud) {
  test_alloc *a = ud;
  void *p;
  if (a->fail_at >= 0 && a->count++ == a->fail_at)
    return NULL;
  p = calloc(n, s);
  if (p)
    a->live++;
  return p;
}
static void *t_realloc(void *p, size_t n, void *ud) {
  (void)ud;
  return realloc(p, n);
}
static void t_free(void *p, void *ud) {
  test_alloc *a = ud;
  a->live--;
  free(p);
}

static ns_mem mem_for(test_alloc *a) {
  ns_mem m = {a, t_malloc, t_free, t_calloc, t_realloc};
  return m;
}

static int put_str(ns_map *m, const char *k, void *v) {
  return ns_map_put(m, k, strlen(k), v, NULL);
}
static void *get_str(const ns_map *m, const char *k) {
  return ns_map_get(m, k, strlen(k));
}

static void test_basic(void **state) {
  test_alloc a = {0, -1, 0};
  ns_mem mem = mem_for(&a);
  ns_map m;
  void *old = (void *)1, *v = NULL;
  int x = 1, y = 2, z = 3;
  (void)state;

  ns_map_init(&m, &mem);
  assert_int_equal(ns_map_len(&m), 0);
  assert_null(get_str(&m, "absent")); /* empty map: no allocation */
  assert_int_equal(ns_map_remove(&m, "absent", 6, NULL), 0);
  assert_int_equal(a.live, 0);

  assert_int_equal(ns_map_put(&m, "a", 1, &x, &old), NETSTASH_OK);
  assert_null(old);
  assert_int_equal(put_str(&m, "ab", &y), NETSTASH_OK);
  assert_int_equal(ns_map_len(&m), 2);
  assert_ptr_equal(get_str(&m, "a"), &x);
  assert_ptr_equal(get_str(&m, "ab"), &y);
  assert_null(get_str(&m, "b"));
  assert_ptr_equal(ns_map_get(&m, "ab", 1), &x); /* length is part of the key */

  /* replace returns the previous value, len unchanged */
  assert_int_equal(ns_map_put(&m, "a", 1, &z, &old), NETSTASH_OK);
  assert_ptr_equal(old, &x);
  assert_ptr_equal(get_str(&m, "a"), &z);
  assert_int_equal(ns_map_len(&m), 2);

  /* keys are copied: a changed source buffer does not matter */
  {
    char buf[8] = "tmpkey";
    assert_int_equal(put_str(&m, buf, &x), NETSTASH_OK);
    buf[0] = 'X';
    assert_ptr_equal(get_str(&m, "tmpkey"), &x);
    assert_null(get_str(&m, buf));
  }

  /* NULL values are storable and distinguishable with find */
  assert_int_equal(put_str(&m, "null", NULL), NETSTASH_OK);
  assert_true(ns_map_find(&m, "null", 4, &v));
  assert_null(v);
  assert_false(ns_map_find(&m, "nul", 3, &v));

  assert_int_equal(ns_map_remove(&m, "a", 1, &v), 1);
  assert_ptr_equal(v, &z);
  assert_null(get_str(&m, "a"));
  assert_int_equal(ns_map_remove(&m, "a", 1, &v), 0);
  assert_ptr_equal(get_str(&m, "ab"), &y); /* probe chain survives */
  assert_int_equal(ns_map_len(&m), 3);

  ns_map_free(&m);
  assert_int_equal(a.live, 0);
  ns_map_free(NULL);
}

static void test_binary_keys(void **state) {
  test_alloc a = {0, -1, 0};
  ns_mem mem = mem_for(&a);
  ns_map m;
  int x = 1, y = 2, z = 3;
  (void)state;

  ns_map_init(&m, &mem);
  assert_int_equal(ns_map_put(&m, "", 0, &x, NULL), NETSTASH_OK);
  assert_int_equal(ns_map_put(&m, "a\0b", 3, &y, NULL), NETSTASH_OK);
  assert_int_equal(ns_map_put(&m, "a\0c", 3, &z, NULL), NETSTASH_OK);
  assert_ptr_equal(ns_map_get(&m, "", 0), &x);
  assert_ptr_equal(ns_map_get(&m, NULL, 0), &x);
  assert_ptr_equal(ns_map_get(&m, "a\0b", 3), &y);
  assert_ptr_equal(ns_map_get(&m, "a\0c", 3), &z);
  assert_null(ns_map_get(&m, "a", 1));
  assert_int_equal(ns_map_remove(&m, "", 0, NULL), 1);
  assert_null(ns_map_get(&m, "", 0));
  ns_map_free(&m);
  assert_int_equal(a.live, 0);
}

#define MANY 100000

static void test_many_keys_and_growth(void **state) {
  test_alloc a = {0, -1, 0};
  ns_mem mem = mem_for(&a);
  ns_map m;
  char k[32];
  size_t cap_full;
  (void)state;

  ns_map_init(&m, &mem);
  for (uintptr_t i = 0; i < MANY; i++) {
    snprintf(k, sizeof(k), "host-%lu.example", (unsigned long)i);
    assert_int_equal(put_str(&m, k, (void *)(i + 1)), NETSTASH_OK);
    /* load factor bound holds at every step */
    assert_true(m.used <= m.cap - m.cap / 4);
  }
  assert_int_equal(ns_map_len(&m), MANY);
  assert_true(m.cap >= MANY + MANY / 3);
  assert_int_equal(m.cap & (m.cap - 1), 0);
  for (uintptr_t i = 0; i < MANY; i++) {
    snprintf(k, sizeof(k), "host-%lu.example", (unsigned long)i);
    assert_ptr_equal(get_str(&m, k), (void *)(i + 1));
  }
  assert_null(get_str(&m, "host-100000.example"));

  /* remove the even keys; the odd ones stay reachable across tombstones */
  for (uintptr_t i = 0; i < MANY; i += 2) {
    snprintf(k, sizeof(k), "host-%lu.example", (unsigned long)i);
    assert_int_equal(ns_map_remove(&m, k, strlen(k), NULL), 1);
  }
  assert_int_equal(ns_map_len(&m), MANY / 2);
  for (uintptr_t i = 0; i < MANY; i++) {
    snprintf(k, sizeof(k), "host-%lu.example", (unsigned long)i);
    if (i % 2)
      assert_ptr_equal(get_str(&m, k), (void *)(i + 1));
    else
      assert_null(get_str(&m, k));
  }
  /* reinsert: tombstones are reused, the table does not grow */
  cap_full = m.cap;
  for (uintptr_t i = 0; i < MANY; i += 2) {
    snprintf(k, sizeof(k), "host-%lu.example", (unsigned long)i);
    assert_int_equal(put_str(&m, k, (void *)(i + 7)), NETSTASH_OK);
  }
  assert_int_equal(m.cap, cap_full);
  assert_int_equal(ns_map_len(&m), MANY);
  snprintf(k, sizeof(k), "host-%lu.example", 42ul);
  assert_ptr_equal(get_str(&m, k), (void *)(42 + 7));
  /* one allocation per key plus the table */
  assert_int_equal(a.live, MANY + 1);
  ns_map_free(&m);
  assert_int_equal(a.live, 0);
}

static void test_churn_stays_small(void **state) {
  test_alloc a = {0, -1, 0};
  ns_mem mem = mem_for(&a);
  ns_map m;
  char k[32];
  (void)state;

  /* 10 live keys, 100k distinct keys passing through: tombstones must be
   * reclaimed by same-size rehashes, not by growing. */
  ns_map_init(&m, &mem);
  for (unsigned long i = 0; i < 100000; i++) {
    snprintf(k, sizeof(k), "k%lu", i);
    assert_int_equal(put_str(&m, k, &m), NETSTASH_OK);
    if (i >= 10) {
      snprintf(k, sizeof(k), "k%lu", i - 10);
      assert_int_equal(ns_map_remove(&m, k, strlen(k), NULL), 1);
    }
  }
  assert_int_equal(ns_map_len(&m), 10);
  assert_true(m.cap <= 32);
  ns_map_free(&m);
  assert_int_equal(a.live, 0);
}

static void test_iteration(void **state) {
  test_alloc a = {0, -1, 0};
  ns_mem mem = mem_for(&a);
  ns_map m;
  char k[32];
  unsigned char seen[1000];
  const void *key;
  size_t keylen, it, n;
  void *v;
  (void)state;

  ns_map_init(&m, &mem);
  it = 0;
  assert_false(ns_map_next(&m, &it, &key, &keylen, &v)); /* empty */

  for (uintptr_t i = 0; i < 1000; i++) {
    snprintf(k, sizeof(k), "key%lu", (unsigned long)i);
    assert_int_equal(put_str(&m, k, (void *)i), NETSTASH_OK);
  }
  memset(seen, 0, sizeof(seen));
  n = 0;
  for (it = 0; ns_map_next(&m, &it, &key, &keylen, &v);) {
    uintptr_t i = (uintptr_t)v;
    assert_true(i < 1000);
    snprintf(k, sizeof(k), "key%lu", (unsigned long)i);
    assert_int_equal(keylen, strlen(k));
    assert_memory_equal(key, k, keylen);
    assert_int_equal(seen[i], 0);
    seen[i] = 1;
    n++;
  }
  assert_int_equal(n, 1000);
  assert_false(ns_map_next(&m, &it, NULL, NULL, NULL)); /* stays at end */

  /* removing the current entry while iterating (an expiry sweep) */
  n = 0;
  for (it = 0; ns_map_next(&m, &it, &key, &keylen, &v);) {
    if ((uintptr_t)v % 3 == 0) {
      char copy[32];
      memcpy(copy, key, keylen); /* key dies with the entry */
      assert_int_equal(ns_map_remove(&m, copy, keylen, NULL), 1);
    }
    n++;
  }
  assert_int_equal(n, 1000); /* every entry visited exactly once */
  assert_int_equal(ns_map_len(&m), 1000 - 334);
  n = 0;
  for (it = 0; ns_map_next(&m, &it, NULL, NULL, &v);) {
    assert_true((uintptr_t)v % 3 != 0);
    n++;
  }
  assert_int_equal(n, 1000 - 334);
  ns_map_free(&m);
  assert_int_equal(a.live, 0);
}

static void test_alloc_failures(void **state) {
  (void)state;
  /* Fail each allocation in turn during a run of inserts that grows the
   * table several times: the failing put reports NOMEM, the map keeps every
   * earlier key, nothing leaks. */
  long fail;
  for (fail = 0;; fail++) {
    test_alloc a = {0, fail, 0};
    ns_mem mem = mem_for(&a);
    ns_map m;
    char k[32];
    int failed = 0;
    uintptr_t i;

    ns_map_init(&m, &mem);
    for (i = 0; i < 50; i++) {
      snprintf(k, sizeof(k), "n%lu", (unsigned long)i);
      netstash_error rv = put_str(&m, k, (void *)(i + 1));
      if (rv != NETSTASH_OK) {
        assert_int_equal(rv, NETSTASH_E_NOMEM);
        failed = 1;
        break;
      }
    }
    if (!failed) { /* past the last allocation of the run */
      ns_map_free(&m);
      assert_int_equal(a.live, 0);
      break;
    }
    assert_int_equal(ns_map_len(&m), i);
    for (uintptr_t j = 0; j < i; j++) {
      snprintf(k, sizeof(k), "n%lu", (unsigned long)j);
      assert_ptr_equal(get_str(&m, k), (void *)(j + 1));
    }
    snprintf(k, sizeof(k), "n%lu", (unsigned long)i);
    assert_null(get_str(&m, k));
    /* and the map still works afterwards */
    a.fail_at = -1;
    assert_int_equal(put_str(&m, k, &m), NETSTASH_OK);
    assert_ptr_equal(get_str(&m, k), &m);
    ns_map_free(&m);
    assert_int_equal(a.live, 0);
  }
  assert_true(fail > 50); /* 50 key copies plus the table growths */
}

static void test_seeded_hash(void **state) {
  ns_map m1, m2;
  int differ = 0;
  char k[16];
  (void)state;

  ns_map_init(&m1, ns_mem_default());
  ns_map_init(&m2, ns_mem_default());
  /* same map: deterministic */
  assert_true(ns_map_hash(&m1, "abc", 3) == ns_map_hash(&m1, "abc", 3));
  assert_true(ns_map_hash(&m1, "abc", 3) != ns_map_hash(&m1, "abd", 3));
  /* two maps: independent seeds (equal for all 16 keys: p ~ 2^-1024) */
  for (int i = 0; i < 16; i++) {
    snprintf(k, sizeof(k), "s%d", i);
    if (ns_map_hash(&m1, k, strlen(k)) != ns_map_hash(&m2, k, strlen(k)))
      differ = 1;
  }
  assert_true(differ);
  /* every byte and the length enter the hash */
  assert_true(ns_map_hash(&m1, "\0", 1) != ns_map_hash(&m1, "", 0));
  assert_true(ns_map_hash(&m1, "12345678x", 9) != ns_map_hash(&m1, "12345678y", 9));
  ns_map_free(&m1);
  ns_map_free(&m2);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_basic),
      cmocka_unit_test(test_binary_keys),
      cmocka_unit_test(test_many_keys_and_growth),
      cmocka_unit_test(test_churn_stays_small),
      cmocka_unit_test(test_iteration),
      cmocka_unit_test(test_alloc_failures),
      cmocka_unit_test(test_seeded_hash),
  };
  int failed = cmocka_run_group_tests(tests, NULL, NULL);
  printf("%d passed, %d failed\n", (int)NS_ARRAY_LEN(tests) - failed, failed);
  return failed;
}
