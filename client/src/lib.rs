//! Tidewire browser SDK.
