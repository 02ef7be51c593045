#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "ns_setup.h"
#include "core/buf.h"

static void test_strerror_table(void **state) {
  (void)state;
  assert_string_equal(netstash_strerror(NETSTASH_OK), "success");
  assert_string_equal(netstash_error_name(NETSTASH_E_DNS_TIMEOUT), "NETSTASH_E_DNS_TIMEOUT");
  assert_string_equal(netstash_strerror((netstash_error)9999), "unknown error code");
  assert_true(netstash_error_is_network(NETSTASH_E_TLS_CERT_EXPIRED));
  assert_false(netstash_error_is_network(NETSTASH_E_INVALID_ARGUMENT));
  /* codes are ABI: pin a few numbers */
  assert_int_equal(NETSTASH_E_DNS_NOT_FOUND, 100);
  assert_int_equal(NETSTASH_E_TRUNCATED, 131);
}

static void test_buf_cap(void **state) {
  ns_buf b;
  (void)state;
  ns_buf_init(&b, ns_mem_default(), 10);
  assert_int_equal(ns_buf_append(&b, "0123456789", 10), NETSTASH_OK);
  assert_int_equal(ns_buf_append(&b, "x", 1), NETSTASH_E_TOO_LARGE);
  assert_int_equal(b.len, 10);
  assert_string_equal(ns_buf_str(&b), "0123456789");
  ns_buf_reset(&b);
  assert_int_equal(ns_buf_printf(&b, "%d-%s", 42, "x"), NETSTASH_OK);
  assert_string_equal(ns_buf_str(&b), "42-x");
  ns_buf_free(&b);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_strerror_table),
      cmocka_unit_test(test_buf_cap),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
