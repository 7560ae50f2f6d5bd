//! store stage (in progress).
