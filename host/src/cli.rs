//! cli stage (in progress).
