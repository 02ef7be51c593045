#!/bin/sh
# make check: fuzz/decode.c over its seed corpus (see fuzz/README.md).
exec "${srcdir:-.}/fuzz/run-regress.sh" decode
