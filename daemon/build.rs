// Builds the eBPF programs (ebpf/flowpol-ebpf) for the BPF target with the nightly
// toolchain and bpf-linker, when the `agent` feature is on. `make setup` installs both.
fn main() -> anyhow::Result<()> {
    // sqlx::migrate! embeds migrations/ at compile time: rebuild when it changes.
    println!("cargo:rerun-if-changed=../migrations");
    #[cfg(feature = "agent")]
    {
        let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../ebpf/flowpol-ebpf");
        aya_build::build_ebpf(
            [aya_build::Package {
                name: "flowpol-ebpf",
                root_dir: root,
                ..Default::default()
            }],
            aya_build::Toolchain::Nightly,
        )?;
    }
    Ok(())
}
