//! Compiles the standard kernels ahead of time (see rocmforge-dsl's build helper for
//! the environment variables and the fallback when no compiler is present).

fn main() {
    if let Err(e) = rocmforge_dsl::build::Builder::new().file("src/kernels.rs").compile() {
        // A build script reports failure through its exit status and stderr.
        #[allow(clippy::print_stderr)]
        {
            eprintln!("rocmforge kernel build failed:\n{e}");
        }
        std::process::exit(1);
    }
}
