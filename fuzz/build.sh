#!/bin/sh
# Builds every libFuzzer harness fuzz/NAME.c (all but driver.c; netd_NAME
# harnesses also get netd's sources but main.c) into
# fuzz/out/NAME with clang, ASan and UBSan:
#
#   fuzz/build.sh BUILD_DIR [NAME...]
#
# BUILD_DIR is a configured build directory (its config.h is used, and its
# Makefile tells which dependency flags the library needs). The lib/ sources
# are compiled directly with -fsanitize=fuzzer-no-link into a static archive
# (fuzz/out/libnetstash-fuzz.a), so each harness links only what it uses. A
# lib/ file that does not compile is reported and skipped; only harnesses that
# need it then fail to link. Environment: CC (default clang), EXTRA_CFLAGS.
set -eu

top=$(cd "$(dirname "$0")/.." && pwd)
build=${1:?usage: fuzz/build.sh BUILD_DIR [NAME...]}
shift
build=$(cd "$build" && pwd)
[ -f "$build/config.h" ] || { echo "$build/config.h not found: run configure there first" >&2; exit 1; }
CC=${CC:-clang}
out=$top/fuzz/out
obj=$out/obj
mkdir -p "$obj"

# Dependency flags as configure found them (DEP_CFLAGS/DEP_LIBS in Makefile.am).
printer=$(mktemp)
trap 'rm -f "$printer"' EXIT
printf 'ns-print-cflags:\n\t@echo $(DEP_CFLAGS)\nns-print-libs:\n\t@echo $(DEP_LIBS)\nns-print-hp:\n\t@echo $(HTTP_PARSER_LIBS)\n' >"$printer"
make -s -C "$build" Makefile >/dev/null # regenerate first if Makefile.am changed
dep_cflags=$(make -s -C "$build" -f Makefile -f "$printer" ns-print-cflags | tail -n 1)
dep_libs=$(make -s -C "$build" -f Makefile -f "$printer" ns-print-libs | tail -n 1)
hp_libs=$(make -s -C "$build" -f Makefile -f "$printer" ns-print-hp | tail -n 1)

san="-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer"
cflags="-std=gnu11 -g -O1 $san -I$top/include -I$top/lib -I$top -I$build $dep_cflags ${EXTRA_CFLAGS:-}"

# The library, instrumented for coverage.
rm -f "$out/libnetstash-fuzz.a"
objs=""
for src in $(cd "$top" && find lib -name '*.c' | sort); do
  o=$obj/$(echo "$src" | tr / _ | sed 's/\.c$/.o/')
  if $CC $cflags -fvisibility=hidden -fsanitize=fuzzer-no-link -c "$top/$src" -o "$o" 2>"$o.err"; then
    objs="$objs $o"
  else
    echo "warning: $src does not compile, skipped (see $o.err)" >&2
  fi
done
# shellcheck disable=SC2086
ar rcs "$out/libnetstash-fuzz.a" $objs

# netd's sources but main.c, instrumented too, for the netd_* harnesses
# (fuzz/netd_fuzz.h stands in for main.c's netd_log).
netd_objs=""
for src in $(cd "$top" && ls netd/*.c | grep -v '^netd/main\.c$'); do
  o=$obj/$(echo "$src" | tr / _ | sed 's/\.c$/.o/')
  if $CC $cflags -fsanitize=fuzzer-no-link -c "$top/$src" -o "$o" 2>"$o.err"; then
    netd_objs="$netd_objs $o"
  else
    echo "warning: $src does not compile, skipped (see $o.err)" >&2
  fi
done

# The harnesses.
if [ $# -eq 0 ]; then
  set -- $(cd "$top/fuzz" && ls *.c | sed -n '/^driver\.c$/!s/\.c$//p')
fi
status=0
for name in "$@"; do
  extra=""
  case $name in netd_*) extra="$netd_objs $hp_libs" ;; esac
  # shellcheck disable=SC2086
  if $CC $cflags -fsanitize=fuzzer "$top/fuzz/$name.c" $extra "$out/libnetstash-fuzz.a" \
      $dep_libs -larchive -lpthread -o "$out/$name"; then
    echo "built fuzz/out/$name"
  else
    echo "error: fuzz/out/$name failed to build" >&2
    status=1
  fi
done
exit $status
