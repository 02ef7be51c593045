#!/bin/sh
# make check: fuzz/fetch_response.c over its seed corpus (see fuzz/README.md).
exec "${srcdir:-.}/fuzz/run-regress.sh" fetch_response
