//! The binary's integration tests, in one test binary: each module runs the real binary
//! on real files (or against real servers), with the helpers of `common`.

mod common;

mod alert;

mod bad_input;
mod checkpoint;
mod cli;
mod connectors;
mod detectors;
mod disk_buffer;
mod lifecycle;
mod observe;
mod score;
mod security;
mod shell;
mod skab;
mod w1;
