#!/bin/sh
# Corpus regression for one fuzz harness, without libFuzzer:
#   fuzz/run-regress.sh NAME
# runs the NAME_regress program (fuzz/NAME.c + fuzz/driver.c, built by
# `make check`) over every file of fuzz/corpus/NAME. Meant to be called from
# a tests/fuzz_NAME.sh wrapper listed in TESTS: automake runs tests from the
# top build directory with $srcdir set, so out-of-tree builds work.
set -eu
name=${1:?usage: run-regress.sh NAME}
srcdir=${srcdir:-$(dirname "$0")/..}
builddir=${abs_top_builddir:-.}
exec ${NS_TEST_WRAPPER:-} "$builddir/fuzz/${name}_regress" "$srcdir/fuzz/corpus/$name"
