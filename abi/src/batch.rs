//! The ragged batch and the paged cache, described once for the host, the
//! reference and the tests.
