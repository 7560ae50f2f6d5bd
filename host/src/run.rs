//! run stage (in progress).
