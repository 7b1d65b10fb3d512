#!/usr/bin/env bash
# Runs on the GPU machine, from the repository root, what prepare.sh built,
# in up to three device calls (each `timeout_s` 600), carry
# bench/out/variants, in this order (the first holds what both issues'
# "done when" needs and no variant gives: a session may get one call):
#   bash bench/variants/measure.sh tests    every GPU test of main: the
#                                           H200 verdicts the issues ask for;
#   bash bench/variants/measure.sh          the variants (8 to 10 minutes: the
#                                           later steps give way from 420 s on);
#   bash bench/variants/measure.sh dense    the paged gather variant against
#                                           main, then issue 10's dense cases
#                                           with their peers (carry .whl too:
#                                           the fa3-fwd wheel, see
#                                           BENCHMARKS.md).
# Writes $OUT/log.txt (everything), $OUT/tests.txt (`tests`: the verdicts)
# and $OUT/j/ (peer files and `bench --out` records: rec_main, rec_bf,
# rec_w4, rec_cbf, rec_wd, rec_wbf, rec_dense, rec_pg; combine them with `cargo
# xtask records`). The variants in order of need, so a call cut short keeps
# the most useful:
#   1. the variants' GPU tests (a w4 or wd build whose tests fail or hang is
#      not timed);
#   2. round 1: main, bf, w4, cbf, wd, wbf on the indexer and top-k cases;
#   3. the peers, then each build's records against them (round 2);
#   4. the b64-64k decode and 64x128K top-k with the top-k's cluster forced
#      to 2, 4 and 8 CTAs a row (main, bf);
#   5. the tests of the combined builds and the w4 host;
#   6. round 3 while the call has time left.
set -u
X=$(pwd)/bench/out/variants
B=/tmp/variants-bundle
mkdir -p $B
tar xJf $X/bm.txz -C $B
L=$OUT/log.txt; J=$OUT/j; mkdir -p $J
T0=$(date +%s)
say() { echo "=== [+$(( $(date +%s) - T0 ))s] $*" | tee -a $L; }
run() { "$@" 2>&1 | tee -a $L; }
# Whether the call has run for at least $1 seconds (later steps give way
# before the 600 s limit).
late() { [ $(( $(date +%s) - T0 )) -ge $1 ]; }
# gate NAME SECS BIN...: a variant's test binaries, each under `timeout
# SECS`, their output to the log (not the screen), stopping at the first
# that fails; whether all passed (a variant whose tests fail or hang is
# not timed).
gate() {
    local name=$1 secs=$2 ok=1; shift 2
    say tests $name
    for t; do timeout $secs "$t" >> $L 2>&1 || { ok=0; break; }; done
    say "$name ok=$ok"
    [ $ok = 1 ]
}
nvidia-smi --query-gpu=name,driver_version --format=csv | tee -a $L
C=topk-64x128k,topk-1x128k,topk-64x64k,mla-idx-prefill-16k,mla-idx-decode-b64-64k,mla-idx-decode-b1-128k

