//! kiln-testsupport: real services for kiln's tests.
