#!/bin/sh
# make check: fuzz/manifest.c over its seed corpus (see fuzz/README.md).
exec "${srcdir:-.}/fuzz/run-regress.sh" manifest
