//! isogroup-oci: the filter as an OCI image for Istio's `WasmPlugin`, built
//! without a docker engine.
//!
//! Format: Istio's "compat" Wasm image: an OCI manifest with one
//! `application/vnd.oci.image.layer.v1.tar+gzip` layer holding `plugin.wasm`
//! and the annotation `module.wasm.image/variant: compat`. Built
//! deterministically (fixed tar header fields, gzip without a timestamp), so
//! the same wasm always gives the same manifest digest, the value for
//! `WasmPlugin.sha256`.

mod image;
mod push;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "isogroup-oci", about = "Build and push the isogroup filter as an OCI image")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write an OCI image layout (`oci-layout`, `index.json`, `blobs/`).
    Build {
        #[arg(long)]
        wasm: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
    /// Build and push to a registry (`host:port/repository:tag`, plain HTTP
    /// on loopback, HTTPS elsewhere).
    Push {
        #[arg(long)]
        wasm: PathBuf,
        #[arg(long)]
        to: String,
    },
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Build { wasm, out } => {
            std::fs::read(&wasm).map_err(|e| format!("{}: {e}", wasm.display())).and_then(|bytes| {
                let image = image::Image::build(&bytes);
                image.write_layout(&out).map_err(|e| format!("{}: {e}", out.display()))?;
                println!("layout: {}", out.display());
                Ok(image)
            })
        }
        Command::Push { wasm, to } => {
            std::fs::read(&wasm).map_err(|e| format!("{}: {e}", wasm.display())).and_then(|bytes| {
                let image = image::Image::build(&bytes);
                let registry_digest = push::push(&image, &to)?;
                if registry_digest != image.manifest_digest {
                    return Err(format!("registry says {registry_digest}, we built {}", image.manifest_digest));
                }
                println!("pushed: {to}");
                Ok(image)
            })
        }
    };
    match result {
        Ok(image) => {
            println!("manifest digest: {}", image.manifest_digest);
            println!("WasmPlugin.sha256: {}", image.manifest_digest.trim_start_matches("sha256:"));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("isogroup-oci: {e}");
            ExitCode::FAILURE
        }
    }
}
