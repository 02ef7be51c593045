/*
 * mem.h — the per-context allocator (see STYLE.md "Memory and ownership").
 * Every allocation of library state goes through an ns_mem, copied from the
 * caller's netstash_allocator at context creation.
 */
#ifndef NS_CORE_MEM_H
#define NS_CORE_MEM_H

#include <stddef.h>
#include <stdint.h>

typedef struct ns_mem {
  void *user_data;
  void *(*malloc)(size_t size, void *user_data);
  void (*free)(void *ptr, void *user_data);
  void *(*calloc)(size_t nmemb, size_t size, void *user_data);
  void *(*realloc)(void *ptr, size_t size, void *user_data);
} ns_mem;

/* The process allocator (malloc/free). */
const ns_mem *ns_mem_default(void);

static inline void *ns_malloc(const ns_mem *m, size_t n) {
  return m->malloc(n ? n : 1, m->user_data);
}
static inline void *ns_calloc(const ns_mem *m, size_t nmemb, size_t size) {
  return m->calloc(nmemb ? nmemb : 1, size ? size : 1, m->user_data);
}
static inline void *ns_realloc(const ns_mem *m, void *p, size_t n) {
  return m->realloc(p, n ? n : 1, m->user_data);
}
static inline void ns_free(const ns_mem *m, void *p) {
  if (p)
    m->free(p, m->user_data);
}

/* Copies len bytes plus a NUL. NULL on allocation failure. */
char *ns_strndup(const ns_mem *m, const char *s, size_t len);
/* NULL in, NULL out (not an error); check s before calling if it matters. */
char *ns_strdup(const ns_mem *m, const char *s);

/* Overflow-checked arithmetic: return 0 on overflow. */
static inline int ns_mul_size(size_t a, size_t b, size_t *out) {
  return !__builtin_mul_overflow(a, b, out);
}
static inline int ns_add_size(size_t a, size_t b, size_t *out) {
  return !__builtin_add_overflow(a, b, out);
}

#endif /* NS_CORE_MEM_H */
