//! Explicit unrolling for register arrays.

/// `unroll!(N, I => { .. })` repeats the block `N` times (N in 2, 4, 8, 16,
/// 32) with `I` bound to the constants `0..N`.
///
/// A register array may only be indexed by constants; LLVM's heuristics
/// refuse to unroll large loop bodies fully, which moves the array to local
/// memory (a stack frame in ptxas' report). This makes the unroll explicit.
#[macro_export]
macro_rules! unroll {
    (2, $i:ident => $body:block) => { $crate::unroll!(@ $i $body; 0 1) };
    (4, $i:ident => $body:block) => { $crate::unroll!(@ $i $body; 0 1 2 3) };
    (8, $i:ident => $body:block) => { $crate::unroll!(@ $i $body; 0 1 2 3 4 5 6 7) };
    (16, $i:ident => $body:block) => {
        $crate::unroll!(@ $i $body; 0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15)
    };
    (32, $i:ident => $body:block) => {
        $crate::unroll!(@ $i $body; 0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15
                        16 17 18 19 20 21 22 23 24 25 26 27 28 29 30 31)
    };
    (@ $i:ident $body:block; $($n:literal)*) => {
        $( { #[allow(non_upper_case_globals)] const $i: usize = $n; $body } )*
    };
}

/// `unroll_to!(N, I => { .. })`: [`unroll!`] for a count `N` known only
/// after monomorphisation (a const generic or an expression of one, at most
/// 32): the block is repeated 32 times behind `if I < N`, which folds away.
#[macro_export]
macro_rules! unroll_to {
    ($n:expr, $i:ident => $body:block) => {
        $crate::unroll!(32, $i => { if $i < $n { $body } })
    };
}
