//! backend stage (in progress).
