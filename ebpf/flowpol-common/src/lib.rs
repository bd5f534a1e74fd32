//! Types shared by the kernel programs and the agent. `#[repr(C)]`, no pointers,
//! explicit padding: the byte layout is the contract between both sides.
#![no_std]
