#!/bin/sh
# make check: fuzz/altsvc.c over its seed corpus (see fuzz/README.md).
exec "${srcdir:-.}/fuzz/run-regress.sh" altsvc
