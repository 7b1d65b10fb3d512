#!/usr/bin/env bash
# Builds, on this machine (no GPU), what `measure.sh` runs on the GPU
# machine, into bench/out/variants/ (git-ignored; name it in the device
# call's `carry`):
#   bm.txz     main's bundle (`cargo xtask gpu-bundle`: test binaries,
#              bench, peers), the CPU-only binaries left out;
#   bf.ptx     main + topk-branchfree.patch (kernel only: runs with main's
#              binaries through --ptx / SPARSE_ATTN_TEST_PTX);
#   w4b.txz    main + mla-logits-4wg.patch: its own mla_indexer, engine_api,
#              graph_replay and bench binaries (`*_w4`; the patch changes
#              the abi), which embed its PTX;
#   cbf.ptx    main + both patches (runs with the w4 binaries);
#   wdb.txz    main + topk-wide.patch: its own topk, mla_indexer and bench
#              binaries (`*_wd`; the patch adds a kernel entry the host
#              plans for), which embed its PTX;
#   wbf.ptx    main + topk-wide.patch + topk-branchfree.patch (runs with
#              the wd binaries);
#   pgb.txz    main + dense-paged-gather.patch: its own dense_prefill,
#              dense_prefill_fp8 and bench binaries (`*_pg`; the patch adds
#              a kernel parameter).
# Each variant builds in a detached worktree under $TMPDIR with its own
# target folder (the xtask binary knows its repository by the path it was
# built from). Takes minutes; prints the ptxas verdict of each PTX.
#
# usage: bench/variants/prepare.sh [main]   (main: bm.txz alone, for a
# change of main's host or tests that leaves the kernels and patches as
# they were)
set -euo pipefail
root=$(git rev-parse --show-toplevel)
cd "$root"
out=$root/bench/out/variants
tmp=${TMPDIR:-/tmp}/sparse-attn-variants
mkdir -p "$out" "$tmp"
v=$root/bench/variants

# bundle DIR TARGET TAR [SUFFIX BIN...]: the tree at DIR (built in
# TARGET) bundled as TAR, with all its GPU binaries, or only the named test
# and bench binaries, each renamed BIN_SUFFIX.
bundle() {
    local dir=$1 target=$2 tar=$3 suffix=${4:-}
    shift $(($# < 4 ? $# : 4))
    (cd "$dir" && CARGO_TARGET_DIR=$target cargo xtask gpu-bundle --out "$tmp/bundle") > "$tmp/bundle.log"
    rm -f "$tmp"/bundle/bin/*reference "$tmp"/bundle/bin/*-bin-tests "$tmp"/bundle/bin/charts \
        "$tmp"/bundle/bin/sparse_attn "$tmp"/bundle/bin/sparse_attn_abi "$tmp"/bundle/bin/sparse_attn_tests
    if [ $# -gt 0 ]; then
        mkdir -p "$tmp/pick"
        for b in "$@"; do cp "$tmp/bundle/bin/$b" "$tmp/pick/${b}_$suffix"; done
        tar cJf "$tar" -C "$tmp/pick" .
        rm -rf "$tmp/pick"
    else
        tar cJf "$tar" -C "$tmp/bundle" .
    fi
    rm -rf "$tmp/bundle"
}

# variant NAME PATCH...: a worktree of HEAD with the patches applied and
# its PTX built; prints the worktree's path.
variant() {
    local name=$1; shift
    local wt=$tmp/$name
    [ -d "$wt" ] && git worktree remove --force "$wt"
    git worktree add --detach --quiet "$wt" HEAD
    for p in "$@"; do git -C "$wt" apply "$v/$p"; done
    (cd "$wt" && CARGO_TARGET_DIR=$wt/target cargo xtask build-ptx --deny-spills) >&2
    echo "$wt"
}

echo "== main" >&2
cargo xtask build-ptx --check
bundle "$root" "${CARGO_TARGET_DIR:-$root/target}" "$out/bm.txz"
if [ "${1:-}" = main ]; then
    ls -la "$out"
    exit 0
fi

echo "== bf: topk-branchfree" >&2
wt=$(variant bf topk-branchfree.patch)
cp "$wt/host/ptx/sparse_attn.ptx" "$out/bf.ptx"

echo "== w4: mla-logits-4wg" >&2
wt=$(variant w4 mla-logits-4wg.patch)
bundle "$wt" "$wt/target" "$out/w4b.txz" w4 mla_indexer engine_api graph_replay bench

echo "== cbf: both" >&2
wt=$(variant cbf mla-logits-4wg.patch topk-branchfree.patch)
cp "$wt/host/ptx/sparse_attn.ptx" "$out/cbf.ptx"

echo "== wd: topk-wide" >&2
wt=$(variant wd topk-wide.patch)
bundle "$wt" "$wt/target" "$out/wdb.txz" wd topk mla_indexer bench

echo "== wbf: topk-wide + topk-branchfree" >&2
wt=$(variant wbf topk-wide.patch topk-branchfree.patch)
cp "$wt/host/ptx/sparse_attn.ptx" "$out/wbf.ptx"

echo "== pg: dense-paged-gather" >&2
wt=$(variant pg dense-paged-gather.patch)
bundle "$wt" "$wt/target" "$out/pgb.txz" pg dense_prefill dense_prefill_fp8 bench

for n in bf w4 cbf wd wbf pg; do git worktree remove --force "$tmp/$n"; done
ls -la "$out"
