//! Errors are values with context: every invalid input names the argument,
//! what was expected and what was given; driver failures name the step.

use cudarc::driver::DriverError;

/// Result of every fallible call of this crate.
pub type Result<T, E = Error> = core::result::Result<T, E>;

/// What went wrong.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An argument has the wrong shape, length or value.
    #[error("invalid argument `{arg}`: expected {expected}, got {actual}")]
    InvalidArgument {
        /// The argument's name, as the op's docs call it.
        arg: &'static str,
        /// What the op accepts there.
        expected: String,
        /// What it was given.
        actual: String,
    },
    /// A valid request this library does not implement (for example head_dim 64).
    #[error("unsupported `{arg}`: {what}")]
    Unsupported {
        /// The argument's name.
        arg: &'static str,
        /// What is not implemented, and what is.
        what: String,
    },
    /// A buffer (or workspace) belongs to another CUDA context than the
    /// [`crate::Gpu`] handle the op runs on (another device, or another
    /// context of the same device): its addresses mean nothing there.
    #[error("`{arg}` belongs to another CUDA context: expected {expected}, got {actual}")]
    WrongContext {
        /// The argument's name, as the op's docs call it.
        arg: &'static str,
        /// The handle's device and context.
        expected: String,
        /// The buffer's device and context.
        actual: String,
    },
    /// No NVIDIA driver library could be loaded on this machine.
    #[error("no CUDA driver: {0}")]
    NoDriver(String),
    /// `run` was called before a successful `plan`.
    #[error("{op}: run called without a plan")]
    NotPlanned {
        /// The op (`msa_indexer`, `msa_attention`).
        op: &'static str,
    },
    /// A CUDA graph replayed launches of `op` that an incompatible `plan`
    /// had made stale (graph mode, see [`crate::graph`]): they wrote no
    /// result (selections `-1`, attention output NaN). Capture again after
    /// the plan.
    #[error(
        "{op}: a CUDA graph replayed launches of an earlier, incompatible plan (they wrote no \
         result); capture the graph again after `plan`"
    )]
    StaleGraph {
        /// The op whose launches were stale (`msa_indexer`, `msa_attention`).
        op: &'static str,
    },
    /// A CUDA driver call failed.
    #[error("CUDA error while {context}: {source}")]
    Cuda {
        /// The step that failed.
        context: String,
        /// The driver's error.
        #[source]
        source: DriverError,
    },
}

impl Error {
    /// The argument an [`Error::InvalidArgument`], [`Error::Unsupported`] or
    /// [`Error::WrongContext`] names.
    pub fn arg(&self) -> Option<&'static str> {
        match self {
            Error::InvalidArgument { arg, .. }
            | Error::Unsupported { arg, .. }
            | Error::WrongContext { arg, .. } => Some(arg),
            _ => None,
        }
    }

    /// Shorthand for [`Error::InvalidArgument`].
    pub fn invalid(arg: &'static str, expected: impl ToString, actual: impl ToString) -> Self {
        Error::InvalidArgument {
            arg,
            expected: expected.to_string(),
            actual: actual.to_string(),
        }
    }
}

impl Error {
    /// The same error with the argument names in `names` (`(inner, outer)`
    /// pairs) replaced: an op run inside a composite one reports its inputs
    /// under the names the composite's caller gave them.
    pub(crate) fn rename_args(self, names: &[(&'static str, &'static str)]) -> Self {
        let rename = |arg: &'static str| {
            names
                .iter()
                .find(|(inner, _)| *inner == arg)
                .map_or(arg, |(_, outer)| outer)
        };
        match self {
            Error::InvalidArgument {
                arg,
                expected,
                actual,
            } => Error::InvalidArgument {
                arg: rename(arg),
                expected,
                actual,
            },
            Error::Unsupported { arg, what } => Error::Unsupported {
                arg: rename(arg),
                what,
            },
            Error::WrongContext {
                arg,
                expected,
                actual,
            } => Error::WrongContext {
                arg: rename(arg),
                expected,
                actual,
            },
            other => other,
        }
    }
}

/// Attaches a description of the step to a driver error.
pub(crate) trait CudaContextExt<T> {
    fn during(self, context: impl FnOnce() -> String) -> Result<T>;
}

impl<T> CudaContextExt<T> for core::result::Result<T, DriverError> {
    fn during(self, context: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| Error::Cuda {
            context: context(),
            source,
        })
    }
}

/// Fails with [`Error::InvalidArgument`] unless `ok`.
pub(crate) fn ensure(
    ok: bool,
    arg: &'static str,
    expected: impl FnOnce() -> String,
    actual: impl FnOnce() -> String,
) -> Result<()> {
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidArgument {
            arg,
            expected: expected(),
            actual: actual(),
        })
    }
}

/// Fails with [`Error::Unsupported`] unless `head_dim` is the one the MSA
/// kernels implement.
/// `scale` must be finite and > 0: the attention kernels take each row's
/// maximum of the raw scores and scale it.
pub(crate) fn require_positive_scale(scale: f32) -> Result<()> {
    ensure(
        scale.is_finite() && scale > 0.0,
        "scale",
        || "a finite scale > 0".into(),
        || scale.to_string(),
    )
}

pub(crate) fn require_head_dim(head_dim: usize) -> Result<()> {
    let want = crate::abi::msa::MSA_HEAD_DIM as usize;
    if head_dim == want {
        Ok(())
    } else {
        Err(Error::Unsupported {
            arg: "head_dim",
            what: format!("head_dim {head_dim} (only {want} is implemented)"),
        })
    }
}

/// The length check of every op's `run`: `len == want`, else an error
/// naming `arg`, the expected length (`what` says where it comes from) and
/// the actual one.
pub(crate) fn expect_len(arg: &'static str, len: usize, want: usize, what: &str) -> Result<()> {
    ensure(
        len == want,
        arg,
        || format!("{want} elements ({what})"),
        || format!("{len} elements"),
    )
}
