//! Tidewire server.
