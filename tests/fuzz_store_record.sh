#!/bin/sh
# make check: fuzz/store_record.c over its seed corpus (see fuzz/README.md).
exec "${srcdir:-.}/fuzz/run-regress.sh" store_record
