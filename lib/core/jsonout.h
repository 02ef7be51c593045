/*
 * jsonout.h — a jansson value as text the library hands out (allocated with
 * the context's allocator, freed with netstash_free): the administration
 * calls' JSON answers (lib/preload/admin.c, lib/cache/admin.c). Internal.
 */
#ifndef NS_CORE_JSONOUT_H
#define NS_CORE_JSONOUT_H

#include "ns_setup.h"

#include <jansson.h>

/* Serialises o (compact, keys in insertion order) into *out, at most max
 * bytes, allocated with mem. o stays the caller's. NETSTASH_E_NOMEM (also
 * for o NULL), NETSTASH_E_TOO_LARGE. */
netstash_error ns_json_text(const ns_mem *mem, const json_t *o, size_t max, char **out);

#endif /* NS_CORE_JSONOUT_H */
