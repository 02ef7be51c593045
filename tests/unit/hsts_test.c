#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "ns_setup.h"
#include "transport/hsts.h"

/* RFC 6797 §6.1 Strict-Transport-Security parsing. */
static void test_sts_parse(void **state) {
  static const struct {
    const char *v;
    int ok;
    int64_t max_age;
    int sub;
  } cases[] = {
      {"max-age=31536000", 1, 31536000, 0},
      {"max-age=31536000; includeSubDomains", 1, 31536000, 1},
      {"  INCLUDESUBDOMAINS ;  Max-Age = \"600\" ", 1, 600, 1},
      {"max-age=0", 1, 0, 0},
      {"max-age=600; preload; foo=bar", 1, 600, 0}, /* unknown directives ignored */
      {"includeSubDomains", 0, 0, 0},               /* max-age is required */
      {"max-age=600; max-age=700", 0, 0, 0},        /* duplicates: invalid */
      {"max-age=600; includeSubDomains; includeSubDomains", 0, 0, 0},
      {"max-age=-1", 0, 0, 0},
      {"max-age=abc", 0, 0, 0},
      {"max-age", 0, 0, 0},
      {"max-age=600 x", 0, 0, 0},
      {"", 0, 0, 0},
      {";;max-age=5;;", 1, 5, 0},
  };
  (void)state;
  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    int64_t ma = -7;
    int sub = -7;
    int ok = ns_sts_parse(cases[i].v, strlen(cases[i].v), &ma, &sub);
    if (ok != cases[i].ok)
      fail_msg("\"%s\": ok %d, expected %d", cases[i].v, ok, cases[i].ok);
    if (ok && (ma != cases[i].max_age || sub != cases[i].sub))
      fail_msg("\"%s\": max-age %lld sub %d", cases[i].v, (long long)ma, sub);
  }
}

int main(void) {
  const struct CMUnitTest tests[] = {cmocka_unit_test(test_sts_parse)};
  return cmocka_run_group_tests(tests, NULL, NULL);
}
