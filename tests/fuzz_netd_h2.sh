#!/bin/sh
# make check: fuzz/netd_h2.c over its seed corpus (see fuzz/README.md).
exec "${srcdir:-.}/fuzz/run-regress.sh" netd_h2
