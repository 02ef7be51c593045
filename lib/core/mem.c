#include "ns_setup.h"

#include <stdlib.h>

static void *std_malloc(size_t n, void *ud) {
  (void)ud;
  return malloc(n);
}
static void std_free(void *p, void *ud) {
  (void)ud;
  free(p);
}
static void *std_calloc(size_t a, size_t b, void *ud) {
  (void)ud;
  return calloc(a, b);
}
static void *std_realloc(void *p, size_t n, void *ud) {
  (void)ud;
  return realloc(p, n);
}

static const ns_mem default_mem = {NULL, std_malloc, std_free, std_calloc,
                                   std_realloc};

const ns_mem *ns_mem_default(void) { return &default_mem; }

char *ns_strndup(const ns_mem *m, const char *s, size_t len) {
  size_t n;
  char *p;
  if (!ns_add_size(len, 1, &n))
    return NULL;
  p = ns_malloc(m, n);
  if (!p)
    return NULL;
  memcpy(p, s, len);
  p[len] = '\0';
  return p;
}

char *ns_strdup(const ns_mem *m, const char *s) {
  if (!s)
    return NULL;
  return ns_strndup(m, s, strlen(s));
}
