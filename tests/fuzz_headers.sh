#!/bin/sh
# make check: fuzz/headers.c over its seed corpus (see fuzz/README.md).
exec "${srcdir:-.}/fuzz/run-regress.sh" headers
