//! Compiles the BPF programs (`bpf/*.bpf.c`: the uplink's XDP steering program, the
//! tunnel port's tc programs) to bytecode with clang, for the daemon to embed. The headers are libbpf's, from the libbpf-sys build this crate
//! links anyway, and the kernel's UAPI headers from the system (linux-libc-dev).

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=CLANG");
    for name in ["steer", "tunnel"] {
        compile(name);
    }
}

fn compile(name: &str) {
    let src = format!("bpf/{name}.bpf.c");
    println!("cargo:rerun-if-changed={src}");
    let out =
        PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR")).join(format!("{name}.bpf.o"));
    let libbpf_include = std::env::var("DEP_BPF_INCLUDE").expect("libbpf-sys exports its include directory");
    let arch = match std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() {
        Ok("x86_64") => "x86_64-linux-gnu",
        Ok("aarch64") => "aarch64-linux-gnu",
        Ok(other) => panic!("no multiarch include directory known for {other}"),
        Err(_) => panic!("cargo sets CARGO_CFG_TARGET_ARCH"),
    };
    let clang = std::env::var("CLANG").unwrap_or_else(|_| "clang".into());
    let status = Command::new(&clang)
        .args(["-O2", "-g", "-target", "bpf", "-Wall", "-Werror"])
        .arg(format!("-I{libbpf_include}"))
        .arg(format!("-I/usr/include/{arch}"))
        .args(["-c", &src, "-o"])
        .arg(&out)
        .status()
        .unwrap_or_else(|e| {
            panic!("running {clang} for {src}: {e} (scripts/install-deps.sh installs clang)")
        });
    assert!(status.success(), "{clang} failed to compile {src}");
}
