#!/bin/sh
# make check: fuzz/bundle.c over its seed corpus (see fuzz/README.md).
exec "${srcdir:-.}/fuzz/run-regress.sh" bundle
