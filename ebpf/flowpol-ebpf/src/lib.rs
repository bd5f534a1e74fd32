// An empty library target: it lets `daemon` name this crate as a build-dependency
// (so cargo rebuilds the agent when the kernel programs change); the programs are
// the `flowpol` binary target, built for bpfel-unknown-none by aya-build.
#![no_std]
