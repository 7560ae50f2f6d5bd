//! judge stage (in progress).
