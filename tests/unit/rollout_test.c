/*
 * rollout_test.c — lib/preload/rollout.c: version ranges, the per-device
 * bucket, and which rule excludes a device.
 */
#include "ns_setup.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

#include <cmocka.h>

#include "preload/install.h"

typedef struct range_case {
  const char *range;
  const char *version;
  int in;
} range_case;

static const range_case range_cases[] = {
    /* the usual window */
    {">=4.2 <5", "4.2", 1},
    {">=4.2 <5", "4.2.0", 1},
    {">=4.2 <5", "4.2.1", 1},
    {">=4.2 <5", "4.10", 1},
    {">=4.2 <5", "4.9.99", 1},
    {">=4.2 <5", "4.1", 0},
    {">=4.2 <5", "4.1.999", 0},
    {">=4.2 <5", "5", 0},
    {">=4.2 <5", "5.0.0", 0},
    {">=4.2 <5", "10", 0},
    /* missing components are 0 */
    {"=4.2", "4.2.0.0", 1},
    {"=4.2.0.0", "4.2", 1},
    {"4.2", "4.2.0", 1}, /* no operator: = */
    {"4.2", "4.2.1", 0},
    {">4.2", "4.2.0", 0},
    {">4.2", "4.2.0.1", 1},
    {"<=4.2", "4.2.0", 1},
    {"<4.2", "4.2", 0},
    {"<4.2", "4.1.9", 1},
    /* numeric, not lexical */
    {">9", "10", 1},
    {"<10", "9", 1},
    {">=1.9", "1.10", 1},
    {"<1.10", "1.9", 1},
    {"=007.01", "7.1", 1},
    {">99999999999999999999999", "100000000000000000000000", 1}, /* no overflow */
    {"<99999999999999999999999", "100000000000000000000000", 0},
    /* any number of components */
    {">=1.2.3.4.5.6", "1.2.3.4.5.7", 1},
    {">=1.2.3.4.5.6", "1.2.3.4.5", 0},
    /* spaces */
    {"  >=1   <2  ", "1.5", 1},
    {">=1 <2 >=1.5", "1.4", 0},
    /* a version that is not numbers satisfies nothing */
    {">=4.2 <5", "4.2-beta", 0},
    {">=1", "4.x", 0},
    {">=1", "4..2", 0},
    {">=1", "4.", 0},
    {">=1", ".4", 0},
    {">=1", "", 0},
    {">=1", " 4", 0},
    {">=1", "v4", 0},
    {"<5", "4.2.1-rc1", 0},
    /* a malformed range never matches */
    {"", "1", 0},
    {"   ", "1", 0},
    {">=", "1", 0},
    {">= 4", "4", 0},
    {"==4", "4", 0},
    {"=>4", "4", 0},
    {">=4,<5", "4.5", 0},
    {">=4.a", "4.5", 0},
    {">=4 <5 garbage", "4.5", 0},
    {"~4", "4", 0},
    {">=4\t<5", "4.5", 0},
};

static void test_version_in(void **state) {
  size_t i;
  (void)state;
  for (i = 0; i < NS_ARRAY_LEN(range_cases); i++) {
    const range_case *c = &range_cases[i];
    int got = ns_rollout_version_in(c->range, c->version);
    if (!!got != c->in)
      fail_msg("\"%s\" vs version \"%s\": %d, expected %d", c->range, c->version, got, c->in);
  }
  assert_int_equal(ns_rollout_version_in(">=1", NULL), 0);
  assert_int_equal(ns_rollout_version_in(NULL, "1"), 0);
}

static void test_bucket(void **state) {
  (void)state;
  /* printf 'dev-1\nnews.example' | sha256sum → 513f8581...: 0x513f8581 % 100 */
  assert_int_equal(ns_rollout_bucket("dev-1", "news.example"), 41);
  assert_int_equal(ns_rollout_bucket("device-0", "shop"), 66); /* 0x1162e1a6 */
  assert_int_equal(ns_rollout_bucket("", ""), 13);             /* sha256("\n") = 01ba4719... */
  /* stable, and depends on both inputs */
  assert_int_equal(ns_rollout_bucket("dev-1", "news.example"),
                   ns_rollout_bucket("dev-1", "news.example"));
  assert_int_not_equal(ns_rollout_bucket("dev-1", "news.example"),
                       ns_rollout_bucket("dev-1", "news.example2"));
}

/* 10,000 synthetic devices spread evenly: every bucket gets 60..140 (100
 * expected, about 10 standard deviations of room either way). */
static void test_bucket_distribution(void **state) {
  int hits[100] = {0}, i, lo = 1 << 30, hi = 0;
  (void)state;
  for (i = 0; i < 10000; i++) {
    char id[32];
    int b;
    snprintf(id, sizeof(id), "device-%05d", i);
    b = ns_rollout_bucket(id, "news.example");
    assert_in_range(b, 0, 99);
    hits[b]++;
  }
  for (i = 0; i < 100; i++) {
    lo = NS_MIN(lo, hits[i]);
    hi = NS_MAX(hi, hits[i]);
    if (hits[i] < 60 || hits[i] > 140)
      fail_msg("bucket %d got %d of 10000 devices (expected 60..140)", i, hits[i]);
  }
  print_message("buckets over 10000 devices: min %d, max %d\n", lo, hi);
}

