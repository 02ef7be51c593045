#!/bin/sh
# make check: fuzz/netd_front.c over its seed corpus (see fuzz/README.md).
exec "${srcdir:-.}/fuzz/run-regress.sh" netd_front
