/*
 * ns_setup.h — included first by every lib/ source file.
 * Feature macros, config.h, the export switch, common internal includes.
 */
#ifndef NS_SETUP_H
#define NS_SETUP_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE 1
#endif

#include "config.h"

#define BUILDING_NETSTASH 1

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "netstash/netstash.h"
#include "core/mem.h"

#define NS_ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))
#define NS_MIN(a, b) ((a) < (b) ? (a) : (b))
#define NS_MAX(a, b) ((a) > (b) ? (a) : (b))
#define NS_UNUSED(x) ((void)(x))
#define NS_CONTAINER_OF(ptr, type, member)                                     \
  ((type *)(void *)((char *)(ptr)-offsetof(type, member)))

/* The error whose netstash_error_name() is name[0..len), else dflt (how
 * netd's x-netstash-error comes back as a code). */
netstash_error ns_error_by_name(const char *name, size_t len, netstash_error dflt);

#endif /* NS_SETUP_H */
