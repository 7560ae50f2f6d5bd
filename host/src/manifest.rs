//! manifest stage (in progress).
