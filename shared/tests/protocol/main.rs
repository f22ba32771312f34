//! Wire-level tests of the protocol crate: every frame and event type round-trips, bad input
//! becomes the right typed error, and no input panics a decoder.

mod bad_input;
mod cursor_limits;
mod roundtrip;
mod strategies;
