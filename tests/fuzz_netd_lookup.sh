#!/bin/sh
# make check: fuzz/netd_lookup.c over its seed corpus (see fuzz/README.md).
exec "${srcdir:-.}/fuzz/run-regress.sh" netd_lookup
