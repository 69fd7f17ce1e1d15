//! kiln-transfer: moves images between a registry and the local store.
