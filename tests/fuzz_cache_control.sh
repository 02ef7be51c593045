#!/bin/sh
# make check: fuzz/cache_control.c over its seed corpus (see fuzz/README.md).
exec "${srcdir:-.}/fuzz/run-regress.sh" cache_control