typedef struct applies_case {
  const char *app_range, *kernel_range;
  int percent;
  const char *app, *kernel, *device_id;
  int applies;
  const char *why; /* expected exclusion reason, NULL when applies */
} applies_case;

/* device "dev-1" has bucket 41 for "news.example" */
static const applies_case applies_cases[] = {
    {NULL, NULL, 100, NULL, NULL, NULL, 1, NULL},
    {NULL, NULL, 100, "1", "2", "dev-1", 1, NULL},
    {">=4.2 <5", NULL, 100, "4.2.0", NULL, NULL, 1, NULL},
    {">=4.2 <5", NULL, 100, "4.1", NULL, NULL, 0,
     "rollout.app_version \">=4.2 <5\" excludes app version 4.1"},
    {">=4.2 <5", NULL, 100, NULL, NULL, NULL, 0,
     "rollout.app_version \">=4.2 <5\" excludes a device whose app version is unknown"},
    {NULL, ">=120", 100, "9", "119.0.1", NULL, 0,
     "rollout.kernel_version \">=120\" excludes kernel version 119.0.1"},
    {NULL, ">=120", 100, "9", NULL, NULL, 0,
     "rollout.kernel_version \">=120\" excludes a device whose kernel version is unknown"},
    {">=4", ">=120", 100, "4.0", "120", NULL, 1, NULL},
    /* percent: bucket < percent */
    {NULL, NULL, 42, NULL, NULL, "dev-1", 1, NULL},
    {NULL, NULL, 41, NULL, NULL, "dev-1", 0, "rollout.percent 41: device bucket 41"},
    {NULL, NULL, 10, NULL, NULL, "dev-1", 0, "rollout.percent 10: device bucket 41"},
    {NULL, NULL, 0, NULL, NULL, "dev-1", 0, "rollout.percent 0: no device is included"},
    {NULL, NULL, 99, NULL, NULL, NULL, 0, "rollout.percent 99: no device id to place the device"},
    /* the version rules are checked before the bucket */
    {">=5", NULL, 10, "4", NULL, "dev-1", 0, "rollout.app_version \">=5\" excludes app version 4"},
    {">=4", NULL, 10, "4", NULL, "dev-1", 0, "rollout.percent 10: device bucket 41"},
};

static void test_applies(void **state) {
  size_t i;
  (void)state;
  for (i = 0; i < NS_ARRAY_LEN(applies_cases); i++) {
    const applies_case *c = &applies_cases[i];
    ns_manifest_rollout r;
    ns_pl_device dev;
    char why[256] = "stale";
    int got;
    memset(&r, 0, sizeof(r));
    r.app_version = c->app_range;
    r.kernel_version = c->kernel_range;
    r.percent = c->percent;
    dev.app_version = c->app;
    dev.kernel_version = c->kernel;
    dev.device_id = NULL;
    got = ns_rollout_applies(&r, "news.example", &dev, c->device_id, why, sizeof(why));
    if (!!got != c->applies)
      fail_msg("case %zu: applies %d, expected %d (%s)", i, got, c->applies, why);
    assert_string_equal(why, c->applies ? "" : c->why);
  }
}

static void test_applies_edges(void **state) {
  ns_manifest_rollout r;
  ns_pl_device dev = {"4.2", NULL, "dev-1"};
  char why[24];
  (void)state;
  memset(&r, 0, sizeof(r));
  r.percent = 42;
  /* no rollout object: applies */
  assert_true(ns_rollout_applies(NULL, "news.example", &dev, NULL, NULL, 0));
  /* the device id comes from dev when not passed */
  assert_true(ns_rollout_applies(&r, "news.example", &dev, NULL, NULL, 0));
  r.percent = 41;
  assert_false(ns_rollout_applies(&r, "news.example", &dev, NULL, NULL, 0));
  /* the explicit device id wins */
  r.percent = 67;
  assert_true(ns_rollout_applies(&r, "shop", &dev, "device-0", NULL, 0)); /* bucket 66 */
  r.percent = 66;
  assert_false(ns_rollout_applies(&r, "shop", &dev, "device-0", NULL, 0));
  /* a short why buffer is truncated, not overrun */
  r.percent = 100;
  r.app_version = ">=4.2.0.0.0.0.1 <5";
  assert_false(ns_rollout_applies(&r, "news.example", &dev, NULL, why, sizeof(why)));
  assert_int_equal(strlen(why), sizeof(why) - 1);
  /* no device at all: version rules exclude, none set: applies */
  assert_false(ns_rollout_applies(&r, "news.example", NULL, NULL, NULL, 0));
  r.app_version = NULL;
  assert_true(ns_rollout_applies(&r, "news.example", NULL, NULL, NULL, 0));
  /* kill switch and pin are not this function's business */
  r.kill_switch = 1;
  r.pinned_version = 3;
  assert_true(ns_rollout_applies(&r, "news.example", &dev, NULL, NULL, 0));
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_version_in),          cmocka_unit_test(test_bucket),
      cmocka_unit_test(test_bucket_distribution), cmocka_unit_test(test_applies),
      cmocka_unit_test(test_applies_edges),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
