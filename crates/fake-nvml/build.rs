//! Gives the fake library the soname of the real one (libnvidia-ml.so.1) and binds its own symbol
//! references locally (-Bsymbolic), so an LD_PRELOADed interposer cannot hijack the fake's
//! internal function addresses (cuGetProcAddress must return what dlsym finds in this file).

fn main() {
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libnvidia-ml.so.1");
    println!("cargo:rustc-cdylib-link-arg=-Wl,-Bsymbolic");
    println!("cargo:rerun-if-changed=build.rs");
}
