#!/usr/bin/env bash
# Builds the fuzz targets (libFuzzer) and runs them for a while.
# The targets are in the root Package.swift, present only with SWITCHBOARD_FUZZ=1 (set here);
# they are built with `--sanitize=fuzzer` into Fuzz/.build-fuzz, apart from the main build.
#
#   Fuzz/run.sh <FuzzSTOMPDecoder|FuzzRESPParser|FuzzAPIJSON|all> [seconds per target, default 60]
#
# Each target runs on a scratch COPY of Fuzz/Corpus/<target>/ (under Fuzz/.work/, ignored by
# git), so a run never dirties the committed corpus. Exit status is non-zero if any target
# crashed, trapped, leaked past the RSS limit or hung; the reproducer is left in
# Fuzz/artifacts/<target>-crash-* (or -timeout-*, -oom-*) and the log in Fuzz/artifacts/<target>.log.
#
# Environment:
#   FUZZ_SKIP_BUILD=1   use the binaries already in Fuzz/.build-fuzz
#   FUZZ_KEEP_NEW=1     after a clean run, merge the new interesting inputs into Fuzz/Corpus/<target>/
#                       (libFuzzer -merge=1, so only inputs adding coverage are kept)
#   FUZZ_ARGS="..."     extra libFuzzer flags (e.g. "-jobs=2 -workers=2", "-max_len=65536")
# See docs/fuzzing.md.
set -euo pipefail

cd "$(dirname "$0")"
ALL=(FuzzSTOMPDecoder FuzzRESPParser FuzzAPIJSON)
target="${1:-all}"
seconds="${2:-60}"

case "$target" in
    all) targets=("${ALL[@]}") ;;
    FuzzSTOMPDecoder|FuzzRESPParser|FuzzAPIJSON) targets=("$target") ;;
    *) echo "usage: $0 <${ALL[*]// /|}|all> [seconds]" >&2; exit 2 ;;
esac

export SWITCHBOARD_FUZZ=1
build_flags=(-c debug --sanitize=fuzzer --package-path .. --scratch-path "$PWD/.build-fuzz")
if [[ "${FUZZ_SKIP_BUILD:-0}" != 1 ]]; then
    for t in "${targets[@]}"; do
        echo "== building $t (SWITCHBOARD_FUZZ=1 swift build ${build_flags[*]} --product $t)"
        swift build "${build_flags[@]}" --product "$t" 2>&1 \
            | grep -E "error|warning: unable|Compiling Fuzz|Build complete|Linking" || true
        # grep hides the warning noise; re-check the real status.
        swift build "${build_flags[@]}" --product "$t" >/dev/null
    done
fi
bin="$(swift build "${build_flags[@]}" --show-bin-path 2>/dev/null)"

mkdir -p artifacts .work
# Let libFuzzer, not the Swift runtime's backtracer, handle the trap of a fatalError or a
# failed check: only libFuzzer's handler writes the crash-* reproducer.
export SWIFT_BACKTRACE=enable=no
status=0
for t in "${targets[@]}"; do
    work="$(mktemp -d ".work/$t.XXXXXX")"
    cp -R "Corpus/$t/." "$work/"
    log="artifacts/$t.log"
    echo "== $t for ${seconds}s (corpus copy $work, log $log)"
    set +e
    # shellcheck disable=SC2086
    "$bin/$t" "$work" \
        -max_total_time="$seconds" \
        -timeout=10 \
        -rss_limit_mb=2048 \
        -print_final_stats=1 \
        -artifact_prefix="artifacts/$t-" \
        ${FUZZ_ARGS:-} >"$log" 2>&1
    rc=$?
    set -e
    # The last status line (coverage, corpus, exec/s) and the final stats.
    grep -E '^#[0-9]+' "$log" | tail -1 || true
    grep -E 'stat::(number_of_executed_units|average_exec_per_sec|peak_rss_mb)' "$log" || true
    if [[ $rc -ne 0 ]]; then
        echo "!! $t FAILED (exit $rc); see $log" >&2
        grep -E 'ERROR: libFuzzer|Fatal error|fatal error|Test unit written|SUMMARY|deadly signal' "$log" >&2 || true
        status=1
    elif [[ "${FUZZ_KEEP_NEW:-0}" == 1 ]]; then
        "$bin/$t" -merge=1 "Corpus/$t" "$work" >>"$log" 2>&1
        echo "   merged new inputs into Corpus/$t ($(ls "Corpus/$t" | wc -l) files)"
    fi
    rm -rf "$work"
done
exit $status