variants() {
    mkdir -p $B/w $B/d
    tar xJf $X/w4b.txz -C $B/w
    tar xJf $X/wdb.txz -C $B/d
    say tests bf
    for t in topk mla_indexer; do SPARSE_ATTN_TEST_PTX=$X/bf.ptx run timeout 60 $B/bin/$t; done
    W4=0; gate w4 45 $B/w/mla_indexer_w4 && W4=1
    WD=0; gate wd 60 $B/d/topk_wd $B/d/mla_indexer_wd && WD=1

    # round N [ARGS...]: every build on the cases (ARGS: --peers, and the
    # records when N is "records").
    round() {
        local n=$1; shift
        o() { [ $n = records ] && echo --out $J/rec_$1.json; }
        say round $n main; run timeout 40 $B/bin/bench --cases $C "$@" $(o main)
        say round $n bf; run timeout 40 $B/bin/bench --cases $C --ptx $X/bf.ptx "$@" $(o bf)
        if [ $W4 = 1 ]; then
            say round $n w4; run timeout 40 $B/w/bench_w4 --cases $C "$@" $(o w4)
            say round $n cbf; run timeout 40 $B/w/bench_w4 --cases $C --ptx $X/cbf.ptx "$@" $(o cbf)
        fi
        if [ $WD = 1 ]; then
            say round $n wd; run timeout 40 $B/d/bench_wd --cases $C "$@" $(o wd)
            say round $n wbf; run timeout 40 $B/d/bench_wd --cases $C --ptx $X/wbf.ptx "$@" $(o wbf)
        fi
    }
    round 1

    say peers
    (cd $B/peers && run timeout 30 python3 topk_torch.py $J/topk_peers.json && run timeout 60 python3 mla_indexer_torch.py $J/mla_peers.json)
    round records --peers $J/topk_peers.json,$J/mla_peers.json

    for n in 2 4 8; do
        late 450 && break
        say "cluster $n main"; run timeout 30 $B/bin/bench --cases mla-idx-decode-b64-64k,topk-64x128k --topk-cluster $n
        say "cluster $n bf"; run timeout 30 $B/bin/bench --cases mla-idx-decode-b64-64k,topk-64x128k --topk-cluster $n --ptx $X/bf.ptx
    done

    if [ $W4 = 1 ] && ! late 480; then
        say tests cbf, w4 host
        SPARSE_ATTN_TEST_PTX=$X/cbf.ptx run timeout 45 $B/w/mla_indexer_w4
        for t in engine_api graph_replay; do run timeout 30 $B/w/${t}_w4; done
        SPARSE_ATTN_TEST_PTX=$X/cbf.ptx run timeout 45 $B/bin/topk
    fi
    if [ $WD = 1 ] && ! late 480; then
        say tests wbf
        for t in topk mla_indexer; do SPARSE_ATTN_TEST_PTX=$X/wbf.ptx run timeout 60 $B/d/${t}_wd; done
    fi

    late 420 || round 3
}

# Every GPU test of main, the verdicts in $OUT/tests.txt (`SKIP` lines
# kept: a machine without a visible GPU cannot pass vacuously).
tests() {
    for t in mla_indexer topk engine_api graph_replay msa_indexer msa_attention msa_block_major dense_prefill dense_prefill_fp8; do
        say $t
        run timeout 60 $B/bin/$t | grep -E "^test |test result|seed|panicked|FAILED|SKIP" | tee -a $OUT/tests.txt
    done
}

dense() {
    # The cp.async gather of short pages (pg) against main's TMA boxes:
    # its tests, then both builds on every page size, twice, interleaved.
    mkdir -p $B/g
    tar xJf $X/pgb.txz -C $B/g
    PG=0; gate pg 90 $B/g/dense_prefill_pg $B/g/dense_prefill_fp8_pg && PG=1
    G=dense-prefill-16k-causal,dense-prefill-16k-paged128,dense-prefill-16k-paged64,dense-prefill-16k-paged32,dense-prefill-16k-paged16,dense-prefill-16k-causal-fp8,dense-prefill-16k-paged128-fp8,dense-prefill-16k-paged16-fp8
    if [ $PG = 1 ]; then
        for n in 1 2; do
            say pg round $n main; run timeout 60 $B/bin/bench --cases $G
            say pg round $n pg; run timeout 60 $B/g/bench_pg --cases $G
        done
    fi
    python3 -m pip install --no-deps -q $(pwd)/.whl/fa3_fwd-*.whl 2>&1 | tail -2 | tee -a $L
    D=dense-prefill-16k,dense-prefill-16k-causal,dense-prefill-8x2k,dense-prefill-16k-paged128,dense-prefill-16k-paged64,dense-prefill-16k-paged32,dense-prefill-16k-paged16,dense-prefill-16k-sw4096,dense-prefill-16k-sinks
    F=dense-prefill-16k-fp8,dense-prefill-16k-causal-fp8,dense-prefill-8x2k-fp8,dense-prefill-16k-paged128-fp8,dense-prefill-16k-paged16-fp8
    say dense peers
    (cd $B/peers && PEERS=sdpa-cudnn,fa3,flex run timeout 200 python3 dense_prefill_torch.py $J/dense_peers.json;
        run timeout 90 python3 dense_prefill_fp8_torch.py $J/dense_fp8_peers.json)
    say dense records
    run timeout 60 $B/bin/bench --cases $D,$F --peers $J/dense_peers.json,$J/dense_fp8_peers.json --out $J/rec_dense.json
    if [ $PG = 1 ]; then
        run timeout 60 $B/g/bench_pg --cases $G --peers $J/dense_peers.json,$J/dense_fp8_peers.json --out $J/rec_pg.json
    fi
}

case "${1:-}" in
    dense) dense ;;
    tests) tests ;;
    *) variants ;;
esac
say done
