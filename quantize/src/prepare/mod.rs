//! Data preparation (work in progress).
