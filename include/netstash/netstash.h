/*
 * netstash — umbrella header. Include this one.
 */
#ifndef NETSTASH_H
#define NETSTASH_H

#include "common.h"
#include "fetch.h"
#include "cache.h"
#include "cookie.h"
#include "preload.h"
#include "interceptor.h"

#endif /* NETSTASH_H */
