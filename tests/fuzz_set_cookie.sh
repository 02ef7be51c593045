#!/bin/sh
# make check: fuzz/set_cookie.c over its seed corpus (see fuzz/README.md).
exec "${srcdir:-.}/fuzz/run-regress.sh" set_cookie
