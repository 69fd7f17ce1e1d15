//! kiln-runtime: run one process in an isolated root filesystem.
//!
//! Owns namespaces, the overlay root, pivot_root, /proc /dev /sys, hosts and
//! resolv.conf, users and groups, capabilities, rlimits and the exit status.
//! It is never called from inside a multi-threaded process: the kiln binary
//! re-executes itself as a helper before any thread exists.
