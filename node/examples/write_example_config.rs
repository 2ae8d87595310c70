//! Regenerates `examples/unitas.toml` from the config's doc comments:
//! `cargo run -p unitas --example write_example_config`.

fn main() -> std::io::Result<()> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/unitas.toml");
    let text = unitas::config::example::render(&unitas::config::example::InitValues::default());
    std::fs::write(&path, text)?;
    println!("wrote {}", path.display());
    Ok(())
}
