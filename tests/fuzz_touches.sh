#!/bin/sh
# make check: fuzz/touches.c over its seed corpus (see fuzz/README.md).
exec "${srcdir:-.}/fuzz/run-regress.sh" touches
