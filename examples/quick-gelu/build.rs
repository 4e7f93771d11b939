fn main() {
    if let Err(e) = rocmforge_dsl::build::Builder::new().file("src/lib.rs").compile() {
        panic!("{e}");
    }
}
