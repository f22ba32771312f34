//! TypeScript declarations generated from the Rust types (feature `ts`).
