#!/usr/bin/env bash
# Runs on the GPU machine, from the repository root, what prepare.sh built:
#   device run: bash bench/variants/measure.sh        carry: bench/out/variants
# (estimated at 6 minutes of the 10 a call may take; `measure.sh dense` instead
# runs issue 10's dense cases with their peers, carry .whl too: the
# fa3-fwd wheel, see BENCHMARKS.md).
# Writes $OUT/log.txt (everything), $OUT/tests.txt (the test verdicts of
# main's binaries) and $OUT/j/ (peer files and `bench --out` records:
# rec_main, rec_bf, rec_w4, rec_cbf; combine them with `cargo xtask
# records`). In order of need, so a call cut short keeps the most useful:
#   1. the variants' GPU tests (a w4 build whose mla_indexer test fails or
#      hangs is not timed);
#   2. round 1: main, bf, w4, cbf on the indexer and top-k cases;
#   3. the b64-64k decode and 64x128K top-k with the top-k's cluster forced
#      to 2, 4 and 8 CTAs a row (main, bf);
#   4. the peers, then each build's records against them;
#   5. every GPU test of main (the H200 verdicts the issues ask for);
#   6. round 2.
# `dense`: the bf16 and FP8 dense cases, their peers (cuDNN, FA3, flex),
# the records against them (rec_dense).
set -u
X=$(pwd)/bench/out/variants
B=/tmp/variants-bundle
mkdir -p $B
tar xJf $X/bm.txz -C $B
L=$OUT/log.txt; J=$OUT/j; mkdir -p $J
T0=$(date +%s)
say() { echo "=== [+$(( $(date +%s) - T0 ))s] $*" | tee -a $L; }
run() { "$@" 2>&1 | tee -a $L; }
nvidia-smi --query-gpu=name,driver_version --format=csv | tee -a $L
C=topk-64x128k,topk-1x128k,mla-idx-prefill-16k,mla-idx-decode-b64-64k,mla-idx-decode-b1-128k

variants() {
    mkdir -p $B/w
    tar xJf $X/w4b.txz -C $B/w
    say tests bf
    for t in topk mla_indexer; do SPARSE_ATTN_TEST_PTX=$X/bf.ptx run timeout 60 $B/bin/$t; done
    W4=0
    say tests w4
    timeout 45 $B/w/mla_indexer_w4 > /tmp/w4t.txt 2>&1 && W4=1
    cat /tmp/w4t.txt >> $L
    say "w4 ok=$W4"

    round() {
        say round $1 main; run timeout 30 $B/bin/bench --cases $C
        say round $1 bf; run timeout 30 $B/bin/bench --cases $C --ptx $X/bf.ptx
        if [ $W4 = 1 ]; then
            say round $1 w4; run timeout 30 $B/w/bench_w4 --cases $C
            say round $1 cbf; run timeout 30 $B/w/bench_w4 --cases $C --ptx $X/cbf.ptx
        fi
    }
    round 1

    for n in 2 4 8; do
        say "cluster $n main"; run timeout 30 $B/bin/bench --cases mla-idx-decode-b64-64k,topk-64x128k --topk-cluster $n
        say "cluster $n bf"; run timeout 30 $B/bin/bench --cases mla-idx-decode-b64-64k,topk-64x128k --topk-cluster $n --ptx $X/bf.ptx
    done

    say peers
    (cd $B/peers && run timeout 30 python3 topk_torch.py $J/topk_peers.json && run timeout 60 python3 mla_indexer_torch.py $J/mla_peers.json)
    P=$J/topk_peers.json,$J/mla_peers.json
    say records
    run timeout 30 $B/bin/bench --cases $C --peers $P --out $J/rec_main.json
    run timeout 30 $B/bin/bench --cases $C --peers $P --out $J/rec_bf.json --ptx $X/bf.ptx
    if [ $W4 = 1 ]; then
        run timeout 30 $B/w/bench_w4 --cases $C --peers $P --out $J/rec_w4.json
        run timeout 30 $B/w/bench_w4 --cases $C --peers $P --out $J/rec_cbf.json --ptx $X/cbf.ptx
        say tests cbf, w4 host
        SPARSE_ATTN_TEST_PTX=$X/cbf.ptx run timeout 45 $B/w/mla_indexer_w4
        for t in engine_api graph_replay; do run timeout 30 $B/w/${t}_w4; done
        SPARSE_ATTN_TEST_PTX=$X/cbf.ptx run timeout 45 $B/bin/topk
    fi

    say tests main
    for t in mla_indexer topk engine_api graph_replay msa_indexer msa_attention msa_block_major dense_prefill dense_prefill_fp8; do
        say $t
        run timeout 60 $B/bin/$t | grep -E "^test |test result|seed|panicked|FAILED|SKIP" | tee -a $OUT/tests.txt
    done

    round 2
}

dense() {
    python3 -m pip install --no-deps -q $(pwd)/.whl/fa3_fwd-*.whl 2>&1 | tail -2 | tee -a $L
    D=dense-prefill-16k,dense-prefill-16k-causal,dense-prefill-8x2k,dense-prefill-16k-paged128,dense-prefill-16k-paged16,dense-prefill-16k-sw4096,dense-prefill-16k-sinks
    F=dense-prefill-16k-fp8,dense-prefill-16k-causal-fp8,dense-prefill-8x2k-fp8,dense-prefill-16k-paged128-fp8
    say dense peers
    (cd $B/peers && PEERS=sdpa-cudnn,fa3,flex run timeout 200 python3 dense_prefill_torch.py $J/dense_peers.json;
        run timeout 90 python3 dense_prefill_fp8_torch.py $J/dense_fp8_peers.json)
    say dense records
    run timeout 60 $B/bin/bench --cases $D,$F --peers $J/dense_peers.json,$J/dense_fp8_peers.json --out $J/rec_dense.json
}

if [ "${1:-}" = dense ]; then dense; else variants; fi
say done
